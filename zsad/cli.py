"""The ``zsad`` command line. Each sub-command is a thin shell over one package function."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

#: ``zsad grid`` tables (the keys of :data:`zsad.grids.TABLES`; listed here so ``zsad --help`` imports no torch,
#: and tested to agree).
GRID_TABLES = ["main", "gem-vs-clip", "prompts", "scales", "cheung", "tamura", "guidance", "musc"]


def _gpu_fraction(text: str):
    """``--gpu-fraction``: "auto" or a number (checked by zsad.distributed.gpu_request)."""
    if text == "auto":
        return text
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1] or 'auto', got {text!r}") from None


def _human(n: int) -> str:
    """A byte count in B / KiB / MiB / GiB."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def _cmd_cache_info(args) -> int:
    from zsad.cache import FeatureCache

    report = FeatureCache(args.root).info()
    print(f"cache root: {report['root']}")
    print(f"{'kind':<8} {'entries':>8} {'bytes':>14} {'size':>10}")
    for kind, row in report["kinds"].items():
        extra = f"  ({row['temp_files']} temporary files)" if row["temp_files"] else ""
        print(f"{kind:<8} {row['entries']:>8} {row['bytes']:>14} {_human(row['bytes']):>10}{extra}")
    print(f"{'total':<8} {report['entries']:>8} {report['bytes']:>14} {_human(report['bytes']):>10}")
    return 0


def _cmd_cache_clear(args) -> int:
    from zsad.cache import FeatureCache

    cache = FeatureCache(args.root)
    removed = cache.clear(args.kind)
    what = f"kind {args.kind}" if args.kind else "all kinds"
    print(f"removed {removed['entries']} entries ({_human(removed['bytes'])}) of {what} from {cache.root}")
    return 0


def _register_cache(sub) -> None:
    """``zsad cache info`` and ``zsad cache clear [--kind K]``."""
    from zsad.cache import CACHE_ENV, KINDS

    parser = sub.add_parser("cache", help="the on-disk feature cache: entries and bytes per kind, clearing")
    cache_sub = parser.add_subparsers(dest="cache_command", required=True)
    root_help = f"cache folder (default ${CACHE_ENV}, else <project>/cache in a clone, ~/.cache/zsad installed)"
    p = cache_sub.add_parser("info", help="root, entries and bytes per kind")
    p.add_argument("--root", type=Path, help=root_help)
    p.set_defaults(func=_cmd_cache_info)
    p = cache_sub.add_parser("clear", help="delete cached features (all kinds, or one)")
    p.add_argument("--kind", choices=KINDS, help="only this kind of features")
    p.add_argument("--root", type=Path, help=root_help)
    p.set_defaults(func=_cmd_cache_clear)


def _cmd_doctor(args) -> int:
    from zsad import doctor

    report = doctor.collect()
    print(doctor.format_report(report))
    return 0


def _cmd_synth(args) -> int:
    from zsad.data import make_synthetic

    classes = tuple(c.strip() for c in args.classes.split(",") if c.strip())
    if not classes:
        raise ValueError("--classes is empty: name at least one class")
    out = make_synthetic(args.out, seed=args.seed, classes=classes, size=args.size, n_train=args.n_train,
                         n_test_good=args.n_test_good, n_test_defect=args.n_test_defect, overwrite=args.overwrite)
    print(f"synthetic dataset (seed {args.seed}) written to {out}")
    return 0


def _cmd_summary(args) -> int:
    from zsad.study import dataset_overview

    print(dataset_overview(args.dataset, str(args.root or "")).to_string(index=False))
    return 0


def _cmd_eval(args) -> int:
    from zsad.evaluate import evaluate_predictions
    from zsad.results import write_text_atomic

    if args.out and (args.out.is_dir() or args.out.suffix.lower() != ".csv"):
        raise ValueError(f"--out {args.out}: name a .csv file to write (not a folder)")
    table = evaluate_predictions(args.predictions, n_boot=args.n_boot, seed=args.seed)
    if args.out:
        write_text_atomic(args.out, table.to_csv(index=False, float_format="%.10g", lineterminator="\n"))
        print(f"metrics written to {args.out}")
    wide = table.pivot_table(index="class", columns="metric", values="value", sort=False)
    print(wide.to_string(float_format=lambda v: f"{v:.4f}"))
    return 0


