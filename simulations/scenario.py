"""Scenario files: TOML in, a frozen, fully validated :class:`Scenario` out, before any process starts.

A scenario says which network to build (nodes, models, client-only entry points), what to ask of
it (the workload), who misbehaves (adversaries), what happens to it on a schedule (crashes,
restarts, churn, partitions) and over which links (delay, jitter, loss, bandwidth). The format is
documented field by field in ``simulations/README.md``.

Rules this module enforces:

1. Every key is known and every value has the right type and range; otherwise
   :class:`ScenarioError` names the key's dotted path, its line in the file and the reason.
   tomllib reports no line numbers for values, so the line is found by looking for the key in the
   text of its table (simple, and honest about it: when the key cannot be found the error says
   so instead of guessing).
2. Cross-field rules are checked here too (a chat mix needs a chat model, node indexes exist,
   adversaries fit among the nodes that may misbehave, a partition heals after it starts).
3. Behaviours that this build cannot perform are refused with a reason, never silently ignored.

Why one module over 500 lines: the dataclasses, the line finder and one small reader per table
are one format; the README documents the same fields in the same order.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

__all__ = [
    "CHAT_MODEL",
    "EMBEDDINGS_MODEL",
    "Action",
    "Adversary",
    "Attacks",
    "Behaviour",
    "Checks",
    "Churn",
    "Event",
    "Network",
    "Nodes",
    "Partition",
    "Scenario",
    "ScenarioError",
    "Workload",
    "load_scenario",
    "parse_scenario",
]

# The two models every node can serve without downloads (node/runtime/loader.py embeds them);
# the workload's embeddings and chat jobs go to these.
EMBEDDINGS_MODEL = "all-MiniLM-L6-v2"
CHAT_MODEL = "veilnet-tiny-random-lm"
KNOWN_MODELS = (EMBEDDINGS_MODEL, CHAT_MODEL)


class ScenarioError(ValueError):
    """A scenario file is invalid: ``path`` (dotted key), ``line`` (1-based, or None) and why."""

    def __init__(self, source: str, key: str, line: int | None, reason: str) -> None:
        where = f"{source}:{line}" if line is not None else f"{source} (line not found)"
        super().__init__(f"{where}: {key}: {reason}" if key else f"{where}: {reason}")
        self.source = source
        self.key = key
        self.line = line
        self.reason = reason


class Behaviour(StrEnum):
    """What an adversarial node does. Job faults ride in the node config's ``[extra] fault``
    (node/faults.py); evidence faults in ``test_evidence_fault`` (node/config.py)."""

    WRONG_OUTPUT = "wrong-output"
    SLOW = "slow"
    CRASH_MID_JOB = "crash-mid-job"
    DROP_REVEAL = "drop-reveal"
    COPY = "copy"
    FORGED_SIGNATURE = "forged-signature"
    MEASUREMENT_OUTSIDE_POLICY = "measurement-outside-policy"
    WRONG_PLATFORM_KEY = "wrong-platform-key"
    IDENTITY_CHURN = "identity-churn"
    GARBAGE = "garbage"
    FLOOD = "flood"


JOB_FAULTS = frozenset({
    Behaviour.WRONG_OUTPUT, Behaviour.SLOW, Behaviour.CRASH_MID_JOB, Behaviour.DROP_REVEAL, Behaviour.COPY,
})
EVIDENCE_FAULTS = frozenset({
    Behaviour.FORGED_SIGNATURE, Behaviour.MEASUREMENT_OUTSIDE_POLICY, Behaviour.WRONG_PLATFORM_KEY,
})
# Hostile peers (node/adversary, run as `veilnet adversary run`): extra peers holding only the
# testnet's PSK. Each garbage or flood adversary is one such peer cycling through its family's
# attacks against the honest nodes in turn for the whole workload.
HOSTILE_PEERS = frozenset({Behaviour.GARBAGE, Behaviour.FLOOD})
ATTACK_FAMILIES = {
    Behaviour.GARBAGE: ("garbage-streams", "meshsub-cut-field", "gossip-bad-from", "yamux-malformed",
                        "identify-huge"),
    Behaviour.FLOOD: ("gossip-flood", "dht-put-flood", "dht-query-flood", "stream-flood", "reconnect-flood",
                      "challenge-flood"),
}
ATTACK_ROUND_S = 10.0  # each attack of a hostile peer's cycle runs this long


def known_attacks() -> frozenset[str] | None:
    """The attack names of this build's hostile peer (node/adversary), or None without one."""
    try:
        from node.adversary.attacks import ATTACKS
    except ModuleNotFoundError:
        return None
    return frozenset(ATTACKS)


