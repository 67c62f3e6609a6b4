"""The node's TEE I/O shell: collecting evidence on real hardware and caching endorsements."""

from node.attest.tee.collateral import CollateralCache, CollateralCacheError
from node.attest.tee.configfs import TeeUnavailable, TsmReport, collect_tsm_report, tsm_evidence
from node.attest.tee.detect import KindAvailability, detect
from node.attest.tee.nvml import collect_gpu_evidence

__all__ = [
    "CollateralCache",
    "CollateralCacheError",
    "KindAvailability",
    "TeeUnavailable",
    "TsmReport",
    "collect_gpu_evidence",
    "collect_tsm_report",
    "detect",
    "tsm_evidence",
]
