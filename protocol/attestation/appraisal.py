"""Bundle appraisal: one function from (bundle bytes, sender, now) to a typed verdict, with a cache.

Why this order of checks: cheap and kind-independent checks first (schema, the node's signature,
who sent it, time and epoch), so a bad bundle costs one Ed25519 verification at most; then the
policy's kind decisions; then the kind verifier, chosen from a registry by the evidence's kind
(this module never special-cases a kind), with the report data recomputed from the bundle's own
fields. Why the cache cannot extend validity: it stores the decoded bundle and the evidence
outcome, never a time decision; every lookup re-checks sender, expiry, epoch and age against the
caller's ``now``, and evidence outcomes are recomputed after ``cache_ttl`` seconds (collateral and
certificates have validity windows of their own).
"""

from __future__ import annotations

import hashlib
import importlib
import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from protocol.attestation import simulated
from protocol.attestation.allowlist import same
from protocol.attestation.bundle import AttestationBundle, BundleError
from protocol.attestation.evidence import (
    CPU_KINDS,
    GPU_KINDS,
    Evidence,
    EvidenceKind,
    EvidenceVerdict,
    EvidenceVerifier,
    Reason,
)
from protocol.attestation.policy import Policy
from protocol.identity import SignatureError, peer_id_to_text

__all__ = ["BundleAppraiser", "BundleVerdict", "CacheInfo", "default_verifiers"]

DEFAULT_CACHE_SIZE = 4096
DEFAULT_CACHE_TTL = 300
REAL_KIND_MODULES = ("tdx", "sev_snp", "nvidia_gpu")


@dataclass(frozen=True)
class BundleVerdict:
    """The outcome of appraising one bundle. ``ok`` is True only with no reasons.

    ``label`` is the human-readable TEE description ("Intel TDX + NVIDIA H100",
    "SIMULATED — not secure"); show it wherever the peer is shown. ``bundle`` is the decoded
    bundle whenever decoding succeeded (also for refusals), so callers never decode twice.
    """

    ok: bool
    reasons: tuple[Reason, ...] = ()
    detail: str = ""
    node_id: bytes | None = None
    kind: str = ""
    label: str = ""
    measurements: Mapping[str, str] = field(default_factory=dict)
    tcb_status: str = ""
    advisories: tuple[str, ...] = ()
    cpu: EvidenceVerdict | None = None
    gpus: tuple[EvidenceVerdict, ...] = ()
    epoch: int | None = None
    issued_at: int | None = None
    expires_at: int | None = None
    digest: bytes = b""
    bundle: AttestationBundle | None = field(default=None, repr=False, compare=False)

    @property
    def reason(self) -> Reason | None:
        """The first (deciding) reason of a refusal."""
        return self.reasons[0] if self.reasons else None

    def summary(self) -> str:
        who = peer_id_to_text(self.node_id) if self.node_id else "unknown node"
        tee = f" [{self.label}]" if self.label else ""
        if self.ok:
            return f"accepted {who}{tee}, epoch {self.epoch}, expires {self.expires_at}"
        codes = ",".join(r.value for r in self.reasons)
        return f"refused {who}{tee} ({codes}): {self.detail}"

    def __str__(self) -> str:
        return self.summary()


@dataclass(frozen=True)
class CacheInfo:
    hits: int
    misses: int
    size: int
    max_size: int


@dataclass
class _Entry:
    bundle: AttestationBundle
    # (evidence-stage verdict, accepted or refused; the ``now`` it was computed at). One attribute,
    # replaced whole, so concurrent appraisals never pair a verdict with another's time.
    outcome: tuple[BundleVerdict, int] | None = None


def default_verifiers() -> dict[str, EvidenceVerifier]:
    """The simulated verifier plus every real kind whose module is present (each exposes ``VERIFIER``).

    A missing module is skipped; a module that exists but fails to import is a broken install
    and raises.
    """
    verifiers: dict[str, EvidenceVerifier] = {EvidenceKind.SIMULATED.value: simulated.VERIFIER}
    for module_name in REAL_KIND_MODULES:
        qualified = f"protocol.attestation.{module_name}"
        try:
            module = importlib.import_module(qualified)
        except ModuleNotFoundError as exc:
            if exc.name == qualified:
                continue
            raise
        verifier = getattr(module, "VERIFIER", None)
        if verifier is not None:
            verifiers[EvidenceKind(verifier.kind).value] = verifier
    return verifiers


def _label_for(kind: str) -> str:
    return simulated.LABEL if kind == EvidenceKind.SIMULATED.value else ""


