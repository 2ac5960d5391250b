"""zsad.cache: content keys, safetensors entries, corruption, concurrent writers, the three extraction paths, CLI."""
import dataclasses
import hashlib
import json
import multiprocessing
import os
import pickle
import shutil
import threading
import types
import warnings

import numpy as np
import pytest
import torch
from safetensors import safe_open

import zsad.cache as zc
import zsad.cnn as cnn_mod
import zsad.features as features
import zsad.text as text_mod
import zsad.windows as windows_mod
from zsad import atomic
from zsad.backbone import load_model
from zsad.cache import CacheWarning, FeatureCache, encode_prompts_cached, model_identity
from zsad.cnn import extract_patch_features, load_wide_resnet50
from zsad.data import load_dataset
from zsad.features import extract_tokens
from zsad.windows import extract_window_tokens

CNN_SIZE = 64  # 8x8 grid of layer2: the random WRN50 runs in a fraction of a second per image
WIN_SIZE = 128  # 8x8 grid of the tiny ViT


@pytest.fixture(scope="module")
def tiny():
    return load_model("zsad-tiny-vit", seed=0)


@pytest.fixture(scope="module")
def wrn():
    return load_wide_resnet50(seed=0)


@pytest.fixture(scope="module")
def records(synth_root):
    test = [r for r in load_dataset("mvtec", synth_root, split="test") if r.cls == "grain"]
    return test[:2]


@pytest.fixture(scope="module")
def plain_cnn(wrn, records):
    return extract_patch_features(wrn, records, size=CNN_SIZE, progress=False)


@pytest.fixture(scope="module")
def plain_windows(tiny, records):
    return extract_window_tokens(tiny.model, records, size=WIN_SIZE, progress=False)


def _count(monkeypatch, module, name):
    """Replace module.name by a wrapper that records the batch size of each call."""
    calls = []
    real = getattr(module, name)

    def counting(model, pixels, *args, **kw):
        calls.append(pixels.shape[0])
        return real(model, pixels, *args, **kw)

    monkeypatch.setattr(module, name, counting)
    return calls


def _entry_files(root, kind):
    return sorted((root / kind).glob("??/*.safetensors"))


# ------------------------------------------------------------------------------------------ keys and layout


def test_root_is_project_cache_or_env(monkeypatch, tmp_path):
    from zsad.config import PROJECT_ROOT

    monkeypatch.delenv("ZSAD_CACHE", raising=False)
    assert zc.cache_root() == PROJECT_ROOT / "cache" and FeatureCache().root == PROJECT_ROOT / "cache"
    monkeypatch.setenv("ZSAD_CACHE", str(tmp_path / "elsewhere"))
    assert FeatureCache().root == tmp_path / "elsewhere"
    assert FeatureCache(tmp_path / "given").root == tmp_path / "given"


def test_key_document_composition_and_file_layout(wrn, records, tmp_path, plain_cnn):
    cache = FeatureCache(tmp_path)
    extract_patch_features(wrn, records[:1], size=CNN_SIZE, progress=False, cache=cache)
    (path,) = _entry_files(tmp_path, "cnn")
    assert path.parent.name == path.stem[:2] and path.parent.parent.name == "cnn" and len(path.stem) == 64
    with safe_open(str(path), "pt") as f:  # a plain safetensors file
        meta = f.metadata()
        assert set(f.keys()) == {"features", "grid"}
        # one image alone vs in a batch of two: equal up to BLAS blocking
        assert torch.allclose(f.get_tensor("features"), plain_cnn[0][0], atol=1e-5)
    doc = json.loads(meta["key"])
    assert hashlib.sha256(meta["key"].encode()).hexdigest() == path.stem
    assert set(doc) == {"format", "kind", "model", "input", "params", "storage", "code", "software"}
    assert doc["format"] == zc.FORMAT_VERSION and doc["kind"] == "cnn" and doc["storage"] == "float32"
    assert doc["model"] == {"arch": "wide_resnet50_2", "weights": "random", "seed": 0, "dtype": "float32"}
    assert doc["input"] == hashlib.sha256(records[0].path.read_bytes()).hexdigest()
    assert doc["params"]["size"] == CNN_SIZE and doc["params"]["layers"] == ["layer2", "layer3"]
    assert doc["params"]["dim"] == 1024 and doc["params"]["mean"] == [0.485, 0.456, 0.406]
    assert set(doc["software"]) >= {"torch", "open-clip-torch"} and len(doc["code"]) == 64


