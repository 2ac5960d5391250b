"""Known-answer tests of zsad.windows (WinCLIP's window embeddings) and zsad.methods.winclip.

The window embeddings are checked against a slow float64 reference written here: one window at a time, the token
subset built by hand from conv1 / class embedding / positional embedding, and every block's attention as an
explicit per-head softmax of explicit matmuls. That reference cannot be fooled by a (L, N, D) vs (N, L, D) layout
mix-up, which is the version trap of the book's traps page (book/traps.md, section 2); the anomalib-style permute
is shown to fail it.
The scoring formulas are checked on hand-made grids with hand-computed values.
"""
from __future__ import annotations

import copy
import math
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("open_clip")

from zsad.backbone import load_model  # noqa: E402
from zsad.gem import encode_tokens  # noqa: E402
from zsad.methods.winclip import WinClipConfig, harmonic_aggregate, harmonic_mean, memory_distance, text_scores, winclip  # noqa: E402
from zsad.windows import (  # noqa: E402
    WindowTokens,
    encode_all,
    encode_windows,
    extract_window_tokens,
    patch_tokens_unprojected,
    window_masks,
)

# ---------------------------------------------------------------------------------------------------- fixtures


pytestmark = pytest.mark.usefixtures("single_thread")


def _pixels(b: int, size: int = 240, seed: int = 0) -> torch.Tensor:
    return torch.randn(b, 3, size, size, generator=torch.Generator().manual_seed(seed))


# --------------------------------------------------------------------------------------------- window masks


def test_window_masks_counts_and_contents():
    masks = window_masks(15, (2, 3), 1)
    assert set(masks) == {2, 3}
    assert masks[2].shape == (196, 4) and masks[3].shape == (169, 9)
    assert masks[2].dtype == torch.long
    # first, second, first-of-second-row and last windows, patches row-major (index = row * 15 + col)
    assert masks[2][0].tolist() == [0, 1, 15, 16]
    assert masks[2][1].tolist() == [1, 2, 16, 17]
    assert masks[2][14].tolist() == [15, 16, 30, 31]
    assert masks[2][-1].tolist() == [208, 209, 223, 224]
    assert masks[3][0].tolist() == [0, 1, 2, 15, 16, 17, 30, 31, 32]
    assert masks[3][-1].tolist() == [192, 193, 194, 207, 208, 209, 222, 223, 224]
    # every window is an s x s square; coverage counts: corners 1 window, interior s*s windows
    for s, m in masks.items():
        rows, cols = m // 15, m % 15
        assert ((rows.max(1).values - rows.min(1).values) == s - 1).all()
        assert ((cols.max(1).values - cols.min(1).values) == s - 1).all()
        assert len({tuple(w) for w in m.tolist()}) == m.shape[0]
        cover = torch.bincount(m.reshape(-1), minlength=225).reshape(15, 15)
        assert cover[0, 0] == 1 and cover[7, 7] == s * s and cover.min() >= 1
    # stride 2: a flush last row/column is added so that every patch is covered
    m2 = window_masks(15, (2, 3), 2)
    assert m2[2].shape == (64, 4) and m2[3].shape == (49, 9)
    assert torch.bincount(m2[2].reshape(-1), minlength=225).min() >= 1
    assert m2[2][-1].tolist() == [208, 209, 223, 224]
    # rectangular grid and errors
    assert window_masks((3, 4), (2,))[2].tolist() == [[0, 1, 4, 5], [1, 2, 5, 6], [2, 3, 6, 7],
                                                      [4, 5, 8, 9], [5, 6, 9, 10], [6, 7, 10, 11]]
    with pytest.raises(ValueError):
        window_masks(15, (16,))
    with pytest.raises(ValueError):
        window_masks(15, (2,), stride=0)


# ------------------------------------------------------------------------------ window embeddings: reference


def _slow_tokens(visual, image: torch.Tensor) -> torch.Tensor:
    """Output of the embedding step of one image, by hand: (1 + h*w, C), CLS first, positional embedding added."""
    x = visual.conv1(image[None])[0]  # (C, h, w)
    C = x.shape[0]
    return torch.cat([visual.class_embedding.view(1, C), x.reshape(C, -1).T]) + visual.positional_embedding


