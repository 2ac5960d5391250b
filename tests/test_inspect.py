"""zsad.Detector (zsad.api) and `zsad inspect` (zsad.inspect) on the tiny random ViT and the synthetic tree."""
import argparse
import csv
import re
import shutil

import numpy as np
import pytest
from PIL import Image

pytestmark = pytest.mark.usefixtures("single_thread")

TINY = dict(model="zsad-tiny-vit", sizes=(240,), eval_size=128, class_name="weave")


@pytest.fixture(scope="module")
def weave(synth_root):
    from zsad.data import load_dataset

    recs = load_dataset("mvtec", synth_root, classes=["weave"])
    train = [r for r in recs if r.split == "train"]
    test = [r for r in recs if r.split == "test"]
    return train, test


def _parser():
    import zsad.inspect

    parser = argparse.ArgumentParser(prog="zsad")
    zsad.inspect.register(parser.add_subparsers(dest="command", required=True))
    return parser


def _no_model(monkeypatch):
    import zsad.study

    def refuse(*a, **k):
        raise AssertionError("a model was loaded before the input was checked")

    monkeypatch.setattr(zsad.study, "_load_weights", refuse)


def test_fade_one_shot_vision_localises_planted_defects(weave):
    # Known answer of the kind tests/test_study.py checks through predict (random weights: 1-NN patch memory on
    # local texture finds the planted defects; measured here: the map is higher inside the mask on every
    # defective weave image, and the defective images score higher on average than the normal ones).
    from zsad.api import Detector
    from zsad.data import load_mask

    train, test = weave
    det = Detector("fade", shots=1, mode="vision", **TINY).fit([r.path for r in train[:1]])
    scores, maps, _ = det.score_and_maps([r.path for r in test])
    assert maps.shape == (len(test), 128, 128) and scores.shape == (len(test),)
    labels = np.array([r.label for r in test])
    assert scores[labels == 1].mean() > scores[labels == 0].mean()
    inside, outside = [], []
    for r, m in zip(test, maps):
        if r.label:
            mask = load_mask(r, 128).numpy().astype(bool)
            inside.append(m[mask].mean())
            outside.append(m[~mask].mean())
    inside, outside = np.array(inside), np.array(outside)
    assert inside.mean() > outside.mean() and (inside > outside).mean() >= 0.75
    # the same pixels as PIL images and as arrays give the same scores as the files
    pil = [Image.open(r.path).convert("RGB") for r in test[:3]]
    np.testing.assert_allclose(det.score(pil), scores[:3], rtol=1e-6)
    np.testing.assert_allclose(det.score([np.asarray(p) for p in pil]), scores[:3], rtol=1e-6)


def test_leave_one_out_threshold_equals_a_hand_computation(weave):
    from zsad.api import Detector

    train, test = weave
    goods = [r.path for r in train[:3]]
    det = Detector("fade", mode="vision", **TINY).fit(goods)  # shots=None: all 3 are the memory
    assert len(det.memory_) == 3
    by_hand = []
    for i, g in enumerate(goods):
        others = [x for j, x in enumerate(goods) if j != i]
        one = Detector("fade", mode="vision", threshold=0.0, **TINY).fit(others)  # 2-shot memory without g
        by_hand.append(one.score([g])[0])
    np.testing.assert_allclose(det.reference_scores_, by_hand, rtol=1e-6)
    assert det.threshold_ == pytest.approx(max(by_hand))  # quantile 0.99 'higher' of 3 scores = the max
    assert det.threshold_ == pytest.approx(float(np.quantile(by_hand, 0.99, method="higher")))
    decisions = det.predict([r.path for r in test[:4]])
    np.testing.assert_array_equal(decisions, (det.score([r.path for r in test[:4]]) > det.threshold_).astype(int))
    # a given threshold wins; a lower quantile gives a lower threshold
    assert Detector("fade", mode="vision", threshold=0.3, **TINY).fit(goods).threshold_ == 0.3
    low = Detector("fade", mode="vision", quantile=0.3, **TINY).fit(goods)
    assert low.threshold_ == pytest.approx(float(np.quantile(by_hand, 0.3, method="higher")))


def test_k_shot_with_one_good_image_has_no_threshold(weave):
    from zsad.api import Detector

    det = Detector("fade", mode="vision", **TINY).fit([weave[0][0].path])
    assert det.threshold_ is None
    with pytest.raises(ValueError, match="no threshold"):
        det.predict([weave[1][0].path])


