"""GEM (Grounding Everything Module) token streams for open_clip 3.x vision towers.

GEM (Bousselham et al., CVPR 2024; package ``gem-torch``) is the training-free change of a CLIP ViT that FADE uses for
its language-guided segmentation and zero-shot vision memory. Besides the ordinary CLIP tokens it computes a second
stream in which the last ``gem_depth - 1`` blocks use *self-self attention* (q-q, k-k and v-v, with a few clustering
iterations and an adaptive temperature) instead of q-k attention, and it keeps only their attention residuals
(no MLP). Patch tokens of that stream are spatially meaningful, which plain CLIP patch tokens are not.

Why zsad carries its own GEM forward
------------------------------------
The official implementation (``gem-torch`` 1.0.1, byte-identical to WalBouss/GEM HEAD) works by monkey-patching
``VisionTransformer.forward``: it permutes the tokens to (L, N, D) before calling ``visual.transformer`` and swaps
only the last six residual blocks for its own modules, which expect that layout. That matched open_clip <= 2.24,
whose ``Transformer`` ran its blocks sequence-first. From open_clip 2.26.0 on, the ``Transformer`` is
``batch_first=True`` and does its own layout handling, so with the official GEM the six *un-patched* early blocks
attend across the batch axis instead of the token axis. Nothing raises: the outputs are merely wrong (FADE's
"zero shot works poorly" report on open_clip 2.29). ``gem-torch`` does not pin open_clip, so a fresh install
silently gets the broken combination. zsad runs on open_clip 3.3.0, so instead of patching open_clip this module
recomputes the whole vision forward from the tower's own parts (``conv1``, ``class_embedding``,
``positional_embedding``, ``ln_pre``, the blocks' ``ln_1``/``attn``/``ls_1``/``ln_2``/``mlp``/``ls_2``,
``ln_post``, ``proj``) in an explicit batch-first layout. Nothing in the model is modified. The ordinary stream
equals ``model.encode_image`` (before normalisation) and the GEM stream equals the official GEM on open_clip 2.24
with the same weights, to float tolerance (``tests/test_gem.py``, ``benchmarks/gem_reference.py``).

The math (Bousselham et al., CVPR 2024, arXiv:2312.00878, as the official code computes it: github.com/WalBouss/GEM,
``gem/gem_utils.py`` and ``gem/gem_wrapper.py``; the book's Methods chapter, book/methods.md, section "GEM patch
tokens"), for each wrapped block l with original-stream input ``z`` and GEM-stream input ``g``::

    u = LN1(z)                                   # from the ORIGINAL stream
    q, k, v = heads(u W_qkv + b_qkv)
    z <- z + ls1(W_o softmax(q k^T / sqrt(d_h)) v + b_o);  z <- z + ls2(MLP(LN2(z)))
    beta = mean_i ||u_i||_2 / sqrt(d_h)           # per image, full width; or the fixed ss_attn_temp
    for x in (v, k, q):
        x <- N(x); repeat ss_attn_iter times: x <- N(softmax(beta x x^T) x)
        o_x = softmax(beta x x^T) v
    g <- g + ls1(W_o mean(o_v, o_k, o_q) + b_o)   # no MLP, no LN2

``g`` starts as the output of the last un-wrapped block. Both streams leave through ``ln_post`` (all tokens) and
``@ proj``. Every attention is a ``scaled_dot_product_attention`` call (the three self-self streams batched in one),
so large inputs (896 px: 3137 tokens) do not materialise all attention maps at once.

:func:`encode_tokens_and_layers` also hands out the ordinary stream ``z`` as it leaves chosen blocks (MuSc's
intermediate-layer tokens) from the same pass; the arithmetic of both streams is the same either way.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["GemTokens", "encode_tokens", "encode_tokens_and_layers", "encode_tokens_multi", "resize_pos_embed"]

DEFAULT_GEM_DEPTH = 7
DEFAULT_SS_ATTN_ITER = 1


class GemTokens(NamedTuple):
    """The two token streams, each (B, 1 + h*w, D), token 0 = CLS; not L2-normalised."""

    clip: torch.Tensor
    gem: torch.Tensor


def _grid_of(grid) -> tuple[int, int]:
    if isinstance(grid, int):
        return grid, grid
    h, w = (int(g) for g in grid)
    return h, w


def resize_pos_embed(posemb: torch.Tensor, grid: int | tuple[int, int]) -> torch.Tensor:
    """Resample a ViT positional embedding with one CLS row to a new patch grid.

    ``posemb`` is (1 + n*n, D) as stored by open_clip (a leading batch axis of 1 is also accepted and kept).
    The patch part is resized with bicubic interpolation with antialias (``align_corners=False``), as GEM's
    ``resample_abs_pos_embed`` does; the CLS row is kept as it is. At the native grid the input is returned unchanged.
    Interpolation runs in float32 and the result is cast back to the input dtype.

    Parameters
    ----------
    posemb : (1 + n*n, D) or (1, 1 + n*n, D), the stored embedding (one CLS row, a square grid).
    grid : the new grid, an int (square) or (h, w).

    Returns
    -------
    torch.Tensor
        (1 + h*w, D), with the input's batch axis when it had one.
    """
    batched = posemb.dim() == 3
    if batched:
        if posemb.shape[0] != 1:
            raise ValueError(f"a batched positional embedding must have batch size 1, got {tuple(posemb.shape)}")
        pe = posemb[0]
    elif posemb.dim() == 2:
        pe = posemb
    else:
        raise ValueError(f"positional embedding must be (1+n*n, D) or (1, 1+n*n, D), got {tuple(posemb.shape)}")
    new_h, new_w = _grid_of(grid)
    if new_h < 1 or new_w < 1:
        raise ValueError(f"grid must be positive, got {(new_h, new_w)}")
    n_patch = pe.shape[0] - 1
    old = math.isqrt(max(n_patch, 0))
    if n_patch < 1 or old * old != n_patch:
        raise ValueError(f"positional embedding has {pe.shape[0]} rows: not 1 CLS row + a square grid")
    if (new_h, new_w) == (old, old):
        return posemb
    cls_row, patch = pe[:1], pe[1:]
    patch = patch.float().reshape(1, old, old, -1).permute(0, 3, 1, 2)
    patch = F.interpolate(patch, size=(new_h, new_w), mode="bicubic", antialias=True, align_corners=False)
    patch = patch.permute(0, 2, 3, 1).reshape(new_h * new_w, -1).to(pe.dtype)
    out = torch.cat([cls_row, patch], dim=0)
    return out.unsqueeze(0) if batched else out


# The private helpers below (_visual_of, _check_config, _embed, _qkv, _plain_block, _head) are also used by
# zsad.windows (WinCLIP window embeddings): keep their signatures.


def _visual_of(model) -> nn.Module:
    """The vision tower of an open_clip model, of its ``.visual``, or of what :func:`zsad.load_model` returns."""
    if not isinstance(model, nn.Module) and isinstance(getattr(model, "model", None), nn.Module):
        model = model.model  # a zsad.backbone.LoadedModel
    visual = getattr(model, "visual", model)
    needed = ("conv1", "class_embedding", "positional_embedding", "ln_pre", "transformer", "ln_post")
    missing = [name for name in needed if not hasattr(visual, name)]
    if missing or not hasattr(visual.transformer, "resblocks"):
        raise ValueError(f"GEM needs an open_clip VisionTransformer tower (timm / ResNet towers are not supported); "
                         f"{type(visual).__name__} lacks {missing or ['transformer.resblocks']}")
    return visual


def _check_config(visual: nn.Module, gem_depth: int, ss_attn_iter: int, ss_attn_temp: float | None) -> None:
    if getattr(visual, "attn_pool", None) is not None:
        raise ValueError("GEM: vision towers with an attentional pooler are not supported")
    pool_type = getattr(visual, "pool_type", "tok")
    if pool_type != "tok":
        raise ValueError(f"GEM: only CLS-token pooling ('tok') is supported, this tower uses {pool_type!r}")
    patch_dropout = getattr(visual, "patch_dropout", None)
    if visual.training and patch_dropout is not None and not isinstance(patch_dropout, nn.Identity):
        raise ValueError("GEM: patch dropout is active (model in training mode); call model.eval() first")
    blocks = visual.transformer.resblocks
    for i, blk in enumerate(blocks):
        attn = getattr(blk, "attn", None)
        ok = (isinstance(attn, nn.MultiheadAttention) and attn._qkv_same_embed_dim and attn.bias_k is None
              and attn.bias_v is None and not attn.add_zero_attn and not hasattr(blk, "ln_1_kv")
              and all(hasattr(blk, n) for n in ("ln_1", "ls_1", "ln_2", "mlp", "ls_2")))
        if not ok:
            raise ValueError(f"GEM: block {i} ({type(blk).__name__}) is not a plain open_clip ResidualAttentionBlock "
                             "with nn.MultiheadAttention (custom blocks, qk-norm, scaled-cosine attention are "
                             "not supported)")
    if isinstance(gem_depth, bool) or not isinstance(gem_depth, int) or gem_depth < 2:
        raise ValueError(f"gem_depth must be an int >= 2 (it wraps the last gem_depth-1 blocks), got {gem_depth!r}")
    if gem_depth - 1 > len(blocks):
        raise ValueError(f"gem_depth={gem_depth} wraps {gem_depth - 1} blocks but the tower has only {len(blocks)}")
    if isinstance(ss_attn_iter, bool) or not isinstance(ss_attn_iter, int) or ss_attn_iter < 0:
        raise ValueError(f"ss_attn_iter must be an int >= 0, got {ss_attn_iter!r}")
    if ss_attn_temp is not None and not (isinstance(ss_attn_temp, (int, float)) and ss_attn_temp > 0
                                         and math.isfinite(ss_attn_temp)):
        raise ValueError(f"ss_attn_temp must be None (adaptive) or a positive number, got {ss_attn_temp!r}")


def _patch_size(visual: nn.Module) -> tuple[int, int]:
    ks = visual.conv1.kernel_size
    st = visual.conv1.stride
    if tuple(ks) != tuple(st):
        raise ValueError(f"GEM: conv1 kernel {ks} != stride {st}; not a ViT patch embedding")
    return int(ks[0]), int(ks[1])


def _embed(visual: nn.Module, pixels: torch.Tensor) -> torch.Tensor:
    """Patch embedding + CLS + (resized) positional embedding + patch dropout + ln_pre -> (B, 1+h*w, C)."""
    if pixels.dim() != 4 or pixels.shape[1] != 3:
        raise ValueError(f"pixels must be (B, 3, H, W), got {tuple(pixels.shape)}")
    if not pixels.is_floating_point():
        raise ValueError(f"pixels must be a normalised float tensor, got dtype {pixels.dtype}")
    ph, pw = _patch_size(visual)
    H, W = pixels.shape[-2:]
    if H % ph or W % pw or H < ph or W < pw:
        raise ValueError(f"image size {H}x{W} is not a positive multiple of the patch size {ph}x{pw}")
    weight = visual.conv1.weight
    x = visual.conv1(pixels.to(device=weight.device, dtype=weight.dtype))  # (B, C, h, w)
    B, C, h, w = x.shape
    x = x.reshape(B, C, h * w).transpose(1, 2)
    cls_tok = visual.class_embedding.to(x.dtype).view(1, 1, C).expand(B, 1, C)
    x = torch.cat([cls_tok, x], dim=1)
    pos = visual.positional_embedding
    if pos.shape[-2] != 1 + h * w:  # same rule as GEM: resize only when the token count differs
        pos = resize_pos_embed(pos, (h, w))
    x = x + pos.to(x.dtype)
    patch_dropout = getattr(visual, "patch_dropout", None)
    if patch_dropout is not None:
        x = patch_dropout(x)  # identity in eval mode (checked in _check_config)
    return visual.ln_pre(x)


def _qkv(block: nn.Module, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """In-projection of nn.MultiheadAttention, split into heads: three (B, H, N, d_h)."""
    attn = block.attn
    B, N, C = u.shape
    n_heads = attn.num_heads
    qkv = F.linear(u, attn.in_proj_weight, attn.in_proj_bias)
    qkv = qkv.view(B, N, 3, n_heads, C // n_heads).permute(2, 0, 3, 1, 4)
    return qkv[0], qkv[1], qkv[2]


def _merge_heads(x: torch.Tensor) -> torch.Tensor:
    B, n_heads, N, d_h = x.shape
    return x.transpose(1, 2).reshape(B, N, n_heads * d_h)


def _out_proj(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return F.linear(x, block.attn.out_proj.weight, block.attn.out_proj.bias)


def _plain_block(block: nn.Module, z: torch.Tensor, u: torch.Tensor, q, k, v) -> torch.Tensor:
    """open_clip's ResidualAttentionBlock.forward (no mask), given u = ln_1(z) and its q, k, v."""
    a = F.scaled_dot_product_attention(q, k, v)  # scale 1/sqrt(d_h), as nn.MultiheadAttention
    z = z + block.ls_1(_out_proj(block, _merge_heads(a)))
    return z + block.ls_2(block.mlp(block.ln_2(z)))


