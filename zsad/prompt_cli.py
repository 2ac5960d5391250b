"""``zsad prompts ...``: generate, show and check the seeded LLM prompt ensembles (thin shells over
zsad.prompt_generation).

``zsad prompts generate --recipe llm_generic --seed 0 --out prompts/llm_generic_seed0.json``
``zsad prompts generate --recipe llm_class --dataset mvtec --seed 0 --out prompts/llm_class_mvtec.json``
``zsad prompts generate --recipe llm_class --classes "bottle cap,pcb"``  (your own classes: one cached file per
class, the ones ``zsad inspect`` / ``zsad.Detector`` use; with ``--out FILE``, one file holding them all)
``zsad prompts show prompts/llm_generic_seed0.json``
``zsad prompts check``  (regenerates every committed file under prompts/ and fails if any byte differs)
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

DATASETS = ("mvtec", "visa", "magnetic_tile")


def parse_classes(text: str | None) -> list[str] | None:
    """``--classes`` as a list: comma-separated class names, each stripped of surrounding spaces.

    Parameters
    ----------
    text : str or None
        E.g. ``"bottle cap,pcb"``.

    Returns
    -------
    list of str or None
        None when not given; an empty item (``"a,,b"``) is a ValueError naming the option.
    """
    if text is None:
        return None
    names = [c.strip() for c in text.split(",")]
    if not all(names):
        raise ValueError(f"--classes {text!r}: an empty class name (comma-separated names expected)")
    return names


def _cmd_generate(args) -> int:
    from zsad.prompt_generation import class_prompt_file, generate_ensemble, write_prompt_file

    classes = parse_classes(args.classes)
    if classes and args.recipe != "llm_class":
        raise ValueError("--classes applies to --recipe llm_class only")
    start = time.perf_counter()
    if args.out is None:
        if not classes or args.dataset:
            raise ValueError("--out is required (without it, only --recipe llm_class --classes NAMES writes to the "
                             "cache)")
        for cls in classes:  # one cached file per class, the same ones zsad inspect / zsad.Detector read
            path = class_prompt_file(cls, args.seed, model=args.model, n_threads=args.threads, progress=True)
            print(f"{cls}: {path}")
        print(f"{len(classes)} class file(s) ready ({time.perf_counter() - start:.0f} s)")
        return 0
    if args.out.exists() and not args.overwrite:
        raise ValueError(f"{args.out} exists; pass --overwrite to replace it")
    data = generate_ensemble(args.recipe, args.seed, model=args.model, dataset=args.dataset, classes=classes,
                             n_threads=args.threads, progress=True)
    write_prompt_file(args.out, data)
    n_tok = sum(r["n_tokens"] for r in data["raw_output"])
    counts = ", ".join(f"{side} {data['counts'][side]['kept']} kept of {data['counts'][side]['raw']}"
                       for side in ("normal", "abnormal"))
    print(f"{args.out}: {counts} ({len(data['raw_output'])} completions, {n_tok} tokens, "
          f"{time.perf_counter() - start:.0f} s)")
    return 0


def _sample(prompts: list[str], n: int) -> list[str]:
    """``n`` prompts spread evenly over the list (deterministic)."""
    if len(prompts) <= n:
        return list(prompts)
    return [prompts[round(i * (len(prompts) - 1) / (n - 1))] for i in range(n)] if n > 1 else prompts[:1]


def _show_side(name: str, block: dict, n: int, indent: str = "  ") -> list[str]:
    c = block["counts"]
    drops = ", ".join(f"{rule} {k}" for rule, k in c["dropped_by_rule"].items() if k)
    lines = [f"{indent}{name}: {c['kept']} prompts kept of {c['raw']} generated" + (f" (dropped: {drops})" if drops
                                                                                    else "")]
    lines += [f"{indent}  - {p}" for p in _sample(block["prompts"], n)]
    return lines


def show_text(path, n: int = 5, cls: str | None = None) -> str:
    """The report ``zsad prompts show`` prints: provenance, counts per side (and class), a sample of prompts.

    Parameters
    ----------
    path : path
        A prompt file (generated or hand-written).
    n : int
        Prompts shown per side.
    cls : str, optional
        The class to sample from an llm_class file (default: the first).

    Returns
    -------
    str
        The report.
    """
    import json

    from zsad.prompts import FORMAT, SIDES, read_prompt_file

    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"{path}: prompt file not found") from None
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: not a readable JSON prompt file ({exc})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        prompts = read_prompt_file(path)  # a hand-written file: just the two sides
        out = [f"{path}: hand-written prompt file"]
        for side in SIDES:
            out += [f"  {side}: {len(prompts[side])} prompts"] + [f"    - {p}" for p in _sample(prompts[side], n)]
        return "\n".join(out)
    m = data["model"]
    s = data["sampling"]
    out = [f"{path}: {data['ensemble']}" + (f" ({data['dataset']})" if data.get("dataset") else "")
           + f", seed {data['seed']}",
           f"  model {m['file']} (sha256 {m['sha256'][:12]}), llama-cpp-python {data['llama_cpp_python']}, "
           f"{m['n_threads']} thread(s)",
           f"  sampling: temperature {s['temperature']}, top_k {s['top_k']}, top_p {s['top_p']}, min_p {s['min_p']}, "
           f"repeat_penalty {s['repeat_penalty']} (last {s['repeat_last_n']} tokens)",
           f"  {len(data['raw_output'])} completions, {sum(r['n_tokens'] for r in data['raw_output'])} tokens"]
    if data["ensemble"] == "llm_generic":
        out.append("  recipes: " + ", ".join(data["recipes"]))
        for side in SIDES:
            out += _show_side(side, data[side], n)
            out += [f"      {r}: {v['kept']} of {v['raw']}" for r, v in data[side]["counts"]["by_recipe"].items()]
        return "\n".join(out)
    classes = data["classes"]
    if cls is not None and cls not in classes:
        raise ValueError(f"{path}: no class {cls!r}; the file holds {', '.join(classes)}")
    out.append("  " + ", ".join(f"{side} {data['counts'][side]['kept']} kept of {data['counts'][side]['raw']}"
                                for side in SIDES)
               + f" over {len(classes)} classes")
    for c in classes:
        counts = "  ".join(f"{side} {classes[c][side]['counts']['kept']}/{classes[c][side]['counts']['raw']}"
                           for side in SIDES)
        out.append(f"    {c:<14} {counts}")
    shown = cls or next(iter(classes))
    out.append(f"  class {shown} ({classes[shown]['name']}: {classes[shown]['hint']})")
    for side in SIDES:
        out += _show_side(side, classes[shown][side], n, indent="    ")
    return "\n".join(out)


def _cmd_show(args) -> int:
    print(show_text(args.file, n=args.n, cls=args.cls))
    return 0


def _cmd_check(args) -> int:
    from zsad.prompt_generation import committed_prompt_files, regenerate_prompt_file

    files = list(args.files) or committed_prompt_files()
    if not files:
        raise ValueError("no generated prompt files to check under prompts/")
    bad = []
    for path in files:
        start = time.perf_counter()
        same, _ = regenerate_prompt_file(path, model=args.model, progress=True)
        print(f"{'OK     ' if same else 'DIFFERS'} {path} ({time.perf_counter() - start:.0f} s)", flush=True)
        if not same:
            bad.append(str(path))
    if bad:
        raise ValueError(f"prompts check failed: {len(bad)} of {len(files)} file(s) differ from their regeneration: "
                         f"{', '.join(bad)} (same model file and llama.cpp build expected; see prompts/README.md)")
    print(f"all {len(files)} prompt file(s) regenerate byte-identically")
    return 0


def register(subparsers) -> argparse.ArgumentParser:
    """Add the ``prompts`` command tree (generate, show, check) to the ``zsad`` sub-command parsers.

    Parameters
    ----------
    subparsers : argparse._SubParsersAction
        What ``ArgumentParser.add_subparsers`` returned for ``zsad``.

    Returns
    -------
    argparse.ArgumentParser
        The ``prompts`` parser.
    """
    top = subparsers.add_parser("prompts", help="generate, show and check the seeded LLM prompt ensembles")
    sub = top.add_subparsers(dest="prompts_command", required=True)

    p = sub.add_parser("generate", help="generate one ensemble file with the seeded local LLM (minutes)")
    p.add_argument("--recipe", required=True, choices=["llm_generic", "llm_class"],
                   help="llm_generic: five FADE-style recipes without class names; llm_class: per-class descriptions")
    p.add_argument("--seed", type=int, default=0, help="generation seed [0] (the study uses 0..4 for llm_generic, "
                                                       "0 for llm_class)")
    p.add_argument("--model", type=Path, help="a GGUF model file (default: the packaged Gemma 3 270M, assembled once)")
    p.add_argument("--dataset", choices=DATASETS, help="llm_class: every class of this dataset (or the --classes "
                                                       "subset of it)")
    p.add_argument("--classes", help="llm_class: comma-separated class names, e.g. \"bottle cap,pcb\"; without "
                                     "--dataset any names (your own classes); without --out one cached file each")
    p.add_argument("--threads", type=int, help="llama.cpp threads (default 1; recorded; outputs are compared "
                                               "across runs with the same value)")
    p.add_argument("--out", type=Path, help="JSON file to write (atomically); optional only with --classes "
                                            "(then the cache)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing file")
    p.set_defaults(func=_cmd_generate)

    p = sub.add_parser("show", help="counts, provenance and a sample of a prompt file")
    p.add_argument("file", type=Path)
    p.add_argument("-n", type=int, default=5, help="prompts shown per side")
    p.add_argument("--cls", help="class to sample from an llm_class file (default: the first)")
    p.set_defaults(func=_cmd_show)

    p = sub.add_parser("check", help="regenerate committed prompt files and fail if any byte differs (long)")
    p.add_argument("files", nargs="*", type=Path, help="files to check (default: every generated file in prompts/)")
    p.add_argument("--model", type=Path, help="the GGUF the files were generated with (default: the packaged one)")
    p.set_defaults(func=_cmd_check)
    return top
