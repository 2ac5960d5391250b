"""Known-answer tests of zsad.gem.

The ordinary stream is checked against open_clip's own forward; the GEM stream against a slow float64 reference
written here from GEM's formulas (book/methods.md, "GEM patch tokens"): one image at a time, explicit per-head loops,
explicit softmax of explicit matmuls, explicit temperature. The positional-embedding resize is checked against
Pillow's bicubic resampling, an implementation independent of torch's.
"""
from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from helpers import perturb_norms
from PIL import Image

open_clip = pytest.importorskip("open_clip")

from open_clip.transformer import VisionTransformer  # noqa: E402

from zsad.backbone import load_model  # noqa: E402
from zsad.gem import encode_tokens, encode_tokens_multi, resize_pos_embed  # noqa: E402

# --------------------------------------------------------------------------------------------------- fixtures


def _pixels(b: int, size: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(b, 3, size, size, generator=gen)


# ------------------------------------------------------------------------------------ independent references


def _pil_resize_pos_embed(posemb: torch.Tensor, grid: int) -> torch.Tensor:
    """Patch part resized channel by channel with Pillow's bicubic filter (torch's antialias=True mirrors it)."""
    pe = posemb.detach().float().numpy()
    n = math.isqrt(pe.shape[0] - 1)
    patch = pe[1:].reshape(n, n, -1)
    chans = [np.asarray(Image.fromarray(np.ascontiguousarray(patch[:, :, c])).resize((grid, grid), Image.BICUBIC))
             for c in range(patch.shape[-1])]
    out = np.stack(chans, axis=-1).reshape(grid * grid, -1)
    return torch.cat([posemb[:1].double(), torch.from_numpy(out).double()])


def _ln(x: torch.Tensor, mod: torch.nn.LayerNorm) -> torch.Tensor:
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + mod.eps) * mod.weight + mod.bias


def _softmax(logits: torch.Tensor) -> torch.Tensor:
    e = torch.exp(logits - logits.max(-1, keepdim=True).values)
    return e / e.sum(-1, keepdim=True)


def _unit(x: torch.Tensor) -> torch.Tensor:
    return x / torch.sqrt((x * x).sum(-1, keepdim=True))