def _cmd_predict(args) -> int:
    from zsad.study import predict
    from zsad.tables import weights_text

    # Options left out stay None: predict applies the method's defaults and refuses options the method does not use.
    res = predict(args.method, args.dataset, args.root, args.classes, model=args.model, checkpoint=args.checkpoint,
                  cnn_checkpoint=args.cnn_checkpoint, shots=args.shots, seed=args.seed, mode=args.mode,
                  sizes=args.sizes, prompts=args.prompts, class_prompts=args.class_prompts, detector=args.detector,
                  max_images=args.max_images, n_boot=args.n_boot, cache=not args.no_cache, autocast=args.autocast,
                  map_storage=args.map_storage, device=args.device, out=args.out, overwrite=args.overwrite)
    wide = res["metrics"].pivot_table(index="class", columns="metric", values="value", sort=False)
    print(wide.to_string(float_format=lambda v: f"{v:.4f}"))
    print(weights_text({"run": res["provenance"]}))
    print(f"run folder: {res['path']}")
    return 0


_GRID_DEFAULTS = {"datasets": "synthetic,magnetic_tile", "seeds": "0,1", "model": "ViT-B-16-plus-240",
                  "max_images": None, "n_boot": 200}


def _cmd_grid(args) -> int:
    from zsad.grids import run_table, skipped_pairs, table_parameters
    from zsad.preset import PAPER_CLASS_PROMPTS, preset_parameters
    from zsad.tables import format_table, summarise, weights_text

    table_args = {k: v for k, v in (("methods", args.methods), ("shots", args.shots), ("scales", args.scales),
                                     ("prompt_files", args.prompt_files), ("random_words", args.random_words))
                  if v is not None}
    if args.table == "gem-vs-clip" and "shots" in table_args:
        table_args["shots"] = int(table_args["shots"])  # one k for the k-shot rows
    # explicit options > the preset's values > the built-in defaults
    chosen = {**_GRID_DEFAULTS, **(preset_parameters(args.preset) if args.preset else {}),
              **{k: getattr(args, k) for k in _GRID_DEFAULTS if getattr(args, k) is not None}}
    if args.preset == "paper" and args.table == "cheung" and not args.class_prompts:
        args.class_prompts = PAPER_CLASS_PROMPTS
    run_kwargs = dict(roots=args.roots, results_dir=args.results_dir, executor=args.executor,
                      checkpoint=args.checkpoint, autocast=args.autocast, device=args.device,
                      map_storage=args.map_storage, gpu_fraction=args.gpu_fraction,
                      progress=not args.no_progress, **{**chosen, "max_images": chosen["max_images"] or None})
    for key in ("sizes", "class_prompts", "detector", "cnn_checkpoint"):  # else predict's defaults ($ZSAD_* variables)
        if getattr(args, key):
            run_kwargs[key] = getattr(args, key)
    res = run_table(args.table, table_args, **run_kwargs)
    if args.table == "main":
        defaults = table_parameters("main")  # grid_settings' own defaults
        for text in skipped_pairs(args.methods or defaults["methods"], args.shots or defaults["shots"]):
            print(f"not run: {text}", file=sys.stderr)
    with_metrics = ("auroc", "aupr", "f1_max", "pauroc", "pro", "pf1_max")
    print(format_table(summarise(res["metrics"]), metrics=with_metrics).to_string())
    print(weights_text(res["provenance"]))
    print(f"{len(res['paths'])} run folders under {Path(res['paths'][0]).parent.parent}")
    return 0


