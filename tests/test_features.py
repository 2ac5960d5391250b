"""zsad.features: CLIP + GEM tokens per (image, size), with and without the feature cache."""
import pytest
import torch
import torch.nn.functional as F

import zsad.features as features
from zsad.backbone import load_model
from zsad.cache import FeatureCache
from zsad.data import load_dataset
from zsad.features import TokenSet, extract_tokens, token_params

SIZES = (96, 128)  # small sizes (6x6 and 8x8 grids of the tiny ViT): fast on 2 cores


@pytest.fixture(scope="module")
def tiny():
    return load_model("zsad-tiny-vit", seed=0)


@pytest.fixture(scope="module")
def records(synth_root):
    test = [r for r in load_dataset("mvtec", synth_root, split="test") if r.cls == "weave"]
    return test[:3]


@pytest.fixture(scope="module")
def plain(tiny, records):
    return extract_tokens(tiny.model, records, SIZES, progress=False)


@pytest.fixture
def counter(monkeypatch):
    """Count encode_tokens calls and the (size, batch) of each."""
    calls = []
    real = features.encode_tokens

    def counting(model, pixels, **kw):
        calls.append((pixels.shape[-1], pixels.shape[0]))
        return real(model, pixels, **kw)

    monkeypatch.setattr(features, "encode_tokens", counting)
    return calls


def test_tokens_shapes_and_normalisation(plain, records):
    assert isinstance(plain, TokenSet) and len(plain) == 3 and plain.relpaths == [r.relpath for r in records]
    assert list(plain.clip) == list(SIZES) and list(plain.gem) == list(SIZES)
    for s in SIZES:
        g = s // 16
        for t in (plain.clip[s], plain.gem[s]):
            assert t.shape == (3, 1 + g * g, 32) and t.dtype == torch.float32
            assert torch.allclose(t.norm(dim=-1), torch.ones(()), atol=1e-5)
    assert plain.stream("gem") is plain.gem
    with pytest.raises(ValueError, match="clip' or 'gem"):
        plain.stream("windows")


def test_loaded_model_and_module_give_the_same_tokens(tiny, records, plain):
    again = extract_tokens(tiny, records, SIZES, progress=False)  # the LoadedModel itself is accepted
    for s in SIZES:
        assert torch.equal(again.clip[s], plain.clip[s]) and torch.equal(again.gem[s], plain.gem[s])


def test_cached_tokens_are_bit_identical_and_second_call_runs_no_model(tiny, records, plain, tmp_path, counter):
    cache = FeatureCache(tmp_path)
    cold = extract_tokens(tiny, records, SIZES, progress=False, cache=cache)
    assert sorted(counter) == [(96, 3), (128, 3)]  # misses batched as without a cache
    counter.clear()
    warm = extract_tokens(tiny, records, list(reversed(SIZES)) + [96], progress=False, cache=cache)
    assert counter == []
    for out in (cold, warm):
        assert list(out.clip) == list(SIZES) and out.relpaths == plain.relpaths
        for s in SIZES:
            assert out.clip[s].dtype == torch.float32
            assert torch.equal(out.clip[s], plain.clip[s]) and torch.equal(out.gem[s], plain.gem[s])
    assert cache.stats["tokens"] == {"misses": 6, "stored": 6, "hits": 6}
    assert cache.info()["kinds"]["tokens"]["entries"] == 6  # one file per (image, size), both streams inside


def test_only_missing_sizes_and_images_are_computed(tiny, records, plain, tmp_path, counter):
    cache = FeatureCache(tmp_path)
    extract_tokens(tiny, records[:2], [96], progress=False, cache=cache)
    counter.clear()
    out = extract_tokens(tiny, records, SIZES, progress=False, cache=cache)
    # 128 px misses all three images, 96 px only the third: two groups, each batched
    assert sorted(counter) == [(96, 1), (128, 3)]
    assert torch.equal(out.clip[128], plain.clip[128]) and torch.equal(out.gem[128], plain.gem[128])
    assert torch.equal(out.clip[96][:2], plain.clip[96][:2])
    # the third image was encoded in a batch of one: equal up to BLAS blocking
    assert torch.allclose(out.clip[96], plain.clip[96], atol=1e-5)
    assert torch.allclose(out.gem[96], plain.gem[96], atol=1e-5)


def test_duplicate_images_share_one_entry(tiny, records, tmp_path, counter):
    cache = FeatureCache(tmp_path)
    twice = [records[0], records[1], records[0]]
    out = extract_tokens(tiny, twice, [96], progress=False, cache=cache)
    assert counter == [(96, 2)] and cache.stats["tokens"]["stored"] == 2
    assert torch.equal(out.gem[96][0], out.gem[96][2]) and out.relpaths == [r.relpath for r in twice]