def test_model_identity(tiny, wrn):
    assert model_identity(tiny) == {"arch": "zsad-tiny-vit", "weights": "random", "seed": 0, "dtype": "float32"}
    fake = dataclasses.replace(tiny, checkpoint="/w.pt", sha256="ab" * 32, seed=5)
    assert model_identity(fake) == {"arch": "zsad-tiny-vit", "weights": "ab" * 32, "seed": None, "dtype": "float32"}
    bare = model_identity(tiny.model)  # no provenance: hash of every weight
    assert bare["weights"].startswith("state:") and bare == model_identity(tiny.model)
    other = load_model("zsad-tiny-vit", seed=1)
    assert model_identity(other.model) != bare and model_identity(other) != model_identity(tiny)


def test_changed_inputs_change_the_key_and_recompute(tiny, records, tmp_path, monkeypatch):
    calls = _count(monkeypatch, features, "encode_tokens")
    cache = FeatureCache(tmp_path / "c")
    img = tmp_path / "img.png"
    shutil.copyfile(records[0].path, img)
    rec = types.SimpleNamespace(path=img, relpath="img.png")

    def run(model=tiny, size=96, c=cache):
        calls.clear()
        out = extract_tokens(model, [rec], [size], progress=False, cache=c)
        return out.gem[size], len(calls)

    first, n = run()
    assert n == 1 and run()[1] == 0  # stored, then served
    # the image bytes change (a new file at the same path): recomputed, and the new features are the new image's
    tmp = tmp_path / "new.png"
    shutil.copyfile(records[1].path, tmp)
    os.replace(tmp, img)
    second, n = run()
    assert n == 1 and not torch.equal(first, second)
    assert torch.equal(second, extract_tokens(tiny, records[1:2], [96], progress=False).gem[96])
    assert run()[1] == 0
    assert run(size=128)[1] == 1  # another size
    assert run(model=load_model("zsad-tiny-vit", seed=1))[1] == 1  # another init seed
    # same architecture and seed but a checkpoint with another sha256: another model
    assert run(model=dataclasses.replace(tiny, checkpoint="/w.pt", sha256="cd" * 32))[1] == 1
    assert run(c=FeatureCache(tmp_path / "c", float16=True))[1] == 1  # storage dtype is part of the key
    monkeypatch.setattr(zc, "code_fingerprint", lambda kind: "edited-code")  # the feature code changed
    assert run()[1] == 1
    assert len(_entry_files(tmp_path / "c", "tokens")) == 7


# ------------------------------------------------------------------------------------ the extraction paths


def test_cnn_cached_is_bit_identical_and_warm_runs_no_model(wrn, records, plain_cnn, tmp_path, monkeypatch):
    calls = _count(monkeypatch, cnn_mod, "cnn_feature_maps")
    cache = FeatureCache(tmp_path)
    cold = extract_patch_features(wrn, records, size=CNN_SIZE, progress=False, cache=cache)
    assert calls == [2]
    calls.clear()
    warm = extract_patch_features(wrn, [r.path for r in records], size=CNN_SIZE, progress=False, cache=cache)
    assert calls == []
    for feats, grid in (cold, warm):
        assert feats.dtype == torch.float32 and torch.equal(feats, plain_cnn[0]) and grid == plain_cnn[1] == (8, 8)
        assert isinstance(grid, tuple)
    # a partial hit computes only the new image; other layers/dim are other entries
    calls.clear()
    extract_patch_features(wrn, records[:1], size=CNN_SIZE, layers=("layer2",), dim=512, progress=False,
                           cache=cache)
    assert calls == [1]
    # pixel tensors have no file to key on: they bypass the cache
    calls.clear()
    pix = torch.zeros(1, 3, CNN_SIZE, CNN_SIZE)
    extract_patch_features(wrn, pix, progress=False, cache=cache)
    extract_patch_features(wrn, pix, progress=False, cache=cache)
    assert calls == [1, 1]