class BundleAppraiser:
    """Appraises bundles against one policy with a registry of kind verifiers. Thread-safe.

    ``verifiers`` maps a kind name to its verifier (default: :func:`default_verifiers`). A kind
    the policy allows but no verifier handles is refused as ``kind_not_allowed``.
    """

    def __init__(
        self,
        policy: Policy,
        verifiers: Mapping[str, EvidenceVerifier] | None = None,
        *,
        cache_size: int = DEFAULT_CACHE_SIZE,
        cache_ttl: int = DEFAULT_CACHE_TTL,
    ) -> None:
        if cache_size < 0 or cache_ttl < 0:
            raise ValueError("cache_size and cache_ttl must not be negative")
        registry = dict(default_verifiers() if verifiers is None else verifiers)
        for name, verifier in registry.items():
            if EvidenceKind(verifier.kind).value != name:
                raise ValueError(f"verifier for {verifier.kind!r} registered under {name!r}")
        self.policy = policy
        self.verifiers: Mapping[str, EvidenceVerifier] = registry
        self._cache: OrderedDict[bytes, _Entry] = OrderedDict()
        self._cache_size = cache_size
        self._cache_ttl = cache_ttl
        self._lock = threading.Lock()
        self._hits = 0
        self._misses = 0

    # -- public ---------------------------------------------------------------------------

    def appraise(
        self, bundle: bytes | AttestationBundle, *, sender_peer_id: bytes | None, now: int
    ) -> BundleVerdict:
        """Appraise ``bundle`` (wire bytes or decoded) as received from ``sender_peer_id`` at ``now``.

        ``sender_peer_id`` is the authenticated peer that originated the message (the gossip
        source), or None when the bundle was obtained some other way (e.g. read from disk).
        Never raises on bad input: every problem is a refused verdict with a reason.
        """
        if isinstance(bundle, AttestationBundle):
            try:
                key = bundle.digest()
            except BundleError as exc:
                return BundleVerdict(
                    ok=False, reasons=(Reason.MALFORMED,), detail=str(exc), node_id=bundle.node_id
                )
        elif isinstance(bundle, (bytes, bytearray, memoryview)):
            bundle = bytes(bundle)
            key = hashlib.sha256(bundle).digest()
        else:
            return BundleVerdict(ok=False, reasons=(Reason.MALFORMED,), detail="expected bundle bytes")
        with self._lock:
            entry = self._cache.get(key)
            if entry is not None:
                self._cache.move_to_end(key)
                self._hits += 1
            else:
                self._misses += 1
        if entry is None:
            decoded, refusal = self._decode_and_check_signature(bundle, key)
            if refusal is not None:
                return refusal
            assert decoded is not None
            entry = _Entry(decoded)
            self._store(key, entry)
        refusal = self._check_sender_and_time(entry.bundle, key, sender_peer_id, now)
        if refusal is not None:
            if refusal.reasons == (Reason.EXPIRED,) and entry.bundle.expires_at <= now:
                self._evict(key)  # expired for good (as long as clocks move forward)
            return refusal
        cached = entry.outcome
        if (
            cached is not None
            and cached[1] - self.policy.max_clock_skew <= now <= cached[1] + self._cache_ttl
        ):
            return cached[0]
        outcome = self._appraise_evidence(entry.bundle, key, now)
        entry.outcome = (outcome, now)
        return outcome

    def appraise_challenge(
        self,
        bundle: bytes | AttestationBundle,
        evidence: Evidence,
        nonce: bytes,
        *,
        sender_peer_id: bytes | None,
        now: int,
    ) -> BundleVerdict:
        """Appraise a challenge answer: fresh CPU evidence over the bundle's binding plus ``nonce``.

        The bundle itself must be acceptable; the answer must be the same CPU kind, pass that
        kind's verifier and carry ``challenge_report_data(..., nonce)``. Evidence without
        endorsements borrows the bundle's CPU endorsements. Never cached.
        """
        verdict = self.appraise(bundle, sender_peer_id=sender_peer_id, now=now)
        if not verdict.ok:
            return verdict
        decoded = verdict.bundle
        assert decoded is not None
        if evidence.kind != decoded.cpu.kind:
            return self._refuse(
                decoded,
                verdict.digest,
                Reason.KIND_NOT_ALLOWED,
                f"challenge answered with {evidence.kind} evidence, the bundle carries {decoded.cpu.kind}",
            )
        if not evidence.endorsements and decoded.cpu.endorsements:
            # same platform: the bundle's endorsements (collateral, VCEK) serve the fresh evidence too
            evidence = Evidence(evidence.kind, evidence.data, decoded.cpu.endorsements)
        try:
            expected = decoded.challenge_report_data(nonce)
        except ValueError as exc:
            return self._refuse(decoded, verdict.digest, Reason.MALFORMED, f"challenge nonce: {exc}")
        cpu = self._run_verifier(evidence, expected, now)
        if not (cpu.ok and not cpu.reasons):
            return self._refuse(decoded, verdict.digest, None, f"challenge evidence: {cpu.detail}", cpu=cpu)
        return BundleVerdict(
            ok=True,
            detail="challenge answered with fresh evidence",
            node_id=decoded.node_id,
            kind=decoded.cpu.kind,
            label=verdict.label,
            measurements=cpu.measurements,
            tcb_status=cpu.tcb_status,
            advisories=cpu.advisories,
            cpu=cpu,
            gpus=verdict.gpus,
            epoch=decoded.epoch,
            issued_at=decoded.issued_at,
            expires_at=decoded.expires_at,
            digest=verdict.digest,
            bundle=decoded,
        )

    def cache_info(self) -> CacheInfo:
        with self._lock:
            return CacheInfo(self._hits, self._misses, len(self._cache), self._cache_size)

    def clear_cache(self) -> None:
        with self._lock:
            self._cache.clear()

    # -- stages ---------------------------------------------------------------------------

    def _decode_and_check_signature(
        self, bundle: bytes | AttestationBundle, key: bytes
    ) -> tuple[AttestationBundle | None, BundleVerdict | None]:
        if isinstance(bundle, AttestationBundle):
            decoded = bundle
        else:
            try:
                decoded = AttestationBundle.from_wire(bundle)
            except BundleError as exc:
                return None, BundleVerdict(ok=False, reasons=(Reason.MALFORMED,), detail=str(exc), digest=key)
        try:
            decoded.verify_signature()
        except SignatureError as exc:
            return None, self._refuse(decoded, key, Reason.BAD_SIGNATURE, str(exc))
        return decoded, None

    def _check_sender_and_time(
        self, b: AttestationBundle, key: bytes, sender: bytes | None, now: int
    ) -> BundleVerdict | None:
        p = self.policy
        if sender is not None and not same(sender, b.node_id):
            return self._refuse(
                b, key, Reason.WRONG_SIGNER, "bundle signed by another peer than the one that sent it"
            )
        if b.expires_at <= now:
            return self._refuse(b, key, Reason.EXPIRED, f"bundle expired at {b.expires_at}, now is {now}")
        if b.issued_at > now + p.max_clock_skew:
            return self._refuse(
                b,
                key,
                Reason.FUTURE_DATED,
                f"issued at {b.issued_at}, now is {now}, allowed clock skew {p.max_clock_skew} s",
            )
        if b.epoch != b.issued_at // p.epoch_seconds:
            return self._refuse(
                b,
                key,
                Reason.POLICY_VIOLATION,
                f"epoch {b.epoch} does not match issued_at {b.issued_at} "
                f"with epoch_seconds {p.epoch_seconds}",
            )
        current = now // p.epoch_seconds
        if b.epoch < current - 1:
            return self._refuse(
                b,
                key,
                Reason.EPOCH_TOO_OLD,
                f"epoch {b.epoch}; only {current - 1} and {current} are accepted",
            )
        if now - b.issued_at > p.max_evidence_age:
            return self._refuse(
                b,
                key,
                Reason.EXPIRED,
                f"evidence is {now - b.issued_at} s old, policy max_evidence_age {p.max_evidence_age} s",
            )
        return None

    def _appraise_evidence(self, b: AttestationBundle, key: bytes, now: int) -> BundleVerdict:
        p = self.policy
        for evidence in (b.cpu, *b.gpus):
            kind = evidence.kind
            if not p.kind_allowed(kind):
                if kind == EvidenceKind.SIMULATED.value and kind in p.allowed_kinds:
                    detail = "simulated evidence is refused: the policy does not say allow_simulated = true"
                else:
                    detail = (
                        f"evidence kind {kind!r} is not in the policy's allowed_kinds {list(p.allowed_kinds)}"
                    )
                return self._refuse(b, key, Reason.KIND_NOT_ALLOWED, detail)
            if kind not in self.verifiers:
                return self._refuse(
                    b, key, Reason.KIND_NOT_ALLOWED, f"no verifier for evidence kind {kind!r}"
                )
        if b.cpu.kind not in CPU_KINDS:
            return self._refuse(b, key, Reason.NOT_CPU_EVIDENCE, f"{b.cpu.kind} evidence in the cpu slot")
        for gpu in b.gpus:
            if gpu.kind not in GPU_KINDS:
                return self._refuse(b, key, Reason.NOT_GPU_EVIDENCE, f"{gpu.kind} evidence in the gpus list")
        if p.require_gpu and not b.gpus:
            return self._refuse(
                b, key, Reason.POLICY_VIOLATION, "the policy requires GPU evidence (require_gpu)"
            )
        cpu = self._run_verifier(b.cpu, b.expected_report_data(), now)
        if not (cpu.ok and not cpu.reasons):
            return self._refuse(b, key, None, f"{b.cpu.kind} evidence: {cpu.detail}", cpu=cpu)
        gpu_verdicts: list[EvidenceVerdict] = []
        nonce = b.expected_gpu_nonce() if b.gpus else b""
        for i, gpu in enumerate(b.gpus):
            verdict = self._run_verifier(gpu, nonce, now)
            gpu_verdicts.append(verdict)
            if not (verdict.ok and not verdict.reasons):
                return self._refuse(
                    b,
                    key,
                    None,
                    f"GPU {i} ({gpu.kind}) evidence: {verdict.detail}",
                    cpu=cpu,
                    gpus=tuple(gpu_verdicts),
                )
        labels = [cpu.label or b.cpu.kind]
        for verdict in gpu_verdicts:
            gpu_label = verdict.label or verdict.kind
            if gpu_label not in labels:
                labels.append(gpu_label)
        advisories = tuple(dict.fromkeys(a for v in (cpu, *gpu_verdicts) for a in v.advisories))
        return BundleVerdict(
            ok=True,
            detail="accepted",
            node_id=b.node_id,
            kind=b.cpu.kind,
            label=" + ".join(labels),
            measurements=cpu.measurements,
            tcb_status=cpu.tcb_status,
            advisories=advisories,
            cpu=cpu,
            gpus=tuple(gpu_verdicts),
            epoch=b.epoch,
            issued_at=b.issued_at,
            expires_at=b.expires_at,
            digest=key,
            bundle=b,
        )

    def _run_verifier(self, evidence: Evidence, expected: bytes, now: int) -> EvidenceVerdict:
        """Call the kind's verifier; a verifier that raises is a refusal, never a crash."""
        verifier = self.verifiers.get(evidence.kind)
        if verifier is None:
            return EvidenceVerdict.refused(
                evidence.kind, Reason.KIND_NOT_ALLOWED, "no verifier for this kind"
            )
        try:
            return verifier.verify(
                evidence, expected_report_data=expected, policy=self.policy.section(evidence.kind), now=now
            )
        except Exception as exc:  # the contract says verifiers never raise; hostile input must not crash us
            return EvidenceVerdict.refused(
                evidence.kind,
                Reason.MALFORMED,
                f"verifier failed: {type(exc).__name__}: {exc}",
                label=_label_for(evidence.kind),
            )

    def _refuse(
        self,
        b: AttestationBundle,
        key: bytes,
        reason: Reason | None,
        detail: str,
        *,
        cpu: EvidenceVerdict | None = None,
        gpus: tuple[EvidenceVerdict, ...] = (),
    ) -> BundleVerdict:
        """A refusal for a decoded bundle; ``reason`` None means "the evidence verdicts' reasons"."""
        if reason is not None:
            reasons: tuple[Reason, ...] = (reason,)
        else:
            failing = [v for v in (cpu, *gpus) if v is not None and not (v.ok and not v.reasons)]
            reasons = tuple(dict.fromkeys(r for v in failing for r in v.reasons)) or (
                Reason.POLICY_VIOLATION,
            )
        label = cpu.label if cpu is not None and cpu.label else _label_for(b.cpu.kind)
        claims: dict[str, Any] = {}
        if cpu is not None:
            claims = {
                "measurements": cpu.measurements,
                "tcb_status": cpu.tcb_status,
                "advisories": cpu.advisories,
            }
        return BundleVerdict(
            ok=False,
            reasons=reasons,
            detail=detail,
            node_id=b.node_id,
            kind=b.cpu.kind,
            label=label,
            cpu=cpu,
            gpus=gpus,
            epoch=b.epoch,
            issued_at=b.issued_at,
            expires_at=b.expires_at,
            digest=key,
            bundle=b,
            **claims,
        )

    # -- cache ----------------------------------------------------------------------------

    def _store(self, key: bytes, entry: _Entry) -> None:
        if self._cache_size == 0:
            return
        with self._lock:
            self._cache[key] = entry
            self._cache.move_to_end(key)
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)

    def _evict(self, key: bytes) -> None:
        with self._lock:
            self._cache.pop(key, None)
