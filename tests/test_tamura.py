"""Known-answer tests of zsad.methods.tamura (Tamura 2023) and its study runner zsad.runners.

- the random-word generator: seeded, inserts exactly n words from the stated source, and deleting the recorded
  positions gives back the base prompt;
- the FFN: learns a linearly separable two-cluster toy set (accuracy 1.0), bit-identical weights for a seed,
  leaves the global RNG alone;
- AS aggregation: a hand-computed 3x3 grid, and the scorer plugged into WinCLIP's own zero-shot formula gives
  exactly :func:`zsad.methods.winclip.winclip`;
- the whole pipeline on the synthetic set with the tiny random CLIP (scores in [0, 1], maps 240x240, training
  in well under a few seconds), and through :func:`zsad.study.predict`.
"""
from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import replace

import numpy as np
import pytest
import torch

pytest.importorskip("open_clip")

from zsad.backbone import load_model  # noqa: E402
from zsad.methods.tamura import (  # noqa: E402
    TamuraConfig,
    aggregate_map,
    build_net,
    build_prompt_set,
    draw_words,
    excluded_words,
    ffn_probability,
    insert_words,
    remove_inserted,
    score_windows,
    train_ffn,
    vocabulary_words,
)
from zsad.methods.winclip import WinClipConfig, text_scores, winclip  # noqa: E402
from zsad.prompts import winclip_prompts  # noqa: E402
from zsad.runners import clear_memo, prepare_detector, tamura_class, tamura_config  # noqa: E402
from zsad.windows import WindowTokens, window_masks  # noqa: E402

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def loaded():
    return load_model("zsad-tiny-vit", seed=0)


@pytest.fixture(scope="module")
def vocab(loaded):
    return vocabulary_words(loaded.tokenizer, 3, 10, excluded_words())


# ---------------------------------------------------------------------------------------------- random words


def test_vocabulary_words_known_answer():
    fake = {"hello</w>": 0, "hel": 1, "ab</w>": 2, "abcdefghij</w>": 3, "abcdefghijk</w>": 4, "caf\u00e9</w>": 5,
            "x1y</w>": 6, "Dog</w>": 7, "damaged</w>": 8, "zebra</w>": 9, "lo</w>": 10}
    assert vocabulary_words(fake) == ("abcdefghij", "damaged", "hello", "zebra")
    assert vocabulary_words(fake, exclude=excluded_words()) == ("abcdefghij", "hello", "zebra")
    assert vocabulary_words(fake, 2, 5) == ("ab", "hello", "lo", "zebra")
    with pytest.raises(ValueError, match="no whole words"):
        vocabulary_words({"a</w>": 0})


def test_clip_vocabulary_is_alphabetic_whole_single_tokens(loaded, vocab):
    tok = loaded.tokenizer
    all_words = vocabulary_words(tok)
    assert len(all_words) == 30293  # open_clip's BPE: whole-word entries of 3-10 a-z letters
    assert set(vocab) == set(all_words) - excluded_words() and len(vocab) < len(all_words)
    assert {"damaged", "flawless", "defect", "perfect", "scratch", "without", "with"} <= excluded_words()
    assert all(re.fullmatch(r"[a-z]{3,10}", w) for w in vocab) and list(vocab) == sorted(vocab)
    sample = [vocab[i] for i in np.random.default_rng(0).choice(len(vocab), 300, replace=False)]
    assert all(len(tok.encode(w)) == 1 for w in sample)  # each is one BPE token on its own


def test_draw_words_is_seeded_and_uses_its_source(vocab):
    a = draw_words(np.random.default_rng(7), 5, "vocab", vocab)
    assert a == draw_words(np.random.default_rng(7), 5, "vocab", vocab)
    assert a != draw_words(np.random.default_rng(8), 5, "vocab", vocab)
    assert len(a) == 5 == len(set(a)) and set(a) <= set(vocab)
    letters = draw_words(np.random.default_rng(7), 50, "letters", min_len=2, max_len=4)
    assert len(letters) == 50 and all(re.fullmatch(r"[a-z]{2,4}", w) for w in letters)
    assert {len(w) for w in letters} == {2, 3, 4}
    assert draw_words(np.random.default_rng(0), 0, "vocab", None) == []
    with pytest.raises(ValueError, match="at least 3 words"):
        draw_words(np.random.default_rng(0), 3, "vocab", ["one", "two"])


