"""Run folders: write atomically with provenance, read back.

A run folder ``results/<study>/<run-id>/`` holds

- ``metrics.csv``: tidy rows ``dataset, class, method, setting, shots, seed, metric, value, ci_low, ci_high``,
  sorted and formatted deterministically, so the same inputs and seed give a byte-identical file;
- ``predictions.npz``: per-image ``paths`` (relative to the dataset root), ``classes``, ``labels``, ``scores``,
  ``masks`` and ``maps`` at the evaluation size, enough for ``zsad eval`` to recompute every metric; maps are stored
  as computed (``map_storage="float32"``, the default) or compactly (:data:`MAP_STORAGES`, see below);
- ``provenance.json``: git commit, package versions, weights (checkpoint sha256 or "random"), seed, parameters,
  few-shot reference files.

Map storage
-----------
A 448 x 448 float32 map is 0.8 MB; the main table at MVTec AD + VisA size holds about 180,000 of them. ``map_storage``
chooses how float maps are written (uint8 maps, FADE's, are always stored as they are):

- ``"float32"``: as computed (byte-identical to what earlier versions wrote);
- ``"float16"``: rounded to half precision (relative error <= 2**-11; values beyond +-65504 are refused);
- ``"uint8"``: 256 levels per class, ``code = round((value - lo) / (hi - lo) * 255)`` with the class's smallest and
  largest value; ``maps_offset`` and ``maps_scale`` (per image, equal within a class) are stored beside the codes.
  Every metric is computed per class and depends only on the order of a class's pixel values, which the affine
  decoding preserves: the metrics of the decoded maps are those of the codes.

:func:`read_predictions` decodes to float32 whatever was stored. The metrics of a run folder must be computed on
the maps as stored (:func:`apply_map_storage`), so that ``zsad eval`` on it gives them back exactly; the deviation
from float32 storage is measured in ``benchmarks/bench_storage.py``.

The folder is first written as a hidden sibling and renamed into place, so a crash never leaves a folder that
looks complete; ``provenance.json`` is written last and is the marker of a finished run.
"""
from __future__ import annotations

import functools
import json
import os
import platform
import subprocess
import zipfile
import zlib
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

import numpy as np
import pandas as pd

from zsad import atomic

METRIC_COLUMNS = ["dataset", "class", "method", "setting", "shots", "seed", "metric", "value", "ci_low", "ci_high"]
PREDICTION_KEYS = ("paths", "classes", "labels", "scores", "masks", "maps")
RUN_FILES = ("metrics.csv", "predictions.npz", "provenance.json")
#: ``map_storage`` values: how float anomaly maps are written to ``predictions.npz`` (module docstring).
MAP_STORAGES = ("float32", "float16", "uint8")
_FLOAT16_MAX = float(np.finfo(np.float16).max)
_KEY_COLUMNS = METRIC_COLUMNS[:7]
_TRACKED_PACKAGES = ("zsad", "torch", "torchvision", "open-clip-torch", "numpy", "scipy", "scikit-learn", "pandas",
                     "pillow", "opencv-python-headless", "transformers", "llama-cpp-python")
_FLOAT_FORMAT = "%.10g"


class RunFolderError(ValueError):
    """A run folder or predictions file that is missing, incomplete or malformed."""


#: The tracked paths whose changes make a result "+dirty": what computes and what is computed on. Notebooks, book
#: pages and tests are not among them (papermill rewrites the tracked notebooks in place while they run).
DIRTY_PATHS = ("zsad", "prompts", "data", "pyproject.toml", "requirements.txt")


