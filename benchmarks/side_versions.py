"""Versions of the packages a benchmark side runs with. Kept free of zsad imports: the official side runs it in the
reference venv (open_clip 2.24, gem-torch), where zsad is not installed. Imported by path, as ``side_versions``,
because the benchmark scripts run as files with ``benchmarks/`` first on ``sys.path``."""
from __future__ import annotations

import sys
from importlib import metadata


def versions(dists=("torch", "open_clip_torch", "gem-torch")) -> dict:
    out = {"python": sys.version.split()[0]}
    for dist in dists:
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    return out
