"""The study's tables as grids of runs: which (dataset, method, setting, seed) runs a table has, checking them all
before the first computes, running them in-process or on Ray, and resuming from finished run folders. The
presentation of their results is :mod:`zsad.tables`.
"""
from __future__ import annotations

import inspect
from pathlib import Path

import pandas as pd

from zsad import config
from zsad.results import finished_runs, read_run, write_manifest
from zsad.study import METHODS, SPECIFIC_ARGUMENTS, _names, execute, plan_run, reusable

#: FADE's Tab. 7 compares LLM ensembles; ours are five seeds of one generator (prompts/README.md).
DEFAULT_PROMPT_FILES = ",".join(f"llm_generic_seed{i}" for i in range(5))


def _ints(value) -> list[int]:
    """Integers from ``"0,1"``, a scalar or a sequence; anything else is an error naming the value."""
    try:
        return [int(v) for v in _names(value)]
    except (TypeError, ValueError):
        raise ValueError(f"expected comma-separated integers, got {value!r}") from None


def run_id(dataset: str, method: str, shots: int, seed: int, variant: str = "") -> str:
    """The id of one run of a table, also its folder under the study folder.

    Parameters
    ----------
    dataset, method : the dataset and method names.
    shots, seed : reference images and the seed of their draw.
    variant : the setting's label suffix ("" for none); slugged into the folder name.

    Returns
    -------
    str
        ``<dataset>/<method>_<k>shot[_<variant>]_seed<s>``.
    """
    slug = "".join(c if c.isalnum() else "-" for c in variant.lower()).strip("-")
    return f"{dataset}/{method}_{shots}shot{'_' + slug if slug else ''}_seed{seed}"


def _job_kwargs(setting: dict, predict_kwargs: dict) -> dict:
    """A job's ``predict`` arguments: the setting's own (strict: the method must use them) over the table-wide ones,
    of which method-specific arguments (:data:`zsad.study.SPECIFIC_ARGUMENTS`) apply only to methods that use them
    (``sizes`` of the main table reaches FADE, not WinCLIP)."""
    uses = METHODS[setting["method"]].uses if setting["method"] in METHODS else frozenset()
    shared = {k: v for k, v in predict_kwargs.items()
              if v is not None and (k not in SPECIFIC_ARGUMENTS or k in uses)}
    return {**shared, **setting}


