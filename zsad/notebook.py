"""The chapter notebooks: their sources, their common run parameters, and what each checks about itself.

Every chapter is a MyST markdown notebook ``notebooks/tNN_<name>.md`` (jupytext's ``md:myst`` format, paired with
``ipynb``): the file an author edits. ``make notebooks`` writes its cells into the paired ``.ipynb``
(:func:`sync`), executes that in place with papermill and drops papermill's timings from it (:func:`normalise`);
the executed ``.ipynb`` is what the book renders and nbval checks, outputs included.

The study chapters share one block of run parameters, defined once here (:data:`RUN_PARAMETERS`): each chapter's
``parameters`` cell starts with :func:`run_parameters_block` (a test keeps them equal), and passes them on with
``**run_arguments(globals())``.

``python -m zsad.notebook sync SOURCE.md ...`` and ``python -m zsad.notebook normalise NOTEBOOK.ipynb ...`` are the
two steps ``make notebooks`` runs around papermill.
"""
from __future__ import annotations

import hashlib
import json
import sys
import types
from pathlib import Path
from typing import Any, NamedTuple


class Parameter(NamedTuple):
    """One run parameter of the study chapters.

    Attributes
    ----------
    name : str
        The variable name in the ``parameters`` cell.
    default : Any
        Its default value.
    comment : str
        The comment beside it in the ``parameters`` cell.
    empty_is_none : bool, default False
        Whether an empty value (``""``, ``0``) means ``None`` for :func:`zsad.grids.run_settings`.
    """

    name: str
    default: Any
    comment: str
    empty_is_none: bool = False


RUN_PARAMETERS = (
    Parameter("preset", "", "\"paper\": the papers' settings (zsad.preset.PRESETS) replace the values below"),
    Parameter("datasets", "synthetic,magnetic_tile", "comma-separated: synthetic, magnetic_tile, mvtec, visa, folder"),
    Parameter("roots", "", "comma-separated roots in the same order; empty: embedded data or $ZSAD_MVTEC_ROOT / "
                           "$ZSAD_VISA_ROOT"),
    Parameter("seeds", "0,1", "few-shot reference draws; tables show mean ± std over them"),
    Parameter("model", "zsad-tiny-vit", "open_clip architecture; the papers use ViT-B-16-plus-240"),
    Parameter("checkpoint", "", "local open_clip checkpoint; empty: $ZSAD_CHECKPOINT, or seeded RANDOM WEIGHTS", True),
    Parameter("max_images", 12, "test images per class (evenly spaced subset); 0: all", True),
    Parameter("n_boot", 100, "bootstrap resamples for the confidence intervals"),
    Parameter("results_dir", "", "where run folders go; empty: results/", True),
    Parameter("progress", False, "tqdm bars per feature pass (off keeps the stored outputs free of timings)"),
    Parameter("executor", "local",
              "\"ray\": run the settings as Ray tasks ($RAY_ADDRESS or a local Ray); same results"),
    Parameter("autocast", "", "\"bf16\" (CPU/GPU) or \"fp16\" (GPU): image towers under torch.autocast; empty: float32",
              True),
)
"""The run parameters every study chapter (t02-t08) has, in the order its ``parameters`` cell lists them."""

RUN_NAMES = tuple(p.name for p in RUN_PARAMETERS)


def _literal(value) -> str:
    """A default as the ``parameters`` cell spells it: strings in double quotes, everything else as ``repr``."""
    return json.dumps(value, ensure_ascii=False) if isinstance(value, str) else repr(value)


def run_parameters_block(defaults: dict | None = None, comments: dict | None = None) -> str:
    """Return the lines a study chapter's ``parameters`` cell starts with, one ``name = default  # comment`` each.

    Parameters
    ----------
    defaults : dict, optional
        Defaults that override the shared ones by name, for a chapter whose defaults differ (t06 runs only
        ``magnetic_tile``, t08 one seed).
    comments : dict, optional
        Comments that override the shared ones by name.

    Returns
    -------
    str
        The lines in the order of :data:`RUN_PARAMETERS`, joined by newlines (strings in double quotes, other
        values as ``repr``).

    Raises
    ------
    ValueError
        When ``defaults`` or ``comments`` names a parameter that is not a run parameter.
    """
    defaults, comments = defaults or {}, comments or {}
    unknown = sorted((set(defaults) | set(comments)) - set(RUN_NAMES))
    if unknown:
        raise ValueError(f"no run parameter {', '.join(unknown)}; the run parameters are {', '.join(RUN_NAMES)}")
    return "\n".join(f"{p.name} = {_literal(defaults.get(p.name, p.default))}  # {comments.get(p.name, p.comment)}"
                     for p in RUN_PARAMETERS)


