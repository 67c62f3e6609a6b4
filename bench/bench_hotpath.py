"""The job path's per-job pieces in one process: what each costs, and two hand-offs before/after.

Where the network job's overhead over in-process inference goes, piece by piece, measured without
the network (docs/PERFORMANCE.md puts these beside the end-to-end rows of ``bench_jobs``):

- sealing: one job envelope sealed and opened within a session, one result sealed and opened;
- signing: a commitment created and verified, a reveal created, verified and checked against it;
- codec: a job request and a reveal encoded and decoded (msgpack, schema checks);
- the live token hand-off from the model thread to the event loop, per token: ``run_sync_soon``
  (what ``live_sender`` does) against a blocking ``from_thread.run_sync`` round trip (what it did),
  with the model thread counting its own time (what a slow hand-off costs generation);
- two small frames sent and echoed over a real libp2p stream on 127.0.0.1 in one write each way
  (what a k = 1 job's request + reveal request and commitment + reveal now are) against two.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable

import trio

from bench import Result, measure, quick
from protocol.identity import Identity
from protocol.jobs.messages import (
    Commitment,
    JobRequest,
    Mode,
    Reveal,
    Task,
    decode_message,
    result_digest,
)
from protocol.jobs.payloads import EmbeddingsInput, EmbeddingsResult
from protocol.sealing import ClientKeys, EncryptionKeyPair, open_job, open_result, seal_job, seal_result

MODEL = "vn-model:" + "ab" * 32
TEXT = "Confidential inference on attested peers, measured end to end."
TOKENS = int(quick(4000, 1000))  # tokens handed over per hand-off sample
US = 1e6


def _pieces() -> list[tuple[str, Callable[[], object]]]:
    executor_keys, ring, identity = EncryptionKeyPair.generate(), ClientKeys(), Identity.generate()
    job = EmbeddingsInput((TEXT,)).to_bytes()
    result = EmbeddingsResult(1, 384, bytes(4 * 384)).to_bytes()
    job_id, salt, deadline = os.urandom(16), os.urandom(32), int((time.time() + 60) * 1000)
    sealed = seal_job(job, recipient_pubkey=executor_keys.public, job_id=job_id, model_id=MODEL,
                      deadline_ms=deadline, client_keys=ring)
    request = JobRequest(
        job_id=job_id, model_id=MODEL, task=Task.EMBEDDINGS, deadline_ms=deadline,
        client_pubkey=sealed.client_keys.public, executor_enc_pubkey=executor_keys.public,
        input_nonce=sealed.envelope.nonce, sealed_input=sealed.envelope.ciphertext, mode=Mode.CONSENSUS,
        stream=False,
    )
    commitment = Commitment.create(identity, job_id=job_id, salt=salt, result_digest=result_digest(result),
                                   queue_ms=0, compute_ms=1)
    sealed_result = seal_result(sealed.session, result)
    reveal = Reveal.create(identity, job_id=job_id, salt=salt, result_digest=result_digest(result),
                           result_nonce=sealed_result.nonce, sealed_result=sealed_result.ciphertext)
    wire_request, wire_reveal = request.to_wire(), reveal.to_wire()

    def seal_open_job() -> object:
        again = seal_job(job, recipient_pubkey=executor_keys.public, job_id=job_id, model_id=MODEL,
                         deadline_ms=deadline, client_keys=ring)
        return open_job(again.envelope, recipient=executor_keys, client_pubkey=again.client_keys.public,
                        job_id=job_id, model_id=MODEL, deadline_ms=deadline)

    def seal_open_result() -> object:
        return open_result(sealed.session, seal_result(sealed.session, result))

    def commit_and_check() -> object:
        made = Commitment.create(identity, job_id=job_id, salt=salt, result_digest=result_digest(result),
                                 queue_ms=0, compute_ms=1)
        made.verify(expected_peer_id=identity.peer_id)
        shown = Reveal.create(identity, job_id=job_id, salt=salt, result_digest=result_digest(result),
                              result_nonce=reveal.result_nonce, sealed_result=reveal.sealed_result)
        shown.verify(expected_peer_id=identity.peer_id)
        shown.check_against(made)
        return shown

    def codec() -> object:
        return decode_message(request.to_wire()), decode_message(reveal.to_wire()), \
            decode_message(wire_request), decode_message(wire_reveal), commitment.to_wire()

    return [
        ("job envelope seal + open (session keys cached)", seal_open_job),
        ("result envelope seal + open (384-float vector)", seal_open_result),
        ("commitment create + verify, reveal create + verify + check", commit_and_check),
        ("codec: job request and reveal encoded and decoded", codec),
    ]


async def _handoff(blocking: bool) -> tuple[float, float]:
    """(µs per token the model thread spent handing over, µs per token until the loop had them all)."""
    send, receive = trio.open_memory_channel[int](math.inf)
    loop = trio.lowlevel.current_trio_token()
    spent: list[float] = []

    def produce() -> None:
        started = time.perf_counter()
        for token in range(TOKENS):
            if blocking:
                trio.from_thread.run_sync(send.send_nowait, token)
            else:
                loop.run_sync_soon(send.send_nowait, token)
        spent.append(time.perf_counter() - started)

    started = time.perf_counter()
    async with trio.open_nursery() as nursery:

        async def consume() -> None:
            for _ in range(TOKENS):
                await receive.receive()

        nursery.start_soon(consume)
        await trio.to_thread.run_sync(produce)
    total = time.perf_counter() - started
    return spent[0] / TOKENS * US, total / TOKENS * US


def run() -> list[Result]:
    rows = []
    total = 0.0
    for name, piece in _pieces():
        seconds = measure(piece)
        total += seconds
        rows.append(Result(f"per job: {name}", seconds * US, "µs", goal="informational"))
    rows.append(Result("per job: protocol CPU in all (the rows above)", total * US, "µs",
                       goal="informational"))
    soon, blocking = [], []
    for _ in range(3):  # alternate: both see the same load
        soon.append(trio.run(_handoff, False))
        blocking.append(trio.run(_handoff, True))
    soon_model, soon_total = sorted(soon)[1]
    blocking_model, blocking_total = sorted(blocking)[1]
    rows.append(Result("live token hand-off: model thread µs per token, run_sync_soon", soon_model, "µs",
                       blocking_model, "blocking from_thread.run_sync", soon_model / blocking_model, "< 1×"))
    rows.append(Result("live token hand-off: µs per token until the loop has it, run_sync_soon", soon_total,
                       "µs", blocking_total, "blocking from_thread.run_sync", soon_total / blocking_total,
                       "≤ 1×"))
    rows += frame_rows()
    return rows


async def _frame_pairs(coalesce: bool, pairs: int) -> float:
    """Seconds per pair of small frames sent over a real libp2p stream (TCP + PSK + Noise + yamux)
    and echoed back as a pair: in one write each way (a job and its pipelined reveal request; a
    commitment and its reveal), or in two."""
    import multiaddr
    from libp2p.custom_types import TProtocol

    from node.jobs.frames import Libp2pFrames
    from node.net.host import build_host, dial

    psk, protocol = os.urandom(32), TProtocol("/veilnet/bench-frame-pairs/1.0.0")
    server = build_host(Identity.generate(), psk, ["/ip4/127.0.0.1/tcp/0"])
    client = build_host(Identity.generate(), psk, ["/ip4/127.0.0.1/tcp/0"])
    first, second = os.urandom(700), os.urandom(40)  # about a job request and a reveal request

    async def echo(stream: object) -> None:
        io = Libp2pFrames(stream, b"client")  # type: ignore[arg-type]
        while True:
            one, two = await io.read(), await io.read()
            if coalesce:
                await io.write(one, two)
            else:
                await io.write(one)
                await io.write(two)

    server.set_stream_handler(protocol, echo)
    listen = [multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]
    async with server.run(listen_addrs=listen), client.run(listen_addrs=listen):
        address = f"{server.get_addrs()[0]}"
        if "/p2p/" not in address:
            address += f"/p2p/{server.get_id()}"
        assert await dial(client, address)
        io = Libp2pFrames(await client.new_stream(server.get_id(), [protocol]), b"server")
        started = time.perf_counter()
        for _ in range(pairs):
            if coalesce:
                await io.write(first, second)
            else:
                await io.write(first)
                await io.write(second)
            await io.read()
            await io.read()
        elapsed = time.perf_counter() - started
        await io.reset()
    return elapsed / pairs


def frame_rows() -> list[Result]:
    pairs = int(quick(400, 100))
    one, two = [], []
    for _ in range(3):  # alternate: both see the same load
        one.append(trio.run(_frame_pairs, True, pairs))
        two.append(trio.run(_frame_pairs, False, pairs))
    one_us, two_us = sorted(one)[1] * US, sorted(two)[1] * US
    return [Result("two frames there and back over libp2p, µs per round trip: one write each way", one_us,
                   "µs", two_us, "two writes each way", one_us / two_us, "< 1×")]
