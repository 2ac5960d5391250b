import json

import numpy as np
import pytest

from zsad.cli import main
from zsad.study import METHODS, predict, subset_evenly

TINY = dict(model="zsad-tiny-vit", sizes=(240, 448), n_boot=20, progress=False)


@pytest.fixture(scope="module")
def zero_shot(synth_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "fade0"
    return predict("fade", "synthetic", synth_root, classes="weave", out=out, **TINY)


def test_zero_shot_run_folder(zero_shot, synth_root):
    run = zero_shot["path"]
    pred = zero_shot["predictions"]
    assert pred["maps"].shape == (16, 448, 448) and pred["maps"].dtype == np.uint8
    assert pred["masks"].shape == pred["maps"].shape and pred["masks"][pred["labels"] == 1].any()
    assert (0 <= zero_shot["predictions"]["scores"]).all() and (zero_shot["predictions"]["scores"] <= 1).all()
    prov = json.loads((run / "provenance.json").read_text())
    assert prov["weights"]["random_weights"] is True and prov["parameters"]["setting"] == "0-shot"
    assert set(zero_shot["metrics"].metric) >= {"auroc", "aupr", "ap", "f1_max", "pauroc", "pro", "pf1_max"}


def test_same_inputs_give_identical_metrics_file(zero_shot, synth_root, tmp_path):
    again = predict("fade", "synthetic", synth_root, classes="weave", out=tmp_path / "again", **TINY)
    assert (again["path"] / "metrics.csv").read_bytes() == (zero_shot["path"] / "metrics.csv").read_bytes()


def test_k_shot_vision_finds_planted_defects_and_records_references(synth_root):
    # With random weights the ViT tokens still carry local texture: FADE's 1-NN patch memory localises planted
    # defects above chance (measured on this set with the tiny random ViT: mean pAUROC 0.69, weave 0.97).
    res = predict("fade", "synthetic", synth_root, shots=1, seed=0, mode="vision", **TINY)
    mean = res["metrics"].query("`class` == 'mean'").set_index("metric")["value"]
    assert mean["pauroc"] > 0.6
    refs = res["provenance"]["few_shot_references"]
    assert sorted(refs) == ["grain", "weave"] and all(len(v) == 1 and "/train/good/" in v[0] for v in refs.values())


@pytest.mark.parametrize("kw, msg", [
    (dict(method="nope"), "unknown method 'nope'"),
    (dict(classes="carpet"), "carpet"),
    (dict(shots=99), "99 shots requested but only 8"),
    (dict(sizes=(240, 100)), "multiples of the patch size 16"),
    (dict(options={"language_strem": "clip"}), "bad FADE option"),
    (dict(options={"language_stream": "cls"}), "token stream"),
    (dict(winclip_in_segmentation=False), "segmentation ensemble is empty"),
    (dict(method="patchcore", shots=0), "k-shot baseline"),
    (dict(method="cheung"), "needs class prompts"),
])
def test_bad_input_fails_before_any_model_runs(synth_root, kw, msg, monkeypatch):
    import zsad.study

    monkeypatch.setattr(zsad.study, "load_model", lambda *a, **k: pytest.fail("model loaded before validation"))
    args = {"method": "fade", **kw}
    with pytest.raises(ValueError, match=msg):
        predict(args.pop("method"), "synthetic", synth_root, **{**TINY, **args})


def test_prompt_file_without_a_side_is_rejected(synth_root, tmp_path):
    bad = tmp_path / "p.json"
    bad.write_text(json.dumps({"normal": ["a fine object"]}))
    with pytest.raises(ValueError, match="p.json: the 'abnormal' side"):
        predict("fade", "synthetic", synth_root, prompts=[bad], **TINY)


def test_subset_evenly_keeps_every_group():
    items = [f"test/{d}/{i}" for d in ("blob", "good", "missing") for i in range(4)]
    picked = subset_evenly(items, 5)
    assert len(picked) == 5 and {p.split("/")[1] for p in picked} == {"blob", "good", "missing"}
    assert subset_evenly(items, None) == items


@pytest.mark.parametrize("method", sorted(METHODS))
def test_cli_predict_every_method(method, synth_root, tmp_path, capsys):
    extra = []
    if method == "cheung":  # the full method needs LLM class prompts; a small file for the synthetic class
        path = tmp_path / "class_prompts.json"
        path.write_text(json.dumps({"classes": {"grain": {"normal": {"prompts": ["a smooth grain texture"]},
                                                          "abnormal": {"prompts": ["a grain texture with a stain"]}}}}))
        extra = ["--class-prompts", str(path)]
    assert main(["predict", "--method", method, "--shots", "1", "--dataset", "synthetic", "--root", str(synth_root),
                 *extra, "--classes", "grain",
                 "--model", "zsad-tiny-vit", "--sizes", "240", "--max-images", "6", "--n-boot", "0",
                 "--out", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    assert "run folder:" in out and "RANDOM WEIGHTS" in out
    prov = json.loads((tmp_path / "run" / "provenance.json").read_text())
    assert prov["parameters"]["method"] == method and len(prov["few_shot_references"]["grain"]) == 1
    pred = np.load(tmp_path / "run" / "predictions.npz")
    image_only = method.startswith("cheung")  # image-level method: one value per image, no pixel metrics
    assert pred["maps"].shape == ((6, 1, 1) if image_only else (6, 448, 448)) and np.isfinite(pred["scores"]).all()
    metrics = open(tmp_path / "run" / "metrics.csv").read()
    assert ("pauroc" in metrics) != image_only


@pytest.mark.parametrize("method", ["fade", "winclip", "patchcore", "tamura", "cheung_no_prompt_generation"])
def test_autocast_reaches_every_image_tower_and_is_cached_apart(method, synth_root, tmp_path):
    from zsad.cache import FeatureCache

    cache = FeatureCache(tmp_path / "cache")
    args = dict(classes="grain", shots=1, max_images=6, sizes=(240,), model="zsad-tiny-vit", n_boot=0, progress=False)
    bf16 = predict(method, "synthetic", synth_root, cache=cache, autocast="bf16", **args)
    fp32_after = predict(method, "synthetic", synth_root, cache=cache, **args)  # bf16 entries must not be served
    fp32 = predict(method, "synthetic", synth_root, cache=False, **args)
    assert bf16["provenance"]["parameters"]["autocast"] == "bf16"
    assert fp32["provenance"]["parameters"]["autocast"] is None
    for key in ("scores", "maps"):
        assert np.array_equal(fp32_after["predictions"][key], fp32["predictions"][key])
    s16, s32 = bf16["predictions"]["scores"], fp32["predictions"]["scores"]
    # bf16 rounds every matmul: the scores move (so the tower did run in bf16), but only a little
    assert not np.array_equal(s16, s32)
    assert np.abs(s16 - s32).max() <= 0.05 * max(np.ptp(s32), 1e-3) + 1e-3


def test_autocast_is_checked_before_any_model_runs(synth_root):
    with pytest.raises(ValueError, match="autocast must be None, 'bf16' or 'fp16', got 'half'"):
        predict("fade", "synthetic", synth_root, autocast="half", **TINY)
    with pytest.raises(ValueError, match="autocast='fp16' needs a CUDA model"):
        predict("fade", "synthetic", synth_root, autocast="fp16", **TINY)


def test_fade_patch_distances_are_cached_per_image_and_reference_set(synth_root, tmp_path):
    from zsad.cache import FeatureCache

    args = dict(classes="weave", max_images=6, mode="both", model="zsad-tiny-vit", sizes=(240, 448), n_boot=0,
                progress=False)
    for shots, seed in ((0, 0), (1, 0), (1, 1)):
        plain = predict("fade", "synthetic", synth_root, shots=shots, seed=seed, cache=False, **args)
        cache = FeatureCache(tmp_path / "cache")
        cold = predict("fade", "synthetic", synth_root, shots=shots, seed=seed, cache=cache, **args)
        warm_cache = FeatureCache(tmp_path / "cache")
        warm = predict("fade", "synthetic", synth_root, shots=shots, seed=seed, cache=warm_cache, **args)
        for key in ("scores", "maps"):
            assert np.array_equal(cold["predictions"][key], plain["predictions"][key])
            assert np.array_equal(warm["predictions"][key], plain["predictions"][key])
        # the warm run read every (image, size) distance row back instead of recomputing it
        assert warm_cache.stats["knn"]["hits"] == 6 * 2 and warm_cache.stats["knn"]["stored"] == 0
    # three memories (self, seed 0's reference, seed 1's reference) x 6 images x 2 sizes, none shared
    assert len(list((tmp_path / "cache" / "knn").rglob("*.safetensors"))) == 3 * 6 * 2


def test_patchcore_reads_its_checkpoint_from_the_environment(synth_root, tmp_path, monkeypatch):
    # $ZSAD_CNN_CHECKPOINT is the default of predict (and so of every notebook), as $ZSAD_CHECKPOINT is for CLIP
    monkeypatch.setenv("ZSAD_CNN_CHECKPOINT", str(tmp_path / "wrn50_missing.pth"))
    with pytest.raises(ValueError, match="wrn50_missing.pth"):
        predict("patchcore", "synthetic", synth_root, shots=1, **TINY)