def run_settings(study: str, settings, *, datasets="synthetic,magnetic_tile", roots="", seeds="0,1",
                 results_dir=None, executor: str = "local", progress: bool = True, resume: bool = True,
                 gpu_fraction=None, **predict_kwargs) -> dict:
    """Run every (dataset, setting, seed) of a table and write one run folder each.

    ``settings`` is a list of dicts with ``method`` and ``shots`` and optionally any other :func:`zsad.study.predict`
    argument (``variant``, ``options``, ``mode``, ``sizes``, ``prompts``, ...), which override ``predict_kwargs``.
    Method-specific ``predict_kwargs`` (``sizes``, ``mode``, ``prompts``, ``class_prompts``, ``detector``, ``model``,
    ``checkpoint``, ``cnn_checkpoint``) apply to the settings whose method uses them; one that no setting's method
    uses is an error. Zero-shot settings run once (seed 0: nothing is sampled); k-shot settings run once per seed.
    Run folders go to ``<results_dir or results/>/<study>/<dataset>/<method>_<k>shot[_<variant>]_seed<s>``,
    replaced on a re-run (only folders zsad wrote are ever replaced).

    Every run is checked (:func:`zsad.study.plan_run`) before the first one computes, so a bad later setting fails
    in seconds, not after hours of feature passes. With ``resume`` (the default) a finished run folder computed
    from the same parameters, code, weights, prompt files and images (:func:`zsad.study.reusable`) is read back
    instead of recomputed, so an interrupted table continues where it stopped.

    ``executor="ray"`` runs the runs as Ray tasks (cluster from ``$RAY_ADDRESS``, else a local one; a task asks for
    a GPU when the driver sees one).

    Returns ``{"metrics": tidy DataFrame of every run, "provenance": {run id: dict}, "paths": [Path, ...]}``.

    Parameters
    ----------
    study : the folder under ``results_dir`` (the chapter's name, e.g. ``t02_main``).
    settings : list of dicts, each with ``method`` and ``shots`` and optionally other :func:`zsad.study.predict`
        arguments.
    datasets, roots : comma-separated study datasets and their roots (empty: the default).
    seeds : few-shot reference draws (k-shot settings run once per seed).
    results_dir : where the study folder goes (default ``results/``).
    executor : ``"local"`` or ``"ray"``.
    progress : tqdm bars per feature pass.
    resume : read finished run folders of the same plan back instead of recomputing them.
    gpu_fraction : None, float or "auto"
        Ray only: the share of a GPU each task asks for (:func:`zsad.distributed.gpu_request`; None: a whole
        GPU). The workers' host, pid, GPU request and times go to ``<results_dir>/<study>/ray_workers.jsonl``.
    **predict_kwargs
        Table-wide :func:`zsad.study.predict` arguments (method-specific ones reach the methods that use them).
    """
    names = _names(datasets)
    if not names:
        raise ValueError("datasets is empty: name at least one study dataset")
    if not settings:
        raise ValueError(f"table {study!r} has no settings to run")
    given_roots = _names(roots)
    if len(given_roots) > len(names):
        raise ValueError(f"{len(given_roots)} roots given for {len(names)} datasets ({', '.join(names)})")
    root_of = dict(zip(names, given_roots + [""] * len(names)))
    seed_list = _ints(seeds)
    if any(k for k in (int(st["shots"]) for st in settings)) and not seed_list:
        raise ValueError("seeds is empty: k-shot settings need at least one reference draw")
    specific = [k for k, v in predict_kwargs.items() if v is not None and k in SPECIFIC_ARGUMENTS
                and k not in ("model", "checkpoint", "cnn_checkpoint")]
    for key in specific:
        if not any(key in METHODS[st["method"]].uses for st in settings if st["method"] in METHODS):
            raise ValueError(f"{key} applies to none of this table's methods "
                             f"({', '.join(sorted({st['method'] for st in settings}))})")
    out_root = Path(results_dir or config.RESULTS_DIR) / study
    jobs = {}
    for dataset in names:
        for setting in settings:
            setting = dict(setting)
            k = int(setting["shots"])
            for seed in (seed_list if k else [0]):
                rid = run_id(dataset, setting["method"], k, seed, setting.get("variant", ""))
                if rid in jobs:
                    raise ValueError(f"two settings of table {study!r} give the same run {rid}: give them "
                                     "different variants")
                jobs[rid] = dict(dataset=dataset, root=root_of[dataset] or None, seed=seed, out=out_root / rid,
                                 overwrite=True, **_job_kwargs({**setting, "shots": k}, predict_kwargs))
    if executor not in ("local", "ray"):
        raise ValueError(f"unknown executor {executor!r}; choose 'local' or 'ray'")
    if gpu_fraction is not None and executor != "ray":
        raise ValueError(f"gpu_fraction (--gpu-fraction) is a request of Ray tasks: use executor='ray', "
                         f"not {executor!r}")
    plans = {rid: plan_run(**job) for rid, job in jobs.items()}  # every run checked before any computes
    done = {rid: run for rid, plan in plans.items() if resume and (run := reusable(plan)) is not None}
    todo = [rid for rid in jobs if rid not in done]
    if executor == "ray" and todo:
        from zsad.distributed import run_on_ray

        out_root.mkdir(parents=True, exist_ok=True)
        computed = dict(zip(todo, run_on_ray([jobs[rid] for rid in todo], progress=progress,
                                             gpu_fraction=gpu_fraction, worker_log=out_root / "ray_workers.jsonl")))
    else:
        computed = {rid: execute(plans[rid], progress) for rid in todo}
    results = [done.get(rid) or computed[rid] for rid in jobs]
    write_manifest(out_root, list(jobs))  # readers of the study folder see exactly this table's runs
    # Metrics as written to the run folders (the same values whether a run was computed now or read back).
    metrics = [done[rid]["metrics"] if rid in done else read_run(computed[rid]["path"])["metrics"] for rid in jobs]
    return {"metrics": pd.concat(metrics, ignore_index=True),
            "provenance": {rid: r["provenance"] for rid, r in zip(jobs, results)},
            "paths": [r["path"] for r in results]}


