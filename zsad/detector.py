"""Grounding DINO (Liu et al. 2023) through transformers: load from a local folder or seeded random init, detect.

Cheung et al. 2024 locate the product with Grounding DINO, queried with the class name, and crop the boxes it
returns (Cheung et al., APSIPA ASC 2024, arXiv:2411.19220, sec. III, eq. 3). zsad never downloads weights, so a
detector is either

- a local Hugging Face-format folder (e.g. a copy of ``IDEA-Research/grounding-dino-tiny``: ``config.json``,
  ``model.safetensors``, ``preprocessor_config.json`` and the BERT tokenizer files), loaded with
  ``local_files_only=True``; or
- a seeded random-init model, marked RANDOM like :class:`zsad.backbone.LoadedModel`. ``small=True`` builds a tiny
  config (Swin with 16 channels and one block per stage, a 1-layer BERT of width 32, 1 encoder / 2 decoder layers of
  width 32, 20 queries, ~0.5M parameters, input resized to 128 px on the short side) that runs in well under a second
  per image on CPU; ``small=False`` the transformers default config (Swin-T + BERT-base, 172M parameters, the shape of
  grounding-dino-tiny).

Tokenizer of the random models
------------------------------
Grounding DINO's processor needs a BERT WordPiece tokenizer, and no vocabulary file ships with transformers. The
random models build one in memory (``BertTokenizer(vocab=dict)``, nothing is written to disk) from a 1103-entry
vocabulary laid out like ``bert-base-uncased``'s first 1067 ids: ``[PAD]`` 0, ``[UNK]`` 100, ``[CLS]`` 101,
``[SEP]`` 102, ``[MASK]`` 103, ``[unusedN]`` fillers, then the printable ASCII characters without upper case from id
999 on (so ``.`` is 1012 and ``?`` is 1029), then ``##a``..``##z``, ``##0``..``##9`` (1067-1102). The layout matters:
the model hard-codes ids 101, 102, 1012 and 1029 as the phrase delimiters of its text self-attention masks
(``SPECIAL_TOKENS`` in ``modeling_grounding_dino.py``), so with this vocabulary the random model splits a caption into
phrases exactly as the real one does. Words are spelled letter by letter (``"nut"`` -> ``n ##u ##t``).

Detection
---------
:func:`detect` runs one image and one caption (the class name, lower case, ending with ``"."``, as Grounding DINO's
own ``preprocess_caption`` does) and returns :class:`Detections`: boxes in pixel ``(x0, y0, x1, y1)`` coordinates of
the input image (floats, not clamped: a box may cross the border; :func:`zsad.methods.cheung.crop_boxes` clamps),
sorted by score. A box is kept when its score, the largest sigmoid token probability over the caption's tokens, is
above ``box_threshold``; ``text_threshold`` only decides which tokens form the box's phrase label (as in the
official ``groundingdino.util.inference.predict`` and transformers' post-processing). Defaults 0.35 / 0.25 are the
official demo's.

Detections do not depend on prompts, so every result is kept in an in-memory cache keyed by (detector identity:
weight hash or random config + seed, sha256 of the decoded RGB pixels and size, caption, both thresholds): the
three rows of Cheung's ablation, and reruns within one process, run the detector once per image.
:attr:`LoadedDetector.forward_calls` counts the real forward passes. An on-disk cache is future work.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

__all__ = ["DetectorError", "LoadedDetector", "Detections", "load_detector", "detect", "caption",
           "clear_detection_cache", "detection_cache_size", "small_vocab", "BOX_THRESHOLD", "TEXT_THRESHOLD"]

BOX_THRESHOLD = 0.35  # official Grounding DINO demo default
TEXT_THRESHOLD = 0.25  # official Grounding DINO demo default
RANDOM = "random"
GROUNDING_DINO_TYPE = "grounding-dino"

# Tiny random config: every size chosen as small as the architecture allows (decoder_layers >= 2: transformers
# ties the bbox heads of layers 1.. to layer 0 and fails with a single decoder layer).
_SMALL_SWIN = dict(image_size=224, patch_size=4, embed_dim=16, depths=[1, 1, 1, 1], num_heads=[1, 1, 2, 2],
                   window_size=4, out_features=["stage2", "stage3", "stage4"])
_SMALL_BERT = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                   max_position_embeddings=64)
_SMALL_GDINO = dict(d_model=32, encoder_layers=1, decoder_layers=2, encoder_ffn_dim=64, decoder_ffn_dim=64,
                    encoder_attention_heads=2, decoder_attention_heads=2, num_queries=20, max_text_len=32,
                    encoder_n_points=2, decoder_n_points=2)
_SMALL_IMAGE_SIZE = {"shortest_edge": 128, "longest_edge": 224}


class DetectorError(ValueError):
    """A detector folder that is missing, unreadable or not a Grounding DINO model (the message names it)."""


@dataclass
class LoadedDetector:
    """A Grounding DINO model in eval mode, its processor, and what provenance needs to know about its weights."""

    model: torch.nn.Module
    processor: object
    name: str  # folder name, or "grounding-dino-small" / "grounding-dino-default" for random configs
    folder: str | None  # absolute path of the model folder, None for random init
    sha256: str  # hash over the folder's files (see _folder_sha256), or "random"
    seed: int  # seed of the random init
    small: bool = False  # random init only: the tiny test config
    forward_calls: int = field(default=0, compare=False)  # real forward passes (cache misses) so far

    @property
    def is_random(self) -> bool:
        return self.folder is None

    @property
    def key(self) -> str:
        """Identity of the weights, used in the detection cache key."""
        if self.is_random:
            return f"random:{'small' if self.small else 'default'}:seed{self.seed}"
        return f"sha256:{self.sha256}"

    @property
    def weights_label(self) -> str:
        if self.is_random:
            return (f"RANDOM WEIGHTS ({self.name}, seed {self.seed}): boxes test the pipeline, not Grounding DINO")
        return f"Grounding DINO from {self.name} (sha256 {self.sha256[:12]})"

    def provenance(self) -> dict:
        return {"detector": self.name, "detector_folder": self.folder, "detector_sha256": self.sha256,
                "detector_random_weights": self.is_random, "detector_init_seed": self.seed,
                "detector_config": ("small" if self.small else "default") if self.is_random else "folder"}


@dataclass(frozen=True)
class Detections:
    """Boxes of one image: ``boxes`` (K, 4) float64 pixel ``(x0, y0, x1, y1)``, ``scores`` (K,), sorted by score
    (descending); ``labels`` the phrase of each box; ``image_size`` ``(width, height)`` of the image."""

    boxes: np.ndarray
    scores: np.ndarray
    labels: tuple[str, ...]
    image_size: tuple[int, int]

    def __len__(self) -> int:
        return len(self.scores)

    def to_json(self) -> dict:
        return {"boxes": np.round(self.boxes, 3).tolist(), "scores": np.round(self.scores, 6).tolist(),
                "labels": list(self.labels)}


# --------------------------------------------------------------------------------------------------- loading

def small_vocab() -> list[str]:
    """The 1103-token WordPiece vocabulary of the random models (layout in the module docstring)."""
    vocab = ["[PAD]"] + [f"[unused{i}]" for i in range(99)] + ["[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab += [f"[unused{i}]" for i in range(99, 994)]  # ids 104-998, as in bert-base-uncased
    vocab += [chr(c) for c in range(0x21, 0x7F) if not "A" <= chr(c) <= "Z"]  # ids 999-1066
    vocab += ["##" + c for c in "abcdefghijklmnopqrstuvwxyz0123456789"]
    return vocab


def _transformers():
    try:
        import transformers
    except ImportError as exc:  # an optional dependency (the "study" extra)
        raise ImportError("Grounding DINO needs the transformers package (pip install 'zsad[study]')") from exc
    return transformers


def _random_detector(seed: int, small: bool) -> tuple[torch.nn.Module, object]:
    tf = _transformers()
    BertConfig, BertTokenizer, SwinConfig = tf.BertConfig, tf.BertTokenizer, tf.SwinConfig
    GroundingDinoConfig, GroundingDinoForObjectDetection = tf.GroundingDinoConfig, tf.GroundingDinoForObjectDetection
    GroundingDinoImageProcessor, GroundingDinoProcessor = tf.GroundingDinoImageProcessor, tf.GroundingDinoProcessor

    vocab = small_vocab()
    tokenizer = BertTokenizer(vocab={tok: i for i, tok in enumerate(vocab)}, do_lower_case=True)
    if small:
        config = GroundingDinoConfig(backbone_config=SwinConfig(**_SMALL_SWIN),
                                     text_config=BertConfig(vocab_size=len(vocab), **_SMALL_BERT), **_SMALL_GDINO)
        image_processor = GroundingDinoImageProcessor(size=dict(_SMALL_IMAGE_SIZE))
    else:
        config = GroundingDinoConfig()  # Swin-T + BERT-base (vocab 30522 > every id of the small vocabulary)
        image_processor = GroundingDinoImageProcessor()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = GroundingDinoForObjectDetection(config)
    return model.eval(), GroundingDinoProcessor(image_processor=image_processor, tokenizer=tokenizer)


def _folder_sha256(folder: Path, chunk: int = 1 << 22) -> str:
    """sha256 over ``name NUL sha256(content)`` lines of every file at the top of the folder, sorted by name."""
    outer = hashlib.sha256()
    for path in sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")):
        h = hashlib.sha256()
        with open(path, "rb") as f:
            while block := f.read(chunk):
                h.update(block)
        outer.update(f"{path.name}\0{h.hexdigest()}\n".encode())
    return outer.hexdigest()


def _check_folder(folder: Path) -> None:
    if not folder.exists():
        raise DetectorError(f"{folder}: detector folder not found")
    if not folder.is_dir():
        raise DetectorError(f"{folder}: not a folder; a detector is a Hugging Face model folder "
                            "(config.json, model.safetensors, preprocessor and tokenizer files)")
    cfg = folder / "config.json"
    if not cfg.is_file():
        raise DetectorError(f"{folder}: not a Grounding DINO model folder (no config.json)")
    try:
        model_type = json.loads(cfg.read_text()).get("model_type")
    except (OSError, ValueError, AttributeError) as exc:
        raise DetectorError(f"{folder}: config.json is not readable JSON ({exc})") from None
    if model_type != GROUNDING_DINO_TYPE:
        raise DetectorError(f"{folder}: not a Grounding DINO model folder (config.json model_type is "
                            f"{model_type!r}, expected {GROUNDING_DINO_TYPE!r})")


def load_detector(folder: str | os.PathLike | None = None, seed: int = 0, small: bool = False,
                  device: str | torch.device = "cpu") -> LoadedDetector:
    """Return a Grounding DINO detector in eval mode, from a local folder or seeded random init.

    Parameters
    ----------
    folder : path, optional
        A local Hugging Face-format Grounding DINO folder (loaded with ``local_files_only=True``). None: random
        weights (marked RANDOM in :attr:`LoadedDetector.weights_label` and the provenance).
    seed : int
        Seed of the random initialisation.
    small : bool
        Random init only: the tiny test config instead of the default (grounding-dino-tiny-shaped) one.
    device : str or torch.device
        Where the model runs.

    Returns
    -------
    LoadedDetector
        The model, its processor and its weights' identity; a bad folder is a :class:`DetectorError` naming it.
    """
    if folder is None:
        model, processor = _random_detector(int(seed), bool(small))
        name = "grounding-dino-small" if small else "grounding-dino-default"
        return LoadedDetector(model.to(device), processor, name, None, RANDOM, int(seed), bool(small))
    path = Path(folder).expanduser().resolve()
    _check_folder(path)
    tf = _transformers()
    try:
        model = tf.GroundingDinoForObjectDetection.from_pretrained(path, local_files_only=True)
        processor = tf.GroundingDinoProcessor.from_pretrained(path, local_files_only=True)
    except Exception as exc:  # transformers raises OSError/ValueError/KeyError... for broken folders
        raise DetectorError(f"{path}: cannot load the Grounding DINO model or processor "
                            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from exc
    return LoadedDetector(model.eval().to(device), processor, path.name, str(path), _folder_sha256(path), int(seed))


# ------------------------------------------------------------------------------------------------- detection

_CACHE: dict[tuple, Detections] = {}


def clear_detection_cache() -> None:
    _CACHE.clear()


def detection_cache_size() -> int:
    return len(_CACHE)


def caption(text: str) -> str:
    """Grounding DINO's caption rule: lower case, single spaces, ending with ``"."``.

    Parameters
    ----------
    text : str
        The query, e.g. the class name (``"Metal nut"``).

    Returns
    -------
    str
        ``"metal nut."``; an empty query is a ValueError.
    """
    text = " ".join(str(text).lower().split())
    if not text.strip(" ."):
        raise ValueError("empty detection query")
    return text if text.endswith(".") else text + "."


def _image_digest(image: Image.Image) -> str:
    h = hashlib.sha256(f"{image.mode}:{image.size[0]}x{image.size[1]}:".encode())
    h.update(image.tobytes())
    return h.hexdigest()


def _check_threshold(name: str, value) -> float:
    value = float(value)
    if not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {value}")
    return value


@torch.inference_mode()
def detect(detector: LoadedDetector, image: Image.Image, text: str, box_threshold: float = BOX_THRESHOLD,
           text_threshold: float = TEXT_THRESHOLD, *, use_cache: bool = True) -> Detections:
    """Boxes of the objects matching ``text`` (the class name) in ``image``.

    Parameters
    ----------
    detector : LoadedDetector
        From :func:`load_detector`.
    image : PIL.Image.Image
        Converted to RGB.
    text : str
        The query (:func:`caption` is applied).
    box_threshold, text_threshold : float
        In [0, 1): a box is kept when its best token probability exceeds ``box_threshold``; ``text_threshold``
        picks the tokens of its label.
    use_cache : bool
        Use and fill the in-memory detection cache (module docstring).

    Returns
    -------
    Detections
        Boxes in pixel coordinates of ``image``, sorted by score; boxes may cross the image border (clamping is
        the cropping step's job).
    """
    if not isinstance(image, Image.Image):
        raise TypeError(f"detect expects a PIL image, got {type(image).__name__}")
    if image.mode != "RGB":
        image = image.convert("RGB")
    text = caption(text)
    box_threshold = _check_threshold("box_threshold", box_threshold)
    text_threshold = _check_threshold("text_threshold", text_threshold)
    key = (detector.key, _image_digest(image), text, box_threshold, text_threshold)
    if use_cache and key in _CACHE:
        return _CACHE[key]
    device = next(detector.model.parameters()).device
    inputs = detector.processor(images=image, text=text, return_tensors="pt").to(device)
    outputs = detector.model(**inputs)
    detector.forward_calls += 1
    width, height = image.size
    result = detector.processor.post_process_grounded_object_detection(
        outputs, inputs["input_ids"], threshold=box_threshold, text_threshold=text_threshold,
        target_sizes=[(height, width)])[0]
    scores = result["scores"].float().cpu().numpy().astype(np.float64)
    boxes = result["boxes"].float().cpu().numpy().astype(np.float64).reshape(-1, 4)
    labels = list(result["text_labels"])
    order = np.argsort(-scores, kind="stable")
    boxes, scores = boxes[order], scores[order]
    boxes.setflags(write=False)
    scores.setflags(write=False)
    dets = Detections(boxes, scores, tuple(str(labels[i]) for i in order), (int(width), int(height)))
    if use_cache:
        _CACHE[key] = dets
    return dets
