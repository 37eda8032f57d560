"""Command-line interface: argument parsing only; the work lives in the modules it calls."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import yaml

from . import __version__
from .config import Config, config_to_dict, load_config
from .errors import ConfigError
from .observe.search_log import SEARCH_LOGGER
from .tools.demo import add_demo_parser, run_demo
from .tools.eval_run import add_eval_parser, run_eval
from .tools.judgments_cli import add_judgments_parser, run_judgments
from .tools.online_report import add_online_report_parser, run_online_report
from .tools.warm_client import add_warm_parser, run_warm


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="es-rerank-proxy",
        description=(
            "A transparent Elasticsearch proxy that reranks _search and _msearch results with a neural "
            "reranker (Qwen3-Reranker on vLLM) and answers in Elasticsearch's exact response shape."
        ),
        epilog="Environment variables ES_RERANK_PROXY_<SECTION>_<KEY> override config keys, "
        "e.g. ES_RERANK_PROXY_ELASTICSEARCH_URL=https://es:9200.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the proxy", description="Run the proxy until SIGTERM.")
    serve.add_argument("--config", "-c", metavar="FILE", help="YAML config (default: built-in defaults)")
    serve.add_argument(
        "--local-elasticsearch",
        metavar="DATA_DIR",
        nargs="?",
        const=".noida-db",
        help="start noida-db on loopback as the Elasticsearch (for a bare machine; data in DATA_DIR, "
        "default .noida-db) instead of the configured URL",
    )

    check = commands.add_parser(
        "check-config",
        help="validate a config file and print the effective config",
        description="Validate FILE; print the effective config (secrets masked) or exit 1 naming the key.",
    )
    check.add_argument("file", metavar="FILE")

    add_demo_parser(commands)
    add_eval_parser(commands)
    add_warm_parser(commands)
    add_online_report_parser(commands)
    add_judgments_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "check-config":
        return _check_config(args.file)
    if args.command == "demo":
        _setup_logging(load_config(None, environ={}))
        return run_demo(args)
    if args.command == "eval":
        return run_eval(args)
    if args.command == "warm":
        return run_warm(args)
    if args.command == "online-report":
        return run_online_report(args)
    if args.command == "judgments":
        return run_judgments(args)
    if args.command == "serve":
        config = _load_or_exit(args.config)
        _setup_logging(config)
        if args.local_elasticsearch:
            _serve_with_local_elasticsearch(config, args.config, Path(args.local_elasticsearch))
        else:
            _run(config, args.config)
        return 0
    raise AssertionError(args.command)  # argparse rejects unknown commands


def _load_or_exit(path: str | None) -> Config:
    try:
        return load_config(path)
    except ConfigError as exc:
        print(f"ConfigError: {exc}", file=sys.stderr)
        raise SystemExit(1) from None


def _check_config(path: str) -> int:
    config = _load_or_exit(path)
    print(f"# {path}: valid. Effective config (defaults and environment applied, secrets masked):")
    print(yaml.safe_dump(config_to_dict(config), sort_keys=False, allow_unicode=True), end="")
    return 0


def _setup_logging(config: Config) -> None:
    logging.basicConfig(level=config.log.level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # The per-search lines are JSON already: bare, one per line, for log pipelines to parse.
    searches = logging.getLogger(SEARCH_LOGGER)
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    searches.addHandler(handler)
    searches.propagate = False


def _serve_with_local_elasticsearch(config: Config, path: str | None, data_dir: Path) -> None:
    from .tools.local_elasticsearch import run_noida

    with run_noida(data_dir) as url:
        logging.getLogger(__name__).info("started noida-db as the local Elasticsearch at %s", url)
        _run(
            dataclasses.replace(config, elasticsearch=dataclasses.replace(config.elasticsearch, url=(url,))),
            path,
        )


def _run(config: Config, path: str | None) -> None:
    from .app import serve

    try:
        import uvloop
    except ImportError:  # pragma: no cover - optional speed-up
        asyncio.run(serve(config, config_path=path))
    else:
        uvloop.run(serve(config, config_path=path))
