"""zsad installed, not cloned: `pip install .` (non-editable) into a fresh venv, then `zsad inspect` from elsewhere.

The fresh venv takes its dependencies from this environment's site-packages through a ``.pth`` file (no network);
zsad itself is built from a copy of the source tree and installed with ``--ignore-installed``, so the editable
install of the clone (a finder hook in this environment's ``__editable__`` ``.pth``, which a plain path entry does
not run) is never what gets imported: the test asserts ``zsad.__file__`` lies in the fresh venv.
"""
import csv
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import numpy as np
import pytest
from helpers import CHROMIUM_FLAGS, chromium_or_skip
from PIL import Image

from zsad import config
from zsad.prompt_generation import committed_prompt_files
from zsad.resources import SHIPPED_DIR, shipped_files

ROOT = config.PROJECT_ROOT
# What a source distribution of zsad holds (the build reads nothing else): pyproject.toml names README.md.
SOURCE = ("pyproject.toml", "setup.py", "README.md", "zsad", "prompts", "results/paper_reported.csv")


def _copy_source(dest: Path) -> Path:
    for rel in SOURCE:
        src = ROOT / rel
        if src.is_dir():
            shutil.copytree(src, dest / rel, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "_data"))
        else:
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    return dest


def _env(home: Path) -> dict:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("ZSAD_") and k not in ("PYTHONPATH", "XDG_CACHE_HOME", "VIRTUAL_ENV")}
    # HOME in tmp: the installed defaults (~/.cache/zsad) must land there, never in the user's real cache
    env.update(HOME=str(home), PYTHONNOUSERSITE="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    return env


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """``(python, zsad script, site-packages, env)`` of a fresh venv with zsad installed non-editable."""
    base = tmp_path_factory.mktemp("install")
    src = _copy_source(base / "src")
    venv = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, capture_output=True)
    python = venv / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    deps = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (site / "zz_zsad_test_deps.pth").write_text("".join(f"{p}\n" for p in sorted(deps)))
    home = base / "home"
    home.mkdir()
    env = _env(home)
    res = subprocess.run([str(python), "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
                          "--ignore-installed", "--no-cache-dir", "--disable-pip-version-check", "-q", str(src)],
                         capture_output=True, text=True, env=env, cwd=base)
    assert res.returncode == 0, f"pip install . failed:\n{res.stdout}\n{res.stderr}"
    return python, venv / "bin" / "zsad", site, env


def test_installed_copy_reads_its_package_data_and_scoring_skips_the_generator(installed, tmp_path):
    python, _, site, env = installed
    # first what scoring imports: it must not pull in the LLM generator (zsad.prompts was split for that)
    code = ("import sys, zsad.study, zsad.runners, zsad.api;"
            "gen = sorted(m for m in ('zsad.prompt_generation', 'zsad.llm', 'llama_cpp') if m in sys.modules);"
            "import json, zsad, zsad.config as c, zsad.cache as k, zsad.resources as r, zsad.prompt_generation as g;"
            "from zsad.paper import paper_reported;"
            "print(json.dumps({'file': zsad.__file__, 'clone': c.IN_CLONE, 'prompts': str(r.data_path('prompts')),"
            "'generator_imported_by_scoring': gen,"
            "'config_prompts': str(c.PROMPTS_DIR), 'paper': str(c.PAPER_REPORTED), 'rows': len(paper_reported()),"
            "'committed': [p.name for p in g.committed_prompt_files()], 'cache': str(k.cache_root()),"
            "'results': str(c.RESULTS_DIR)}))")
    got = json.loads(subprocess.run([str(python), "-c", code], check=True, capture_output=True, text=True, env=env,
                                    cwd=tmp_path).stdout)
    pkg = site / "zsad"
    assert Path(got["file"]) == pkg / "__init__.py", "the clone's editable install was imported"
    assert got["clone"] is False
    assert got["generator_imported_by_scoring"] == []
    assert Path(got["prompts"]) == Path(got["config_prompts"]) == pkg / "_data" / "prompts"
    assert Path(got["paper"]) == pkg / "_data" / "paper_reported.csv"
    assert got["committed"] == [p.name for p in committed_prompt_files()]
    assert got["rows"] > 0
    assert Path(got["cache"]) == Path(env["HOME"]) / ".cache" / "zsad"
    assert Path(got["results"]) == tmp_path / "results"
    # the wheel's copies are byte for byte the canonical files of the clone (built from them, nothing committed)
    for src, rel in shipped_files(ROOT):
        assert (pkg / "_data" / rel).read_bytes() == src.read_bytes(), rel
    assert not SHIPPED_DIR.exists(), "zsad/_data/ must not exist in the clone (a second copy could drift)"


