"""Cheung et al. 2024: eq. 4 and its guard, crop geometry, fusion, the Grounding DINO wrapper, the class pipeline.

Known answers are computed by hand in the comments. Models are random (tiny CLIP ``zsad-tiny-vit`` and the small
random Grounding DINO), so pipeline tests check shapes, ranges, provenance and the detection cache, not accuracy.
"""
import json
import math

import numpy as np
import pytest
from PIL import Image

import zsad.runners
from zsad.detector import (
    DetectorError,
    caption,
    clear_detection_cache,
    detect,
    detection_cache_size,
    load_detector,
    small_vocab,
)
from zsad.methods.cheung import (
    CheungConfig,
    cheung_scores,
    crop_boxes,
    eq4_scores,
    fuse,
    image_only_output,
    object_crops,
)

# ------------------------------------------------------------------------------------------------------- eq. 4

E = np.array([1.0, 0.0, 0.0])
T_A = np.array([0.6, 0.8, 0.0])  # <E, T_A> = 0.6
T_N = np.array([0.8, 0.6, 0.0])  # <E, T_N> = 0.8


def test_eq4_known_answer():
    s, guarded = eq4_scores(E, T_N, T_A)
    assert s.shape == (1,) and not guarded[0]
    assert s[0] == pytest.approx(0.6 / 1.4)  # 3/7
    # raw cosines: every vector is normalised first, so scaling any of them changes nothing
    s2, _ = eq4_scores(3 * E, 2 * T_N, 0.5 * T_A)
    assert s2[0] == pytest.approx(3 / 7)
    # a batch, and swapping the prompts gives 1 - s
    s3, _ = eq4_scores(np.stack([E, E]), T_A, T_N)
    np.testing.assert_allclose(s3, [4 / 7, 4 / 7])


def test_eq4_guard_when_denominator_is_zero():
    t_a, t_n = np.array([-0.6, 0.8]), np.array([0.6, 0.8])  # cosines with e=(1,0): -0.6 and 0.6: denominator 0
    e = np.array([1.0, 0.0])
    s, guarded = eq4_scores(e, t_n, t_a, guard="shifted")
    assert guarded.tolist() == [True]
    assert s[0] == pytest.approx(0.4 / 2.0)  # (1 + c_a) / (2 + c_a + c_n) = 0.4 / 2
    s, _ = eq4_scores(e, t_n, t_a, guard="softmax", temperature=1.0)
    assert s[0] == pytest.approx(1 / (1 + math.exp(1.2)))  # softmax([0.6, -0.6])[1] = sigmoid(-1.2)
    with pytest.raises(ValueError, match="undefined for 1 image"):
        eq4_scores(e, t_n, t_a, guard="raise")
    # a denominator just below eps (not exactly 0) is guarded too
    t_n2 = np.array([0.6 + 1e-9, math.sqrt(1 - (0.6 + 1e-9) ** 2)])
    s, guarded = eq4_scores(e, t_n2, t_a)
    assert guarded[0] and 0.0 <= s[0] <= 1.0


def test_eq4_guard_on_mixed_signs_and_not_on_positive_cosines():
    e = np.array([1.0, 0.0])
    t_a = np.array([0.3, math.sqrt(1 - 0.09)])  # c_a = 0.3
    t_n = np.array([-0.1, math.sqrt(1 - 0.01)])  # c_n = -0.1: raw ratio 0.3/0.2 = 1.5 (outside [0, 1])
    s, guarded = eq4_scores(e, t_n, t_a)
    assert guarded[0] and s[0] == pytest.approx(1.3 / 2.2)
    # with both cosines positive the guard never fires and scores stay in (0, 1)
    rng = np.random.default_rng(0)
    es = np.abs(rng.normal(size=(50, 4)))
    s, guarded = eq4_scores(es, np.abs(rng.normal(size=4)), np.abs(rng.normal(size=4)))
    assert not guarded.any() and ((s > 0) & (s < 1)).all()


