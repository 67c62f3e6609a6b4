"""Bringing up an engine-backed chat model: launch (supervised) or attach, then wrap it as a runtime.

This is the one place that turns the node config's ``[engine]`` table into an ``EngineChatRuntime``:
it starts the supervisor (or waits for an attached engine to answer), asks the engine for its
version, and fixes the identity the node attests for the model (family, version, dtype, device,
whether it can score).
"""

from __future__ import annotations

import logging
from pathlib import Path

import trio

from node.config import EngineSettings
from node.runtime.base import EngineIdentity
from node.runtime.engine_client import EngineClient, EngineUnavailable
from node.runtime.engine_runtime import SCORING_FAMILIES, EngineChatRuntime
from node.runtime.engine_supervisor import EngineLaunch, EngineSupervisor, wait_ready

__all__ = ["open_engine_runtime"]

log = logging.getLogger("veilnet.engine")


async def open_engine_runtime(
    settings: EngineSettings, nursery: trio.Nursery, *, model_dir: Path, model_id: str, name: str,
    log_path: Path | None = None,
) -> tuple[EngineChatRuntime, EngineSupervisor | None]:
    """The model served by the configured engine, once the engine answers. A launched engine runs
    in ``nursery`` (stopped when it is cancelled); an attached one is only waited for."""
    supervisor: EngineSupervisor | None = None
    if settings.url:
        client = EngineClient(settings.url, settings.key(), settings.served_name or name)
        log.info("attaching to the %s engine at %s", settings.family, settings.url)
        await wait_ready(client, settings.startup_timeout_seconds)
    else:
        supervisor = EngineSupervisor(EngineLaunch(
            model_dir=model_dir, served_name=name, python=settings.python, dtype=settings.dtype,
            device=settings.device, max_model_len=settings.max_model_len, kv_cache_gib=settings.kv_cache_gib,
            extra_args=settings.extra_args, startup_timeout_s=settings.startup_timeout_seconds,
            restart_max_s=settings.restart_max_seconds, log_path=log_path,
        ))
        log.info("launching the %s engine for %s (log: %s)", settings.family, name, log_path)
        await nursery.start(supervisor.run)
        client = supervisor.client
    try:
        version = await trio.to_thread.run_sync(client.version)
    except EngineUnavailable:
        if settings.family in SCORING_FAMILIES:
            raise
        version = "unknown"  # a generic OpenAI-compatible server need not expose /version
    identity = EngineIdentity(settings.family, version, settings.dtype, settings.device,
                              score=settings.family in SCORING_FAMILIES)
    runtime = await trio.to_thread.run_sync(lambda: EngineChatRuntime(
        model_dir, model_id=model_id, client=client, engine=identity, name=name,
        context_length=settings.max_model_len or None,
    ))
    if not identity.score:
        log.warning("%s is served by %s, which cannot score tokens: this node is a primary for it, "
                    "never a verifier", name, identity.describe())
    return runtime, supervisor