def supports_shots(method: str, k: int) -> bool:
    """Whether a registered method has a ``k``-shot setting.

    Parameters
    ----------
    method : a registered method name.
    k : the shot count.

    Returns
    -------
    bool
    """
    kind = METHODS[method].shots
    return k >= 1 if kind == "k" else (k == 0 if kind == "zero" else k >= 0)


def grid_settings(methods="fade,winclip,patchcore", shots="0,1,2,4") -> list[dict]:
    """Methods x shot counts (FADE's Tab. 1/2). A (method, k) pair the method does not have (PatchCore has no
    zero-shot) is left out, as in the paper's table; a shot count that no method has, an unknown method or a
    negative count is an error.

    Parameters
    ----------
    methods : comma-separated method names (or a sequence).
    shots : comma-separated shot counts (or a sequence).

    Returns
    -------
    list of dict
        ``{"method", "shots"}`` per run setting.
    """
    method_list, shot_list = _names(methods), _ints(shots)
    if not method_list or not shot_list:
        raise ValueError(f"the grid needs methods and shots, got methods={methods!r}, shots={shots!r}")
    for m in method_list:
        if m not in METHODS:
            raise ValueError(f"unknown method {m!r}; choose from {', '.join(sorted(METHODS))}")
    for k in shot_list:
        if k < 0:
            raise ValueError(f"shots must be >= 0, got {k}")
        if not any(supports_shots(m, k) for m in method_list):
            raise ValueError(f"no method of {', '.join(method_list)} has a {k}-shot setting; "
                             + "; ".join(f"{m}: {_shot_text(m)}" for m in method_list))
    return [{"method": m, "shots": k} for m in method_list for k in shot_list if supports_shots(m, k)]


def skipped_pairs(methods, shots) -> list[str]:
    """The (method, k) pairs :func:`grid_settings` leaves out, in words (printed under the table).

    Parameters
    ----------
    methods, shots : as :func:`grid_settings`.

    Returns
    -------
    list of str
    """
    return [f"{m} {k}-shot ({m}: {_shot_text(m)})" for m in _names(methods) for k in _ints(shots)
            if m in METHODS and not supports_shots(m, k)]


def _shot_text(method: str) -> str:
    return {"k": "k-shot only, shots >= 1", "zero": "zero-shot only", "any": "any shots >= 0"}[METHODS[method].shots]


def run_grid(study: str, *, methods="fade,winclip,patchcore", shots="0,1,2,4", **kwargs) -> dict:
    """:func:`run_settings` over :func:`grid_settings`.

    Parameters
    ----------
    study : the results folder of the table.
    methods, shots : as :func:`grid_settings`.
    **kwargs
        :func:`run_settings` arguments.

    Returns
    -------
    dict
        As :func:`run_settings`.
    """
    return run_settings(study, grid_settings(methods, shots), **kwargs)


def gem_vs_clip_settings(shots: int = 1) -> list[dict]:
    """FADE's Tab. 3 (language-guided zero-shot AS with CLIP vs GEM patches) and the full grid its conclusion asks
    for: the token stream of language AC and AS, of vision-guided zero-shot AS and of vision-guided k-shot AS.

    Parameters
    ----------
    shots : the shot count of the k-shot vision rows.

    Returns
    -------
    list of dict
    """
    out = []
    for stream in ("clip", "gem"):
        out.append({"method": "fade", "shots": 0, "mode": "language", "variant": f"language {stream}",
                    "options": {"language_stream": stream, "ac_stream": stream}})
        out.append({"method": "fade", "shots": 0, "mode": "vision", "variant": f"vision {stream}",
                    "options": {"vision_stream": stream}})
        out.append({"method": "fade", "shots": shots, "mode": "vision", "variant": f"vision {stream}",
                    "options": {"vision_stream": stream}})
    return out


def scale_settings(shots="0,1,2,4", scales="240;448;896;240,448,896") -> list[dict]:
    """FADE's Tab. 8/9: single scales and their combination, for every shot count (official fusion).

    Parameters
    ----------
    shots : comma-separated shot counts.
    scales : ``;``-separated scale sets, each one size or a comma-separated combination.

    Returns
    -------
    list of dict
    """
    out = []
    for sizes in (s.strip() for s in str(scales).split(";") if s.strip()):
        label = "multi-scale" if "," in sizes else f"{sizes} px"
        out += [{"method": "fade", "shots": k, "sizes": sizes, "variant": label} for k in _ints(shots)]
    return out


