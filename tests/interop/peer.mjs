// An independent libp2p peer (js-libp2p) driven over stdin/stdout with JSON lines, for Veilnet's
// interop and hostile-peer tests (tests/interop/test_js_interop.py).
//
// Requests, one JSON object per line on stdin:  {"id": <int>, "cmd": "<name>", ...arguments}
// Replies on stdout:                            {"id": <int>, "ok": true, ...result}
//                                             | {"id": <int>, "ok": false, "error": "<text>"}
// Unsolicited events on stdout (no "id"):      {"event": "message", ...} (gossip deliveries)
// Diagnostics go to stderr. Every network operation takes a deadline ("timeout_ms").
//
// The peer speaks what a Veilnet node speaks: TCP + Noise + yamux behind a libp2p private-network
// pre-shared key (the go-ipfs swarm.key format, built here from the 64 hex digits Veilnet uses),
// identify, ping, gossipsub (meshsub 1.x) and kad-dht (/ipfs/kad/1.0.0) in server mode.

import { createInterface } from 'node:readline'
import { noise } from '@chainsafe/libp2p-noise'
import { yamux } from '@chainsafe/libp2p-yamux'
import { generateKeyPairFromSeed } from '@libp2p/crypto/keys'
import { gossipsub } from '@libp2p/gossipsub'
import { identify } from '@libp2p/identify'
import { kadDHT, passthroughMapper } from '@libp2p/kad-dht'
import { peerIdFromString } from '@libp2p/peer-id'
import { ping } from '@libp2p/ping'
import { preSharedKey } from '@libp2p/pnet'
import { tcp } from '@libp2p/tcp'
import { multiaddr } from '@multiformats/multiaddr'
import { createLibp2p } from 'libp2p'
import { CID } from 'multiformats/cid'
import * as rawCodec from 'multiformats/codecs/raw'
import { sha256 } from 'multiformats/hashes/sha2'

let node = null
const heldStreams = [] // streams a "raw" command was asked to keep open (slow-peer tests)
const identified = new Map() // peer id text -> { protocols, agentVersion, at }
const identifyWaiters = new Map() // peer id text -> [resolve]

function emit (obj) {
  process.stdout.write(JSON.stringify(obj) + '\n')
}

function log (...args) {
  process.stderr.write(`[js-peer] ${args.join(' ')}\n`)
}

function b64 (bytes) {
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString('base64')
}

function fromB64 (text) {
  return new Uint8Array(Buffer.from(text, 'base64'))
}

function deadline (ms) {
  return AbortSignal.timeout(ms ?? 10000)
}

/** The go-ipfs swarm.key form that @libp2p/pnet parses, from the 32-byte key in hex. */
function swarmKey (pskHex) {
  if (!/^[0-9a-fA-F]{64}$/.test(pskHex)) throw new Error('psk must be 64 hex digits (32 bytes)')
  return new TextEncoder().encode(`/key/swarm/psk/1.0.0/\n/base16/\n${pskHex.toLowerCase()}`)
}

function waitIdentified (peerText, ms) {
  if (identified.has(peerText)) return Promise.resolve(identified.get(peerText))
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`identify of ${peerText} not done in ${ms} ms`)), ms)
    const list = identifyWaiters.get(peerText) ?? []
    list.push((result) => { clearTimeout(timer); resolve(result) })
    identifyWaiters.set(peerText, list)
  })
}

async function start (req) {
  if (node != null) throw new Error('already started')
  const options = {
    addresses: { listen: ['/ip4/127.0.0.1/tcp/0'] },
    transports: [tcp()],
    connectionEncrypters: [noise()],
    streamMuxers: [yamux()],
    services: {
      identify: identify(),
      // js-libp2p's connection monitor pings every connection on /ipfs/ping/1.0.0 too; with the
      // default of one outbound ping stream, a test's ping that meets the monitor's is refused
      // locally (TooManyOutboundProtocolStreamsError) before anything reaches the node.
      ping: ping({ maxOutboundStreams: 4 })
    }
  }
  if (req.seed_hex != null) {
    options.privateKey = await generateKeyPairFromSeed('Ed25519', Buffer.from(req.seed_hex, 'hex'))
  }
  if (req.psk_hex != null) {
    options.connectionProtector = preSharedKey({ psk: swarmKey(req.psk_hex) })
  }
  if (req.gossip !== false) {
    options.services.pubsub = gossipsub({
      allowPublishToZeroTopicPeers: true,
      emitSelf: false,
      heartbeatInterval: 1000
    })
  }
  if (req.dht !== false) {
    options.services.dht = kadDHT({
      clientMode: false,
      peerInfoMapper: passthroughMapper, // the default drops 127.0.0.1 peers
      allowQueryWithZeroPeers: true
    })
  }
  node = await createLibp2p(options)
  node.addEventListener('peer:identify', (evt) => {
    const result = evt.detail
    const text = result.peerId.toString()
    const entry = { protocols: [...result.protocols], agentVersion: result.agentVersion ?? null, at: Date.now() }
    identified.set(text, entry)
    for (const resolve of identifyWaiters.get(text) ?? []) resolve(entry)
    identifyWaiters.delete(text)
  })
  if (node.services.pubsub != null) {
    node.services.pubsub.addEventListener('message', (evt) => {
      const msg = evt.detail
      emit({
        event: 'message',
        topic: msg.topic,
        from: msg.type === 'signed' ? msg.from.toString() : null,
        seqno: msg.type === 'signed' ? msg.sequenceNumber.toString() : null,
        data_b64: b64(msg.data),
        received_at: Date.now() / 1000
      })
    })
  }
  await node.start()
  return {
    peer_id: node.peerId.toString(),
    addrs: node.getMultiaddrs().map((ma) => ma.toString()),
    protocols: node.getProtocols()
  }
}

