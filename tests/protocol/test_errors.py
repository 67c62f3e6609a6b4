"""One error shape for protocol/: every room's error derives from ProtocolError and keeps its name."""

from __future__ import annotations

import pytest

from protocol.attestation.bundle import BundleError
from protocol.codec import CodecError
from protocol.errors import ProtocolError
from protocol.jobs.consensus import ConsensusError
from protocol.jobs.messages import MessageError
from protocol.jobs.payloads import PayloadError
from protocol.jobs.replay import ReplayError
from protocol.sealing import SealingError

ROOM_ERRORS = [BundleError, CodecError, ConsensusError, MessageError, PayloadError, ReplayError, SealingError]


@pytest.mark.parametrize("error_type", ROOM_ERRORS, ids=lambda t: t.__name__)
def test_room_errors_share_the_protocol_error_shape(error_type: type[ProtocolError]) -> None:
    assert issubclass(error_type, ProtocolError) and issubclass(error_type, ValueError)
    with_detail = error_type("bad_field", "job_id: expected 16 bytes")
    assert (with_detail.reason, with_detail.detail) == ("bad_field", "job_id: expected 16 bytes")
    assert str(with_detail) == "bad_field: job_id: expected 16 bytes"
    bare = error_type("malformed")
    assert (bare.reason, bare.detail, str(bare)) == ("malformed", "", "malformed")


def test_the_codec_raises_its_own_room_error() -> None:
    from protocol.codec import decode

    with pytest.raises(CodecError) as info:
        decode(b"\xc1")  # a msgpack byte that is never valid
    assert isinstance(info.value, ProtocolError) and info.value.reason
