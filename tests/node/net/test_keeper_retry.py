"""The connection keeper's paced retries reach a peer py-libp2p still remembers as failed.

py-libp2p refuses, unsent, every dial to a peer whose last dial failed within 60 s (its negative
cache). After a partition heals (or a peer restarts), that kept registries apart until the last
failure was a minute old; the keeper's own retries (every 8 s at most) now go out.
"""

from __future__ import annotations

import os
import socket

import trio
from libp2p.peer.id import ID
from multiaddr import Multiaddr

from node.metrics import Metrics
from node.net.discovery import Discovery
from node.net.host import build_host
from protocol.identity import Identity

LISTEN = "/ip4/127.0.0.1/tcp/0"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def test_a_keeper_retry_dials_a_peer_whose_last_dial_failed_moments_ago() -> None:
    psk = os.urandom(32)
    away = Identity.generate()
    peer = ID(away.peer_id)
    address = Multiaddr(f"/ip4/127.0.0.1/tcp/{free_port()}")
    host = build_host(Identity.generate(), psk, [LISTEN])
    discovery = Discovery(host, Metrics())
    async with host.run([Multiaddr(LISTEN)]):
        host.get_peerstore().add_addrs(peer, [address], 600)
        with trio.fail_after(30):
            await discovery._dial_known_peers(1)  # nobody listens there yet: the dial fails
        assert discovery.dials.get(outcome="failed") == 1
        back = build_host(away, psk, [str(address)])  # the peer is reachable again, same address
        async with back.run([address]):
            with trio.fail_after(30):
                await discovery._dial_known_peers(1)  # an ordinary dial: refused from the cache
            assert peer not in host.get_connected_peers()
            assert discovery.dials.get(outcome="failed") == 2
            with trio.fail_after(30):
                await discovery._dial_known_peers(1, retry=True)
            assert peer in host.get_connected_peers()
            assert discovery.dials.get(outcome="ok") == 1
