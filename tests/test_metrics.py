"""Tests of zsad.metrics: hand-computed cases first, then agreement with references."""

from __future__ import annotations

from collections import deque

import numpy as np
import pytest
from sklearn.metrics import auc, average_precision_score, precision_recall_curve, roc_auc_score

from zsad import metrics as M
from zsad.metrics import OneClassError

IMG_KEYS = ("auroc", "aupr", "ap", "f1_max")


# ----------------------------------------------------------------------------- helpers


def sk_image_metrics(y, s):
    """scikit-learn reference, written as FADE / APRIL-GAN compute it."""
    p, r, _ = precision_recall_curve(y, s)
    denom = p + r
    f1 = np.zeros_like(denom)
    np.divide(2 * p * r, denom, out=f1, where=denom > 0)
    return {
        "auroc": roc_auc_score(y, s),
        "aupr": auc(r, p),
        "ap": average_precision_score(y, s),
        "f1_max": f1.max(),
    }


def label_8conn(mask):
    """Slow breadth-first 8-connected labelling (independent of scipy)."""
    h, w = mask.shape
    lab = np.zeros((h, w), dtype=int)
    k = 0
    for i in range(h):
        for j in range(w):
            if mask[i, j] and not lab[i, j]:
                k += 1
                lab[i, j] = k
                todo = deque([(i, j)])
                while todo:
                    a, b = todo.popleft()
                    for da in (-1, 0, 1):
                        for db in (-1, 0, 1):
                            u, v = a + da, b + db
                            if 0 <= u < h and 0 <= v < w and mask[u, v] and not lab[u, v]:
                                lab[u, v] = k
                                todo.append((u, v))
    return lab, k


def slow_pro(masks, maps, limit=0.3):
    """Obviously-correct PRO: one curve point per distinct score, computed directly."""
    masks = np.asarray(masks, bool)
    maps = np.asarray(maps, np.float64)
    regions = []  # list of boolean masks over the whole stack
    for i in range(len(masks)):
        lab, k = label_8conn(masks[i])
        for r in range(1, k + 1):
            full = np.zeros_like(masks)
            full[i] = lab == r
            regions.append(full)
    normal = ~masks
    xs, ys = [0.0], [0.0]
    for t in np.unique(maps)[::-1]:
        xs.append(float(np.mean(maps[normal] >= t)))
        ys.append(float(np.mean([np.mean(maps[r] >= t) for r in regions])))
    xs.append(1.0)
    ys.append(1.0)
    area = 0.0
    for x0, x1, y0, y1 in zip(xs[:-1], xs[1:], ys[:-1], ys[1:]):
        if x0 >= limit or x1 == x0:
            continue
        x_end = min(x1, limit)
        y_end = y0 + (y1 - y0) * (x_end - x0) / (x1 - x0)
        area += (x_end - x0) * (y0 + y_end) / 2
    return area / limit


def random_pixels(seed, n=4, h=9, w=8, levels=None, dtype=np.float32):
    """Small random masks (some images defect-free) and maps correlated with them."""
    rng = np.random.default_rng(seed)
    masks = rng.random((n, h, w)) < 0.18
    masks[0] = False  # a defect-free image
    masks[1, 0, 0] = True  # at least one defect pixel
    if levels is None:
        maps = rng.random((n, h, w)) + 0.6 * masks
    else:  # few distinct values -> many ties
        maps = rng.integers(0, levels, (n, h, w)) + rng.integers(0, 3, (n, h, w)) * masks
    return masks, maps.astype(dtype)


# 4x4 hand case.  Mask (two 8-connected regions, A is diagonal):
#   A . . .      scores  .9 .0 .0 .0
#   . A . .              .0 .5 .7 .0
#   . . . .              .6 .4 .3 .0
#   . . B B              .0 .0 .8 .8
HAND_MASK = np.array([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 0, 0], [0, 0, 1, 1]], bool)
HAND_MAP = np.array([[.9, 0, 0, 0], [0, .5, .7, 0], [.6, .4, .3, 0], [0, 0, .8, .8]], np.float32)


