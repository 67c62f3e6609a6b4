"""What the router needs from the node: attested executors and streams to them, nothing more.

The router never sees the libp2p host, the registry or the attestation service; it sees this
``Network`` protocol (libp2p in production, ``tests/node/jobs/harness.py:MemoryNetwork`` in unit
tests) and ``ExecutorInfo``, the part of a registry entry this node appraised itself. Keeping the
seam this narrow is what lets the whole job path run in memory, like the two-connection pair in
h11's tests.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from node.jobs.frames import FrameIO

__all__ = ["ExecutorInfo", "Network"]


@dataclass(frozen=True)
class ExecutorInfo:
    """An attested executor as the router needs it (from the registry entry this node verified)."""

    peer_id: bytes
    enc_pubkey: bytes
    kind: str
    label: str
    models: tuple[str, ...]
    bundle: bytes = b""

    @property
    def simulated(self) -> bool:
        return self.kind == "simulated"


class Network(Protocol):
    """What the router needs from the node (libp2p in production, memory pipes in unit tests)."""

    @property
    def local_peer_id(self) -> bytes: ...

    async def providers(self, model_id: str) -> list[ExecutorInfo]:
        """Attested executors serving ``model_id`` (never a peer this node did not appraise)."""
        ...

    def known_models(self) -> Mapping[str, str]:
        """Model name → model id for names this node can resolve (its own runtimes, aliases)."""
        ...

    def attested_models(self) -> set[str]:
        """Every model id some attested peer announces."""
        ...

    async def open_job_stream(self, peer_id: bytes) -> FrameIO: ...

    async def challenge(self, info: ExecutorInfo, nonce: bytes) -> tuple[bool, str]:
        """Ask ``info`` for fresh evidence over ``nonce``; (passed, detail)."""
        ...