@pytest.mark.parametrize("mode", ["random", "append", "prepend"])
def test_insert_words_inserts_exactly_n_and_is_reversible(mode):
    base = "a photo of the damaged object"
    rng = np.random.default_rng(3)
    for n in range(0, 7):
        words = [f"w{i}x" for i in range(n)]
        text, pos = insert_words(base, words, rng, mode)
        split = text.split()
        assert len(split) == 6 + n and len(pos) == n
        assert [split[p] for p in pos] == words  # positions[i] is where words[i] went
        assert remove_inserted(text, pos) == base
    assert insert_words(base, ["x", "y"], None, "append")[0] == base + " x y"
    assert insert_words(base, ["x", "y"], None, "prepend")[0] == "x y " + base
    # a random word equal to a prompt word is removed by position, not by value
    text, pos = insert_words("the object", ["object"], np.random.default_rng(0), mode)
    assert text.split().count("object") == 2 and remove_inserted(text, pos) == "the object"


def test_insert_positions_cover_every_gap():
    rng = np.random.default_rng(0)
    seen = Counter(insert_words("a b c", ["X"], rng, "random")[1][0] for _ in range(400))
    assert sorted(seen) == [0, 1, 2, 3] and min(seen.values()) > 60  # uniform over the 4 gaps


def test_prompt_set_known_answers(vocab):
    cfg = TamuraConfig(n_random_words=3, samples_per_side=400, seed=5)
    ps = build_prompt_set(cfg, "object", vocab)
    base = winclip_prompts("object")
    assert len(ps) == 800 and ps.labels.tolist() == [0] * 400 + [1] * 400
    for i in range(len(ps)):
        side = "normal" if ps.labels[i] == 0 else "abnormal"
        assert ps.base[i] in base[side]
        assert len(ps.words[i]) == 3 == len(set(ps.words[i])) and set(ps.words[i]) <= set(vocab)
        assert len(ps.texts[i].split()) == len(ps.base[i].split()) + 3
        assert remove_inserted(ps.texts[i], ps.positions[i]) == ps.base[i]
    assert not set(w for ws in ps.words for w in ws) & excluded_words()
    # base prompts cycled evenly: 400 normal over 154 prompts -> 2 or 3 each; 400 abnormal over 88 -> 4 or 5
    assert set(Counter(ps.base[:400]).values()) == {2, 3} and len(set(ps.base[:400])) == 154
    assert set(Counter(ps.base[400:]).values()) == {4, 5} and len(set(ps.base[400:])) == 88
    again = build_prompt_set(cfg, "object", vocab)
    assert again.texts == ps.texts and again.positions == ps.positions
    assert build_prompt_set(replace(cfg, seed=6), "object", vocab).texts != ps.texts


def test_prompt_set_without_random_words_is_the_base_ensemble(vocab):
    ps = build_prompt_set(TamuraConfig(n_random_words=0, samples_per_side=308), "metal nut")
    assert ps.texts == ps.base and all(p == () for p in ps.positions)
    assert Counter(ps.texts[:308]) == Counter({p: 2 for p in winclip_prompts("metal nut")["normal"]})
    texts, inverse = ps.unique()
    assert len(texts) == 154 + 88 and [texts[i] for i in inverse] == ps.texts
    letters = build_prompt_set(TamuraConfig(n_random_words=2, word_source="letters", samples_per_side=10), "object")
    assert all(len(w) == 2 and all(re.fullmatch(r"[a-z]{3,10}", x) for x in w) for w in letters.words)
    with pytest.raises(ValueError, match="needs a vocabulary"):
        build_prompt_set(TamuraConfig(), "object", None)


def test_config_validation():
    assert tamura_config({"scales": [2, 3]}).scales == (2, 3)
    for bad, msg in [({"object_word": "thing"}, "object_word"), ({"n_random_words": -1}, "n_random_words"),
                     ({"word_source": "dict"}, "word_source"), ({"insert_mode": "middle"}, "insert_mode"),
                     ({"word_min_len": 5, "word_max_len": 3}, "word_min_len"), ({"lr": 0}, "lr"),
                     ({"scales": [2, 2]}, "scales"), ({"wrapper": "no slot"}, "wrapper"),
                     ({"n_words": 3}, "bad Tamura option")]:
        with pytest.raises(ValueError, match=msg):
            tamura_config(bad)