# ---------------------------------------------------------------- image metrics by hand


def test_image_metrics_hand_case():
    # y = [0,0,1,1], s = [.1,.4,.35,.8]
    # AUROC: pos .35 beats .1 (1), pos .8 beats both (2) -> 3/4.
    # PR points (descending threshold): .8 (P1,R.5) .4 (P.5,R.5) .35 (P2/3,R1) .1 (P.5,R1)
    # AP = .5*1 + .5*2/3 = 5/6; AUPR = from (R0,P1): .5*(1+1)/2 + .5*(.5+2/3)/2 = 19/24
    # F1: (1,.5) -> 2/3, (2/3,1) -> .8 -> max .8
    m = M.image_metrics([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])
    assert m == pytest.approx({"auroc": 0.75, "ap": 5 / 6, "aupr": 19 / 24, "f1_max": 0.8}, abs=1e-12)
    assert all(type(v) is float for v in m.values())


def test_image_metrics_hand_case_with_tie_across_classes():
    # y = [1,0,1,0], s = [.9,.5,.5,.1]; the pos-neg pair tied at .5 counts 1/2.
    # AUROC = (1 + 1 + .5 + 1) / 4 = .875
    # PR points: .9 (P1,R.5) .5 (P2/3,R1) .1 (P.5,R1)
    # AP = .5*1 + .5*2/3 = 5/6; AUPR = .5*1 + .5*(1+2/3)/2 = 11/12; F1 max = .8
    m = M.image_metrics([1, 0, 1, 0], [0.9, 0.5, 0.5, 0.1])
    assert m == pytest.approx({"auroc": 0.875, "ap": 5 / 6, "aupr": 11 / 12, "f1_max": 0.8}, abs=1e-12)


@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.uint8])
def test_constant_scores(dtype):
    # all tied: one curve point (P = prevalence .4, R = 1)
    # AUROC .5; AP .4; AUPR = (1 + .4)/2 = .7; F1 = 2*.4/1.4
    y = [0, 1, 0, 0, 1]
    m = M.image_metrics(y, np.full(5, 3, dtype=dtype))
    assert m == pytest.approx({"auroc": 0.5, "ap": 0.4, "aupr": 0.7, "f1_max": 0.8 / 1.4}, abs=1e-12)


def test_perfect_and_reversed_ranking():
    y = [0, 0, 1, 1, 1]
    assert M.image_metrics(y, [1, 2, 3, 4, 5]) == pytest.approx(dict.fromkeys(IMG_KEYS, 1.0))
    assert M.auroc(y, [5, 4, 3, 2, 1]) == 0.0
    assert M.auroc(np.array(y, bool), [5.0, 4, 3, 2, 1]) == 0.0


def test_low_level_functions_equal_bundle():
    rng = np.random.default_rng(3)
    y = rng.random(60) < 0.4
    s = rng.integers(0, 6, 60).astype(float)
    m = M.image_metrics(y, s)
    assert M.auroc(y, s) == m["auroc"]
    assert M.aupr(y, s) == m["aupr"]
    assert M.average_precision(y, s) == m["ap"]
    assert M.f1_max(y, s) == m["f1_max"]


# ---------------------------------------------------------------- pixel metrics by hand