def run_arguments(namespace: dict, keep=()) -> dict:
    """Return the keyword arguments of :func:`zsad.grids.run_settings` (and ``run_grid``) from a chapter's run
    parameters.

    A ``preset`` (:data:`zsad.preset.PRESETS`) replaces the values it sets, except those named in ``keep`` (the
    gallery keeps its one seed); an empty ``checkpoint``, ``max_images``, ``results_dir`` or ``autocast`` becomes
    ``None`` (the default: ``$ZSAD_CHECKPOINT`` or random weights, all images, ``results/``, float32).

    Parameters
    ----------
    namespace : dict
        The notebook's ``globals()``; must define every run parameter.
    keep : iterable of str, default ()
        Run parameters the preset does not replace.

    Returns
    -------
    dict
        Every run parameter but ``preset``, by name.

    Raises
    ------
    NameError
        When ``namespace`` lacks a run parameter.
    ValueError
        When ``preset`` is not a known preset.
    """
    from zsad.preset import preset_parameters

    missing = [name for name in RUN_NAMES if name not in namespace]
    if missing:
        raise NameError(f"run parameter(s) {', '.join(missing)} not defined: a study chapter's parameters cell "
                        f"defines all of {', '.join(RUN_NAMES)}")
    values = {name: namespace[name] for name in RUN_NAMES}
    if values["preset"]:
        values.update({k: v for k, v in preset_parameters(values["preset"]).items() if k not in keep})
    values.pop("preset")
    return {p.name: (values[p.name] or None) if p.empty_is_none else values[p.name] for p in RUN_PARAMETERS
            if p.name in values}


def check_parameters(namespace: dict, names, *, run: bool = False) -> None:
    """Refuse a parameter the chapter does not have (papermill itself only warns, and the defaults would run).

    Names starting with ``_``, IPython's own names and modules are not parameters.

    Parameters
    ----------
    namespace : dict
        The notebook's ``globals()``, right after the ``parameters`` cell and papermill's injected cell.
    names : iterable of str
        The chapter's own parameter names (those its ``parameters`` cell assigns).
    run : bool, default False
        The chapter also has the common run parameters (:data:`RUN_PARAMETERS`).

    Raises
    ------
    ValueError
        Naming every unknown parameter and listing the chapter's own.
    """
    hidden: set = set()
    try:
        from IPython import get_ipython

        shell = get_ipython()
        if shell is not None:
            hidden = set(shell.user_ns_hidden)  # In, Out, get_ipython, exit, ... (IPython's own names)
    except ImportError:  # pragma: no cover - notebooks always have IPython
        pass
    names = set(names) | (set(RUN_NAMES) if run else set())
    unknown = sorted(k for k, v in namespace.items() if not k.startswith("_") and k not in hidden
                     and k not in names and not isinstance(v, types.ModuleType))
    if unknown:
        raise ValueError(f"unknown parameter(s) {', '.join(unknown)}; this chapter's parameters are "
                         f"{', '.join(sorted(names))} (papermill -p NAME VALUE)")


# --- sources and executed notebooks -------------------------------------------------------------------------------

class OutOfSync(RuntimeError):
    """The executed notebook has cells its markdown source lacks, and was written after it (a lost edit)."""


def read_source(path) -> "nbformat.NotebookNode":  # noqa: F821
    """Read a chapter's MyST markdown source as a notebook without outputs (with MyST-NB, Jupyter Book's reader).

    Parameters
    ----------
    path : str or os.PathLike
        The ``.md`` source.

    Returns
    -------
    nbformat.NotebookNode
        The notebook; jupytext's ``text_representation`` metadata (which describes the ``.md``) is dropped.
    """
    from myst_nb.core.read import read_myst_markdown_notebook

    nb = read_myst_markdown_notebook(Path(path).read_text(encoding="utf-8"), path=path)
    nb.metadata.get("jupytext", {}).pop("text_representation", None)  # describes the .md, not the .ipynb
    return nb


def cell_inputs(nb) -> list[tuple[str, str, tuple]]:
    """Return what a source and its executed notebook share, cell by cell.

    Parameters
    ----------
    nb : nbformat.NotebookNode
        A notebook.

    Returns
    -------
    list of tuple of (str, str, tuple)
        Per cell: type, source and tags (no outputs, no execution metadata).
    """
    return [(c.cell_type, c.source, tuple(c.metadata.get("tags", ()))) for c in nb.cells]


def _cell_id(cell, used: set) -> str:
    base = hashlib.sha1(f"{cell.cell_type}\n{cell.source}".encode()).hexdigest()[:8]
    cid, n = base, 1
    while cid in used:
        n += 1
        cid = f"{base}-{n}"
    return cid


