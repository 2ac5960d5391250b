"""``zsad inspect``: score your own images with any registered method; no masks, no dataset layout.

``zsad inspect IMAGE_OR_FOLDER... [--refs GOOD...] [--class-name NAME] [--method fade] [--threshold X | --quantile Q]
--out DIR`` writes

- ``DIR/scores.csv``: ``image, score`` and, when there is a threshold, ``decision`` (``anomalous`` / ``normal``:
  score > threshold);
- ``DIR/overlays/<rank>_<name>.png``: each image with its anomaly map on ONE colour scale for the whole batch (the
  batch's min..max), with a colour bar (image-level methods: the image and its score);
- ``DIR/report.html``: one self-contained page (no network; every image a base64 data URI): the images sorted by
  score, their overlays, the threshold and how it was set, and the provenance (weights RANDOM or sha256, commit,
  parameters).

The threshold is ``--threshold``, or with ``--refs`` the ``--quantile`` (default 0.99, numpy "higher") of the
references' leave-one-out scores (:mod:`zsad.api`), or none (no decision column). ``--method cheung`` on a class no
committed prompt file holds generates its class prompts once with the local LLM (``--prompt-seed``, ``--llm-model``;
cached, recorded in the report's provenance). The output folder is written
atomically; an existing one is replaced only with ``--overwrite`` and only when ``zsad inspect`` wrote it.
"""
from __future__ import annotations

import argparse
import base64
import csv
import html
import io
import json
from pathlib import Path

import numpy as np

from zsad import atomic

OUTPUT_FILES = ("scores.csv", "report.html")
OVERLAY_DIR = "overlays"
_MARK = ".zsad-inspect"


# ------------------------------------------------------------------------------------------------ drawing

def _jet(x: np.ndarray) -> np.ndarray:
    """matplotlib's 'jet' colour map (piecewise linear), x in [0, 1] -> uint8 RGB."""
    x = np.clip(x, 0.0, 1.0)
    r = np.clip(1.5 - np.abs(4 * x - 3), 0, 1)
    g = np.clip(1.5 - np.abs(4 * x - 2), 0, 1)
    b = np.clip(1.5 - np.abs(4 * x - 1), 0, 1)
    return (np.stack([r, g, b], -1) * 255).round().astype(np.uint8)


def _display_size(size: tuple[int, int], longest: int = 320) -> tuple[int, int]:
    w, h = size
    scale = longest / max(w, h)
    return max(1, round(w * scale)), max(1, round(h * scale))


def overlay_image(image, heat: np.ndarray | None, vmin: float, vmax: float, *, title: str = "",
                  alpha: float = 0.45, longest: int = 320):
    """An image with its anomaly map on a fixed colour scale, a colour bar and a title.

    Parameters
    ----------
    image : PIL.Image.Image
        Resized so that its longest side is ``longest``.
    heat : array-like or None
        The anomaly map (any shape; resized over the whole image, as the runners square-resize it), drawn in
        'jet'; None: the image and title only (image-level methods).
    vmin, vmax : float
        The colour scale (one for the whole batch).
    title : str
        Drawn above the image.
    alpha : float
        Opacity of the map over the image.
    longest : int
        Longest side of the drawn image, in pixels.

    Returns
    -------
    PIL.Image.Image
        The overlay, with a colour bar and its three tick values at the right.
    """
    from PIL import Image, ImageDraw

    image = image.convert("RGB").resize(_display_size(image.size, longest), Image.BICUBIC)
    w, h = image.size
    pad, bar_w, label_w, top = 6, 14, 58, 18
    canvas = Image.new("RGB", (w + (pad + bar_w + label_w if heat is not None else 0) + 2 * pad, h + top + pad),
                       "white")
    if heat is not None:
        heat_img = Image.fromarray(np.asarray(heat, dtype=np.float32), mode="F").resize((w, h), Image.BILINEAR)
        span = (vmax - vmin) or 1.0
        colours = _jet((np.asarray(heat_img) - vmin) / span)
        blended = (np.asarray(image, dtype=np.float32) * (1 - alpha) + colours * alpha).round().astype(np.uint8)
        image = Image.fromarray(blended)
    canvas.paste(image, (pad, top))
    draw = ImageDraw.Draw(canvas)
    draw.text((pad, 3), title, fill="black")
    if heat is not None:
        x0 = pad + w + pad
        ramp = _jet(np.linspace(1, 0, h))[:, None, :].repeat(bar_w, axis=1)
        canvas.paste(Image.fromarray(ramp), (x0, top))
        draw.rectangle((x0, top, x0 + bar_w - 1, top + h - 1), outline="black")
        for frac in (0.0, 0.5, 1.0):
            y = top + round((1 - frac) * (h - 1))
            draw.line((x0 + bar_w, y, x0 + bar_w + 3, y), fill="black")
            draw.text((x0 + bar_w + 5, min(max(y - 5, top), top + h - 11)), f"{vmin + frac * (vmax - vmin):.4g}",
                      fill="black")
    return canvas