def _cmd_study(args) -> int:
    from zsad.preset import check_study, run_study

    files = dict(checkpoint=args.checkpoint, mvtec_root=args.mvtec_root, visa_root=args.visa_root,
                 cnn_checkpoint=args.cnn_checkpoint, detector=args.detector)
    if args.action == "check":
        check = check_study(**files)
        print(check.report())
        return 2 if check.missing else 0
    index = run_study(out_dir=args.out, results_dir=args.results_dir, executor=args.executor, **files)
    print(f"Book: {index}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="zsad", description=__doc__.splitlines()[0] + " See README.md.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("doctor", help="versions, weights, LLM model, datasets and device found on this machine")
    p.set_defaults(func=_cmd_doctor)

    data = sub.add_parser("data", help="dataset tools").add_subparsers(dest="data_command", required=True)
    p = data.add_parser("synth", help="write the seeded synthetic MVTec-layout dataset with planted defects")
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=int, default=128, help="image side in pixels")
    p.add_argument("--n-train", type=int, default=8, help="normal training images per class")
    p.add_argument("--n-test-good", type=int, default=4, help="normal test images per class")
    p.add_argument("--n-test-defect", type=int, default=4, help="defective test images per class and defect type")
    p.add_argument("--classes", default="weave,grain",
                   help="comma-separated classes: the textures weave, grain, the object part (a nut); other names "
                        "alternate the two textures [weave,grain]")
    p.add_argument("--overwrite", action="store_true", help="replace an existing folder")
    p.set_defaults(func=_cmd_synth)
    p = data.add_parser("summary", help="count images per class, split and defect type")
    p.add_argument("--dataset", required=True, choices=["synthetic", "mvtec", "visa", "magnetic_tile", "folder"])
    p.add_argument("--root", type=Path, help="dataset root (default: the embedded or configured one)")
    p.set_defaults(func=_cmd_summary)

    p = sub.add_parser("predict", help="run one method on a dataset and write a run folder")
    p.add_argument("--method", default="fade", help="fade, winclip, patchcore, tamura, cheung, "
                                                    "cheung_no_prompt_generation, cheung_no_object_detection, musc")
    p.add_argument("--dataset", default="synthetic", choices=["synthetic", "mvtec", "visa", "magnetic_tile", "folder"])
    p.add_argument("--root", type=Path, help="dataset root (default: the embedded or configured one)")
    p.add_argument("--classes", help="comma-separated classes (default: all)")
    p.add_argument("--model", help="CLIP methods: open_clip architecture [ViT-B-16-plus-240] (zsad-tiny-vit: tests)")
    p.add_argument("--checkpoint", help="CLIP methods: local open_clip checkpoint (default $ZSAD_CHECKPOINT; none: "
                                        "RANDOM WEIGHTS)")
    p.add_argument("--cnn-checkpoint", help="patchcore: torchvision WideResNet-50 file (default $ZSAD_CNN_CHECKPOINT)")
    p.add_argument("--shots", type=int, default=0)
    p.add_argument("--seed", type=int, default=0, help="few-shot reference sampling seed")
    p.add_argument("--mode", choices=["language", "vision", "both"], help="fade: guidance [both]")
    p.add_argument("--sizes", help="fade: segmentation scales, multiples of 16 [240,448,896]; "
                                    "musc: its one input size [240]")
    p.add_argument("--prompts", help="fade: comma-separated LLM prompt files added to WinCLIP's segmentation "
                                     "ensemble [llm_generic_seed0, as FADE]; none: WinCLIP's ensemble only")
    p.add_argument("--class-prompts", help="LLM class-prompt file (cheung; default: the WinCLIP ensemble)")
    p.add_argument("--detector", help="Grounding DINO folder in Hugging Face format (cheung; default: small RANDOM)")
    p.add_argument("--max-images", type=int, help="test images per class, normal and defective in proportion (0: all)")
    p.add_argument("--n-boot", type=int, default=200, help="bootstrap resamples for intervals (0: none)")
    p.add_argument("--out", required=True, type=Path, help="run folder to write (outside the dataset)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run folder (only one zsad wrote)")
    p.add_argument("--no-cache", action="store_true", help="do not read or write the feature cache")
    p.add_argument("--autocast", choices=["bf16", "fp16"],
                   help="run the image towers under torch.autocast (fp16: CUDA only; default float32)")
    p.add_argument("--map-storage", choices=["float32", "float16", "uint8"], default="float32",
                   help="how float anomaly maps are stored in predictions.npz (FADE's are uint8 already); the "
                        "metrics are those of the maps as stored [float32]")
    p.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: cuda when torch sees a GPU, else cpu)")
    p.set_defaults(func=_cmd_predict)

    p = sub.add_parser("grid", help="run one of the study's tables (every dataset x setting x seed), in-process or "
                                    "on Ray, and print its summary")
    p.add_argument("table", choices=GRID_TABLES)
    p.add_argument("--preset", choices=["default", "paper"],
                   help="paper: ViT-B-16-plus-240, mvtec,visa, all test images, seeds 0-4, 1000 resamples "
                        "(explicit options win)")
    p.add_argument("--datasets", help="comma-separated study datasets [synthetic,magnetic_tile]")
    p.add_argument("--roots", default="", help="comma-separated roots in the same order (empty: default)")
    p.add_argument("--seeds", help="few-shot reference draws [0,1]")
    p.add_argument("--executor", default="local", choices=["local", "ray"],
                   help="ray: one Ray task per run (cluster at $RAY_ADDRESS, else a local one); same results")
    p.add_argument("--results-dir", type=Path, help="where run folders go (default results/, or $ZSAD_RESULTS)")
    p.add_argument("--model", help="open_clip architecture [ViT-B-16-plus-240] (zsad-tiny-vit: tests)")
    p.add_argument("--checkpoint", help="local open_clip checkpoint (default $ZSAD_CHECKPOINT; none: RANDOM WEIGHTS)")
    p.add_argument("--cnn-checkpoint", help="torchvision WideResNet-50 file for patchcore")
    p.add_argument("--max-images", type=int, help="test images per class (evenly spaced subset)")
    p.add_argument("--n-boot", type=int, help="bootstrap resamples for intervals [200] (0: none)")
    p.add_argument("--autocast", choices=["bf16", "fp16"], help="image towers under torch.autocast")
    p.add_argument("--map-storage", choices=["float32", "float16", "uint8"], default="float32",
                   help="how float anomaly maps are stored in predictions.npz (FADE's are uint8 already); the "
                        "metrics are those of the maps as stored [float32]")
    p.add_argument("--gpu-fraction", type=_gpu_fraction,
                   help="ray: the share of a GPU each task asks for (a number in (0, 1] or 'auto'; default a whole "
                        "GPU); worker logs go to <results>/<table>/ray_workers.jsonl")
    p.add_argument("--device", help="cpu, cuda, ... (default: cuda when torch sees a GPU, else cpu)")
    p.add_argument("--sizes", help="FADE's segmentation scales (main, gem-vs-clip, prompts)")
    p.add_argument("--class-prompts", help="LLM class-prompt files, comma-separated (cheung; the file holding a "
                                           "class is used)")
    p.add_argument("--detector", help="Grounding DINO folder (cheung; default: small RANDOM)")
    group = p.add_argument_group("table parameters (each applies to the tables named)")
    group.add_argument("--methods", help="main: comma-separated methods [fade,winclip,patchcore]")
    group.add_argument("--shots", help="main, scales: comma-separated shot counts [0,1,2,4]; gem-vs-clip: one k [1]")
    group.add_argument("--scales", help="scales: semicolon-separated scale sets [240;448;896;240,448,896]")
    group.add_argument("--prompt-files", help="prompts: comma-separated LLM ensembles [llm_generic_seed0..4]")
    group.add_argument("--random-words", help="tamura: comma-separated numbers of random words [0,3]")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_grid)

    p = sub.add_parser("study", help="the papers' study at paper scale: check its files (seconds), or run every "
                                     "chapter with the paper preset and build the book (make study)")
    p.add_argument("action", choices=["check", "run"])
    p.add_argument("--checkpoint", help="the open_clip file FADE uses (default $ZSAD_CHECKPOINT)")
    p.add_argument("--mvtec-root", help="MVTec AD root (default $ZSAD_MVTEC_ROOT)")
    p.add_argument("--visa-root", help="VisA root with split_csv/1cls.csv (default $ZSAD_VISA_ROOT)")
    p.add_argument("--cnn-checkpoint", help="torchvision WideResNet-50 file (default $ZSAD_CNN_CHECKPOINT; none: "
                                            "PatchCore RANDOM)")
    p.add_argument("--detector", help="Grounding DINO folder (none: Cheung et al.'s detector RANDOM)")
    p.add_argument("--out", default="_study", help="where the executed chapters and the book go [_study]")
    p.add_argument("--results-dir", default="results/paper", help="run folders [results/paper]")
    p.add_argument("--executor", default="local", choices=["local", "ray"])
    p.set_defaults(func=_cmd_study)

    p = sub.add_parser("eval", help="recompute all metrics from a predictions.npz file (or run folder)")
    p.add_argument("--predictions", required=True, type=Path)
    p.add_argument("--out", type=Path, help="write the tidy metrics table to this CSV")
    p.add_argument("--n-boot", type=int, default=200, help="bootstrap resamples for confidence intervals (0: none)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    p.set_defaults(func=_cmd_eval)
    from zsad.prompt_cli import register as register_prompts

    _register_cache(sub)
    register_prompts(sub)
    import zsad.inspect

    zsad.inspect.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the ``zsad`` command line.

    Parameters
    ----------
    argv : list of str, optional
        The arguments (default: ``sys.argv[1:]``).

    Returns
    -------
    int
        The exit status: 0, or 2 for an error of ours (printed as one line, without a traceback).
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, FileExistsError) as exc:
        # Our own errors (DatasetError, CheckpointError, RunFolderError) are ValueErrors with a full message.
        print(f"zsad: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