def test_eq4_whole_set_modes():
    s, guarded = eq4_scores(E, T_N, T_A, score="shifted")
    assert s[0] == pytest.approx(1.6 / 3.4) and not guarded.any()
    s, guarded = eq4_scores(E, T_N, T_A, score="softmax", temperature=0.1)
    assert s[0] == pytest.approx(1 / (1 + math.exp(2.0))) and not guarded.any()
    with pytest.raises(ValueError, match="score"):
        eq4_scores(E, T_N, T_A, score="bogus")
    with pytest.raises(ValueError, match="t_n"):
        eq4_scores(E, T_N[:2], T_A)


# --------------------------------------------------------------------------------------------------- fusion

@pytest.mark.parametrize("weight, expected", [(0.0, 3 / 7), (0.5, 0.5), (1.0, 4 / 7)])
def test_fusion_weight(weight, expected):
    e_image, e_object = np.array([[2.0, 0.0, 0.0]]), np.array([[0.0, 5.0, 0.0]])  # normalised before fusing
    # w=0: e=(1,0,0): 0.6/(0.6+0.8); w=1: e=(0,1,0): 0.8/(0.8+0.6); w=0.5: e ~ (1,1,0): 1.4/(1.4+1.4)
    s = cheung_scores(e_image, e_object, T_N, T_A, CheungConfig(fusion_weight=weight))
    assert s[0] == pytest.approx(expected)


def test_fuse_and_no_detection():
    fused = fuse([[3.0, 0.0]], [[0.0, 1.0]], 0.25)
    np.testing.assert_allclose(fused.numpy(), [[0.75, 0.25]])
    e_image = np.array([[2.0, 0.0, 0.0]])
    s = cheung_scores(e_image, None, T_N, T_A, CheungConfig(use_detection=False))
    assert s[0] == pytest.approx(3 / 7)  # e_object is ignored: the "w/o object detection" row
    with pytest.raises(ValueError, match="e_object"):
        cheung_scores(e_image, None, T_N, T_A, CheungConfig())
    with pytest.raises(ValueError, match="fusion_weight"):
        CheungConfig(fusion_weight=1.5)


def test_image_only_output():
    out = image_only_output([0.2, 0.7], {"method": "cheung"})
    assert out.maps.shape == (2, 1, 1) and out.maps[1, 0, 0] == pytest.approx(0.7)
    assert out.info == {"method": "cheung", "image_only": True}


# ------------------------------------------------------------------------------------------------ crop geometry

def test_crop_boxes_pixel_xyxy_rounds_outwards():
    # floor the start, ceil the end: 10.2 -> 10, 20.7 -> 20, 50.5 -> 51, 60.0 -> 60
    assert crop_boxes((100, 80), [[10.2, 20.7, 50.5, 60.0]]) == [(10, 20, 51, 60)]
    # the crop covers the box and PIL crops exactly that many pixels
    box = crop_boxes((100, 80), [[10.2, 20.7, 50.5, 60.0]])[0]
    assert Image.new("RGB", (100, 80)).crop(box).size == (41, 40)


def test_crop_boxes_normalised_and_other_formats():
    # normalised cxcywh (Grounding DINO's raw output) on a 100 x 50 image: x 0.4..0.6 -> 40..60, y 0.3..0.7 -> 15..35
    assert crop_boxes((100, 50), [[0.5, 0.5, 0.2, 0.4]], normalized=True, fmt="cxcywh") == [(40, 15, 60, 35)]
    assert crop_boxes((100, 50), [[0.1, 0.2, 0.3, 0.4]], normalized=True) == [(10, 10, 30, 20)]
    # the paper's b = [x, y, w, h] in pixels
    assert crop_boxes((100, 50), [[5, 6, 20, 10]], fmt="xywh") == [(5, 6, 25, 16)]
    with pytest.raises(ValueError, match="format"):
        crop_boxes((100, 50), [[0, 0, 1, 1]], fmt="yxyx")
    with pytest.raises(ValueError, match=r"\(K, 4\)"):
        crop_boxes((100, 50), [[0, 0, 1]])


