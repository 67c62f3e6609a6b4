"""Node and testnet configuration: TOML files in, validated frozen dataclasses out.

Two files, because they have different owners. The *testnet* config is shared by every member of
one network (its id, the pre-shared key that isolates it, the simulated platform key, the
appraisal policy); whoever joins receives a copy. The *node* config is one operator's choices
(data dir, listen and bootstrap addresses, API address, which models to serve).

Why one module over 500 lines: both configs share the bounded TOML reader, the typed-field
helpers and the address parsers, and every way a file or option can be wrong is decided here,
in one place, as a ConfigError naming the file and key (the CLI prints it as one line).
"""

from __future__ import annotations

import os
import secrets
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from enum import StrEnum
from pathlib import Path
from typing import Any

import multiaddr

__all__ = [
    "ConfigError",
    "EngineSettings",
    "EvidenceMode",
    "NodeConfig",
    "TestEvidenceFault",
    "TestnetConfig",
    "api_base_url",
    "dump_toml",
    "load_node_config",
    "load_testnet_config",
    "parse_api_address",
]

DEFAULT_API = "127.0.0.1:8700"
DEFAULT_LISTEN = "/ip4/0.0.0.0/tcp/4001"


class ConfigError(ValueError):
    """A config file or option is invalid; the message says which field and why."""


class EvidenceMode(StrEnum):
    """Where a node's attestation evidence comes from."""

    AUTO = "auto"  # real TEE if present; else simulated when the testnet allows it; else none
    SIMULATED = "simulated"  # software stand-in signed by the testnet platform key (not secure)
    NONE = "none"  # do not attest: a client-only node


class TestEvidenceFault(StrEnum):
    """Test-only ways to present bad simulated evidence (refused unless evidence is simulated)."""

    __test__ = False  # not a pytest class

    FORGED_SIGNATURE = "forged-signature"  # bundle signature does not verify
    MEASUREMENT_OUTSIDE_POLICY = "measurement-outside-policy"  # measures tampered sources
    WRONG_PLATFORM_KEY = "wrong-platform-key"  # evidence signed by a key that is not the testnet's


# ---------------------------------------------------------------------------------------- TOML


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, str):
        if "\n" in value:
            if "'''" in value:
                raise ConfigError("cannot write a multi-line string containing '''")
            return "'''\n" + value + "'''"
        escaped = value.replace("\\", "\\\\").replace('"', '\\"')
        return f'"{escaped}"'
    if isinstance(value, Sequence):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    raise ConfigError(f"cannot write {type(value).__name__} to TOML")


def dump_toml(data: Mapping[str, Any], header: str = "") -> str:
    """Write a flat TOML document (scalars, lists of scalars, one level of tables).

    tomllib reads TOML but the standard library cannot write it; our configs are flat enough
    that a writer this small is exact.
    """
    lines = [f"# {line}" for line in header.splitlines()]
    tables = {k: v for k, v in data.items() if isinstance(v, Mapping)}
    for key, value in data.items():
        if key not in tables and value is not None:
            lines.append(f"{key} = {_toml_value(value)}")
    for name, table in tables.items():
        lines.append("")
        lines.append(f"[{name}]")
        for key, value in table.items():
            if value is not None:
                lines.append(f"{key} = {_toml_value(value)}")
    return "\n".join(lines) + "\n"


MAX_CONFIG_BYTES = 1 << 20  # a config is a few KiB; a larger file is the wrong file


def _read_toml(path: Path) -> dict[str, Any]:
    """A TOML file's table; every way a path can fail to be one is a ConfigError naming it."""
    try:
        with open(path, "rb") as handle:
            raw = handle.read(MAX_CONFIG_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file (check the path)") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a directory (give the TOML file inside it)") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path}: larger than {MAX_CONFIG_BYTES} bytes (is it the right file?)")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text (is it the right file?)") from None
    if not text.strip():
        raise ConfigError(f"{path}: the file is empty")
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None


def _take(
    data: dict[str, Any], key: str, kind: type | tuple[type, ...], where: str, default: Any = None
) -> Any:
    if key not in data:
        return default
    value = data.pop(key)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ConfigError(f"{where}: {key} has the wrong type ({type(value).__name__})")
    return value