def _write_notebook(nb, path) -> None:
    """``nbformat.write``'s bytes, written atomically (a tracked notebook is never left half-written)."""
    import nbformat

    from zsad import atomic

    text = nbformat.writes(nb)
    atomic.write_text(path, text if text.endswith("\n") else text + "\n")


def sync(source, target=None) -> Path:
    """Write the cells of ``source`` (a ``.md`` chapter) into its paired ``.ipynb``, like ``jupytext --update``.

    A cell whose type and source the old notebook already has keeps its outputs and id; a new one gets an id from
    its content (so re-runs do not renumber). Notebook metadata other than ``kernelspec`` and ``jupytext`` is kept.
    The result is validated and written atomically.

    Parameters
    ----------
    source : str or os.PathLike
        The ``.md`` chapter.
    target : str or os.PathLike, optional
        The notebook to write; None: ``source`` with the suffix ``.ipynb``.

    Returns
    -------
    pathlib.Path
        The written notebook.

    Raises
    ------
    OutOfSync
        When the ``.ipynb`` has different cells and is newer than the ``.md``: it was edited (e.g. in JupyterLab
        without jupytext) and overwriting it would lose that edit.
    """
    import nbformat

    source = Path(source)
    target = Path(target) if target is not None else source.with_suffix(".ipynb")
    nb = read_source(source)
    old = nbformat.read(target, as_version=4) if target.exists() else None
    if old is not None and cell_inputs(old) != cell_inputs(nb) and target.stat().st_mtime > source.stat().st_mtime:
        raise OutOfSync(f"{target} has cells that {source} lacks and was written after it: port its edit into "
                        f"{source.name} (or run `jupytext --sync {source}`), or touch {source.name} to discard it")
    if old is not None:
        nb.metadata = nbformat.from_dict({**old.metadata, **nb.metadata})
    spare = {}  # (type, source) -> old cells with that input, in order
    for cell in old.cells if old is not None else ():
        spare.setdefault((cell.cell_type, cell.source), []).append(cell)
    used: set = set()
    for cell in nb.cells:
        match = spare.get((cell.cell_type, cell.source))
        prev = match.pop(0) if match else None
        if prev is not None and cell.cell_type == "code":
            cell.outputs, cell.execution_count = prev.outputs, prev.execution_count
        cell.id = prev.id if prev is not None and prev.get("id") and prev.id not in used else _cell_id(cell, used)
        used.add(cell.id)
    nbformat.validate(nb)
    _write_notebook(nb, target)
    return target


PAPERMILL_TIMINGS = ("start_time", "end_time", "duration")


def normalise(path) -> Path:
    """Drop what differs on every execution from an executed notebook, in place.

    That is papermill's start/end times and durations (notebook and cells), the kernel's per-cell execution
    timestamps, and the empty ``tags`` papermill adds. Outputs, execution counts and papermill's record of the
    parameters stay; nbval and the book read neither.

    Parameters
    ----------
    path : str or os.PathLike
        The executed ``.ipynb`` (rewritten atomically).

    Returns
    -------
    pathlib.Path
        ``path``.
    """
    import nbformat

    path = Path(path)
    nb = nbformat.read(path, as_version=4)
    for key in PAPERMILL_TIMINGS:
        nb.metadata.get("papermill", {}).pop(key, None)
    for cell in nb.cells:
        cell.metadata.pop("execution", None)
        cell.metadata.pop("papermill", None)
        if cell.metadata.get("tags") == []:
            del cell.metadata["tags"]
    _write_notebook(nb, path)
    return path


def main(argv=None) -> int:
    """Run ``python -m zsad.notebook {sync SOURCE.md ... | normalise NOTEBOOK.ipynb ...}``.

    ``sync`` takes each path with its suffix replaced by ``.md``. Prints each written path.

    Parameters
    ----------
    argv : list of str, optional
        The arguments; None: ``sys.argv[1:]``.

    Returns
    -------
    int
        Exit status: 0 done, 1 a path failed (:class:`OutOfSync` or an OS error; later paths are not processed),
        2 usage error.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    steps = {"sync": lambda p: sync(Path(p).with_suffix(".md")), "normalise": normalise}
    if not argv or argv[0] not in steps or len(argv) < 2:
        print("usage: python -m zsad.notebook {sync SOURCE.md ... | normalise NOTEBOOK.ipynb ...}", file=sys.stderr)
        return 2
    for path in argv[1:]:
        try:
            print(steps[argv[0]](path))
        except (OutOfSync, OSError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
