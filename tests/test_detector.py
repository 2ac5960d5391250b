"""zsad.Detector through every registered method on small synthetic images with planted defects.

Known answers, per method:

- the detector is the study's runner behind a different door: its scores and maps equal ``zsad.predict``'s on the
  same images written as a dataset (same references), for WinCLIP, PatchCore, Tamura and Cheung et al.;
- the leave-one-out threshold equals a hand computation (each reference scored with the other as the memory) and
  ``predict`` is ``score > threshold``;
- planted defects are found where the weights allow it: with random weights the k-shot memories (WinCLIP's window
  memory, PatchCore's patch memory) compare local texture, so the defective images score higher and the maps are
  higher inside the masks (measured below); the zero-shot methods (Tamura, Cheung) compare images with text
  prompts through random text and image towers, which says nothing about defects, so for them only the equalities
  and the shapes are asserted;
- Cheung et al.'s full method on a class no committed file holds generates class prompts once (the LLM replaced
  by a canned generator here, ``tests/test_prompts.py`` runs the real one), and a second detector loads no LLM.
"""
import shutil

import numpy as np
import pytest

pytestmark = pytest.mark.usefixtures("single_thread")

CLIP = dict(model="zsad-tiny-vit", eval_size=64)
WEAVE = dict(CLIP, class_name="weave")  # the detector's class name is the dataset's class (it goes into prompts)
GOOD_TEST = ("good/000.png", "good/001.png")
BAD_TEST = ("blob/000.png", "scratch/001.png")


@pytest.fixture(scope="module")
def tree(synth_root, tmp_path_factory):
    """A one-class MVTec-layout tree: 2 train images, 2 normal and 2 defective (planted, with masks) test images."""
    src, root = synth_root / "weave", tmp_path_factory.mktemp("detector") / "tree"
    dst = root / "weave"
    for rel in ("train/good/000.png", "train/good/001.png", *(f"test/{r}" for r in GOOD_TEST + BAD_TEST),
                *(f"ground_truth/{r[:-4]}_mask.png" for r in BAD_TEST)):
        (dst / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src / rel, dst / rel)
    return root


@pytest.fixture(scope="module")
def images(tree):
    from zsad.data import load_dataset

    recs = load_dataset("mvtec", tree, classes=["weave"])
    train = [r.path for r in recs if r.split == "train"]
    test = [r for r in recs if r.split == "test"]
    return train, test


def _predict(method, tree, **kw):
    from zsad import predict

    return predict(method, "synthetic", tree, classes="weave", n_boot=0, progress=False, **kw)["predictions"]


def _same_as_predict(det, method, tree, test, **kw):
    """The detector's scores/maps equal predict's on the tree (same order, same references)."""
    scores, maps, _ = det.score_and_maps([r.path for r in test])
    pred = _predict(method, tree, **kw)
    assert [str(p) for p in pred["paths"]] == [r.relpath for r in test]
    np.testing.assert_allclose(scores, pred["scores"], rtol=1e-6, atol=1e-7)
    if maps is not None:
        np.testing.assert_allclose(maps, pred["maps"], rtol=1e-5, atol=1e-6)
    return scores, maps, pred["labels"]


def _masks(test, size):
    from zsad.data import load_mask

    return [load_mask(r, size).numpy().astype(bool) for r in test]


def _localises(maps, labels, test, size):
    inside = [m[k].mean() for m, k, lab in zip(maps, _masks(test, size), labels) if lab]
    outside = [m[~k].mean() for m, k, lab in zip(maps, _masks(test, size), labels) if lab]
    return np.array(inside), np.array(outside)


def _loo_by_hand(method, train, **kw):
    """Each good image scored with the other one as the one-shot memory."""
    from zsad.api import Detector

    return [Detector(method, threshold=0.0, **kw).fit([train[1 - i]]).score([train[i]])[0] for i in range(2)]


