"""The request path's dataclasses whose `__init__` is written out stay true to their fields.

mypyc compiles methods written in the source, but `@dataclass` generates `__init__` at import time, so
it runs interpreted: 0.6 µs a construction where a compiled one takes 0.04, on a path that builds a dozen
per search (docs/PERFORMANCE.md, "Compiled constructors"). The classes built per request write theirs
out. `@dataclass` keeps an `__init__` the class defines, so nothing but this test notices one that
forgets a field or changes a default: each is read from the source and checked against its fields.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass

import pytest

from .test_build import ROOT, compiled_modules

PACKAGE = ROOT / "src/es_rerank_proxy"
# What a `field(default_factory=...)` is set to in a written-out `__init__`.
_FACTORY_VALUES = {"list": "[]", "dict": "{}"}


@dataclass(frozen=True)
class WrittenInit:
    where: str
    frozen: bool
    fields: list[ast.AnnAssign]
    init: ast.FunctionDef


def written_inits(source: str, module: str) -> list[WrittenInit]:
    """The dataclasses in `source` that define `__init__` themselves."""
    found = []
    for node in ast.parse(source).body:
        if not isinstance(node, ast.ClassDef):
            continue
        decorators = [ast.unparse(d) for d in node.decorator_list if "dataclass" in ast.unparse(d)]
        init = next((s for s in node.body if isinstance(s, ast.FunctionDef) and s.name == "__init__"), None)
        if not decorators or init is None:
            continue
        fields = [s for s in node.body if isinstance(s, ast.AnnAssign) and isinstance(s.target, ast.Name)]
        frozen = "frozen=True" in decorators[0]
        found.append(WrittenInit(f"{module}:{node.name}", frozen, fields, init))
    return found


def all_written_inits() -> list[WrittenInit]:
    return [
        init
        for module in compiled_modules()
        for init in written_inits((PACKAGE / module).read_text(encoding="utf-8"), module)
    ]


def _name(field: ast.AnnAssign) -> str:
    assert isinstance(field.target, ast.Name)
    return field.target.id


def _factory(field: ast.AnnAssign) -> str | None:
    """`list` for `field(default_factory=list)`; None for a plain field."""
    value = field.value
    if isinstance(value, ast.Call) and ast.unparse(value.func) == "field":
        return next(ast.unparse(k.value) for k in value.keywords if k.arg == "default_factory")
    return None


def expected_parameters(written: WrittenInit) -> list[tuple[str, str, str | None]]:
    """(name, annotation, default) of each field `@dataclass`'s own `__init__` would take as given."""
    return [
        (_name(f), ast.unparse(f.annotation), ast.unparse(f.value) if f.value is not None else None)
        for f in written.fields
        if _factory(f) is None
    ]


def actual_parameters(init: ast.FunctionDef) -> list[tuple[str, str, str | None]]:
    args = init.args
    assert not (args.vararg or args.kwarg or args.kwonlyargs or args.posonlyargs), "plain parameters only"
    positional = args.args[1:]
    defaults: list[ast.expr | None] = [None] * (len(positional) - len(args.defaults)) + list(args.defaults)
    return [
        (arg.arg, ast.unparse(arg.annotation) if arg.annotation else "", ast.unparse(d) if d else None)
        for arg, d in zip(positional, defaults, strict=True)
    ]


def expected_body(written: WrittenInit) -> list[str]:
    """One assignment per field, in order: the parameter, or what its factory makes."""
    lines = []
    for field in written.fields:
        name, factory = _name(field), _factory(field)
        value = name if factory is None else _FACTORY_VALUES.get(factory, f"{factory}()")
        if written.frozen:
            # A frozen dataclass refuses `self.x = ...`; this is how its generated `__init__` sets fields.
            lines.append(f"object.__setattr__(self, {name!r}, {value})")
        else:
            lines.append(f"self.{name} = {value}")
    return lines


def test_the_request_paths_per_search_objects_have_compiled_constructors() -> None:
    """The ones this was done for; without any, the test below would pass having checked nothing."""
    checked = {written.where for written in all_written_inits()}
    for where in (
        "observe/record.py:SearchRecord",
        "edge/request_mirror.py:Plain",
        "model/scoring.py:ScoreDoc",
    ):
        assert where in checked


@pytest.mark.parametrize("written", all_written_inits(), ids=lambda written: written.where)
def test_a_written_out_init_takes_and_sets_exactly_the_fields(written: WrittenInit) -> None:
    assert problems(written) == [], (
        actual_parameters(written.init),
        [ast.unparse(s) for s in written.init.body],
    )


def problems(written: WrittenInit) -> list[str]:
    found = []
    if actual_parameters(written.init) != expected_parameters(written):
        found.append("parameters")
    if [ast.unparse(statement) for statement in written.init.body] != expected_body(written):
        found.append("body")
    return found


_FIELDS = "    a: int\n    b: str = 'x'\n    c: list[int] = field(default_factory=list)\n"
_RIGHT = ("a: int, b: str = 'x'", ["self.a = a", "self.b = b", "self.c = []"])


@pytest.mark.parametrize(
    ("parameters", "body", "expected"),
    [
        (*_RIGHT, []),
        ("a: int", ["self.a = a", "self.b = 'x'", "self.c = []"], ["parameters", "body"]),
        ("a: int, b: str = 'y'", _RIGHT[1], ["parameters"]),
        (_RIGHT[0], ["self.a = a", "self.b = a", "self.c = []"], ["body"]),
        (_RIGHT[0], ["self.a = a", "self.b = b"], ["body"]),
    ],
)
def test_the_check_catches_a_forgotten_field_a_changed_default_and_a_crossed_wire(
    parameters: str, body: list[str], expected: list[str]
) -> None:
    init = f"    def __init__(self, {parameters}) -> None:\n" + "".join(f"        {line}\n" for line in body)
    [written] = written_inits(f"@dataclass\nclass C:\n{_FIELDS}\n{init}", "example")
    assert problems(written) == expected
