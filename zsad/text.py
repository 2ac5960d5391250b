"""Text embeddings of prompt ensembles and their class prototypes."""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

# FADE encodes text through GEM's wrapper, which puts every prompt inside this template before tokenising
# (``GEMWrapper.encode_text`` in github.com/WalBouss/GEM, gem/gem_wrapper.py, which FADE's utils/embeddings.py calls;
# book/methods.md, "Details the papers do not state"), e.g. "a photo of a a cropped photo of the damaged bottle."
# Kept to reproduce its numbers.
FADE_WRAPPER = "a photo of a {}."


@torch.inference_mode()
def encode_prompts(model, tokenizer, prompts: Sequence[str], *, wrapper: str | None = FADE_WRAPPER,
                   normalise: bool = True, batch_size: int = 128) -> torch.Tensor:
    """Encode prompts with the CLIP text tower: (P, D) float32, L2-normalised unless ``normalise=False``.

    ``model`` is an open_clip model or what :func:`zsad.load_model` returns (then ``tokenizer`` may be None: the
    model's own is used).
    """
    if not isinstance(model, torch.nn.Module) and isinstance(getattr(model, "model", None), torch.nn.Module):
        tokenizer = tokenizer if tokenizer is not None else model.tokenizer
        model = model.model  # a zsad.backbone.LoadedModel
    if not prompts:
        raise ValueError("no prompts to encode")
    texts = [wrapper.format(p) if wrapper else p for p in prompts]
    device = next(model.parameters()).device
    out = []
    for i in range(0, len(texts), batch_size):
        emb = model.encode_text(tokenizer(texts[i:i + batch_size]).to(device)).float()
        out.append(F.normalize(emb, dim=-1) if normalise else emb)
    return torch.cat(out)


def prototypes(normal: torch.Tensor, abnormal: torch.Tensor, *, renormalise: bool = False) -> torch.Tensor:
    """(2, D) class prototypes ``[normal, abnormal]``: the mean embedding of each side.

    FADE averages L2-normalised embeddings and does not re-normalise the mean (``renormalise=False``, its default
    text model); re-normalising changes the softmax scale and so the scores.
    """
    proto = torch.stack([normal.mean(0), abnormal.mean(0)])
    return F.normalize(proto, dim=-1) if renormalise else proto
