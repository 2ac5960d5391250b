"""The synthetic generator replaces only a tree it wrote itself."""
import numpy as np
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


# ----------------------------------------------------------------------------------------- paper-scale trees

def test_paper_scale_counts_are_the_datasets():
    """The published totals: MVTec AD 15 classes, 3,629 train / 1,725 test (1,258 defective); VisA 12 classes, the
    1-class split's 8,659 train / 2,162 test (1,200 anomalous)."""
    from zsad.data.paper_scale import paper_scale_summary, scaled_counts

    mvtec = paper_scale_summary(scaled_counts("mvtec"))
    assert (mvtec["classes"], mvtec["train"], mvtec["test"], mvtec["test_defect"]) == (15, 3629, 1725, 1258)
    visa = paper_scale_summary(scaled_counts("visa"))
    assert (visa["classes"], visa["train"], visa["test"], visa["test_defect"]) == (12, 8659, 2162, 1200)
    small = scaled_counts("mvtec", 0.1, ["bottle", "toothbrush"])
    assert small == {"bottle": {"train": 21, "test_good": 2, "test_defect": 6, "size": (900, 900)},
                     "toothbrush": {"train": 6, "test_good": 1, "test_defect": 3, "size": (1024, 1024)}}
    assert scaled_counts("visa", 0.001, ["pcb3"])["pcb3"] == {"train": 1, "test_good": 1, "test_defect": 1,
                                                              "size": (1500, 1000)}
    with pytest.raises(ValueError, match="fraction must be"):
        scaled_counts("mvtec", 0)
    with pytest.raises(ValueError, match="not in mvtec"):
        scaled_counts("mvtec", 1, ["candle"])
    with pytest.raises(ValueError, match="dataset must be one of"):
        scaled_counts("mvtec_ad")


@pytest.mark.parametrize("dataset", ["mvtec", "visa"])
def test_paper_scale_tree_loads_with_the_real_loader(tmp_path, dataset):
    """A small tree (scaled counts, capped size) read by zsad's MVTec AD / VisA loader: every class, split and
    label count as generated, the aspect of the real images, a non-empty mask for every defect image."""
    from PIL import Image

    from zsad.data import load_dataset
    from zsad.data.paper_scale import make_paper_scale, scaled_counts

    classes = ["bottle", "metal_nut"] if dataset == "mvtec" else ["candle", "pcb1"]
    tree = make_paper_scale(tmp_path / dataset, dataset, fraction=0.02, classes=classes, max_side=48)
    records = load_dataset(dataset, tree)
    counts = scaled_counts(dataset, 0.02, classes)
    for cls in classes:
        mine = [r for r in records if r.cls == cls]
        got = (sum(r.split == "train" for r in mine), sum(r.split == "test" and r.label == 0 for r in mine),
               sum(r.split == "test" and r.label == 1 for r in mine))
        assert got == (counts[cls]["train"], counts[cls]["test_good"], counts[cls]["test_defect"])
    sizes = {r.cls: Image.open(r.path).size for r in records}
    if dataset == "mvtec":
        assert sizes == {"bottle": (48, 48), "metal_nut": (48, 48)}
    else:
        assert sizes == {"candle": (48, 44), "pcb1": (48, 34)}  # 1284x1168 and 1404x1000, longer side 48
        header = (tree / "split_csv" / "1cls.csv").read_text().splitlines()[0]
        assert header == "object,split,label,image,mask"
    for r in records:
        if r.label:
            assert np.asarray(Image.open(r.mask_path)).any()
    assert "fraction: 0.02" in (tree / "README.txt").read_text()
    with pytest.raises(FileExistsError, match="pass overwrite=True"):
        make_paper_scale(tree, dataset, fraction=0.02, classes=classes, max_side=48)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "a.txt").write_text("x")
    with pytest.raises(FileExistsError, match="not a paper-scale tree"):
        make_paper_scale(tmp_path / "mine", dataset, fraction=0.02, classes=classes, max_side=48, overwrite=True)


def test_paper_scale_min_train_leaves_room_for_k_shots():
    from zsad.data.paper_scale import scaled_counts

    counts = scaled_counts("mvtec", 0.005, ["toothbrush", "hazelnut"], min_train=4)
    assert [counts[c]["train"] for c in ("toothbrush", "hazelnut")] == [4, 4]  # 0.3 and 2 before the floor
    assert scaled_counts("mvtec", 0.5, ["toothbrush"], min_train=100)["toothbrush"]["train"] == 60  # the real count
    with pytest.raises(ValueError, match="min_train"):
        scaled_counts("mvtec", 0.5, min_train=0)
    low = scaled_counts("mvtec", 0.005, ["toothbrush"], min_test=5)["toothbrush"]
    assert (low["test_good"], low["test_defect"]) == (5, 5)
    assert scaled_counts("mvtec", 0.005, ["toothbrush"], min_test=50)["toothbrush"]["test_good"] == 12  # real count