def _self_self(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, beta, ss_attn_iter: int) -> torch.Tensor:
    """GEM's ensemble of v-v, k-k and q-q self-self attention, (B, H, N, d_h) -> (B, H, N, d_h).

    ``beta`` is a float (fixed inverse temperature) or a (B,) tensor (adaptive, one per image). The three streams are
    stacked on the batch axis so each step is one sdpa call; a per-image beta is folded into the query
    (softmax(beta x x^T) = sdpa(beta x, x, ., scale=1)).
    """
    B, n_heads, N, d_h = v.shape
    xs = torch.stack([v, k, q]).reshape(3 * B, n_heads, N, d_h)  # GEM's order: xs1=v, xs2=k, xs3=q
    if isinstance(beta, torch.Tensor):
        beta_q = beta.to(xs.dtype).view(1, B, 1, 1, 1).expand(3, B, 1, 1, 1).reshape(3 * B, 1, 1, 1)

        def attend(x, values):
            return F.scaled_dot_product_attention(x * beta_q, x, values, scale=1.0)
    else:
        def attend(x, values):
            return F.scaled_dot_product_attention(x, x, values, scale=float(beta))

    xs = F.normalize(xs, dim=-1)
    for _ in range(ss_attn_iter):
        xs = F.normalize(attend(xs, xs), dim=-1)  # clustering: x <- N(softmax(beta x x^T) x)
    values = v.unsqueeze(0).expand(3, B, n_heads, N, d_h).reshape(3 * B, n_heads, N, d_h)
    out = attend(xs, values).view(3, B, n_heads, N, d_h)
    return (out[0] + out[1] + out[2]) / 3


