"""``zsad.Detector``: any registered method on your own images, in the scikit-learn spirit.

```python
det = zsad.Detector(method="fade", class_name="screw")   # shots=None: every good image given to fit is a reference
det.fit(["good1.png", "good2.png", "good3.png"])          # references + a leave-one-out threshold
det.score(["new.png"])                                     # (N,) anomaly scores, higher = more anomalous
det.anomaly_maps(["new.png"])                              # (N, eval_size, eval_size) maps, square-resized image
det.predict(["new.png"])                                   # (N,) 1 = anomalous (score > threshold), 0 = normal
```

The detector runs the study's own per-class runner (:data:`zsad.study.METHODS` ``[method].run``) with the run
parameters :func:`zsad.study.plan_run` would build for the same arguments; it contains no method logic.

Images are paths (a folder stands for the images directly in it), PIL images or numpy arrays (H x W, H x W x 3 or
H x W x 4; uint8, bool, or floats in [0, 1]); in-memory images are written as lossless PNGs to a temporary folder,
because every runner reads its images from ``record.path`` (and the feature cache keys them by file content, so the
same pixels are encoded once). Every image is read before any model loads: an unreadable file is named.

Threshold (``predict``)
-----------------------
Given as ``threshold=``, or computed by :meth:`Detector.fit` from the good images' *leave-one-out* scores: each good
image is scored as a test image would be, except that when it is itself one of the few-shot references it is scored
with the other references as the memory (k - 1 shots; a normal image compared with itself would score ~0). A good
image outside the memory (``shots`` smaller than the number of good images) is scored with the full memory, exactly
as a test image. Zero-shot methods score every good image as a test image. The threshold is the ``quantile``
(default 0.99) of those scores with ``numpy.quantile(method="higher")``, i.e. an actual reference score: with up to
100 good images it is their maximum (no good image is flagged), with more it ignores the top 1 % (a stray defective
"good" image does not disable the detector). Decisions are ``score > threshold``. A k-shot method fitted with a single
good image has no leave-one-out score (its memory would be empty): pass ``threshold=`` or more good images.

Class prompts
-------------
Cheung et al.'s full method (``cheung``) and its ``cheung_no_object_detection`` row read LLM-written prompts for the
class. ``class_prompts=`` names files; without it the committed ``prompts/llm_class_*.json`` file holding
``class_name`` is used, and for any other class name the prompts are generated with the local Gemma 3 270M
(:func:`zsad.prompt_generation.class_prompt_file`: the study's class recipe with the name and a generic product
line, seed ``prompt_seed``), once: the file is cached under the cache folder keyed by (class name, seed, model
sha256, recipe and code fingerprint), so the next detector for that class loads no LLM. The file records its own
provenance (model file and sha256, llama-cpp-python version, sampling, raw output); :meth:`Detector.provenance`
adds a summary under ``class_prompts_generated``.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

from zsad.data import IMAGE_EXTENSIONS, DatasetError, ImageRecord, load_image, sample_references

__all__ = ["Detector", "DEFAULT_QUANTILE", "image_records", "leave_one_out_threshold", "quantile_threshold"]

#: Default quantile of the good images' leave-one-out scores that becomes the threshold (see the module docstring).
DEFAULT_QUANTILE = 0.99
_PARAM_ARGUMENTS = ("mode", "sizes", "prompts", "winclip_in_segmentation", "class_prompts", "detector")


# ------------------------------------------------------------------------------------------------ images

def _images_in_folder(folder: Path) -> list[Path]:
    found = sorted((p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")
                    and p.suffix.lower() in IMAGE_EXTENSIONS), key=lambda p: p.name)
    if not found:
        raise DatasetError(f"no images in folder {folder} (looked for {', '.join(IMAGE_EXTENSIONS)} files directly "
                           "in it)")
    return found


def _as_list(images) -> list:
    if images is None:
        return []
    if isinstance(images, (str, os.PathLike)) or _is_pil(images) or (
            isinstance(images, np.ndarray) and images.ndim in (2, 3) and images.dtype != object):
        return [images]
    return list(images)


def _is_pil(item) -> bool:
    from PIL import Image

    return isinstance(item, Image.Image)


def _array_image(array: np.ndarray, name: str):
    from PIL import Image

    a = np.asarray(array)
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[-1] not in (3, 4)) or min(a.shape[:2]) < 1:
        raise DatasetError(f"{name}: an image array must be H x W, H x W x 3 or H x W x 4, got shape {a.shape}")
    if a.dtype == bool:
        a = a.astype(np.uint8) * 255
    elif np.issubdtype(a.dtype, np.floating):
        if not np.isfinite(a).all() or a.min() < 0 or a.max() > 1:
            raise DatasetError(f"{name}: a float image array must hold values in [0, 1], got "
                               f"[{np.nanmin(a):.4g}, {np.nanmax(a):.4g}]")
        a = np.rint(a * 255).astype(np.uint8)
    elif a.dtype != np.uint8:
        if a.min() < 0 or a.max() > 255:
            raise DatasetError(f"{name}: an integer image array must hold values in 0..255 (uint8), got "
                               f"[{a.min()}, {a.max()}]")
        a = a.astype(np.uint8)
    return Image.fromarray(a)


def image_records(images, *, cls: str = "object", split: str = "test", tmpdir=None,
                  check: bool = True) -> list[ImageRecord]:
    """ImageRecords the study's runners accept, from paths, folders, PIL images and numpy arrays.

    Parameters
    ----------
    images : path, PIL image, array, or a sequence of them
        A folder stands for the images directly in it (sorted; an empty one is refused).
    cls : str
        The class name the records carry.
    split : {"test", "train"}
        ``"train"`` marks the records as good references.
    tmpdir : path, optional
        Where PIL images and arrays are written as PNG files (required when there are any).
    check : bool
        Decode every image once here, so that all unreadable ones are named together, before any model loads.

    Returns
    -------
    list of ImageRecord
        ``relpath`` is the path as given (absolute for folder members) or ``<image i>`` for in-memory images.

    Raises
    ------
    DatasetError
        Unreadable images (all of them named), bad arrays, an empty folder, or no images at all.
    """
    records, errors = [], []
    for i, item in enumerate(_as_list(images)):
        if isinstance(item, (str, os.PathLike)):
            path = Path(item).expanduser()
            if path.is_dir():
                paths = [(p.resolve(), str(p)) for p in _images_in_folder(path)]
            else:
                paths = [(path.resolve(), str(item))]
            for resolved, name in paths:
                if check:
                    try:
                        load_image(resolved)
                    except DatasetError as exc:
                        errors.append(str(exc))
                        continue
                records.append(ImageRecord(resolved, name, cls, split, 0, "good" if split == "train" else "unknown",
                                           None))
            continue
        name = f"<image {i}>"
        try:
            if _is_pil(item):
                from zsad.data import to_rgb

                pil = to_rgb(item, source=name)
            elif isinstance(item, np.ndarray):
                pil = _array_image(item, name).convert("RGB")
            else:
                raise DatasetError(f"{name}: expected a path, a PIL image or a numpy array, got {type(item).__name__}")
        except DatasetError as exc:
            errors.append(str(exc))
            continue
        if tmpdir is None:
            raise ValueError("in-memory images need a temporary folder (tmpdir)")
        path = Path(tmpdir) / f"{split}_{len(records):05d}.png"
        pil.save(path, format="PNG")
        records.append(ImageRecord(path.resolve(), name, cls, split, 0, "good" if split == "train" else "unknown",
                                   None))
    if errors:
        head = f"{len(errors)} image{'s' if len(errors) > 1 else ''} cannot be used: "
        raise DatasetError(head + "; ".join(errors))
    if not records:
        raise DatasetError("no images given")
    return records


# ---------------------------------------------------------------------------------------------- threshold

def quantile_threshold(scores, quantile: float = DEFAULT_QUANTILE) -> float:
    """The ``quantile`` of ``scores`` as an actual score (``numpy.quantile(method="higher")``).

    Parameters
    ----------
    scores : array-like
        Scores (at least one).
    quantile : float
        In (0, 1].

    Returns
    -------
    float
        One of the scores: with up to 100 scores and the default 0.99, their maximum.
    """
    scores = np.asarray(scores, dtype=np.float64)
    if scores.size == 0:
        raise ValueError("no scores to take a quantile of")
    return float(np.quantile(scores, _check_quantile(quantile), method="higher"))


def _check_quantile(q) -> float:
    if isinstance(q, bool) or not isinstance(q, (int, float, np.floating, np.integer)) or not 0 < float(q) <= 1:
        raise ValueError(f"quantile must be a number in (0, 1], got {q!r}")
    return float(q)


def leave_one_out_threshold(scores, quantile: float = DEFAULT_QUANTILE) -> float:
    """Alias of :func:`quantile_threshold` for the good images' leave-one-out scores (the name says what goes in).

    Parameters
    ----------
    scores : array-like
        The good images' leave-one-out scores (:meth:`Detector.leave_one_out_scores`).
    quantile : float
        In (0, 1].

    Returns
    -------
    float
        The threshold.
    """
    return quantile_threshold(scores, quantile)


# ----------------------------------------------------------------------------------------------- detector

class Detector:
    """A registered method of the study on your own images (module docstring: images, threshold).

    Parameters
    ----------
    method : a key of :data:`zsad.study.METHODS` (``fade``, ``winclip``, ``patchcore``, ``tamura``, ``cheung``,
        ``cheung_no_prompt_generation``, ``cheung_no_object_detection``).
    shots : references used as the few-shot memory: None = every good image given to :meth:`fit` (0 before fit),
        an int = that many of them (FADE's seeded sampler), 0 = zero-shot (fit's images then only set the
        threshold). Zero-shot-only methods (tamura, cheung*) ignore the references except for the threshold;
        patchcore needs at least one.
    checkpoint, model : CLIP methods: local open_clip checkpoint (default ``$ZSAD_CHECKPOINT``; none: seeded RANDOM
        weights) and architecture (default ViT-B-16-plus-240; ``zsad-tiny-vit`` for tests).
    class_name : what the images show, as it goes into the prompts (``"metal_nut"`` -> "metal nut").
    threshold, quantile : a fixed decision threshold, or the quantile of fit's leave-one-out scores.
    cnn_checkpoint : patchcore's torchvision WideResNet-50 file (default ``$ZSAD_CNN_CHECKPOINT``).
    mode, sizes, prompts, winclip_in_segmentation : FADE's arguments of :func:`zsad.study.predict`.
    class_prompts, detector : Cheung et al.'s; without ``class_prompts`` the committed ``llm_class_*.json`` file
        that holds ``class_name`` is used, and for a class no committed file holds (your own), class prompts are
        generated once with the local LLM and cached (:func:`zsad.prompt_generation.class_prompt_file`; module
        docstring, "Class prompts").
    prompt_seed, llm_model : that generation's seed (default 0, as the study's class files) and GGUF model file
        (default: the packaged Gemma 3 270M); only for methods that read class prompts, and only without
        ``class_prompts``.
    seed, eval_size, cache, autocast, device, progress : as :func:`zsad.study.predict`.
    **options : fields of the method's config dataclass (e.g. ``temperature=0.01`` for WinCLIP).
    """

    def __init__(self, method: str = "fade", shots: int | None = None, checkpoint=None, model: str | None = None,
                 class_name: str = "object", *, threshold: float | None = None, quantile: float = DEFAULT_QUANTILE,
                 cnn_checkpoint=None, mode=None, sizes=None, prompts=None, winclip_in_segmentation=None,
                 class_prompts=None, detector=None, prompt_seed: int | None = None, llm_model=None, seed: int = 0,
                 eval_size: int = 448, cache=True, autocast: str | None = None, device: str | None = None,
                 progress: bool = False, **options):
        from zsad import study

        if method not in study.METHODS:
            raise ValueError(f"unknown method {method!r}; choose one of {', '.join(sorted(study.METHODS))}")
        if not isinstance(class_name, str) or not class_name.strip():
            raise ValueError(f"class_name must be a non-empty string, got {class_name!r}")
        self.method, self.spec = method, study.METHODS[method]
        self.shots = None if shots is None else study._int("shots", shots, low=0)
        if self.spec.shots == "zero" and self.shots:
            raise ValueError(f"{method} is zero-shot: it uses no reference images, so shots must be 0 or None, "
                             f"got {shots}")
        if self.spec.shots == "k" and self.shots == 0:
            raise ValueError(f"{method} is a k-shot baseline: shots must be >= 1 (or None: all good images)")
        self.class_name = class_name
        self.threshold = None if threshold is None else float(threshold)
        self.quantile = _check_quantile(quantile)
        self.seed = study._int("seed", seed, low=0)
        self.eval_size = study._int("eval_size", eval_size, low=1)
        self.progress = bool(progress)
        self.options = dict(options)
        given = dict(model=model, checkpoint=checkpoint, cnn_checkpoint=cnn_checkpoint, mode=mode, sizes=sizes,
                     prompts=prompts, winclip_in_segmentation=winclip_in_segmentation, class_prompts=class_prompts,
                     detector=detector)
        study.check_method_arguments(method, given)
        self._given = {k: given[k] for k in _PARAM_ARGUMENTS}
        self.prompt_seed: int | None = None
        generate = self._check_generation(class_prompts, prompt_seed, llm_model)
        self.class_prompts_generated_: dict | None = None
        autocast, self.device = autocast or None, study._default_device(device)
        import torch

        from zsad.features import check_autocast

        check_autocast(autocast, torch.device(self.device))
        self.autocast = autocast
        model_name, weights = study.method_weights(method, model=model, checkpoint=checkpoint,
                                                   cnn_checkpoint=cnn_checkpoint)
        self.model_name = model_name or ""
        self.weights = str(Path(weights).expanduser()) if weights else None
        from zsad.cache import FeatureCache

        self.cache = FeatureCache() if cache is True else (cache or None)
        self._params(0)  # every argument and option checked now, before any image or model
        if generate:  # the one expensive step of the constructor (the LLM), after every cheap check
            from zsad.prompt_generation import class_prompt_file, generated_class_provenance

            path = class_prompt_file(class_name, self.prompt_seed, model=llm_model, progress=self.progress)
            self._given["class_prompts"] = (path,)
            self.class_prompts_generated_ = generated_class_provenance(path)
            self._params(0)
        self.references_: list[ImageRecord] = []
        self.memory_: list[ImageRecord] = []
        self.reference_scores_: np.ndarray | None = None
        self.threshold_: float | None = self.threshold
        self.threshold_note_ = "given" if self.threshold is not None else "none (no threshold given, not fitted)"
        self._tmp = None
        self._loaded = None

    def __repr__(self) -> str:
        return (f"Detector(method={self.method!r}, shots={self.shots!r}, class_name={self.class_name!r}, "
                f"references={len(self.references_)}, threshold={self.threshold_!r})")

    # -- parameters, as plan_run builds them
    def _check_generation(self, class_prompts, prompt_seed, llm_model) -> bool:
        """Resolve the class prompts of a method that reads them; True when they must be generated (no committed
        file holds the class). ``prompt_seed`` / ``llm_model`` are refused where no generation could apply them."""
        from zsad import study
        from zsad.prompt_generation import check_class_name

        reads = "class_prompts" in self.spec.uses
        if not reads or class_prompts is not None:
            extra = [n for n, v in (("prompt_seed", prompt_seed), ("llm_model", llm_model)) if v is not None]
            if extra:
                why = (f"{self.method} reads no class prompts" if not reads else
                       "class_prompts= is given, so nothing is generated")
                raise ValueError(f"{', '.join(extra)}: {why}; leave {'them' if len(extra) > 1 else 'it'} out")
            return False
        self.prompt_seed = study._int("prompt_seed", 0 if prompt_seed is None else prompt_seed, low=0)
        if llm_model is not None:
            from zsad import llm

            llm.resolve_model(llm_model)  # a missing or non-GGUF file is named now
        committed = self._committed_class_prompts()
        if committed:
            if prompt_seed is not None or llm_model is not None:
                raise ValueError(f"class {self.class_name!r} has committed class prompts ({committed[0].name}), so "
                                 "nothing is generated: leave prompt_seed/llm_model out, or pass class_prompts=")
            self._given["class_prompts"] = committed
            return False
        check_class_name(self.class_name)  # a name the recipe cannot take is named before any model loads
        return True

    def _committed_class_prompts(self) -> tuple:
        """The committed llm_class files, when one of them holds ``class_name`` (else an empty tuple)."""
        from zsad.resources import data_path
        from zsad.runners import class_prompts_for

        files = sorted(data_path("prompts").glob("llm_class_*.json"))
        try:
            class_prompts_for(self.class_name, files)
        except ValueError:
            return ()
        return tuple(files)

    def _params(self, shots: int) -> dict:
        """The runner parameters :func:`zsad.study.plan_run` would build for ``shots`` memory images (the same
        :func:`zsad.study.method_parameters`)."""
        from zsad import study

        p, cfg = study.method_parameters(self.method, dataset="inspect", shots=shots, seed=self.seed,
                                         eval_size=self.eval_size, options=self.options, **self._given)
        if self.spec.family == "clip":
            p["model"] = self.model_name
        return {**p, "config": cfg, "autocast": self.autocast, "cache": self.cache, "device": self.device}

    def parameters(self) -> dict:
        """What provenance records: the resolved parameters of the current memory size."""
        from zsad import study

        p = self._params(len(self.memory_))
        out = study.applied_parameters({k: v for k, v in p.items() if k not in ("config", "cache")}, p["config"])
        out.pop("dataset")
        out["class_name"] = self.class_name
        out["threshold"] = self.threshold_
        out["threshold_rule"] = self.threshold_note_
        return out

    def _model(self):
        if self._loaded is None:
            from zsad import study

            self._loaded = study._load_weights(self.spec.family, self.model_name, self.weights, self.device)
        return self._loaded

    def _run(self, records, memory):
        out = self.spec.run(self._model(), self.class_name, list(records), list(memory),
                            self._params(len(memory) if self._uses_memory else 0), self.progress)
        if not np.isfinite(np.asarray(out.scores, dtype=np.float64)).all():
            raise ValueError(f"{self.method} gave non-finite scores: the weights ({self.weights or 'RANDOM'}) or the "
                             "images produce NaN/inf features")
        return out

    @property
    def _uses_memory(self) -> bool:
        return self.spec.shots != "zero"

    # -- scikit-learn style
    def fit(self, good_images, y=None):
        """Keep the good images and, unless a threshold was given, set ``threshold_`` from their leave-one-out scores.

        Parameters
        ----------
        good_images : path, PIL image, array, or a sequence of them
            Normal images: the few-shot memory (all of them, or ``shots`` of them drawn by ``seed``) and the
            threshold's references (module docstring).
        y : ignored
            For scikit-learn's ``fit(X, y)`` signature.

        Returns
        -------
        Detector
            self.
        """
        if self._tmp is not None:
            self._tmp.cleanup()
        self._tmp = tempfile.TemporaryDirectory(prefix="zsad-refs-")
        refs = image_records(good_images, cls=self.class_name, split="train", tmpdir=self._tmp.name)
        shots = len(refs) if self.shots is None else self.shots
        if not self._uses_memory:
            shots = 0
        if shots > len(refs):
            raise ValueError(f"shots={shots} but only {len(refs)} good images were given")
        if len(refs) != len({str(r.path) for r in refs}):
            raise ValueError("the same good image is given twice: leave-one-out needs distinct references")
        self.references_ = refs
        self.memory_ = refs if shots == len(refs) else sample_references(refs, shots, self.seed) if shots else []
        self.parameters()  # the config for this memory size is valid
        if self.threshold is not None:
            self.threshold_, self.threshold_note_ = self.threshold, "given"
            return self
        if self.method == "musc":  # transductive: the good images are scored against each other, before any work
            from zsad.methods.musc import check_class_size

            try:
                check_class_size(len(refs), self._params(0)["config"])
            except ValueError as exc:
                raise ValueError(f"musc scores images against each other, so its threshold comes from the good "
                                 f"images scored together: {len(refs)} are too few ({exc}); give more good images, "
                                 f"or threshold=") from None
        self.reference_scores_ = self.leave_one_out_scores()
        usable = self.reference_scores_[np.isfinite(self.reference_scores_)]
        if usable.size:
            self.threshold_ = quantile_threshold(usable, self.quantile)
            which = "leave-one-out scores" if self.memory_ else "scores"  # zero-shot: nothing to leave out
            self.threshold_note_ = (f"quantile {self.quantile:g} (numpy 'higher': an actual score) of the "
                                    f"{which} of {usable.size} good image{'s' * (usable.size != 1)}"
                                    + (" scored together (MuSc is transductive: an image's score depends on the "
                                       "images scored with it)" if self.method == "musc" else ""))
        else:
            self.threshold_ = None
            self.threshold_note_ = ("none: a k-shot method fitted with one good image has no leave-one-out score; "
                                    "give threshold= or more good images")
        return self

    def leave_one_out_scores(self) -> np.ndarray:
        """Each good image's score with itself left out of the memory (NaN where the memory would be empty)."""
        refs, memory = self.references_, self.memory_
        in_memory = {str(r.path) for r in memory}
        scores = np.full(len(refs), np.nan)
        outside = [i for i, r in enumerate(refs) if str(r.path) not in in_memory]
        if self.spec.shots == "k" and not memory:
            raise ValueError(f"{self.method} needs good images: call fit first")
        if outside:
            scores[outside] = self._run([refs[i] for i in outside], memory).scores
        inside = [i for i, r in enumerate(refs) if str(r.path) in in_memory]
        from tqdm import tqdm

        for i in tqdm(inside, desc="leave-one-out", disable=not self.progress or len(inside) < 2, leave=False):
            rest = [r for r in memory if str(r.path) != str(refs[i].path)]
            if rest:
                scores[i] = self._run([refs[i]], rest).scores[0]
        return scores

    def score_and_maps(self, images) -> tuple[np.ndarray, np.ndarray | None, list[str]]:
        """Scores and maps of ``images`` from one pass.

        Parameters
        ----------
        images : path, PIL image, array, or a sequence of them
            The images to score.

        Returns
        -------
        (numpy.ndarray, numpy.ndarray or None, list of str)
            ``(N,)`` scores, ``(N, eval_size, eval_size)`` float32 maps (None for image-level methods) and the names.
        """
        import torch

        from zsad.methods.base import resize_maps

        with tempfile.TemporaryDirectory(prefix="zsad-images-") as tmp:
            records = image_records(images, cls=self.class_name, split="test", tmpdir=tmp)
            if self.spec.shots == "k" and not self.memory_:
                raise ValueError(f"{self.method} is a k-shot method: call fit(good_images) first")
            out = self._run(records, self.memory_ if self._uses_memory else [])
        maps = None
        if not out.info.get("image_only"):
            maps = out.maps.astype(np.float32)
            if maps.shape[-1] != self.eval_size or maps.shape[-2] != self.eval_size:
                maps = resize_maps(torch.from_numpy(maps), self.eval_size).numpy()
        return out.scores, maps, [r.relpath for r in records]

    def score(self, images) -> np.ndarray:
        """Image anomaly scores, higher = more anomalous.

        Parameters
        ----------
        images : path, PIL image, array, or a sequence of them
            The images to score.

        Returns
        -------
        numpy.ndarray
            ``(N,)`` scores.
        """
        return self.score_and_maps(images)[0]

    def anomaly_maps(self, images) -> np.ndarray:
        """Anomaly maps over each image square-resized (as the runners see it).

        Parameters
        ----------
        images : path, PIL image, array, or a sequence of them
            The images to score.

        Returns
        -------
        numpy.ndarray
            ``(N, eval_size, eval_size)`` float32; an image-level method (Cheung et al.) is a ValueError.
        """
        _, maps, _ = self.score_and_maps(images)
        if maps is None:
            raise ValueError(f"{self.method} scores whole images only: it has no anomaly maps")
        return maps

    def decide(self, scores) -> np.ndarray:
        """Decisions for given scores.

        Parameters
        ----------
        scores : array-like
            Scores of this detector.

        Returns
        -------
        numpy.ndarray
            ``(N,)`` int: 1 = anomalous (score > threshold), 0 = normal; no threshold is a ValueError saying why.
        """
        if self.threshold_ is None:
            raise ValueError(f"no threshold: {self.threshold_note_}")
        return (np.asarray(scores, dtype=np.float64) > self.threshold_).astype(np.int64)

    def predict(self, images) -> np.ndarray:
        """Decisions for images: needs ``threshold=`` or a fit with good images.

        Parameters
        ----------
        images : path, PIL image, array, or a sequence of them
            The images to decide on.

        Returns
        -------
        numpy.ndarray
            ``(N,)`` int: 1 = anomalous (score > threshold), 0 = normal.
        """
        if self.threshold_ is None:
            raise ValueError(f"no threshold: {self.threshold_note_}")
        return self.decide(self.score(images))

    def provenance(self) -> dict:
        """Where results came from (:func:`zsad.results.provenance`).

        Returns
        -------
        dict
            Weights (RANDOM or sha256), commit, resolved parameters, the few-shot memory, the threshold and its
            rule, the good images, and ``class_prompts_generated`` (model, seed, file) when class prompts were
            generated for this detector's class.
        """
        from zsad.results import provenance

        return provenance(self.parameters(), model=self._model(), seed=self.seed,
                          references={self.class_name: [r.relpath for r in self.memory_]} if self.memory_ else None,
                          extra={"threshold": self.threshold_, "threshold_rule": self.threshold_note_,
                                 "good_images": [r.relpath for r in self.references_],
                                 **({"class_prompts_generated": self.class_prompts_generated_}
                                    if self.class_prompts_generated_ else {})})
