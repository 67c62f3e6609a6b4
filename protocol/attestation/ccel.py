"""TDX CCEL event log (TCG crypto-agile format) parsing and RTMR replay.

Why: RTMRs are opaque hashes; an event log lets a verifier see *what* was measured and confirm
that the log replays to the registers the quote signed. In the CC event log the "PCR index" is
an MR index: 1..4 extend RTMR0..RTMR3 (0 would be MRTD, which the log does not extend).
Replay: ``RTMR = SHA-384(RTMR ‖ event digest)``, starting from 48 zero bytes.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass

TPM_ALG_SHA384 = 0x000C
EV_NO_ACTION = 0x00000003
MAX_LOG_SIZE = 4 * 1024 * 1024
MAX_EVENTS = 65536
MAX_EVENT_DATA = 1024 * 1024
RTMR_COUNT = 4
SPEC_ID_SIGNATURE = b"Spec ID Event03\x00"


class EventLogError(ValueError):
    """The event log is malformed."""


@dataclass(frozen=True)
class CcEvent:
    mr_index: int
    event_type: int
    sha384: bytes
    data: bytes
    name: str = ""  # dstack runtime events carry a name (e.g. "compose-hash"); CCEL events do not


def parse_event_log(log: bytes) -> list[CcEvent]:
    """Parse a CCEL log area; trailing 0xFF/0x00 filler ends the log."""
    if len(log) > MAX_LOG_SIZE:
        raise EventLogError(f"event log is {len(log)} bytes, limit {MAX_LOG_SIZE}")
    if len(log) < 32:
        raise EventLogError("event log too short for its header event")
    _index, event_type = struct.unpack_from("<II", log, 0)
    (size,) = struct.unpack_from("<I", log, 28)
    header = log[32 : 32 + size]
    if event_type != EV_NO_ACTION or len(header) != size or not header.startswith(SPEC_ID_SIGNATURE):
        raise EventLogError("missing the TCG Spec ID header event")
    digest_sizes = _spec_id_digest_sizes(header)
    if TPM_ALG_SHA384 not in digest_sizes:
        raise EventLogError("event log carries no SHA-384 digests")
    events: list[CcEvent] = []
    pos = 32 + size
    while pos + 12 <= len(log):
        mr_index, event_type, count = struct.unpack_from("<III", log, pos)
        if mr_index == 0xFFFFFFFF or (mr_index == 0 and event_type == 0 and count == 0):
            break
        if len(events) >= MAX_EVENTS:
            raise EventLogError("too many events")
        pos += 12
        sha384 = b""
        for _ in range(count):
            if pos + 2 > len(log):
                raise EventLogError("truncated digest")
            (alg,) = struct.unpack_from("<H", log, pos)
            dsize = digest_sizes.get(alg)
            if dsize is None:
                raise EventLogError(f"digest algorithm {alg:#x} not declared in the header")
            digest = log[pos + 2 : pos + 2 + dsize]
            if len(digest) != dsize:
                raise EventLogError("truncated digest")
            if alg == TPM_ALG_SHA384:
                sha384 = digest
            pos += 2 + dsize
        if pos + 4 > len(log):
            raise EventLogError("truncated event size")
        (dlen,) = struct.unpack_from("<I", log, pos)
        if dlen > MAX_EVENT_DATA or pos + 4 + dlen > len(log):
            raise EventLogError("event data runs past the log")
        data = log[pos + 4 : pos + 4 + dlen]
        pos += 4 + dlen
        if not sha384:
            raise EventLogError("event without a SHA-384 digest")
        events.append(CcEvent(mr_index=mr_index, event_type=event_type, sha384=sha384, data=data))
    return events


def _spec_id_digest_sizes(header: bytes) -> dict[int, int]:
    off = len(SPEC_ID_SIGNATURE) + 4 + 4  # signature, platformClass, version/errata/uintnSize
    if len(header) < off + 4:
        raise EventLogError("Spec ID event too short")
    (n,) = struct.unpack_from("<I", header, off)
    off += 4
    if n == 0 or n > 16 or len(header) < off + 4 * n:
        raise EventLogError("bad algorithm count in the Spec ID event")
    sizes = {}
    for i in range(n):
        alg, dsize = struct.unpack_from("<HH", header, off + 4 * i)
        sizes[alg] = dsize
    return sizes


def replay_rtmrs(events: list[CcEvent]) -> list[bytes]:
    """RTMR0..RTMR3 as the log says they should be."""
    rtmrs = [bytes(48)] * RTMR_COUNT
    for event in events:
        if event.event_type == EV_NO_ACTION:
            continue
        if not 1 <= event.mr_index <= RTMR_COUNT:
            raise EventLogError(f"event extends MR index {event.mr_index}, not an RTMR")
        i = event.mr_index - 1
        rtmrs[i] = hashlib.sha384(rtmrs[i] + event.sha384).digest()
    return rtmrs
