"""zsad.methods.musc: known answers on small hand-made arrays (LNAMD, the 30 % rule, RsCIN, pools) and a planted
defect that only one image has."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from zsad.methods.musc import (
    MuscConfig,
    check_class_size,
    default_layers,
    lnamd,
    musc,
    mutual_scores,
    reference_pools,
    rscin,
)


def _with_cls(patches: torch.Tensor) -> torch.Tensor:
    """(N, P, C) -> (N, 1 + P, C) with a CLS token (ones) that LNAMD must drop."""
    return torch.cat([torch.ones(patches.shape[0], 1, patches.shape[2]), patches], dim=1)


def _lnamd_reference(patches: np.ndarray, r: int) -> np.ndarray:
    """LNAMD written out with loops: (N, P, C) float64 -> (N, P, C)."""
    n, p, c = patches.shape
    g = math.isqrt(p)
    out = np.zeros_like(patches)
    for i in range(n):
        x = patches[i].reshape(g, g, c)  # row-major patches
        x = (x - x.mean()) / np.sqrt(x.var() + 1e-5)  # one mean/variance over the whole map
        pooled = np.zeros_like(x)
        half = r // 2
        for a in range(g):
            for b in range(g):
                acc = np.zeros(c)
                for da in range(-half, half + 1):
                    for db in range(-half, half + 1):
                        if 0 <= a + da < g and 0 <= b + db < g:
                            acc += x[a + da, b + db]
                pooled[a, b] = acc / (r * r)  # padding counts as zeros in the mean
        pooled /= np.linalg.norm(pooled, axis=-1, keepdims=True)
        out[i] = pooled.reshape(p, c)
    return out


@pytest.mark.parametrize("r", [1, 3, 5])
def test_lnamd_equals_the_written_out_formula(r):
    gen = torch.Generator().manual_seed(1)
    patches = torch.randn(2, 16, 3, generator=gen, dtype=torch.float64) * 2 + 0.5
    ours = lnamd(_with_cls(patches.float()), r)
    np.testing.assert_allclose(ours.numpy(), _lnamd_reference(patches.numpy(), r), atol=2e-6)
    assert torch.allclose(ours.norm(dim=-1), torch.ones(2, 16))


def test_lnamd_hand_computed_corner_of_a_constant_map():
    """A map that is constant per channel: LayerNorm leaves +-1 in the two channels; with r = 3 the corner patch
    averages 4 of 9 positions, the centre 9 of 9, and after the L2 norm both are (1, -1) / sqrt(2)."""
    patches = torch.tensor([[2.0, 0.0]]).repeat(9, 1)[None]  # (1, 9, 2): channel 0 = 2, channel 1 = 0
    out = lnamd(patches, 3, has_cls=False)
    want = torch.tensor([1.0, -1.0]) / math.sqrt(2)
    torch.testing.assert_close(out[0, 0], want)
    torch.testing.assert_close(out[0, 4], want)
    with pytest.raises(ValueError, match="odd"):
        lnamd(patches, 2, has_cls=False)


def _angles(thetas) -> torch.Tensor:
    """One patch per image: the unit vector at each angle, (N, 1, 2)."""
    t = torch.tensor(thetas, dtype=torch.float64)
    return torch.stack([t.cos(), t.sin()], dim=-1)[:, None].float()


def test_the_30_percent_rule_by_hand():
    """11 images, one patch each, at angles 0, 0.1, ..., 1.0: the distance of two is 2 sin(|delta| / 2) and each
    image averages its int(0.3 * 10) = 3 smallest."""
    z = _angles([0.1 * i for i in range(11)])
    got = mutual_scores(z)[:, 0].numpy()
    d = lambda steps: 2 * math.sin(0.05 * steps)  # noqa: E731
    assert got[0] == pytest.approx((d(1) + d(2) + d(3)) / 3, abs=1e-6)
    assert got[5] == pytest.approx((d(1) + d(1) + d(2)) / 3, abs=1e-6)
    assert got[10] == pytest.approx(got[0], abs=1e-6)


def test_mutual_scores_equal_a_cdist_reference_whatever_the_chunks():
    gen = torch.Generator().manual_seed(3)
    z = torch.nn.functional.normalize(torch.randn(7, 9, 5, generator=gen), dim=-1)
    ref = torch.zeros(7, 9, dtype=torch.float64)
    k = int(0.3 * 6)
    for i in range(7):
        per_image = torch.stack([torch.cdist(z[i].double(), z[j].double()).min(1).values for j in range(7) if j != i],
                                dim=1)  # (P, N - 1), as the official MSM
        ref[i] = per_image.topk(k, dim=1, largest=False).values.mean(1)
    big = mutual_scores(z)
    small = mutual_scores(z, chunk_mb=1e-4)  # one query and one reference image per block
    torch.testing.assert_close(big, ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(small, big, atol=1e-6, rtol=0)


def test_pools_and_their_k():
    pools = reference_pools(10, 0.5, seed=4)
    assert pools.shape == (10, 10) and not pools.diagonal().any()
    assert (pools.sum(1) == 4).all()  # round(0.5 * 9) = 4 (round half to even)
    assert torch.equal(pools, reference_pools(10, 0.5, seed=4)) and not torch.equal(pools, reference_pools(10, 0.5, 5))
    assert torch.equal(reference_pools(5), ~torch.eye(5, dtype=torch.bool))
    # with topmin_max = 1 a patch score is the mean distance to its pool: image 0 scored against images 1 and 3
    z = _angles([0.0, 0.2, 0.4, 0.6])
    pools = torch.tensor([[0, 1, 0, 1], [1, 0, 1, 0], [0, 1, 0, 1], [1, 0, 1, 0]], dtype=torch.bool)
    got = mutual_scores(z, topmin_max=1.0, pools=pools)[:, 0]
    assert got[0].item() == pytest.approx((2 * math.sin(0.1) + 2 * math.sin(0.3)) / 2, abs=1e-6)


def test_rscin_by_hand():
    """Class tokens at 0, 60 and 90 degrees (cosines 0.5, 0, 0.866); scores 0, 1, 2 -> normalised 0, 0.5, 1."""
    c = torch.tensor([[1.0, 0.0], [0.5, math.sqrt(3) / 2], [0.0, 1.0]])
    s = np.array([0.0, 1.0, 2.0])
    np.testing.assert_allclose(rscin(s, c, (1,)), [0.0, 0.5, 1.0])  # k = 1: each image is its own neighbour
    h = math.sqrt(3) / 2
    k2 = [(0 + 0.5 * 0.5) / 1.5, (0.5 + h * 1.0) / (1 + h), (1.0 + h * 0.5) / (1 + h)]
    np.testing.assert_allclose(rscin(s, c, (2,)), k2)
    np.testing.assert_allclose(rscin(s, c, (1, 2)), (np.array([0, 0.5, 1]) + k2) / 2)
    np.testing.assert_array_equal(rscin(s, c, ()), s)  # no windows: the scores as they are
    with pytest.raises(ValueError, match="larger than the class"):
        rscin(s, c, (4,))


def _planted(n=8, grid=4, c=8, defect_image=3, defect_patch=5, seed=0):
    """n images whose patch p is one shared vector b_p plus small noise; one image has one patch replaced."""
    gen = torch.Generator().manual_seed(seed)
    base = torch.randn(grid * grid, c, generator=gen)
    patches = base[None] + 0.05 * torch.randn(n, grid * grid, c, generator=gen)
    patches[defect_image, defect_patch] = 3 * torch.randn(c, generator=gen)
    return _with_cls(patches), torch.nn.functional.normalize(torch.randn(n, 4, generator=gen) + 3, dim=-1)


@pytest.mark.parametrize("r_list", [(1,), (1, 3)])
def test_a_defect_in_one_image_only_is_found(r_list):
    tokens, cls = _planted()
    cfg = MuscConfig(r_list=r_list, rscin_k=())
    out = musc({0: tokens, 7: tokens * 2 + 1}, cls, cfg, map_size=4)  # two "layers" (LayerNorm removes the affine)
    assert int(np.argmax(out.scores)) == 3  # the image with the defect scores highest
    assert out.maps.shape == (8, 4, 4) and int(out.maps[3].argmax()) == 5  # at the defect's patch
    assert out.maps[3].max() > 2 * np.delete(out.maps, 3, axis=0).max()
    assert out.info["k"] == 2 and out.info["pool_size"] == 7 and out.info["layers"] == [0, 7]
    np.testing.assert_allclose(out.scores, out.info["raw_scores"])  # rscin_k=(): the maps' maxima


def test_rescoring_and_the_half_pool_change_scores_but_keep_the_defect():
    tokens, cls = _planted(n=12)
    full = musc({0: tokens}, cls, MuscConfig(r_list=(1,)), map_size=8)
    half = musc({0: tokens}, cls, MuscConfig(r_list=(1,), pool_fraction=0.5, pool_seed=1), map_size=8)
    assert full.info["pool_size"] == 11 and half.info["pool_size"] == 6 and half.info["k"] == 1
    assert int(np.argmax(full.scores)) == int(np.argmax(half.scores)) == 3
    assert not np.allclose(full.info["raw_scores"], half.info["raw_scores"])  # the pool changes every score
    assert 0.0 <= full.scores.min() and full.scores.max() <= 1.0  # RsCIN works on min-max normalised scores


def test_upsampling_keeps_grid_values_at_the_corners():
    """align_corners=True (as the official code): the corners of the output map are the corner patches' scores."""
    tokens, cls = _planted()
    small = musc({0: tokens}, cls, MuscConfig(r_list=(1,), rscin_k=()), map_size=4)
    big = musc({0: tokens}, cls, MuscConfig(r_list=(1,), rscin_k=()), map_size=10)
    rows, cols = [0, 0, -1, -1], [0, -1, 0, -1]
    np.testing.assert_allclose(big.maps[:, rows, cols], small.maps[:, rows, cols], rtol=1e-6)


