"""The AttestationBundle: what a node gossips so that peers can decide it is a genuine TEE.

Why this shape: the node's identity key signs the bundle (so a relay cannot alter it and the
gossip sender can be checked against it), while the TEE evidence carries the report-data binding
of the bundle's fields (so the job key, epoch and served models are vouched for by the hardware,
not just by the node). ``from_wire`` checks the schema and limits only; the signature and the
evidence are appraised by :mod:`protocol.attestation.appraisal`.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from protocol import codec
from protocol.attestation import binding
from protocol.attestation.evidence import Evidence
from protocol.errors import ProtocolError
from protocol.identity import PEER_ID_LEN, Domain, Identity, SignatureError, public_key_from_peer_id, verify
from protocol.numerics import EngineEntry, NumericsError

__all__ = [
    "BUNDLE_VERSION",
    "MAX_BUNDLE_SIZE",
    "AttestationBundle",
    "BundleError",
    "build_bundle",
    "evidence_from_wire",
    "evidence_to_wire",
]

BUNDLE_VERSION = 1
MAX_BUNDLE_SIZE = 256 * 1024
MAX_MODELS = 32
MAX_MODEL_ID_LEN = 128
MAX_ADDRS = 16
MAX_ADDR_LEN = 256
MAX_GPUS = 8
MAX_KIND_LEN = 32
MAX_EVIDENCE_DATA = 64 * 1024
MAX_ENDORSEMENTS = 16
MAX_ENDORSEMENT_NAME = 64
MAX_LIFETIME = 24 * 3600
MAX_TIME = 1 << 40  # unix seconds; far beyond any real date, small enough for every language
SIGNATURE_SIZE = 64

_KEYS = frozenset(
    {
        "v",
        "node_id",
        "enc_pubkey",
        "epoch",
        "issued_at",
        "expires_at",
        "models",
        "addrs",
        "cpu",
        "gpus",
        "sig",
    }
)
_OPTIONAL_KEYS = frozenset({"engines"})  # present only when non-empty (older bundles lack it)
_SIG_PREFIX = b"\xa3sig\xc4\x40"  # fixstr "sig", bin8 of 64 bytes
_V1_ENTRY = b"\xa1v\x01"  # fixstr "v", positive fixint 1
_EVIDENCE_KEYS = frozenset({"kind", "data", "endorsements"})
_KIND_RE = re.compile(r"[a-z0-9][a-z0-9-]*\Z")
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*\Z")
# Printable ASCII without spaces: ids and multiaddrs are identifiers, never prose.
_TOKEN_RE = re.compile(r"[\x21-\x7e]+\Z")

_LIMITS = codec.Limits(
    max_size=MAX_BUNDLE_SIZE,
    max_depth=5,
    max_str=max(MAX_MODEL_ID_LEN, MAX_ADDR_LEN),
    max_bin=MAX_BUNDLE_SIZE,
    max_array=max(MAX_MODELS, MAX_ADDRS, MAX_GPUS),
    max_map=max(len(_KEYS) + len(_OPTIONAL_KEYS), MAX_ENDORSEMENTS),
)


class BundleError(ProtocolError):
    """A bundle's bytes or fields are not acceptable. ``reason`` is a short machine-readable code."""