async function dial (req) {
  const started = performance.now()
  const conn = await node.dial(multiaddr(req.addr), { signal: deadline(req.timeout_ms) })
  const connectMs = performance.now() - started
  const peerText = conn.remotePeer.toString()
  const info = await waitIdentified(peerText, req.timeout_ms ?? 10000)
  return {
    peer_id: peerText,
    connect_ms: connectMs,
    identify_ms: performance.now() - started,
    encryption: conn.encryption ?? null,
    multiplexer: conn.multiplexer ?? null,
    remote_addr: conn.remoteAddr.toString(),
    direction: conn.direction, // "inbound": the node had already dialled us
    protocols: info.protocols,
    agent_version: info.agentVersion
  }
}

function connections () {
  return {
    connections: node.getConnections().map((conn) => ({
      peer_id: conn.remotePeer.toString(),
      remote_addr: conn.remoteAddr.toString(),
      status: conn.status,
      direction: conn.direction
    }))
  }
}

async function doPing (req) {
  const rtt = await node.services.ping.ping(peerIdFromString(req.peer), { signal: deadline(req.timeout_ms) })
  return { rtt_ms: rtt }
}

async function subscribe (req) {
  node.services.pubsub.subscribe(req.topic)
  return {}
}

function mesh (req) {
  const pubsub = node.services.pubsub
  return {
    mesh: pubsub.getMeshPeers(req.topic),
    subscribers: pubsub.getSubscribers(req.topic).map((p) => p.toString()),
    peers: pubsub.getPeers().map((p) => p.toString())
  }
}

async function publish (req) {
  const result = await node.services.pubsub.publish(req.topic, fromB64(req.data_b64))
  return { recipients: result.recipients.map((p) => p.toString()) }
}

/**
 * Open `protocol` to `peer`, write each chunk, then optionally half-close (our write side) or
 * reset, and report how the remote ended the stream within wait_ms: "reset" (yamux RST),
 * "closed" (it half-closed too, after whatever it sent) or "open" (neither). An "open" stream is
 * reset by us, unless keep_open asks to hold it (see release_streams).
 */
async function raw (req) {
  const signal = deadline(req.timeout_ms ?? 10000)
  let stream
  try {
    stream = await node.dialProtocol(peerIdFromString(req.peer), req.protocol, { signal })
  } catch (err) {
    return { negotiated: false, error: `${err.name}: ${err.message}` }
  }
  const received = []
  let remoteClosedWrite = false
  let closeError = null
  let closed = false
  const finished = new Promise((resolve) => {
    stream.addEventListener('close', (evt) => {
      closed = true
      if (evt.error != null) closeError = `${evt.error.name}: ${evt.error.message}`
      resolve()
    })
  })
  let remoteDone
  const remoteEnded = new Promise((resolve) => { remoteDone = resolve })
  stream.addEventListener('message', (evt) => { received.push(evt.data.subarray()) })
  stream.addEventListener('remoteCloseWrite', () => { remoteClosedWrite = true; remoteDone() })
  let writeError = null
  try {
    for (const chunk of req.chunks_b64 ?? []) {
      if (!stream.send(fromB64(chunk))) await stream.onDrain({ signal })
    }
    if (req.half_close) await stream.close({ signal })
    if (req.reset) stream.abort(new Error('hostile peer resets its stream'))
  } catch (err) {
    writeError = `${err.name}: ${err.message}`
  }
  const waitMs = req.wait_ms ?? 5000
  let timer
  // The remote's verdict is a reset (close event) or its half-close (all its data came before it).
  await Promise.race([finished, remoteEnded, new Promise((resolve) => { timer = setTimeout(resolve, waitMs) })])
  clearTimeout(timer)
  const total = Buffer.concat(received.map((b) => Buffer.from(b.buffer, b.byteOffset, b.byteLength)))
  let outcome
  if (stream.status === 'reset' || (closed && closeError != null && !req.reset)) outcome = 'reset'
  else if (remoteClosedWrite) outcome = 'closed'
  else outcome = 'open'
  if (outcome === 'closed' && stream.writeStatus === 'writable') {
    stream.close().catch(() => {}) // finish our half too
  }
  if (outcome === 'open') {
    if (req.keep_open) heldStreams.push(stream)
    else stream.abort(new Error('giving up on the stream'))
  }
  return {
    negotiated: true,
    outcome,
    status: stream.status,
    remote_closed_write: remoteClosedWrite,
    close_error: closeError,
    write_error: writeError,
    received_b64: total.toString('base64')
  }
}

