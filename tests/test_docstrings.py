"""One docstring style (numpydoc) for the public functions of the package: every parameter is explained."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "zsad"
SOURCES = sorted(p for p in PACKAGE.rglob("*.py") if p.name != "__main__.py")


def _public_callables(tree: ast.Module):
    """(qualified name, node) of the module-level public functions and the public methods of public classes."""
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and not node.name.startswith("_"):
            yield node.name, node
        elif isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
            for item in node.body:
                if isinstance(item, ast.FunctionDef) and not item.name.startswith("_"):
                    yield f"{node.name}.{item.name}", item


def _arguments(fn: ast.FunctionDef) -> list[str]:
    args = fn.args.posonlyargs + fn.args.args + fn.args.kwonlyargs
    names = [a.arg for a in args if a.arg not in ("self", "cls")]
    names += [f"*{fn.args.vararg.arg}"] if fn.args.vararg else []
    names += [f"**{fn.args.kwarg.arg}"] if fn.args.kwarg else []
    return names


def _documented(doc: str) -> set[str]:
    """Names in the docstring's ``Parameters`` section (numpydoc: ``name : type`` lines; ``a, b : type`` too)."""
    match = re.search(r"^\s*Parameters\n\s*-{3,}\n(.*?)(?:^\s*\w[\w ]*\n\s*-{3,}\n|\Z)", doc, re.M | re.S)
    if not match:
        return set()
    names = set()
    for line in match.group(1).splitlines():
        head = re.match(r"^\s{0,4}([*\w][\w, *]*?)\s*(?::|$)", line)
        if head and not line.startswith(" " * 5):
            names.update(n.strip() for n in head.group(1).split(","))
    return names


def _undocumented() -> list[str]:
    missing = []
    for src in SOURCES:
        tree = ast.parse(src.read_text(encoding="utf-8"))
        for name, fn in _public_callables(tree):
            if any(isinstance(d, ast.Name) and d.id == "property" for d in fn.decorator_list):
                continue  # a property documents a value, not parameters
            args = _arguments(fn)
            if not args:
                continue
            doc = ast.get_docstring(fn) or ""
            lacking = [a for a in args if a not in _documented(doc) and a.lstrip("*") not in _documented(doc)]
            if lacking:
                missing.append(f"{src.relative_to(PACKAGE.parent)}:{fn.lineno} {name}: {', '.join(lacking)}")
    return missing


def test_the_parameter_reader_knows_numpydoc():
    doc = """Summary.

    Parameters
    ----------
    a : int
        First.
    b, c : str, optional
        Second and third:
        continued : not a parameter.
    **kwargs
        Passed on.

    Returns
    -------
    int
    """
    assert _documented(doc) == {"a", "b", "c", "**kwargs"}
    assert _documented("Summary.\n\nArgs:\n    a: int\n") == set()


def test_every_public_function_documents_its_parameters():
    missing = _undocumented()
    if missing:
        pytest.fail(f"{len(missing)} public functions lack numpydoc parameters:\n" + "\n".join(missing))