def _slow_window_embedding(visual, tokens: torch.Tensor, patch_idx: list[int]) -> torch.Tensor:
    """One window, everything explicit: the token subset, then per-head softmax attention per block."""
    C = tokens.shape[1]
    z = visual.ln_pre(tokens[[0] + [1 + i for i in patch_idx]])  # (L, C): CLS + the window's patches
    for blk in visual.transformer.resblocks:
        attn = blk.attn
        u = blk.ln_1(z)
        qkv = u @ attn.in_proj_weight.T + attn.in_proj_bias
        q, k, v = qkv[:, :C], qkv[:, C:2 * C], qkv[:, 2 * C:]
        d_h = C // attn.num_heads
        heads = []
        for h in range(attn.num_heads):
            sl = slice(h * d_h, (h + 1) * d_h)
            logits = q[:, sl] @ k[:, sl].T / math.sqrt(d_h)  # (L, L): tokens attend to tokens of this window
            weights = torch.exp(logits - logits.max(dim=1, keepdim=True).values)
            heads.append((weights / weights.sum(dim=1, keepdim=True)) @ v[:, sl])
        o = torch.cat(heads, dim=1) @ attn.out_proj.weight.T + attn.out_proj.bias
        z = z + blk.ls_1(o)
        z = z + blk.ls_2(blk.mlp(blk.ln_2(z)))
    return visual.ln_post(z[0]) @ visual.proj