def test_pixel_hand_case_8_connectivity():
    # 8-connected: regions A = {(0,0),(1,1)}, B = {(3,2),(3,3)}; each pixel weighs
    # 1/(2*2) = .25.  12 normal pixels -> FPR steps of 1/12.
    # points (FPR, PRO): .9 (0,.25) .8 (0,.75) .7 (1/12,.75) .6 (2/12,.75) .5 (2/12,1)
    #                    .4 (3/12,1) .3 (4/12,1) 0 (1,1)
    # area to .3 = 2/12*.75 + 1/12*1 + (.3-3/12)*1 = .258333..; / .3 = 31/36
    # (4-connectivity would split A into two regions of weight 1/3 and give 22/27.)
    # pAUROC: positives .9, .8, .8 beat all 12 normals, .5 beats 10 -> 46/48
    # pF1: .8 gives TP3 FP0 -> P1 R.75 -> F1 6/7 (the maximum)
    m = M.pixel_metrics(HAND_MASK[None], HAND_MAP[None])
    assert m == pytest.approx({"pauroc": 46 / 48, "pf1_max": 6 / 7, "pro": 31 / 36}, abs=1e-12)
    assert M.pro_auc(HAND_MASK[None], HAND_MAP[None]) == pytest.approx(31 / 36, abs=1e-12)
    assert 22 / 27 != pytest.approx(31 / 36, abs=1e-3)
    assert slow_pro(HAND_MASK[None], HAND_MAP[None]) == pytest.approx(31 / 36, abs=1e-12)


def test_pixel_hand_case_with_defect_free_image():
    # add a 4x4 image without defects, all scores 0: 28 normal pixels
    # points: (0,.25) (0,.75) (1/28,.75) (2/28,.75) (2/28,1) (3/28,1) (4/28,1) (1,1)
    # area to .3 = 2/28*.75 + 2/28*1 + (.3-4/28)*1 = .3 - .5/28; pro = 1 - .5/(28*.3)
    # pAUROC = (3*28 + 26) / (4*28) = 110/112
    masks = np.stack([HAND_MASK, np.zeros((4, 4), bool)])
    maps = np.stack([HAND_MAP, np.zeros((4, 4), np.float32)])
    m = M.pixel_metrics(masks, maps)
    assert m["pro"] == pytest.approx(1 - 0.5 / (28 * 0.3), abs=1e-12)
    assert m["pauroc"] == pytest.approx(110 / 112, abs=1e-12)


def test_one_pixel_defects():
    # two 3x3 images, one-pixel defect each (2 regions of size 1, weight .5 each)
    # image 0: defect at centre, score 1; image 1: defect at corner, score .5,
    # one normal pixel at .6; the 15 other normal pixels are 0 -> 16 normals.
    # points: 1 (0,.5)  .6 (1/16,.5)  .5 (1/16,1)  0 (1,1)
    # area to .3 = 1/16*.5 + (.3-1/16)*1 = .26875 -> pro = .26875/.3
    # pAUROC: 1 beats 16, .5 beats 15 -> 31/32.  pF1: at .5 P=2/3, R=1 -> .8
    masks = np.zeros((2, 3, 3), bool)
    maps = np.zeros((2, 3, 3))
    masks[0, 1, 1], maps[0, 1, 1] = True, 1.0
    masks[1, 0, 0], maps[1, 0, 0] = True, 0.5
    maps[1, 2, 2] = 0.6
    m = M.pixel_metrics(masks, maps)
    assert m == pytest.approx({"pauroc": 31 / 32, "pf1_max": 0.8, "pro": 0.26875 / 0.3}, abs=1e-12)


def test_pro_fpr_crosses_limit_only_on_last_segment():
    # one region of 2 pixels scored 1 and 0; the 2 normal pixels are 0.
    # points: (0,0) -> t=1 (0,.5) -> t=0 (1,1): FPR jumps from 0 to 1.
    # PRO at .3 interpolated = .5 + .5*.3 = .65; area = .3*(.5+.65)/2 = .1725 -> .575
    masks = np.array([[[1, 1], [0, 0]]], bool)
    maps = np.array([[[1.0, 0.0], [0.0, 0.0]]])
    assert M.pro_auc(masks, maps) == pytest.approx(0.575, abs=1e-12)
    assert M.pro_auc(masks, maps.astype(np.uint8)) == pytest.approx(0.575, abs=1e-12)
    # full area (limit 1): one segment from (0,.5) to (1,1) -> (.5 + 1)/2 = .75
    assert M.pro_auc(masks, maps, limit=1.0) == pytest.approx(0.75, abs=1e-12)


