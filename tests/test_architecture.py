"""The package layout means something: which part may import which, checked over src/ with ast."""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "es_rerank_proxy"
TOP_LEVEL = ("app", "cli", "runtime", "config", "schema", "errors", "__main__")

# What each part of the request path may import from the rest of the package (beyond itself).
ALLOWED = {
    "edge": {"config", "errors", "http1"},
    "model": {"config", "errors", "http1"},
    "rollout": {"config", "errors"},
    "observe": {"rollout", "config", "errors"},
    "search": {"edge", "model", "rollout", "observe", "config", "errors"},
}
NEVER_ON_REQUEST_PATH = {"admin", "tools", "app", "cli"}
PURE = (
    "search.endpoint",
    "search.plan",
    "search.guard",
    "search.query_text",
    "search.blend",
    "search.page",
    "search.msearch",
    "rollout.canary",
    "rollout.interleave",
    "search.ubi",
    "observe.ubi_queries",
    "rollout.order_stats",
)


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(path): path for path in PACKAGE.rglob("*.py")}


@cache
def _imports(module: str) -> frozenset[str]:
    """What this module imports: package modules as dotted names under the package, others by name."""
    path = _modules()[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                name = alias.name
                found.add(
                    name.removeprefix("es_rerank_proxy.") if name.startswith("es_rerank_proxy.") else name
                )
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                base = node.module or ""
                if not base.startswith("es_rerank_proxy"):
                    found.add(base)
                    continue
                base = base.removeprefix("es_rerank_proxy").lstrip(".")
            else:
                anchor = package.split(".") if package else []
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, *([node.module] if node.module else [])])
            for alias in node.names:
                candidate = f"{base}.{alias.name}" if base else alias.name
                found.add(candidate if candidate in _modules() else base)
    return frozenset(found)


def _part(module: str) -> str:
    return module.split(".")[0]


def _in_package(module: str) -> bool:
    return module in _modules() or module == ""


def test_every_module_is_found() -> None:
    assert {"search.plan", "search.pipeline", "model.scoring", "edge.passthrough", "app", "cli"} <= set(
        _modules()
    )


@pytest.mark.parametrize("part", sorted(ALLOWED))
def test_request_path_parts_import_only_what_they_may(part: str) -> None:
    offending = {
        f"{module} -> {target}"
        for module in _modules()
        if _part(module) == part
        for target in _imports(module)
        if _in_package(target) and _part(target) not in ALLOWED[part] | {part}
    }
    assert not offending


@pytest.mark.parametrize("part", sorted(ALLOWED))
def test_request_path_never_imports_admin_tools_app_or_cli(part: str) -> None:
    offending = {
        f"{module} -> {target}"
        for module in _modules()
        if _part(module) == part
        for target in _imports(module)
        if _in_package(target) and _part(target) in NEVER_ON_REQUEST_PATH
    }
    assert not offending


def test_tools_use_the_app_only_through_its_public_factories() -> None:
    offending = set()
    for module, path in _modules().items():
        if _part(module) != "tools":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[-1] == "app":
                offending |= {f"{module}: {a.name}" for a in node.names if a.name.startswith("_")}
    assert not offending


def _closure(module: str) -> set[str]:
    seen: set[str] = set()
    todo = [module]
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        seen.add(current)
        todo.extend(t for t in _imports(current) if t in _modules())
    return seen


@pytest.mark.parametrize("module", PURE)
def test_pure_decisions_reach_no_aiohttp_or_asyncio(module: str) -> None:
    reached = {
        f"{inner} -> {target}"
        for inner in _closure(module)
        for target in _imports(inner)
        if target.split(".")[0] in {"aiohttp", "asyncio"}
    }
    assert not reached


@pytest.mark.parametrize("part", ["edge", "search", "model", "rollout", "observe", "admin", "tools"])
def test_each_part_says_its_job_and_what_it_may_import(part: str) -> None:
    docstring = ast.get_docstring(ast.parse((PACKAGE / part / "__init__.py").read_text(encoding="utf-8")))
    assert docstring is not None
    job, _, rule = docstring.partition("\n\n")
    assert job.strip() and "import" in rule


def test_the_walker_sees_relative_imports_across_parts() -> None:
    """The checks above would pass vacuously if relative imports were misread."""
    assert "edge.exchange" in _imports("search.pipeline")
    assert "rollout.canary" in _imports("search.pipeline")
    assert "runtime" in _imports("admin.routes")
