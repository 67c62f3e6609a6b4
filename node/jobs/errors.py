"""Why a job gave no trusted answer: the router's one error type and its stable codes.

Callers (the HTTP API, the CLI) branch on ``RouterError.code``, never on message text, and
``http_status`` is the status hint the API answers with (h11's idea of an error that knows its
status). The error carries the job's verification report when one exists, so a refusal still
explains which executors were tried and what each did.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import Any

__all__ = ["RouterError", "RouterErrorCode"]


class RouterErrorCode(StrEnum):
    UNKNOWN_MODEL = "unknown_model"
    NO_PROVIDERS = "no_attested_providers"
    NO_CONSENSUS = "no_consensus"
    DEADLINE = "deadline_exceeded"
    UNAVAILABLE = "executors_unavailable"
    BAD_REQUEST = "invalid_request"
    STREAM_REJECTED = "stream_rejected"  # live chat: the verifiers' majority rejected a streamed token
    PRIMARY_FAILED = "primary_failed"  # live chat: the primary died, stalled or broke its stream


_HTTP_STATUS = {
    RouterErrorCode.UNKNOWN_MODEL: 404,
    RouterErrorCode.NO_PROVIDERS: 503,
    RouterErrorCode.NO_CONSENSUS: 502,
    RouterErrorCode.DEADLINE: 504,
    RouterErrorCode.UNAVAILABLE: 503,
    RouterErrorCode.BAD_REQUEST: 400,
    RouterErrorCode.STREAM_REJECTED: 502,
    RouterErrorCode.PRIMARY_FAILED: 502,
}


class RouterError(Exception):
    """A job could not produce a trusted answer; ``code`` is stable, ``report`` explains what happened."""

    def __init__(self, code: RouterErrorCode, message: str, report: Mapping[str, Any] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.report = dict(report) if report else None

    @property
    def http_status(self) -> int:
        return _HTTP_STATUS[self.code]