def test_installed_zsad_inspect_on_magnetic_tiles_from_another_folder(installed, tmp_path):
    python, zsad, site, env = installed
    tiles = config.MAGNETIC_TILE_SUBSET
    folders = sorted(p for p in (tiles / "test").iterdir() if p.is_dir())
    expected = sorted(p.name for f in folders for p in f.iterdir() if p.suffix == ".jpg")
    refs = sorted((tiles / "train" / "good").glob("*.jpg"))[:2]
    work = tmp_path / "work"
    work.mkdir()
    res = subprocess.run([str(zsad), "inspect", *map(str, folders), "--refs", *map(str, refs), "--out", "report",
                          "--class-name", "magnetic_tile", "--model", "zsad-tiny-vit", "--sizes", "240",
                          "--eval-size", "128", "--quiet"], capture_output=True, text=True, env=env, cwd=work,
                         timeout=300)
    assert res.returncode == 0, f"zsad inspect failed:\n{res.stdout}\n{res.stderr}"
    out = work / "report"
    rows = list(csv.DictReader((out / "scores.csv").open()))
    assert sorted(Path(r["image"]).name for r in rows) == expected and len(expected) == 30
    assert set(rows[0]) == {"image", "score", "decision", "overlay"}
    assert {r["decision"] for r in rows} <= {"anomalous", "normal"}
    assert all(np.isfinite(float(r["score"])) for r in rows)
    overlays = sorted((out / "overlays").glob("*.png"))
    assert len(overlays) == 30 and {f"overlays/{p.name}" for p in overlays} == {r["overlay"] for r in rows}
    page = (out / "report.html").read_text()
    assert not re.search(r"https?://", page) and len(re.findall(r'src="data:image/png;base64,', page)) == 60
    assert "RANDOM WEIGHTS" in page and "leave-one-out scores of 2 good images" in page
    prov = json.loads((out / "provenance.json").read_text())
    # FADE's segmentation ensemble came from the installed package data (paths relative to site-packages)
    assert prov["parameters"]["prompts"] == ["zsad/_data/prompts/llm_generic_seed0.json"]
    # the cache went to $HOME/.cache/zsad; nothing was written next to the package or into the clone's folders
    cache = Path(env["HOME"]) / ".cache" / "zsad"
    assert any(cache.rglob("*.safetensors")), "the feature cache was not used"
    for folder in (site, site.parent):
        assert not (folder / "cache").exists() and not (folder / "results").exists()
    assert sorted(p.name for p in work.iterdir()) == ["report"]
    # the report renders in headless Chromium, from the file alone
    browser = chromium_or_skip()
    shot = tmp_path / "report.png"
    subprocess.run([browser, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}",
                    "--window-size=1200,1600", "--virtual-time-budget=3000", (out / "report.html").as_uri()],
                   capture_output=True, timeout=120, check=True, env=env)
    pixels = np.asarray(Image.open(shot).convert("RGB"), dtype=np.float32)
    grey = pixels.mean(-1)
    assert grey.std() > 10 and (grey < 200).mean() > 0.01, "the rendered report is blank"
    # the overlays' colours (jet: saturated hues) are on screen, i.e. the data-URI images decoded
    assert ((pixels.max(-1) - pixels.min(-1)) > 100).mean() > 0.005, "no image of the report was drawn"


def test_data_path_and_shipped_files(tmp_path):
    from zsad.resources import data_path

    assert data_path("prompts", in_clone=True, root=tmp_path) == tmp_path / "prompts"
    assert data_path("paper_reported", in_clone=True, root=tmp_path) == tmp_path / "results" / "paper_reported.csv"
    assert data_path("prompts", in_clone=False) == SHIPPED_DIR / "prompts"
    assert data_path("paper_reported", in_clone=False) == SHIPPED_DIR / "paper_reported.csv"
    assert data_path("prompts") == config.PROMPTS_DIR and data_path("paper_reported") == config.PAPER_REPORTED
    with pytest.raises(ValueError, match="unknown package data 'weights'"):
        data_path("weights")
    files = shipped_files(ROOT)
    assert [rel for _, rel in files] == sorted(["paper_reported.csv"] + [f"prompts/{p.name}" for p in
                                                                         (ROOT / "prompts").glob("*.json")])
    # a source tree without a canonical file cannot build a wheel that would fail later on the user's machine
    (tmp_path / "prompts").mkdir()
    with pytest.raises(FileNotFoundError, match=r"no \*\.json files in .*prompts"):
        shipped_files(tmp_path)
    (tmp_path / "prompts" / "a.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match=r"paper_reported.csv is missing"):
        shipped_files(tmp_path)


def test_sdist_carries_the_data_files_and_its_wheel_ships_them(tmp_path):
    import tarfile
    import zipfile

    src = _copy_source(tmp_path / "src")
    subprocess.run([sys.executable, "setup.py", "-q", "sdist", "-d", str(tmp_path / "dist")], cwd=src, check=True,
                   capture_output=True)
    (sdist,) = (tmp_path / "dist").glob("zsad-*.tar.gz")
    with tarfile.open(sdist) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    want = {str(s.relative_to(ROOT)) for s, _ in shipped_files(ROOT)}
    assert want <= names, sorted(want - names)
    res = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                          "--disable-pip-version-check", "-q", "-w", str(tmp_path / "wheels"), str(sdist)],
                         capture_output=True, text=True, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    (wheel,) = (tmp_path / "wheels").glob("zsad-*.whl")
    with zipfile.ZipFile(wheel) as whl:
        for canonical, rel in shipped_files(ROOT):
            assert whl.read(f"zsad/_data/{rel}") == canonical.read_bytes(), rel