def _anomalib_style(visual, pixels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The (L, N, D) permute around ``visual.transformer`` that anomalib/zqhang do: wrong on open_clip >= 2.26."""
    x = visual._embeds(pixels)[0]  # noqa: SLF001  (CLS + patches + pos-emb, ln_pre), one image
    idx = torch.cat([torch.zeros(mask.shape[0], 1, dtype=torch.long), mask + 1], dim=1)
    seqs = x[idx]  # (n_windows, L, C)
    out = visual.transformer(seqs.permute(1, 0, 2)).permute(1, 0, 2)
    return visual.ln_post(out[:, 0]) @ visual.proj


def test_encode_windows_equals_slow_reference(tiny, tiny64):
    pixels = _pixels(2, seed=3)
    masks = window_masks(15, (2, 3))
    with torch.inference_mode():
        fast64 = encode_windows(tiny64, pixels.double())
        fast32 = encode_windows(tiny, pixels)
        visual = tiny64.visual
        tokens = _slow_tokens(visual, pixels[1].double())  # second image: checks the batch's image-major order
        for s in (2, 3):
            ref = torch.stack([_slow_window_embedding(visual, tokens, m.tolist()) for m in masks[s]])
            assert fast64[s].shape == (2, masks[s].shape[0], ref.shape[-1])
            torch.testing.assert_close(fast64[s][1], ref, rtol=1e-9, atol=1e-10)
            torch.testing.assert_close(fast32[s][1].double(), ref, rtol=1e-4, atol=1e-4)
            # the first image's windows differ from the second's (no mixing across the batch)
            assert not torch.allclose(fast64[s][0], ref)
            # the anomalib-style permute on a batch-first transformer gives other embeddings: this test catches it
            wrong = _anomalib_style(visual, pixels[1:2].double(), masks[s])
            cos = F.cosine_similarity(wrong, ref, dim=-1)
            assert cos.min() < 0.99, "the layout trap should change the window embeddings"


def test_full_window_equals_encode_image(tiny):
    pixels = _pixels(3, seed=4)
    with torch.inference_mode():
        full = encode_windows(tiny, pixels, scales=(15,))[15]  # one window holding every patch
        image = tiny.encode_image(pixels)
    assert full.shape == (3, 1, image.shape[-1])
    torch.testing.assert_close(full[:, 0], image, rtol=1e-4, atol=1e-5)


def test_encode_all_streams(tiny):
    pixels = _pixels(2, seed=5)
    visual = copy.deepcopy(tiny.visual)
    visual.output_tokens = True  # open_clip's own token output: ln_post, no proj (what anomalib uses)
    with torch.inference_mode():
        pooled, tokens = visual(pixels)
        cls, windows, patch = encode_all(tiny, pixels, patch_stream="ln_post")
        torch.testing.assert_close(cls, pooled, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(patch, tokens, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(patch_tokens_unprojected(tiny, pixels), tokens, rtol=1e-4, atol=1e-5)
        raw = patch_tokens_unprojected(tiny, pixels, ln_post=False)
        torch.testing.assert_close(tiny.visual.ln_post(raw), tokens, rtol=1e-4, atol=1e-5)
        _, _, raw2 = encode_all(tiny, pixels, scales=(), patch_stream="raw")
        torch.testing.assert_close(raw2, raw)
        clip_tokens = encode_tokens(tiny, pixels).clip
        _, _, proj = encode_all(tiny, pixels, scales=(), patch_stream="proj")
        torch.testing.assert_close(proj, clip_tokens[:, 1:], rtol=1e-4, atol=1e-5)
    assert patch.shape == (2, 225, 64) and proj.shape == (2, 225, 32)
    assert windows[2].shape == (2, 196, 32) and windows[3].shape == (2, 169, 32)
    with pytest.raises(ValueError):
        encode_all(tiny, pixels, patch_stream="nope")


# ------------------------------------------------------------------------------------------ scoring formulas


def test_harmonic_aggregation_hand_computed():
    masks = window_masks(3, (2,))[2]  # 4 windows of 2x2 on a 3x3 grid
    scores = torch.tensor([[1.0, 0.75, 0.5, 0.25]])
    # patch (r, c): harmonic mean of the windows covering it, e.g. centre: 4 / (1 + 4/3 + 2 + 4) = 12/25
    expected = torch.tensor([[[1.0, 6 / 7, 0.75],
                              [2 / 3, 12 / 25, 3 / 8],
                              [0.5, 1 / 3, 0.25]]], dtype=torch.float64)
    torch.testing.assert_close(harmonic_aggregate(scores, masks, 3), expected)
    # a zero window score zeroes exactly the patches it covers, without NaN
    zeroed = harmonic_aggregate(torch.tensor([[0.0, 0.75, 0.5, 0.25]]), masks, 3)
    assert torch.isfinite(zeroed).all()
    assert (zeroed[0, :2, :2] == 0).all() and zeroed[0, 0, 2] == 0.75 and zeroed[0, 2, 2] == 0.25
    torch.testing.assert_close(harmonic_mean([torch.tensor(0.5), torch.tensor(0.25)]),
                               torch.tensor(1 / 3, dtype=torch.float64))
    assert harmonic_mean([torch.tensor([0.0, 0.5]), torch.tensor([0.5, 0.5])]).tolist() == [0.0, 0.5]


def _unit(theta: float) -> list[float]:
    return [math.cos(theta), math.sin(theta)]


def _toy_tokens(cls_theta, window_thetas, patch, grid=3, name="img") -> WindowTokens:
    """Hand-made features on a small grid, 2-d image/window embeddings."""
    return WindowTokens(relpaths=[name], cls=torch.tensor([_unit(cls_theta)]),
                        windows={2: torch.tensor([[_unit(t) for t in window_thetas]])},
                        patch=torch.as_tensor(patch, dtype=torch.float32)[None], grid=(grid, grid))


def test_zero_shot_fusion_toy():
    tau = 0.07
    text = torch.tensor([[2.0, 0.0], [0.0, 0.5]])  # normal = x axis, abnormal = y axis (normalised inside)
    thetas = [0.1, 0.7, 1.2, 0.4]
    toy = _toy_tokens(0.9, thetas, torch.randn(9, 3))

    def prob(theta):  # softmax([cos, sin] / tau)[1]
        return 1.0 / (1.0 + math.exp((math.cos(theta) - math.sin(theta)) / tau))

    a = [prob(t) for t in thetas]
    s0 = prob(0.9)
    # windows (top-left) 0:(0,0) 1:(0,1) 2:(1,0) 3:(1,1); patches covered by hand
    cover = {(0, 0): [0], (0, 1): [0, 1], (0, 2): [1], (1, 0): [0, 2], (1, 1): [0, 1, 2, 3], (1, 2): [1, 3],
             (2, 0): [2], (2, 1): [2, 3], (2, 2): [3]}
    expected = np.zeros((3, 3))
    for (r, c), ws in cover.items():
        m2 = len(ws) / sum(1 / a[w] for w in ws)
        expected[r, c] = 2 / (1 / s0 + 1 / m2)
    out = winclip(toy, text, WinClipConfig(scales=(2,), temperature=tau, map_size=3))
    np.testing.assert_allclose(out.scores, [s0], rtol=1e-6)  # float32 embeddings
    np.testing.assert_allclose(out.maps[0], expected, rtol=1e-6)
    assert out.maps.dtype == np.float32
    torch.testing.assert_close(text_scores(toy.cls, text, tau), torch.tensor([s0], dtype=torch.float64), rtol=1e-6,
                               atol=0)


def test_memory_distance_toy():
    memory = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 2.0]])
    query = torch.tensor([[[3.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.6, 0.8, 0.0], [-1.0, 0.0, 0.0]]])
    d = memory_distance(query, memory)
    # equal to a reference -> 0; orthogonal to all -> 1/2; cos 0.6 -> 0.2; opposite of one, orthogonal to other -> 1/2
    torch.testing.assert_close(d, torch.tensor([[0.0, 0.5, 0.2, 0.5]], dtype=torch.float64), atol=1e-7, rtol=0)
    assert (memory_distance(-memory[None], memory[:1]) - torch.tensor([[1.0, 0.5]], dtype=torch.float64)
            ).abs().max() < 1e-7


def test_winclip_plus_toy():
    text = torch.eye(2)
    thetas = [0.1, 0.7, 1.2, 0.4]
    patch = F.normalize(torch.randn(9, 3, generator=torch.Generator().manual_seed(0)), dim=-1)
    query = _toy_tokens(0.9, thetas, patch, name="q")
    zero = winclip(query, text, WinClipConfig(scales=(2,), map_size=3))
    # the query is its own reference: every distance is 0, so M_W = 0
    same = winclip(query, text, WinClipConfig(shots=1, scales=(2,), map_size=3), ref_windows=query)
    np.testing.assert_allclose(same.scores, zero.scores / 2, rtol=1e-12)
    np.testing.assert_allclose(same.maps, zero.maps / 2, rtol=1e-6)
    assert same.info["references"] == ["q"]
    # a reference orthogonal to everything: every distance is 1/2, so M_W = 1/2 everywhere
    ortho = _toy_tokens(0.0, [0.0] * 4, torch.tensor([[0.0, 0.0, 1.0]] * 9), name="r")
    query_xy = _toy_tokens(math.pi / 2, [math.pi / 2] * 4, torch.tensor([[1.0, 0.0, 0.0]] * 9))
    z = winclip(query_xy, text, WinClipConfig(scales=(2,), map_size=3))
    plus = winclip(query_xy, text, WinClipConfig(shots=1, scales=(2,), map_size=3), ref_windows=ortho)
    np.testing.assert_allclose(plus.scores, (z.scores + 0.5) / 2, rtol=1e-12)
    np.testing.assert_allclose(plus.maps, (z.maps + 0.5) / 2, rtol=1e-6)
    summed = winclip(query_xy, text, WinClipConfig(shots=1, scales=(2,), map_size=3, fusion="sum"), ortho)
    np.testing.assert_allclose(summed.maps, z.maps + 0.5, rtol=1e-6)
    np.testing.assert_allclose(summed.scores, plus.scores, rtol=1e-12)
    # misuse is an error, not a silent fallback
    with pytest.raises(ValueError):
        winclip(query, text, WinClipConfig(shots=1, scales=(2,)))
    with pytest.raises(ValueError):
        winclip(query, text, WinClipConfig(shots=0, scales=(2,)), ref_windows=query)
    with pytest.raises(ValueError):
        winclip(query, text, WinClipConfig(shots=2, scales=(2,)), ref_windows=query)
    with pytest.raises(ValueError):
        winclip(query, text, WinClipConfig(scales=(3,)))
    with pytest.raises(ValueError):
        WinClipConfig(temperature=0).validated()


# ---------------------------------------------------------------------------------- synthetic set, tiny model


@pytest.fixture(scope="module")
def synth_features(synth_root):
    from zsad.data import load_dataset, sample_references
    from zsad.prompts import winclip_prompts
    from zsad.text import encode_prompts, prototypes

    loaded = load_model("zsad-tiny-vit", seed=0)
    out = {}
    t0 = time.perf_counter()
    for cls in ("weave", "grain"):
        test = load_dataset("mvtec", synth_root, cls, "test")
        refs = sample_references(load_dataset("mvtec", synth_root, cls, "train"), 2, seed=0)
        p = winclip_prompts(cls)
        text = prototypes(encode_prompts(loaded.model, loaded.tokenizer, p["normal"]),
                          encode_prompts(loaded.model, loaded.tokenizer, p["abnormal"]))
        out[cls] = dict(
            labels=np.array([r.label for r in test]),
            test=extract_window_tokens(loaded.model, test, batch_size=16, progress=False),
            refs=extract_window_tokens(loaded.model, refs, progress=False),
            text=text)
    out["seconds"] = time.perf_counter() - t0
    return out


def test_synthetic_shapes_and_ranges(synth_features):
    feats = synth_features["weave"]
    tw = feats["test"]
    n = len(feats["labels"])
    assert tw.cls.shape == (n, 32) and tw.patch.shape == (n, 225, 64)
    assert tw.windows[2].shape == (n, 196, 32) and tw.windows[3].shape == (n, 169, 32)
    torch.testing.assert_close(tw.windows[3].norm(dim=-1), torch.ones(n, 169))
    assert tw.grid == (15, 15) and tw.patch_stream == "ln_post"
    for shots, refs in ((0, None), (1, feats["refs"]), (2, feats["refs"])):
        out = winclip(tw, feats["text"], WinClipConfig(shots=shots), refs)
        assert out.maps.shape == (n, 240, 240) and out.maps.dtype == np.float32
        assert out.scores.shape == (n,) and out.scores.dtype == np.float64
        assert np.isfinite(out.maps).all() and np.isfinite(out.scores).all()
        assert out.maps.min() >= 0 and out.maps.max() <= 1
        assert (out.scores >= 0).all() and (out.scores <= 1).all()
        assert out.maps.std() > 0
    assert out.info["references"] == feats["refs"].relpaths


def test_few_shot_ranks_planted_defects(synth_features):
    """Image AUROC of WinCLIP+ with the tiny RANDOM model on the synthetic set (references: FADE sampler, seed 0).

    Measured (2026-11-23): weave 0.938 (1-shot) / 0.938 (2-shot), and 0.917-0.938 over reference seeds 0-2;
    grain 0.542 / 0.292 (0.29-0.79 over seeds 0-2, i.e. chance). Random weights carry local texture statistics
    that separate weave's planted defects reliably, not grain's; only weave is asserted.
    """
    from zsad.metrics import auroc

    results = {}
    for cls in ("weave", "grain"):
        feats = synth_features[cls]
        for shots in (1, 2):
            out = winclip(feats["test"], feats["text"], WinClipConfig(shots=shots), feats["refs"])
            results[(cls, shots)] = auroc(feats["labels"], out.scores)
    print("WinCLIP+ synthetic image AUROC (tiny random model):",
          {f"{c}/{k}-shot": round(v, 3) for (c, k), v in results.items()},
          f"features {synth_features['seconds']:.1f}s")
    assert results[("weave", 1)] >= 0.75 and results[("weave", 2)] >= 0.75
