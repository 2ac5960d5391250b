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


# ------------------------------------------------------------------------------------- the object class "part"

#: sha256 of render_image's arrays (clean, image, mask) for weave and grain, every group, index 1, size 64, seed 0,
#: and of a 32-px default tree (README text and decoded pixels of every file, sorted by path), both computed with
#: the generator as it was before the object kind was added: the textures must never change.
DEFAULT_RENDER_SHA256 = "2c5a449af9aec265ebdb57cd7554f381e13754b3fb860561688a4e5180c1356e"
DEFAULT_TREE_SHA256 = "d90e47a3d23798e0bfe4a6c5b7e34b8ad1d46e1f4e20020431bbd040d8e39bbf"
GROUPS = ("train", "good", "scratch", "blob", "missing")


def test_the_default_textures_are_unchanged(tmp_path):
    import hashlib

    from PIL import Image

    from zsad.data.synth import render_image

    h = hashlib.sha256()
    for cls in ("weave", "grain"):
        for group in GROUPS:
            for array in render_image(cls, 1, seed=0, group=group, size=64):
                h.update(array.tobytes())
    assert h.hexdigest() == DEFAULT_RENDER_SHA256
    tree = make_synthetic(tmp_path / "t", n_train=1, n_test_good=1, n_test_defect=1, size=32)
    h = hashlib.sha256()
    for p in sorted(tree.rglob("*")):
        if p.is_file():
            h.update(p.relative_to(tree).as_posix().encode())
            h.update(p.read_bytes() if p.suffix == ".txt" else np.asarray(Image.open(p)).tobytes())
    assert h.hexdigest() == DEFAULT_TREE_SHA256
    # unknown class names still alternate between the two textures only
    assert "textures: a=weave, part=part, b=weave" in (
        make_synthetic(tmp_path / "u", classes=("a", "part", "b"), n_train=1, n_test_good=0, n_test_defect=0,
                       size=32) / "README.txt").read_text()


def test_part_renders_deterministically_with_exact_masks_on_the_part():
    from zsad.data.synth import OBJECTS, object_mask, render_image

    assert OBJECTS == ("part",)
    for group in GROUPS:
        for index in range(3):
            clean, image, mask = render_image("part", index, seed=0, group=group, size=96)
            again = render_image("part", index, seed=0, group=group, size=96)
            assert all(np.array_equal(a, b) for a, b in zip((clean, image, mask), again))
            inside = object_mask("part", index, seed=0, group=group, size=96)
            assert np.array_equal(mask, (image != clean).any(axis=-1))  # exact: the changed pixels
            assert not (mask & ~inside).any()  # on the part: never the table, the hole or the edge
            assert 0.15 < inside.mean() < 0.35  # a part, not the whole image
            if group in ("train", "good"):
                assert not mask.any() and np.array_equal(clean, image)
            else:
                assert 0.002 < mask.mean() < 0.05, (group, index, mask.mean())
    a = render_image("part", 0, seed=0, group="train", size=96)[0]
    assert not np.array_equal(a, render_image("part", 1, seed=0, group="train", size=96)[0])
    assert not np.array_equal(a, render_image("part", 0, seed=1, group="train", size=96)[0])
    # the part moves and turns from image to image
    masks = [object_mask("part", i, group="train", size=96) for i in range(4)]
    assert all(not np.array_equal(masks[0], m) for m in masks[1:])
    # a texture covers the whole image
    assert object_mask("weave", 0, size=32).all()


def test_part_is_not_a_stationary_texture():
    """A patch at the centre (hole and thread) and one at a corner (plain table) differ clearly on the part, in mean
    and in spread; on weave the two patches have the same statistics."""
    from zsad.data.synth import render_image

    def patches(cls, index):
        img = render_image(cls, index, seed=0, group="train", size=128)[0].astype(np.float64)
        return img[48:80, 48:80], img[:32, :32]

    for index in range(6):
        centre, corner = patches("part", index)
        assert abs(centre.mean() - corner.mean()) > 15 and centre.std() > 2.5 * corner.std()
        centre, corner = patches("weave", index)
        assert abs(centre.mean() - corner.mean()) < 8 and 0.9 < centre.std() / corner.std() < 1.1


def test_part_tree_loads_as_mvtec(tmp_path):
    from PIL import Image

    from zsad.data import load_dataset
    from zsad.data.synth import object_mask

    tree = make_synthetic(tmp_path / "objects", classes=("part",), seed=0, n_train=2, n_test_good=2,
                          n_test_defect=2, size=64)
    records = load_dataset("mvtec", tree)
    assert {r.cls for r in records} == {"part"}
    assert sum(r.split == "train" for r in records) == 2
    assert sum(r.split == "test" and r.label == 0 for r in records) == 2
    defects = [r for r in records if r.label == 1]
    assert sorted({r.defect for r in defects}) == ["blob", "missing", "scratch"] and len(defects) == 6
    for r in defects:
        mask = np.asarray(Image.open(r.mask_path)) > 0
        assert mask.any()
        assert not (mask & ~object_mask("part", int(r.path.stem), group=r.defect, size=64)).any()
    assert "textures: part=part" in (tree / "README.txt").read_text()