def test_windows_cached_is_bit_identical_and_warm_runs_no_model(tiny, records, plain_windows, tmp_path,
                                                                 monkeypatch):
    calls = _count(monkeypatch, windows_mod, "encode_all")
    cache = FeatureCache(tmp_path)
    cold = extract_window_tokens(tiny, records, size=WIN_SIZE, progress=False, cache=cache)
    assert calls == [2]
    calls.clear()
    warm = extract_window_tokens(tiny, records, size=WIN_SIZE, progress=False, cache=cache)
    assert calls == []
    for w in (cold, warm):
        assert w.relpaths == plain_windows.relpaths and w.grid == plain_windows.grid == (8, 8)
        assert (w.size, w.stride, w.patch_stream) == (WIN_SIZE, 1, "ln_post")
        assert torch.equal(w.cls, plain_windows.cls) and torch.equal(w.patch, plain_windows.patch)
        assert list(w.windows) == list(plain_windows.windows) == [2, 3]
        assert all(torch.equal(w.windows[s], plain_windows.windows[s]) for s in w.windows)
    # another patch stream or stride is another entry
    extract_window_tokens(tiny, records[:1], size=WIN_SIZE, patch_stream="proj", progress=False, cache=cache)
    extract_window_tokens(tiny, records[:1], size=WIN_SIZE, stride=2, progress=False, cache=cache)
    assert calls == [1, 1] and cache.info()["kinds"]["windows"]["entries"] == 4


def test_float16_storage_is_half_the_bytes_and_stable(wrn, records, plain_cnn, tmp_path):
    c32, c16 = FeatureCache(tmp_path / "a"), FeatureCache(tmp_path / "b", float16=True)
    extract_patch_features(wrn, records, size=CNN_SIZE, progress=False, cache=c32)
    cold, _ = extract_patch_features(wrn, records, size=CNN_SIZE, progress=False, cache=c16)
    warm, _ = extract_patch_features(wrn, records, size=CNN_SIZE, progress=False, cache=c16)
    assert cold.dtype == warm.dtype == torch.float32 and torch.equal(cold, warm)
    assert torch.equal(cold, plain_cnn[0].half().float()) and not torch.equal(cold, plain_cnn[0])
    assert c16.info()["bytes"] < 0.6 * c32.info()["bytes"]


def test_text_embeddings_are_cached_by_model_and_prompt_content(tiny, tmp_path, monkeypatch):
    prompts = ["a photo of a flawless object", "a photo of a damaged object"]
    direct = text_mod.encode_prompts(tiny.model, tiny.tokenizer, prompts)
    calls = []
    real = text_mod.encode_prompts
    monkeypatch.setattr(text_mod, "encode_prompts", lambda *a, **k: calls.append(1) or real(*a, **k))
    cache = FeatureCache(tmp_path)
    assert torch.equal(encode_prompts_cached(tiny, prompts, cache=cache), direct) and calls == [1]
    assert torch.equal(encode_prompts_cached(tiny, prompts, cache=cache), direct) and calls == [1]
    raw = encode_prompts_cached(tiny, prompts, cache=cache, wrapper=None, normalise=False)
    assert torch.equal(raw, real(tiny.model, tiny.tokenizer, prompts, wrapper=None, normalise=False))
    # one entry per (prompt, wrapper, normalise): 2 + 2 so far; a list of known and new prompts encodes only the new
    assert calls == [1, 1] and cache.info()["kinds"]["text"]["entries"] == 4
    mixed = prompts[:1] + ["a photo of a scratched object"] + prompts[:1]
    out = encode_prompts_cached(tiny, mixed, cache=cache)
    assert calls == [1, 1, 1] and cache.info()["kinds"]["text"]["entries"] == 5
    assert torch.allclose(out, real(tiny.model, tiny.tokenizer, mixed), atol=1e-6) and torch.equal(out[0], out[2])


