"""SPDM 1.1 GET_MEASUREMENTS transcript parsing (the evidence NVIDIA GPUs produce).

The evidence is ``request (37 bytes) ‖ MEASUREMENTS response``. The request carries the
32-byte nonce the verifier chose (the GPU's analogue of REPORTDATA); the response carries the
measurement blocks, the responder's nonce, NVIDIA opaque TLVs and an ECDSA P-384 signature
(raw r‖s, 96 bytes) over SHA-384 of ``request ‖ response-without-signature``.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

SPDM_VERSIONS = (0x10, 0x11, 0x12, 0x13)
GET_MEASUREMENTS = 0xE0
MEASUREMENTS = 0x60
REQUEST_SIZE = 37
NONCE_SIZE = 32
SIGNATURE_SIZE = 96  # ECDSA P-384 r‖s
MAX_TRANSCRIPT_SIZE = 64 * 1024
DMTF_SPEC = 0x01

# NVIDIA opaque-data TLV types (nvtrust verifier/attestation/spdm_msrt_resp_msg.py)
OPAQUE_DRIVER_VERSION = 3
OPAQUE_VBIOS_VERSION = 6
OPAQUE_PROJECT = 17
OPAQUE_FWID = 20
OPAQUE_CHIP_INFO = 35
OPAQUE_FEATURE_FLAG = 36


class SpdmFormatError(ValueError):
    """The bytes are not a well-formed GET_MEASUREMENTS transcript."""


@dataclass(frozen=True)
class MeasurementBlock:
    index: int  # 1-based, as in SPDM
    value_type: int
    value: bytes


@dataclass(frozen=True)
class MeasurementsTranscript:
    request: bytes
    response: bytes
    nonce: bytes  # the requester's nonce (our binding)
    responder_nonce: bytes
    blocks: tuple[MeasurementBlock, ...]
    opaque: dict[int, bytes]
    signature: bytes

    @property
    def signed_message(self) -> bytes:
        return self.request + self.response[:-SIGNATURE_SIZE]

    def opaque_text(self, field_type: int) -> str:
        return self.opaque.get(field_type, b"").rstrip(b"\x00").decode("ascii", "replace")

    def measurements(self) -> dict[int, bytes]:
        return {block.index: block.value for block in self.blocks}


def parse_transcript(data: bytes) -> MeasurementsTranscript:
    if len(data) > MAX_TRANSCRIPT_SIZE:
        raise SpdmFormatError(f"transcript is {len(data)} bytes, limit {MAX_TRANSCRIPT_SIZE}")
    if len(data) < REQUEST_SIZE + 8:
        raise SpdmFormatError("transcript too short")
    request, response = data[:REQUEST_SIZE], data[REQUEST_SIZE:]
    if request[0] not in SPDM_VERSIONS or request[1] != GET_MEASUREMENTS:
        raise SpdmFormatError("first message is not GET_MEASUREMENTS")
    if not request[2] & 0x01:
        raise SpdmFormatError("request did not ask for a signature")
    if response[0] != request[0] or response[1] != MEASUREMENTS:
        raise SpdmFormatError("second message is not a MEASUREMENTS response of the same version")
    n_blocks = response[4]
    record_len = int.from_bytes(response[5:8], "little")
    pos = 8
    record_end = pos + record_len
    if record_end + NONCE_SIZE + 2 > len(response):
        raise SpdmFormatError("measurement record runs past the response")
    blocks: list[MeasurementBlock] = []
    seen: set[int] = set()
    while pos < record_end:
        if pos + 4 > record_end:
            raise SpdmFormatError("truncated measurement block header")
        index, spec = response[pos], response[pos + 1]
        (size,) = struct.unpack_from("<H", response, pos + 2)
        body = response[pos + 4 : pos + 4 + size]
        if len(body) != size or pos + 4 + size > record_end:
            raise SpdmFormatError("measurement block runs past the record")
        if spec != DMTF_SPEC or size < 3:
            raise SpdmFormatError(f"block {index}: unsupported measurement specification {spec}")
        value_type = body[0]
        (value_size,) = struct.unpack_from("<H", body, 1)
        if 3 + value_size != size:
            raise SpdmFormatError(f"block {index}: DMTF value size mismatch")
        if index in seen:
            raise SpdmFormatError(f"duplicate measurement index {index}")
        seen.add(index)
        blocks.append(MeasurementBlock(index=index, value_type=value_type, value=body[3:]))
        pos += 4 + size
    if len(blocks) != n_blocks:
        raise SpdmFormatError(f"header says {n_blocks} blocks, record holds {len(blocks)}")
    responder_nonce = response[record_end : record_end + NONCE_SIZE]
    (opaque_len,) = struct.unpack_from("<H", response, record_end + NONCE_SIZE)
    opaque_start = record_end + NONCE_SIZE + 2
    opaque_end = opaque_start + opaque_len
    if opaque_end + SIGNATURE_SIZE != len(response):
        raise SpdmFormatError("response length does not match opaque data plus a P-384 signature")
    return MeasurementsTranscript(
        request=request,
        response=response,
        nonce=request[4 : 4 + NONCE_SIZE],
        responder_nonce=responder_nonce,
        blocks=tuple(blocks),
        opaque=_parse_opaque(response[opaque_start:opaque_end]),
        signature=response[opaque_end:],
    )


def _parse_opaque(data: bytes) -> dict[int, bytes]:
    fields: dict[int, bytes] = {}
    pos = 0
    while pos < len(data):
        if pos + 4 > len(data):
            raise SpdmFormatError("truncated opaque TLV")
        field_type, size = struct.unpack_from("<HH", data, pos)
        value = data[pos + 4 : pos + 4 + size]
        if len(value) != size:
            raise SpdmFormatError("opaque TLV runs past the opaque data")
        fields.setdefault(field_type, value)
        pos += 4 + size
    return fields
