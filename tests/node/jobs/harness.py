"""In-process executors and a router wired by memory pipes: the job protocol without libp2p.

Every byte still goes through the real code paths — sealing, framing, message codecs, commit/
reveal, the executor's checks, the router's flow and vote — only the transport is a pair of trio
memory channels. Multi-node process tests cover libp2p.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest
import trio

from node.jobs.executor import Executor, ExecutorSettings
from node.jobs.faults import Fault, FaultConfig
from node.jobs.frames import FrameIO, memory_frame_pair
from node.jobs.network_view import ExecutorInfo
from node.jobs.router import Router, RouterSettings
from protocol.attestation.bundle import build_bundle
from protocol.attestation.policy import Policy
from protocol.attestation.simulated import SimulatedPlatform, source_measurement
from protocol.identity import Identity
from protocol.sealing import EncryptionKeyPair

# Each member carries a real simulated-evidence bundle for its key (receipts embed them).
PLATFORM = SimulatedPlatform(bytes([11]) * 32, testnet="harness")
MEASUREMENT = source_measurement([("harness.py", b"in-process executors\n")])
POLICY = Policy.for_simulated_testnet([PLATFORM.public_key_hex], [MEASUREMENT.hex()], testnet="harness")


@dataclass
class Member:
    identity: Identity
    keys: EncryptionKeyPair
    executor: Executor
    previous_keys: EncryptionKeyPair | None = None
    sessions: int = 0
    bundle: bytes = b""

    @property
    def peer_id(self) -> bytes:
        return self.identity.peer_id

    def key_lookup(self, public: bytes) -> EncryptionKeyPair | None:
        for pair in (self.keys, self.previous_keys):
            if pair is not None and pair.public == public:
                return pair
        return None


@dataclass
class MemoryNetwork:
    """The router's Network over in-process executors."""

    nursery: trio.Nursery
    members: dict[bytes, Member] = field(default_factory=dict)
    names: dict[str, str] = field(default_factory=dict)
    client: Identity = field(default_factory=Identity.generate)
    unreachable: set[bytes] = field(default_factory=set)

    @property
    def local_peer_id(self) -> bytes:
        return self.client.peer_id

    async def providers(self, model_id: str) -> list[ExecutorInfo]:
        return [
            ExecutorInfo(peer_id=m.peer_id, enc_pubkey=m.keys.public, kind="simulated",
                         label="SIMULATED — not secure", models=tuple(m.executor.runtimes), bundle=m.bundle)
            for m in self.members.values()
            if model_id in m.executor.runtimes
        ]

    def known_models(self) -> Mapping[str, str]:
        return self.names

    def attested_models(self) -> set[str]:
        return {mid for m in self.members.values() for mid in m.executor.runtimes}

    async def open_job_stream(self, peer_id: bytes) -> FrameIO:
        if peer_id in self.unreachable:
            raise ConnectionError("unreachable")
        member = self.members[peer_id]
        member.sessions += 1
        client_end, executor_end = memory_frame_pair(self.client.peer_id, peer_id)
        self.nursery.start_soon(member.executor.serve, executor_end)
        return client_end

    async def challenge(self, info: ExecutorInfo, nonce: bytes) -> tuple[bool, str]:
        return info.peer_id not in self.unreachable, "memory network: no evidence to check"


def add_member(
    net: MemoryNetwork,
    runtimes: Mapping[str, Any],
    *,
    fault: Fault | None = None,
    slow_seconds: float = 30.0,
    settings: ExecutorSettings | None = None,
) -> Member:
    identity = Identity.generate()
    keys = EncryptionKeyPair.generate()
    member_box: list[Member] = []

    def lookup(public: bytes) -> EncryptionKeyPair | None:
        return member_box[0].key_lookup(public)

    executor = Executor(
        identity, lookup, runtimes,
        faults=FaultConfig(fault, slow_seconds=slow_seconds) if fault else None,
        settings=settings,
        limiter=trio.CapacityLimiter(1),
    )
    issued = int(time.time())
    bundle = build_bundle(
        identity, keys.public, issued_at=issued, epoch_seconds=POLICY.epoch_seconds,
        collect_cpu_evidence=PLATFORM.collector(MEASUREMENT, issued),
    ).to_wire()
    member = Member(identity, keys, executor, bundle=bundle)
    member_box.append(member)
    net.members[identity.peer_id] = member
    return member


def make_router(net: MemoryNetwork, **settings: Any) -> Router:
    return Router(net, settings=RouterSettings(**settings), identity=net.client)


def names_for(runtimes: Sequence[Any]) -> dict[str, str]:
    return {r.name: r.model_id for r in runtimes}


TEXTS = ["Confidential inference on attested peers.", "A second sentence, rather different."]


@pytest.fixture(scope="session")
def models():
    """(embedding runtime, chat runtime, in-process reference embeddings of TEXTS), loaded once."""
    from node.runtime import load_runtime

    embed = load_runtime("all-MiniLM-L6-v2")
    chat = load_runtime("veilnet-tiny-random-lm")
    reference = embed.embed(TEXTS)  # type: ignore[attr-defined]
    return embed, chat, reference
