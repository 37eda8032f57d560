"""Profile the proxy's pass-through with py-spy while wrk sends `_doc` GETs through it, beside nginx.

    .venv/bin/python -m pip install py-spy        # or: pip install -e '.[profile]'
    .venv/bin/python scripts/profile_passthrough.py --connections 16 --seconds 6
    .venv/bin/python scripts/profile_passthrough.py --requests search   # searches it bypasses instead

Starts noida-db (seeded), nginx (the bench's baseline) and the proxy (`python -m es_rerank_proxy
serve`), each its own process. For each, wrk runs for `--seconds`; the CPU each spends per request
(user + system, psutil) is printed beside its req/s: on a shared machine that figure is steadier than
req/s. Then py-spy samples the proxy under the same load and the functions where it spends its time
(own samples, then inclusive) are listed. The raw samples stay in `--out` for a flame graph.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_lib import corpus, load, phases, services


def cpu_seconds(pids: list[int]) -> float:
    return sum(sum(psutil.Process(pid).cpu_times()[:2]) for pid in pids)


def measure(
    name: str, url: str, pids: list[int], paths: list[str], args: argparse.Namespace, tmp: Path
) -> None:
    before = cpu_seconds(pids)
    result = load.run_wrk(url, paths, args.connections, args.seconds, tmp)
    used = cpu_seconds(pids) - before
    per_request_us = used / max(1.0, result.rps * args.seconds) * 1e6
    print(
        f"{name:6s} {args.connections} connections: {result.rps:8.0f} req/s  p50 {result.p50_ms:.3f} ms  "
        f"CPU {per_request_us:6.1f} µs per request"
    )


def summarise(samples_path: Path, top: int) -> None:
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in samples_path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        total += int(count)
        own[frames[-1]] += int(count)
        for frame in set(frames):
            inclusive[frame] += int(count)
    print(f"\n{total} samples; own time (the function itself, including the system calls it makes):")
    for frame, count in own.most_common(top):
        print(f"  {100 * count / total:5.1f}%  {frame}")
    print("\ninclusive time (with everything it calls):")
    for frame, count in inclusive.most_common(top):
        print(f"  {100 * count / total:5.1f}%  {frame}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--seconds", type=int, default=6)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--out", type=Path, default=Path("artifacts/passthrough.pyspy.txt"))
    parser.add_argument(
        "--requests",
        choices=("doc", "search"),
        default="doc",
        help="doc: `_doc` GETs (the fast lane's forward); search: searches the proxy bypasses (`sort`)",
    )
    args = parser.parse_args()
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(py_spy).exists() or shutil.which("wrk") is None or shutil.which("nginx") is None:
        sys.exit("needs py-spy (pip install py-spy), wrk and nginx (apt-get install -y nginx-light wrk)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="profile-passthrough-") as name:
        tmp = Path(name)
        with services.noida(tmp / "noida") as es:
            asyncio.run(corpus.seed_index(es, corpus.INDEX, 2000))
            asyncio.run(corpus.seed_index(es, phases.RECALL_INDEX, 300))
            with services.fake_reranker(tmp, 20) as model, services.proxy(tmp, es, model) as proxy:
                with services.nginx(tmp, es) as nginx:
                    master = psutil.Process(int((tmp / "nginx.pid").read_text()))
                    paths = phases.doc_paths(2000) if args.requests == "doc" else phases.search_paths()
                    measure("nginx", nginx, [child.pid for child in master.children()], paths, args, tmp)
                    measure("proxy", proxy.url, [proxy.pid], paths, args, tmp)
                record = [py_spy, "record", "--pid", str(proxy.pid), "--duration", str(args.seconds)]
                record += ["--rate", "250", "--format", "raw", "--nonblocking", "--output", str(args.out)]
                spy = subprocess.Popen(record, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                load.run_wrk(proxy.url, paths, args.connections, args.seconds, tmp)
                spy.wait(timeout=60)
    summarise(args.out, args.top)
    print(f"\nraw samples: {args.out} (flamegraph.pl or speedscope read them)")


if __name__ == "__main__":
    main()