def git_commit(path: str | os.PathLike | None = None) -> str:
    """The commit of the working tree zsad runs from, ``+dirty`` when a tracked file under :data:`DIRTY_PATHS`
    differs from it, or ``"unknown"`` outside a git checkout.

    Parameters
    ----------
    path : str or os.PathLike, optional
        A folder inside the git checkout to ask about. None (or empty): the folder of the installed ``zsad``
        package, i.e. the working tree zsad runs from.

    Returns
    -------
    str
        ``git rev-parse HEAD``, with ``"+dirty"`` appended when ``git status`` reports a modified tracked file under
        :data:`DIRTY_PATHS` (untracked files do not count); ``"unknown"`` when git is missing, fails (not a
        checkout) or takes more than 10 s.
    """
    cwd = Path(path) if path else Path(__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True,
                             check=True, timeout=10).stdout.strip()
        # ":(top)" makes the paths relative to the repository's root, wherever cwd is inside it
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--",
                                *(f":(top){p}" for p in DIRTY_PATHS)],
                               cwd=cwd, capture_output=True, text=True, check=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return sha + ("+dirty" if dirty else "")


def package_versions(names=_TRACKED_PACKAGES) -> dict[str, str]:
    """Installed version of each distribution (``"not installed"`` when absent); read once per process.

    Parameters
    ----------
    names : iterable of str, default the tracked packages
        Distribution names to look up (``importlib.metadata``); the default is zsad and the packages its results
        depend on (torch, open-clip-torch, numpy, ...).

    Returns
    -------
    dict of str to str
        ``{name: version}`` in the order of ``names``, a fresh dict on each call; the look-up is cached per tuple of
        names for the life of the process.
    """
    return dict(_package_versions(tuple(names)))


