"""TEE evidence verification time per kind, uncached, on the real vectors in tests/vectors.

Each figure is the full ``VERIFIER.verify`` call (parse, chain, signature, collateral, appraisal)
on fresh ``Evidence`` objects: nothing about the evidence is cached between calls except the
pinned roots (process constants) and, for TDX, the parsed PCK certificates of a chain already
seen (a node sees the same chain in every quote of a machine; the signatures are still checked
by dcap-qvl on every call). The baseline for each kind is the single vendor
primitive the verifier cannot avoid, measured in the same run: ``dcap_qvl.verify`` for TDX, one
ECDSA P-384 report-signature check for SEV-SNP and for the GPU. Also measured: the NEAR MPC
quote with dstack's JSON event log replayed, and NVIDIA's Blackwell sample.
Goals (issue 5): TDX and SNP < 5 ms, GPU < 10 ms.
"""

from __future__ import annotations

import base64
import json
import statistics
import time
from collections.abc import Callable
from typing import Any

import dcap_qvl
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from bench import Result
from protocol.attestation import nvidia_gpu, sev_snp, tdx
from protocol.attestation.evidence import Evidence
from protocol.attestation.sev_snp import load_certificate
from protocol.attestation.spdm import parse_transcript
from protocol.attestation.tdx_quote import parse_quote
from tests.vectors import VECTORS

ROUNDS = 7
CALLS = 30


def _per_call_ms(fn: Callable[[], Any]) -> float:
    """Median over rounds of the mean time per call, in milliseconds."""
    fn()  # warm imports and the pinned-root caches
    samples = []
    for _ in range(ROUNDS):
        start = time.perf_counter()
        for _ in range(CALLS):
            fn()
        samples.append((time.perf_counter() - start) / CALLS * 1000)
    return statistics.median(samples)


def _result(name: str, value: float, baseline: float, goal: float, baseline_name: str) -> Result:
    return Result(
        name=name,
        value=value,
        unit="ms",
        baseline=baseline,
        baseline_name=baseline_name,
        ratio=value / baseline,
        goal=f"< {goal:g} ms",
    )


def _tdx() -> Result:
    dcap = VECTORS / "tdx" / "dcap-qvl"
    quote = (dcap / "tdx_quote").read_bytes()
    coll = (dcap / "tdx_quote_collateral.json").read_bytes()
    now = 1752919234
    fields = parse_quote(quote).td_fields()
    policy: dict[str, Any] = {"allow_dynamic_platform": True, "allow_cached_keys": True, "allow_smt": True}
    policy.update({k: [fields[k].hex()] for k in ("mrtd", "rtmr0", "rtmr1", "rtmr2", "rtmr3")})

    def full() -> None:
        verdict = tdx.VERIFIER.verify(
            Evidence("tdx", quote, {"collateral": coll}),
            expected_report_data=fields["report_data"],
            policy=policy,
            now=now,
        )
        assert verdict.ok, verdict.detail

    def baseline() -> None:
        dcap_qvl.verify(quote, dcap_qvl.QuoteCollateralV3.from_json(coll.decode()), now)

    return _result("tee.verify.tdx", _per_call_ms(full), _per_call_ms(baseline), 5.0, "dcap_qvl.verify")


def _snp() -> Result:
    snp = VECTORS / "sev-snp" / "go-sev-guest"
    report = (snp / "attestation.bin").read_bytes()
    vcek = (snp / "vcek.testcer").read_bytes()
    policy = {"allow_debug": True, "measurements": [report[0x90:0xC0].hex()]}

    def full() -> None:
        verdict = sev_snp.VERIFIER.verify(
            Evidence("sev-snp", report, {"vcek": vcek}),
            expected_report_data=report[0x50:0x90],
            policy=policy,
            now=1752919234,
        )
        assert verdict.ok, verdict.detail

    key = load_certificate(vcek).public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey)
    sig = encode_dss_signature(
        int.from_bytes(report[0x2A0:0x2E8], "little"), int.from_bytes(report[0x2E8:0x330], "little")
    )

    def baseline() -> None:
        key.verify(sig, report[:0x2A0], ec.ECDSA(hashes.SHA384()))

    return _result("tee.verify.sev-snp", _per_call_ms(full), _per_call_ms(baseline), 5.0, "one P-384 verify")


def _gpu(name: str, data: bytes, chain: bytes, nonce: bytes) -> Result:
    policy = {"require_ocsp": False, "allow_any_measurement": True}

    def full() -> None:
        verdict = nvidia_gpu.VERIFIER.verify(
            Evidence("nvidia-gpu", data, {"cert_chain": chain}),
            expected_report_data=nonce,
            policy=policy,
            now=1752919234,
        )
        assert verdict.ok, verdict.detail

    transcript = parse_transcript(data)
    key = x509.load_pem_x509_certificates(chain)[0].public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey)
    sig = encode_dss_signature(
        int.from_bytes(transcript.signature[:48], "big"), int.from_bytes(transcript.signature[48:], "big")
    )

    def baseline() -> None:
        key.verify(sig, transcript.signed_message, ec.ECDSA(hashes.SHA384()))

    return _result(name, _per_call_ms(full), _per_call_ms(baseline), 10.0, "one P-384 verify")


def _hopper() -> Result:
    entry = json.loads((VECTORS / "nvidia-gpu" / "nvtrust" / "ppcie_gpu_evidence.json").read_text())[0]
    data = base64.b64decode(entry["evidence"])
    return _gpu(
        "tee.verify.nvidia-gpu", data, base64.b64decode(entry["certificate"]), bytes.fromhex(entry["nonce"])
    )


def _blackwell() -> Result:
    nvat = VECTORS / "nvidia-gpu" / "nvat-sdk"
    data = bytes.fromhex((nvat / "blackwellAttestationReport.txt").read_text().strip())
    chain = (nvat / "blackwellCertChain.txt").read_bytes()
    return _gpu("tee.verify.nvidia-gpu.blackwell", data, chain, parse_transcript(data).nonce)


def _tdx_dstack_event_log() -> Result:
    """A NEAR MPC quote on dstack with its JSON event log replayed (29 events, 9 runtime digests)."""
    near = VECTORS / "tdx" / "near-mpc"
    quote = bytes(json.loads((near / "quote.json").read_text()))
    coll = (near / "collateral.json").read_bytes()
    log = (near / "tcb_info.json").read_bytes()
    now = 1786618038
    fields = parse_quote(quote).td_fields()
    policy: dict[str, Any] = {"allow_dynamic_platform": True, "allow_cached_keys": True, "allow_smt": True}
    policy.update({k: [fields[k].hex()] for k in ("mrtd", "rtmr0", "rtmr1", "rtmr2", "rtmr3")})

    def full() -> None:
        verdict = tdx.VERIFIER.verify(
            Evidence("tdx", quote, {"collateral": coll, "event_log": log}),
            expected_report_data=fields["report_data"],
            policy=policy,
            now=now,
        )
        assert verdict.ok, verdict.detail

    def baseline() -> None:
        dcap_qvl.verify(quote, dcap_qvl.QuoteCollateralV3.from_json(coll.decode()), now)

    return _result(
        "tee.verify.tdx.dstack-event-log", _per_call_ms(full), _per_call_ms(baseline), 5.0, "dcap_qvl.verify"
    )


def run() -> list[Result]:
    return [_tdx(), _tdx_dstack_event_log(), _snp(), _hopper(), _blackwell()]
