"""Build hooks: ship the committed prompt files and paper_reported.csv inside the wheel (metadata: pyproject.toml).

The canonical copies stay at ``prompts/*.json`` and ``results/paper_reported.csv`` (regenerated and appended to in
place); the build copies them into ``zsad/_data/`` of the build tree, and an sdist carries them at their canonical
paths so that a wheel built from it gets them too. What is copied is :data:`zsad.resources.SHIPPED`, read from
``zsad/resources.py`` by file path (zsad itself is not importable during a build).
"""
import importlib.util
import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.command.sdist import sdist

ROOT = Path(__file__).resolve().parent


def _resources():
    spec = importlib.util.spec_from_file_location("_zsad_resources", ROOT / "zsad" / "resources.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class BuildPyWithData(build_py):
    """build_py, then copy the canonical data files into ``<build_lib>/zsad/_data``."""

    def run(self):
        super().run()
        target = Path(self.build_lib) / "zsad" / "_data"
        for src, rel in _resources().shipped_files(ROOT):
            dest = target / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dest)


class SdistWithData(sdist):
    """sdist, with the canonical data files at their own paths (the wheel built from it copies them again)."""

    def make_release_tree(self, base_dir, files):
        super().make_release_tree(base_dir, files)
        for src, _ in _resources().shipped_files(ROOT):
            dest = Path(base_dir) / src.relative_to(ROOT)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dest)


setup(cmdclass={"build_py": BuildPyWithData, "sdist": SdistWithData})
