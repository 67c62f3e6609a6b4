"""Where a stream's opening may travel: a live stream's first chunk carries it (its nonce in
``opening_nonce``), no later chunk may, and a revealed result stream never carries one in a chunk."""

from __future__ import annotations

import pytest
import trio

from node.jobs.live_tap import LiveTap, TapBroken, TapEnded, TapTokens
from node.jobs.reveals import ResultStreamError, read_result_stream
from protocol.jobs.live import LiveChunk
from protocol.jobs.messages import StreamChunk
from protocol.jobs.payloads import GenerateResult
from protocol.sealing import EncryptionKeyPair, JobSession, StreamSealer, open_job, seal_job

JOB_ID = bytes(range(16))
PEER = b"primary"


def sessions() -> tuple[JobSession, JobSession]:
    """(client session, executor session) of one sealed job."""
    executor = EncryptionKeyPair.generate()
    binding = {"job_id": JOB_ID, "model_id": "vn-model:ab", "deadline_ms": 1_800_000_000_000}
    sealed = seal_job(b"job", recipient_pubkey=executor.public, **binding)  # type: ignore[arg-type]
    opened = open_job(sealed.envelope, recipient=executor, client_pubkey=sealed.client_keys.public, **binding)  # type: ignore[arg-type]
    return sealed.session, opened.session


def live_stream(executor_session: JobSession) -> list[StreamChunk]:
    sealer, opening = StreamSealer.start(executor_session)
    tokens = sealer.push(LiveChunk((1, 2), "hi").to_bytes())
    return [
        StreamChunk(job_id=JOB_ID, data=opening.ciphertext, opening_nonce=opening.nonce),
        StreamChunk(job_id=JOB_ID, data=tokens),
        StreamChunk(job_id=JOB_ID, data=sealer.final(b"")),
    ]


def tap_events(
    chunks: list[StreamChunk], client_session: JobSession
) -> tuple[list[str | None], list[object]]:
    send, receive = trio.open_memory_channel[object](16)
    tap = LiveTap(send)
    answers = [tap.on_chunk(PEER, client_session, chunk) for chunk in chunks]
    events = []
    while True:
        try:
            events.append(receive.receive_nowait())
        except trio.WouldBlock:
            return answers, events


def test_a_live_stream_opens_with_its_first_chunk() -> None:
    client, executor = sessions()
    answers, events = tap_events(live_stream(executor), client)
    assert answers == [None, None, None]
    assert [type(e) for e in events] == [TapTokens, TapEnded]
    assert events[0].chunk.tokens == (1, 2)  # type: ignore[attr-defined]


def test_a_live_stream_without_its_opening_nonce_is_broken() -> None:
    client, executor = sessions()
    chunks = live_stream(executor)
    answers, events = tap_events([StreamChunk(job_id=JOB_ID, data=chunks[0].data), *chunks[1:2]], client)
    assert answers[0] is not None and "opening" in answers[0]
    assert isinstance(events[0], TapBroken)


def test_a_second_opening_inside_a_live_stream_is_broken() -> None:
    client, executor = sessions()
    chunks = live_stream(executor)
    again = StreamChunk(job_id=JOB_ID, data=chunks[1].data, opening_nonce=chunks[0].opening_nonce)
    answers, events = tap_events([chunks[0], again], client)
    assert answers[0] is None
    assert answers[1] is not None and "second opening" in answers[1]
    assert isinstance(events[0], TapBroken)


async def read_stream(client: JobSession, executor: JobSession, with_nonce: bool) -> bytes:
    result = GenerateResult(prompt_tokens=1, tokens=(5,), text="ok", finish_reason="stop").to_bytes()
    sealer, opening = StreamSealer.start(executor)
    send, receive = trio.open_memory_channel[object](4)
    nonce = opening.nonce if with_nonce else None
    send.send_nowait((StreamChunk(job_id=JOB_ID, data=sealer.push(b"ok"), opening_nonce=nonce), b""))
    send.send_nowait((StreamChunk(job_id=JOB_ID, data=sealer.final(result)), b""))
    with trio.fail_after(10):
        return await read_result_stream(client, opening, receive)  # type: ignore[arg-type]


async def test_a_revealed_result_stream_reads_back() -> None:
    client, executor = sessions()
    assert await read_stream(client, executor, with_nonce=False)


async def test_a_result_stream_chunk_with_an_opening_nonce_is_refused() -> None:
    client, executor = sessions()
    with pytest.raises(ResultStreamError, match="second stream opening"):
        await read_stream(client, executor, with_nonce=True)