def test_inspect_end_to_end_writes_scores_overlays_and_a_self_contained_report(weave, tmp_path):
    train, test = weave
    imgs, refs = tmp_path / "imgs", tmp_path / "refs"
    imgs.mkdir(), refs.mkdir()
    picked = [r for r in test if r.label == 0][:2] + [r for r in test if r.label == 1][:2]
    for k, r in enumerate(picked):
        shutil.copy(r.path, imgs / f"{k}_{r.defect}.png")
    # a grey image of another size, and an RGBA one: load_image converts, the runners resize
    Image.open(picked[0].path).convert("L").resize((96, 80)).save(imgs / "grey_small.png")
    Image.open(picked[2].path).convert("RGBA").save(imgs / "rgba.png")
    for r in train[:3]:
        shutil.copy(r.path, refs / r.path.name)
    out = tmp_path / "report"
    args = _parser().parse_args(["inspect", str(imgs), "--refs", str(refs), "--out", str(out), "--model",
                                 "zsad-tiny-vit", "--sizes", "240", "--mode", "vision", "--eval-size", "128",
                                 "--class-name", "weave", "--quiet"])
    assert args.func(args) == 0
    rows = list(csv.DictReader((out / "scores.csv").open()))
    assert len(rows) == 6 and set(rows[0]) == {"image", "score", "decision", "overlay"}
    assert {Path_name(r["image"]) for r in rows} == {p.name for p in imgs.iterdir()}
    assert {r["decision"] for r in rows} <= {"anomalous", "normal"}
    overlays = sorted((out / "overlays").iterdir())
    assert len(overlays) == 6 and all(Image.open(p).size[0] > 320 for p in overlays)  # image + colour bar
    page = (out / "report.html").read_text()
    assert not re.search(r"https?://", page)
    assert len(re.findall(r'src="data:image/png;base64,', page)) == 12  # every image and its overlay
    assert "RANDOM WEIGHTS" in page and "Threshold" in page and "leave-one-out" in page
    for r in rows:
        assert r["image"] in page
    scores = [float(r["score"]) for r in rows]
    shown = [float(x) for x in re.findall(r"</td><td>([-0-9.e+]+)</td><td class=", page)]
    assert shown == pytest.approx(sorted(scores, reverse=True), rel=1e-5)
    # no refs and no threshold: no decision column; an existing output needs --overwrite
    args = _parser().parse_args(["inspect", str(imgs / "rgba.png"), "--out", str(out), "--model", "zsad-tiny-vit",
                                 "--sizes", "240", "--mode", "vision", "--eval-size", "128", "--quiet"])
    with pytest.raises(ValueError, match="--overwrite"):
        args.func(args)
    args.overwrite = True
    assert args.func(args) == 0
    rows = list(csv.DictReader((out / "scores.csv").open()))
    assert len(rows) == 1 and "decision" not in rows[0]
    # a file the user added to the report folder makes it theirs: never replaced
    (out / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="holds files it did not write"):
        args.func(args)
    assert (out / "notes.txt").read_text() == "mine"


def Path_name(text):
    from pathlib import Path

    return Path(text).name


def test_bad_inputs_are_named_before_any_model_loads(tmp_path, monkeypatch, weave):
    from zsad.api import Detector
    from zsad.data import DatasetError

    _no_model(monkeypatch)
    empty = tmp_path / "empty"
    empty.mkdir()
    good = weave[1][0].path
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png at all")
    base = ["--out", str(tmp_path / "o"), "--model", "zsad-tiny-vit", "--quiet"]
    args = _parser().parse_args(["inspect", str(empty), *base])
    with pytest.raises(DatasetError, match=f"no images in folder {re.escape(str(empty))}"):
        args.func(args)
    args = _parser().parse_args(["inspect", str(good), str(broken), *base])
    with pytest.raises(DatasetError, match=re.escape(str(broken))):
        args.func(args)
    args = _parser().parse_args(["inspect", str(good), "--refs", str(empty), *base])
    with pytest.raises(DatasetError, match="no images in folder"):
        args.func(args)
    assert not (tmp_path / "o").exists()
    det = Detector("fade", **TINY)
    with pytest.raises(DatasetError, match="1 image cannot be used.*float image array must hold values in"):
        det.score([np.full((8, 8, 3), 2.0)])
    with pytest.raises(ValueError, match="k-shot method: call fit"):
        Detector("patchcore").score([good])
    # a class name the LLM recipe cannot take, and generation options where nothing is generated: named first
    with pytest.raises(ValueError, match="line breaks or control characters"):
        Detector("cheung", model="zsad-tiny-vit", class_name="frob\nnicator")
    with pytest.raises(ValueError, match="prompt_seed: fade reads no class prompts"):
        Detector("fade", model="zsad-tiny-vit", prompt_seed=2)
    with pytest.raises(ValueError, match="llm_model: class_prompts= is given"):
        Detector("cheung", model="zsad-tiny-vit", class_prompts="llm_class_mvtec", llm_model=broken)
    with pytest.raises(ValueError, match=r"broken\.png is not a GGUF file"):
        Detector("cheung", model="zsad-tiny-vit", class_name="frobnicator", llm_model=broken)
    with pytest.raises(ValueError, match="option 'temprature' is not a setting of winclip"):
        Detector("winclip", model="zsad-tiny-vit", temprature=0.1)


