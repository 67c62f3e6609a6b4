"""Receipt size and offline verification time for k = 3 (issue 14).

Sizes: a k = 3 receipt with its three bundles embedded and with bundles by digest, for simulated
bundles and for bundles carrying the real Intel TDX quote + collateral and NVIDIA Hopper evidence
from tests/vectors. Times: ``verify_receipt`` on the wire bytes (decode, the user's signature,
three commitments, the vote's structure, three bundles appraised with a fresh appraiser, no
bundle cache), with simulated evidence and with the real TDX + GPU evidence. Each executor's
bundle carries another of the vectors' real H100s (its own leaf and device certificates, the
upper links shared, as on real machines); all three carry the one TDX quote whose collateral the
vectors hold, and nothing is remembered by quote, so each is verified in full. The real quotes
cannot carry these bundles' report data, so their verifiers are asked for the report data the
vectors were made with: every signature, chain and collateral check still runs.

``cold`` forgets every verified certificate link and parsed chain or collateral before each
call (what ``veilnet receipt verify`` pays in a fresh process); ``warm`` keeps them (a node that
has seen these chains before). Each in wall time and, ``.cpu``, in this process's CPU time (what
the verification costs on an idle core; wall time on a shared machine adds the waiting).
Baseline: the same receipt verified without the bundle steps (signatures and commitments only),
in the same unit.
Goal (issue 14): <= 20 ms for k = 3 with real evidence, excluding process start.
"""

from __future__ import annotations

import base64
import json
import statistics
import time
from collections.abc import Callable, Mapping
from typing import Any

from bench import Result
from protocol.attestation import issuer_links, nvidia_gpu, tdx
from protocol.attestation.appraisal import BundleAppraiser
from protocol.attestation.bundle import build_bundle
from protocol.attestation.evidence import Evidence, EvidenceVerdict, EvidenceVerifier
from protocol.attestation.policy import Policy
from protocol.attestation.tdx_quote import parse_quote
from protocol.identity import Identity
from protocol.jobs.receipts import verify_receipt
from tests.protocol.jobs.receipt_fixtures import ANSWER, EXECUTORS, enc_key, entry, make_receipt, policy
from tests.vectors import VECTORS

ROUNDS = 5
CALLS = 10
NOW = 1752919234  # the vectors' verification time


def _per_call_ms(fn: Callable[[], Any]) -> tuple[float, float]:
    """Median (wall, CPU) milliseconds per call: CPU time is this process's own work, which a
    loaded machine stretches in wall time but not in CPU time."""
    fn()
    walls, cpus = [], []
    for _ in range(ROUNDS):
        wall, cpu = time.perf_counter(), time.process_time()
        for _ in range(CALLS):
            fn()
        walls.append((time.perf_counter() - wall) / CALLS * 1000)
        cpus.append((time.process_time() - cpu) / CALLS * 1000)
    return statistics.median(walls), statistics.median(cpus)


def forget_verified_chains() -> None:
    """Empty every per-process cache the verifiers keep (a fresh ``veilnet receipt verify``)."""
    issuer_links.cache_clear()
    nvidia_gpu.forget_parsed()
    tdx.forget_parsed()


class _Retargeted:
    """A real kind verifier, asked for the report data its vector was made with."""

    def __init__(self, inner: EvidenceVerifier, report_data: bytes) -> None:
        self.kind = inner.kind
        self._inner = inner
        self._report_data = report_data

    def verify(
        self, evidence: Evidence, *, expected_report_data: bytes, policy: Mapping[str, Any], now: int
    ) -> EvidenceVerdict:
        return self._inner.verify(evidence, expected_report_data=self._report_data, policy=policy, now=now)


