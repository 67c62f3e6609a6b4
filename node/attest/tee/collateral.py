"""Local cache of DCAP collateral, so TDX quotes verify offline and verifiers name their source.

Entries are ``QuoteCollateralV3`` JSON files named ``<TEE>-<FMSPC>.json`` (one per platform
family), written atomically. Only the FMSPC-wide part is stored: a ``pck_certificate_chain`` in
imported collateral belongs to one machine and would, cached by FMSPC, be offered for every
machine of the family, so it is dropped on import. ``import_bytes`` validates before storing;
``fetch`` asks a PCCS the operator names (never a built-in default). Collateral lapses after about 30 days, so
``expiring`` lists entries that need a refresh soon and the node warns about them.
"""

from __future__ import annotations

import asyncio
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import dcap_qvl

from node.attest.tee.files import InputTooLarge, read_bounded
from protocol.attestation.tdx_collateral import (
    MAX_COLLATERAL_SIZE,
    CollateralError,
    CollateralInfo,
    parse_collateral,
)
from protocol.attestation.tdx_quote import QuoteFormatError, parse_quote

log = logging.getLogger(__name__)
DEFAULT_WARN_BEFORE = 7 * 24 * 3600


class CollateralCacheError(RuntimeError):
    """Import or fetch failed; the message says why."""


@dataclass(frozen=True)
class Expiring:
    info: CollateralInfo
    seconds_left: int


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "veilnet" / "collateral"


class CollateralCache:
    def __init__(self, directory: Path | None = None) -> None:
        self.directory = directory or default_cache_dir()

    def _path(self, tee: str, fmspc: str) -> Path:
        return self.directory / f"{tee.upper()}-{fmspc.upper()}.json"

    def import_bytes(self, data: bytes) -> CollateralInfo:
        """Validate and store collateral's FMSPC-wide part; replaces an older entry for the same FMSPC."""
        try:
            info = parse_collateral(parse_collateral(data).fmspc_json)  # machine-specific keys dropped
            dcap_qvl.QuoteCollateralV3.from_json(info.json_text)
        except (CollateralError, ValueError) as exc:
            raise CollateralCacheError(f"not usable DCAP collateral: {exc}") from exc
        self.directory.mkdir(parents=True, exist_ok=True)
        target = self._path(info.tee, info.fmspc)
        fd, tmp = tempfile.mkstemp(dir=self.directory, suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(info.json_text)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return info

    def import_file(self, path: Path) -> CollateralInfo:
        try:
            data = read_bounded(path, MAX_COLLATERAL_SIZE)
        except (OSError, InputTooLarge) as exc:
            raise CollateralCacheError(f"cannot read {path}: {exc}") from exc
        return self.import_bytes(data)

    def get(self, fmspc: str, tee: str = "TDX") -> bytes | None:
        """The entry for ``fmspc``, FMSPC-wide part only (entries written before machine-specific
        keys were dropped on import may still hold another machine's PCK chain)."""
        path = self._path(tee, fmspc)
        try:
            if not path.is_file():
                return None
            return parse_collateral(read_bounded(path, MAX_COLLATERAL_SIZE)).fmspc_json.encode()
        except (OSError, InputTooLarge, CollateralError) as exc:
            log.warning("ignoring unreadable collateral cache entry %s: %s", path, exc)
            return None

    def for_quote(self, quote: bytes) -> bytes | None:
        """The cached collateral matching a quote's platform (FMSPC from its PCK certificate)."""
        try:
            parsed = parse_quote(quote)
            fmspc = dcap_qvl.parse_quote(quote).fmspc()
        except (QuoteFormatError, ValueError):
            return None
        return self.get(fmspc, "TDX" if parsed.is_tdx else "SGX")

    def entries(self) -> list[CollateralInfo]:
        out = []
        for path in sorted(self.directory.glob("*.json")) if self.directory.is_dir() else []:
            try:
                out.append(parse_collateral(read_bounded(path, MAX_COLLATERAL_SIZE)))
            except (CollateralError, OSError, InputTooLarge) as exc:
                log.warning("ignoring unreadable collateral cache entry %s: %s", path, exc)
        return out

    def expiring(self, now: int, within: int = DEFAULT_WARN_BEFORE) -> list[Expiring]:
        """Entries that expire within ``within`` seconds of ``now`` (or already have)."""
        return [Expiring(i, i.not_after - now) for i in self.entries() if i.not_after - now <= within]

    def warn_expiring(self, now: int, within: int = DEFAULT_WARN_BEFORE) -> list[Expiring]:
        soon = self.expiring(now, within)
        for item in soon:
            if item.seconds_left <= 0:
                log.warning(
                    "DCAP collateral %s-%s has expired; TDX quotes of that platform will be refused",
                    item.info.tee,
                    item.info.fmspc,
                )
            else:
                log.warning(
                    "DCAP collateral %s-%s expires in %.1f days (%s); refresh it",
                    item.info.tee,
                    item.info.fmspc,
                    item.seconds_left / 86400,
                    item.info.expires_first,
                )
        return soon

    def fetch(self, pccs_url: str, quote: bytes) -> CollateralInfo:
        """Fetch collateral for ``quote`` from the PCCS at ``pccs_url`` and store it. Blocking."""
        if not pccs_url.startswith(("https://", "http://")):
            raise CollateralCacheError("the PCCS URL must start with https:// or http://")
        try:
            collateral = asyncio.run(_get_collateral(pccs_url, quote))
        except (ValueError, RuntimeError, OSError) as exc:
            raise CollateralCacheError(f"fetching collateral from {pccs_url} failed: {exc}") from exc
        return self.import_bytes(collateral.to_json().encode())


async def _get_collateral(pccs_url: str, quote: bytes) -> dcap_qvl.QuoteCollateralV3:
    return await dcap_qvl.get_collateral(pccs_url, quote)