def _data_uri(image, fmt: str = "PNG") -> str:
    buf = io.BytesIO()
    image.save(buf, format=fmt)
    mime = "image/png" if fmt == "PNG" else "image/jpeg"
    return f"data:{mime};base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _safe_name(name: str) -> str:
    stem = Path(name).stem or "image"
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in stem)[:60]


# ------------------------------------------------------------------------------------------------ report

def weights_line(prov: dict) -> str:
    """One line saying which weights scored: RANDOM (and why that matters) or the checkpoint and its sha256.

    Parameters
    ----------
    prov : dict
        A provenance dict (:meth:`zsad.api.Detector.provenance`).

    Returns
    -------
    str
        The line.
    """
    w = prov.get("weights") or {}
    if w.get("random_weights"):
        return (f"RANDOM WEIGHTS ({w.get('model')}, init seed {w.get('init_seed')}): these scores test the pipeline; "
                "they say nothing about CLIP")
    return f"{w.get('model')} from {Path(str(w.get('checkpoint'))).name}, sha256 {w.get('checkpoint_sha256')}"


def report_html(rows: list[dict], prov: dict, *, threshold, threshold_rule: str, method: str) -> str:
    """The self-contained report page (no network: every image is a data URI).

    Parameters
    ----------
    rows : list of dict
        ``name, score, decision, image_uri, overlay_uri`` per image, in the order shown (highest score first).
    prov : dict
        :meth:`zsad.api.Detector.provenance`: weights, commit, parameters, references, generated class prompts.
    threshold : float or None
        The decision threshold (None: no decisions).
    threshold_rule : str
        How the threshold was set.
    method : str
        The method's name, for the title.

    Returns
    -------
    str
        The HTML page.
    """
    e = html.escape
    random = (prov.get("weights") or {}).get("random_weights")
    body = []
    for rank, r in enumerate(rows, 1):
        decision = r.get("decision") or ""
        cls = "bad" if decision == "anomalous" else "ok" if decision else ""
        body.append(
            f'<tr><td>{rank}</td><td class="name">{e(r["name"])}</td><td>{r["score"]:.6g}</td>'
            f'<td class="{cls}">{e(decision) or "&ndash;"}</td>'
            f'<td><img alt="{e(r["name"])}" src="{r["image_uri"]}"></td>'
            f'<td><img alt="overlay of {e(r["name"])}" src="{r["overlay_uri"]}"></td></tr>')
    thr = "none (no decisions)" if threshold is None else f"{threshold:.6g}"
    params = json.dumps(prov.get("parameters", {}), indent=1, sort_keys=True, default=str)
    refs = prov.get("good_images") or []
    return "\n".join([
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        f"<title>zsad inspect: {e(method)}</title>",
        "<style>body{font-family:sans-serif;margin:1.5em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:4px;vertical-align:top}td.name{max-width:16em;word-break:break-all}"
        "img{max-width:360px}.bad{color:#b00000;font-weight:bold}.ok{color:#006000}"
        ".random{background:#ffe0e0;border:2px solid #b00000;padding:.5em;font-weight:bold}"
        "pre{background:#f6f6f6;padding:.5em;overflow:auto;max-height:30em}</style></head><body>",
        f"<h1>zsad inspect: {e(method)}, {len(rows)} images</h1>",
        f'<p class="{"random" if random else ""}">Weights: {e(weights_line(prov))}</p>',
        f"<p>Threshold: <b>{e(thr)}</b> ({e(threshold_rule)}); decision: anomalous when score &gt; threshold. "
        "One colour scale for the whole batch (see each overlay's colour bar).</p>",
        "<table><thead><tr><th>rank</th><th>image</th><th>score</th><th>decision</th><th>image</th>"
        "<th>anomaly map</th></tr></thead><tbody>", *body, "</tbody></table>",
        "<h2>Provenance</h2><ul>",
        f"<li>zsad commit: <code>{e(str(prov.get('git_commit')))}</code></li>",
        f"<li>created (UTC): {e(str(prov.get('created_utc')))}; device: {e(str(prov.get('device')))}; "
        f"Python {e(str(prov.get('python')))}</li>",
        f"<li>good images ({len(refs)}): {e(', '.join(refs)) or 'none'}</li>",
        f"<li>few-shot memory: {e(json.dumps(prov.get('few_shot_references') or {}, default=str))}</li>",
        *_generated_prompts_item(prov),
        "</ul><h3>Parameters</h3>", f"<pre>{e(params)}</pre>",
        f"<h3>Packages</h3><pre>{e(json.dumps(prov.get('packages', {}), indent=1, sort_keys=True))}</pre>",
        "</body></html>", ""])


