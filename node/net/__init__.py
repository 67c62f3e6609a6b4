"""The net room: how bytes reach peers. The libp2p host (TCP + PSK + Noise + yamux), discovery
(bootstrap, DHT, mDNS), attestation gossip, and the registry of attested peers.

May import: ``node.app`` and the kernel modules below it, ``protocol``. Never ``attest``, ``jobs``,
``api`` or ``cli``: the appraiser that decides what gossip accepts is injected (``Network(node,
appraise)``).
"""