def test_crop_boxes_border_and_degenerate():
    boxes = [
        [-5.0, -3.0, 30.0, 200.0],  # crosses three borders -> clamped
        [90.0, 70.0, 130.0, 95.0],  # crosses the bottom-right corner
        [120.0, 10.0, 150.0, 20.0],  # entirely outside -> dropped
        [10.0, 10.0, 11.0, 30.0],  # 1 px wide -> dropped at min_size 2
        [40.0, 40.0, 30.0, 50.0],  # inverted -> dropped
        [np.nan, 0.0, 10.0, 10.0],  # not finite -> dropped
        [0.0, 0.0, 100.0, 80.0],  # exactly the image
    ]
    assert crop_boxes((100, 80), boxes) == [(0, 0, 30, 80), (90, 70, 100, 80), (0, 0, 100, 80)]
    assert (10, 10, 11, 30) in crop_boxes((100, 80), boxes, min_size=1)
    assert crop_boxes((100, 80), np.zeros((0, 4))) == []
    assert crop_boxes((100, 80), []) == []


def test_object_crops_fallback_and_cap():
    crops, fell_back = object_crops((64, 48), np.zeros((0, 4)))
    assert crops == [(0, 0, 64, 48)] and fell_back  # nothing detected -> the whole image
    crops, fell_back = object_crops((64, 48), [[100, 100, 120, 120]])  # only unusable boxes -> same
    assert crops == [(0, 0, 64, 48)] and fell_back
    boxes = [[0, 0, 10, 10], [5, 5, 20, 20], [30, 30, 40, 40]]  # sorted by score
    crops, fell_back = object_crops((64, 48), boxes, CheungConfig(max_boxes=2))
    assert crops == [(0, 0, 10, 10), (5, 5, 20, 20)] and not fell_back
    with pytest.raises(ValueError, match="no usable box"):
        object_crops((64, 48), [], CheungConfig(fallback="none"))


# ----------------------------------------------------------------------------------------------------- detector

@pytest.fixture(scope="module")
def small_detector():
    return load_detector(None, seed=0, small=True)


def _image(w=80, h=96, seed=0):
    return Image.fromarray((np.random.default_rng(seed).random((h, w, 3)) * 255).astype(np.uint8))


def test_caption():
    assert caption("Metal  Nut") == "metal nut."
    assert caption("bottle.") == "bottle."
    with pytest.raises(ValueError):
        caption(" . ")


def test_small_vocab_layout():
    vocab = small_vocab()
    # Grounding DINO hard-codes these ids as phrase delimiters (bert-base-uncased's layout)
    assert [vocab[i] for i in (0, 100, 101, 102, 103, 1012, 1029)] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]",
                                                                      ".", "?"]
    assert len(vocab) == len(set(vocab)) == 1103


def test_small_random_detector_runs_offline(small_detector):
    det = small_detector
    assert det.is_random and "RANDOM" in det.weights_label
    assert det.provenance()["detector_random_weights"] is True
    assert sum(p.numel() for p in det.model.parameters()) < 2_000_000
    clear_detection_cache()
    image = _image()
    calls = det.forward_calls
    d = detect(det, image, "Weave", box_threshold=0.3, text_threshold=0.25)
    assert det.forward_calls == calls + 1
    assert d.image_size == (80, 96)
    assert d.boxes.shape == (len(d), 4) and d.boxes.dtype == np.float64 and np.isfinite(d.boxes).all()
    assert len(d.labels) == len(d) and len(d) <= 20
    assert ((d.scores > 0.3) & (d.scores <= 1.0)).all() and (np.diff(d.scores) <= 0).all()
    assert (d.boxes[:, 2] >= d.boxes[:, 0]).all() and (d.boxes[:, 3] >= d.boxes[:, 1]).all()
    # cached: same image content, caption and thresholds -> no new forward pass
    assert detect(det, image.copy(), "weave.", 0.3, 0.25) is d and det.forward_calls == calls + 1
    assert detection_cache_size() == 1
    detect(det, image, "weave", 0.5, 0.25)  # another threshold is another key
    assert det.forward_calls == calls + 2
    again = detect(det, image, "weave", 0.3, 0.25, use_cache=False)
    np.testing.assert_array_equal(again.boxes, d.boxes)  # deterministic
    json.dumps(d.to_json())