class Action(StrEnum):
    CRASH = "crash"  # SIGKILL: what a power cut or OOM kill looks like to the others
    STOP = "stop"  # SIGTERM: an orderly leave
    RESTART = "restart"  # start the node's config again (same identity)


@dataclass(frozen=True)
class Nodes:
    count: int
    models: tuple[str, ...]
    clients: int  # the last ``clients`` nodes serve no model: entry points only
    reannounce_seconds: int
    bundle_lifetime_seconds: int
    target_peers: int


@dataclass(frozen=True)
class Workload:
    duration_s: float
    concurrency: int | None
    rate_per_s: float | None
    chat_fraction: float
    replicas: int
    mode: str
    spot_check_probability: float
    texts_per_job: int
    max_tokens: int
    deadline_s: float


@dataclass(frozen=True)
class Adversary:
    behaviour: Behaviour
    count: int
    slow_seconds: float
    interval_s: float  # identity-churn: how often a fresh identity rejoins


@dataclass(frozen=True)
class Attacks:
    """A hostile peer's run: ``attacks`` one after another against ``targets`` (node indexes; empty:
    the honest nodes in turn), from ``at_s``, each for ``duration_s``; again until the workload
    ends when ``repeat``."""

    attacks: tuple[str, ...]
    targets: tuple[int, ...]
    at_s: float
    duration_s: float
    scale: float
    repeat: bool


@dataclass(frozen=True)
class Event:
    at_s: float
    action: Action
    nodes: tuple[int, ...]


@dataclass(frozen=True)
class Churn:
    start_s: float
    interval_s: float
    down_s: float
    nodes: int  # how many honest executors take part (chosen with the seed)


@dataclass(frozen=True)
class Partition:
    at_s: float
    heal_s: float
    groups: tuple[tuple[int, ...], ...]


@dataclass(frozen=True)
class Network:
    delay_ms: float
    jitter_ms: float
    loss: float
    bandwidth_kbit: int
    partitions: tuple[Partition, ...]

    @property
    def shaped(self) -> bool:
        return bool(self.delay_ms or self.jitter_ms or self.loss or self.bandwidth_kbit or self.partitions)


@dataclass(frozen=True)
class Checks:
    """Assertions evaluated after the run; a failed check makes ``sim run`` exit 3."""

    min_success_rate: float | None
    no_wrong_accepted: bool
    all_wrong_flagged: bool
    forged_never_admitted: bool
    merge_within_s: float | None  # after the last heal, every honest registry is whole again within this


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    seed: int
    nodes: Nodes
    workload: Workload
    adversaries: tuple[Adversary, ...]
    events: tuple[Event, ...]
    churn: Churn | None
    network: Network
    checks: Checks
    attacks: tuple[Attacks, ...] = ()
    source: str = "<scenario>"

    @property
    def adversary_count(self) -> int:
        """Adversarial *nodes* (hostile peers are extra processes, not nodes)."""
        return sum(a.count for a in self.adversaries if a.behaviour not in HOSTILE_PEERS)

    def hostile_peers(self) -> tuple[Attacks, ...]:
        """Every hostile peer: one per garbage/flood adversary, then each [[attacks]] entry."""
        peers = [
            Attacks(ATTACK_FAMILIES[a.behaviour], (), 2.0, ATTACK_ROUND_S, 1.0, True)
            for a in self.adversaries if a.behaviour in HOSTILE_PEERS for _ in range(a.count)
        ]
        return (*peers, *self.attacks)

    def with_seed(self, seed: int) -> Scenario:
        from dataclasses import replace

        return replace(self, seed=seed)

    def with_duration(self, duration_s: float) -> Scenario:
        from dataclasses import replace

        return replace(self, workload=replace(self.workload, duration_s=duration_s))


# ------------------------------------------------------------------------------ locating lines


_HEADER = re.compile(r"^\s*(\[\[?)\s*([A-Za-z0-9_.\-\s\"]+?)\s*\]\]?\s*(#.*)?$")


