"""dstack's JSON event log (as in ``tcb_info.json``): parse it, check each runtime event, replay it.

Why beside the binary CCEL log: dstack (and systems built on it, such as NEAR MPC) publish the TD's
event log as JSON, ``[{imr, event_type, digest, event, event_payload}, ...]``, either as a list,
under an ``event_log`` key, or as a JSON string under that key. ``imr`` 0..3 names RTMR0..3
directly (the CCEL log counts 1..4). Firmware events can only be replayed; dstack's own runtime
events (type ``0x08000001``, extended into RTMR3: ``app-id``, ``compose-hash``, ``instance-id``,
``key-provider``, …) are also checked against their payload, so an event's *name and payload*
are proven, not just its digest. dstack defines two digest forms (``cc-eventlog`` crate,
``runtime_events.rs``): v1 ``SHA-384(type_le32 ‖ ":" ‖ name ‖ ":" ‖ payload)`` and v2
``SHA-384(JCS({"name", "payload": hex, "type"}))``; either is accepted.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from protocol.attestation.ccel import CcEvent, EventLogError
from protocol.nesting import loads_json

__all__ = ["DSTACK_RUNTIME_EVENT_TYPE", "looks_like_json", "parse_json_event_log", "runtime_events"]

DSTACK_RUNTIME_EVENT_TYPE = 0x08000001
MAX_JSON_LOG_SIZE = 4 * 1024 * 1024
MAX_EVENTS = 4096
MAX_PAYLOAD = 256 * 1024
DIGEST_SIZE = 48
RTMR_COUNT = 4


def looks_like_json(data: bytes) -> bool:
    """True when the log is JSON text (a binary CCEL log starts with a little-endian u32 index)."""
    return data.lstrip()[:1] in (b"[", b"{")


def _v1_preimage(event_type: int, name: str, payload: bytes) -> bytes:
    return event_type.to_bytes(4, "little") + b":" + name.encode("utf-8") + b":" + payload


def _v2_preimage(event_type: int, name: str, payload: bytes) -> bytes:
    # RFC 8785 (JCS) for this fixed shape: keys sorted, no spaces, JSON string escaping.
    body = {"name": name, "payload": payload.hex(), "type": event_type}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def _events_list(doc: Any) -> list[Any]:
    if isinstance(doc, dict):
        if "event_log" not in doc:
            raise EventLogError("JSON event log: no 'event_log' key")
        doc = doc["event_log"]
        if isinstance(doc, str):  # dstack's quote reports carry the log as a JSON string
            doc = loads_json(doc)
    if not isinstance(doc, list):
        raise EventLogError("JSON event log: expected a list of events")
    if len(doc) > MAX_EVENTS:
        raise EventLogError(f"JSON event log: more than {MAX_EVENTS} events")
    return doc


def _hex_field(entry: dict[str, Any], key: str, i: int, size: int | None = None) -> bytes:
    value = entry.get(key, "")
    if not isinstance(value, str):
        raise EventLogError(f"event {i}: {key!r} must be a hex string")
    try:
        raw = bytes.fromhex(value)
    except ValueError:
        raise EventLogError(f"event {i}: {key!r} is not hex") from None
    if size is not None and len(raw) != size:
        raise EventLogError(f"event {i}: {key!r} is {len(raw)} bytes, expected {size}")
    if len(raw) > MAX_PAYLOAD:
        raise EventLogError(f"event {i}: {key!r} is larger than {MAX_PAYLOAD} bytes")
    return raw


def parse_json_event_log(data: bytes) -> list[CcEvent]:
    """Parse and check a dstack JSON event log; the result replays like a CCEL log (``replay_rtmrs``)."""
    if len(data) > MAX_JSON_LOG_SIZE:
        raise EventLogError(f"JSON event log is {len(data)} bytes, limit {MAX_JSON_LOG_SIZE}")
    try:
        entries = _events_list(loads_json(data))
    except ValueError as exc:  # JSON syntax, nesting depth or encoding
        raise EventLogError(f"JSON event log: {exc}") from None
    events: list[CcEvent] = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise EventLogError(f"event {i} is not an object")
        imr, event_type, name = entry.get("imr"), entry.get("event_type"), entry.get("event", "")
        if isinstance(imr, bool) or not isinstance(imr, int) or not 0 <= imr < RTMR_COUNT:
            raise EventLogError(f"event {i}: 'imr' must be 0..3")
        if isinstance(event_type, bool) or not isinstance(event_type, int) or not 0 <= event_type < 1 << 32:
            raise EventLogError(f"event {i}: 'event_type' must be a 32-bit unsigned integer")
        if not isinstance(name, str):
            raise EventLogError(f"event {i}: 'event' must be a string")
        digest = _hex_field(entry, "digest", i, DIGEST_SIZE)
        payload = _hex_field(entry, "event_payload", i)
        if event_type == DSTACK_RUNTIME_EVENT_TYPE:
            forms = (_v1_preimage(event_type, name, payload), _v2_preimage(event_type, name, payload))
            if not any(hashlib.sha384(form).digest() == digest for form in forms):
                raise EventLogError(
                    f"runtime event {i} ({name!r}): digest does not match its name and payload"
                )
        events.append(
            CcEvent(mr_index=imr + 1, event_type=event_type, sha384=digest, data=payload, name=name)
        )
    return events


def runtime_events(events: list[CcEvent]) -> list[tuple[str, str]]:
    """The checked dstack runtime events as ``(name, payload hex)``, in log order (for the verdict)."""
    return [(e.name, e.data.hex()) for e in events if e.event_type == DSTACK_RUNTIME_EVENT_TYPE]