def test_detector_folder_round_trip(small_detector, tmp_path):
    folder = tmp_path / "gdino-small"
    small_detector.model.save_pretrained(folder)
    small_detector.processor.save_pretrained(folder)
    det = load_detector(folder)
    assert not det.is_random and det.folder == str(folder.resolve()) and len(det.sha256) == 64
    assert det.name in det.weights_label and "RANDOM" not in det.weights_label
    image = _image(64, 64, seed=1)
    a = detect(small_detector, image, "grain", use_cache=False)
    b = detect(det, image, "grain", use_cache=False)
    np.testing.assert_allclose(a.boxes, b.boxes, atol=1e-4)


def test_detector_folder_errors_name_the_folder(tmp_path):
    not_gdino = tmp_path / "clip-folder"
    not_gdino.mkdir()
    (not_gdino / "config.json").write_text(json.dumps({"model_type": "clip"}))
    with pytest.raises(DetectorError, match="clip-folder.*not a Grounding DINO.*'clip'"):
        load_detector(not_gdino)
    empty = tmp_path / "empty-folder"
    empty.mkdir()
    with pytest.raises(DetectorError, match="empty-folder.*no config.json"):
        load_detector(empty)
    with pytest.raises(DetectorError, match="missing-folder.*not found"):
        load_detector(tmp_path / "missing-folder")
    broken = tmp_path / "broken-gdino"
    broken.mkdir()
    (broken / "config.json").write_text(json.dumps({"model_type": "grounding-dino"}))
    with pytest.raises(DetectorError, match="broken-gdino"):
        load_detector(broken)


# ----------------------------------------------------------------------------------------------------- pipeline

@pytest.fixture(scope="module")
def tiny_clip():
    from zsad.backbone import load_model

    return load_model("zsad-tiny-vit")


@pytest.fixture(scope="module")
def weave_test(synth_root):
    from zsad.data import load_dataset

    test = [r for r in load_dataset("mvtec", synth_root, classes=["weave"]) if r.split == "test"]
    return [test[0], test[1], test[-2], test[-1]]  # 2 good, 2 defective


PARAMS = {"max_boxes": 3}


def test_pipeline_on_synthetic(tiny_clip, small_detector, weave_test):
    from zsad.runners import cheung_class

    out = cheung_class(tiny_clip, "weave", weave_test, [], {**PARAMS, "detector": small_detector}, progress=False)
    assert out.scores.shape == (4,) and np.isfinite(out.scores).all()
    assert ((out.scores >= 0) & (out.scores <= 1)).all()
    assert out.maps.shape == (4, 1, 1) and out.info["image_only"] is True
    info = out.info
    assert info["prompts"] == "winclip" and info["row"] == "Ours w/o prompt generation"
    assert info["detector"]["detector_random_weights"] is True and info["query"] == "weave."
    assert len(info["crops"]) == 4 and all(1 <= len(c) <= 3 for c in info["crops"])
    assert all(0 <= x0 < x1 <= 128 and 0 <= y0 < y1 <= 128 for c in info["crops"] for x0, y0, x1, y1 in c)
    assert len(info["guarded"]) == 4 and info["references_ignored"] == 0
    json.dumps(info)  # the study writes it with the run