def test_clone_detection_and_installed_defaults(tmp_path, monkeypatch):
    from zsad import config

    assert config.IN_CLONE and config.PROMPTS_DIR == config.PROJECT_ROOT / "prompts"  # this checkout: as before
    assert config.default_cache_dir(True) == config.PROJECT_ROOT / "cache"
    assert config.default_results_dir(True) == config.PROJECT_ROOT / "results"
    site = tmp_path / "site-packages"
    site.mkdir()
    assert not config.is_clone(site)
    (site / "pyproject.toml").write_text('[project]\nname = "zsad"\n')
    assert not config.is_clone(site)  # no .git, no tests/: an installed tree
    (site / "tests").mkdir()
    assert config.is_clone(site)
    other = tmp_path / "other"
    (other / ".git").mkdir(parents=True)
    (other / "pyproject.toml").write_text('[project]\nname = "other"\n')
    assert not config.is_clone(other)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert config.default_cache_dir(False) == tmp_path / "xdg" / "zsad"
    monkeypatch.chdir(tmp_path)
    assert config.default_results_dir(False) == tmp_path / "results"


def test_inspect_cheung_on_a_new_class_records_its_generated_prompts(weave, tmp_path, monkeypatch):
    """`zsad inspect --method cheung` on a class no committed file holds: prompts generated (a canned LLM stands in
    for Gemma here; tests/test_prompts.py runs the real one) with --prompt-seed, and recorded in the report."""
    import json

    from zsad import llm

    class Canned:
        def __init__(self, model, n_threads=1):
            self.model, self.n_threads = model, n_threads

        settings = property(lambda self: {"file": self.model.file, "sha256": self.model.sha256})

        def complete_list(self, prompt, seed, max_tokens):
            text = " a clean even cap.\n" if "defect-free" in prompt else " a cap with a deep scratch.\n"
            return {"text": text, "finish": "end_of_list", "n_tokens": 6}

    fake = tmp_path / "fake.gguf"
    fake.write_bytes(b"GGUF")
    monkeypatch.setattr(llm, "resolve_model", lambda m=None: llm.ModelInfo(fake, "f" * 64))
    monkeypatch.setattr(llm, "Generator", Canned)
    monkeypatch.setenv("ZSAD_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "report"
    args = _parser().parse_args(["inspect", str(weave[1][0].path), str(weave[1][-1].path), "--out", str(out),
                                 "--method", "cheung", "--class-name", "bottle cap", "--prompt-seed", "3",
                                 "--model", "zsad-tiny-vit", "--eval-size", "64", "--threshold", "0.5", "--quiet"])
    assert args.func(args) == 0
    prov = json.loads((out / "provenance.json").read_text())
    gen = prov["class_prompts_generated"]
    assert gen["classes"] == ["bottle cap"] and gen["seed"] == 3 and gen["model_sha256"] == "f" * 64
    assert prov["parameters"]["class_prompts"] == [gen["file"]] and "-s3-" in gen["file"]
    page = (out / "report.html").read_text()
    assert "class prompts generated with the local LLM: fake.gguf" in page and "seed 3, for bottle cap" in page
    rows = list(csv.DictReader((out / "scores.csv").open()))
    assert [r["decision"] for r in rows] == ["anomalous" if float(r["score"]) > 0.5 else "normal" for r in rows]