def _real() -> tuple[bytes, BundleAppraiser, Policy]:
    dcap = VECTORS / "tdx" / "dcap-qvl"
    quote = (dcap / "tdx_quote").read_bytes()
    collateral = (dcap / "tdx_quote_collateral.json").read_bytes()
    fields = parse_quote(quote).td_fields()
    gpus = json.loads((VECTORS / "nvidia-gpu" / "nvtrust" / "ppcie_gpu_evidence.json").read_text())
    nonces = {g["nonce"] for g in gpus[: len(EXECUTORS)]}
    assert len(nonces) == 1, "the retargeted GPU verifier expects one nonce"
    cpu_evidence = Evidence("tdx", quote, {"collateral": collateral})
    gpu_evidences = [
        Evidence(
            "nvidia-gpu", base64.b64decode(g["evidence"]), {"cert_chain": base64.b64decode(g["certificate"])}
        )
        for g in gpus[: len(EXECUTORS)]
    ]
    tdx_section: dict[str, Any] = {
        "allow_dynamic_platform": True,
        "allow_cached_keys": True,
        "allow_smt": True,
    }
    tdx_section.update({k: [fields[k].hex()] for k in ("mrtd", "rtmr0", "rtmr1", "rtmr2", "rtmr3")})
    real_policy = Policy(
        allowed_kinds=("tdx", "nvidia-gpu"),
        require_gpu=True,
        sections={"tdx": tdx_section, "nvidia-gpu": {"require_ocsp": False, "allow_any_measurement": True}},
    )
    issued = NOW - 60

    def bundle(executor: Identity, gpu: Evidence) -> bytes:
        return build_bundle(
            executor,
            enc_key(executor),
            issued_at=issued,
            epoch_seconds=real_policy.epoch_seconds,
            collect_cpu_evidence=lambda _rd: cpu_evidence,
            collect_gpu_evidence=lambda _n: [gpu],
        ).to_wire()

    entries = tuple(
        entry(e, ANSWER, bundle=bundle(e, gpu)) for e, gpu in zip(EXECUTORS, gpu_evidences, strict=True)
    )
    receipt = make_receipt(executors=entries, created_ms=NOW * 1000, finished_ms=NOW * 1000 + 250)
    appraiser = BundleAppraiser(
        real_policy,
        {
            "tdx": _Retargeted(tdx.VERIFIER, fields["report_data"]),
            "nvidia-gpu": _Retargeted(nvidia_gpu.VERIFIER, bytes.fromhex(nonces.pop())),
        },
        cache_size=0,
    )
    return receipt.to_wire(), appraiser, real_policy


def run() -> list[Result]:
    simulated = make_receipt().to_wire()
    slim = make_receipt(embed=False).to_wire()
    real_wire, appraiser, real_policy = _real()
    real_verdict = verify_receipt(real_wire, appraiser=appraiser, answer=ANSWER)
    assert real_verdict.ok, real_verdict.steps
    sim_policy = policy()
    assert verify_receipt(simulated, policy=sim_policy).ok

    def sim() -> None:
        verify_receipt(simulated, policy=sim_policy, answer=ANSWER)

    def real() -> None:
        fresh = BundleAppraiser(real_policy, appraiser.verifiers, cache_size=0)
        verify_receipt(real_wire, appraiser=fresh, answer=ANSWER)

    def real_cold() -> None:
        forget_verified_chains()
        real()

    def statements_only() -> None:
        verify_receipt(real_wire, answer=ANSWER, check_bundles=False)

    baseline, baseline_cpu = _per_call_ms(statements_only)
    cold_ms, cold_cpu = _per_call_ms(real_cold)
    warm_ms, warm_cpu = _per_call_ms(real)
    sim_ms, _ = _per_call_ms(sim)
    timed = [
        ("receipt.verify.k3.tdx+gpu.cold", cold_ms, baseline),
        ("receipt.verify.k3.tdx+gpu.warm", warm_ms, baseline),
        ("receipt.verify.k3.tdx+gpu.cold.cpu", cold_cpu, baseline_cpu),
        ("receipt.verify.k3.tdx+gpu.warm.cpu", warm_cpu, baseline_cpu),
    ]
    return [
        Result(
            "receipt.size.k3.simulated.embedded",
            len(simulated),
            "bytes",
            len(slim),
            "bundles by digest",
            len(simulated) / len(slim),
            "report",
        ),
        Result(
            "receipt.size.k3.tdx+gpu.embedded",
            len(real_wire),
            "bytes",
            len(slim),
            "bundles by digest",
            len(real_wire) / len(slim),
            "report",
        ),
        Result(
            "receipt.verify.k3.simulated",
            sim_ms,
            "ms",
            baseline,
            "statements only",
            sim_ms / baseline,
            "report",
        ),
        *(Result(name, ms, "ms", base, "statements only", ms / base, "<= 20 ms") for name, ms, base in timed),
    ]
