"""The house rules that keep the layers apart (README, "Architecture")."""
import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "zsad"
#: Modules that run an encoder, touch the feature cache or read files: methods must not import them.
NOT_FOR_METHODS = ("zsad.features", "zsad.windows", "zsad.cache", "zsad.backbone", "zsad.cnn", "zsad.detector",
                   "zsad.data", "zsad.runners", "zsad.study", "zsad.results", "zsad.llm")
FILE_CALLS = {"open", "read_text", "read_bytes", "load_image", "load", "imread", "safe_open"}


def _imports(path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            yield node.module


def test_methods_are_pure_functions_of_features():
    for path in sorted((PACKAGE / "methods").glob("*.py")):
        for name in _imports(path):
            assert not name.startswith(NOT_FOR_METHODS), f"{path.name} imports {name}"
        calls = {n.func.attr if isinstance(n.func, ast.Attribute) else getattr(n.func, "id", "")
                 for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.Call)}
        assert not calls & FILE_CALLS, f"{path.name} calls {sorted(calls & FILE_CALLS)}"


def test_nothing_imports_notebooks_or_benchmarks_and_metrics_import_no_model():
    for path in sorted(PACKAGE.rglob("*.py")):
        for name in _imports(path):
            assert not name.startswith(("benchmarks", "notebooks", "tests")), f"{path} imports {name}"
    for name in _imports(PACKAGE / "metrics.py"):
        assert not name.startswith(("torch", "open_clip", "zsad.backbone", "zsad.features")), name


def test_every_registered_runner_lives_in_the_runners_module():
    from zsad.study import METHODS

    modules = {getattr(spec.run, "func", spec.run).__module__ for spec in METHODS.values()}  # partial: .func
    assert modules == {"zsad.runners"}


def test_every_public_name_resolves():
    import zsad

    missing = [name for name in zsad.__all__ if not hasattr(zsad, name)]
    assert not missing, f"zsad.__all__ names that do not resolve: {missing}"
