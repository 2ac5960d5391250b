"""Build CLIP models from local files only.

zsad never downloads weights: a model is either loaded from a local open_clip checkpoint file (the same
``vit_b_16_plus_240-laion400m_e31-8fb26589.pt`` the FADE code uses) or built with seeded random weights. A random model
runs the whole pipeline, and everything made with it says so (:attr:`LoadedModel.weights_label`).

``zsad-tiny-vit`` is a small config shipped with zsad (12 blocks like ViT-B, 15x15 grid at 240 px, width 64) so that
tests and the default CPU job run the real code paths in seconds.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

# Set before open_clip/transformers import huggingface_hub, so any named-tag lookup fails fast instead of hanging.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import open_clip  # noqa: E402
import torch  # noqa: E402

from zsad.digest import file_sha256  # noqa: E402  (re-exported: loaders and banners hash checkpoints)

DEFAULT_MODEL = "ViT-B-16-plus-240"
CHECKPOINT_ENV = "ZSAD_CHECKPOINT"
RANDOM = "random"
_CONFIG_DIR = Path(__file__).parent / "model_configs"
open_clip.add_model_config(_CONFIG_DIR)


class CheckpointError(ValueError):
    """A checkpoint file that is missing, unreadable or made for another architecture."""


class WeightsInfo:
    """What provenance says about a model's weights; needs ``name``, ``checkpoint``, ``sha256`` and ``seed``."""

    random_note = "numbers test the pipeline, not CLIP"  # what random weights mean for this kind of model

    @property
    def is_random(self) -> bool:
        return self.checkpoint is None

    @property
    def weights_label(self) -> str:
        """One line for tables and figures: what weights produced these numbers."""
        if self.is_random:
            return f"RANDOM WEIGHTS ({self.name}, seed {self.seed}): {self.random_note}"
        return f"{self.name} from {Path(self.checkpoint).name} (sha256 {self.sha256[:12]})"

    def provenance(self) -> dict:
        return {"model": self.name, "checkpoint": self.checkpoint, "checkpoint_sha256": self.sha256,
                "random_weights": self.is_random, "init_seed": self.seed}


@dataclass
class LoadedModel(WeightsInfo):
    """An open_clip model in eval mode with what provenance needs to know about its weights."""

    model: torch.nn.Module
    tokenizer: object
    name: str  # open_clip architecture name
    checkpoint: str | None  # absolute path of the weights file, None for random init
    sha256: str  # checkpoint sha256, or "random"
    seed: int  # seed of the random init (also used when a checkpoint is loaded, for any unset tensor)


def list_models() -> list[str]:
    return open_clip.list_models()


def default_checkpoint() -> str | None:
    """The checkpoint named by ``$ZSAD_CHECKPOINT`` (the default of every ``--checkpoint`` option), or None."""
    value = os.environ.get(CHECKPOINT_ENV, "").strip()
    return value or None


def _read_state_dict(path: Path) -> dict:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for corrupt/foreign files
        raise CheckpointError(f"{path}: cannot be read as a torch checkpoint ({type(exc).__name__}: {exc})") from exc
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: not a state dict of tensors (got {type(obj).__name__})")
    # Checkpoints saved from DistributedDataParallel prefix every key with "module.".
    if all(k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    # NaN/inf weights would only show up later as NaN scores, far from their cause: name the tensor now.
    bad = [k for k, v in obj.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise CheckpointError(f"{path}: {len(bad)} tensor(s) hold NaN or inf values, e.g. {bad[0]!r} (a corrupt or "
                              "diverged checkpoint)")
    return obj


def load_model(name: str = DEFAULT_MODEL, checkpoint: str | os.PathLike | None = None, seed: int = 0,
               device: str | torch.device = "cpu") -> LoadedModel:
    """Return an open_clip model and tokenizer in eval mode, from a local file or seeded random init.

    Parameters
    ----------
    name : str, default "ViT-B-16-plus-240"
        open_clip architecture name, e.g. ``"ViT-B-16-plus-240"`` or zsad's ``"zsad-tiny-vit"``.
    checkpoint : str or os.PathLike, optional
        Path of a local open_clip state dict (``torch.load(weights_only=True)``). None: seeded random weights.
    seed : int, default 0
        Seed of the random initialisation (fixed, so random-weight runs are reproducible).
    device : str or torch.device, default "cpu"
        Where the model is put after loading.

    Returns
    -------
    LoadedModel
        The model in eval mode, its tokenizer, and what provenance records of the weights (name, checkpoint path,
        sha256 or ``"random"``, seed).

    Raises
    ------
    ValueError
        An unknown architecture; :class:`CheckpointError` (a ValueError) for a missing or unreadable checkpoint,
        one made for another architecture, or one with NaN/inf tensors (named).
    """
    if name not in open_clip.list_models():
        raise ValueError(f"unknown model {name!r}; open_clip knows e.g. {DEFAULT_MODEL!r}, 'zsad-tiny-vit'")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        # open_clip logs "No pretrained weights loaded" on the root logger; zsad marks random weights itself
        # (weights_label), in every result, so the log line would only clutter notebooks.
        logging.disable(logging.WARNING)
        try:
            model = open_clip.create_model(name, pretrained=None, device="cpu")
        finally:
            logging.disable(logging.NOTSET)
    sha = RANDOM
    ckpt_path = None
    if checkpoint is not None:
        ckpt_path = Path(checkpoint).expanduser().resolve()
        if not ckpt_path.is_file():
            raise CheckpointError(f"{ckpt_path}: checkpoint file not found (set --checkpoint or ${CHECKPOINT_ENV})")
        state = _read_state_dict(ckpt_path)
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            first = str(exc).splitlines()[:4]
            raise CheckpointError(f"{ckpt_path}: does not fit architecture {name}: " + " ".join(first)) from exc
        sha = file_sha256(ckpt_path)
    model.eval().to(device)
    tokenizer = open_clip.get_tokenizer(name)
    return LoadedModel(model, tokenizer, name, str(ckpt_path) if ckpt_path else None, sha, seed)