# ------------------------------------------------------------------------------------------------------ FFN


def _two_clusters(n=200, d=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    centre = torch.zeros(d)
    centre[0] = 1.0
    x = torch.cat([centre + 0.3 * torch.randn(n, d, generator=g), -centre + 0.3 * torch.randn(n, d, generator=g)])
    y = np.array([0] * n + [1] * n)
    return x, y


def test_ffn_learns_separable_toy_problem_deterministically():
    x, y = _two_clusters()
    cfg = TamuraConfig(epochs=20, batch_size=32, seed=3)
    state_before = torch.random.get_rng_state()
    net, hist = train_ffn(x, y, cfg)
    assert torch.equal(torch.random.get_rng_state(), state_before)  # the global RNG is not touched
    assert hist["train_accuracy"] == 1.0 and len(hist["loss"]) == 20 and hist["steps"] == 20 * math.ceil(400 / 32)
    assert hist["loss"][-1] < 0.1 < hist["loss"][0]
    p = ffn_probability(net, x)
    assert p.dtype == torch.float64 and ((p > 0.5).numpy().astype(int) == y).all()
    net2, hist2 = train_ffn(x, y, cfg)
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), net2.state_dict().values()))
    assert hist2["loss"] == hist["loss"]
    torch.set_num_threads(2)  # the caller's thread count neither changes the weights nor is changed
    try:
        net_t2, _ = train_ffn(x, y, cfg)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(1)
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), net_t2.state_dict().values()))
    net3, _ = train_ffn(x, y, replace(cfg, seed=4))
    assert not torch.equal(net.layers[0].weight, net3.layers[0].weight)
    lin, hist_lin = train_ffn(x, y, replace(cfg, hidden=0, batch_size=0, epochs=200, lr=1e-2))
    assert hist_lin["train_accuracy"] == 1.0 and hist_lin["steps"] == 200
    assert torch.equal(build_net(16, 8, 1).layers[0].weight, build_net(16, 8, 1).layers[0].weight)


def test_ffn_rejects_bad_labels():
    with pytest.raises(ValueError, match="labels must be 0"):
        train_ffn(torch.zeros(4, 3), [0, 1, 2, 1], TamuraConfig(epochs=1))


# ------------------------------------------------------------------------------------------------ scoring


def test_aggregate_map_hand_computed():
    # 3x3 grid, 2x2 windows: 4 windows (top-left at 0, 1, 3, 4); centre patch 4 is in all of them
    a = torch.tensor([[0.5, 0.25, 1.0, 0.5]], dtype=torch.float64)
    m = aggregate_map(torch.tensor([0.2]), {2: a}, 3, include_image=False)[0]
    assert m[0, 0] == 0.5 and m[0, 2] == 0.25 and m[2, 0] == 1.0 and m[2, 2] == 0.5
    assert m[0, 1].item() == pytest.approx(2 / (1 / 0.5 + 1 / 0.25))
    assert m[1, 1].item() == pytest.approx(4 / (2 + 4 + 1 + 2))
    with_image = aggregate_map(torch.tensor([0.2]), {2: a}, 3)[0]
    assert with_image[0, 0].item() == pytest.approx(2 / (1 / 0.2 + 1 / 0.5))
    assert with_image[1, 1].item() == pytest.approx(2 / (5 + 9 / 4))