def test_small_classes_and_bad_settings_are_refused():
    tokens, cls = _planted(n=4)
    with pytest.raises(ValueError, match="too few"):
        musc({0: tokens}, cls, MuscConfig(), map_size=4)  # int(0.3 * 3) = 0 distances to average
    check_class_size(5, MuscConfig())  # int(0.3 * 4) = 1: enough
    with pytest.raises(ValueError, match="RsCIN window 9"):
        check_class_size(8, MuscConfig(rscin_k=(1, 8, 9)))
    for bad, match in [({"r_list": (2,)}, "odd"), ({"features": "dino"}, "features"), ({"pool_fraction": 0}, "pool"),
                       ({"layers": (3, 3)}, "distinct"), ({"topmin_max": 1.5}, "topmin_max")]:
        with pytest.raises(ValueError, match=match):
            MuscConfig(**bad).validated()
    assert default_layers(24) == (5, 11, 17, 23) and default_layers(12) == (2, 5, 8, 11)


# ------------------------------------------------------------------------------------- the chapter's measurements


def test_project_cost_follows_the_n_squared_law_by_hand():
    import pandas as pd

    from zsad.musc_cost import project_cost

    measured = pd.DataFrame([{"n_images": 10, "patches": 4, "dim": 8, "msm_s": 2.0, "lnamd_s": 0.5, "total_s": 30.0,
                              "macs": 10 * 9 * 16 * 8}])
    got = project_cost(measured, 20)
    assert got["msm_s"] == pytest.approx(2.0 * (20 * 19) / (10 * 9))
    assert got["total_s"] == pytest.approx(got["msm_s"] * 30.0 / 2.5)  # 12 steps of (msm + lnamd) measured
    assert project_cost(measured, 10, dim=16)["msm_s"] == pytest.approx(4.0)


