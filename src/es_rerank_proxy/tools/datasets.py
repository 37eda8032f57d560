"""The shipped IR test collection (BEIR SciFact) and loading a collection into an Elasticsearch index."""

from __future__ import annotations

import datetime as dt
import gzip
import hashlib
import importlib.resources
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypedDict, cast

import aiohttp
import orjson

from ..errors import ProxyError


class Doc(TypedDict):
    """One corpus document, BEIR layout."""

    _id: str
    title: str
    text: str


SHIPPED = ("scifact",)
_EPOCH = dt.date(1990, 1, 1)
_SPAN_DAYS = (dt.date(2024, 12, 31) - _EPOCH).days + 1
_MAPPING = {
    "settings": {"number_of_shards": 1, "number_of_replicas": 0},
    "mappings": {
        "properties": {
            "title": {"type": "text"},
            "text": {"type": "text"},
            "published": {"type": "date"},
            "citations": {"type": "integer"},
        }
    },
}


class DatasetError(ProxyError):
    """A collection file could not be read or parsed; the message names the file and line."""


class IndexingError(ProxyError):
    """Elasticsearch refused to create the index or to store some documents."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Collection:
    """Documents in corpus order, queries (id -> text) in file order, qrels (qid -> doc id -> grade)."""

    corpus: list[Doc]
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]


def parse_queries(lines: Iterable[str], source: str = "queries") -> dict[str, str]:
    """Queries from JSONL lines `{"_id": ..., "text": ...}`; blank lines are ignored."""
    queries: dict[str, str] = {}
    for number, line in enumerate(lines, start=1):
        if line.strip():
            try:
                item = orjson.loads(line)
                queries[str(item["_id"])] = str(item["text"])
            except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
                raise DatasetError(f"{source}:{number}: expected {{'_id', 'text'}} JSON ({exc})") from None
    return queries


def parse_qrels(lines: Iterable[str], source: str = "qrels") -> dict[str, dict[str, int]]:
    """Judgments from BEIR TSV (`query-id corpus-id score`, header optional) or TREC (`qid 0 docid grade`)."""
    qrels: dict[str, dict[str, int]] = {}
    for number, line in enumerate(lines, start=1):
        fields = line.split()
        if not fields or (number == 1 and fields[-1] == "score"):
            continue
        if len(fields) not in (3, 4) or not fields[-1].lstrip("-").isdigit():
            raise DatasetError(
                f"{source}:{number}: expected 'query-id corpus-id score', got {line.strip()!r}"
            )
        qrels.setdefault(fields[0], {})[fields[-2]] = int(fields[-1])
    return qrels


def _parse_corpus(lines: Iterable[str], source: str) -> list[Doc]:
    corpus: list[Doc] = []
    for number, line in enumerate(lines, start=1):
        if line.strip():
            try:
                item = orjson.loads(line)
                corpus.append({"_id": str(item["_id"]), "title": item["title"], "text": item["text"]})
            except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
                raise DatasetError(
                    f"{source}:{number}: expected {{'_id', 'title', 'text'}} ({exc})"
                ) from None
    return corpus


def read_lines(path: str | Path) -> list[str]:
    """The lines of a UTF-8 text file, gunzipped when the name ends in `.gz`."""
    path = Path(path)
    data = path.read_bytes()
    if path.suffix == ".gz":
        data = gzip.decompress(data)
    return data.decode("utf-8").splitlines()


def _shipped_lines(name: str, suffix: str) -> list[str]:
    resource = importlib.resources.files(__package__).joinpath("data", f"{name}-{suffix}.gz")
    return gzip.decompress(resource.read_bytes()).decode("utf-8").splitlines()


def load_collection(name: str = "scifact") -> Collection:
    """Load a collection shipped in the package's `data/` folder."""
    if name not in SHIPPED:
        raise DatasetError(f"unknown dataset {name!r}; shipped: {', '.join(SHIPPED)}")
    return Collection(
        corpus=_parse_corpus(_shipped_lines(name, "corpus.jsonl"), f"{name}-corpus"),
        queries=parse_queries(_shipped_lines(name, "queries.jsonl"), f"{name}-queries"),
        qrels=parse_qrels(_shipped_lines(name, "qrels.tsv"), f"{name}-qrels"),
    )