def test_token_params_name_what_shapes_the_tokens():
    p = token_params(240)
    assert p["size"] == 240 and p["streams"] == ["clip", "gem"] and len(p["mean"]) == 3 and p["gem_depth"] == 7
    assert token_params(448) != p


def test_bf16_autocast_returns_float32_close_to_fp32_and_is_cached_apart(tiny, records, plain, tmp_path, counter):
    out = extract_tokens(tiny, records, SIZES, progress=False, autocast="bf16")
    for s in SIZES:
        for ours, ref in ((out.clip[s], plain.clip[s]), (out.gem[s], plain.gem[s])):
            assert ours.dtype == torch.float32 and ours.shape == ref.shape
            assert torch.allclose(ours.norm(dim=-1), torch.ones(()), atol=1e-5)  # normalised after the cast
            diff = (ours - ref).abs().max().item()  # measured: 0.0054-0.0070 (max 0.0070), min token cosine 0.99991
            assert 0 < diff < 0.02 and F.cosine_similarity(ours, ref, dim=-1).min() > 0.999
    # cached under its own key: an fp32 entry never answers a bf16 request, nor the other way round
    cache = FeatureCache(tmp_path)
    extract_tokens(tiny, records, SIZES, progress=False, cache=cache)
    counter.clear()
    cold = extract_tokens(tiny, records, SIZES, progress=False, cache=cache, autocast="bf16")
    assert sorted(counter) == [(96, 3), (128, 3)]
    assert cache.info()["kinds"]["tokens"]["entries"] == 12
    counter.clear()
    warm = extract_tokens(tiny, records, SIZES, progress=False, cache=cache, autocast="bf16")
    fp32 = extract_tokens(tiny, records, SIZES, progress=False, cache=cache)
    assert counter == []
    for s in SIZES:
        assert torch.equal(cold.gem[s], out.gem[s]) and torch.equal(warm.gem[s], out.gem[s])
        assert torch.equal(fp32.gem[s], plain.gem[s]) and torch.equal(fp32.clip[s], plain.clip[s])
    assert token_params(96, "bf16") != token_params(96) and token_params(96)["autocast"] is None


def test_autocast_values_are_checked(tiny, records):
    with pytest.raises(ValueError, match="CUDA"):
        extract_tokens(tiny, records[:1], [96], progress=False, autocast="fp16")  # the model is on the CPU
    with pytest.raises(ValueError, match="autocast must be"):
        extract_tokens(tiny, records[:1], [96], progress=False, autocast="bfloat16")


# ------------------------------------------------------------------------------- intermediate layers (MuSc)


@pytest.fixture
def layer_counter(monkeypatch):
    """Count the tower passes of extract_layers (encode_tokens_and_layers calls) and their batch sizes."""
    calls = []
    real = features.encode_tokens_and_layers

    def counting(model, pixels, layers, **kw):
        calls.append(pixels.shape[0])
        return real(model, pixels, layers, **kw)

    monkeypatch.setattr(features, "encode_tokens_and_layers", counting)
    return calls


def test_layers_come_with_the_same_streams_from_one_cached_pass(tiny, records, plain, tmp_path, layer_counter,
                                                                counter):
    from zsad.features import extract_layers, layer_params

    cache = FeatureCache(tmp_path)
    tokens, taps = extract_layers(tiny, records, 96, (2, 11), progress=False, cache=cache)
    assert layer_counter == [3] and counter == []  # one pass of the tower for both streams and the layers
    assert torch.equal(tokens.clip[96], plain.clip[96]) and torch.equal(tokens.gem[96], plain.gem[96])
    assert taps[2].shape == (3, 1 + 6 * 6, 64)
    # the same pass filled the ordinary tokens entries under their unchanged key: extract_tokens reads them back
    again = extract_tokens(tiny, records, (96,), progress=False, cache=cache)
    assert counter == [] and torch.equal(again.clip[96], plain.clip[96])
    tokens2, taps2 = extract_layers(tiny, records, 96, (2, 11), progress=False, cache=cache)
    assert layer_counter == [3] and torch.equal(taps2[11], taps[11])  # read back bit for bit, no pass
    # other layers are another entry; the ordinary tokens hit, the pass still runs once for the new layers
    _, taps3 = extract_layers(tiny, records, 96, (5,), progress=False, cache=cache)
    assert layer_counter == [3, 3] and taps3[5].shape == (3, 37, 64)
    assert layer_params(96, (2, 11))["streams"] == ["layer2", "layer11"]
    assert {k: v for k, v in layer_params(96, (2,)).items() if k not in ("streams", "layers", "normalise",
                                                                          "output")} == \
        {k: v for k, v in token_params(96).items() if k not in ("streams", "normalise")}