def test_measure_cost_reports_what_it_timed():
    from zsad.musc_cost import measure_cost

    m = measure_cost((5, 6), grid=3, dim=4, n_layers=2, r_list=(1, 3))
    assert list(m["n_images"]) == [5, 6] and list(m["macs"]) == [5 * 4 * 81 * 4, 6 * 5 * 81 * 4]
    assert (m["msm_s"] > 0).all() and (m["total_s"] == 4 * (m["msm_s"] + m["lnamd_s"])).all()
    with pytest.raises(ValueError, match=">= 5"):
        measure_cost((4,))


def test_pool_effect_and_kinds_by_hand():
    import pandas as pd

    from zsad.musc_cost import class_kind, kind_table, pool_effect

    full = {"paths": list("abcd"), "classes": ["x"] * 4, "scores": [0.1, 0.2, 0.3, 0.9]}
    same = {**full, "scores": [0.2, 0.3, 0.4, 1.0]}
    flipped = {**full, "scores": [0.9, 0.3, 0.2, 0.1]}
    a, b = pool_effect(full, same).iloc[0], pool_effect(full, flipped).iloc[0]
    assert a["spearman"] == pytest.approx(1.0) and a["max_abs_change"] == pytest.approx(0.1) and not a["top_changed"]
    assert b["spearman"] == pytest.approx(-1.0) and b["top_changed"] and b["max_abs_change"] == pytest.approx(0.8)
    with pytest.raises(ValueError, match="different images"):
        pool_effect(full, {**same, "paths": list("abdc")})
    assert [class_kind("mvtec", c) for c in ("carpet", "bottle")] == ["texture", "object"]
    assert class_kind("visa", "pcb1") == "object" and class_kind("synthetic", "weave") == "texture"
    assert class_kind("synthetic", "grain") == "texture" and class_kind("magnetic_tile", "magnetic_tile") == "texture"
    assert class_kind("synthetic", "part") == "object" and class_kind("mvtec", "part") == "object"  # the nut
    assert class_kind("folder", "part") == "unknown"
    cols = ["dataset", "class", "method", "setting", "shots", "seed", "metric", "value", "ci_low", "ci_high"]
    metrics = pd.DataFrame([("mvtec", c, m, "0-shot", 0, 0, "pauroc", v, None, None)
                            for c, m, v in (("carpet", "musc", 0.9), ("wood", "musc", 0.7), ("bottle", "musc", 0.6),
                                            ("carpet", "fade", 0.5), ("wood", "fade", 0.5), ("bottle", "fade", 0.4),
                                            ("mean", "musc", 0.0))], columns=cols)
    t = kind_table(metrics).set_index("class")
    assert t.loc["mean of textures", "MuSc (0-shot)"] == "0.800"
    assert t.loc["mean of objects", "FADE (0-shot)"] == "0.400"
    assert t.loc["carpet", "kind"] == "texture" and "mean" not in t.index