def prompt_settings(prompt_files) -> list[dict]:
    """FADE's Tab. 7: the segmentation ensemble as WinCLIP prompts only, LLM prompts only, and their union
    (language-guided zero-shot, where the prompts matter most); ``prompt_files`` are the LLM ensembles.

    Parameters
    ----------
    prompt_files : the LLM prompt files (names or paths; comma-separated or a sequence).

    Returns
    -------
    list of dict
    """
    files = _names(prompt_files) if isinstance(prompt_files, str) else list(prompt_files)
    base = {"method": "fade", "shots": 0, "mode": "language"}
    out = [{**base, "variant": "winclip prompts", "prompts": "none"}]
    for path in files:
        name = Path(path).stem
        out.append({**base, "variant": f"{name} only", "prompts": [path], "winclip_in_segmentation": False})
        out.append({**base, "variant": f"winclip + {name}", "prompts": [path]})
    return out


def tamura_settings(random_words="0,3") -> list[dict]:
    """Tamura 2023's comparison: WinCLIP zero-shot against the random-word FFN on the same backbone, with the
    category-agnostic word "object" or the class name, and with 0 or several random words.

    Parameters
    ----------
    random_words : comma-separated numbers of random words per prompt.

    Returns
    -------
    list of dict
    """
    out = [{"method": "winclip", "shots": 0, "variant": "class names"}]
    for n in _ints(random_words):
        out.append({"method": "tamura", "shots": 0, "variant": f"object, {n} random words",
                    "options": {"n_random_words": n, "object_word": "object"}})
    out.append({"method": "tamura", "shots": 0, "variant": "class names, " + f"{_ints(random_words)[-1]} random words",
                "options": {"n_random_words": _ints(random_words)[-1], "object_word": "class"}})
    return out


def cheung_settings(baselines: bool = True) -> list[dict]:
    """Cheung et al.'s Tables II-V: the full method and its two ablation rows (zero-shot, image level), and the
    baselines of Tables II/III that zsad has (WinCLIP 0-shot, PatchCore 1-shot; SPADE and PaDiM it has not).

    Parameters
    ----------
    baselines : also the WinCLIP 0-shot and PatchCore 1-shot baselines.

    Returns
    -------
    list of dict
    """
    rows = [{"method": m, "shots": 0} for m in ("cheung", "cheung_no_prompt_generation", "cheung_no_object_detection")]
    if baselines:
        rows += [{"method": "winclip", "shots": 0}, {"method": "patchcore", "shots": 1}]
    return rows


def guidance_settings(shots="0,1,4") -> list[dict]:
    """FADE's Tab. 5 (AC) and 6 (AS): language guidance only, vision guidance only, and both (the official fusion),
    at each shot count.

    Parameters
    ----------
    shots : comma-separated shot counts.

    Returns
    -------
    list of dict
    """
    out = []
    for k in _ints(shots):
        out += [{"method": "fade", "shots": k, "mode": "language", "variant": "language only"},
                {"method": "fade", "shots": k, "mode": "vision", "variant": "vision only"},
                {"method": "fade", "shots": k}]
    return out


