"""Rebuild src/es_rerank_proxy/tools/data/ from ../shared/datasets (gzip -9, mtime 0: stable bytes)."""

from __future__ import annotations

import argparse
import gzip
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FILES = {"corpus.jsonl": "corpus.jsonl.gz", "queries.jsonl": "queries.jsonl.gz", "qrels.tsv": "qrels.tsv.gz"}
NOTE = """
## Packaging in es-rerank-proxy
The three files ship in `src/es_rerank_proxy/tools/data/` as `scifact-corpus.jsonl.gz`,
`scifact-queries.jsonl.gz` and `scifact-qrels.tsv.gz`: the files above, byte for byte, compressed with gzip
level 9, no file name and mtime 0 (so rebuilding gives identical bytes), by `scripts/make_dataset.py`. The
sha256 values above are those of the uncompressed files.
Licence: queries and qrels CC BY 4.0; abstracts (corpus) ODC-By 1.0.
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--source", type=Path, default=ROOT.parent / "shared" / "datasets")
    parser.add_argument("--out", type=Path, default=ROOT / "src" / "es_rerank_proxy" / "tools" / "data")
    parser.add_argument("--name", default="scifact")
    args = parser.parse_args()
    source = args.source / args.name
    args.out.mkdir(parents=True, exist_ok=True)
    for plain, packed in FILES.items():
        target = args.out / f"{args.name}-{packed}"
        with (
            target.open("wb") as raw,
            gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=9, mtime=0) as gz,
        ):
            gz.write((source / plain).read_bytes())
        print(f"{target.relative_to(ROOT)}: {target.stat().st_size} bytes")
    text = (source / "SOURCE.md").read_text(encoding="utf-8").rstrip("\n") + "\n" + NOTE
    (args.out / f"{args.name.upper()}-SOURCE.md").write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