def test_pro_limit_hit_exactly():
    # 10 normal pixels: 3 of them above the defect -> FPR .3 exactly before PRO rises.
    # points: (0,0) (.1,0) (.2,0) (.3,0) then defect -> (.3,1), rest (1,1)
    # area to .3 = 0 (no interpolation, the point at .3 is on the curve) -> pro 0
    masks = np.zeros((1, 1, 11), bool)
    masks[0, 0, 3] = True
    maps = np.array([[[9, 8, 7, 5, 0, 0, 0, 0, 0, 0, 0]]], np.uint8)
    assert M.pro_auc(masks, maps) == 0.0
    assert M.pro_auc(masks, maps.astype(float)) == 0.0
    assert slow_pro(masks, maps) == 0.0


# --------------------------------------------------------------- agreement with references


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("kind", ["float_ties", "float_distinct", "uint8"])
def test_image_metrics_match_sklearn(seed, kind):
    rng = np.random.default_rng(seed)
    n = 300
    y = rng.random(n) < 0.35
    if kind == "float_distinct":
        s = rng.random(n) + 0.3 * y
    else:
        s = rng.integers(0, 12, n) + rng.integers(0, 4, n) * y
        s = s.astype(np.uint8 if kind == "uint8" else np.float64) / (1 if kind == "uint8" else 7)
    ref = sk_image_metrics(y, s)
    m = M.image_metrics(y.astype(int), s)
    assert m == pytest.approx(ref, abs=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.uint8])
def test_pixel_metrics_match_sklearn_and_slow_pro(seed, dtype):
    levels = None if dtype is not np.uint8 and seed == 0 else 8
    masks, maps = random_pixels(seed, levels=levels, dtype=dtype)
    ref = sk_image_metrics(masks.ravel(), maps.ravel())
    m = M.pixel_metrics(masks, maps)
    assert m["pauroc"] == pytest.approx(ref["auroc"], abs=1e-12)
    assert m["pf1_max"] == pytest.approx(ref["f1_max"], abs=1e-12)
    assert m["pro"] == pytest.approx(slow_pro(masks, maps), abs=1e-12)
    # pixel-level AP / AUPR through the low-level functions on (N, H, W) arrays
    assert M.average_precision(masks, maps) == pytest.approx(ref["ap"], abs=1e-12)
    assert M.aupr(masks, maps) == pytest.approx(ref["aupr"], abs=1e-12)


@pytest.mark.parametrize("limit", [0.05, 0.3, 0.77, 1.0])
def test_pro_other_limits_match_slow_reference(limit):
    masks, maps = random_pixels(7, levels=5)
    assert M.pro_auc(masks, maps, limit=limit) == pytest.approx(slow_pro(masks, maps, limit), abs=1e-12)


def test_uint8_path_equals_float_path():
    masks, maps = random_pixels(11, n=6, h=16, w=16, levels=40, dtype=np.uint8)
    a = M.pixel_metrics(masks, maps)
    for dt in (np.float32, np.float64, np.int64):
        assert M.pixel_metrics(masks, maps.astype(dt)) == pytest.approx(a, abs=1e-13)
    y = masks.reshape(len(masks), -1).any(1)
    s = maps.reshape(len(maps), -1).max(1)
    assert M.image_metrics(y, s) == pytest.approx(M.image_metrics(y, s.astype(float)), abs=1e-13)


def test_scores_are_not_rounded_to_float32():
    # 1 and 1 + 1e-12 are distinct in float64 but equal in float32
    y = [0, 1]
    assert M.auroc(y, np.array([1.0, 1.0 + 1e-12])) == 1.0
    assert M.auroc(y, np.array([1.0, 1.0 + 1e-12], np.float32)) == 0.5