def _time(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < MAX_TIME:
        raise BundleError("bad_field", f"{name} must be an integer in [0, 2^40)")
    return value


def _tokens(value: Any, name: str, max_count: int, max_len: int) -> tuple[str, ...]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise BundleError("bad_field", f"{name} must be a list of strings")
    if len(value) > max_count:
        raise BundleError("too_many", f"{name} has {len(value)} entries, limit {max_count}")
    items = tuple(value)
    for item in items:
        if not isinstance(item, str) or len(item) > max_len or not _TOKEN_RE.match(item):
            raise BundleError(
                "bad_field", f"{name} entries must be 1..{max_len} printable ASCII characters without spaces"
            )
    if len(set(items)) != len(items):
        raise BundleError("bad_field", f"{name} has duplicate entries")
    return items


def _check_evidence(evidence: Any, where: str) -> Evidence:
    if not isinstance(evidence, Evidence):
        raise BundleError("bad_field", f"{where} must be Evidence")
    if (
        not isinstance(evidence.kind, str)
        or len(evidence.kind) > MAX_KIND_LEN
        or not _KIND_RE.match(evidence.kind)
    ):
        raise BundleError("bad_field", f"{where}.kind must be 1..{MAX_KIND_LEN} of [a-z0-9-]")
    if not isinstance(evidence.data, bytes) or not 0 < len(evidence.data) <= MAX_EVIDENCE_DATA:
        raise BundleError("bad_field", f"{where}.data must be 1..{MAX_EVIDENCE_DATA} bytes")
    if not isinstance(evidence.endorsements, Mapping) or len(evidence.endorsements) > MAX_ENDORSEMENTS:
        raise BundleError("bad_field", f"{where}.endorsements must be a map of at most {MAX_ENDORSEMENTS}")
    for name, blob in evidence.endorsements.items():
        if not isinstance(name, str) or len(name) > MAX_ENDORSEMENT_NAME or not _NAME_RE.match(name):
            raise BundleError(
                "bad_field", f"{where} endorsement names must be 1..{MAX_ENDORSEMENT_NAME} of [A-Za-z0-9_.-]"
            )
        if not isinstance(blob, bytes):
            raise BundleError("bad_field", f"{where} endorsement {name!r} must be bytes")
    return evidence


def evidence_to_wire(evidence: Evidence) -> dict[str, Any]:
    """The canonical map form of one evidence: ``{kind: str, data: bin, endorsements: {str: bin}}``."""
    return {"kind": evidence.kind, "data": evidence.data, "endorsements": dict(evidence.endorsements)}


def evidence_from_wire(value: Any, where: str = "evidence") -> Evidence:
    if not isinstance(value, dict) or set(value) != _EVIDENCE_KEYS:
        raise BundleError("bad_field", f"{where} must be a map with keys {sorted(_EVIDENCE_KEYS)}")
    endorsements = value["endorsements"]
    if not isinstance(endorsements, dict):
        raise BundleError("bad_field", f"{where}.endorsements must be a map")
    return _check_evidence(Evidence(value["kind"], value["data"], endorsements), where)


@dataclass(frozen=True, kw_only=True)
class AttestationBundle:
    """A signed statement: this node, with this job key, in this epoch, runs in this TEE.

    Construct through :func:`build_bundle` or :meth:`from_wire`; direct construction validates
    every field too, so an instance always encodes within the limits.
    """

    v: int = BUNDLE_VERSION
    node_id: bytes
    enc_pubkey: bytes
    epoch: int
    issued_at: int
    expires_at: int
    models: tuple[str, ...] = ()
    addrs: tuple[str, ...] = ()
    cpu: Evidence
    gpus: tuple[Evidence, ...] = ()
    engines: tuple[EngineEntry, ...] = ()  # per served model: the engine computing it
    sig: bytes = field(default=b"", repr=False)

    def __post_init__(self) -> None:
        if self.v != BUNDLE_VERSION or isinstance(self.v, bool):
            raise BundleError(
                "unsupported_version", f"bundle version {self.v!r}, this node speaks {BUNDLE_VERSION}"
            )
        if not isinstance(self.node_id, bytes) or len(self.node_id) != PEER_ID_LEN:
            raise BundleError("bad_field", "node_id must be a binary Ed25519 libp2p peer id")
        try:
            public_key_from_peer_id(self.node_id)
        except SignatureError as exc:
            raise BundleError("bad_field", f"node_id: {exc}") from None
        if not isinstance(self.enc_pubkey, bytes) or len(self.enc_pubkey) != binding.ENC_PUBKEY_SIZE:
            raise BundleError("bad_field", f"enc_pubkey must be {binding.ENC_PUBKEY_SIZE} bytes (X25519)")
        _time(self.epoch, "epoch")
        issued_at = _time(self.issued_at, "issued_at")
        expires_at = _time(self.expires_at, "expires_at")
        if not issued_at < expires_at <= issued_at + MAX_LIFETIME:
            raise BundleError(
                "bad_field", f"expires_at must be after issued_at and at most {MAX_LIFETIME} s later"
            )
        object.__setattr__(self, "models", _tokens(self.models, "models", MAX_MODELS, MAX_MODEL_ID_LEN))
        object.__setattr__(self, "addrs", _tokens(self.addrs, "addrs", MAX_ADDRS, MAX_ADDR_LEN))
        for addr in self.addrs:
            if not addr.startswith("/"):
                raise BundleError("bad_field", f"address {addr!r} is not a multiaddr")
        _check_evidence(self.cpu, "cpu")
        if isinstance(self.gpus, (str, bytes)) or not isinstance(self.gpus, Sequence):
            raise BundleError("bad_field", "gpus must be a list of evidence")
        if len(self.gpus) > MAX_GPUS:
            raise BundleError("too_many", f"{len(self.gpus)} GPU evidences, limit {MAX_GPUS}")
        object.__setattr__(self, "gpus", tuple(self.gpus))
        for i, gpu in enumerate(self.gpus):
            _check_evidence(gpu, f"gpus[{i}]")
        if isinstance(self.engines, (str, bytes)) or not isinstance(self.engines, Sequence):
            raise BundleError("bad_field", "engines must be a list of engine entries")
        object.__setattr__(self, "engines", tuple(self.engines))
        engine_models = [e.model for e in self.engines if isinstance(e, EngineEntry)]
        if len(engine_models) != len(self.engines):
            raise BundleError("bad_field", "engines must be a list of engine entries")
        if len(set(engine_models)) != len(engine_models) or not set(engine_models) <= set(self.models):
            raise BundleError("bad_field", "each engine entry names a distinct model of the bundle")
        if not isinstance(self.sig, bytes) or len(self.sig) not in (0, SIGNATURE_SIZE):
            raise BundleError("bad_field", f"sig must be {SIGNATURE_SIZE} bytes")

    # -- encoding -------------------------------------------------------------------------

    def _fields(self) -> dict[str, Any]:
        return {
            "v": self.v,
            "node_id": self.node_id,
            "enc_pubkey": self.enc_pubkey,
            "epoch": self.epoch,
            "issued_at": self.issued_at,
            "expires_at": self.expires_at,
            "models": list(self.models),
            "addrs": list(self.addrs),
            "cpu": evidence_to_wire(self.cpu),
            "gpus": [evidence_to_wire(g) for g in self.gpus],
            **({"engines": self.engine_maps()} if self.engines else {}),
        }

    def engine_maps(self) -> list[dict[str, Any]]:
        """The engine entries' wire maps, sorted by model id (what the binding covers)."""
        return [e.to_wire() for e in sorted(self.engines, key=lambda e: e.model)]

    def engine_for(self, model_id: str) -> EngineEntry | None:
        """The attested engine computing ``model_id`` (None: the bundle does not say)."""
        return next((e for e in self.engines if e.model == model_id), None)

    @cached_property
    def _payload(self) -> bytes:
        return codec.encode(self._fields())

    def signed_payload(self) -> bytes:
        """The bytes the node signs (domain ``bundle``): the canonical map without ``sig``."""
        return self._payload

    @cached_property
    def _wire(self) -> bytes:
        if len(self.sig) != SIGNATURE_SIZE:
            raise BundleError("unsigned", "an unsigned bundle has no wire form")
        wire = codec.encode({**self._fields(), "sig": self.sig})
        if len(wire) > MAX_BUNDLE_SIZE:
            raise BundleError("too_large", f"bundle is {len(wire)} bytes, limit {MAX_BUNDLE_SIZE}")
        return wire

    def to_wire(self) -> bytes:
        """Canonical msgpack bytes, at most MAX_BUNDLE_SIZE. Raises BundleError when unsigned or too large."""
        return self._wire

    @cached_property
    def _digest(self) -> bytes:
        return hashlib.sha256(self._wire).digest()

    def digest(self) -> bytes:
        """SHA-256 of the wire bytes: the bundle's identity, and the appraisal cache key."""
        return self._digest

    @classmethod
    def from_wire(cls, data: bytes) -> AttestationBundle:
        """Decode and schema-check untrusted bytes. Raises only BundleError. Does not verify ``sig``."""
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise BundleError("malformed", "expected bytes")
        data = bytes(data)
        if len(data) > MAX_BUNDLE_SIZE:
            raise BundleError("too_large", f"bundle is {len(data)} bytes, limit {MAX_BUNDLE_SIZE}")
        try:
            value = codec.decode(data, _LIMITS)
        except codec.CodecError as exc:
            raise BundleError("malformed", str(exc)) from None
        if not isinstance(value, dict):
            raise BundleError("malformed", "a bundle is a map")
        if "v" in value and value["v"] != BUNDLE_VERSION:
            raise BundleError(
                "unsupported_version", f"bundle version {value['v']!r}, this node speaks {BUNDLE_VERSION}"
            )
        if not _KEYS <= set(value) <= _KEYS | _OPTIONAL_KEYS:
            missing = sorted(_KEYS - set(value))
            unknown = sorted(set(value) - _KEYS - _OPTIONAL_KEYS)
            raise BundleError("bad_field", f"missing keys {missing}, unknown keys {unknown}")
        engines_raw = value.get("engines", [])
        if not isinstance(engines_raw, list) or ("engines" in value and not engines_raw):
            raise BundleError("bad_field", "engines must be a non-empty list when present")
        if len(engines_raw) > MAX_MODELS:
            raise BundleError("too_many", f"{len(engines_raw)} engine entries, limit {MAX_MODELS}")
        try:
            engines = tuple(EngineEntry.from_wire(e, MAX_MODEL_ID_LEN) for e in engines_raw)
        except NumericsError as exc:
            raise BundleError("bad_field", f"engines: {exc}") from None
        if [e.model for e in engines] != sorted(e.model for e in engines):
            raise BundleError("bad_field", "engine entries must be sorted by model id")
        gpus = value["gpus"]
        if not isinstance(gpus, list):
            raise BundleError("bad_field", "gpus must be a list")
        sig = value["sig"]
        if not isinstance(sig, bytes) or len(sig) != SIGNATURE_SIZE:
            raise BundleError("bad_field", f"sig must be {SIGNATURE_SIZE} bytes")
        bundle = cls(
            v=value["v"],
            node_id=value["node_id"],
            enc_pubkey=value["enc_pubkey"],
            epoch=value["epoch"],
            issued_at=value["issued_at"],
            expires_at=value["expires_at"],
            models=value["models"],
            addrs=value["addrs"],
            cpu=evidence_from_wire(value["cpu"], "cpu"),
            gpus=tuple(evidence_from_wire(g, f"gpus[{i}]") for i, g in enumerate(gpus)),
            engines=engines,
            sig=sig,
        )
        # The decoder accepted only the canonical encoding, so re-encoding would give ``data`` back,
        # and the signed payload is ``data`` without its ``sig`` entry: keys sort as ..., node_id,
        # sig, v, so that entry sits just before the final ``"v": 1``. Slicing saves two encodes.
        bundle.__dict__["_wire"] = data
        sig_start = len(data) - len(_V1_ENTRY) - len(_SIG_PREFIX) - SIGNATURE_SIZE
        header = 0x80 | len(value)  # a fixmap of 11 (12 with engines) entries
        if data[0] == header and data.endswith(_V1_ENTRY) and data.startswith(_SIG_PREFIX, sig_start):
            bundle.__dict__["_payload"] = bytes([header - 1]) + data[1:sig_start] + _V1_ENTRY
        return bundle

    # -- checks ---------------------------------------------------------------------------

    def verify_signature(self) -> None:
        """Raise SignatureError unless ``sig`` is node_id's ``bundle`` signature of the payload."""
        verify(self.node_id, Domain.BUNDLE, self.signed_payload(), self.sig)

    def gpu_evidence_hashes(self) -> tuple[bytes, ...]:
        return tuple(binding.evidence_hash(g) for g in self.gpus)

    def expected_report_data(self) -> bytes:
        """The 64 bytes the CPU evidence must carry, recomputed from this bundle's own fields."""
        return binding.report_data(
            self.node_id, self.enc_pubkey, self.epoch, self.issued_at, self.models,
            self.gpu_evidence_hashes(), self.engine_maps(),
        )

    def expected_gpu_nonce(self) -> bytes:
        """The 32-byte nonce every GPU evidence in this bundle must carry."""
        return binding.gpu_nonce(self.node_id, self.enc_pubkey, self.epoch)

    def challenge_report_data(self, nonce: bytes) -> bytes:
        """The report data of fresh CPU evidence answering a challenge ``nonce`` for this bundle."""
        return binding.challenge_report_data(
            self.node_id,
            self.enc_pubkey,
            self.epoch,
            self.issued_at,
            self.models,
            self.gpu_evidence_hashes(),
            nonce,
            self.engine_maps(),
        )


def build_bundle(
    identity: Identity,
    enc_pubkey: bytes,
    *,
    issued_at: int,
    epoch_seconds: int,
    collect_cpu_evidence: Callable[[bytes], Evidence],
    collect_gpu_evidence: Callable[[bytes], Sequence[Evidence]] | None = None,
    models: Sequence[str] = (),
    addrs: Sequence[str] = (),
    expires_at: int | None = None,
    engines: Sequence[EngineEntry] = (),
) -> AttestationBundle:
    """Collect evidence in the only order that works, then sign.

    GPU evidence first (its nonce needs only node id, job key and epoch), then CPU evidence over
    report data that covers the GPU evidence hashes, then the identity signature over it all.
    ``expires_at`` defaults to the end of the next epoch: appraisers accept the current and the
    previous epoch only, so a later expiry would never be honoured anyway.
    """
    epoch = binding.epoch_of(issued_at, epoch_seconds)
    gpus: tuple[Evidence, ...] = ()
    if collect_gpu_evidence is not None:
        gpus = tuple(collect_gpu_evidence(binding.gpu_nonce(identity.peer_id, enc_pubkey, epoch)))
    if expires_at is None:
        expires_at = min((epoch + 2) * epoch_seconds, issued_at + MAX_LIFETIME)
    hashes = [binding.evidence_hash(g) for g in gpus]
    ordered = tuple(sorted(engines, key=lambda e: e.model))
    rd = binding.report_data(
        identity.peer_id, enc_pubkey, epoch, issued_at, list(models), hashes, [e.to_wire() for e in ordered]
    )
    cpu = collect_cpu_evidence(rd)
    unsigned = AttestationBundle(
        node_id=identity.peer_id,
        enc_pubkey=enc_pubkey,
        epoch=epoch,
        issued_at=issued_at,
        expires_at=expires_at,
        models=tuple(models),
        addrs=tuple(addrs),
        cpu=cpu,
        gpus=gpus,
        engines=ordered,
    )
    sig = identity.sign(Domain.BUNDLE, unsigned.signed_payload())
    signed = AttestationBundle(
        node_id=unsigned.node_id,
        enc_pubkey=unsigned.enc_pubkey,
        epoch=epoch,
        issued_at=issued_at,
        expires_at=expires_at,
        models=unsigned.models,
        addrs=unsigned.addrs,
        cpu=cpu,
        gpus=gpus,
        engines=ordered,
        sig=sig,
    )
    signed.to_wire()  # raise BundleError now, at the producer, if the evidence makes it too large
    return signed