def test_winclip_few_shot_equals_predict_finds_planted_defects_and_thresholds(tree, images):
    from zsad.api import Detector

    train, test = images
    det = Detector("winclip", **WEAVE).fit(train)  # shots=None: both good images are the memory
    assert len(det.memory_) == 2
    scores, maps, labels = _same_as_predict(det, "winclip", tree, test, shots=2, seed=0, **CLIP)
    assert maps.shape == (4, 64, 64) and maps.dtype == np.float32
    # planted defects (measured: each defective image above each normal one; every map higher inside its mask)
    assert scores[labels == 1].min() > scores[labels == 0].max()
    inside, outside = _localises(maps, labels, test, 64)
    assert (inside > outside).all()
    np.testing.assert_allclose(det.anomaly_maps([r.path for r in test]), maps, rtol=1e-6)
    # the threshold: quantile 0.99 'higher' of 2 leave-one-out scores = their max, each computed by hand
    by_hand = _loo_by_hand("winclip", train, **WEAVE)
    np.testing.assert_allclose(det.reference_scores_, by_hand, rtol=1e-6)
    assert det.threshold_ == pytest.approx(max(by_hand))
    np.testing.assert_array_equal(det.predict([r.path for r in test]), (scores > det.threshold_).astype(int))


def test_patchcore_equals_predict_and_finds_planted_defects(tree, images):
    from zsad.api import Detector

    train, test = images
    det = Detector("patchcore", shots=2, eval_size=64).fit(train)
    scores, maps, labels = _same_as_predict(det, "patchcore", tree, test, shots=2, seed=0, eval_size=64)
    assert maps.shape == (4, 64, 64)
    # random WideResNet-50 features still carry texture: measured, defective images above normal ones on average
    # and every map higher inside its mask
    assert scores[labels == 1].mean() > scores[labels == 0].mean()
    inside, outside = _localises(maps, labels, test, 64)
    assert (inside > outside).all()
    # one-shot memory of the other good image: the leave-one-out scores
    by_hand = [Detector("patchcore", threshold=0.0, eval_size=64).fit([train[1 - i]]).score([train[i]])[0]
               for i in range(2)]
    np.testing.assert_allclose(det.reference_scores_, by_hand, rtol=1e-6)
    assert det.threshold_ == pytest.approx(max(by_hand))
    # a fixed threshold between the classes decides exactly by it
    cut = float((scores[labels == 1].min() + scores[labels == 0].max()) / 2)
    fixed = Detector("patchcore", shots=2, eval_size=64, threshold=cut).fit(train)
    assert fixed.threshold_ == cut and fixed.reference_scores_ is None
    np.testing.assert_array_equal(fixed.predict([r.path for r in test]), (scores > cut).astype(int))


def test_tamura_zero_shot_equals_predict_and_good_images_only_set_the_threshold(tree, images):
    from zsad.api import Detector

    train, test = images
    det = Detector("tamura", **WEAVE)
    with pytest.raises(ValueError, match="no threshold"):
        det.predict([test[0].path])
    scores, maps, _ = _same_as_predict(det, "tamura", tree, test, shots=0, **CLIP)
    assert maps.shape == (4, 64, 64) and np.isfinite(scores).all()
    det.fit(train)
    assert det.memory_ == [] and det.parameters()["shots"] == 0  # zero-shot: references only set the threshold
    np.testing.assert_allclose(det.reference_scores_, det.score(train), rtol=1e-6)  # scored as test images
    assert det.threshold_ == pytest.approx(det.reference_scores_.max())
    np.testing.assert_allclose(det.score([r.path for r in test]), scores, rtol=1e-6)  # fit changed no score
    np.testing.assert_array_equal(det.predict([r.path for r in test]), (scores > det.threshold_).astype(int))
    with pytest.raises(ValueError, match="zero-shot"):
        Detector("tamura", shots=2, **CLIP)


class _CannedLLM:
    """The local LLM replaced by canned completions (one kept prompt per side)."""

    calls = 0

    def __init__(self, model, n_threads=1):
        self.model, self.n_threads = model, n_threads

    @property
    def settings(self):
        return {"file": self.model.file, "sha256": self.model.sha256, "n_threads": self.n_threads}

    def complete_list(self, prompt, seed, max_tokens):
        type(self).calls += 1
        normal = "defect-free" in prompt
        text = " a smooth even weave texture.\n" if normal else " a weave texture with a dark blob stain.\n"
        return {"text": text, "finish": "end_of_list", "n_tokens": 8}


@pytest.fixture
def canned_llm(monkeypatch, tmp_path):
    from zsad import llm

    model = tmp_path / "canned.gguf"
    model.write_bytes(b"GGUF canned")
    monkeypatch.setattr(llm, "resolve_model", lambda m=None: llm.ModelInfo(model, "c" * 64))
    monkeypatch.setattr(llm, "Generator", _CannedLLM)
    monkeypatch.setenv("ZSAD_CACHE", str(tmp_path / "cache"))
    _CannedLLM.calls = 0
    return tmp_path / "cache"