def _str_list(value: Any, key: str, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ConfigError(f"{where}: {key} must be a list of strings")
    return tuple(value)


def _check_multiaddrs(addrs: Sequence[str], key: str, *, need_peer_id: bool) -> None:
    for addr in addrs:
        try:
            parsed = multiaddr.Multiaddr(addr)
        except Exception as exc:
            raise ConfigError(f"{key}: {addr!r} is not a multiaddr ({exc})") from None
        protocols = [p.name for p in parsed.protocols()]
        if "tcp" not in protocols:
            raise ConfigError(f"{key}: {addr!r} is not a TCP address (Veilnet runs over TCP)")
        if need_peer_id and "p2p" not in protocols:
            raise ConfigError(f"{key}: {addr!r} must end in /p2p/<peer id>")


def parse_api_address(text: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``http://HOST:PORT[/]`` → (host, port). Port 0 asks the OS for a free port.

    Both spellings are accepted everywhere an API address is (``node start --api`` binds it,
    ``peers``/``infer --api`` call it), so the URL a node prints can be pasted into either.
    """
    rest = text.strip()
    if rest.lower().startswith("http://"):
        rest = rest[len("http://"):].rstrip("/")
    host, sep, port_text = rest.rpartition(":")
    bad = (
        not sep or not host or not port_text.isascii() or not port_text.isdigit()
        or not 0 <= int(port_text) <= 65535 or "/" in host or any(ch.isspace() for ch in host)
    )
    if bad:
        raise ConfigError(f"api: {text!r} is not HOST:PORT or http://HOST:PORT")
    return host.strip("[]"), int(port_text)


def api_base_url(text: str) -> str:
    """The ``http://host:port`` base URL of a node API given as HOST:PORT or URL (port 1..65535)."""
    host, port = parse_api_address(text)
    if port == 0:
        raise ConfigError(f"api: {text!r}: port 0 is for binding, not for calling a node")
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


# ------------------------------------------------------------------------------- testnet config


@dataclass(frozen=True)
class LimitSettings:
    """The node config's ``[limits]`` table. Defaults are safe for a public testnet node.

    Sizes were chosen against the attacks of the hardening review (see docs/protocol/network.md
    §Limits): a testnet node keeps ~12 peers; an honest peer holds one connection and a handful of
    streams per protocol (gossip 1, kad ≤ 3 concurrent lookups, jobs ≤ 64 sessions).
    """

    # -- connections
    connections: int = 300  # system: all established connections
    connections_per_peer: int = 2  # one, plus a simultaneous dial in each direction
    connections_per_ip: int = 64  # a whole local testnet shares 127.0.0.1; NAT shares a public IP
    # -- inbound streams
    inbound_streams: int = 4096  # system
    inbound_streams_per_peer: int = 256  # an executor's job sessions (64) plus everything else
    inbound_streams_per_protocol: int = 1024  # one protocol, all peers together
    inbound_streams_per_peer_protocol: int = 96  # one protocol, one peer
    # -- memory (bytes pending on a peer's behalf)
    memory: int = 256 << 20
    memory_per_peer: int = 32 << 20
    memory_per_connection: int = 32 << 20
    memory_per_stream: int = 16 << 20
    # -- DHT records (PUT_VALUE): only /veilnet/ keys are stored at all
    dht_record_bytes: int = 16 << 10
    dht_records_per_peer: int = 32
    dht_records: int = 1024  # x dht_record_bytes: at most 16 MiB of values in all
    # -- per-peer rates (per second, with a burst)
    dht_queries_per_second: float = 20.0  # an honest lookup sends ≤ 3 at a time
    dht_query_burst: int = 60
    challenges_per_second: float = 2.0  # a router challenges an executor only on jobs that ask for it
    challenge_burst: int = 20
    # -- scoring and gating (node.net.scoring)
    graylist_score: float = -100.0  # below it a peer is disconnected and banned
    ban_seconds: float = 300.0  # first ban; doubles on each repeat, up to ban_max_seconds
    ban_max_seconds: float = 3600.0
    score_half_life_seconds: float = 60.0
    # -- liveness (node.net.liveness)
    liveness_interval_seconds: float = 15.0
    liveness_timeout_seconds: float = 10.0  # a loaded honest node must not look dead

    def __post_init__(self) -> None:
        for item in fields(self):
            value = getattr(self, item.name)
            if item.name == "graylist_score":
                if not value < 0:
                    raise ValueError("limits.graylist_score must be negative")
                continue
            if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
                raise ValueError(f"limits.{item.name} must be a positive number, not {value!r}")
        if self.ban_max_seconds < self.ban_seconds:
            raise ValueError("limits.ban_max_seconds must be at least limits.ban_seconds")

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any], where: str = "[limits]") -> LimitSettings:
        """Typed parse of a TOML table: unknown keys and wrong types are errors, not ignored."""
        known = {item.name: item for item in fields(cls)}
        kwargs: dict[str, Any] = {}
        for key, value in raw.items():
            item = known.get(key)
            if item is None:
                raise ValueError(f"{where}: unknown key {key!r}")
            want_int = item.type in ("int", int)
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or (want_int and not isinstance(value, int))
            ):
                raise ValueError(f"{where}: {key} must be {'an integer' if want_int else 'a number'}")
            kwargs[key] = value
        return cls(**kwargs)

    def to_mapping(self) -> dict[str, Any]:
        """Only the settings that differ from the defaults (what a saved config needs to hold)."""
        default = LimitSettings()
        return {
            item.name: getattr(self, item.name)
            for item in fields(self)
            if getattr(self, item.name) != getattr(default, item.name)
        }


