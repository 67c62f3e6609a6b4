// Node 20 lacks two ES2024/2025 built-ins that js-libp2p 3.x calls (it targets Node >= 22):
// Promise.withResolvers (it-queue, libp2p, yamux, noise, ...) and Set.prototype.difference
// (@libp2p/kad-dht's closest-peers tracker). Loaded with `node --import ./polyfill.mjs`;
// both are defined only when missing, so a newer Node runs its own.

if (typeof Promise.withResolvers !== 'function') {
  Object.defineProperty(Promise, 'withResolvers', {
    configurable: true,
    writable: true,
    value: function withResolvers () {
      let resolve
      let reject
      const promise = new this((res, rej) => { resolve = res; reject = rej })
      return { promise, resolve, reject }
    }
  })
}

function defineSetMethod (name, fn) {
  if (typeof Set.prototype[name] !== 'function') {
    Object.defineProperty(Set.prototype, name, { configurable: true, writable: true, value: fn })
  }
}

defineSetMethod('difference', function difference (other) {
  const out = new Set()
  for (const item of this) if (!other.has(item)) out.add(item)
  return out
})
defineSetMethod('intersection', function intersection (other) {
  const out = new Set()
  for (const item of this) if (other.has(item)) out.add(item)
  return out
})
defineSetMethod('union', function union (other) {
  const out = new Set(this)
  for (const item of other.keys()) out.add(item)
  return out
})
defineSetMethod('isSubsetOf', function isSubsetOf (other) {
  for (const item of this) if (!other.has(item)) return false
  return true
})
