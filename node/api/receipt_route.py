"""``GET /veilnet/v1/jobs/{id}/receipt``: a recent job's signed receipt, msgpack or JSON.

``Accept: application/msgpack`` (or ``application/x-msgpack``, ``application/vnd.msgpack``)
returns the receipt's canonical msgpack bytes, exactly what ``veilnet receipt verify`` checks.
Otherwise (the default) the answer is JSON: ``receipt`` (the JSON rendering), ``wire`` (the
msgpack bytes, base64) and ``private``: the input salt, the job input and the answer, base64.
The private parts never enter the receipt; the API is the user's own, and these let the user
prove, if they choose, that the receipt is about their input and their answer. A job answered at a
majority of its quorum is signed for once it has judged its slower executors: the request waits
for that (bounded by the job's deadline).
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

if TYPE_CHECKING:
    from node.jobs.router import Router

__all__ = ["MSGPACK_TYPES", "receipt_route"]

MSGPACK_TYPES = ("application/msgpack", "application/x-msgpack", "application/vnd.msgpack")


def _wants_msgpack(request: Request) -> bool:
    accept = request.headers.get("accept", "")
    return any(part.split(";", 1)[0].strip().lower() in MSGPACK_TYPES for part in accept.split(","))


def receipt_route(router: Callable[[], Router]) -> Route:
    async def job_receipt(request: Request) -> Response:
        job_id = request.path_params["job_id"]
        await router().settled(job_id)  # a job answered at a majority is still judging the rest
        book = router().receipts
        kept = book.get(job_id) if book is not None else None
        if kept is None:
            message = f"no receipt for job {job_id} (kept for recent embeddings and verified chat jobs)"
            body = {"error": {"message": message, "type": "invalid_request_error", "param": None,
                              "code": "unknown_receipt"}}
            return JSONResponse(body, status_code=404)
        if _wants_msgpack(request):
            return Response(kept.wire, media_type=MSGPACK_TYPES[0])
        return JSONResponse({
            "receipt": kept.receipt.to_json(),
            "wire": base64.b64encode(kept.wire).decode("ascii"),
            "private": {
                "input_salt": kept.input_salt.hex(),
                "input": base64.b64encode(kept.job_input).decode("ascii"),
                "answer": base64.b64encode(kept.answer).decode("ascii"),
            },
        })

    return Route("/veilnet/v1/jobs/{job_id}/receipt", job_receipt, methods=["GET"])