def _reference_one(visual, img: torch.Tensor, gem_depth: int, ss_attn_iter: int, ss_attn_temp,
                   gem_mlp: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Slow GEM forward of ONE image (3, S, S) in the visual's dtype, line by line from the formulas.

    ``gem_mlp=True`` is a deliberately wrong variant (MLP applied on the GEM stream) to prove the test is sensitive.
    """
    P = visual.conv1.kernel_size[0]
    C = visual.conv1.out_channels
    img = img.to(visual.conv1.weight.dtype)
    # patch embedding as an explicit matmul over flattened patches (row-major grid)
    patches = img.unfold(1, P, P).unfold(2, P, P)  # (3, h, w, P, P)
    h, w = patches.shape[1:3]
    patches = patches.permute(1, 2, 0, 3, 4).reshape(h * w, 3 * P * P)
    tokens = patches @ visual.conv1.weight.reshape(C, 3 * P * P).T
    x = torch.cat([visual.class_embedding[None], tokens])
    pos = visual.positional_embedding
    if pos.shape[0] != 1 + h * w:
        pos = _pil_resize_pos_embed(pos, h).to(x.dtype)
    x = _ln(x + pos, visual.ln_pre)

    blocks = list(visual.transformer.resblocks)
    first_wrapped = len(blocks) - (gem_depth - 1)
    z = x
    g = None
    for idx, blk in enumerate(blocks):
        if idx == first_wrapped:
            g = z  # the GEM stream starts as the output of the last un-wrapped block
        n_heads = blk.attn.num_heads
        d_h = C // n_heads
        u = _ln(z, blk.ln_1)
        qkv = u @ blk.attn.in_proj_weight.T + blk.attn.in_proj_bias
        q, k, v = qkv[:, :C], qkv[:, C:2 * C], qkv[:, 2 * C:]
        heads = []
        for hd in range(n_heads):
            s = slice(hd * d_h, (hd + 1) * d_h)
            heads.append(_softmax((q[:, s] @ k[:, s].T) / math.sqrt(d_h)) @ v[:, s])
        attn_out = torch.cat(heads, -1) @ blk.attn.out_proj.weight.T + blk.attn.out_proj.bias
        if idx >= first_wrapped:
            if ss_attn_temp is None:
                beta = torch.sqrt((u * u).sum(-1)).mean() / math.sqrt(d_h)
            else:
                beta = ss_attn_temp
            gem_heads = []
            for hd in range(n_heads):
                s = slice(hd * d_h, (hd + 1) * d_h)
                outs = []
                for stream in (q[:, s], k[:, s], v[:, s]):
                    xh = _unit(stream)
                    for _ in range(ss_attn_iter):
                        xh = _unit(_softmax(beta * (xh @ xh.T)) @ xh)
                    outs.append(_softmax(beta * (xh @ xh.T)) @ v[:, s])
                gem_heads.append((outs[0] + outs[1] + outs[2]) / 3)
            gem_out = torch.cat(gem_heads, -1) @ blk.attn.out_proj.weight.T + blk.attn.out_proj.bias
            g = g + blk.ls_1(gem_out)
            if gem_mlp:
                g = g + blk.ls_2(blk.mlp(_ln(g, blk.ln_2)))
        z = z + blk.ls_1(attn_out)
        z = z + blk.ls_2(blk.mlp(_ln(z, blk.ln_2)))
    head = lambda t: _ln(t, visual.ln_post) @ visual.proj  # noqa: E731
    return head(z), head(g)


def _reference(model64, pixels, gem_depth=7, ss_attn_iter=1, ss_attn_temp=None, **kw):
    visual = getattr(model64, "visual", model64)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # many small ops: one thread is as fast and does not suffer from a busy machine
    try:
        outs = [_reference_one(visual, img.double(), gem_depth, ss_attn_iter, ss_attn_temp, **kw) for img in pixels]
    finally:
        torch.set_num_threads(threads)
    return torch.stack([o[0] for o in outs]), torch.stack([o[1] for o in outs])


def _assert_close(ours: torch.Tensor, ref: torch.Tensor, rtol: float = 2e-5):
    """Max abs difference below rtol times the reference's largest magnitude (float32 vs float64)."""
    scale = ref.abs().max().item()
    diff = (ours.double() - ref.double()).abs().max().item()
    assert diff <= rtol * scale, f"max abs diff {diff:.3g} > {rtol:g} * {scale:.3g}"


# --------------------------------------------------------------------------------------------- CLIP stream


def test_clip_stream_equals_open_clip_forward(tiny):
    x = _pixels(3, 240)
    with torch.inference_mode():
        clip, gem = encode_tokens(tiny, x)
        cls_ref = tiny.encode_image(x)
        visual = copy.copy(tiny.visual)  # shallow copy: toggle output_tokens without touching the fixture
        visual.output_tokens = True
        _, patch_ref = visual(x)
    assert clip.shape == gem.shape == (3, 1 + 15 * 15, 32)
    torch.testing.assert_close(clip[:, 0], cls_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(clip[:, 1:], patch_ref @ tiny.visual.proj, rtol=1e-5, atol=1e-5)


def test_clip_stream_equals_forward_intermediates(tiny):
    x = _pixels(2, 240, seed=5)
    with torch.no_grad():
        clip, _ = encode_tokens(tiny, x)
        out = tiny.visual.forward_intermediates(x, indices=1, normalize_intermediates=True, output_fmt="NLC",
                                                output_extra_tokens=True)
    last = torch.cat([out["image_intermediates_prefix"][-1], out["image_intermediates"][-1]], dim=1)
    torch.testing.assert_close(clip, last @ tiny.visual.proj, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("size", [448, 96])
def test_clip_stream_at_other_sizes_equals_open_clip_with_resized_pos_embed(tiny, size):
    x = _pixels(2, size, seed=2)
    resized = copy.deepcopy(tiny)
    with torch.no_grad():
        resized.visual.positional_embedding.data = resize_pos_embed(tiny.visual.positional_embedding, size // 16)
    with torch.inference_mode():
        clip, _ = encode_tokens(tiny, x)
        cls_ref = resized.encode_image(x)
    assert clip.shape == (2, 1 + (size // 16) ** 2, 32)
    torch.testing.assert_close(clip[:, 0], cls_ref, rtol=1e-5, atol=1e-5)


def test_real_architecture_vit_b_16_plus_240():
    big = load_model("ViT-B-16-plus-240", seed=0).model
    x = _pixels(1, 240, seed=3)
    with torch.inference_mode():
        clip, gem = encode_tokens(big, x)
        cls_ref = big.encode_image(x)
    assert clip.shape == gem.shape == (1, 226, 640)
    assert big.visual.transformer.resblocks[0].attn.num_heads == 14
    torch.testing.assert_close(clip[:, 0], cls_ref, rtol=1e-4, atol=1e-5)
    with torch.no_grad():  # float32 reference here: a float64 copy of the 208M-parameter model is slow to make
        ref_clip, ref_gem = _reference(big.visual, x)
    _assert_close(clip, ref_clip, rtol=2e-4)
    _assert_close(gem, ref_gem, rtol=2e-4)


# ---------------------------------------------------------------------------------------------- GEM stream


@pytest.mark.parametrize("size,batch,ss_attn_iter,ss_attn_temp", [
    (240, 2, 1, None), (240, 2, 2, None), (240, 1, 0, None), (240, 1, 1, 3.0),
    (448, 1, 1, None), (448, 1, 2, None), (448, 1, 2, 5.0),
])
def test_gem_stream_equals_slow_reference(tiny, tiny64, size, batch, ss_attn_iter, ss_attn_temp):
    x = _pixels(batch, size, seed=size + ss_attn_iter)
    x[1:] *= 2.5  # different images get different adaptive temperatures
    with torch.inference_mode():
        clip, gem = encode_tokens(tiny, x, ss_attn_iter=ss_attn_iter, ss_attn_temp=ss_attn_temp)
    with torch.no_grad():
        ref_clip, ref_gem = _reference(tiny64, x, ss_attn_iter=ss_attn_iter, ss_attn_temp=ss_attn_temp)
    _assert_close(clip, ref_clip)
    _assert_close(gem, ref_gem)


@pytest.mark.parametrize("gem_depth", [2, 4, 13])
def test_gem_depth(tiny, tiny64, gem_depth):
    x = _pixels(1, 240, seed=7)
    with torch.no_grad():
        clip, gem = encode_tokens(tiny, x, gem_depth=gem_depth)
        ref_clip, ref_gem = _reference(tiny64, x, gem_depth=gem_depth)
    _assert_close(clip, ref_clip)
    _assert_close(gem, ref_gem)


def test_reference_is_sensitive(tiny, tiny64):
    """Plausible mistakes move the GEM stream far beyond the tolerance used above."""
    x = _pixels(1, 240, seed=8)
    with torch.no_grad():
        _, gem = encode_tokens(tiny, x)
        _, wrong_mlp = _reference(tiny64, x, gem_mlp=True)
        _, wrong_iter = _reference(tiny64, x, ss_attn_iter=2)
        clip, _ = encode_tokens(tiny, x)
    scale = gem.abs().max().item()
    for wrong in (wrong_mlp, wrong_iter, clip.double()):
        assert (gem.double() - wrong).abs().max().item() > 1e-2 * scale


def test_layer_scale_tower_directly():
    """A tower with LayerScale (ls_1/ls_2 not Identity) passed as the VisionTransformer itself."""
    torch.manual_seed(0)
    vit = VisionTransformer(image_size=64, patch_size=16, width=32, layers=3, heads=2, mlp_ratio=4.0,
                            ls_init_value=0.5, output_dim=16).eval()
    perturb_norms(vit, seed=4)
    with torch.no_grad():
        for blk in vit.transformer.resblocks:
            blk.ls_1.gamma.uniform_(0.2, 1.5)
            blk.ls_2.gamma.uniform_(0.2, 1.5)
    x = _pixels(2, 96, seed=9)
    with torch.no_grad():
        clip, gem = encode_tokens(vit, x, gem_depth=3)
        ref_clip, ref_gem = _reference(copy.deepcopy(vit).double(), x, gem_depth=3)
    _assert_close(clip, ref_clip)
    _assert_close(gem, ref_gem)


def test_896_runs(tiny):
    with torch.inference_mode():
        clip, gem = encode_tokens(tiny, _pixels(1, 896, seed=10))
    assert clip.shape == gem.shape == (1, 1 + 56 * 56, 32)
    assert torch.isfinite(gem).all() and torch.isfinite(clip).all()


def test_batch_independence_and_multi(tiny):
    x = _pixels(3, 240, seed=11)
    with torch.inference_mode():
        clip, gem = encode_tokens(tiny, x)
        one = encode_tokens(tiny, x[1:2])
        multi = encode_tokens_multi(tiny, {240: x, 448: _pixels(1, 448, seed=12)})
    torch.testing.assert_close(one.gem, gem[1:2], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(one.clip, clip[1:2], rtol=1e-5, atol=1e-6)
    assert sorted(multi) == [240, 448]
    torch.testing.assert_close(multi[240].gem, gem)
    assert multi[448].gem.shape == (1, 785, 32)


def test_model_is_not_modified(tiny):
    before = {k: v.clone() for k, v in tiny.state_dict().items()}
    forward = tiny.visual.forward
    with torch.inference_mode():
        encode_tokens(tiny, _pixels(1, 448))
    assert tiny.visual.forward == forward
    after = tiny.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


# ------------------------------------------------------------------------------------ positional embedding


def test_resize_pos_embed_identity_at_native_grid(tiny):
    pe = tiny.visual.positional_embedding
    assert resize_pos_embed(pe, 15) is pe
    assert resize_pos_embed(pe, (15, 15)) is pe


@pytest.mark.parametrize("grid", [28, 56, 8])
def test_resize_pos_embed_matches_pillow_bicubic(tiny, grid):
    pe = tiny.visual.positional_embedding.detach()
    out = resize_pos_embed(pe, grid)
    assert out.shape == (1 + grid * grid, pe.shape[1])
    assert out.dtype == pe.dtype
    assert torch.equal(out[0], pe[0])  # CLS row kept
    torch.testing.assert_close(out.double(), _pil_resize_pos_embed(pe, grid), rtol=0, atol=2e-5)
    # antialias=True really is the kernel in use (the plain bicubic of torch differs a lot)
    n = 15
    plain = torch.nn.functional.interpolate(pe[1:].reshape(1, n, n, -1).permute(0, 3, 1, 2), size=(grid, grid),
                                            mode="bicubic", align_corners=False)
    plain = plain.permute(0, 2, 3, 1).reshape(grid * grid, -1)
    assert (plain - out[1:]).abs().max() > 1e-3


def test_resize_pos_embed_batched_and_rectangular(tiny):
    pe = tiny.visual.positional_embedding.detach()
    out = resize_pos_embed(pe[None], 28)
    assert out.shape == (1, 785, 64)
    torch.testing.assert_close(out[0], resize_pos_embed(pe, 28))
    assert resize_pos_embed(pe, (10, 20)).shape == (201, 64)


def test_resize_pos_embed_errors():
    with pytest.raises(ValueError, match="square"):
        resize_pos_embed(torch.zeros(1 + 15, 8), 4)
    with pytest.raises(ValueError):
        resize_pos_embed(torch.zeros(2, 226, 8), 4)
    with pytest.raises(ValueError):
        resize_pos_embed(torch.zeros(226, 8), 0)


# ------------------------------------------------------------------------------------------------- errors


def test_rectangular_images(tiny):
    x = torch.randn(1, 3, 240, 480)
    with torch.no_grad():
        clip, gem = encode_tokens(tiny, x)
    assert clip.shape == gem.shape == (1, 1 + 15 * 30, 32)


@pytest.mark.parametrize("shape", [(1, 3, 250, 250), (1, 3, 240, 250), (1, 1, 240, 240), (3, 240, 240),
                                   (1, 3, 8, 8)])
def test_bad_pixel_shapes(tiny, shape):
    with pytest.raises(ValueError):
        encode_tokens(tiny, torch.zeros(shape))


def test_bad_pixel_dtype(tiny):
    with pytest.raises(ValueError, match="float"):
        encode_tokens(tiny, torch.zeros(1, 3, 240, 240, dtype=torch.uint8))


@pytest.mark.parametrize("kwargs,match", [
    ({"gem_depth": 1}, "gem_depth"), ({"gem_depth": 14}, "only 12"), ({"gem_depth": 7.0}, "gem_depth"),
    ({"ss_attn_iter": -1}, "ss_attn_iter"), ({"ss_attn_iter": 1.5}, "ss_attn_iter"),
    ({"ss_attn_temp": 0.0}, "ss_attn_temp"), ({"ss_attn_temp": float("nan")}, "ss_attn_temp"),
])
def test_bad_arguments(tiny, kwargs, match):
    with pytest.raises(ValueError, match=match):
        encode_tokens(tiny, torch.zeros(1, 3, 240, 240), **kwargs)


def _small_vit(**kw):
    args = dict(image_size=32, patch_size=16, width=32, layers=2, heads=2, mlp_ratio=2.0, output_dim=8)
    args.update(kw)
    return VisionTransformer(**args).eval()


@pytest.mark.parametrize("kw,match", [
    ({"attentional_pool": True}, "attentional pooler"),
    ({"pool_type": "avg"}, "'tok'"),
    ({"qk_norm": True}, "not a plain open_clip ResidualAttentionBlock"),
])
def test_unsupported_towers(kw, match):
    with pytest.raises(ValueError, match=match):
        encode_tokens(_small_vit(**kw), torch.zeros(1, 3, 32, 32), gem_depth=2)


def test_training_patch_dropout_rejected():
    vit = _small_vit(patch_dropout=0.5).train()
    with pytest.raises(ValueError, match="patch dropout"):
        encode_tokens(vit, torch.zeros(1, 3, 32, 32), gem_depth=2)


def test_not_a_vit():
    with pytest.raises(ValueError, match="VisionTransformer"):
        encode_tokens(torch.nn.Linear(3, 3), torch.zeros(1, 3, 32, 32))


def test_encoders_accept_what_load_model_returns():
    import torch

    import zsad
    from zsad.gem import encode_tokens
    from zsad.text import encode_prompts

    loaded = zsad.load_model("zsad-tiny-vit")
    x = torch.randn(1, 3, 32, 32)
    a, b = encode_tokens(loaded, x), encode_tokens(loaded.model, x)
    assert all(torch.equal(p, q) for p, q in zip(a, b))
    assert torch.equal(encode_prompts(loaded, None, ["a photo"]), encode_prompts(loaded.model, loaded.tokenizer,
                                                                                   ["a photo"]))


# ------------------------------------------------------------------------------- intermediate layers (MuSc)


def test_layers_equal_open_clip_block_outputs_and_leave_the_streams_unchanged(tiny):
    """The residual stream after blocks 2, 5, 8, 11 equals open_clip's own intermediates (not normalised), the last
    one through ln_post and proj is the CLIP stream, and asking for layers changes neither stream by a bit."""
    from zsad.gem import _head, encode_tokens_and_layers

    x = _pixels(2, 240, seed=7)
    layers = (2, 5, 8, 11)
    with torch.no_grad():
        plain = encode_tokens(tiny, x)
        streams, taps = encode_tokens_and_layers(tiny, x, layers)
        ref = tiny.visual.forward_intermediates(x, indices=list(layers), normalize_intermediates=False,
                                                output_fmt="NLC", output_extra_tokens=True)
    assert torch.equal(streams.clip, plain.clip) and torch.equal(streams.gem, plain.gem)
    assert list(taps) == list(layers) and taps[2].shape == (2, 1 + 15 * 15, 64)  # the tower's width, not 32
    for j, layer in enumerate(layers):
        want = torch.cat([ref["image_intermediates_prefix"][j], ref["image_intermediates"][j]], dim=1)
        torch.testing.assert_close(taps[layer], want, rtol=1e-5, atol=1e-5)
    assert torch.equal(_head(tiny.visual, taps[11]), streams.clip)


@pytest.mark.parametrize("layers, match", [((), "empty"), ((12,), r"\[0, 12\)"), ((3, 3), "distinct"),
                                           ((True,), "block indices")])
def test_bad_layers(tiny, layers, match):
    from zsad.gem import encode_tokens_and_layers

    with pytest.raises(ValueError, match=match):
        encode_tokens_and_layers(tiny, _pixels(1, 32), layers)