def test_invariant_to_permuting_images():
    masks, maps = random_pixels(5, n=7, levels=6)
    perm = np.random.default_rng(0).permutation(7)
    assert M.pixel_metrics(masks[perm], maps[perm]) == pytest.approx(M.pixel_metrics(masks, maps), abs=1e-13)
    y = np.array([0, 1, 1, 0, 1, 0, 0])
    s = np.array([0.2, 0.9, 0.4, 0.4, 0.7, 0.1, 0.8])
    assert M.image_metrics(y[perm], s[perm]) == pytest.approx(M.image_metrics(y, s), abs=1e-13)


# ------------------------------------------------------------------- class aggregation


def test_evaluate_class_and_mean():
    labels = [1, 0]
    masks = np.stack([HAND_MASK, np.zeros((4, 4), bool)])
    maps = np.stack([HAND_MAP, np.zeros((4, 4), np.float32)])
    r = M.evaluate_class(labels, [0.9, 0.1], masks, maps)
    assert list(r) == ["auroc", "aupr", "ap", "f1_max", "pauroc", "pf1_max", "pro"]
    assert r["auroc"] == 1.0 and r["pauroc"] == pytest.approx(110 / 112)
    assert M.evaluate_class([1, 0], [0.9, 0.1]) == M.image_metrics([1, 0], [0.9, 0.1])
    mean = M.mean_over_classes({"a": {"auroc": 0.9, "pro": 0.5}, "b": {"auroc": 0.6, "pro": 0.7}})
    assert mean == pytest.approx({"auroc": 0.75, "pro": 0.6}, abs=1e-15)


def test_evaluate_class_errors():
    masks = np.stack([HAND_MASK, np.zeros((4, 4), bool)])
    maps = np.stack([HAND_MAP, np.zeros((4, 4), np.float32)])
    with pytest.raises(ValueError, match="both masks and maps"):
        M.evaluate_class([1, 0], [0.9, 0.1], masks=masks)
    with pytest.raises(ValueError, match="labelled normal"):
        M.evaluate_class([0, 1], [0.9, 0.1], masks, maps)
    with pytest.raises(ValueError, match="N = 3"):
        M.evaluate_class([0, 1, 1], [0.9, 0.1, 0.3], masks, maps)


def test_mean_over_classes_errors():
    with pytest.raises(ValueError, match="empty"):
        M.mean_over_classes({})
    with pytest.raises(ValueError, match=r"class 'b' has missing metrics \['pro'\]"):
        M.mean_over_classes({"a": {"auroc": 0.9, "pro": 0.5}, "b": {"auroc": 0.6}})
    with pytest.raises(ValueError, match="extra metrics"):
        M.mean_over_classes({"a": {"auroc": 0.9}, "b": {"auroc": 0.6, "pro": 0.1}})
    with pytest.raises(ValueError, match="nan"):
        M.mean_over_classes({"a": {"auroc": 0.9}, "b": {"auroc": float("nan")}})
    with pytest.raises(ValueError, match="not a number"):
        M.mean_over_classes({"a": {"auroc": 0.9}, "b": {"auroc": (0.1, 0.2)}})


# ------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "labels, scores, match",
    [
        ([0, 1, 1], [0.1, 0.2], "differ in length"),
        ([], [], "empty"),
        ([0, 1], [0.1, np.nan], "1 NaN"),
        ([0, 1], [0.1, np.inf], "1 inf"),
        ([0, 2], [0.1, 0.2], r"other values \[2\]"),
        ([0, 0.5], [0.1, 0.2], "only 0 and 1"),
        ([0, 1], ["a", "b"], "real numbers"),
        ([[0, 1]], [[0.1, 0.2]], "1-D"),
    ],
)
def test_image_input_errors(labels, scores, match):
    with pytest.raises(ValueError, match=match):
        M.image_metrics(labels, scores)


