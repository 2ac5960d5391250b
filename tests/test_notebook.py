"""Chapter notebooks refuse parameters they do not have, and take scalars where lists are meant (papermill)."""
import subprocess
import sys
from pathlib import Path

import pytest

from zsad.notebook import check_parameters

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"


def test_unknown_names_are_refused_with_their_names():
    import types

    ns = {"datasets": "x", "seeds": 0, "zsad": types.ModuleType("zsad"), "_private": 1}
    check_parameters(ns, ("datasets", "seeds"))
    with pytest.raises(ValueError, match="unknown parameter\\(s\\) seedz; this chapter's parameters are datasets, "
                                         "seeds"):
        check_parameters({**ns, "seedz": "0,1"}, ("datasets", "seeds"))


def test_every_chapter_checks_its_parameters():
    import ast

    import nbformat

    for path in sorted(NOTEBOOKS.glob("t*.ipynb")):
        cells = nbformat.read(path, as_version=4).cells
        i = next(i for i, c in enumerate(cells) if "parameters" in c.metadata.get("tags", []))
        assigned = [t.id for node in ast.parse(cells[i].source).body if isinstance(node, ast.Assign)
                    for t in node.targets]
        check = next(c for c in cells[i + 1:] if c.cell_type == "code" and "injected-parameters" not in
                     c.metadata.get("tags", []))
        assert f"zsad.check_parameters(globals(), {tuple(assigned)!r})" in check.source, path.name


def test_papermill_run_with_a_misspelt_parameter_fails_naming_it(tmp_path):
    out = subprocess.run([sys.executable, "-m", "papermill", str(NOTEBOOKS / "t01_data.ipynb"),
                          str(tmp_path / "o.ipynb"), "--cwd", str(NOTEBOOKS), "-p", "datasets", "magnetic_tile",
                          "-p", "examples_per_defekt", "1"], capture_output=True, text=True)
    assert out.returncode != 0
    assert "unknown parameter(s) examples_per_defekt" in out.stderr + out.stdout


def test_scalar_parameters_where_lists_are_meant(synth_root, tmp_path):
    from zsad.tables import run_table

    res = run_table("tamura", {"random_words": 0}, datasets="synthetic", roots=synth_root, seeds=0,
                    model="zsad-tiny-vit", max_images=4, n_boot=0, results_dir=tmp_path, progress=False)
    assert len(res["paths"]) == 3
    from zsad.tables import scale_settings

    assert [s["sizes"] for s in scale_settings(1, 240)] == ["240"]