def test_cheung_full_method_on_a_new_class_generates_its_prompts_once(tree, images, canned_llm, monkeypatch):
    from zsad import llm
    from zsad.api import Detector
    from zsad.prompts import read_class_prompts

    train, test = images
    det = Detector("cheung", **WEAVE)  # no committed class file holds "weave"
    gen = det.class_prompts_generated_
    path = det._given["class_prompts"][0]
    assert _CannedLLM.calls > 0 and path.parent == canned_llm / "prompts" / "llm_class"
    assert gen["classes"] == ["weave"] and gen["seed"] == 0 and gen["model_sha256"] == "c" * 64
    assert read_class_prompts(path, "weave") == {"normal": ["a smooth even weave texture."],
                                                 "abnormal": ["a weave texture with a dark blob stain."]}
    scores, maps, _ = _same_as_predict(det, "cheung", tree, test, class_prompts=str(path), **CLIP)
    assert maps is None and scores.shape == (4,) and ((0 <= scores) & (scores <= 1)).all()
    with pytest.raises(ValueError, match="scores whole images only"):
        det.anomaly_maps([test[0].path])
    prov = det.provenance()
    assert prov["class_prompts_generated"] == gen and prov["parameters"]["class_prompts"] == [str(path)]
    # the prompts are what the runner used: another prompt seed is another file and other scores
    monkeypatch.setattr(llm, "Generator", lambda *a, **k: pytest.fail("the LLM was loaded for a cached class"))
    again = Detector("cheung", **WEAVE)
    assert again._given["class_prompts"] == (path,)
    np.testing.assert_allclose(again.score([r.path for r in test]), scores, rtol=1e-6)
    fitted = again.fit(train)
    np.testing.assert_array_equal(fitted.predict([r.path for r in test]), (scores > fitted.threshold_).astype(int))
    # a committed class needs no generation; generation options are refused where nothing is generated
    assert Detector("cheung", **CLIP, class_name="bottle").class_prompts_generated_ is None
    with pytest.raises(ValueError, match="committed class prompts"):
        Detector("cheung", **CLIP, class_name="bottle", prompt_seed=1)
    with pytest.raises(ValueError, match="winclip reads no class prompts"):
        Detector("winclip", **CLIP, prompt_seed=1)
    with pytest.raises(ValueError, match="line breaks"):
        Detector("cheung", **CLIP, class_name="bottle\ncap")


def test_cheung_ablation_rows_through_the_detector(tree, images, canned_llm):
    from zsad.api import Detector

    _, test = images
    paths = [r.path for r in test]
    no_gen = Detector("cheung_no_prompt_generation", **WEAVE)
    assert no_gen.class_prompts_generated_ is None and _CannedLLM.calls == 0  # WinCLIP's prompts: no LLM
    _same_as_predict(no_gen, "cheung_no_prompt_generation", tree, test, **CLIP)
    no_det = Detector("cheung_no_object_detection", **WEAVE)
    assert no_det.class_prompts_generated_["classes"] == ["weave"]
    path = str(no_det._given["class_prompts"][0])
    _same_as_predict(no_det, "cheung_no_object_detection", tree, test, class_prompts=path, **CLIP)
    assert no_det.score(paths).shape == (4,)


def test_musc_scores_images_together_and_needs_enough_good_images(synth_root):
    # MuSc is transductive: the detector's scores of a batch equal predict's on the same class (its test images),
    # and its threshold comes from good images scored together, so too few of them are refused before any work
    from zsad import Detector
    from zsad.data import load_dataset

    recs = load_dataset("synthetic", synth_root, classes="weave", validate=False)
    train = [r.path for r in recs if r.split == "train"][:6]
    det = Detector("musc", **WEAVE)
    with pytest.raises(ValueError, match="musc scores images against each other.*2 are too few"):
        det.fit(train[:2])
    det.fit(train)
    assert det.threshold_ == max(det.reference_scores_) and "MuSc is transductive" in det.threshold_note_
    test = [r for r in recs if r.split == "test"]
    scores, _, _ = det.score_and_maps([r.path for r in test])
    pred = _predict("musc", synth_root, model="zsad-tiny-vit", eval_size=64)
    np.testing.assert_allclose(scores, pred["scores"], rtol=1e-6, atol=1e-7)