def _find_line(text: str, path: Sequence[str | int]) -> int | None:
    """The 1-based line of the key at ``path`` (strings are keys, ints index arrays of tables).

    Walks the table headers: ``[a]`` for ``("a", key)``, the n-th ``[[a]]`` for
    ``("a", n, key)``, ``[a.b]`` for nested tables; then looks for ``key =`` (or ``key`` inside
    an inline table) after that header and before the next one.
    """
    lines = text.splitlines()
    keys = [p for p in path if isinstance(p, str)]
    if not keys:
        return None
    # Table part: everything but the last key (and any trailing index for arrays of values).
    table_path: list[str] = []
    occurrence: int | None = None
    for i, part in enumerate(path[:-1]):
        if isinstance(part, int):
            occurrence = part
        else:
            table_path.append(part)
        del i
    last = path[-1]
    key = last if isinstance(last, str) else (keys[-1] if keys else "")
    if isinstance(last, int):
        # Pointing at an element of an array value: the line of the array's key.
        table_path = table_path[:-1]
    wanted = ".".join(table_path)
    start, end = 0, len(lines)
    if wanted:
        seen = -1
        found = False
        for number, line in enumerate(lines):
            match = _HEADER.match(line)
            if match and match.group(2).replace(" ", "").replace('"', "") == wanted:
                is_array = match.group(1) == "[["
                if is_array:
                    seen += 1
                if not is_array or occurrence is None or seen == occurrence:
                    start = number + 1
                    found = True
                    break
        if not found:
            # A table written inline (``network = {delay_ms = 5}``) or a dotted key at top level.
            return _find_key(lines, 0, len(lines), table_path[-1]) if table_path else None
        for number in range(start, len(lines)):
            if _HEADER.match(lines[number]):
                end = number
                break
    else:
        for number, line in enumerate(lines):
            if _HEADER.match(line):
                end = number
                break
    return _find_key(lines, start, end, key)


def _find_key(lines: Sequence[str], start: int, end: int, key: str) -> int | None:
    pattern = re.compile(rf"(^|[\s{{,]){re.escape(key)}\s*=")
    for number in range(start, end):
        code = lines[number].split("#", 1)[0]
        if pattern.search(code):
            return number + 1
    return None


# ---------------------------------------------------------------------------------- reading


class _Reader:
    """Takes typed values out of one table, remembering where it is for error messages."""

    def __init__(self, data: Mapping[str, Any], path: tuple[str | int, ...], text: str, source: str) -> None:
        self.data = dict(data)
        self.path = path
        self.text = text
        self.source = source

    def error(
        self, key: str | int | None, reason: str, path: tuple[str | int, ...] | None = None
    ) -> ScenarioError:
        full = path if path is not None else (self.path + ((key,) if key is not None else ()))
        dotted = ".".join(f"[{p}]" if isinstance(p, int) else p for p in full).replace(".[", "[")
        line = _find_line(self.text, full) if full else None
        return ScenarioError(self.source, dotted, line, reason)

    def sub(self, key: str, index: int | None = None) -> _Reader:
        value = self.data.pop(key, {})
        path = self.path + (key,) + ((index,) if index is not None else ())
        if not isinstance(value, Mapping):
            raise self.error(key, f"must be a table, not {type(value).__name__}")
        return _Reader(value, path, self.text, self.source)

    def tables(self, key: str) -> list[_Reader]:
        value = self.data.pop(key, [])
        if not isinstance(value, list) or not all(isinstance(item, Mapping) for item in value):
            dotted = ".".join(map(str, (*self.path, key)))
            raise self.error(key, f"must be an array of tables ([[{dotted}]])")
        return [_Reader(item, (*self.path, key, i), self.text, self.source) for i, item in enumerate(value)]

    def number(self, key: str, default: float | None, *, low: float, high: float,
               low_open: bool = False) -> float | None:
        if key not in self.data:
            return default
        value = self.data.pop(key)
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise self.error(key, f"must be a number, not {type(value).__name__}")
        if value > high or value < low or (low_open and value == low):
            bracket = "(" if low_open else "["
            raise self.error(key, f"must be in {bracket}{low}, {high}], got {value}")
        return float(value)

    def integer(self, key: str, default: int | None, *, low: int, high: int) -> int | None:
        if key not in self.data:
            return default
        value = self.data.pop(key)
        if not isinstance(value, int) or isinstance(value, bool):
            raise self.error(key, f"must be an integer, not {type(value).__name__}")
        if not low <= value <= high:
            raise self.error(key, f"must be in [{low}, {high}], got {value}")
        return value

    def string(self, key: str, default: str | None, choices: Sequence[str] | None = None) -> str | None:
        if key not in self.data:
            return default
        value = self.data.pop(key)
        if not isinstance(value, str):
            raise self.error(key, f"must be a string, not {type(value).__name__}")
        if choices is not None and value not in choices:
            raise self.error(key, f"must be one of {', '.join(choices)}; got {value!r}")
        return value

    def boolean(self, key: str, default: bool) -> bool:
        if key not in self.data:
            return default
        value = self.data.pop(key)
        if not isinstance(value, bool):
            raise self.error(key, f"must be true or false, not {type(value).__name__}")
        return value

    def int_list(self, key: str, *, high: int) -> tuple[int, ...] | None:
        if key not in self.data:
            return None
        value = self.data.pop(key)
        if not isinstance(value, list) or not all(
            isinstance(v, int) and not isinstance(v, bool) for v in value
        ):
            raise self.error(key, "must be a list of node indexes (integers)")
        for v in value:
            if not 0 <= v < high:
                raise self.error(key, f"node {v} does not exist (nodes are 0..{high - 1})")
        return tuple(value)

    def require(self, key: str, value: Any) -> Any:
        if value is None:
            raise self.error(key, "is required")
        return value

    def done(self) -> None:
        """Refuse whatever was not taken: an unknown key is a typo or a field of a newer build."""
        for key in self.data:
            raise self.error(key, "unknown key")