ENGINE_FAMILIES = ("torch", "vllm", "openai")


@dataclass(frozen=True)
class EngineSettings:
    """The node config's ``[engine]`` table: what computes the chat models this node serves.

    ``family = "torch"`` (the default) runs them in-process. ``"vllm"`` drives a vLLM server:
    launched and supervised by the node (``python`` names the interpreter that has vLLM
    installed, so the node and the engine can live in different virtual environments), or, when
    ``url`` is set, attached to one already running there with ``api_key`` (or the key in
    ``api_key_file``). ``"openai"`` attaches to any other OpenAI-compatible server: it generates,
    but returns no ranked prompt logprobs, so the node is never a verifier. Embedding models are
    always served in-process. docs/CONFIG.md lists every key.
    """

    family: str = "torch"
    python: str = ""  # launch: the engine's interpreter ("" = the node's own)
    url: str = ""  # attach: http://127.0.0.1:PORT of a running engine ("" = launch one)
    api_key: str = ""  # attach: its key
    api_key_file: str = ""  # attach: a file holding its key (keeps it out of the config)
    served_name: str = ""  # attach: the name the engine serves the model under ("" = the directory name)
    dtype: str = "bfloat16"
    device: str = "cpu"
    max_model_len: int = 0  # 0: the model's own context length
    kv_cache_gib: int = 1  # VLLM_CPU_KVCACHE_SPACE
    startup_timeout_seconds: float = 900.0
    restart_max_seconds: float = 60.0
    extra_args: tuple[str, ...] = ()  # appended to the engine's command line

    def __post_init__(self) -> None:
        if self.family not in ENGINE_FAMILIES:
            raise ConfigError(f"engine.family must be one of {list(ENGINE_FAMILIES)}, not {self.family!r}")
        if self.family == "openai" and not self.url:
            raise ConfigError("engine.family 'openai' attaches only: set engine.url")
        if self.url:
            host = self.url.split("://", 1)[-1].split("/", 1)[0].rsplit(":", 1)[0].strip("[]")
            if not self.url.startswith("http://") or host not in ("127.0.0.1", "localhost", "::1"):
                raise ConfigError("engine.url must be http:// on loopback (the engine runs beside the node)")
            if not (self.api_key or self.api_key_file):
                raise ConfigError("engine.url needs engine.api_key or engine.api_key_file")
        for name in ("max_model_len", "kv_cache_gib"):
            if getattr(self, name) < 0:
                raise ConfigError(f"engine.{name} must not be negative")
        if self.startup_timeout_seconds <= 0 or self.restart_max_seconds < 1:
            raise ConfigError("engine.startup_timeout_seconds must be > 0 and restart_max_seconds >= 1")

    @property
    def in_process(self) -> bool:
        return self.family == "torch"

    def key(self) -> str:
        """The attach key, from ``api_key`` or the first line of ``api_key_file``."""
        if self.api_key:
            return self.api_key
        try:
            return Path(self.api_key_file).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(f"engine.api_key_file: cannot read: {exc.strerror or exc}") from None

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any], where: str = "[engine]") -> EngineSettings:
        data = dict(raw)
        kwargs: dict[str, Any] = {}
        for item in fields(cls):
            if item.name not in data:
                continue
            value = data.pop(item.name)
            if item.name == "extra_args":
                kwargs[item.name] = _str_list(value, "extra_args", where)
                continue
            kinds: dict[str, type | tuple[type, ...]] = {"int": int, "float": (int, float)}
            kind = kinds.get(str(item.type), str)
            if not isinstance(value, kind) or isinstance(value, bool):
                raise ConfigError(f"{where}: {item.name} has the wrong type ({type(value).__name__})")
            kwargs[item.name] = value
        if data:
            raise ConfigError(f"{where}: unknown keys {sorted(data)}")
        try:
            return cls(**kwargs)
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from None

    def to_mapping(self) -> dict[str, Any]:
        """Only the settings that differ from the defaults."""
        default = EngineSettings()
        out: dict[str, Any] = {}
        for item in fields(self):
            value = getattr(self, item.name)
            if value != getattr(default, item.name):
                out[item.name] = list(value) if isinstance(value, tuple) else value
        return out


