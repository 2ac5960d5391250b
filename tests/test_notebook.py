"""Chapter notebooks: sources and executed copies agree, one run-parameter block, unknown parameters refused,
scalars taken where lists are meant (papermill)."""
import ast
import subprocess
import sys
from pathlib import Path

import pytest

from zsad.notebook import (
    RUN_NAMES,
    RUN_PARAMETERS,
    OutOfSync,
    cell_inputs,
    check_parameters,
    normalise,
    read_source,
    run_arguments,
    run_parameters_block,
    sync,
)

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"


def test_unknown_names_are_refused_with_their_names():
    import types

    ns = {"datasets": "x", "seeds": 0, "zsad": types.ModuleType("zsad"), "_private": 1}
    check_parameters(ns, ("datasets", "seeds"))
    with pytest.raises(ValueError, match="unknown parameter\\(s\\) seedz; this chapter's parameters are datasets, "
                                         "seeds"):
        check_parameters({**ns, "seedz": "0,1"}, ("datasets", "seeds"))


def _chapters():
    return sorted(NOTEBOOKS.glob("t*.md"))


def _parameters(nb):
    """The ``parameters`` cell, the names it assigns, and the hidden check cell after it."""
    cells = nb.cells
    i = next(i for i, c in enumerate(cells) if "parameters" in c.metadata.get("tags", []))
    assigned = [t.id for node in ast.parse(cells[i].source).body if isinstance(node, ast.Assign) for t in node.targets]
    check = next(c for c in cells[i + 1:] if c.cell_type == "code" and "injected-parameters" not in
                 c.metadata.get("tags", []))
    return cells[i], assigned, check


def _check_call(source):
    """The ``zsad.check_parameters(globals(), (names...), run=...)`` call of a check cell: (names, run)."""
    call = next(n for n in ast.walk(ast.parse(source)) if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)
                and n.func.attr == "check_parameters")
    kw = {k.arg: ast.literal_eval(k.value) for k in call.keywords}
    return tuple(ast.literal_eval(call.args[1])), kw.get("run", False)


# Chapters whose run parameters default differently from zsad.notebook.RUN_PARAMETERS (run_parameters_block arguments).
RUN_OVERRIDES = {
    "t06_cheung": {"defaults": {"datasets": "magnetic_tile"},
                   "comments": {"datasets": "the LLM class prompts cover magnetic_tile, mvtec and visa"}},
    "t08_gallery": {"defaults": {"seeds": "0"}},
}


def test_every_chapter_checks_its_parameters():
    for path in _chapters():
        _, assigned, check = _parameters(read_source(path))
        names, run = _check_call(check.source)
        assert "remove-cell" in check.metadata.get("tags", []), path.name
        assert (RUN_NAMES if run else ()) + names == tuple(assigned), path.name


def test_every_study_chapter_has_the_one_run_parameter_block():
    """The study chapters start their parameters cell with run_parameters_block() (defaults overridden only where
    listed), check them with run=True and pass them on with run_arguments(globals()). t01 (data) and t12 (per-class
    appendix, which only reads run folders) run nothing."""
    study = [p for p in _chapters() if p.stem not in ("t01_data", "t12_per_class")]
    assert len(study) == 9
    for path in study:
        nb = read_source(path)
        cell, _, check = _parameters(nb)
        expected = run_parameters_block(**RUN_OVERRIDES.get(path.stem, {}))
        head = "\n".join(cell.source.splitlines()[:len(RUN_NAMES)])
        assert head == expected, (f"{path.name}: the parameters cell must start with these lines (from "
                                  f"zsad.notebook.RUN_PARAMETERS; overrides in RUN_OVERRIDES):\n{expected}")
        assert _check_call(check.source)[1] is True, path.name
        code = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
        assert "**run_arguments(globals()" in code and "checkpoint=checkpoint" not in code, path.name
    assert set(RUN_OVERRIDES) <= {p.stem for p in study}


def test_run_parameters_block_and_arguments():
    ns = {p.name: p.default for p in RUN_PARAMETERS}
    block = run_parameters_block()
    assert ast.literal_eval(block.splitlines()[1].split("=", 1)[1].split("  #")[0].strip()) == "synthetic,magnetic_tile"
    exec(block, scope := {})  # the block is valid Python assigning every default
    assert {k: scope[k] for k in RUN_NAMES} == ns
    args = run_arguments({**ns, "other": 1})
    assert list(args) == [n for n in RUN_NAMES if n != "preset"]
    assert args["checkpoint"] is None and args["max_images"] == 12 and args["results_dir"] is None
    assert args["autocast"] is None and args["roots"] == "" and args["progress"] is False
    assert run_arguments({**ns, "max_images": 0, "autocast": "bf16"})["max_images"] is None
    # the paper preset replaces the values it sets (all test images: max_images None), except those kept
    paper = run_arguments({**ns, "preset": "paper", "seeds": "0"}, keep=("seeds",))
    assert paper["model"] == "ViT-B-16-plus-240" and paper["datasets"] == "mvtec,visa"
    assert paper["max_images"] is None and paper["n_boot"] == 1000 and paper["seeds"] == "0"
    with pytest.raises(ValueError, match="unknown preset 'papers'"):
        run_arguments({**ns, "preset": "papers"})
    assert 'seeds = "0"  #' in run_parameters_block(defaults={"seeds": "0"})
    with pytest.raises(ValueError, match="no run parameter seedz"):
        run_parameters_block(defaults={"seedz": "0"})
    with pytest.raises(NameError, match="autocast not defined"):
        run_arguments({k: v for k, v in ns.items() if k != "autocast"})
    check_parameters({**ns, "shots": 1}, ("shots",), run=True)
    with pytest.raises(ValueError, match="unknown parameter\\(s\\) seedz"):
        check_parameters({**ns, "seedz": 1}, (), run=True)