# ---------------------------------------------------------------------------------- corruption, concurrency


def _truncate(p):
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    assert p.stat().st_size > 8


def _garbage(p):
    p.write_bytes(os.urandom(p.stat().st_size))


def _flip_data_byte(p):
    data = bytearray(p.read_bytes())
    data[-5] ^= 0x40  # inside the tensor data: only the stored checksum can tell
    p.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", [_truncate, _garbage, _flip_data_byte, "foreign"])
def test_corrupt_entry_is_detected_and_recomputed(wrn, records, plain_cnn, tmp_path, monkeypatch, damage):
    cache = FeatureCache(tmp_path)
    extract_patch_features(wrn, records[:2], size=CNN_SIZE, progress=False, cache=cache)
    by_input = {_stored_key(p)["input"]: p for p in _entry_files(tmp_path, "cnn")}
    path = by_input.pop(cache.digest(records[0]))
    if damage == "foreign":  # a valid file of another image under this name
        (other,) = by_input.values()
        shutil.copyfile(other, path)
    else:
        damage(path)
    calls = _count(monkeypatch, cnn_mod, "cnn_feature_maps")
    with pytest.warns(CacheWarning, match=path.name):
        feats, _ = extract_patch_features(wrn, records[:2], size=CNN_SIZE, progress=False, cache=cache)
    assert calls == [1] and cache.stats["cnn"]["corrupt"] == 1
    assert torch.allclose(feats, plain_cnn[0][:2], atol=1e-5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # repaired: read back without a warning
        again, _ = extract_patch_features(wrn, records[:2], size=CNN_SIZE, progress=False, cache=cache)
    assert calls == [1] and torch.equal(again, feats)


def _stored_key(path):
    with safe_open(str(path), "pt") as f:
        return json.loads(f.metadata()["key"])


def _entry_bytes(cache, doc, value):
    """A complete entry file whose features are all ``value`` (what a writer of that value would store)."""
    from safetensors.torch import save

    tensors = {"features": torch.full((256, 256), value), "grid": torch.tensor([16, 16])}
    checksums = zc._canonical({k: zc._tensor_digest(t) for k, t in tensors.items()})
    return save(tensors, metadata={"key": doc, "checksums": checksums})


def _write_many(path, data, n):  # runs in a forked process: plain file operations, no torch
    for _ in range(n):
        atomic.write_bytes(path, data)


def test_concurrent_writers_leave_a_valid_entry(tmp_path):
    cache = FeatureCache(tmp_path)
    doc = cache.key_document("cnn", {"arch": "test"}, "same-input", {"p": 1})
    path = cache.path_of("cnn", FeatureCache.key_of(doc))
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_write_many, args=(path, _entry_bytes(cache, doc, v), 200)) for v in (1.0, 2.0)]
    for p in procs:
        p.start()
    seen, stop = set(), threading.Event()

    def threaded_writer():  # a third writer, in this process, through the public save()
        while not stop.is_set():
            cache.save("cnn", doc, {"features": torch.full((256, 256), 3.0), "grid": torch.tensor([16, 16])})

    t = threading.Thread(target=threaded_writer)
    t.start()
    try:
        while any(p.is_alive() for p in procs):  # read while they write: never a partial or mixed file
            got = cache.load("cnn", doc, expect=("features", "grid"))
            if got is not None:
                vals = got["features"].unique()
                assert len(vals) == 1
                seen.add(float(vals))
    finally:
        stop.set()
        t.join()
        for p in procs:
            p.join()
    assert [p.exitcode for p in procs] == [0, 0]
    assert cache.stats["cnn"]["corrupt"] == 0 and seen and seen <= {1.0, 2.0, 3.0}
    final = cache.load("cnn", doc, expect=("features", "grid"))
    assert final is not None and float(final["features"][0, 0]) in {1.0, 2.0, 3.0}
    assert len(_entry_files(tmp_path, "cnn")) == 1 and cache.info()["kinds"]["cnn"]["temp_files"] == 0


