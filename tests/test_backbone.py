import os

import pytest
import torch

from zsad.backbone import CheckpointError, file_sha256, load_model

TINY = "zsad-tiny-vit"


def _params(m):
    return torch.cat([p.detach().flatten() for p in m.model.parameters()])


def test_random_init_is_seeded_and_marked():
    a, b, c = load_model(TINY, seed=0), load_model(TINY, seed=0), load_model(TINY, seed=1)
    assert torch.equal(_params(a), _params(b))
    assert not torch.equal(_params(a), _params(c))
    assert a.is_random and a.sha256 == "random" and a.checkpoint is None
    assert "RANDOM WEIGHTS" in a.weights_label
    assert a.provenance()["random_weights"] is True
    assert not a.model.training


def test_random_init_leaves_global_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    load_model(TINY, seed=5)
    assert torch.equal(torch.rand(3), expected)


def test_checkpoint_round_trip(tmp_path):
    src = load_model(TINY, seed=3)
    path = tmp_path / "tiny.pt"
    torch.save(src.model.state_dict(), path)
    loaded = load_model(TINY, checkpoint=path, seed=0)
    assert torch.equal(_params(loaded), _params(src))
    assert not loaded.is_random
    assert loaded.sha256 == file_sha256(path) and len(loaded.sha256) == 64
    assert loaded.checkpoint == str(path.resolve())
    assert "tiny.pt" in loaded.weights_label and "RANDOM" not in loaded.weights_label


def test_checkpoint_with_state_dict_key_and_module_prefix(tmp_path):
    src = load_model(TINY, seed=4)
    path = tmp_path / "wrapped.pt"
    torch.save({"state_dict": {"module." + k: v for k, v in src.model.state_dict().items()}}, path)
    assert torch.equal(_params(load_model(TINY, checkpoint=path)), _params(src))


def test_missing_checkpoint_names_file(tmp_path):
    with pytest.raises(CheckpointError, match="nope.pt: checkpoint file not found"):
        load_model(TINY, checkpoint=tmp_path / "nope.pt")


def test_corrupt_checkpoint_names_file(tmp_path):
    path = tmp_path / "corrupt.pt"
    path.write_bytes(b"this is not a checkpoint" * 10)
    with pytest.raises(CheckpointError, match="corrupt.pt: cannot be read"):
        load_model(TINY, checkpoint=path)


def test_truncated_checkpoint_names_file(tmp_path):
    path = tmp_path / "cut.pt"
    torch.save(load_model(TINY).model.state_dict(), path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="cut.pt"):
        load_model(TINY, checkpoint=path)


def test_wrong_architecture_names_file(tmp_path):
    state = load_model(TINY).model.state_dict()
    state["visual.proj"] = torch.zeros(8, 8)
    del state["logit_scale"]
    path = tmp_path / "other.pt"
    torch.save(state, path)
    with pytest.raises(CheckpointError, match=r"other.pt: does not fit architecture zsad-tiny-vit"):
        load_model(TINY, checkpoint=path)


def test_unknown_model_name():
    with pytest.raises(ValueError, match="unknown model 'ViT-Nope'"):
        load_model("ViT-Nope")


def test_offline_mode_is_set():
    assert os.environ["HF_HUB_OFFLINE"] == "1"


def test_tokenizer_is_local():
    tok = load_model(TINY).tokenizer
    ids = tok(["a photo of a damaged bottle."])
    assert ids.shape == (1, 77) and int(ids[0, 0]) == 49406  # start-of-text token of the CLIP BPE vocabulary


@pytest.mark.slow
def test_paper_architecture_builds_at_random():
    m = load_model("ViT-B-16-plus-240", seed=0)
    assert m.model.visual.transformer.width == 896 and len(m.model.visual.transformer.resblocks) == 12
    assert m.model.visual.proj.shape == (896, 640)