def musc_settings(pool_seeds="0,1,2", pool_fraction: float = 0.5) -> list[dict]:
    """The "Beyond FADE" chapter: FADE at 0 shots (its official fusion, and vision guidance alone at 240 px, which
    scores each image against its own GEM patches) against MuSc, which scores it against the other test images of
    its class.

    MuSc reads the ordinary (CLIP) residual stream of four intermediate blocks, as the paper; the rows "gem tokens"
    and "clip tokens" run its mutual scoring on the final tokens of one stream at 240 px instead, so the GEM row
    reads the same tokens as FADE's vision-only row and differs from it in *whom* a patch is compared with (the
    other images, not the image itself) and in MuSc's aggregation and 30 % rule. The last rows score each image
    against a seeded random ``pool_fraction`` of the other images, one run per seed of ``pool_seeds``: MuSc is
    transductive, and these rows show how much its numbers depend on which other images are in the test set.

    Parameters
    ----------
    pool_seeds : seeds of the random pools (comma-separated or a sequence), one run each.
    pool_fraction : share of the other test images in each pool, in (0, 1).

    Returns
    -------
    list of dict
        The settings, as :func:`run_settings` takes them.
    """
    # MuSc first: its one tower pass at 240 px fills the ordinary token entries too, which FADE then reads (run
    # after FADE, MuSc would need a second pass at 240 px for its layers)
    share = f"{round(100 * pool_fraction)}%"
    rows = [{"method": "musc", "shots": 0},
            {"method": "musc", "shots": 0, "variant": "gem tokens", "options": {"features": "gem"}},
            {"method": "musc", "shots": 0, "variant": "clip tokens", "options": {"features": "clip"}}]
    rows += [{"method": "musc", "shots": 0, "variant": f"{share} of the others, pool seed {s}",
              "options": {"pool_fraction": pool_fraction, "pool_seed": s}} for s in _ints(pool_seeds)]
    rows += [{"method": "fade", "shots": 0},
             {"method": "fade", "shots": 0, "mode": "vision", "sizes": "240", "variant": "vision only, 240 px"}]
    return rows


#: The study's tables by name: (run folder under results/, the same as the table's notebook; settings function).
#: The settings function's keyword arguments are the table's own parameters (``zsad grid <name> --shots ...``).
TABLES = {
    "main": ("t02_main", grid_settings),
    "gem-vs-clip": ("t03_gem_vs_clip", gem_vs_clip_settings),
    "prompts": ("t04_prompts", lambda prompt_files=DEFAULT_PROMPT_FILES: prompt_settings(prompt_files)),
    "scales": ("t05_scales", scale_settings),
    "cheung": ("t06_cheung", cheung_settings),
    "tamura": ("t07_tamura", tamura_settings),
    "guidance": ("t09_guidance", guidance_settings),
    "musc": ("t11_musc", musc_settings),
}


def table_parameters(name: str) -> dict:
    """A table's own parameters and their defaults (the keyword arguments of its settings function).

    Parameters
    ----------
    name : a key of :data:`TABLES`.

    Returns
    -------
    dict
        ``{parameter: default}``.
    """
    if name not in TABLES:
        raise ValueError(f"unknown table {name!r}; choose one of {', '.join(TABLES)}")
    return {p.name: p.default for p in inspect.signature(TABLES[name][1]).parameters.values()}


def run_table(name: str, table_args: dict | None = None, **kwargs) -> dict:
    """Run one of the study's :data:`TABLES` with :func:`run_settings`; ``table_args`` are its own parameters
    (see :func:`table_parameters`), ``kwargs`` go to :func:`run_settings` (datasets, seeds, executor, model, ...).

    Parameters
    ----------
    name : a key of :data:`TABLES`.
    table_args : the table's own parameters (:func:`table_parameters`).
    **kwargs
        :func:`run_settings` arguments.

    Returns
    -------
    dict
        As :func:`run_settings`.
    """
    allowed = table_parameters(name)
    unknown = sorted(set(table_args or {}) - set(allowed))
    if unknown:
        raise ValueError(f"table {name!r} has no parameter {', '.join(unknown)}; its parameters: "
                         f"{', '.join(allowed) or 'none'}")
    study, settings = TABLES[name]
    return run_settings(study, settings(**(table_args or {})), **kwargs)


def read_results(results_dir=None, studies=None) -> pd.DataFrame:
    """Every finished run's metrics under ``results_dir`` (default ``results/``), with a ``study`` column (the
    chapter's folder, e.g. ``t02_main``); ``studies`` limits it to those folders. A study folder's runs are those
    its table last planned (:func:`zsad.results.finished_runs`), not older folders left beside them.

    Parameters
    ----------
    results_dir : the results folder (default ``results/``).
    studies : study folder names to keep (comma-separated or a sequence); default all.

    Returns
    -------
    pandas.DataFrame
        Tidy metrics of every finished run, with a ``study`` column.
    """
    root = Path(results_dir or config.RESULTS_DIR)
    frames = [read_run(run)["metrics"].assign(study=study) for study, run in finished_runs(root, studies)]
    if not frames:
        raise ValueError(f"no finished run folders under {root} (run the chapters first: make notebooks)")
    return pd.concat(frames, ignore_index=True)