def _head(visual: nn.Module, x: torch.Tensor) -> torch.Tensor:
    x = visual.ln_post(x)
    proj = getattr(visual, "proj", None)
    return x @ proj if proj is not None else x


def encode_tokens(model: nn.Module, pixels: torch.Tensor, *, gem_depth: int = DEFAULT_GEM_DEPTH,
                  ss_attn_iter: int = DEFAULT_SS_ATTN_ITER, ss_attn_temp: float | None = None) -> GemTokens:
    """Return the ordinary CLIP tokens and the GEM tokens of a batch of images.

    Parameters
    ----------
    model : an open_clip CLIP model (its ``.visual`` is used) or the VisionTransformer tower itself, in eval mode.
    pixels : float (B, 3, H, W), already normalised with the CLIP mean/std; H and W multiples of the patch size.
        When the patch grid differs from the model's native one, the positional embedding is resized with
        :func:`resize_pos_embed` (bicubic + antialias, CLS row kept), as GEM does.
    gem_depth : GEM wraps the last ``gem_depth - 1`` blocks (FADE/GEM default 7: the last 6 of 12).
    ss_attn_iter : clustering iterations of the self-self attention (default 1).
    ss_attn_temp : fixed inverse temperature of the self-self softmax; None (default) = adaptive,
        ``mean_i ||LN1(z)_i|| / sqrt(d_h)`` per image and block.

    Returns
    -------
    GemTokens(clip, gem), a tuple of two (B, 1 + h*w, D) tensors after ``ln_post`` and ``@ proj`` (D = output dim),
    token 0 = CLS, not L2-normalised. ``clip[:, 0]`` equals ``model.encode_image(pixels)`` (un-normalised).
    No gradients are needed: call it under ``torch.inference_mode()`` or ``torch.no_grad()``.
    """
    tokens, _ = _forward(model, pixels, (), gem_depth, ss_attn_iter, ss_attn_temp)
    return tokens