def test_every_source_and_executed_notebook_agree():
    """Each notebooks/*.md (the source) and its .ipynb (what papermill executed, nbval checks and the book renders)
    have the same cells in the same order: type, source and tags. Run `make notebooks` after editing a source."""
    import nbformat

    sources = _chapters()
    assert len(sources) == 11
    assert sorted(p.stem for p in NOTEBOOKS.glob("t*.ipynb")) == [p.stem for p in sources]
    for path in sources:
        text = path.read_text(encoding="utf-8")
        assert text.startswith("---\njupytext:\n  formats: ipynb,md:myst\n"), f"{path.name}: not paired"
        executed = nbformat.read(path.with_suffix(".ipynb"), as_version=4)
        source, done = cell_inputs(read_source(path)), cell_inputs(executed)
        first = next((i for i, (a, b) in enumerate(zip(source, done)) if a != b), min(len(source), len(done)))
        assert source == done, f"{path.name} and its .ipynb differ from cell {first} on: run `make notebooks`"
        assert executed.metadata.get("jupytext", {}).get("formats") == "ipynb,md:myst", path.name
        assert all(c.execution_count for c in executed.cells if c.cell_type == "code"), \
            f"{path.stem}.ipynb is not executed"
        assert not {"start_time", "end_time", "duration"} & set(executed.metadata.get("papermill", {})), path.name
        assert not any({"execution", "papermill"} & set(c.metadata) for c in executed.cells), path.name


def _notebook(*cells):
    import nbformat

    nb = nbformat.v4.new_notebook(metadata={"kernelspec": {"name": "python3", "display_name": "Python 3"}})
    nb.cells = list(cells)
    return nb


def test_sync_keeps_outputs_of_unchanged_cells_and_refuses_to_lose_an_edit(tmp_path):
    import os

    import nbformat

    md = tmp_path / "t99.md"
    md.write_text("---\njupytext:\n  formats: ipynb,md:myst\n  text_representation:\n    extension: .md\n"
                  "kernelspec:\n  display_name: Python 3\n  language: python\n  name: python3\n---\n\n# Title\n\n"
                  "```{code-cell} ipython3\n:tags: [parameters]\n\nx = 1\n```\n\n```{code-cell} ipython3\nx + 1\n```\n")
    nb = sync(md)
    assert nb == md.with_suffix(".ipynb")
    written = nbformat.read(nb, as_version=4)
    assert cell_inputs(written) == [("markdown", "# Title", ()), ("code", "x = 1", ("parameters",)),
                                    ("code", "x + 1", ())]
    assert written.metadata.jupytext == {"formats": "ipynb,md:myst"}
    ids = [c.id for c in written.cells]
    written.cells[2].outputs = [nbformat.v4.new_output("execute_result", {"text/plain": "2"}, execution_count=1)]
    nbformat.write(written, nb)
    md.write_text(md.read_text().replace("# Title", "# New title"))
    os.utime(nb, (1, 1))  # the source is newer: its edit wins
    again = nbformat.read(sync(md), as_version=4)
    assert again.cells[0].source == "# New title" and again.cells[2].outputs[0]["data"]["text/plain"] == "2"
    assert [c.id for c in again.cells][1:] == ids[1:] and again.cells[0].id != ids[0]
    again.cells[1].source = "x = 2"  # an edit in the .ipynb (JupyterLab without jupytext), after the source's
    nbformat.write(again, nb)
    os.utime(md, (1, 1))
    with pytest.raises(OutOfSync, match="port its edit"):
        sync(md)
    assert nbformat.read(nb, as_version=4).cells[1].source == "x = 2"


def test_normalise_drops_only_timings(tmp_path):
    import nbformat

    cell = nbformat.v4.new_code_cell("1", metadata={"tags": [], "execution": {"iopub.status.busy": "2026-01-01"},
                                                    "papermill": {"duration": 0.1, "status": "completed"}})
    tagged = nbformat.v4.new_code_cell("2", metadata={"tags": ["parameters"]})
    nb = _notebook(cell, tagged)
    nb.metadata["papermill"] = {"duration": 1.0, "start_time": "a", "end_time": "b", "parameters": {}, "version": "2"}
    path = tmp_path / "n.ipynb"
    nbformat.write(nb, path)
    out = nbformat.read(normalise(path), as_version=4)
    assert out.metadata.papermill == {"parameters": {}, "version": "2"}
    assert out.cells[0].metadata == {} and out.cells[1].metadata == {"tags": ["parameters"]}


def test_papermill_run_with_a_misspelt_parameter_fails_naming_it(tmp_path):
    out = subprocess.run([sys.executable, "-m", "papermill", str(NOTEBOOKS / "t01_data.ipynb"),
                          str(tmp_path / "o.ipynb"), "--cwd", str(NOTEBOOKS), "-p", "datasets", "magnetic_tile",
                          "-p", "examples_per_defekt", "1"], capture_output=True, text=True)
    assert out.returncode != 0
    assert "unknown parameter(s) examples_per_defekt" in out.stderr + out.stdout


def test_scalar_parameters_where_lists_are_meant(synth_root, tmp_path):
    from zsad.grids import run_table

    res = run_table("tamura", {"random_words": 0}, datasets="synthetic", roots=synth_root, seeds=0,
                    model="zsad-tiny-vit", max_images=4, n_boot=0, results_dir=tmp_path, progress=False)
    assert len(res["paths"]) == 3
    from zsad.grids import scale_settings

    assert [s["sizes"] for s in scale_settings(1, 240)] == ["240"]