def judged_queries(
    queries: Mapping[str, str], qrels: Mapping[str, object], limit: int | None = None
) -> dict[str, str]:
    """The queries that have judgments (id -> text), in the queries' own order; the first `limit` of them."""
    judged = [qid for qid in queries if qid in qrels][:limit]
    return {qid: queries[qid] for qid in judged}


def subset(
    collection: Collection,
    n_queries: int,
    candidates_per_query: int,
    bm25_candidates: Mapping[str, Sequence[str]] | None = None,
) -> Collection:
    """The first `n_queries` judged queries, their judged documents and up to `candidates_per_query`
    of their given BM25 candidates; documents keep corpus order, so the result is deterministic."""
    chosen = judged_queries(collection.queries, collection.qrels, n_queries)
    keep: set[str] = set()
    for qid in chosen:
        keep.update(collection.qrels[qid])
        if bm25_candidates is not None:
            keep.update(bm25_candidates.get(qid, ())[:candidates_per_query])
    return Collection(
        corpus=[doc for doc in collection.corpus if doc["_id"] in keep],
        queries={qid: collection.queries[qid] for qid in chosen},
        qrels={qid: dict(collection.qrels[qid]) for qid in chosen},
    )


def synthetic_fields(doc_id: str) -> tuple[str, int]:
    """SYNTHETIC `published` date (1990-2024) and `citations` count (0-999, skewed low) for a document.

    SciFact has neither; the blend's recency and citation features need them, so both are derived from
    sha256(doc id): stable across runs and machines, and meaningless as facts.
    """
    digest = hashlib.sha256(doc_id.encode("utf-8")).digest()
    published = _EPOCH + dt.timedelta(days=int.from_bytes(digest[:4], "big") % _SPAN_DAYS)
    fraction = int.from_bytes(digest[4:8], "big") / 2**32
    return published.isoformat(), int(1000 * fraction**4)


def _bulk_body(index: str, docs: Sequence[Doc]) -> bytes:
    lines: list[bytes] = []
    for doc in docs:
        published, citations = synthetic_fields(doc["_id"])
        lines.append(orjson.dumps({"index": {"_index": index, "_id": doc["_id"]}}))
        source = {"title": doc["title"], "text": doc["text"], "published": published, "citations": citations}
        lines.append(orjson.dumps(source))
    return b"\n".join(lines) + b"\n"


async def index_collection(
    es_url: str,
    index: str,
    docs: Sequence[Doc],
    *,
    session: aiohttp.ClientSession,
    batch: int = 500,
    progress: Callable[[int, int], None] | None = None,
    recreate: bool = False,
) -> None:
    """Create `index` (title/text text, synthetic `published`/`citations`) and bulk-load `docs` with refresh.

    An existing index is an error unless `recreate`, which deletes it first. `progress(done, total)`
    is called after each batch.
    """
    base = es_url.rstrip("/")
    if recreate:
        async with session.delete(f"{base}/{index}") as response:
            if response.status not in (200, 404):
                raise IndexingError(f"DELETE {index}: HTTP {response.status}: {await response.text()}")
    async with session.put(f"{base}/{index}", json=_MAPPING) as response:
        if response.status != 200:
            raise IndexingError(f"PUT {index}: HTTP {response.status}: {await response.text()}")
    total = len(docs)
    for start in range(0, total, max(batch, 1)):
        chunk = docs[start : start + max(batch, 1)]
        last = start + len(chunk) >= total
        async with session.post(
            f"{base}/_bulk",
            params={"refresh": "true"} if last else {},
            data=_bulk_body(index, chunk),
            headers={"Content-Type": "application/x-ndjson"},
        ) as response:
            body = await response.read()
            if response.status != 200:
                raise IndexingError(f"_bulk into {index}: HTTP {response.status}: {body[:500]!r}")
        _check_bulk(index, body)
        if progress is not None:
            progress(start + len(chunk), total)
    if total == 0:
        async with session.post(f"{base}/{index}/_refresh") as response:
            await response.read()


def _check_bulk(index: str, body: bytes) -> None:
    answer = cast("dict[str, object]", orjson.loads(body))
    if not answer.get("errors"):
        return
    items = cast("list[dict[str, dict[str, object]]]", answer.get("items", []))
    failed = [action for item in items for action in item.values() if "error" in action]
    first = failed[0] if failed else {}
    raise IndexingError(f"_bulk into {index}: {len(failed)} documents failed; first: {first.get('error')}")
