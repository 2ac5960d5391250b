"""Whole study from one feature pass against the main table alone (issue 8's 1.3x target).

Runs the book's notebooks with papermill, each in a fresh kernel, exactly as ``make notebooks`` does, but with the
feature cache and the run folders in temporary folders so that nothing committed is touched:

1. ``main cold``: an empty cache, the main-results notebook (t02) alone;
2. ``study cold``: another empty cache, every notebook in book order (t02's features serve all later tables);
3. ``study warm``: the same notebooks again on the now full cache: what the study costs besides feature passes
   (scoring, metrics with bootstrap intervals, text encoding of new prompts, Tamura's FFN, Cheung's detector, kernel
   start-up). ``study cold - study warm`` is the feature work.

    .venv/bin/python benchmarks/bench_study_vs_main.py --out /tmp/study.json                  # default job, ~30 min
    .venv/bin/python benchmarks/bench_study_vs_main.py --model ViT-B-16-plus-240 --max-images 3 --datasets synthetic

Extra ``-p NAME VALUE`` pairs go to every notebook (papermill parameters, see a notebook's first code cell).

Text work: the number of prompt embeddings each cache holds afterwards (kind ``text``, one entry per prompt and
wrapper) is recorded; with ``--text-cost FILE`` (a ``bench_text_context.py`` JSON) the report adds what the study
would cost with every prompt beyond the main table's encoded at trimmed rather than full context (measured seconds
per prompt of the model, averaged over its prompt sets): ``ratio_if_text_trimmed``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted(p.stem for p in (ROOT / "notebooks").glob("t*.ipynb"))
MAIN = "t02_main_results"


def run_notebook(name: str, params: list[tuple[str, str]], env: dict, out_dir: Path) -> float:
    """Wall seconds of one papermill run of ``notebooks/<name>.ipynb`` (its executed copy goes to ``out_dir``)."""
    cmd = [sys.executable, "-m", "papermill", "--cwd", str(ROOT / "notebooks"), "--no-progress-bar", "--log-level",
           "WARNING", str(ROOT / "notebooks" / f"{name}.ipynb"), str(out_dir / f"{name}.ipynb")]
    for key, value in params:
        cmd += ["-p", key, value]
    start = time.perf_counter()
    subprocess.run(cmd, env=env, check=True)
    return time.perf_counter() - start


def phase(label: str, names: list[str], params, cache: Path, results: Path, work: Path) -> dict[str, float]:
    env = {**os.environ, "ZSAD_CACHE": str(cache), "ZSAD_RESULTS": str(results), "HF_HUB_OFFLINE": "1"}
    out = work / label.replace(" ", "_")
    out.mkdir(parents=True, exist_ok=True)
    times = {}
    for name in names:
        times[name] = run_notebook(name, params, env, out)
        print(f"{label:>10}  {name:<22} {times[name]:8.1f} s", flush=True)
    return times


def text_entry_count(cache: Path) -> int:
    """Prompt embeddings in a feature cache (kind ``text``)."""
    folder = cache / "text"
    return sum(1 for _ in folder.rglob("*.safetensors")) if folder.is_dir() else 0


def text_cost(path: Path, model: str) -> dict[str, float]:
    """Seconds per prompt, full and trimmed context, averaged over ``model``'s prompt sets in a
    ``bench_text_context.py`` report (weighted by their prompt counts)."""
    sets = json.loads(path.read_text())["models"][model]["prompt_sets"].values()
    n = sum(s["prompts"] for s in sets)
    return {c: sum(s["seconds_per_prompt"][c] * s["prompts"] for s in sets) / n for c in ("full", "trim")}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, help="write the figures as JSON here")
    ap.add_argument("--model", help="notebook parameter `model` (default: the notebooks' own, zsad-tiny-vit)")
    ap.add_argument("--max-images", help="notebook parameter `max_images`")
    ap.add_argument("--datasets", help="notebook parameter `datasets`")
    ap.add_argument("--seeds", help="notebook parameter `seeds`")
    ap.add_argument("-p", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                    help="any other notebook parameter")
    ap.add_argument("--notebooks", nargs="+", default=NOTEBOOKS, help="the study (default: every notebook)")
    ap.add_argument("--text-cost", type=Path, help="bench_text_context.py JSON: per-prompt full / trimmed seconds")
    ap.add_argument("--work", type=Path, help="keep caches and executed notebooks here (default: a temp folder)")
    args = ap.parse_args(argv)
    params = [(k, v) for k, v in (("model", args.model), ("max_images", args.max_images),
                                  ("datasets", args.datasets), ("seeds", args.seeds)) if v is not None] + args.p
    if MAIN not in args.notebooks:
        ap.error(f"the study must include {MAIN}")
    order = [MAIN] + [n for n in args.notebooks if n != MAIN]  # later tables read the main table's features

    with tempfile.TemporaryDirectory(prefix="zsad-bench-study-") as tmp:
        work = args.work or Path(tmp)
        main_cold = phase("main cold", [MAIN], params, work / "cache_main", work / "results_main", work)
        study_cold = phase("study cold", order, params, work / "cache_study", work / "results_study", work)
        study_warm = phase("study warm", order, params, work / "cache_study", work / "results_study", work)
        text_entries = {label: text_entry_count(work / f"cache_{label}") for label in ("main", "study")}

    total = {k: sum(v.values()) for k, v in (("main_cold", main_cold), ("study_cold", study_cold),
                                             ("study_warm", study_warm))}
    report = {
        "date": time.strftime("%Y-%m-%d %H:%M"), "machine": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(), "load_average_end": os.getloadavg(), "python": platform.python_version(),
        "params": dict(params), "notebooks": order, "seconds": {"main_cold": main_cold, "study_cold": study_cold,
                                                                "study_warm": study_warm},
        "total_seconds": total,
        "ratio_study_to_main": total["study_cold"] / total["main_cold"],
        "feature_seconds_study": total["study_cold"] - total["study_warm"],
        "text_entries": text_entries,
    }
    if args.text_cost:
        cost = text_cost(args.text_cost, args.model or "zsad-tiny-vit")
        extra = text_entries["study"] - text_entries["main"]
        saved = extra * (cost["full"] - cost["trim"])
        report["text_cost_seconds_per_prompt"] = cost
        report["ratio_if_text_trimmed"] = (total["study_cold"] - saved) / total["main_cold"]
    print(json.dumps({k: report[k] for k in ("total_seconds", "ratio_study_to_main", "feature_seconds_study")},
                     indent=1))
    if args.out:
        args.out.write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