def _generated_prompts_item(prov: dict) -> list[str]:
    """The provenance line of class prompts generated on the fly (:mod:`zsad.prompt_generation`), if any."""
    gen = prov.get("class_prompts_generated")
    if not gen:
        return []
    e = html.escape
    return [f"<li>class prompts generated with the local LLM: {e(str(gen.get('model_file')))} (sha256 "
            f"<code>{e(str(gen.get('model_sha256')))}</code>, llama-cpp-python {e(str(gen.get('llama_cpp_python')))}"
            f"), seed {e(str(gen.get('seed')))}, for {e(', '.join(gen.get('classes') or []))}; file "
            f"<code>{e(str(gen.get('file')))}</code></li>"]


# ------------------------------------------------------------------------------------------------ inspect

_REPORT_FILES = {"scores.csv", "report.html", "provenance.json", _MARK}


def _is_report_folder(out: Path) -> bool:
    """Our marker, and nothing but what :func:`inspect` writes (so replacing it loses nothing of the user's)."""
    if not (out / _MARK).is_file():
        return False
    for entry in out.iterdir():
        if entry.name == OVERLAY_DIR and entry.is_dir() and not entry.is_symlink():
            if any(not f.is_file() or f.suffix != ".png" for f in entry.iterdir()):
                return False
        elif entry.name not in _REPORT_FILES or not entry.is_file():
            return False
    return True


