"""NVIDIA reference integrity manifests (SWID tags, ISO/IEC 19770-2) as reference measurements.

A RIM lists, per measurement index (0-based; SPDM blocks are 1-based), whether the index is
active and the SHA-384 values it may take (``Hash0..HashN``). The driver RIM and the VBIOS RIM
together cover the indices. This module does not check the RIM's XML-DSig signature (that needs
an XML canonicalisation stack we do not ship): RIM files are operator configuration, trusted
like the rest of the policy. ``docs/protocol/tee-evidence.md`` says so too.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass

MAX_RIM_SIZE = 1024 * 1024
MAX_ALTERNATIVES = 64
SWID_NS = "http://standards.iso.org/iso/19770/-2/2015/schema.xsd"
SHA384_NS = "http://www.w3.org/2001/04/xmlenc#sha384"
VBIOS_VERSION = re.compile(r"^[0-9A-Fa-f]{2}(\.[0-9A-Fa-f]{2}){4}$")


class RimError(ValueError):
    """The RIM is malformed."""


@dataclass(frozen=True)
class Rim:
    product: str
    version: str  # colloquialVersion: driver "550.90.07" or VBIOS "96.00.9F.00.01"
    component: str  # "driver" or "vbios"
    measurements: dict[int, tuple[bytes, ...]]  # active indices only, 0-based


def parse_rim(data: bytes) -> Rim:
    if len(data) > MAX_RIM_SIZE:
        raise RimError(f"RIM is {len(data)} bytes, limit {MAX_RIM_SIZE}")
    if b"<!DOCTYPE" in data or b"<!ENTITY" in data:
        raise RimError("RIM must not declare a DOCTYPE or entities")
    try:
        root = ET.fromstring(data)
    except ET.ParseError as exc:
        raise RimError(f"RIM is not XML: {exc}") from exc
    if root.tag != f"{{{SWID_NS}}}SoftwareIdentity":
        raise RimError("not a SWID tag")
    meta = root.find(f"{{{SWID_NS}}}Meta")
    payload = root.find(f"{{{SWID_NS}}}Payload")
    if meta is None or payload is None:
        raise RimError("SWID tag lacks Meta or Payload")
    version = meta.get("colloquialVersion", "")
    if not version:
        raise RimError("RIM has no colloquialVersion")
    measurements: dict[int, tuple[bytes, ...]] = {}
    for resource in payload.iter(f"{{{SWID_NS}}}Resource"):
        if resource.get("type") != "Measurement":
            continue
        try:
            index = int(resource.get("index", ""))
            count = int(resource.get("alternatives", ""))
        except ValueError as exc:
            raise RimError("Resource with a bad index or alternatives count") from exc
        if not 0 <= index < 256 or not 1 <= count <= MAX_ALTERNATIVES:
            raise RimError(f"Resource index {index} / alternatives {count} out of range")
        if index in measurements:
            raise RimError(f"duplicate Resource index {index}")
        if resource.get("active", "").lower() != "true":
            continue
        try:
            values = tuple(bytes.fromhex(resource.get(f"{{{SHA384_NS}}}Hash{i}", "")) for i in range(count))
        except ValueError as exc:
            raise RimError(f"Resource {index}: hash is not hex") from exc
        if any(len(v) != 48 for v in values):
            raise RimError(f"Resource {index}: hashes must be SHA-384")
        measurements[index] = values
    return Rim(
        product=meta.get("product", root.get("name", "")),
        version=version,
        component="vbios" if VBIOS_VERSION.match(version) else "driver",
        measurements=measurements,
    )
