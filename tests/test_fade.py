import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from zsad.features import TokenSet
from zsad.methods.fade import FadeConfig, fade, knn_distance, language_scores

PROTO = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])  # [normal, abnormal]


def _tokens(n, grid, vec):
    """(n, 1 + grid*grid, 3) tokens: CLS and every patch equal to the normalised vector ``vec``."""
    v = F.normalize(torch.tensor(vec, dtype=torch.float32), dim=0)
    return v.expand(n, 1 + grid * grid, 3).clone()


def _toy(vec, n=2, sizes=(32, 64)):
    toks = {s: _tokens(n, s // 16, vec) for s in sizes}
    return TokenSet([f"{i}.png" for i in range(n)], clip=dict(toks), gem=dict(toks))


def _cfg(**kw):
    return FadeConfig(sizes=(32, 64), ac_size=32, map_size=8, **kw)


def test_language_score_formula():
    # cos to normal 0.6, to abnormal 0.8 -> softmax([60, 80])[1] = 1 / (1 + e^-20)
    tok = torch.tensor([[0.6, 0.8, 0.0]])
    assert language_scores(tok, PROTO, 0.01).item() == pytest.approx(1 / (1 + math.exp(-20)), rel=1e-6)
    assert language_scores(tok, PROTO, 1.0).item() == pytest.approx(1 / (1 + math.exp(-0.2)), rel=1e-6)


def test_second_neighbour_ignores_the_patch_itself():
    pts = F.normalize(torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0]]), dim=1)
    d2 = knn_distance(pts, pts, k=2)
    # nearest other point of [1,0] is [0.8,0.6]: (1 - 0.8) / 2 = 0.1; of [0,1] it is [0.8,0.6]: (1 - 0.6) / 2 = 0.2
    assert d2.tolist() == pytest.approx([0.1, 0.1, 0.2])
    assert knn_distance(pts, pts, k=1).tolist() == pytest.approx([0, 0, 0], abs=1e-7)
    with pytest.raises(ValueError, match="fewer than k=2"):
        knn_distance(pts, pts[:1], k=2)


def test_zero_shot_fusion_hand_computed():
    # every patch equal: language prob p everywhere, 2nd-NN self distance 0 -> map = clip01(0.5 p), image = p
    vec = [0.6, 0.8, 0.0]
    p = 1 / (1 + math.exp(-20))
    out = fade(_toy(vec), _cfg(), ac_prototypes=PROTO, as_prototypes=PROTO)
    assert out.scores == pytest.approx([p, p])
    assert out.maps.dtype == np.uint8 and out.maps.shape == (2, 8, 8)
    assert (out.maps == int(0.5 * p * 255)).all()  # uint8 truncation, as the official code


def test_k_shot_fusion_hand_computed():
    # query patches at cos 0.5 to every reference patch: d = (1 - 0.5) / 2 = 0.25, times 3.5 = 0.875
    test, refs = _toy([1.0, 0.0, 0.0]), _toy([0.5, 0.0, math.sqrt(0.75)], n=1)
    s_lang = 1 / (1 + math.exp(100))  # cos 1 to normal, 0 to abnormal
    out = fade(test, _cfg(shots=1), ac_prototypes=PROTO, as_prototypes=PROTO, refs=refs)
    assert out.scores == pytest.approx([(s_lang + 0.875) / 2] * 2)
    expected = min(1.0, 0.15 * s_lang + 0.85 * 0.875)
    assert (out.maps == int(expected * 255)).all()
    vision = fade(test, _cfg(shots=1, ac_mode="vision", as_mode="vision"), refs=refs)
    assert vision.scores == pytest.approx([0.875, 0.875])
    lang = fade(test, _cfg(shots=1, ac_mode="language", as_mode="language", fade_compat=False),
                ac_prototypes=PROTO, as_prototypes=PROTO, refs=refs)
    assert lang.maps.dtype == np.float32 and np.allclose(lang.maps, s_lang)


def test_official_defaults_per_setting():
    zero, few = FadeConfig().resolved(), FadeConfig(shots=2).resolved()
    assert (zero.vision_stream, zero.vision_multiplier, zero.vision_weight) == ("gem", 80.0, 0.5)
    assert (few.vision_stream, few.vision_multiplier, few.vision_weight) == ("clip", 3.5, 0.85)


@pytest.mark.parametrize("kw, msg", [(dict(sizes=(240, 100)), "multiples of 16"),
                                     (dict(ac_mode="text"), "ac_mode/as_mode"), (dict(shots=-1), "shots")])
def test_bad_config(kw, msg):
    with pytest.raises(ValueError, match=msg):
        FadeConfig(**kw).resolved()


def test_language_mode_needs_prototypes_and_k_shot_needs_refs():
    with pytest.raises(ValueError, match="text prototypes"):
        fade(_toy([1, 0, 0]), _cfg())
    with pytest.raises(ValueError, match="reference tokens"):
        fade(_toy([1, 0, 0]), _cfg(shots=1, ac_mode="vision", as_mode="vision"))


def test_multi_scale_mean_on_the_largest_grid():
    # two scales whose language maps are constant 0.2 and 0.6 by construction -> fused map 0.4 everywhere.
    # A unit token (0, y, sqrt(1 - y^2)) has cosines (0, y) to the prototypes, so with temperature tau its
    # abnormal probability is q = sigmoid(y / tau), i.e. y = tau * log(q / (1 - q)).
    tau = 0.5
    t = TokenSet(["x"], clip={}, gem={})
    for size, q in ((32, 0.2), (64, 0.6)):
        y = tau * math.log(q / (1 - q))
        vec = torch.tensor([0.0, y, math.sqrt(1 - y * y)])
        t.gem[size] = vec.expand(1, 1 + (size // 16) ** 2, 3).clone()
        t.clip[size] = t.gem[size].clone()
    out = fade(t, _cfg(ac_mode="language", as_mode="language", temperature=tau, fade_compat=False),
               ac_prototypes=PROTO, as_prototypes=PROTO)
    assert np.allclose(out.maps, 0.4, atol=1e-6)
    assert out.scores == pytest.approx([0.2])  # CLS at ac_size 32
