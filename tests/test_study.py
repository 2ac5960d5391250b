import json

import numpy as np
import pytest

from zsad.cli import main
from zsad.study import METHODS, predict, subset_evenly

TINY = dict(model="zsad-tiny-vit", sizes=(240, 448), n_boot=20, progress=False)


def for_method(method, **kw):
    """``kw`` without the method-specific arguments ``method`` does not use (predict refuses those)."""
    from zsad.study import SPECIFIC_ARGUMENTS

    return {k: v for k, v in kw.items() if k not in SPECIFIC_ARGUMENTS or k in METHODS[method].uses}


def zero_or_one_shot(method):
    return 0 if METHODS[method].shots == "zero" else 1


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
    # FADE as published: WinCLIP's "object" ensemble plus the committed LLM ensemble of seed 0
    assert prov["parameters"]["prompts"] == ["prompts/llm_generic_seed0.json"]
    assert prov["parameters"]["winclip_in_segmentation"] is True
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
    (dict(options={"language_strem": "clip"}), "option 'language_strem' is not a setting of fade"),
    (dict(options={"language_stream": "cls"}), "token stream"),
    (dict(winclip_in_segmentation=False, prompts="none"), "segmentation ensemble is empty"),
    (dict(method="patchcore", shots=0), "k-shot baseline"),
    (dict(method="cheung"), "needs class prompts"),
])
def test_bad_input_fails_before_any_model_runs(synth_root, kw, msg, monkeypatch):
    import zsad.study

    monkeypatch.setattr(zsad.study, "load_model", lambda *a, **k: pytest.fail("model loaded before validation"))
    args = {"method": "fade", **kw}
    method = args.pop("method")
    with pytest.raises(ValueError, match=msg):
        predict(method, "synthetic", synth_root, **for_method(method, **{**TINY, **args}) if method in METHODS
                else {**TINY, **args})


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
    if "model" in METHODS[method].uses:
        extra += ["--model", "zsad-tiny-vit"]
    if "sizes" in METHODS[method].uses:
        extra += ["--sizes", "240"]
    shots = zero_or_one_shot(method)
    assert main(["predict", "--method", method, "--shots", str(shots), "--dataset", "synthetic", "--root",
                 str(synth_root), *extra, "--classes", "grain", "--max-images", "6", "--n-boot", "0",
                 "--out", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    assert "run folder:" in out and "RANDOM WEIGHTS" in out
    prov = json.loads((tmp_path / "run" / "provenance.json").read_text())
    assert prov["parameters"]["method"] == method and len(prov["few_shot_references"].get("grain", [])) == shots
    pred = np.load(tmp_path / "run" / "predictions.npz")
    image_only = method.startswith("cheung")  # image-level method: one value per image, no pixel metrics
    assert pred["maps"].shape == ((6, 1, 1) if image_only else (6, 448, 448)) and np.isfinite(pred["scores"]).all()
    metrics = open(tmp_path / "run" / "metrics.csv").read()
    assert ("pauroc" in metrics) != image_only


@pytest.mark.parametrize("method", ["fade", "winclip", "patchcore", "tamura", "cheung_no_prompt_generation"])
def test_autocast_reaches_every_image_tower_and_is_cached_apart(method, synth_root, tmp_path):
    from zsad.cache import FeatureCache

    cache = FeatureCache(tmp_path / "cache")
    args = for_method(method, classes="grain", shots=zero_or_one_shot(method), max_images=6, sizes=(240,),
                      model="zsad-tiny-vit", n_boot=0, progress=False)
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
    assert np.abs(s16 - s32).max() <= 0.1 * max(np.ptp(s32), 1e-3) + 1e-3  # measured: <= 0.082 x ptp (fade)


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


def test_fade_scores_a_large_class_in_chunks_with_the_same_result(synth_root, tmp_path, monkeypatch):
    # FADE_CHUNK bounds the tokens in memory; each image's score and map depend on that image alone, so scoring
    # 8 images at a time gives what one pass over the class gives (to float rounding of the batched products)
    from zsad import runners

    args = dict(classes="weave", max_images=12, model="zsad-tiny-vit", sizes=(240, 448), n_boot=0, progress=False,
                cache=False)
    for shots in (0, 1):
        whole = predict("fade", "synthetic", synth_root, shots=shots, **args)["predictions"]
        monkeypatch.setattr(runners, "FADE_CHUNK", 8)
        calls = []
        monkeypatch.setattr(runners, "fade", lambda tokens, *a, **k: _count(calls, tokens, a, k))
        chunked = predict("fade", "synthetic", synth_root, shots=shots, **args)["predictions"]
        monkeypatch.undo()
        assert calls == [8, 4]
        assert list(chunked["paths"]) == list(whole["paths"])
        np.testing.assert_allclose(chunked["scores"], whole["scores"], rtol=0, atol=1e-6)
        assert np.abs(chunked["maps"].astype(int) - whole["maps"].astype(int)).max() <= 1


def test_map_storage_is_applied_recorded_and_read_back(synth_root, tmp_path):
    from zsad.evaluate import evaluate_predictions
    from zsad.results import metrics_csv_bytes

    args = dict(classes="weave", max_images=6, model="zsad-tiny-vit", n_boot=0, progress=False, cache=False)
    plain = predict("winclip", "synthetic", synth_root, out=tmp_path / "f32", **args)
    small = predict("winclip", "synthetic", synth_root, out=tmp_path / "f16", map_storage="float16", **args)
    assert "map_storage" not in plain["provenance"]["parameters"]  # the default leaves run folders as they were
    assert small["provenance"]["parameters"]["map_storage"] == "float16"
    # the metrics are those of the maps as stored: zsad eval on the folder gives the same table
    again = evaluate_predictions(small["path"] / "predictions.npz", n_boot=0)
    assert metrics_csv_bytes(again) == (small["path"] / "metrics.csv").read_bytes()
    f16 = small["predictions"]["maps"]
    assert np.array_equal(f16, plain["predictions"]["maps"].astype(np.float16).astype(np.float32))
    with pytest.raises(ValueError, match="map_storage"):
        predict("winclip", "synthetic", synth_root, map_storage="jpeg", **args)


def test_gpu_fraction_needs_the_ray_executor():
    from zsad.grids import run_settings

    with pytest.raises(ValueError, match="gpu_fraction .* use executor='ray'"):
        run_settings("t", [{"method": "fade", "shots": 0}], gpu_fraction=0.5)


def _count(calls, tokens, args, kwargs):
    from zsad.methods.fade import fade

    calls.append(len(tokens.relpaths))
    return fade(tokens, *args, **kwargs)


def test_patchcore_reads_its_checkpoint_from_the_environment(synth_root, tmp_path, monkeypatch):
    # $ZSAD_CNN_CHECKPOINT is the default of predict (and so of every notebook), as $ZSAD_CHECKPOINT is for CLIP
    monkeypatch.setenv("ZSAD_CNN_CHECKPOINT", str(tmp_path / "wrn50_missing.pth"))
    with pytest.raises(ValueError, match="wrn50_missing.pth"):
        predict("patchcore", "synthetic", synth_root, shots=1, **for_method("patchcore", **TINY))


# ------------------------------------------------------------------ every bad input refused before the work

@pytest.fixture
def no_compute(monkeypatch):
    """Fail the test if a model is loaded: the error must come from validation."""
    import zsad.study

    monkeypatch.setattr(zsad.study, "_load_weights", lambda *a, **k: pytest.fail("weights loaded before validation"))


@pytest.mark.parametrize("method, kw, msg", [
    ("winclip", dict(mode="vision"), r"winclip does not use --mode \(mode\)"),
    ("winclip", dict(prompts="llm_generic_seed0"), "winclip does not use --prompts"),
    ("patchcore", dict(sizes="240", model="zsad-tiny-vit"), "patchcore does not use --model, --sizes"),
    ("patchcore", dict(shots=1, options={"language_stream": "clip"}),
     "option 'language_stream' is not a setting of patchcore"),
    ("patchcore", dict(shots=1, options={"coreset_ratio": 2.0}),
     r"bad patchcore option: coreset_ratio must be in \(0, 1\]"),
    ("cheung_no_prompt_generation", dict(class_prompts="llm_class_mvtec"), "does not use --class-prompts"),
    ("cheung_no_object_detection", dict(detector="/nowhere"), "does not use --detector"),
    ("cheung_no_prompt_generation", dict(options={"tua": 0.1}), "option 'tua' is not a setting of cheung"),
    ("tamura", dict(shots=1), "tamura is zero-shot: .* shots must be 0"),
    ("cheung_no_prompt_generation", dict(shots=2), "zero-shot"),
    ("winclip", dict(options={"shots": 2}), "set through predict's own argument"),
    ("fade", dict(sizes="abc"), r"--sizes must be comma-separated integers .*'abc'"),
    ("fade", dict(sizes="16"), r"at least 32 \(2 x 2 patches\), got 16"),
    ("fade", dict(mode="visual"), "--mode must be one of language, vision, both"),
    ("fade", dict(max_images=-1), "max_images must be an integer >= 2"),
    ("fade", dict(max_images=1), "at least one normal and one defective"),
    ("fade", dict(n_boot=-5), r"n_boot must be an integer >= 0 \(0: no intervals\)"),
    ("fade", dict(checkpoint="/nowhere/ckpt.pt"), "ckpt.pt: checkpoint file not found"),
])
def test_options_a_method_does_not_apply_are_refused(method, kw, msg, synth_root, no_compute):
    with pytest.raises(ValueError, match=msg):
        predict(method, "synthetic", synth_root, **{"n_boot": 0, "progress": False, **kw})


def test_provenance_records_what_each_method_applied(synth_root):
    common = dict(classes="grain", max_images=4, n_boot=0, progress=False)
    pc = predict("patchcore", "synthetic", synth_root, shots=1, options={"coreset_ratio": 0.5}, **common)
    params = pc["provenance"]["parameters"]
    assert params["config"]["coreset_ratio"] == 0.5 and params["config"]["seed"] == 0
    assert not {"mode", "sizes", "prompts", "class_prompts", "detector"} & set(params)
    wc = predict("winclip", "synthetic", synth_root, model="zsad-tiny-vit", **common)
    wc_params = wc["provenance"]["parameters"]
    assert wc_params["config"]["temperature"] == 0.07 and "sizes" not in wc_params
    ch = predict("cheung_no_prompt_generation", "synthetic", synth_root, model="zsad-tiny-vit",
                 options={"fusion_weight": 0.25}, **common)
    assert ch["provenance"]["parameters"]["config"]["fusion_weight"] == 0.25
    ch_plain = predict("cheung_no_prompt_generation", "synthetic", synth_root, model="zsad-tiny-vit", **common)
    assert not np.array_equal(ch["predictions"]["scores"], ch_plain["predictions"]["scores"])  # the option acts


def test_bad_data_for_the_request_is_found_before_any_image_is_encoded(tmp_path, no_compute):
    from zsad.data import make_synthetic

    only_defects = make_synthetic(tmp_path / "d", classes=("grain",), n_train=2, n_test_good=0, n_test_defect=1,
                                  size=32)
    with pytest.raises(ValueError, match="class 'grain' .* all defective; image metrics need both"):
        predict("fade", "synthetic", only_defects, n_boot=0)
    no_train = make_synthetic(tmp_path / "n", classes=("grain",), n_train=0, n_test_good=1, n_test_defect=1,
                              size=32)
    with pytest.raises(ValueError, match="class 'grain' of .* has no train images .* shots=2 needs 2"):
        predict("fade", "synthetic", no_train, shots=2, n_boot=0)
    # an existing --out that is not a run folder, here the dataset itself, with --overwrite
    with pytest.raises(ValueError, match="inside or over"):
        predict("fade", "synthetic", no_train, out=no_train, overwrite=True, n_boot=0)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("x")
    with pytest.raises(ValueError, match="not a run folder written by zsad"):
        predict("fade", "synthetic", no_train, out=tmp_path / "mine", overwrite=True, n_boot=0)
    assert (no_train / "README.txt").is_file() and (tmp_path / "mine" / "thesis.tex").is_file()


def test_subset_keeps_both_labels():
    from zsad.data.records import ImageRecord

    def rec(defect, i):
        return ImageRecord(path=f"/r/c/test/{defect}/{i}.png", relpath=f"c/test/{defect}/{i}.png", cls="c",
                           split="test", label=int(defect != "good"), defect=defect, mask_path=None)

    items = [rec("crack", i) for i in range(10)] + [rec("good", 0)] + [rec("hole", i) for i in range(10)]
    picked = subset_evenly(items, 4)
    assert len(picked) == 4 and {r.label for r in picked} == {0, 1}
    assert {r.defect for r in picked} == {"crack", "good", "hole"}


def test_nan_weights_are_named_at_load(tmp_path):
    import torch

    from zsad.backbone import CheckpointError, load_model

    state = load_model("zsad-tiny-vit").model.state_dict()
    name = next(k for k, v in state.items() if v.is_floating_point())
    state[name] = state[name].clone().fill_(float("nan"))
    torch.save(state, tmp_path / "nan.pt")
    with pytest.raises(CheckpointError, match=f"nan.pt: 1 tensor\\(s\\) hold NaN or inf values, e.g. '{name}'"):
        load_model("zsad-tiny-vit", checkpoint=tmp_path / "nan.pt")


def test_winclip_only_segmentation_is_a_labelled_ablation(synth_root):
    args = dict(classes="weave", mode="language", max_images=4, n_boot=0, model="zsad-tiny-vit", sizes="240",
                progress=False)
    full = predict("fade", "synthetic", synth_root, **args)
    ablation = predict("fade", "synthetic", synth_root, prompts="none", **args)
    assert ablation["provenance"]["parameters"]["prompts"] == []
    assert not np.array_equal(full["predictions"]["maps"], ablation["predictions"]["maps"])  # the LLM prompts act
    assert np.array_equal(full["predictions"]["scores"], ablation["predictions"]["scores"])  # AC: class prompts only


# ---------------------------------------------------------------------------------------------------- MuSc


def test_musc_predict_equals_the_pure_method_on_the_one_feature_pass(synth_root, tmp_path):
    """zsad.predict(method="musc") is the runner's composition: tokens of the chosen layers from extract_layers,
    the class tokens from the CLIP stream's CLS, then zsad.methods.musc.musc; maps at the evaluation size."""
    import torch

    from zsad.backbone import load_model
    from zsad.cache import FeatureCache
    from zsad.data import load_dataset
    from zsad.features import extract_layers
    from zsad.methods.musc import MuscConfig, musc

    run = predict("musc", "synthetic", synth_root, classes="weave", model="zsad-tiny-vit", sizes="96",
                  max_images=6, eval_size=64, n_boot=0, progress=False, cache=FeatureCache(tmp_path / "cache"))
    cfg = run["provenance"]["parameters"]["config"]
    assert cfg["image_size"] == 96 and cfg["rscin_k"] == [1, 2, 3] and cfg["layers"] is None
    test = [r for r in load_dataset("mvtec", synth_root, split="test", classes=["weave"])]
    test = [r for r in test if r.relpath in set(run["predictions"]["paths"])]
    tokens, taps = extract_layers(load_model("zsad-tiny-vit", seed=0), test, 96, (2, 5, 8, 11), progress=False)
    want = musc(taps, tokens.clip[96][:, 0], MuscConfig(image_size=96), map_size=64)
    np.testing.assert_array_equal(run["predictions"]["scores"], want.scores)
    np.testing.assert_array_equal(run["predictions"]["maps"], want.maps)
    assert run["predictions"]["maps"].shape == (6, 64, 64) and not torch.is_tensor(run["predictions"]["maps"])
    # the final GEM tokens instead of the layers: another token stream, other scores
    gem = predict("musc", "synthetic", synth_root, classes="weave", model="zsad-tiny-vit", sizes="96",
                  max_images=6, eval_size=64, n_boot=0, progress=False, cache=False, options={"features": "gem"})
    assert not np.array_equal(gem["predictions"]["scores"], run["predictions"]["scores"])


def test_musc_settings_are_checked_before_any_model_runs(synth_root, no_compute):
    with pytest.raises(ValueError, match=r"class 'weave' .* has 4 test images \(with --max-images 4\).*too few"):
        predict("musc", "synthetic", synth_root, classes="weave", max_images=4, n_boot=0, progress=False)
    with pytest.raises(ValueError, match="musc scores one image size"):
        predict("musc", "synthetic", synth_root, sizes="240,448", n_boot=0, progress=False)
    with pytest.raises(ValueError, match="musc is zero-shot"):
        predict("musc", "synthetic", synth_root, shots=1, n_boot=0, progress=False)
    with pytest.raises(ValueError, match="bad musc option: r_list must hold odd"):
        predict("musc", "synthetic", synth_root, options={"r_list": [2]}, n_boot=0, progress=False)
    with pytest.raises(ValueError, match="RsCIN window 9"):
        predict("musc", "synthetic", synth_root, options={"rscin_k": [1, 8, 9]}, max_images=8, n_boot=0,
                progress=False)
    visa = METHODS["musc"].config({"dataset": "visa", "options": {}})  # the official windows per dataset
    assert visa.rscin_k == (1, 8, 9) and METHODS["musc"].config({"dataset": "synthetic", "options": {}}).rscin_k \
        == (1, 2, 3)
