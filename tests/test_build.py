"""The two builds the suite runs against: the source (development) and the mypyc-compiled package (shipped).

scripts/check runs the suite twice; the second pass sets ES_RERANK_PROXY_EXPECT_COMPILED=1 and puts the
package scripts/build_compiled made first on PYTHONPATH. These tests make sure each pass really ran the
build it claims, so a compiled pass that silently imported the source, or a development checkout where a
stale compiled module shadows its edited source, fails here instead of testing the wrong code.
"""

from __future__ import annotations

import importlib.util
import os
import runpy
from functools import cache
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXPECT_COMPILED = os.environ.get("ES_RERANK_PROXY_EXPECT_COMPILED") == "1"


@cache
def setup_listing() -> dict[str, Any]:
    """setup.py's names, read without running setup() (it only runs as __main__)."""
    return runpy.run_path(str(ROOT / "setup.py"), run_name="setup_listing")


def compiled_modules() -> tuple[str, ...]:
    listed = setup_listing()["COMPILED_MODULES"]
    assert isinstance(listed, tuple)
    return listed


def _module_name(path: str) -> str:
    return "es_rerank_proxy." + path.removesuffix(".py").replace("/", ".")


def test_every_module_setup_compiles_exists_in_the_source() -> None:
    missing = [path for path in compiled_modules() if not (ROOT / "src/es_rerank_proxy" / path).is_file()]
    assert not missing, f"setup.py lists modules that do not exist: {missing}"


@pytest.mark.parametrize("path", compiled_modules())
def test_this_pass_imports_the_build_it_claims(path: str) -> None:
    spec = importlib.util.find_spec(_module_name(path))
    assert spec is not None and spec.origin is not None
    compiled = not spec.origin.endswith(".py")
    if EXPECT_COMPILED:
        assert compiled, f"the compiled pass imported {spec.origin}: run scripts/build_compiled first"
    else:
        assert not compiled, (
            f"{spec.origin} shadows its source; the package was compiled in place (setup.py is for wheels)"
        )


def test_without_the_variable_setup_builds_no_extension() -> None:
    """A development install (`pip install -e .`) must keep running the source the developer edits."""
    saved = os.environ.pop("ES_RERANK_PROXY_COMPILE", None)
    try:
        assert setup_listing()["_ext_modules"]() == []
    finally:
        if saved is not None:
            os.environ["ES_RERANK_PROXY_COMPILE"] = saved


def test_the_start_up_line_names_the_build_that_runs() -> None:
    from es_rerank_proxy.app import running_build

    assert running_build() == ("compiled" if EXPECT_COMPILED else "source")