def _toy_windows(n=3, d=8, grid=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    masks = window_masks(grid, (2, 3))
    norm = torch.nn.functional.normalize
    return WindowTokens([f"img{i}" for i in range(n)], norm(torch.randn(n, d, generator=g), dim=-1),
                        {s: norm(torch.randn(n, m.shape[0], d, generator=g), dim=-1) for s, m in masks.items()},
                        norm(torch.randn(n, grid * grid, d, generator=g), dim=-1), (grid, grid))


def test_scoring_equals_winclip_zero_shot_with_winclips_scorer():
    tw = _toy_windows()
    proto = torch.nn.functional.normalize(torch.randn(2, 8, generator=torch.Generator().manual_seed(1)), dim=-1)
    ref = winclip(tw, proto, WinClipConfig())
    ours = score_windows(tw, lambda e: text_scores(e, proto, 0.07), TamuraConfig())
    assert np.array_equal(ours.scores, ref.scores) and np.array_equal(ours.maps, ref.maps)
    assert ours.maps.shape == (3, 240, 240)
    only_windows = score_windows(tw, lambda e: text_scores(e, proto, 0.07), TamuraConfig(map_includes_image=False))
    assert not np.array_equal(only_windows.maps, ref.maps)


# ------------------------------------------------------------------------------------------------- pipeline


@pytest.fixture(scope="module")
def weave_test(synth_root):
    from zsad.data import load_dataset

    return [r for r in load_dataset("mvtec", synth_root, classes=["weave"]) if r.split == "test"]


@pytest.fixture(scope="module")
def default_run(loaded, weave_test):
    clear_memo()
    return tamura_class(loaded, "weave", weave_test, ["ref"], {"options": {}}, False)


def test_pipeline_on_synthetic_set(default_run, weave_test):
    out = default_run
    n = len(weave_test)
    assert out.scores.shape == (n,) and out.maps.shape == (n, 240, 240) and out.maps.dtype == np.float32
    assert np.isfinite(out.scores).all() and (0 <= out.scores).all() and (out.scores <= 1).all()
    assert (0 <= out.maps).all() and (out.maps <= 1).all()
    info = out.info
    assert info["references_ignored"] == 1 and info["object_word"] == "object"
    tr = info["training"]
    assert len(tr["loss"]) == 30 and tr["loss"][-1] < tr["loss"][0] and not tr["reused"]
    assert tr["seconds"] < 5.0  # 2000 samples x 30 epochs of a 32-128-1 FFN
    pr = info["prompts"]
    assert pr["n_samples"] == 2000 and pr["n_unique"] == 2000 and pr["longest_tokens"] <= 77
    assert all("object" in t for side in pr["examples"].values() for t in side)
    import json

    json.dumps(info)  # recordable as it is


def test_pipeline_reuses_training_and_honours_options(default_run, loaded, weave_test):
    again = tamura_class(loaded, "grain", weave_test[:4], [], {"options": {}}, False)
    assert again.info["training"]["reused"] and again.info["training"]["loss"] == default_run.info["training"]["loss"]
    np.testing.assert_allclose(again.scores, default_run.scores[:4], rtol=1e-6)  # image batches differ: 4 vs 8
    opts = {"object_word": "class", "n_random_words": 0, "samples_per_side": 200, "epochs": 5}
    cls_run = tamura_class(loaded, "metal_nut", weave_test[:2], [], {"options": opts}, False)
    assert cls_run.info["prompts"]["n_unique"] == 242 and cls_run.info["prompts"]["object_name"] == "metal nut"
    assert len(cls_run.info["training"]["loss"]) == 5
    assert ((0 <= cls_run.scores) & (cls_run.scores <= 1)).all()


def test_prompt_longer_than_the_context_is_refused(loaded):
    cfg = tamura_config({"n_random_words": 40, "word_source": "letters", "word_min_len": 10, "samples_per_side": 2})
    with pytest.raises(ValueError, match="more than the text context 77"):
        prepare_detector(loaded, cfg, "object")


def test_through_the_study(synth_root, monkeypatch):
    import zsad.study

    res = zsad.study.predict("tamura", "synthetic", synth_root, classes="weave", model="zsad-tiny-vit",
                             n_boot=0, max_images=6, progress=False,
                             options={"samples_per_side": 100, "epochs": 3})
    pred = res["predictions"]
    assert pred["maps"].shape == (6, 448, 448) and ((0 <= pred["scores"]) & (pred["scores"] <= 1)).all()
    assert {"auroc", "pauroc"} <= set(res["metrics"].metric)


def test_tamura_reads_the_windows_winclip_cached(synth_root, tmp_path):
    from zsad.cache import FeatureCache
    from zsad.study import predict

    args = dict(classes="weave", model="zsad-tiny-vit", n_boot=0, max_images=4, progress=False)
    predict("winclip", "synthetic", synth_root, cache=FeatureCache(tmp_path), **args)
    cache = FeatureCache(tmp_path)
    predict("tamura", "synthetic", synth_root, cache=cache, options={"samples_per_side": 50, "epochs": 1}, **args)
    assert cache.stats["windows"]["hits"] == 4 and cache.stats["windows"]["stored"] == 0
