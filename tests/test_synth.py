"""The synthetic generator replaces only a tree it wrote itself."""
import pytest

from zsad.data import make_synthetic
from zsad.data.synth import is_synthetic_tree

KW = dict(classes=("grain",), n_train=1, n_test_good=1, n_test_defect=1, size=32)


def test_synth_never_replaces_a_folder_it_did_not_write(tmp_path):
    data = tmp_path / "my_dataset"
    (data / "bottle").mkdir(parents=True)
    (data / "bottle" / "000.png").write_bytes(b"mine")
    with pytest.raises(FileExistsError, match="not a synthetic tree written by zsad.*overwrite or not"):
        make_synthetic(data, overwrite=True, **KW)
    assert (data / "bottle" / "000.png").read_bytes() == b"mine"
    tree = make_synthetic(tmp_path / "tree", **KW)
    assert is_synthetic_tree(tree)
    with pytest.raises(FileExistsError, match="pass --overwrite"):
        make_synthetic(tree, **KW)
    make_synthetic(tree, overwrite=True, seed=1, **KW)
    assert "seed: 1" in (tree / "README.txt").read_text()
    (tree / "grain" / "notes.txt").write_text("mine")  # a file the generator did not write
    assert not is_synthetic_tree(tree)
    with pytest.raises(FileExistsError, match="not a synthetic tree"):
        make_synthetic(tree, overwrite=True, **KW)
    assert (tree / "grain" / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["my_dataset", "tree"]  # no temporary folder left