def _check_out(out: Path, overwrite: bool) -> Path:
    out = Path(out).expanduser()
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise ValueError(f"--out {out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        if not _is_report_folder(out):
            raise ValueError(f"--out {out}: exists and was not written by zsad inspect (or holds files it did not "
                             "write); refusing to replace it, --overwrite or not; choose another --out")
        if not overwrite:
            raise ValueError(f"--out {out}: an inspect report exists there; pass --overwrite to replace it")
    return out


def inspect(images, out, *, refs=None, method: str = "fade", class_name: str = "object", threshold=None,
            quantile: float | None = None, overwrite: bool = False, progress: bool = True, **detector_args) -> dict:
    """Score ``images`` and write ``out``: scores.csv, overlays and report.html (module docstring).

    Everything is checked before a model loads: the arguments, ``out``, and every image (unreadable ones named; an
    empty folder refused).

    Parameters
    ----------
    images : path or sequence of paths
        Image files or folders of images.
    out : path
        The output folder (written atomically; replaced only with ``overwrite`` and only if inspect wrote it).
    refs : path or sequence of paths, optional
        Good reference images or folders: the few-shot memory and the leave-one-out threshold.
    method : str
        A registered method (:data:`zsad.study.METHODS`).
    class_name : str
        What the images show, as it goes into the prompts.
    threshold : float, optional
        A fixed decision threshold (score > threshold: anomalous).
    quantile : float, optional
        Quantile of the references' leave-one-out scores that becomes the threshold (default 0.99).
    overwrite : bool
        Replace an existing inspect output folder.
    progress : bool
        Progress bars.
    **detector_args
        Passed to :class:`zsad.api.Detector` (checkpoint, model, shots, prompts, ...).

    Returns
    -------
    dict
        ``{"scores", "names", "decisions", "threshold", "threshold_rule", "provenance", "path"}``.
    """
    from PIL import Image

    from zsad.api import DEFAULT_QUANTILE, Detector, image_records
    from zsad.data import load_image

    if threshold is not None and quantile is not None:
        raise ValueError("give --threshold or --quantile, not both")
    if quantile is not None and not refs:
        raise ValueError("--quantile sets the threshold from the reference images: give --refs too")
    out = _check_out(out, overwrite)
    records = image_records(images, cls=class_name)  # named errors before the model
    good = image_records(refs, cls=class_name, split="train") if refs else []
    det = Detector(method, class_name=class_name, threshold=threshold,
                   quantile=DEFAULT_QUANTILE if quantile is None else quantile, progress=progress, **detector_args)
    if good:
        det.fit([r.path for r in good])
    elif det.spec.shots == "k":
        raise ValueError(f"{method} is a k-shot method: give good reference images with --refs")
    scores, maps, _ = det.score_and_maps([r.path for r in records])
    names = [r.relpath for r in records]
    decisions = det.decide(scores) if det.threshold_ is not None else None
    prov = det.provenance()
    order = np.argsort(-scores, kind="stable")
    vmin, vmax = (float(np.min(maps)), float(np.max(maps))) if maps is not None else (0.0, 1.0)
    rows = []
    with atomic.atomic_folder(out, replace=True) as tmp:
        (tmp / OVERLAY_DIR).mkdir()
        for rank, i in enumerate(order, 1):
            image = load_image(records[i].path)
            decision = None if decisions is None else ("anomalous" if decisions[i] else "normal")
            title = f"{rank}. score {scores[i]:.4g}" + (f" ({decision})" if decision else "")
            ov = overlay_image(image, None if maps is None else maps[i], vmin, vmax, title=title)
            file = f"{OVERLAY_DIR}/{rank:04d}_{_safe_name(names[i])}.png"
            ov.save(tmp / file, format="PNG")
            thumb = image.convert("RGB").resize(_display_size(image.size), Image.BICUBIC)
            rows.append({"name": names[i], "score": float(scores[i]), "decision": decision, "overlay": file,
                         "image_uri": _data_uri(thumb), "overlay_uri": _data_uri(ov)})
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(["image", "score"] + (["decision"] if decisions is not None else []) + ["overlay"])
        rank_of = {int(i): rows[k] for k, i in enumerate(order)}
        for i in range(len(records)):  # the csv keeps the input order
            r = rank_of[i]
            writer.writerow([r["name"], f"{r['score']:.10g}"] + ([r["decision"]] if decisions is not None else [])
                            + [r["overlay"]])
        (tmp / "scores.csv").write_text(buf.getvalue())
        (tmp / "report.html").write_text(report_html(rows, prov, threshold=det.threshold_,
                                                     threshold_rule=det.threshold_note_, method=method))
        (tmp / "provenance.json").write_text(json.dumps(prov, indent=2, sort_keys=True, default=str) + "\n")
        (tmp / _MARK).write_text("written by zsad inspect\n")
    return {"scores": scores, "names": names, "decisions": decisions, "threshold": det.threshold_,
            "threshold_rule": det.threshold_note_, "provenance": prov, "path": out}


def _cmd_inspect(args) -> int:
    options = {}
    for item in args.option or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--option {item!r}: expected KEY=VALUE")
        try:
            options[key] = json.loads(value)
        except ValueError:
            options[key] = value
    extra = {k: v for k, v in dict(shots=args.shots, checkpoint=args.checkpoint, model=args.model,
                                   cnn_checkpoint=args.cnn_checkpoint, mode=args.mode, sizes=args.sizes,
                                   prompts=args.prompts, class_prompts=args.class_prompts, detector=args.detector,
                                   device=args.device, seed=args.seed, eval_size=args.eval_size,
                                   prompt_seed=args.prompt_seed, llm_model=args.llm_model).items()
             if v is not None}
    res = inspect(args.images, args.out, refs=args.refs, method=args.method, class_name=args.class_name,
                  threshold=args.threshold, quantile=args.quantile, overwrite=args.overwrite,
                  progress=not args.quiet, cache=not args.no_cache, **extra, **options)
    n_bad = None if res["decisions"] is None else int(np.sum(res["decisions"]))
    thr = "no threshold" if res["threshold"] is None else f"threshold {res['threshold']:.6g} ({res['threshold_rule']})"
    print(f"{res['path']}: {len(res['scores'])} images scored"
          + (f", {n_bad} anomalous" if n_bad is not None else "") + f"; {thr}")
    print(f"  weights: {weights_line(res['provenance'])}")
    print(f"  report: {Path(res['path']) / 'report.html'}")
    return 0


def register(subparsers) -> argparse.ArgumentParser:
    """Add ``zsad inspect`` to the ``zsad`` sub-command parsers.

    Parameters
    ----------
    subparsers : argparse._SubParsersAction
        What ``ArgumentParser.add_subparsers`` returned for ``zsad``.

    Returns
    -------
    argparse.ArgumentParser
        The ``inspect`` parser (its ``func`` default runs the command).
    """
    p = subparsers.add_parser("inspect", help="score your own images (files or folders), write scores.csv, "
                                              "overlays and a self-contained report.html")
    p.add_argument("images", nargs="+", type=Path, help="image files or folders of images")
    p.add_argument("--refs", nargs="+", type=Path, help="good (normal) reference images or folders: the few-shot "
                                                        "memory and the leave-one-out threshold")
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument("--method", default="fade", help="fade, winclip, patchcore, tamura, cheung, "
                                                    "cheung_no_prompt_generation, cheung_no_object_detection")
    p.add_argument("--class-name", default="object", help="what the images show, for the prompts [object]")
    p.add_argument("--shots", type=int, help="references used as memory (default: all --refs; 0: zero-shot)")
    p.add_argument("--threshold", type=float, help="fixed decision threshold (score > threshold: anomalous)")
    p.add_argument("--quantile", type=float, help="quantile of the references' leave-one-out scores [0.99; numpy "
                                                  "'higher', i.e. the max for up to 100 references]")
    p.add_argument("--model", help="CLIP methods: open_clip architecture [ViT-B-16-plus-240]")
    p.add_argument("--checkpoint", help="CLIP methods: local open_clip checkpoint (default $ZSAD_CHECKPOINT; none: "
                                        "RANDOM WEIGHTS)")
    p.add_argument("--cnn-checkpoint", help="patchcore: torchvision WideResNet-50 file")
    p.add_argument("--mode", choices=["language", "vision", "both"], help="fade: guidance [both]")
    p.add_argument("--sizes", help="fade: scales, multiples of 16 [240,448,896]")
    p.add_argument("--prompts", help="fade: LLM prompt files for segmentation [llm_generic_seed0]; none: WinCLIP only")
    p.add_argument("--class-prompts", help="cheung: LLM class-prompt file (default: a shipped one holding the class; "
                                           "for another class, generated once with the local LLM and cached)")
    p.add_argument("--prompt-seed", type=int, help="cheung: seed of that generation [0]")
    p.add_argument("--llm-model", type=Path, help="cheung: GGUF file for that generation (default: the packaged "
                                                  "Gemma 3 270M)")
    p.add_argument("--detector", help="cheung: Grounding DINO folder (default: small RANDOM)")
    p.add_argument("--option", action="append", metavar="KEY=VALUE", help="a field of the method's config "
                                                                           "(repeatable; JSON values)")
    p.add_argument("--seed", type=int, help="seed of the reference draw when --shots < number of references")
    p.add_argument("--eval-size", type=int, help="side of the anomaly maps [448]")
    p.add_argument("--device", help="cuda or cpu (default: cuda when available)")
    p.add_argument("--no-cache", action="store_true", help="do not use the feature cache")
    p.add_argument("--overwrite", action="store_true", help="replace an existing inspect output folder")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_inspect)
    return p