def test_ablation_runs_the_detector_once_per_image(tiny_clip, weave_test, monkeypatch):
    from zsad.runners import CHEUNG_METHODS, cheung_ablation, cheung_class

    monkeypatch.setattr(zsad.runners, "read_class_prompts", lambda path, cls: {
        "normal": [f"a flawless {cls} surface", f"a clean {cls}"],
        "abnormal": [f"a scratched {cls} surface", f"a {cls} with a stain", f"a torn {cls}"]}, raising=False)
    clear_detection_cache()
    det = load_detector(None, seed=0, small=True)
    params = {**PARAMS, "detector": det, "class_prompts": "prompts/llm.json"}
    rows = cheung_ablation(tiny_clip, "weave", weave_test, [], params, progress=False)
    assert det.forward_calls == len(weave_test)  # one detector pass for all three rows
    assert list(rows) == ["full", "no_prompt_generation", "no_object_detection"]
    assert rows["full"].info["prompts"] == "llm:prompts/llm.json"
    assert rows["full"].info["n_prompts"] == {"normal": 2, "abnormal": 3}
    assert rows["no_prompt_generation"].info["prompts"] == "winclip"
    assert not np.allclose(rows["full"].scores, rows["no_prompt_generation"].scores)
    assert "crops" not in rows["no_object_detection"].info
    for out in rows.values():
        assert out.info["image_only"] and ((out.scores >= 0) & (out.scores <= 1)).all()
    # the same rows as separate study methods reuse the cached detections and give the same scores
    for name, key in (("cheung", "full"), ("cheung_no_prompt_generation", "no_prompt_generation"),
                      ("cheung_no_object_detection", "no_object_detection")):
        out = CHEUNG_METHODS[name](tiny_clip, "weave", weave_test, [], params, False)
        np.testing.assert_allclose(out.scores, rows[key].scores, rtol=1e-6, atol=1e-9)
    assert det.forward_calls == len(weave_test)
    # nothing usable detected (every box below min_box_size) -> whole image: the full row equals w/o detection
    out = cheung_class(tiny_clip, "weave", weave_test, [], {**params, "min_box_size": 10_000}, progress=False)
    assert out.info["fallback"] == [True] * 4 and out.info["n_fallback"] == 4
    np.testing.assert_allclose(out.scores, rows["no_object_detection"].scores, rtol=1e-6, atol=1e-9)
    assert det.forward_calls == len(weave_test)


def test_without_class_prompts_the_winclip_ensemble_is_used():
    from zsad.runners import class_prompts_for

    prompts, source, note = class_prompts_for("metal_nut", None)
    assert source == "winclip" and note is None
    assert prompts["normal"][0] == "a cropped photo of the metal nut"


def test_class_prompts_from_a_class_prompt_file(tmp_path):
    from zsad.runners import class_prompts_for

    path = tmp_path / "llm_class.json"
    path.write_text(json.dumps({"classes": {"metal_nut": {"normal": {"prompts": ["a flawless metal nut"]},
                                                          "abnormal": {"prompts": ["a bent metal nut",
                                                                                   "a scratched metal nut"]}}}}))
    prompts, source, note = class_prompts_for("metal_nut", path)
    assert prompts == {"normal": ["a flawless metal nut"], "abnormal": ["a bent metal nut", "a scratched metal nut"]}
    assert source == f"llm:{path}" and note is None
    with pytest.raises(ValueError, match="weave"):
        class_prompts_for("weave", path)


def test_crop_and_text_embeddings_go_through_the_cache(tiny_clip, small_detector, weave_test, tmp_path):
    from zsad.cache import FeatureCache
    from zsad.runners import cheung_class

    params = {**PARAMS, "detector": small_detector}
    plain = cheung_class(tiny_clip, "weave", weave_test, [], params, progress=False)
    cold_cache = FeatureCache(tmp_path)
    cold = cheung_class(tiny_clip, "weave", weave_test, [], {**params, "cache": cold_cache}, progress=False)
    warm_cache = FeatureCache(tmp_path)
    warm = cheung_class(tiny_clip, "weave", weave_test, [], {**params, "cache": warm_cache}, progress=False)
    assert np.array_equal(cold.scores, plain.scores) and np.array_equal(warm.scores, plain.scores)
    n_crops = sum(len(c) for c in plain.info["crops"] if c != [[0, 0, 128, 128]])
    assert cold_cache.stats["crops"]["stored"] >= 1 and warm_cache.stats["crops"]["stored"] == 0
    assert warm_cache.stats["crops"]["hits"] == cold_cache.stats["crops"]["stored"] <= n_crops
    assert warm_cache.stats["text"]["hits"] > 0 and warm_cache.stats["text"]["misses"] == 0