def encode_tokens_and_layers(model: nn.Module, pixels: torch.Tensor, layers, *, gem_depth: int = DEFAULT_GEM_DEPTH,
                             ss_attn_iter: int = DEFAULT_SS_ATTN_ITER, ss_attn_temp: float | None = None
                             ) -> tuple[GemTokens, dict[int, torch.Tensor]]:
    """:func:`encode_tokens` plus the residual stream after chosen blocks, from the same forward pass.

    MuSc (Li et al., ICLR 2024; github.com/xrli-U/MuSc, ``models/backbone/open_clip/transformer.py``) scores the
    tokens of intermediate blocks of the ordinary stream as they leave the block: the raw residual stream, before
    ``ln_post`` and ``proj`` (so of the tower's width, not its output dim). These are those tensors; the GEM stream
    does not enter them.

    Parameters
    ----------
    model, pixels, gem_depth, ss_attn_iter, ss_attn_temp : as :func:`encode_tokens`.
    layers : block indices, 0-based (``0`` = after the first block, ``n_blocks - 1`` = after the last); MuSc's
        ViT-L/14 layers ``[5, 11, 17, 23]`` are these indices. Distinct ints in ``[0, n_blocks)``.

    Returns
    -------
    tuple
        ``(GemTokens(clip, gem), {layer: (B, 1 + h*w, width)})``: the two streams exactly as :func:`encode_tokens`
        returns them (the extra outputs change no arithmetic), and the residual stream after each chosen block,
        token 0 = CLS, not normalised. ``_head`` of the last block's entry is ``clip``.
    """
    visual = _visual_of(model)
    n_blocks = len(visual.transformer.resblocks)
    wanted = tuple(layers)
    if not wanted:
        raise ValueError("layers is empty: name at least one block index (0-based)")
    for layer in wanted:
        if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer < n_blocks:
            raise ValueError(f"layers must be block indices in [0, {n_blocks}) for this {n_blocks}-block tower, "
                             f"got {layer!r}")
    if len(set(wanted)) != len(wanted):
        raise ValueError(f"layers must be distinct, got {list(wanted)}")
    return _forward(model, pixels, wanted, gem_depth, ss_attn_iter, ss_attn_temp)