def test_failed_write_warns_and_still_returns_the_features(wrn, records, plain_cnn, tmp_path, monkeypatch):
    def disk_full(path, data):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(atomic, "write_bytes", disk_full)
    cache = FeatureCache(tmp_path)
    with pytest.warns(CacheWarning, match="cannot write"):
        feats, grid = extract_patch_features(wrn, records, size=CNN_SIZE, progress=False, cache=cache)
    assert torch.equal(feats, plain_cnn[0]) and grid == (8, 8)
    assert cache.stats["cnn"]["write_errors"] == 2 and cache.info()["entries"] == 0


def test_no_pickle_on_write_or_read(wrn, records, plain_cnn, tmp_path, monkeypatch):
    def forbidden(*a, **k):
        raise AssertionError("pickle used")

    for mod, name in ((pickle, "load"), (pickle, "loads"), (pickle, "dump"), (pickle, "dumps"), (torch, "load"),
                      (torch, "save"), (np, "load"), (np, "save")):
        monkeypatch.setattr(mod, name, forbidden)
    cache = FeatureCache(tmp_path)
    extract_patch_features(wrn, records[:2], size=CNN_SIZE, progress=False, cache=cache)
    feats, _ = extract_patch_features(wrn, records[:2], size=CNN_SIZE, progress=False, cache=cache)
    assert torch.equal(feats, plain_cnn[0][:2]) and cache.stats["cnn"]["hits"] == 2
    for p in _entry_files(tmp_path, "cnn"):
        header = json.loads(p.read_bytes()[8:8 + int.from_bytes(p.read_bytes()[:8], "little")])
        assert {k for k in header if k != "__metadata__"} == {"features", "grid"}


# ------------------------------------------------------------------------------------------------- CLI


def _cli(argv):
    from zsad.cli import build_parser

    args = build_parser().parse_args(argv)
    return args.func(args)


def test_cache_info_and_clear(wrn, tiny, records, tmp_path, capsys, monkeypatch):
    cache = FeatureCache(tmp_path)
    extract_patch_features(wrn, records[:2], size=CNN_SIZE, progress=False, cache=cache)
    extract_tokens(tiny, records[:1], [96], progress=False, cache=cache)
    (tmp_path / "cnn" / "ab").mkdir(exist_ok=True)
    (tmp_path / "cnn" / "ab" / "x.safetensors.tmp-123").write_bytes(b"partial")  # a crashed writer's leftover
    (tmp_path / "notes.txt").write_text("not ours")
    info = cache.info()
    assert info["root"] == str(tmp_path) and info["entries"] == 3
    assert info["kinds"]["cnn"]["entries"] == 2 and info["kinds"]["tokens"]["entries"] == 1
    assert info["kinds"]["cnn"]["temp_files"] == 1
    assert info["bytes"] == sum(p.stat().st_size for p in tmp_path.rglob("*.safetensors"))

    monkeypatch.setenv("ZSAD_CACHE", str(tmp_path))  # the default root
    assert _cli(["cache", "info"]) == 0
    out = capsys.readouterr().out
    assert f"cache root: {tmp_path}" in out
    assert any(line.split()[:3] == ["cnn", "2", str(info["kinds"]["cnn"]["bytes"])] for line in out.splitlines())
    assert "1 temporary files" in out

    assert _cli(["cache", "clear", "--kind", "cnn", "--root", str(tmp_path)]) == 0
    assert "removed 2 entries" in capsys.readouterr().out
    after = cache.info()
    assert after["kinds"]["cnn"] == {"entries": 0, "bytes": 0, "temp_files": 0}
    assert after["kinds"]["tokens"]["entries"] == 1 and not (tmp_path / "cnn").exists()
    assert _cli(["cache", "clear"]) == 0
    assert cache.info()["entries"] == 0 and (tmp_path / "notes.txt").exists()
    with pytest.raises(SystemExit):
        _cli(["cache", "clear", "--kind", "nonsense"])
    with pytest.raises(ValueError, match="unknown cache kind"):
        cache.clear("nonsense")