def test_one_class_errors():
    with pytest.raises(OneClassError, match="only normal .* undefined with one class"):
        M.image_metrics([0, 0, 0], [0.1, 0.2, 0.3])
    with pytest.raises(OneClassError, match="only anomalous"):
        M.auroc([1, 1], [0.1, 0.2])
    with pytest.raises(OneClassError):
        M.pixel_metrics(np.zeros((2, 3, 3), bool), np.random.default_rng(0).random((2, 3, 3)))
    assert issubclass(OneClassError, ValueError)


def test_pixel_input_errors():
    masks, maps = random_pixels(0)
    with pytest.raises(ValueError, match="differ in shape"):
        M.pixel_metrics(masks, maps[:, :-1])
    with pytest.raises(ValueError, match=r"shape \(N, H, W\)"):
        M.pixel_metrics(masks[0], maps[0])
    with pytest.raises(ValueError, match="masks > 0"):
        M.pixel_metrics(masks.astype(np.uint8) * 255, maps)
    bad = maps.copy()
    bad[1, 2, 3] = np.nan
    with pytest.raises(ValueError, match="maps must be finite"):
        M.pixel_metrics(masks, bad)
    with pytest.raises(ValueError, match="pro_limit"):
        M.pixel_metrics(masks, maps, pro_limit=0)
    with pytest.raises(ValueError, match="empty"):
        M.pixel_metrics(np.zeros((0, 4, 4), bool), np.zeros((0, 4, 4)))
    # 0/1 integer and float masks are accepted and equal bool masks
    ref = M.pixel_metrics(masks, maps)
    assert M.pixel_metrics(masks.astype(np.uint8), maps) == ref
    assert M.pixel_metrics(masks.astype(float), maps) == ref


# -------------------------------------------------------------------------- bootstrap


def test_bootstrap_deterministic_and_seed_dependent():
    rng = np.random.default_rng(1)
    y = rng.random(40) < 0.5
    s = rng.random(40) + 0.5 * y
    a = M.image_metrics_ci(y, s, n_boot=200, seed=3)
    assert a == M.image_metrics_ci(y, s, n_boot=200, seed=3)
    assert a != M.image_metrics_ci(y, s, n_boot=200, seed=4)
    assert set(a) == set(IMG_KEYS)
    point = M.image_metrics(y, s)
    for k, (lo, hi) in a.items():
        assert type(lo) is float and lo <= point[k] <= hi
    assert M.bootstrap_ci(M.auroc, y, s, n_boot=200, seed=3) == a["auroc"]


def test_bootstrap_clear_case():
    # perfectly separated: every resample has AUROC 1 -> interval (1, 1)
    y = np.array([0] * 10 + [1] * 10)
    s = np.arange(20.0)
    assert M.bootstrap_ci(M.auroc, y, s, n_boot=100) == (1.0, 1.0)


def test_bootstrap_redraws_one_class_resamples():
    # one anomalous image out of 4: P(resample lacks it) = (3/4)^4 = .32, so redraws
    # happen.  Re-implement the documented protocol: draw, drop one-class draws, keep
    # going on the same stream until n_boot replicates.
    y = np.array([0, 0, 1, 0])
    s = np.array([0.1, 0.7, 0.5, 0.2])
    n_boot, seed = 50, 5
    rng = np.random.default_rng(seed)
    reps, skipped = [], 0
    while len(reps) < n_boot:
        idx = rng.integers(0, 4, size=4)
        if y[idx].min() == y[idx].max():
            skipped += 1
            continue
        reps.append(roc_auc_score(y[idx], s[idx]))
    assert skipped > 0
    expected = tuple(np.quantile(reps, [0.025, 0.975]))
    assert M.bootstrap_ci(M.auroc, y, s, n_boot=n_boot, seed=seed) == pytest.approx(expected, abs=1e-12)


