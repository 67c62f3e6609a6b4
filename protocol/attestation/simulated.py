"""The ``simulated`` evidence kind: a software stand-in for a TEE, for tests and local testnets.

Why it exists: real evidence has fixed report data, so only a simulated attester can bind fresh
job keys in a testnet. Why it is safe to have: a per-testnet platform key signs the claims (a
node cannot simply invent evidence without that key), the policy refuses the kind unless it says
``allow_simulated = true``, every verdict is labelled "SIMULATED — not secure", and the bytes start
with a magic that no TDX quote, SNP report or SPDM transcript parser accepts. It proves nothing
about hardware: whoever holds the platform key can sign any claim.

Evidence bytes: ``MAGIC ‖ canonical({v: 1, claims: {...}, platform_key: bin32, sig: bin64})``,
``sig`` = Ed25519 by the platform key, domain ``simulated-evidence``, over ``canonical(claims)``.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import nacl.signing

from protocol import codec
from protocol.attestation import allowlist
from protocol.attestation.allowlist import PolicyError
from protocol.attestation.binding import REPORT_DATA_SIZE
from protocol.attestation.evidence import Evidence, EvidenceKind, EvidenceVerdict, Reason
from protocol.identity import Domain, Identity, SignatureError, peer_id_from_public_key, verify

__all__ = [
    "LABEL",
    "MAGIC",
    "MEASUREMENT_SIZE",
    "VERIFIER",
    "SimulatedClaims",
    "SimulatedEvidenceError",
    "SimulatedPlatform",
    "SimulatedVerifier",
    "check_policy_section",
    "measure_package_sources",
    "parse_simulated_evidence",
    "source_measurement",
]

LABEL = "SIMULATED — not secure"
# Starts with "VE": as a little-endian u16 that is 0x4556 (never a DCAP quote version 3..5), as a
# little-endian u32 0x4C494556 (never an SNP report version 2..5), and 0x56 is no SPDM version byte.
MAGIC = b"VEILNET-SIMULATED-EVIDENCE\x00"
EVIDENCE_VERSION = 1
MEASUREMENT_SIZE = 32
PLATFORM_KEY_SIZE = 32
MAX_TESTNET_LEN = 64
MAX_EVIDENCE_SIZE = 1024
DEFAULT_MAX_CLOCK_SKEW = 30
SOURCE_TAG = b"veilnet/source/v1\x00"
POLICY_KEYS = frozenset(
    {"platform_keys", "measurements", "allow_any_measurement", "testnet", "max_age", "max_clock_skew"}
)

_LIMITS = codec.Limits(
    max_size=MAX_EVIDENCE_SIZE, max_depth=3, max_str=MAX_TESTNET_LEN, max_bin=64, max_array=0, max_map=8
)
_CLAIM_KEYS = frozenset({"measurement", "report_data", "debug", "issued_at", "testnet"})
_BODY_KEYS = frozenset({"v", "claims", "platform_key", "sig"})


class SimulatedEvidenceError(ValueError):
    """The bytes are not simulated evidence (wrong magic, schema or sizes)."""


@dataclass(frozen=True)
class SimulatedClaims:
    """What the simulated platform vouches for."""

    measurement: bytes  # SHA-256 digest of the node's own source files
    report_data: bytes  # the 64-byte binding
    debug: bool
    issued_at: int
    testnet: str = ""

    def to_map(self) -> dict[str, Any]:
        return {
            "measurement": self.measurement,
            "report_data": self.report_data,
            "debug": self.debug,
            "issued_at": self.issued_at,
            "testnet": self.testnet,
        }


@dataclass(frozen=True)
class ParsedSimulatedEvidence:
    claims: SimulatedClaims
    platform_key: bytes
    signature: bytes
    signed_claims: bytes  # canonical(claims): exactly the bytes the platform signed


# The body's keys sort as claims, platform_key, sig, v; everything after the claims map has a fixed
# size once the key and signature lengths are checked, so the signed claims bytes are a slice.
_BODY_HEAD = b"\x84\xa6claims"  # fixmap of 4, fixstr "claims"
_BODY_TAIL = len(b"\xacplatform_key\xc4\x20") + 32 + len(b"\xa3sig\xc4\x40") + 64 + len(b"\xa1v\x01")


def parse_simulated_evidence(data: bytes) -> ParsedSimulatedEvidence:
    """Strictly parse simulated evidence bytes. Raises only SimulatedEvidenceError."""
    if not isinstance(data, bytes) or not data.startswith(MAGIC):
        raise SimulatedEvidenceError("missing the simulated-evidence magic")
    try:
        body = codec.decode(data[len(MAGIC) :], _LIMITS)
    except codec.CodecError as exc:
        raise SimulatedEvidenceError(f"body: {exc}") from None
    if not isinstance(body, dict) or set(body) != _BODY_KEYS:
        raise SimulatedEvidenceError(f"body must be a map with keys {sorted(_BODY_KEYS)}")
    if body["v"] != EVIDENCE_VERSION or isinstance(body["v"], bool):
        raise SimulatedEvidenceError(f"unsupported simulated evidence version {body['v']!r}")
    claims = body["claims"]
    if not isinstance(claims, dict) or set(claims) != _CLAIM_KEYS:
        raise SimulatedEvidenceError(f"claims must be a map with keys {sorted(_CLAIM_KEYS)}")
    measurement, rd, debug = claims["measurement"], claims["report_data"], claims["debug"]
    issued_at, testnet = claims["issued_at"], claims["testnet"]
    if not isinstance(measurement, bytes) or len(measurement) != MEASUREMENT_SIZE:
        raise SimulatedEvidenceError(f"measurement must be {MEASUREMENT_SIZE} bytes")
    if not isinstance(rd, bytes) or len(rd) != REPORT_DATA_SIZE:
        raise SimulatedEvidenceError(f"report_data must be {REPORT_DATA_SIZE} bytes")
    if not isinstance(debug, bool):
        raise SimulatedEvidenceError("debug must be a boolean")
    if isinstance(issued_at, bool) or not isinstance(issued_at, int) or not 0 <= issued_at < 1 << 40:
        raise SimulatedEvidenceError("issued_at must be an integer in [0, 2^40)")
    if not isinstance(testnet, str):
        raise SimulatedEvidenceError("testnet must be a string")
    key, sig = body["platform_key"], body["sig"]
    if not isinstance(key, bytes) or len(key) != PLATFORM_KEY_SIZE:
        raise SimulatedEvidenceError(f"platform_key must be {PLATFORM_KEY_SIZE} bytes")
    if not isinstance(sig, bytes) or len(sig) != 64:
        raise SimulatedEvidenceError("sig must be 64 bytes")
    claims_obj = SimulatedClaims(measurement, rd, debug, issued_at, testnet)
    raw = data[len(MAGIC) :]
    if raw.startswith(_BODY_HEAD) and raw.startswith(b"\xacplatform_key", len(raw) - _BODY_TAIL):
        signed = raw[len(_BODY_HEAD) : len(raw) - _BODY_TAIL]  # canonical decode: equals encode(claims)
    else:
        signed = codec.encode(claims_obj.to_map())
    return ParsedSimulatedEvidence(claims_obj, key, sig, signed)


class SimulatedPlatform:
    """The per-testnet "platform": holds the key that signs simulated evidence.

    The testnet generator creates one and puts its public key in every node's policy
    (``[simulated] platform_keys``); nodes of that testnet get the seed to issue evidence.
    """

    def __init__(self, seed: bytes, testnet: str = "") -> None:
        if len(testnet) > MAX_TESTNET_LEN:
            raise ValueError(f"testnet id is at most {MAX_TESTNET_LEN} characters")
        self._identity = Identity(seed)
        self.testnet = testnet

    @classmethod
    def generate(cls, testnet: str = "") -> SimulatedPlatform:
        return cls(bytes(nacl.signing.SigningKey.generate()), testnet)

    @property
    def seed(self) -> bytes:
        return self._identity.seed

    @property
    def public_key(self) -> bytes:
        return self._identity.public_key

    @property
    def public_key_hex(self) -> str:
        return self._identity.public_key.hex()

    def issue(
        self, report_data: bytes, *, measurement: bytes, issued_at: int, debug: bool = False
    ) -> Evidence:
        """Evidence claiming ``measurement`` and carrying ``report_data``, signed now."""
        if len(report_data) != REPORT_DATA_SIZE:
            raise ValueError(f"report data is {REPORT_DATA_SIZE} bytes")
        if len(measurement) != MEASUREMENT_SIZE:
            raise ValueError(f"a measurement is {MEASUREMENT_SIZE} bytes")
        claims = SimulatedClaims(bytes(measurement), bytes(report_data), debug, issued_at, self.testnet)
        claims_map = claims.to_map()
        sig = self._identity.sign(Domain.SIMULATED_EVIDENCE, codec.encode(claims_map))
        body = {"v": EVIDENCE_VERSION, "claims": claims_map, "platform_key": self.public_key, "sig": sig}
        return Evidence(kind=EvidenceKind.SIMULATED.value, data=MAGIC + codec.encode(body))

    def collector(
        self, measurement: bytes, issued_at: int, *, debug: bool = False
    ) -> Callable[[bytes], Evidence]:
        """A ``collect_cpu_evidence`` callable for :func:`protocol.attestation.bundle.build_bundle`."""
        return lambda rd: self.issue(rd, measurement=measurement, issued_at=issued_at, debug=debug)

    def __repr__(self) -> str:  # never print the seed
        return f"SimulatedPlatform({self.public_key_hex[:16]}…, testnet={self.testnet!r})"


def check_policy_section(section: Mapping[str, Any]) -> None:
    """Raise PolicyError unless ``section`` is a well-formed ``[simulated]`` policy section."""
    unknown = set(section) - POLICY_KEYS
    if unknown:
        raise PolicyError(f"[simulated] has unknown keys {sorted(unknown)}; known: {sorted(POLICY_KEYS)}")
    keys = allowlist.hex_values(section, "platform_keys")
    if keys is not None and any(len(k) != PLATFORM_KEY_SIZE for k in keys):
        raise PolicyError("[simulated] platform_keys must be 32-byte Ed25519 public keys in hex")
    measurements = allowlist.hex_values(section, "measurements")
    if measurements is not None and any(len(m) != MEASUREMENT_SIZE for m in measurements):
        raise PolicyError(f"[simulated] measurements must be {MEASUREMENT_SIZE}-byte values in hex")
    allowlist.flag(section, "allow_any_measurement")
    testnet = section.get("testnet", "")
    if not isinstance(testnet, str) or len(testnet) > MAX_TESTNET_LEN:
        raise PolicyError(f"[simulated] testnet must be a string of at most {MAX_TESTNET_LEN} characters")
    for key in ("max_age", "max_clock_skew"):
        if key in section and allowlist.integer(section, key, 0) < 0:
            raise PolicyError(f"[simulated] {key} must not be negative")


class SimulatedVerifier:
    """Verifies simulated evidence against the ``[simulated]`` policy section.

    Section keys: ``platform_keys`` (hex Ed25519 public keys; required, an empty or absent list
    trusts no platform), ``measurements`` (hex; absent is refused unless
    ``allow_any_measurement = true``), ``testnet`` (when set, the claims must name it),
    ``max_age`` (seconds, optional), ``max_clock_skew`` (seconds, default 30). Debug is always refused.
    """

    kind = EvidenceKind.SIMULATED

    def verify(
        self,
        evidence: Evidence,
        *,
        expected_report_data: bytes,
        policy: Mapping[str, Any],
        now: int,
    ) -> EvidenceVerdict:
        kind = EvidenceKind.SIMULATED.value
        if evidence.kind != kind:
            return EvidenceVerdict.refused(
                kind, Reason.MALFORMED, f"{evidence.kind} evidence given", label=LABEL
            )
        try:
            parsed = parse_simulated_evidence(evidence.data)
        except SimulatedEvidenceError as exc:
            return EvidenceVerdict.refused(
                kind, Reason.MALFORMED, f"not simulated evidence: {exc}", label=LABEL
            )
        c = parsed.claims
        claims: dict[str, Any] = {
            "label": LABEL,
            "measurements": {"measurement": c.measurement.hex()},
            "report_data": c.report_data,
            "debug": c.debug,
            "tcb_status": "none (simulated)",
            "extra": {
                "platform_key": parsed.platform_key.hex(),
                "testnet": c.testnet,
                "issued_at": c.issued_at,
            },
        }
        try:
            return self._appraise(parsed, expected_report_data, policy, now, claims)
        except PolicyError as exc:
            return EvidenceVerdict.refused(
                kind, Reason.POLICY_VIOLATION, f"bad [simulated] policy: {exc}", **claims
            )

    def _appraise(
        self,
        parsed: ParsedSimulatedEvidence,
        expected: bytes,
        policy: Mapping[str, Any],
        now: int,
        claims: dict[str, Any],
    ) -> EvidenceVerdict:
        kind = EvidenceKind.SIMULATED.value
        check_policy_section(policy)
        c = parsed.claims
        trusted = allowlist.hex_values(policy, "platform_keys") or set()
        if not any(allowlist.same(parsed.platform_key, k) for k in trusted):
            return EvidenceVerdict.refused(
                kind,
                Reason.UNTRUSTED_PLATFORM,
                f"platform key {parsed.platform_key.hex()} is not in [simulated] platform_keys",
                **claims,
            )
        try:
            verify(
                peer_id_from_public_key(parsed.platform_key),
                Domain.SIMULATED_EVIDENCE,
                parsed.signed_claims,
                parsed.signature,
            )
        except SignatureError as exc:
            return EvidenceVerdict.refused(kind, Reason.BAD_SIGNATURE, str(exc), **claims)
        testnet = policy.get("testnet", "")
        if testnet and c.testnet != testnet:
            return EvidenceVerdict.refused(
                kind,
                Reason.UNTRUSTED_PLATFORM,
                f"evidence is for testnet {c.testnet!r}, not {testnet!r}",
                **claims,
            )
        skew = allowlist.integer(policy, "max_clock_skew", DEFAULT_MAX_CLOCK_SKEW)
        if c.issued_at > now + skew:
            return EvidenceVerdict.refused(
                kind, Reason.FUTURE_DATED, f"evidence issued at {c.issued_at}, now is {now}", **claims
            )
        if "max_age" in policy and now - c.issued_at > allowlist.integer(policy, "max_age", 0):
            return EvidenceVerdict.refused(
                kind,
                Reason.EXPIRED,
                f"evidence is {now - c.issued_at} s old, max_age {policy['max_age']}",
                **claims,
            )
        if c.debug:
            return EvidenceVerdict.refused(
                kind, Reason.DEBUG, "simulated platform reports debug mode", **claims
            )
        problem = allowlist.check_measurement(policy, "measurements", c.measurement)
        if problem is not None:
            return EvidenceVerdict.refused(kind, Reason.MEASUREMENT_NOT_ALLOWED, problem, **claims)
        if not allowlist.same(c.report_data, expected):
            return EvidenceVerdict.refused(
                kind, Reason.REPORT_DATA_MISMATCH, "report data is not this bundle's binding", **claims
            )
        return EvidenceVerdict(
            kind=kind, ok=True, detail="simulated evidence verified (not secure)", **claims
        )


VERIFIER = SimulatedVerifier()


# -- the node's own measurement ------------------------------------------------------------


def source_measurement(files: Iterable[tuple[str, bytes]]) -> bytes:
    """SHA-256 over source files, independent of the order they are given in.

    ``SHA-256(SOURCE_TAG ‖ for each file sorted by path: u32be(len(path)) ‖ path ‖ SHA-256(content))``
    with ``path`` the UTF-8 relative POSIX path. Paths must be relative, without ``..``, unique.
    """
    entries: dict[bytes, bytes] = {}
    for path, content in files:
        pure = PurePosixPath(path)
        if not pure.parts or pure.is_absolute() or ".." in pure.parts or "\\" in path or str(pure) != path:
            raise ValueError(f"source path {path!r} must be a normalised relative POSIX path")
        key = path.encode("utf-8")
        if key in entries:
            raise ValueError(f"source path {path!r} given twice")
        entries[key] = hashlib.sha256(content).digest()
    h = hashlib.sha256(SOURCE_TAG)
    for key in sorted(entries):
        h.update(struct.pack(">I", len(key)) + key + entries[key])
    return h.digest()


def measure_package_sources(roots: list[Path]) -> bytes:
    """The measurement of the ``*.py`` files of the given package directories.

    Paths are ``<package dir name>/<path inside it>``, so ``[protocol/, node/]`` measures
    ``protocol/codec.py``, ``node/cli/main.py`` … wherever the packages are installed.
    ``__pycache__`` is skipped (bytecode is derived, and differs per interpreter).
    """
    files: list[tuple[str, bytes]] = []
    for root in roots:
        root = Path(root)
        if not root.is_dir():
            raise ValueError(f"{root} is not a directory")
        for file in sorted(root.rglob("*.py")):
            rel = file.relative_to(root)
            if "__pycache__" in rel.parts or not file.is_file():
                continue
            files.append(
                ((PurePosixPath(root.name) / PurePosixPath(*rel.parts)).as_posix(), file.read_bytes())
            )
    return source_measurement(files)