def test_token_shapes_come_from_the_architecture_configs():
    import pandas as pd

    from zsad.musc_cost import projection_table, token_shape

    tiny, vit_l = token_shape("zsad-tiny-vit", 240), token_shape("ViT-L-14-336", 518)
    assert (tiny["grid"], tiny["width"], tiny["blocks"]) == (15, 64, 12)
    assert (vit_l["patches"], vit_l["width"], vit_l["blocks"]) == (37 * 37, 1024, 24)  # MuSc's backbone at 518 px
    measured = pd.DataFrame([{"n_images": 10, "patches": 225, "dim": 64, "msm_s": 1.0, "lnamd_s": 0.0,
                              "total_s": 12.0, "macs": 10 * 9 * 225 ** 2 * 64}])
    t = projection_table(measured, 10, [tiny, vit_l]).set_index("model")
    assert t.loc["zsad-tiny-vit", "msm_s"] == pytest.approx(1.0)
    assert t.loc["ViT-L-14-336", "msm_s"] == pytest.approx((1369 / 225) ** 2 * 1024 / 64)
    with pytest.raises(ValueError, match="patch size"):
        token_shape("zsad-tiny-vit", 250)


def test_rscin_refuses_a_neighbourhood_whose_weights_cancel():
    """Two opposite class tokens: with k = 2 each row keeps 1 and -1, which sum to 0; re-scoring is undefined."""
    c = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [-1.0, 0.0]])
    with pytest.raises(ValueError, match="RsCIN window 3"):
        rscin(np.array([0.0, 1.0, 2.0]), c, (1, 3))
    np.testing.assert_allclose(rscin(np.array([5.0, 5.0, 5.0]), c, (1,)), [0.0, 0.0, 0.0])  # constant: zeros


def test_the_chapter_grid_runs_musc_before_fade_and_one_run_per_pool_seed():
    from zsad.grids import TABLES, musc_settings, table_parameters

    rows = musc_settings("0,1", 0.5)
    assert [r["method"] for r in rows] == ["musc"] * 5 + ["fade"] * 2  # MuSc's pass fills FADE's 240 px tokens
    assert [r["options"]["pool_seed"] for r in rows if "pool_seed" in r.get("options", {})] == [0, 1]
    assert {r["variant"] for r in rows if r["method"] == "fade" and "variant" in r} == {"vision only, 240 px"}
    assert TABLES["musc"][0] == "t11_musc" and table_parameters("musc") == {"pool_seeds": "0,1,2",
                                                                             "pool_fraction": 0.5}


def test_a_square_planted_in_one_image_is_found_through_the_feature_pass(tmp_path):
    """End to end through the tiny random ViT: eight 128 px images of one smooth texture (small independent noise
    each), one with a bright 32 px square; MuSc (the runner, intermediate layers) ranks that image first and the
    maximum of its map lies inside the square."""
    from PIL import Image

    from zsad.backbone import load_model
    from zsad.data.records import ImageRecord
    from zsad.runners import musc_class

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:128, 0:128]
    base = 110 + 40 * np.sin(xx / 9.0) * np.cos(yy / 13.0)
    records = []
    for i in range(8):
        img = base[..., None] + rng.normal(0, 2, (128, 128, 3))
        if i == 5:
            img[64:96, 32:64] = 250
        path = tmp_path / f"{i}.png"
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(path)
        records.append(ImageRecord(path=path, relpath=path.name, cls="tex", split="test", label=int(i == 5),
                                   defect="square" if i == 5 else "good", mask_path=None))
    params = {"config": MuscConfig(image_size=128, rscin_k=()).validated(), "eval_size": 128}
    out = musc_class(load_model("zsad-tiny-vit", seed=0), "tex", records, [], params, progress=False)
    assert int(np.argmax(out.scores)) == 5 and out.info["layers"] == [2, 5, 8, 11]
    row, col = np.unravel_index(int(out.maps[5].argmax()), out.maps[5].shape)
    assert 64 - 8 <= row < 96 + 8 and 32 - 8 <= col < 64 + 8  # within the square (one 16 px patch of slack)
