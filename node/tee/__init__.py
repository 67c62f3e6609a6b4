"""The node's TEE I/O shell: collecting evidence on real hardware and caching endorsements."""

from node.tee.collateral import CollateralCache, CollateralCacheError
from node.tee.configfs import TeeUnavailable, TsmReport, collect_tsm_report, tsm_evidence
from node.tee.detect import KindAvailability, detect
from node.tee.nvml import collect_gpu_evidence

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