function releaseStreams () {
  const count = heldStreams.length
  for (const stream of heldStreams.splice(0)) stream.abort(new Error('released'))
  return { released: count }
}

async function dhtClosest (req) {
  const key = req.key_b64 != null ? fromB64(req.key_b64) : new TextEncoder().encode(req.key_utf8)
  const peers = new Set()
  const errors = []
  for await (const event of node.services.dht.getClosestPeers(key, { signal: deadline(req.timeout_ms) })) {
    if (event.name === 'FINAL_PEER') peers.add(event.peer.id.toString())
    if (event.name === 'QUERY_ERROR') errors.push(`${event.from}: ${event.error.message}`)
  }
  return { peers: [...peers], errors }
}

/**
 * Ask the DHT for the providers of a Veilnet namespaced key: the key text is hashed to a sha256
 * multihash and looked up as a CIDv1 (raw), the form every kad-dht implementation accepts.
 * Reports each provider with the peers whose GET_PROVIDERS answer listed it.
 */
async function dhtProviders (req) {
  const digest = await sha256.digest(new TextEncoder().encode(req.key_utf8))
  const cid = CID.createV1(rawCodec.code, digest)
  const providers = new Map() // provider id -> addrs
  const sources = new Map() // provider id -> peers that reported it
  const errors = []
  const signal = deadline(req.timeout_ms)
  try {
    for await (const event of node.services.dht.findProviders(cid, { signal })) {
      if (event.name === 'QUERY_ERROR') errors.push(`${event.from}: ${event.error.message}`)
      if (event.name === 'PEER_RESPONSE') {
        for (const p of event.providers) {
          const id = p.id.toString()
          providers.set(id, p.multiaddrs.map((m) => m.toString()))
          const from = sources.get(id) ?? new Set()
          from.add(event.from.toString())
          sources.set(id, from)
        }
      }
    }
  } catch (err) {
    errors.push(`${err.name}: ${err.message}`)
  }
  return {
    multihash_hex: Buffer.from(digest.bytes).toString('hex'),
    providers: Object.fromEntries(providers),
    sources: Object.fromEntries([...sources].map(([id, from]) => [id, [...from]])),
    errors
  }
}

function dhtTable () {
  return { routing_table_size: node.services.dht.routingTable.size }
}

async function hangup (req) {
  await node.hangUp(peerIdFromString(req.peer))
  return {}
}

async function stop () {
  if (node != null) await node.stop()
  node = null
  return {}
}

const COMMANDS = {
  start,
  dial,
  connections,
  ping: doPing,
  subscribe,
  mesh,
  publish,
  raw,
  release_streams: releaseStreams,
  dht_closest: dhtClosest,
  dht_providers: dhtProviders,
  dht_table: dhtTable,
  hangup,
  stop
}

async function handle (line) {
  let req
  try {
    req = JSON.parse(line)
  } catch (err) {
    emit({ id: null, ok: false, error: `bad JSON: ${err.message}` })
    return
  }
  const fn = COMMANDS[req.cmd]
  if (fn == null) {
    emit({ id: req.id, ok: false, error: `unknown command ${req.cmd}` })
    return
  }
  if (req.cmd !== 'start' && node == null) {
    emit({ id: req.id, ok: false, error: 'not started' })
    return
  }
  try {
    const result = await fn(req)
    emit({ id: req.id, ok: true, ...result })
    if (req.cmd === 'stop') process.exit(0)
  } catch (err) {
    emit({ id: req.id, ok: false, error: `${err.name}: ${err.message}` })
  }
}

process.on('unhandledRejection', (err) => { log('unhandled rejection:', err?.stack ?? err) })
const lines = createInterface({ input: process.stdin })
lines.on('line', (line) => { if (line.trim() !== '') handle(line) })
lines.on('close', async () => {
  // The driver went away: stop cleanly, and never outlive it.
  try { await stop() } finally { process.exit(0) }
})
emit({ event: 'ready', node: process.version })
