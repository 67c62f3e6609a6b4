"""Evidence file forms, kind detection, and parser robustness against arbitrary bytes."""

from __future__ import annotations

import contextlib
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.attestation import der, nvidia_gpu, sev_snp, tdx
from protocol.attestation.ccel import EventLogError, parse_event_log
from protocol.attestation.dstack_eventlog import parse_json_event_log
from protocol.attestation.evidence import Evidence, EvidenceKind
from protocol.attestation.evidence_files import EvidenceFileError, detect_kind, load_evidence
from protocol.attestation.nvidia_rim import RimError, parse_rim
from protocol.attestation.snp_report import ReportFormatError, parse_cert_table, parse_report
from protocol.attestation.spdm import SpdmFormatError, parse_transcript
from protocol.attestation.tdx_quote import QuoteFormatError, parse_quote
from tests.conftest import decoder_settings
from tests.vectors import VECTORS


@pytest.mark.parametrize(
    "path,kind,form,count",
    [
        ("tdx/dcap-qvl/tdx_quote", EvidenceKind.TDX, "binary", 1),
        ("tdx/dcap-qvl/tdx_quote_outdated", EvidenceKind.TDX, "binary", 1),
        ("tdx/dcap-qvl/sgx_quote", EvidenceKind.TDX, "binary", 1),
        ("tdx/go-tdx-guest/quote_v5_sample.dat", EvidenceKind.TDX, "binary", 1),
        ("tdx/go-tdx-guest/ccel/cos-113-tdx-quote.dat", EvidenceKind.TDX, "binary", 1),
        ("sev-snp/go-sev-guest/attestation.bin", EvidenceKind.SEV_SNP, "binary", 1),
        ("nvidia-gpu/nvtrust/hopperAttestationReport.txt", EvidenceKind.NVIDIA_GPU, "hex", 1),
        (
            "nvidia-gpu/nvat-sdk/hopperAttestationReportInvalidSignature.txt",
            EvidenceKind.NVIDIA_GPU,
            "hex",
            1,
        ),
        ("nvidia-gpu/nvtrust/ppcie_gpu_evidence.json", EvidenceKind.NVIDIA_GPU, "sdk-json", 8),
    ],
)
def test_every_vector_loads_with_its_kind(path: str, kind: EvidenceKind, form: str, count: int) -> None:
    loaded = load_evidence((VECTORS / path).read_bytes())
    assert len(loaded) == count
    assert all(item.evidence.kind == kind.value and item.form == form for item in loaded)


def test_sdk_json_carries_chain_and_declared_nonce() -> None:
    loaded = load_evidence((VECTORS / "nvidia-gpu/nvtrust/ppcie_gpu_evidence.json").read_bytes())
    first = loaded[0]
    assert first.evidence.endorsements["cert_chain"].startswith(b"-----BEGIN CERTIFICATE-----")
    assert first.declared_nonce == parse_transcript(first.evidence.data).nonce


@pytest.mark.parametrize(
    "path", ["tdx/dcap-qvl/tdx_quote_collateral.json", "sev-snp/go-sev-guest/vcek.testcer"]
)
def test_non_evidence_refused(path: str) -> None:
    with pytest.raises(EvidenceFileError):
        load_evidence((VECTORS / path).read_bytes())


def test_wrong_declared_kind_refused() -> None:
    with pytest.raises(EvidenceFileError):
        load_evidence((VECTORS / "tdx/dcap-qvl/tdx_quote").read_bytes(), EvidenceKind.SEV_SNP)


def test_declared_kind_for_unparseable_bytes_goes_to_that_verifier() -> None:
    loaded = load_evidence(b"\x00" * 10, "tdx")
    assert loaded[0].evidence.kind == "tdx" and loaded[0].notes


PARSERS = [
    (parse_quote, QuoteFormatError),
    (parse_report, ReportFormatError),
    (parse_cert_table, ReportFormatError),
    (parse_transcript, SpdmFormatError),
    (parse_event_log, EventLogError),
    (parse_rim, RimError),
    (der.find_fwids, der.DerError),
    (der.dice_tcb_info_fwids, der.DerError),
    (parse_json_event_log, EventLogError),
]


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=2048))
def test_parsers_only_raise_their_own_error(data: bytes) -> None:
    for parse, error in PARSERS:
        with contextlib.suppress(error):
            parse(data)
    assert detect_kind(data) in (None, *EvidenceKind)


@settings(max_examples=60, deadline=None)
@given(st.integers(min_value=0, max_value=1183), st.integers(min_value=1, max_value=255))
def test_verifiers_never_raise_on_mutated_vectors(offset: int, flip: int) -> None:
    cases = [
        (tdx.VERIFIER, VECTORS / "tdx/dcap-qvl/tdx_quote", 64),
        (sev_snp.VERIFIER, VECTORS / "sev-snp/go-sev-guest/attestation.bin", 64),
        (nvidia_gpu.VERIFIER, None, 32),
    ]
    for verifier, path, rd_len in cases:
        if path is None:
            raw = bytes.fromhex(
                (VECTORS / "nvidia-gpu/nvtrust/hopperAttestationReport.txt").read_text().strip()
            )
        else:
            raw = path.read_bytes()
        data = bytearray(raw)
        data[offset % len(data)] ^= flip
        verdict = verifier.verify(
            Evidence(verifier.kind.value, bytes(data)), expected_report_data=bytes(rd_len), policy={}, now=0
        )
        assert not verdict.ok and verdict.reasons


def test_unknown_policy_keys_refused() -> None:
    from protocol.attestation.evidence import Reason

    for verifier, rd_len in ((tdx.VERIFIER, 64), (sev_snp.VERIFIER, 64), (nvidia_gpu.VERIFIER, 32)):
        verdict = verifier.verify(
            Evidence(verifier.kind.value, b""),
            expected_report_data=bytes(rd_len),
            policy={"alow_debug": True},
            now=0,
        )
        assert verdict.reasons == (Reason.POLICY_VIOLATION,)
        assert "alow_debug" in verdict.detail


def test_odd_length_hex_text_is_named_as_such_not_as_a_wrong_message() -> None:
    """Before: with ``--kind nvidia-gpu`` odd-length hex reached the SPDM parser as "not GET_MEASUREMENTS"."""
    text = (VECTORS / "nvidia-gpu/nvtrust/hopperAttestationReport.txt").read_text().strip()[:-1]
    for kind in (None, EvidenceKind.NVIDIA_GPU):
        with pytest.raises(EvidenceFileError, match="odd number of digits"):
            load_evidence(text.encode(), kind)


def test_near_quote_json_byte_array_is_read_as_a_tdx_quote() -> None:
    data = (VECTORS / "tdx/near-mpc/quote.json").read_bytes()
    [loaded] = load_evidence(data)
    assert loaded.form == "json-bytes" and loaded.evidence.kind == EvidenceKind.TDX.value
    assert loaded.evidence.data == bytes(json.loads(data))


@decoder_settings()
@given(
    st.one_of(
        st.binary(max_size=2048), st.text(alphabet='[]{}0123456789abcdef," \n', max_size=600).map(str.encode)
    )
)
def test_load_evidence_raises_only_its_typed_error(data: bytes) -> None:
    """Any bytes, including bracket soup that reaches the JSON paths: evidence or EvidenceFileError."""
    with contextlib.suppress(EvidenceFileError):
        load_evidence(data)