@dataclass(frozen=True)
class TestnetConfig:
    """What every member of one testnet shares. Treat the file as a secret: it holds the PSK
    and the simulated platform's private key (anyone holding it can mint simulated evidence)."""

    __test__ = False

    testnet_id: str
    psk: bytes
    policy_toml: str
    platform_seed: bytes | None = None  # simulated platform signing key; None: no simulated kind
    bootstrap: tuple[str, ...] = ()
    epoch_seconds: int = 600

    def __post_init__(self) -> None:
        if not self.testnet_id or len(self.testnet_id) > 64:
            raise ConfigError("testnet_id must be 1-64 characters")
        if len(self.psk) != 32:
            raise ConfigError("psk must be 32 bytes (64 hex digits)")
        if self.platform_seed is not None and len(self.platform_seed) != 32:
            raise ConfigError("platform_key must be 32 bytes (64 hex digits)")
        if not 10 <= self.epoch_seconds <= 86_400:
            raise ConfigError("epoch_seconds must be between 10 and 86400")
        _check_multiaddrs(self.bootstrap, "bootstrap", need_peer_id=True)

    @property
    def psk_hex(self) -> str:
        return self.psk.hex()

    @classmethod
    def create(
        cls, testnet_id: str, policy_toml: str, *, simulated: bool = True, epoch_seconds: int = 600
    ) -> TestnetConfig:
        """A new testnet with a fresh PSK and (if ``simulated``) a fresh platform key."""
        return cls(
            testnet_id=testnet_id,
            psk=secrets.token_bytes(32),
            policy_toml=policy_toml,
            platform_seed=secrets.token_bytes(32) if simulated else None,
            epoch_seconds=epoch_seconds,
        )

    def with_bootstrap(self, bootstrap: Sequence[str]) -> TestnetConfig:
        return replace(self, bootstrap=tuple(bootstrap))

    def to_toml(self) -> str:
        data: dict[str, Any] = {
            "testnet_id": self.testnet_id,
            "psk": self.psk.hex(),
            "platform_key": self.platform_seed.hex() if self.platform_seed else None,
            "epoch_seconds": self.epoch_seconds,
            "bootstrap": list(self.bootstrap),
            "policy": self.policy_toml,
        }
        return dump_toml(
            data,
            header="Veilnet testnet config. SECRET: holds the pre-shared key and the simulated platform key.",
        )

    def save(self, path: Path) -> None:
        """Write the file readable by its owner only (it holds secrets)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(self.to_toml())
        os.chmod(path, 0o600)

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any], where: str = "testnet config") -> TestnetConfig:
        data = dict(raw)
        testnet_id = _take(data, "testnet_id", str, where)
        psk_hex = _take(data, "psk", str, where)
        policy_toml = _take(data, "policy", str, where)
        platform_hex = _take(data, "platform_key", str, where)
        epoch_seconds = _take(data, "epoch_seconds", int, where, 600)
        bootstrap = _str_list(data.pop("bootstrap", None), "bootstrap", where)
        if data:
            raise ConfigError(f"{where}: unknown keys {sorted(data)}")
        if testnet_id is None or psk_hex is None or policy_toml is None:
            raise ConfigError(f"{where}: testnet_id, psk and policy are required")
        try:
            psk = bytes.fromhex(psk_hex)
            platform_seed = bytes.fromhex(platform_hex) if platform_hex else None
        except ValueError:
            raise ConfigError(f"{where}: psk and platform_key must be hex") from None
        try:
            return cls(
                testnet_id=testnet_id,
                psk=psk,
                policy_toml=policy_toml,
                platform_seed=platform_seed,
                bootstrap=bootstrap,
                epoch_seconds=epoch_seconds,
            )
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from None


def load_testnet_config(path: Path) -> TestnetConfig:
    return TestnetConfig.from_mapping(_read_toml(path), where=str(path))


# ---------------------------------------------------------------------------------- node config


@dataclass(frozen=True)
class NodeConfig:
    """One node's settings. Relative paths in a file are resolved against the file's directory."""

    data_dir: Path
    testnet_config: Path | None = None
    listen: tuple[str, ...] = (DEFAULT_LISTEN,)
    bootstrap: tuple[str, ...] = ()
    announce: tuple[str, ...] = ()  # addresses to advertise instead of the listen addresses (NAT)
    api: str | None = DEFAULT_API  # None: no HTTP API
    mdns: bool = False
    models: tuple[str, ...] = ()
    evidence: EvidenceMode = EvidenceMode.AUTO
    reannounce_seconds: int = 60
    bundle_lifetime_seconds: int = 300
    target_peers: int = 12
    log_level: str = "INFO"
    log_file: Path | None = None
    label: str = ""
    test_evidence_fault: TestEvidenceFault | None = None
    # [limits] table: resource limits, peer scoring and liveness (LimitSettings above
    # documents every key and its default; docs/protocol/network.md explains them).
    limits: LimitSettings = field(default_factory=LimitSettings)
    # [engine] table: what computes chat models (EngineSettings above; docs/CONFIG.md).
    engine: EngineSettings = field(default_factory=EngineSettings)
    extra: Mapping[str, Any] = field(default_factory=dict)  # [extra] table: for later subsystems

    def __post_init__(self) -> None:
        _check_multiaddrs(self.listen, "listen", need_peer_id=False)
        _check_multiaddrs(self.bootstrap, "bootstrap", need_peer_id=True)
        _check_multiaddrs(self.announce, "announce", need_peer_id=False)
        if not self.listen:
            raise ConfigError("listen: at least one address is needed")
        if self.api is not None:
            parse_api_address(self.api)
        if not 1 <= self.reannounce_seconds < self.bundle_lifetime_seconds:
            raise ConfigError(
                "reannounce_seconds must be at least 1 and shorter than bundle_lifetime_seconds"
            )
        if not 30 <= self.bundle_lifetime_seconds <= 86_400:
            raise ConfigError("bundle_lifetime_seconds must be between 30 and 86400")
        if not 1 <= self.target_peers <= 1000:
            raise ConfigError("target_peers must be between 1 and 1000")
        if self.log_level.upper() not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
            raise ConfigError("log_level must be DEBUG, INFO, WARNING or ERROR")
        for model in self.models:
            if not model or len(model) > 200 or any(ch.isspace() for ch in model):
                raise ConfigError(f"models: {model!r} is not a model id")
        if self.test_evidence_fault is not None and self.evidence is EvidenceMode.NONE:
            raise ConfigError("test_evidence_fault needs simulated evidence")

    @property
    def identity_path(self) -> Path:
        return self.data_dir / "identity.key"

    @property
    def info_path(self) -> Path:
        """Written once the node is up: its peer id, multiaddrs and API URL (for scripts and tests)."""
        return self.data_dir / "node-info.json"

    def to_toml(self) -> str:
        data: dict[str, Any] = {
            "data_dir": str(self.data_dir),
            "testnet_config": str(self.testnet_config) if self.testnet_config else None,
            "listen": list(self.listen),
            "bootstrap": list(self.bootstrap),
            "announce": list(self.announce),
            "api": self.api if self.api is not None else "off",
            "mdns": self.mdns,
            "models": list(self.models),
            "evidence": self.evidence.value,
            "reannounce_seconds": self.reannounce_seconds,
            "bundle_lifetime_seconds": self.bundle_lifetime_seconds,
            "target_peers": self.target_peers,
            "log_level": self.log_level,
            "log_file": str(self.log_file) if self.log_file else None,
            "label": self.label,
            "test_evidence_fault": self.test_evidence_fault.value if self.test_evidence_fault else None,
        }
        if self.limits.to_mapping():
            data["limits"] = self.limits.to_mapping()
        if self.engine.to_mapping():
            data["engine"] = self.engine.to_mapping()
        if self.extra:
            data["extra"] = dict(self.extra)
        return dump_toml(data, header="Veilnet node config.")

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any], base_dir: Path, where: str = "node config") -> NodeConfig:
        data = dict(raw)

        def path_of(key: str) -> Path | None:
            value = _take(data, key, str, where)
            if value is None:
                return None
            path = Path(value).expanduser()
            return path if path.is_absolute() else (base_dir / path)

        data_dir = path_of("data_dir")
        testnet_config = path_of("testnet_config")
        log_file = path_of("log_file")
        api = _take(data, "api", str, where, DEFAULT_API)
        evidence_text = _take(data, "evidence", str, where, EvidenceMode.AUTO.value)
        fault_text = _take(data, "test_evidence_fault", str, where)
        kwargs: dict[str, Any] = {
            "listen": _str_list(data.pop("listen", [DEFAULT_LISTEN]), "listen", where),
            "bootstrap": _str_list(data.pop("bootstrap", None), "bootstrap", where),
            "announce": _str_list(data.pop("announce", None), "announce", where),
            "models": _str_list(data.pop("models", None), "models", where),
            "mdns": _take(data, "mdns", bool, where, False),
            "reannounce_seconds": _take(data, "reannounce_seconds", int, where, 60),
            "bundle_lifetime_seconds": _take(data, "bundle_lifetime_seconds", int, where, 300),
            "target_peers": _take(data, "target_peers", int, where, 12),
            "log_level": _take(data, "log_level", str, where, "INFO"),
            "label": _take(data, "label", str, where, ""),
            "extra": _take(data, "extra", dict, where, {}),
        }
        try:
            kwargs["limits"] = LimitSettings.from_mapping(
                _take(data, "limits", dict, where, {}), f"{where} [limits]"
            )
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        engine_table = _take(data, "engine", dict, where, {})
        kwargs["engine"] = EngineSettings.from_mapping(engine_table, f"{where} [engine]")
        if data:
            raise ConfigError(f"{where}: unknown keys {sorted(data)}")
        if data_dir is None:
            raise ConfigError(f"{where}: data_dir is required")
        try:
            evidence = EvidenceMode(evidence_text)
            fault = TestEvidenceFault(fault_text) if fault_text else None
        except ValueError as exc:
            raise ConfigError(f"{where}: {exc}") from None
        try:
            return cls(
                data_dir=data_dir,
                testnet_config=testnet_config,
                log_file=log_file,
                api=None if api == "off" else api,
                evidence=evidence,
                test_evidence_fault=fault,
                **kwargs,
            )
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from None

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.to_toml(), encoding="utf-8")


def load_node_config(path: Path) -> NodeConfig:
    return NodeConfig.from_mapping(_read_toml(path), base_dir=path.resolve().parent, where=str(path))
