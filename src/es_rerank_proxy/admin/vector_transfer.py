"""Passage vectors out of and into the proxy's cache, so replicas and restarts load instead of embedding.

`GET /_rerank/vectors?index=I` streams the cached vectors of I's documents (the format is in
`model.vector_file`) and ends with a trailer line `{"end": {"vectors": N, "missing": M}}` (or
`{"error": ...}`) that the `warm --export` command checks and does not write to the file.
`POST /_rerank/vectors?index=I` reads such a file and caches each vector whose model is the configured one
and whose text hash is that of the document's text now; the answer counts every verdict.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Mapping

import orjson
from aiohttp import web

from ..errors import ProxyError
from ..model.embeddings import EmbeddingsClient
from ..model.vector_file import (
    Encoding,
    VectorFileError,
    VectorFileHeader,
    Verdict,
    empty_counts,
    judge,
    read_header,
    read_record,
    write_record,
)
from ..runtime import Runtime
from .warm import IndexPage, scroll_texts

# A longer line is not a vector line (4096 float32 dimensions as base64 are ~22 KB): bounded memory.
MAX_LINE_BYTES = 1 << 20

DocKey = tuple[str, str]  # index, document id


async def export_lines(
    pages: AsyncIterable[IndexPage],
    client: EmbeddingsClient,
    *,
    model: str,
    encoding: Encoding,
    index: str,
    model_version: str = "",
    counts: dict[str, int] | None = None,
) -> AsyncIterator[bytes]:
    """The file's lines for the cached vectors of the scrolled documents: the header before the first.

    Nothing is yielded when no document has a cached vector; `counts` gets `vectors` and `missing`.
    """
    tally = counts if counts is not None else {}
    tally.update(vectors=0, missing=0)
    header: VectorFileHeader | None = None
    async for page in pages:
        for doc_index, doc_id, text in page.documents:
            text_hash = client.text_hash(text) if text else ""
            vector = client.cached_vector(text_hash) if text else None
            if vector is None:
                tally["missing"] += 1
                continue
            if header is None:
                header = VectorFileHeader(
                    model=model, dims=len(vector), encoding=encoding, model_version=model_version, index=index
                )
                yield header.to_line()
            tally["vectors"] += 1
            yield write_record(header, doc_id, doc_index, text_hash, vector)


async def current_hashes(pages: AsyncIterable[IndexPage], client: EmbeddingsClient) -> dict[DocKey, str]:
    """Each scrolled document's text hash as the pipeline would key it now (documents without text: none)."""
    hashes: dict[DocKey, str] = {}
    async for page in pages:
        for doc_index, doc_id, text in page.documents:
            if text:
                hashes[(doc_index, doc_id)] = client.text_hash(text)
    return hashes


def import_records(
    header: VectorFileHeader,
    lines: list[bytes],
    client: EmbeddingsClient,
    *,
    model: str,
    current: Mapping[DocKey, str],
    counts: dict[Verdict, int],
) -> None:
    """Cache the vectors of `lines` (after the header) that are still valid; count every verdict."""
    for line in lines:
        if not line.strip():
            continue
        try:
            record = read_record(line, header)
        except VectorFileError:
            counts["invalid"] += 1
            continue
        verdict = judge(record, model=model, current_hash=current.get((record.index, record.doc_id)))
        counts[verdict] += 1
        if verdict == "imported":
            client.import_vector(record.text_hash, record.vector)


async def split_lines(chunks: AsyncIterable[bytes], max_line: int = MAX_LINE_BYTES) -> AsyncIterator[bytes]:
    """NDJSON lines from a byte stream; `VectorFileError` for a line longer than `max_line`."""
    rest = b""
    async for chunk in chunks:
        rest += chunk
        *lines, rest = rest.split(b"\n")
        if len(rest) > max_line:
            raise VectorFileError(f"a line longer than {max_line} bytes")
        for line in lines:
            yield line
    if rest.strip():
        yield rest


def add_routes(admin: web.Application, runtime: Runtime) -> None:
    """`GET /_rerank/vectors?index=I[&encoding=float16]` (export) and `POST /_rerank/vectors?index=I`."""

    def scroll(request: web.Request, index: str) -> AsyncGenerator[IndexPage, None]:
        credentials = {k: v for k, v in request.headers.items() if k.lower() == "authorization"}
        return scroll_texts(
            runtime.config.elasticsearch.url[0],
            index,
            config=runtime.config,
            session=runtime.es.session,
            headers=credentials,
        )

    def embeddings_client() -> EmbeddingsClient | web.Response:
        client = runtime.client
        if isinstance(client, EmbeddingsClient):
            return client
        reason = f"reranker.api is {runtime.config.reranker.api!r}: only 'embeddings' has passage vectors"
        return web.json_response({"error": reason}, status=409)

    async def export(request: web.Request) -> web.StreamResponse:
        client = embeddings_client()
        if isinstance(client, web.Response):
            return client
        index = request.query.get("index", "")
        encoding = request.query.get("encoding", "float32")
        if not index or encoding not in ("float16", "float32"):
            return web.json_response(
                {"error": "expected ?index=NAME and an optional encoding=float16|float32"}, status=400
            )
        counts: dict[str, int] = {}
        lines = export_lines(
            scroll(request, index),
            client,
            model=runtime.config.reranker.model,
            encoding="float16" if encoding == "float16" else "float32",
            index=index,
            counts=counts,
        )
        response: web.StreamResponse | None = None
        try:
            async for line in lines:
                if response is None:
                    response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
                    await response.prepare(request)
                await response.write(line)
        except ProxyError as exc:
            if response is None:
                return web.json_response({"error": f"{type(exc).__name__}: {exc}"}, status=502)
            await response.write(orjson.dumps({"error": f"{type(exc).__name__}: {exc}"}) + b"\n")
        else:
            if response is None:
                reason = f"none of the {counts['missing']} documents of {index!r} has a cached vector"
                return web.json_response({"error": reason + ": warm it first"}, status=404)
            await response.write(orjson.dumps({"end": counts}) + b"\n")
        await response.write_eof()
        return response

    async def import_(request: web.Request) -> web.Response:
        client = embeddings_client()
        if isinstance(client, web.Response):
            return client
        started = time.monotonic()
        lines = split_lines(request.content.iter_chunked(1 << 16))
        try:
            header = read_header(await anext(lines, b""))
        except VectorFileError as exc:
            return web.json_response({"error": str(exc)}, status=400)
        index = request.query.get("index") or header.index
        if not index:
            return web.json_response(
                {"error": "expected ?index=NAME (the file's header names none)"}, status=400
            )
        counts = empty_counts()
        model = runtime.config.reranker.model
        try:
            # Another model's vectors are counted, not checked against the index: no scroll for them.
            current = await current_hashes(scroll(request, index), client) if header.model == model else {}
            batch: list[bytes] = []
            async for line in lines:
                batch.append(line)
                if len(batch) >= 1000:
                    import_records(header, batch, client, model=model, current=current, counts=counts)
                    await client.share_imported()  # with backend: redis, warm for every replica
                    batch = []
            import_records(header, batch, client, model=model, current=current, counts=counts)
            await client.share_imported()
        except VectorFileError as exc:
            return web.json_response({"error": str(exc), "counts": counts}, status=400)
        except ProxyError as exc:
            return web.json_response({"error": f"{type(exc).__name__}: {exc}", "counts": counts}, status=502)
        return web.json_response({"counts": counts, "seconds": round(time.monotonic() - started, 1)})

    admin.router.add_get("/_rerank/vectors", export)
    admin.router.add_post("/_rerank/vectors", import_)
