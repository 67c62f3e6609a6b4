"""Run one attack in its own process while watching the testnet: what tests and ``make bench`` share.

The attacker runs as ``veilnet adversary run`` in a separate process (so its CPU and event loop are
not the observer's), the :class:`~node.adversary.observe.Observer` watches every node and sends
honest requests meanwhile, and the result pairs the attacker's outcome with what the nodes
went through. Afterwards :func:`settle` waits (bounded) for the nodes' memory to come back.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from node.adversary.observe import Observation, Observer, rss_mb

__all__ = ["AttackRun", "attack_process", "observe_attack", "settle"]


@dataclass
class AttackRun:
    attack: str
    outcome: dict[str, Any]
    observation: Observation
    attacker_output: str

    def row(self) -> dict[str, Any]:
        return {
            "attack": self.attack,
            **self.observation.summary(),
            "cut_off_after_s": self.outcome.get("cut_off_after"),
        }


def attack_process(
    attack: str,
    target: str,
    testnet_config: Path,
    *,
    duration: float,
    scale: float,
    code_root: Path | None = None,
) -> subprocess.Popen[str]:
    """``veilnet adversary run`` for one attack, with the packages under ``code_root`` (default: ours)."""
    env = dict(os.environ)
    if code_root is not None:
        env["PYTHONPATH"] = str(code_root)
    return subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from node.cli.main import main; main()",
            "adversary",
            "run",
            "--target",
            target,
            "--testnet-config",
            str(testnet_config),
            "--attack",
            attack,
            "--duration",
            str(duration),
            "--scale",
            str(scale),
        ],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def observe_attack(
    attack: str,
    target: str,
    testnet_config: Path,
    nodes: Sequence[tuple[int, str]],
    honest: Callable[[], str | None] | None,
    *,
    duration: float,
    scale: float = 1.0,
    code_root: Path | None = None,
    grace: float = 60.0,
    linger: float = 3.0,
) -> AttackRun:
    """Run ``attack`` against ``target`` and watch ``nodes`` ((pid, api_url)) until it has finished,
    and ``linger`` seconds more (a node takes a moment to exit after a fatal input)."""
    observer = Observer(nodes, honest)
    observer.start()
    process = attack_process(
        attack, target, testnet_config, duration=duration, scale=scale, code_root=code_root
    )
    try:
        output, _ = process.communicate(timeout=duration + grace)
    except subprocess.TimeoutExpired:
        process.kill()
        output, _ = process.communicate()
        output += f"\n(attacker killed after {duration + grace:.0f} s)"
    finally:
        time.sleep(linger)  # a node that is dying (or freezing) because of the attack shows it now
        observation = observer.stop()
    outcome: dict[str, Any] = {}
    for line in output.splitlines():
        if line.startswith("{"):
            outcome = json.loads(line)
    return AttackRun(attack, outcome, observation, output)


def settle(
    pids: Sequence[int], baseline_mb: Sequence[float], allowance_mb: float, timeout: float
) -> list[float]:
    """Wait until every node's RSS is within ``allowance_mb`` of its baseline; returns the last RSS
    (the caller asserts). Bounded by ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        now = [rss_mb(pid) or 0.0 for pid in pids]
        if all(value <= base + allowance_mb for value, base in zip(now, baseline_mb, strict=True)):
            return now
        if time.monotonic() > deadline:
            return now
        time.sleep(0.5)
