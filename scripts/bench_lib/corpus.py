"""A deterministic synthetic catalogue (title, abstract, published, citations) and its search queries."""

from __future__ import annotations

import random
from collections.abc import Iterator

import aiohttp
import orjson

INDEX = "papers"
_SYLLABLES = (
    "ka",
    "lo",
    "mi",
    "ne",
    "ru",
    "sa",
    "ti",
    "vo",
    "ze",
    "qu",
    "ber",
    "dan",
    "gor",
    "lin",
    "mar",
    "pol",
)
_VOCABULARY_SIZE = 3000


def vocabulary(seed: int = 7) -> list[str]:
    """Distinct pseudo-words; earlier words are drawn more often (Zipf-like), so BM25 has structure."""
    rng = random.Random(seed)
    words: dict[str, None] = {}
    while len(words) < _VOCABULARY_SIZE:
        words["".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(2, 4)))] = None
    return list(words)


def _zipf_weights(n: int) -> list[float]:
    return [1.0 / (rank + 10) for rank in range(n)]


def documents(count: int, seed: int = 11) -> Iterator[dict[str, object]]:
    """`count` documents, identical for the same seed: ids 0..count-1."""
    rng = random.Random(seed)
    words = vocabulary()
    weights = _zipf_weights(len(words))
    for doc_id in range(count):
        title = rng.choices(words, weights, k=rng.randint(4, 10))
        abstract = rng.choices(words, weights, k=rng.randint(100, 200))
        yield {
            "_id": str(doc_id),
            "title": " ".join(title).capitalize(),
            "abstract": " ".join(abstract).capitalize() + ".",
            "published": f"{rng.randint(1990, 2025)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}",
            "citations": int(rng.paretovariate(1.2)) - 1,
        }


def queries(count: int, seed: int) -> list[str]:
    """Distinct 2-3 word queries from mid-frequency words: each matches well over 100 documents."""
    rng = random.Random(seed)
    common = vocabulary()[20:400]
    seen: dict[str, None] = {}
    while len(seen) < count:
        seen[" ".join(rng.sample(common, rng.randint(2, 3)))] = None
    return list(seen)


def search_words() -> list[str]:
    """Single words for the pass-through `?q=` searches."""
    return vocabulary()[:500]


async def seed_index(es_url: str, index: str, count: int, batch: int = 1000) -> None:
    """Create `index` and bulk-load `count` documents; refresh so they are searchable at once."""
    mapping = {
        "mappings": {
            "properties": {
                "title": {"type": "text"},
                "abstract": {"type": "text"},
                "published": {"type": "date"},
                "citations": {"type": "integer"},
            }
        }
    }
    async with aiohttp.ClientSession(base_url=es_url) as session:
        async with session.delete(f"/{index}") as response:
            await response.read()
        async with session.put(f"/{index}", json=mapping) as response:
            response.raise_for_status()
        lines: list[bytes] = []
        for doc in documents(count):
            lines.append(orjson.dumps({"index": {"_index": index, "_id": doc.pop("_id")}}))
            lines.append(orjson.dumps(doc))
            if len(lines) >= 2 * batch:
                await _bulk(session, lines)
                lines = []
        if lines:
            await _bulk(session, lines)
        async with session.post(f"/{index}/_refresh") as response:
            response.raise_for_status()


async def _bulk(session: aiohttp.ClientSession, lines: list[bytes]) -> None:
    body = b"\n".join(lines) + b"\n"
    headers = {"Content-Type": "application/x-ndjson"}
    async with session.post("/_bulk", data=body, headers=headers) as response:
        response.raise_for_status()
        result = orjson.loads(await response.read())
    if result.get("errors"):
        raise RuntimeError(f"bulk load failed: {str(result)[:500]}")
