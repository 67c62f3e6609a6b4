"""CPU evidence collection through Linux configfs-tsm (``/sys/kernel/config/tsm/report``).

configfs-tsm (Linux ≥ 6.7, ``CONFIG_TSM_REPORTS``) is the upstream interface for both TDX and
SEV-SNP: create an entry, write up to 64 bytes of report data to ``inblob``, read ``outblob``
(a DCAP quote or an SNP report) and, for SNP, ``auxblob`` (the certificate table). The
``generation`` counter detects another writer racing on the same entry. Blocking file I/O:
call from a worker thread (``trio.to_thread.run_sync``).
"""

from __future__ import annotations

import contextlib
import os
import uuid
from dataclasses import dataclass
from pathlib import Path

from protocol.attestation.evidence import Evidence, EvidenceKind

TSM_REPORT_ROOT = Path("/sys/kernel/config/tsm/report")
MAX_BLOB = 1024 * 1024
PROVIDER_KINDS = {"tdx_guest": EvidenceKind.TDX, "sev_guest": EvidenceKind.SEV_SNP}


class TeeUnavailable(RuntimeError):
    """This machine cannot produce the requested evidence; the message says why."""


@dataclass(frozen=True)
class TsmReport:
    provider: str
    outblob: bytes
    auxblob: bytes | None
    generation: int


def _read(path: Path, limit: int = MAX_BLOB) -> bytes:
    with path.open("rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise TeeUnavailable(f"{path} is larger than {limit} bytes")
    return data


def collect_tsm_report(
    report_data: bytes, *, root: Path = TSM_REPORT_ROOT, privlevel: int | None = None
) -> TsmReport:
    """One fresh report whose report data is ``report_data`` (≤ 64 bytes, zero-padded by the kernel)."""
    if len(report_data) > 64:
        raise ValueError("configfs-tsm report data is at most 64 bytes")
    if not root.is_dir():
        raise TeeUnavailable(
            f"{root} does not exist: kernel without CONFIG_TSM_REPORTS or configfs not mounted"
        )
    entry = root / f"veilnet-{uuid.uuid4().hex}"
    try:
        entry.mkdir()
    except OSError as exc:
        raise TeeUnavailable(f"cannot create a configfs-tsm entry in {root}: {exc}") from exc
    try:
        before = int(_read(entry / "generation", 32))
        if privlevel is not None:
            (entry / "privlevel").write_text(str(privlevel))
        with (entry / "inblob").open("wb") as f:
            f.write(report_data)
        outblob = _read(entry / "outblob")
        aux_path = entry / "auxblob"
        auxblob = _read(aux_path) if aux_path.exists() else None
        provider = _read(entry / "provider", 64).decode().strip()
        after = int(_read(entry / "generation", 32))
        if after != before + 1 + (privlevel is not None):
            raise TeeUnavailable("configfs-tsm entry was written by another process during collection")
        return TsmReport(provider=provider, outblob=outblob, auxblob=auxblob or None, generation=after)
    except OSError as exc:
        raise TeeUnavailable(f"configfs-tsm report failed: {exc}") from exc
    finally:
        with contextlib.suppress(OSError):  # best effort: a leftover entry only holds a stale report
            os.rmdir(entry)


def tsm_evidence(report: TsmReport, endorsements: dict[str, bytes] | None = None) -> Evidence:
    """Wrap a configfs-tsm report as evidence of the provider's kind (SNP: certs from ``auxblob``)."""
    kind = PROVIDER_KINDS.get(report.provider)
    if kind is None:
        raise TeeUnavailable(f"unknown configfs-tsm provider {report.provider!r}")
    extra = dict(endorsements or {})
    if kind is EvidenceKind.SEV_SNP and report.auxblob:
        extra.setdefault("cert_table", report.auxblob)
    return Evidence(kind.value, report.outblob, extra)
