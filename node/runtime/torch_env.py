"""Process-wide settings for CPU inference: offline Hugging Face libraries and torch thread counts.

``node.runtime`` imports this module before anything imports transformers: the offline switches are
read when the hub client loads, and a node must never reach out to a model hub (it serves only
files it already has; every load also passes ``local_files_only=True``).
"""

from __future__ import annotations

import contextlib
import os
import threading
from pathlib import Path
from typing import Any

from node.runtime.errors import UnsupportedModel


def enforce_offline() -> None:
    """Make the Hugging Face libraries refuse any network access (read by them at import time)."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # we batch ourselves; avoids fork warnings


enforce_offline()

_lock = threading.Lock()
_configured: int | None = None


def available_cores() -> int:
    """Cores this process may run on (respects CPU affinity / container limits)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - non-Linux
        return max(1, os.cpu_count() or 1)


def configure_torch(threads: int | None = None) -> int:
    """Set torch's intra-op threads (default: all available cores) and a single inter-op thread.

    One model call at a time uses every core; running two calls concurrently on a 2-core machine
    only oversubscribes, so the executor serialises compute with a CapacityLimiter instead.
    Idempotent; returns the thread count in force. ``VEILNET_TORCH_THREADS`` overrides the default.
    """
    global _configured
    import torch  # here, not at import time: ``node.runtime`` stays cheap to import

    with _lock:
        if threads is None:
            env = os.environ.get("VEILNET_TORCH_THREADS")
            threads = int(env) if env else available_cores()
        if threads < 1:
            raise ValueError("threads must be >= 1")
        if _configured is None:
            # Raises once parallel work has run in this process; the inter-op count is then fixed.
            with contextlib.suppress(RuntimeError):
                torch.set_num_interop_threads(1)
        if _configured != threads:
            torch.set_num_threads(threads)
            _configured = threads
        return threads


def load_local_model(auto_class: Any, path: Path) -> Any:
    """A Hugging Face model from the files in ``path`` only (never a hub; safetensors, fp32, SDPA
    attention), in eval mode. A directory it cannot load is ``UnsupportedModel``."""
    import torch

    try:
        model = auto_class.from_pretrained(
            str(path),
            local_files_only=True,
            dtype=torch.float32,
            attn_implementation="sdpa",
            use_safetensors=True,
        )
    except (OSError, ValueError, KeyError) as exc:
        raise UnsupportedModel(f"cannot load {path}: {exc}") from None
    return model.eval()
