"""Opening one executor's reveal: from signed message to a value the vote may count.

Order of checks, each failing with the ``Failure`` that ``JobFlow`` penalises or retries on:

1. the reveal is signed by the peer we asked and opens that peer's commitment → ``BAD_REVEAL``
   (with both signed messages as ``Misbehaviour`` when it is signed but does not open it);
2. the sealed result opens with this job's session key; a streamed result (chat) is a
   secretstream of UTF-8 text deltas ending with the full result, and the deltas must spell its
   text exactly → ``BAD_REVEAL``;
3. the digest the vote compares is computed here over the plaintext, never taken from the
   executor;
4. the plaintext decodes as this phase's result → ``MALFORMED``.
"""

from __future__ import annotations

from typing import Any

import trio

from node.jobs.phase import Failed, Misbehaviour, Phase, Revealed
from protocol.jobs import consensus
from protocol.jobs.jobflow import Failure
from protocol.jobs.messages import Commitment, MessageError, Reveal, StreamChunk, result_digest
from protocol.jobs.offences import OffenceKind
from protocol.jobs.payloads import GenerateResult, PayloadError, decode_result
from protocol.sealing import Envelope, JobSession, SealingError, StreamOpener, open_result

__all__ = ["ResultStreamError", "open_reveal", "read_result_stream"]


class ResultStreamError(Exception):
    """A streamed result that does not hold together (order, encoding, or text vs. final result)."""


async def open_reveal(
    phase: Phase, peer: bytes, reveal: Reveal, commitment: Commitment, session: JobSession,
    receive: trio.MemoryReceiveChannel[Any], *, statement: bytes = b"", reveal_wire: bytes = b"",
) -> Revealed | Failed:
    """Check and open ``reveal``; stream chunks, if any, are read from ``receive``.

    ``statement`` and ``reveal_wire`` are the signed commitment and reveal as received: a signed
    reveal that does not open the signed commitment comes back with them as ``Misbehaviour``.
    """
    try:
        reveal.verify(expected_peer_id=peer)
    except MessageError as exc:
        return Failed(peer, Failure.BAD_REVEAL, f"reveal: {exc}")  # not its signature: proves nothing
    try:
        reveal.check_against(commitment)
    except MessageError as exc:
        proof = None
        if statement and reveal_wire:
            proof = Misbehaviour(OffenceKind.BAD_REVEAL, phase.job_id, peer, statement, reveal_wire)
        return Failed(peer, Failure.BAD_REVEAL, f"reveal: {exc}", proof)
    sealed = Envelope(reveal.result_nonce, reveal.sealed_result)
    try:
        if phase.stream:
            plaintext = await read_result_stream(session, sealed, receive)
        else:
            plaintext = open_result(session, sealed)
    except (SealingError, ResultStreamError) as exc:
        return Failed(peer, Failure.BAD_REVEAL, f"sealed result: {exc}")
    digest = result_digest(plaintext)  # computed here, never taken from the executor
    try:
        value = phase.decode(plaintext)
    except (PayloadError, consensus.ConsensusError, ValueError) as exc:
        return Failed(peer, Failure.MALFORMED, f"result: {exc}")
    return Revealed(peer, reveal.salt, digest, value, plaintext)


async def read_result_stream(
    session: JobSession, opening: Envelope, receive: trio.MemoryReceiveChannel[Any]
) -> bytes:
    """Text deltas, then the full result as the FINAL chunk; the deltas must spell its text."""
    opener = StreamOpener.start(session, opening)
    deltas: list[str] = []
    async for message, _frame in receive:
        if not isinstance(message, StreamChunk):
            raise ResultStreamError(f"unexpected {getattr(message, 'TAG', 'end')} inside a result stream")
        if message.opening_nonce is not None:  # the opening came in the reveal; only live streams send one
            raise ResultStreamError("a second stream opening inside a result stream")
        plaintext = opener.pull(message.data)
        if not opener.finished:
            try:
                deltas.append(plaintext.decode("utf-8"))
            except UnicodeDecodeError:
                raise ResultStreamError("a text chunk is not UTF-8") from None
            continue
        try:
            result = decode_result(plaintext)
        except PayloadError as exc:
            raise ResultStreamError(f"final chunk: {exc}") from None
        if not isinstance(result, GenerateResult) or "".join(deltas) != result.text:
            raise ResultStreamError("streamed text differs from the final result")
        return plaintext
    raise ResultStreamError("the result stream ended without its final chunk")