# ---------------------------------------------------------------------------------- parsing


def load_scenario(path: Path) -> Scenario:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ScenarioError(str(path), "", None, f"cannot read: {exc.strerror or exc}") from None
    return parse_scenario(text, source=str(path))


def parse_scenario(text: str, source: str = "<scenario>") -> Scenario:
    """Parse and validate a scenario; raises :class:`ScenarioError` with the line and reason."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        match = re.search(r"line (\d+)", str(exc))
        line = int(match.group(1)) if match else None
        raise ScenarioError(source, "", line, f"invalid TOML: {exc}") from None
    top = _Reader(raw, (), text, source)
    name = top.require("name", top.string("name", None))
    if not re.fullmatch(r"[A-Za-z0-9_\-]{1,64}", name):
        raise top.error("name", "must be 1-64 letters, digits, '-' or '_'")
    description = top.string("description", "") or ""
    seed = top.integer("seed", 0, low=0, high=2**63 - 1) or 0

    nodes = _nodes(top.sub("nodes"))
    workload = _workload(top.sub("workload"), nodes)
    adversaries = tuple(_adversary(r, nodes) for r in top.tables("adversaries"))
    bad = sum(a.count for a in adversaries if a.behaviour not in HOSTILE_PEERS)
    executors = nodes.count - nodes.clients - 1  # node 0 bootstraps the others and stays honest
    if bad > executors:
        raise top.error("adversaries", f"{bad} adversarial nodes do not fit: only {executors} executors"
                        " besides node 0 (the bootstrap) may misbehave")
    events = tuple(sorted((_event(r, nodes, workload) for r in top.tables("events")), key=lambda e: e.at_s))
    churn = _churn(top.sub("churn"), nodes, workload, bad) if "churn" in top.data else None
    network = _network(top.sub("network"), nodes, workload)
    checks = _checks(top.sub("checks"))
    attacks = tuple(_attacks(r, nodes, workload) for r in top.tables("attacks"))
    top.done()
    if checks.merge_within_s is not None and not network.partitions:
        raise top.error("checks", "merge_within_s needs a [[network.partitions]] entry",
                        path=("checks", "merge_within_s"))
    if checks.all_wrong_flagged and not any(a.behaviour is Behaviour.WRONG_OUTPUT for a in adversaries):
        raise top.error("checks", "all_wrong_flagged needs a wrong-output adversary", path=("checks",
                        "all_wrong_flagged"))
    return Scenario(
        name=name, description=description, seed=seed, nodes=nodes, workload=workload,
        adversaries=adversaries, events=events, churn=churn, network=network, checks=checks,
        attacks=attacks, source=source,
    )


def _nodes(r: _Reader) -> Nodes:
    count = r.require("count", r.integer("count", None, low=1, high=64))
    models_raw = r.data.pop("models", [EMBEDDINGS_MODEL])
    if not isinstance(models_raw, list) or not models_raw or not all(isinstance(m, str) for m in models_raw):
        raise r.error("models", "must be a non-empty list of model names")
    for model in models_raw:
        if model not in KNOWN_MODELS:
            raise r.error("models", f"{model!r} is not an embedded model ({', '.join(KNOWN_MODELS)})")
    clients = r.integer("clients", 0, low=0, high=count - 1) or 0
    if count - clients < 1:
        raise r.error("clients", "at least one node must serve the models")
    reannounce = r.integer("reannounce_seconds", 20, low=1, high=3600) or 20
    lifetime = r.integer("bundle_lifetime_seconds", 120, low=30, high=86_400) or 120
    if reannounce >= lifetime:
        raise r.error("reannounce_seconds", "must be shorter than bundle_lifetime_seconds")
    target = r.integer("target_peers", 12, low=1, high=1000) or 12
    r.done()
    return Nodes(count, tuple(dict.fromkeys(models_raw)), clients, reannounce, lifetime, target)


def _workload(r: _Reader, nodes: Nodes) -> Workload:
    duration = r.require("duration_s", r.number("duration_s", None, low=1, high=86_400))
    concurrency = r.integer("concurrency", None, low=1, high=256)
    rate = r.number("rate_per_s", None, low=0, high=1000, low_open=True)
    if (concurrency is None) == (rate is None):
        raise r.error("concurrency" if concurrency is not None else "duration_s",
                      "give exactly one of concurrency (closed loop) or rate_per_s (open loop)",
                      path=(*r.path, "concurrency" if concurrency is not None else "rate_per_s"))
    mix = r.sub("mix") if "mix" in r.data else None
    chat_fraction = 0.0
    if mix is not None:
        embeddings = mix.number("embeddings", 0.0, low=0, high=1e6) or 0.0
        chat = mix.number("chat", 0.0, low=0, high=1e6) or 0.0
        mix.done()
        if embeddings + chat <= 0:
            raise mix.error("embeddings", "the mix needs a positive weight")
        chat_fraction = chat / (embeddings + chat)
    if chat_fraction > 0 and CHAT_MODEL not in nodes.models:
        raise r.error("mix", f"chat jobs need {CHAT_MODEL!r} in nodes.models")
    if chat_fraction < 1 and EMBEDDINGS_MODEL not in nodes.models:
        raise r.error("mix", f"embeddings jobs need {EMBEDDINGS_MODEL!r} in nodes.models")
    replicas = r.integer("replicas", 3, low=1, high=15) or 3
    executors = nodes.count - nodes.clients
    if replicas > executors:
        raise r.error("replicas",
                      f"{replicas} replicas need {replicas} executors; the scenario has {executors}")
    mode = r.string("mode", "consensus", ("consensus", "spot-check")) or "consensus"
    spot = r.number("spot_check_probability", 0.1, low=0, high=1)
    texts = r.integer("texts_per_job", 4, low=1, high=64) or 4
    max_tokens = r.integer("max_tokens", 16, low=1, high=256) or 16
    deadline = r.number("deadline_s", 30.0, low=0, high=600, low_open=True)
    r.done()
    assert spot is not None and deadline is not None
    return Workload(
        duration, concurrency, rate, chat_fraction, replicas, mode, spot, texts, max_tokens, deadline
    )


def _adversary(r: _Reader, nodes: Nodes) -> Adversary:
    text = r.require("behaviour", r.string("behaviour", None, [b.value for b in Behaviour]))
    behaviour = Behaviour(text)
    if behaviour in HOSTILE_PEERS and known_attacks() is None:
        raise r.error("behaviour", f"{behaviour.value} needs the hostile-peer module (node/adversary),"
                      " not available in this build")
    fraction = r.number("fraction", None, low=0, high=1, low_open=True)
    count = r.integer("count", None, low=1, high=nodes.count)
    if (fraction is None) == (count is None):
        raise r.error("behaviour", "give exactly one of fraction or count", path=(*r.path, "behaviour"))
    if fraction is not None:
        count = max(1, round(fraction * nodes.count))
    slow = r.number("slow_seconds", 30.0, low=0, high=3600, low_open=True)
    interval = r.number("interval_s", 20.0, low=1, high=86_400)
    r.done()
    assert count is not None and slow is not None and interval is not None
    return Adversary(behaviour, count, slow, interval)


def _event(r: _Reader, nodes: Nodes, workload: Workload) -> Event:
    at = r.require("at_s", r.number("at_s", None, low=0, high=workload.duration_s))
    action = Action(r.require("action", r.string("action", None, [a.value for a in Action])))
    targets = r.require("nodes", r.int_list("nodes", high=nodes.count))
    if 0 in targets and action is not Action.RESTART:
        raise r.error("nodes", "node 0 is the bootstrap; crash another node")
    r.done()
    return Event(at, action, targets)


def _churn(r: _Reader, nodes: Nodes, workload: Workload, adversaries: int) -> Churn:
    start = r.number("start_s", 10.0, low=0, high=workload.duration_s)
    interval = r.require("interval_s", r.number("interval_s", None, low=1, high=86_400))
    down = r.require("down_s", r.number("down_s", None, low=1, high=86_400))
    honest = nodes.count - nodes.clients - 1 - adversaries
    count = r.integer("nodes", 1, low=1, high=max(1, honest))
    if honest < 1:
        raise r.error("nodes", "no honest executor besides node 0 is left to churn")
    r.done()
    assert start is not None and count is not None
    return Churn(start, interval, down, count)


def _network(r: _Reader, nodes: Nodes, workload: Workload) -> Network:
    delay = r.number("delay_ms", 0.0, low=0, high=10_000) or 0.0
    jitter = r.number("jitter_ms", 0.0, low=0, high=10_000) or 0.0
    if jitter > delay:
        raise r.error("jitter_ms", f"jitter ({jitter} ms) cannot exceed the delay ({delay} ms)")
    loss = r.number("loss", 0.0, low=0, high=0.5) or 0.0
    bandwidth = r.integer("bandwidth_kbit", 0, low=0, high=10_000_000) or 0
    partitions = []
    for p in r.tables("partitions"):
        at = p.require("at_s", p.number("at_s", None, low=0, high=workload.duration_s))
        heal = p.require("heal_s", p.number("heal_s", None, low=0, high=86_400))
        if heal <= at:
            raise p.error("heal_s", f"must be after at_s ({at})")
        groups_raw = p.data.pop("groups", None)
        if (not isinstance(groups_raw, list) or len(groups_raw) < 2 or not all(
            isinstance(g, list) and g and all(isinstance(i, int) and not isinstance(i, bool) for i in g)
            for g in groups_raw
        )):
            raise p.error("groups", "must be two or more non-empty lists of node indexes")
        flat = [i for g in groups_raw for i in g]
        if len(flat) != len(set(flat)):
            raise p.error("groups", "a node appears in two groups")
        for i in flat:
            if not 0 <= i < nodes.count:
                raise p.error("groups", f"node {i} does not exist (nodes are 0..{nodes.count - 1})")
        missing = sorted(set(range(nodes.count)) - set(flat))
        if missing:
            raise p.error("groups", f"nodes {missing} are in no group")
        p.done()
        partitions.append(Partition(at, heal, tuple(tuple(g) for g in groups_raw)))
    r.done()
    return Network(delay, jitter, loss, bandwidth, tuple(partitions))


def _attacks(r: _Reader, nodes: Nodes, workload: Workload) -> Attacks:
    known = known_attacks()
    raw = r.data.pop("attack", None)
    names = [raw] if isinstance(raw, str) else raw
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise r.error("attack", "is required: an attack name or a list of them (`veilnet adversary list`)")
    if known is None:
        raise r.error("attack", "hostile-peer attacks need node/adversary, not available in this build")
    for name in names:
        if name not in known:
            raise r.error("attack", f"unknown attack {name!r}; known: {', '.join(sorted(known))}")
    targets = r.int_list("targets", high=nodes.count) or ()
    at = r.number("at_s", 0.0, low=0, high=workload.duration_s)
    duration = r.number("duration_s", ATTACK_ROUND_S, low=0.5, high=600)
    scale = r.number("scale", 1.0, low=0.001, high=4.0)
    repeat = r.boolean("repeat", False)
    r.done()
    assert at is not None and duration is not None and scale is not None
    return Attacks(tuple(names), targets, at, duration, scale, repeat)


def _checks(r: _Reader) -> Checks:
    minimum = r.number("min_success_rate", None, low=0, high=1)
    checks = Checks(
        min_success_rate=minimum,
        no_wrong_accepted=r.boolean("no_wrong_accepted", False),
        all_wrong_flagged=r.boolean("all_wrong_flagged", False),
        forged_never_admitted=r.boolean("forged_never_admitted", False),
        merge_within_s=r.number("merge_within_s", None, low=0, high=3600, low_open=True),
    )
    r.done()
    return checks