@functools.lru_cache(maxsize=None)
def _package_versions(names: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    out = []
    for name in names:
        try:
            out.append((name, metadata.version(name)))
        except metadata.PackageNotFoundError:
            out.append((name, "not installed"))
    return tuple(out)


def provenance(parameters: dict, *, model=None, seed: int | None = None, references=None, extra=None) -> dict:
    """Everything needed to say where a result came from.

    ``model`` is a :class:`zsad.backbone.LoadedModel` (or anything with ``provenance()``); ``references`` maps a
    class name to the list of few-shot reference files (relative paths) that were used.

    Parameters
    ----------
    parameters : dict
        The run's parameters, stored as they are under ``"parameters"``.
    model : zsad.backbone.LoadedModel, optional
        The model used; its ``provenance()`` is stored under ``"weights"``. None: ``"weights"`` is None (no model).
    seed : int, optional
        The run's seed, stored under ``"seed"``.
    references : dict, optional
        Class name -> list of few-shot reference files (relative paths); None or empty: ``{}``.
    extra : dict, optional
        More entries, merged in last (they replace entries of the same name).

    Returns
    -------
    dict
        ``created_utc``, ``git_commit`` (:func:`git_commit`), ``python``, ``platform``, ``device`` (``"cuda:<GPU
        name>"`` or ``"cpu"``), ``torch_threads``, ``cpu_capability``, ``packages`` (:func:`package_versions`,
        sorted by name), ``seed``, ``parameters``, ``weights``, ``few_shot_references``, and ``extra``'s entries.
    """
    import torch  # deferred: results is also used by light commands such as `zsad eval`

    prov = {
        "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "git_commit": git_commit(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": "cuda:" + torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
        "torch_threads": torch.get_num_threads(),  # float32 CPU kernels may round by thread count (zsad.distributed)
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "packages": dict(sorted(package_versions().items())),  # as a run folder's sorted JSON reads back
        "seed": seed,
        "parameters": parameters,
        "weights": model.provenance() if model is not None else None,
        "few_shot_references": references or {},
    }
    if extra:
        prov.update(extra)
    return prov


def _check_metrics_frame(df: pd.DataFrame) -> pd.DataFrame:
    missing = [c for c in METRIC_COLUMNS if c not in df.columns]
    if missing:
        raise RunFolderError(f"metrics table lacks columns {missing}; expected {METRIC_COLUMNS}")
    df = df[METRIC_COLUMNS].copy()
    if df.duplicated(_KEY_COLUMNS).any():
        dup = df[df.duplicated(_KEY_COLUMNS, keep=False)].head(3).to_dict("records")
        raise RunFolderError(f"metrics table has duplicate rows for the same key, e.g. {dup}")
    return df.sort_values(_KEY_COLUMNS, kind="stable").reset_index(drop=True)


def metrics_csv_bytes(df: pd.DataFrame) -> bytes:
    """Deterministic CSV text of a tidy metrics table (sorted rows, fixed float format, ``\\n`` line ends).

    Parameters
    ----------
    df : pandas.DataFrame
        Tidy metrics with at least the :data:`METRIC_COLUMNS`; other columns are dropped.

    Returns
    -------
    bytes
        The CSV (header and rows, no index): the :data:`METRIC_COLUMNS` in their order, rows sorted (stable) by the
        key columns ``dataset`` .. ``metric``, floats written as ``%.10g``.

    Raises
    ------
    RunFolderError
        A missing column, or two rows with the same key (``dataset, class, method, setting, shots, seed, metric``).
    """
    return _check_metrics_frame(df).to_csv(index=False, float_format=_FLOAT_FORMAT, lineterminator="\n").encode()


def _check_predictions(pred: dict) -> dict:
    missing = [k for k in PREDICTION_KEYS if k not in pred]
    if missing:
        raise RunFolderError(f"predictions lack {missing}; expected keys {list(PREDICTION_KEYS)}")
    n = len(pred["paths"])
    for key in PREDICTION_KEYS:
        if len(pred[key]) != n:
            raise RunFolderError(f"predictions: '{key}' has {len(pred[key])} entries, 'paths' has {n}")
    if np.shape(pred["masks"]) != np.shape(pred["maps"]):
        raise RunFolderError(f"predictions: masks {np.shape(pred['masks'])} and maps {np.shape(pred['maps'])} differ")
    return {
        "paths": np.asarray(pred["paths"], dtype=str),
        "classes": np.asarray(pred["classes"], dtype=str),
        "labels": np.asarray(pred["labels"], dtype=np.int8),
        "scores": np.asarray(pred["scores"], dtype=np.float64),
        "masks": np.asarray(pred["masks"], dtype=bool),
        "maps": np.asarray(pred["maps"]),
    }


def check_map_storage(storage: str) -> str:
    """``storage`` when it is one of :data:`MAP_STORAGES`, else a ``ValueError`` naming the option.

    Parameters
    ----------
    storage : str
        The requested map storage.

    Returns
    -------
    str
        ``storage``, unchanged.
    """
    if storage not in MAP_STORAGES:
        raise ValueError(f"map_storage (--map-storage) must be one of {MAP_STORAGES}, got {storage!r}")
    return storage


def encode_maps(maps: np.ndarray, classes, storage: str = "float32") -> dict[str, np.ndarray]:
    """The ``predictions.npz`` members that store ``maps`` as ``storage``.

    Parameters
    ----------
    maps : np.ndarray
        (N, H, W) anomaly maps, float or uint8 (uint8 maps are stored unchanged whatever ``storage`` says).
    classes : sequence of str
        (N,) class of every map: ``"uint8"`` quantises each class on its own value range.
    storage : {"float32", "float16", "uint8"}
        How float maps are written.

    Returns
    -------
    dict
        ``{"maps": array}``, plus ``maps_offset`` and ``maps_scale`` ((N,) float64) for quantised maps.

    Raises
    ------
    ValueError
        An unknown ``storage``, non-finite map values, or float16 storage of values beyond its range.
    """
    check_map_storage(storage)
    maps = np.asarray(maps)
    if maps.dtype == np.uint8 or storage == "float32":
        return {"maps": maps}
    maps = maps.astype(np.float32, copy=False)
    if not np.isfinite(maps).all():
        raise ValueError(f"map_storage={storage!r}: the maps hold non-finite values; store them as float32")
    if storage == "float16":
        peak = float(np.abs(maps).max()) if maps.size else 0.0
        if peak > _FLOAT16_MAX:
            raise ValueError(f"map_storage='float16': a map value {peak:.4g} exceeds float16's range "
                             f"({_FLOAT16_MAX:.0f}); use 'uint8' or 'float32'")
        return {"maps": maps.astype(np.float16)}
    classes = np.asarray(classes, dtype=str)
    codes = np.empty(maps.shape, np.uint8)
    offset, scale = np.zeros(len(maps), np.float64), np.ones(len(maps), np.float64)
    for cls in np.unique(classes):
        idx = np.flatnonzero(classes == cls)
        part = maps[idx].astype(np.float64)
        lo, hi = float(part.min()), float(part.max())
        step = (hi - lo) / 255.0 if hi > lo else 1.0  # a constant class: every code 0, decoded to lo exactly
        codes[idx] = np.clip(np.rint((part - lo) / step), 0, 255).astype(np.uint8)
        offset[idx], scale[idx] = lo, step
    return {"maps": codes, "maps_offset": offset, "maps_scale": scale}


def decode_maps(arrays: dict, *, dequantise: bool = True) -> np.ndarray:
    """The maps of ``predictions.npz`` members as :func:`encode_maps` wrote them.

    Parameters
    ----------
    arrays : dict
        At least ``maps``; ``maps_offset`` and ``maps_scale`` for quantised maps.
    dequantise : bool
        Decode quantised maps to float32 (``offset + code * scale``). False returns the uint8 codes: the same metrics
        per class (the decoding is increasing within a class), through the metrics' fast uint8 path; codes of
        different classes are not comparable.

    Returns
    -------
    np.ndarray
        float32 maps for float16 or quantised storage (codes when ``dequantise=False``), else the stored array.
    """
    maps = np.asarray(arrays["maps"])
    if "maps_scale" in arrays:
        if not dequantise:
            return maps
        offset = np.asarray(arrays["maps_offset"], np.float64).reshape(-1, *([1] * (maps.ndim - 1)))
        scale = np.asarray(arrays["maps_scale"], np.float64).reshape(offset.shape)
        return (offset + maps * scale).astype(np.float32)
    if maps.dtype == np.float16:
        return maps.astype(np.float32)
    return maps


def apply_map_storage(predictions: dict, storage: str = "float32") -> dict:
    """``predictions`` with the maps replaced by what reading them back after storage as ``storage`` gives.

    Compute a run's metrics on this, so that they equal ``zsad eval`` on its run folder.

    Parameters
    ----------
    predictions : dict
        At least ``classes`` and ``maps``.
    storage : {"float32", "float16", "uint8"}
        The map storage the run folder will be written with.

    Returns
    -------
    dict
        A shallow copy of ``predictions`` with decoded ``maps`` (the same object for float32 or uint8 maps).
    """
    if check_map_storage(storage) == "float32" or np.asarray(predictions["maps"]).dtype == np.uint8:
        return predictions
    return {**predictions, "maps": decode_maps(encode_maps(predictions["maps"], predictions["classes"], storage))}


def map_storage_record(maps: np.ndarray, storage: str) -> dict:
    """What the provenance says about the maps' storage: the option and what was applied.

    Parameters
    ----------
    maps : np.ndarray
        The maps as computed.
    storage : str
        The ``map_storage`` option.

    Returns
    -------
    dict
        ``{"requested": storage, "stored_dtype": ..., "quantised_per_class": bool}``.
    """
    dtype = np.asarray(maps).dtype
    stored = "uint8" if dtype == np.uint8 or storage == "uint8" else (storage if storage == "float16" else str(dtype))
    return {"requested": storage, "stored_dtype": stored,
            "quantised_per_class": bool(storage == "uint8" and dtype != np.uint8)}


def _write_npz(path: Path, arrays: dict) -> None:
    """An .npz that ``np.load`` reads, deflated at level 1 (float maps barely compress further at higher levels,
    which cost several times the time), with fixed member timestamps so that equal arrays give equal bytes."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        for name, array in arrays.items():
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info._compresslevel = 1  # ZipFile.open(ZipInfo) ignores the archive's level (Python 3.11 attribute)
            with zf.open(info, "w", force_zip64=True) as f:
                np.lib.format.write_array(f, np.asanyarray(array), allow_pickle=False)


def is_run_folder(path: str | os.PathLike) -> bool:
    """True when ``path`` is a folder zsad wrote as a run: a provenance file of ours, and no file zsad did not write
    (so replacing it can only lose a result zsad can recompute).

    Parameters
    ----------
    path : str or os.PathLike
        The folder to inspect.

    Returns
    -------
    bool
        True when ``path`` is a real folder (not a symlink) whose entries are all among :data:`RUN_FILES` and whose
        ``provenance.json`` is a readable JSON object with ``git_commit``, ``parameters`` and ``packages``; False
        otherwise (also for a missing path, an empty folder or an unreadable provenance file).
    """
    path = Path(path)
    if not path.is_dir() or path.is_symlink():
        return False
    if any(p.name not in RUN_FILES for p in path.iterdir()):
        return False
    try:
        prov = json.loads((path / "provenance.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(prov, dict) and {"git_commit", "parameters", "packages"} <= set(prov)


def check_run_target(run_dir: str | os.PathLike, *, overwrite: bool = False, protect=()) -> Path:
    """Refuse a run-folder path before any work: an existing file, a folder that is not a zsad run folder (even with
    ``overwrite``: it may be a user's data), an existing run folder without ``overwrite``, or a path inside or
    above one of the ``protect`` folders (e.g. the dataset being evaluated). Returns the path.

    Parameters
    ----------
    run_dir : str or os.PathLike
        The run folder to be written; ``~`` is expanded. A missing path or an empty folder is accepted.
    overwrite : bool, default False
        Accept an existing run folder of zsad's (:func:`is_run_folder`), to be replaced.
    protect : iterable of path, default ()
        Folders that must not be written into or over: ``run_dir`` may be neither one of them, nor inside one, nor
        above one (compared after resolving symlinks).

    Returns
    -------
    pathlib.Path
        ``run_dir``, ``~``-expanded (not resolved).

    Raises
    ------
    RunFolderError
        ``run_dir`` is, is inside or is above a ``protect`` folder; is a symlink or an existing non-folder; is a
        non-empty folder that is not a zsad run folder (whatever ``overwrite``); or is a run folder and
        ``overwrite`` is False.
    """
    run_dir = Path(run_dir).expanduser()
    resolved = run_dir.resolve()
    for folder in protect:
        folder = Path(folder).expanduser().resolve()
        if resolved == folder or folder in resolved.parents or resolved in folder.parents:
            raise RunFolderError(f"--out {run_dir}: refusing to write a run folder inside or over {folder} "
                                 "(the dataset being evaluated); choose a folder outside it")
    if run_dir.is_symlink() or (run_dir.exists() and not run_dir.is_dir()):
        raise RunFolderError(f"--out {run_dir}: exists and is not a folder; choose another --out")
    if run_dir.is_dir() and any(run_dir.iterdir()):
        if not is_run_folder(run_dir):
            raise RunFolderError(f"--out {run_dir}: exists and is not a run folder written by zsad (it holds other "
                                 "files or no provenance.json); refusing to replace it, --overwrite or not; choose "
                                 "another --out")
        if not overwrite:
            raise RunFolderError(f"--out {run_dir}: a run folder exists there already; choose another --out, or "
                                 "pass --overwrite (overwrite=True) to replace it")
    return run_dir


def write_run(run_dir: str | os.PathLike, metrics: pd.DataFrame, predictions: dict, prov: dict,
              *, overwrite: bool = False, map_storage: str = "float32") -> Path:
    """Write a complete run folder atomically and return its path (rules of :func:`check_run_target`).

    Parameters
    ----------
    run_dir : path
        The run folder to write.
    metrics : pandas.DataFrame
        Tidy metrics (:data:`METRIC_COLUMNS`), computed on :func:`apply_map_storage` of the predictions.
    predictions : dict
        :data:`PREDICTION_KEYS` arrays.
    prov : dict
        :func:`provenance`; with compact storage a ``map_storage`` record (:func:`map_storage_record`) is added.
    overwrite : bool
        Replace an existing run folder of zsad's.
    map_storage : {"float32", "float16", "uint8"}
        How float maps are stored (module docstring).

    Returns
    -------
    pathlib.Path
        ``run_dir``.
    """
    check_map_storage(map_storage)
    run_dir = check_run_target(run_dir, overwrite=overwrite)
    csv = metrics_csv_bytes(metrics)
    pred = _check_predictions(predictions)
    stored = encode_maps(pred["maps"], pred["classes"], map_storage)
    if map_storage != "float32":  # float32 run folders stay byte-identical to what earlier versions wrote
        prov = {**prov, "map_storage": map_storage_record(pred["maps"], map_storage)}
    with atomic.atomic_folder(run_dir, replace=True) as tmp:
        (tmp / "metrics.csv").write_bytes(csv)
        _write_npz(tmp / "predictions.npz", {**pred, **stored})
        (tmp / "provenance.json").write_text(json.dumps(prov, indent=2, sort_keys=True, default=str) + "\n")
        for name in RUN_FILES:
            os.chmod(tmp / name, atomic.file_mode())
    return run_dir


def read_predictions(path: str | os.PathLike, *, dequantise: bool = True) -> dict:
    """The predictions of a run folder (or of a ``predictions.npz``), maps decoded as :func:`decode_maps` does.

    Parameters
    ----------
    path : path
        A run folder or its ``predictions.npz``.
    dequantise : bool
        False: quantised maps come back as their per-class uint8 codes (same per-class metrics, faster).

    Returns
    -------
    dict
        :data:`PREDICTION_KEYS` arrays.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "predictions.npz"
    if not path.is_file():
        raise RunFolderError(f"{path}: predictions file not found")
    try:
        with np.load(path, allow_pickle=False) as data:
            pred = {k: data[k] for k in data.files}
        if "maps" in pred:
            pred["maps"] = decode_maps(pred, dequantise=dequantise)
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zlib.error) as exc:
        raise RunFolderError(f"{path}: not a readable predictions .npz, truncated or corrupted "
                             f"({type(exc).__name__}: {exc}); re-run the prediction that wrote it") from None
    try:
        return _check_predictions(pred)
    except RunFolderError as exc:
        raise RunFolderError(f"{path}: {exc}") from None


def read_run(run_dir: str | os.PathLike) -> dict:
    """Return ``{"metrics": DataFrame, "provenance": dict, "path": Path}`` of a finished run folder.

    Parameters
    ----------
    run_dir : str or os.PathLike
        The run folder; it is finished when it holds ``provenance.json``.

    Returns
    -------
    dict
        ``metrics``: ``metrics.csv`` as a DataFrame (only empty cells read as NaN; strings such as ``"NA"`` stay);
        ``provenance``: the parsed ``provenance.json``; ``path``: ``run_dir`` as a :class:`pathlib.Path`.

    Raises
    ------
    RunFolderError
        When ``run_dir`` has no ``provenance.json`` or no ``metrics.csv`` (not a finished run folder).
    """
    run_dir = Path(run_dir)
    prov_file = run_dir / "provenance.json"
    if not prov_file.is_file():
        raise RunFolderError(f"{run_dir}: not a finished run folder (no provenance.json)")
    if not (run_dir / "metrics.csv").is_file():
        raise RunFolderError(f"{run_dir}: not a finished run folder (no metrics.csv)")
    metrics = pd.read_csv(run_dir / "metrics.csv", keep_default_na=False, na_values=[""])
    return {"metrics": metrics, "provenance": json.loads(prov_file.read_text()), "path": run_dir}


#: Written by :func:`zsad.grids.run_settings` into a study's folder: the run folders its last table planned.
MANIFEST = "runs.json"


def write_manifest(study_dir: str | os.PathLike, run_ids) -> Path:
    """Record which run folders of a study folder the latest table planned (atomically).

    Parameters
    ----------
    study_dir : str or os.PathLike
        The study's folder (``<results>/<study>``); created when missing.
    run_ids : iterable of str
        The run folders, relative to ``study_dir`` (``<dataset>/<run>``), in table order.

    Returns
    -------
    pathlib.Path
        The manifest file.
    """
    study_dir = Path(study_dir)
    study_dir.mkdir(parents=True, exist_ok=True)
    return atomic.write_text(study_dir / MANIFEST, json.dumps({"runs": [str(r) for r in run_ids]}, indent=1) + "\n")


def finished_runs(results_dir: str | os.PathLike, studies=None) -> list[tuple[str, Path]]:
    """The finished run folders of the study folders under ``results_dir``, as their tables last planned them.

    A study folder with a manifest (:func:`write_manifest`) contributes exactly the runs it lists, so a run folder
    an earlier version of a chapter's settings left behind is never read as part of the table; a folder without
    one (written before manifests existed) contributes every finished run folder in it.

    Parameters
    ----------
    results_dir : str or os.PathLike
        The results folder (holding ``<study>/<dataset>/<run>/``).
    studies : str or sequence of str, optional
        Study folder names to keep (comma-separated or a sequence); default all.

    Returns
    -------
    list of (str, pathlib.Path)
        ``(study, run folder)`` pairs, sorted.

    Raises
    ------
    RunFolderError
        When a manifest names a run folder that is missing or unfinished.
    """
    wanted = None if studies is None else {
        s.strip() for s in (studies.split(",") if isinstance(studies, str) else studies) if str(s).strip()}
    root = Path(results_dir)
    found = []
    for study_dir in sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []:
        if wanted is not None and study_dir.name not in wanted:
            continue
        manifest = study_dir / MANIFEST
        if manifest.is_file():
            runs = [study_dir / r for r in json.loads(manifest.read_text())["runs"]]
            missing = [str(r) for r in runs if not (r / "provenance.json").is_file()]
            if missing:
                raise RunFolderError(f"{manifest} lists run folders that are missing or unfinished: "
                                     f"{', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''} (re-run the table)")
        else:
            runs = [p.parent for p in study_dir.glob("*/*/provenance.json")]
        found += [(study_dir.name, r) for r in sorted(runs)]
    return found


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write a text file through a temporary sibling and a rename (:func:`zsad.atomic.write_text`).

    Parameters
    ----------
    path : str or os.PathLike
        The file to write; its parent folder is created when missing.
    text : str
        Its new content, written UTF-8 encoded.

    Returns
    -------
    pathlib.Path
        ``path``.
    """
    return atomic.write_text(path, text)


def provenance_markdown(prov: dict) -> str:
    """The provenance box every chapter ends with (Markdown), from a :func:`provenance` dict.

    Parameters
    ----------
    prov : dict
        A :func:`provenance` dict (or a run folder's ``provenance.json``); missing entries show as None (or empty).

    Returns
    -------
    str
        A MyST ``{admonition} Provenance`` block listing the commit, the weights (``"no model used"``, a bold
        **RANDOM WEIGHTS** warning with the model and init seed, or the model, checkpoint file name and sha256),
        seed, device, Python version, the installed packages (``"not installed"`` ones left out) and the parameters
        as sorted JSON.
    """
    weights = prov.get("weights")
    if weights is None:
        weights_line = "no model used"
    elif weights.get("random_weights"):
        weights_line = (f"**RANDOM WEIGHTS** ({weights['model']}, init seed {weights['init_seed']}): "
                        "these numbers test the pipeline, they are not results about CLIP")
    else:
        weights_line = (f"{weights['model']} from `{Path(weights['checkpoint']).name}`, "
                        f"sha256 `{weights['checkpoint_sha256']}`")
    pkgs = ", ".join(f"{k} {v}" for k, v in prov.get("packages", {}).items() if v != "not installed")
    lines = [
        "```{admonition} Provenance",
        f"- commit: `{prov.get('git_commit')}`",
        f"- weights: {weights_line}",
        f"- seed: {prov.get('seed')}; device: {prov.get('device')}; Python {prov.get('python')}",
        f"- packages: {pkgs}",
        f"- parameters: `{json.dumps(prov.get('parameters', {}), sort_keys=True, default=str)}`",
        "```",
    ]
    return "\n".join(lines)