def test_pixel_ci_uint8_equals_generic_bootstrap():
    masks, maps = random_pixels(2, n=6, h=8, w=8, levels=30, dtype=np.uint8)
    fast = M.pixel_metrics_ci(masks, maps, n_boot=40, seed=1)
    slow = M.bootstrap_ci(M.pixel_metrics, masks, maps, n_boot=40, seed=1)
    assert set(fast) == {"pauroc", "pf1_max", "pro"}
    for k in fast:
        assert fast[k] == pytest.approx(slow[k], abs=1e-12)
    # few distinct float values -> every value is a bin edge -> exact as well
    quantised = M.pixel_metrics_ci(masks, maps.astype(np.float32) / 3, n_boot=40, seed=1)
    for k in fast:
        assert quantised[k] == pytest.approx(fast[k], abs=1e-12)


def test_class_mean_pixel_ci_equals_brute_force_bootstrap():
    # two classes of uint8 maps (exact codes): the fast interval equals resampling all images at once and averaging
    # every class's pixel_metrics over its own resampled images, redrawing resamples where a class lacks a label
    parts = {"a": random_pixels(3, n=5, h=8, w=8, levels=20, dtype=np.uint8),
             "b": random_pixels(4, n=4, h=8, w=8, levels=20, dtype=np.uint8)}
    owner = np.repeat([0, 1], [5, 4])
    masks = np.concatenate([parts["a"][0], parts["b"][0]])
    maps = np.concatenate([parts["a"][1], parts["b"][1]])

    def mean_of_classes(own, m, s):
        per_class = []
        for c in (0, 1):
            if not (own == c).any():
                raise OneClassError("class absent")
            per_class.append(M.pixel_metrics(m[own == c], s[own == c]))
        return {k: float(np.mean([p[k] for p in per_class])) for k in per_class[0]}

    slow = M.bootstrap_ci(mean_of_classes, owner, masks, maps, n_boot=40, seed=2)
    fast = M.class_mean_pixel_metrics_ci({c: M.pixel_histograms(*parts[c]) for c in parts}, n_boot=40, seed=2)
    assert set(fast) == {"pauroc", "pf1_max", "pro"}
    for k in fast:
        assert fast[k] == pytest.approx(slow[k], abs=1e-12)
    # one class alone: the class-mean interval is that class's own interval
    alone = M.class_mean_pixel_metrics_ci({"a": M.pixel_histograms(*parts["a"])}, n_boot=40, seed=2)
    assert alone == M.pixel_metrics_ci(*parts["a"], n_boot=40, seed=2)


def test_pixel_ci_float_quantised_contains_point():
    masks, maps = random_pixels(4, n=20, h=32, w=32)
    ci = M.pixel_metrics_ci(masks, maps, n_boot=200, seed=0, n_bins=256)
    point = M.pixel_metrics(masks, maps)
    for k, (lo, hi) in ci.items():
        assert lo < point[k] < hi


def test_bootstrap_errors():
    y, s = [0, 1, 0, 1], [0.1, 0.8, 0.3, 0.6]
    with pytest.raises(ValueError, match="n_boot"):
        M.bootstrap_ci(M.auroc, y, s, n_boot=0)
    with pytest.raises(ValueError, match="alpha"):
        M.bootstrap_ci(M.auroc, y, s, alpha=1.0)
    with pytest.raises(ValueError, match="differ in length"):
        M.bootstrap_ci(M.auroc, y, s[:3])
    with pytest.raises(OneClassError):
        M.image_metrics_ci([0, 0, 0], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="at least one array"):
        M.bootstrap_ci(M.auroc)
    with pytest.raises(ValueError, match="n_bins"):
        M.pixel_metrics_ci(*random_pixels(0), n_bins=1)


def test_docstring_examples():
    import doctest

    result = doctest.testmod(M)
    assert result.attempted >= 7 and result.failed == 0