def _forward(model, pixels, layers, gem_depth, ss_attn_iter, ss_attn_temp
             ) -> tuple[GemTokens, dict[int, torch.Tensor]]:
    """The one vision forward: both streams, and the ordinary stream after each block in ``layers``."""
    visual = _visual_of(model)
    _check_config(visual, gem_depth, ss_attn_iter, ss_attn_temp)
    blocks = visual.transformer.resblocks
    first_wrapped = len(blocks) - (gem_depth - 1)
    taps: dict[int, torch.Tensor] = {}

    z = _embed(visual, pixels)
    for i, blk in enumerate(blocks[:first_wrapped]):
        u = blk.ln_1(z)
        z = _plain_block(blk, z, u, *_qkv(blk, u))
        if i in layers:
            taps[i] = z
    g = z
    for i, blk in enumerate(blocks[first_wrapped:], start=first_wrapped):
        u = blk.ln_1(z)
        q, k, v = _qkv(blk, u)
        if ss_attn_temp is None:
            d_h = u.shape[-1] // blk.attn.num_heads
            beta = u.norm(dim=-1).mean(dim=-1) * d_h ** -0.5  # (B,)
        else:
            beta = float(ss_attn_temp)
        o = _self_self(q, k, v, beta, ss_attn_iter)
        g = g + blk.ls_1(_out_proj(blk, _merge_heads(o)))
        z = _plain_block(blk, z, u, q, k, v)
        if i in layers:
            taps[i] = z
    return GemTokens(_head(visual, z), _head(visual, g)), {layer: taps[layer] for layer in layers}


def encode_tokens_multi(model: nn.Module, pixels_by_size: dict[int, torch.Tensor], **gem_kwargs
                        ) -> dict[int, GemTokens]:
    """:func:`encode_tokens` for each entry of ``{size: pixels}`` (e.g. FADE's 240/448/896 views of one batch).

    Parameters
    ----------
    model : as :func:`encode_tokens`.
    pixels_by_size : ``{size: (B, 3, size, size) pixels}``.
    **gem_kwargs
        ``gem_depth``, ``ss_attn_iter``, ``ss_attn_temp`` of :func:`encode_tokens`.

    Returns
    -------
    dict
        ``{size: GemTokens}``.
    """
    return {size: encode_tokens(model, pixels, **gem_kwargs) for size, pixels in pixels_by_size.items()}
