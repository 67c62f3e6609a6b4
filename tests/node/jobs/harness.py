"""Job-test harnesses: in-process executors wired by memory pipes, and a cluster of node processes.

In-process (``MemoryNetwork``): every byte still goes through the real code paths — sealing,
framing, message codecs, commit/reveal, the executor's checks, the router's flow and vote — only
the transport is a pair of trio memory channels. ``JobCluster`` / ``job_cluster`` is the testnet of
real node processes on 127.0.0.1 that the multi-node job tests (``test_network``,
``test_live_stream``) share, so both cover libp2p with one set-up.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from node.config import NodeConfig, TestEvidenceFault, load_node_config
from node.jobs.executor import Executor, ExecutorSettings
from node.jobs.faults import Fault, FaultConfig
from node.jobs.frames import FrameIO, memory_frame_pair
from node.jobs.network_view import ExecutorInfo
from node.jobs.router import Router, RouterSettings
from node.testnet import NodeProcess
from protocol.attestation.bundle import build_bundle
from protocol.attestation.policy import Policy
from protocol.attestation.simulated import SimulatedPlatform, source_measurement
from protocol.identity import Identity
from protocol.numerics import EngineEntry, EngineIdentity
from protocol.sealing import EncryptionKeyPair
from tests.node.cluster import Cluster

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
    engines: Mapping[str, EngineIdentity] | None = None,
) -> Member:
    """An executor serving ``runtimes``; ``engines`` (model id → engine) are attested in its
    bundle as a node's are (none: the bundle names no engine, as older nodes' do)."""
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
        models=sorted(runtimes) if engines else (),
        engines=[EngineEntry(m, e) for m, e in sorted((engines or {}).items())],
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


# ---------------------------------------------------------------------------- node processes

MODELS = ("all-MiniLM-L6-v2", "veilnet-tiny-random-lm")
EMBED, CHAT = MODELS
# Generous timeouts: up to eight node processes share two cores here (a warm embedding takes
# ~30 ms alone, seconds when every process computes at once).
ROUTER_EXTRA = {"commit_timeout_s": 15, "reveal_timeout_s": 3, "deadline_s": 60}


class JobCluster(Cluster):
    """Executors serving ``models``; every node traces its job-stream frames for the canary tests."""

    def __init__(self, root: Path, nodes: int, *, models: Sequence[str] = MODELS, **kwargs: Any) -> None:
        super().__init__(root, nodes, **kwargs)
        self.models = tuple(models)

    def _overrides(self, index: int, config: NodeConfig) -> NodeConfig:
        config = super()._overrides(index, config)
        extra = {**ROUTER_EXTRA, "trace_job_frames": str(config.data_dir / "frames.trace")}
        return replace(config, models=self.models, extra=extra)

    def add_job_node(self, *, extra: dict[str, Any], fault: TestEvidenceFault | None = None) -> NodeProcess:
        """Start one more executor of this testnet with ``[extra]`` settings (e.g. a fault mode)."""
        assert self.layout is not None
        index = len(self.nodes)
        template = load_node_config(self.layout.node_configs[0])
        node_dir = self.root / f"node-{index}"
        config = replace(
            template, data_dir=node_dir, listen=("/ip4/127.0.0.1/tcp/0",), api="127.0.0.1:0",
            log_file=node_dir / "node.log", label=f"node-{index}", test_evidence_fault=fault,
            models=self.models,
            extra={**ROUTER_EXTRA, "trace_job_frames": str(node_dir / "frames.trace"), **extra},
        )
        path = node_dir / "node.toml"
        config.save(path)
        return self._spawn(index, path, ("--bootstrap", self.nodes[0].multiaddr))

    def serving(self, observer: NodeProcess, peer: NodeProcess) -> bool:
        """``observer`` has ``peer`` attested with every model of this cluster."""
        wanted = peer.info["peer_id"]
        return any(
            p["peer_id"] == wanted and len(p["models"]) == len(self.models) for p in self.peers(observer)
        )

    def post(self, node: NodeProcess, path: str, body: dict[str, Any]) -> httpx.Response:
        return httpx.post(f"{node.api_url}{path}", json=body, timeout=90.0)

    def embed(
        self, texts: list[str], node: NodeProcess | None = None, *, settled: bool = True, **veilnet: Any
    ) -> dict[str, Any]:
        """The answer; with ``settled``, its ``veilnet`` report is the final one (an answer given at
        a majority of the quorum judges its slower executors after: docs/protocol/jobs.md §4)."""
        body: dict[str, Any] = {"model": EMBED, "input": texts}
        if veilnet:
            body["veilnet"] = veilnet
        node = node or self.nodes[0]
        response = self.post(node, "/v1/embeddings", body)
        assert response.status_code == 200, response.text
        answer = dict(response.json())
        if settled and answer["veilnet"].get("settled") is False:
            answer["veilnet"] = self.get(node, f"/veilnet/v1/jobs/{answer['veilnet']['job_id']}")
            assert answer["veilnet"]["settled"] is True
        return answer

    def gauge(self, node: NodeProcess, name: str) -> float:
        return self.metrics(node).get(name, 0.0)


def job_cluster(prefix: str, models: Sequence[str] = MODELS) -> Iterator[JobCluster]:
    """A module fixture's body: four executors of ``models``, each seen serving by node 0.

    Not tmp_path_factory: pytest deletes all but the newest three base temp dirs, and a concurrent
    pytest run (CI shards, other developers) would delete this cluster's live files. One torch
    thread per node process: eight processes with two threads each on two cores would mostly
    measure oversubscription (children inherit the environment).
    """
    root = Path(tempfile.mkdtemp(prefix=prefix))
    previous_threads = os.environ.get("VEILNET_TORCH_THREADS")
    os.environ["VEILNET_TORCH_THREADS"] = "1"
    c = JobCluster(root, 4, models=models, reannounce_seconds=4)
    try:
        c.start()
        c.wait_until(lambda: all(c.serving(c.nodes[0], n) for n in c.nodes[1:]), "4 executors serving", 120)
        yield c
    finally:
        c.close()
        shutil.rmtree(root, ignore_errors=True)
        if previous_threads is None:
            os.environ.pop("VEILNET_TORCH_THREADS", None)
        else:
            os.environ["VEILNET_TORCH_THREADS"] = previous_threads
