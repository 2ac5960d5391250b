"""The one place that runs the CLIP image encoder over a dataset: tokens per (image, size), both streams.

Every method reads its image features from here. Tokens are L2-normalised (FADE normalises every token of both
streams before use; cosine similarities are then plain dot products).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from tqdm import tqdm  # not tqdm.auto: it warns on stderr in kernels without ipywidgets

from zsad.data import ImageRecord, load_image, preprocess
from zsad.gem import encode_tokens


@dataclass
class TokenSet:
    """Normalised tokens of a list of images: ``clip[size]`` and ``gem[size]`` are (N, 1 + g*g, D), CLS first."""

    relpaths: list[str]
    clip: dict[int, torch.Tensor] = field(default_factory=dict)
    gem: dict[int, torch.Tensor] = field(default_factory=dict)

    def stream(self, name: str) -> dict[int, torch.Tensor]:
        if name not in ("clip", "gem"):
            raise ValueError(f"token stream must be 'clip' or 'gem', got {name!r}")
        return self.clip if name == "clip" else self.gem

    def __len__(self) -> int:
        return len(self.relpaths)


@torch.inference_mode()
def extract_tokens(model, records: Sequence[ImageRecord], sizes: Sequence[int], *, batch_size: int = 8,
                   progress: bool = True, desc: str = "features") -> TokenSet:
    """Run the image tower once per (image, size); both token streams come from the same pass."""
    device = next(model.parameters()).device
    out = TokenSet([r.relpath for r in records])
    images = [load_image(r.path) for r in records]
    steps = [(s, i) for s in sorted(set(sizes)) for i in range(0, len(images), batch_size)]
    clip_parts: dict[int, list] = {s: [] for s in sizes}
    gem_parts: dict[int, list] = {s: [] for s in sizes}
    for size, start in tqdm(steps, desc=desc, disable=not progress, leave=False):
        pixels = torch.stack([preprocess(im, size) for im in images[start:start + batch_size]]).to(device)
        clip, gem = encode_tokens(model, pixels)
        clip_parts[size].append(F.normalize(clip.float(), dim=-1).cpu())
        gem_parts[size].append(F.normalize(gem.float(), dim=-1).cpu())
    for size in sorted(set(sizes)):
        out.clip[size] = torch.cat(clip_parts[size])
        out.gem[size] = torch.cat(gem_parts[size])
    return out
