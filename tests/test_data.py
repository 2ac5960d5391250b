"""Tests of zsad.data: loaders, image/mask reading, preprocessing, synthetic data, reference sampling.

Only generated trees under tmp_path are used (never a real dataset).
"""

from __future__ import annotations

import ast
import csv
import dataclasses
import hashlib
import io
import itertools
import random
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile
from torchvision import transforms
from torchvision.transforms.functional import pil_to_tensor

import zsad.data.synth as synth
from zsad.data import (
    CLIP_MEAN,
    CLIP_STD,
    DATASET_KINDS,
    DEFECT_TYPES,
    DatasetError,
    ImageRecord,
    class_prompt_name,
    has_masks,
    list_classes,
    load_dataset,
    load_image,
    load_mask,
    make_synthetic,
    preprocess,
    read_image_size,
    sample_references,
)
from zsad.data.images import LOSSY_MASK_THRESHOLD, ImageWarning

# ----------------------------------------------------------------------------------------------- helpers


def _save(path: Path, image: Image.Image, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, **kw)
    return path


def _rgb(path: Path, w: int = 32, h: int = 24, seed: int = 0, **kw) -> Path:
    arr = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    return _save(path, Image.fromarray(arr), **kw)


def _mask(path: Path, w: int = 32, h: int = 24, box=(4, 4, 12, 10), value: int = 255) -> Path:
    arr = np.zeros((h, w), dtype=np.uint8)
    x0, y0, x1, y1 = box
    arr[y0:y1, x0:x1] = value
    return _save(path, Image.fromarray(arr))


def _mvtec_tree(root: Path, cls: str = "widget") -> Path:
    base = root / cls
    for i in range(3):
        _rgb(base / "train" / "good" / f"{i:03d}.png", seed=i)
    for i in range(2):
        _rgb(base / "test" / "good" / f"{i:03d}.png", seed=10 + i)
        _rgb(base / "test" / "crack" / f"{i:03d}.png", seed=20 + i)
        _mask(base / "ground_truth" / "crack" / f"{i:03d}_mask.png")
    return root


def _tree_hash(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _records(n: int, cls: str = "c", shuffle_seed: int = 0) -> list[ImageRecord]:
    recs = [
        ImageRecord(Path(f"/data/{cls}/train/good/{i:03d}.png"), f"{cls}/train/good/{i:03d}.png", cls, "train", 0,
                    "good", None)
        for i in range(n)
    ]
    random.Random(shuffle_seed).shuffle(recs)
    return recs


# ---------------------------------------------------------------------------------------- records, names


def test_class_prompt_name():
    assert class_prompt_name("metal_nut") == "metal nut"
    assert class_prompt_name("pipe_fryum") == "pipe fryum"
    assert class_prompt_name("pcb1") == "pcb1"


def test_image_record_is_frozen():
    rec = _records(1)[0]
    with pytest.raises(dataclasses.FrozenInstanceError):
        rec.label = 1  # type: ignore[misc]
    assert DATASET_KINDS == ("mvtec", "visa", "magnetic_tile", "folder")


def test_data_package_imports_no_model():
    allowed = {"__future__", "collections", "csv", "dataclasses", "functools", "io", "os", "pathlib", "re", "typing",
               "warnings", "zlib", "shutil", "tempfile", "numpy", "torch", "torchvision", "PIL"}
    allowed_zsad = {"zsad.atomic", "zsad.config"}  # stdlib-only helpers of zsad itself (writes; where data lives)
    pkg = Path(__file__).resolve().parents[1] / "zsad" / "data"
    for src in sorted(pkg.glob("*.py")):
        for node in ast.walk(ast.parse(src.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            else:
                continue
            for name in names:
                ok = name.split(".")[0] in allowed or name in allowed_zsad or name.startswith("zsad.data.")
                assert ok, f"{src.name} imports {name}"
                assert not name.startswith("torchvision.models"), f"{src.name} imports {name}"


# ------------------------------------------------------------------------------------------- MVTec layout


def test_synthetic_tree_loads_as_mvtec(synth_root):
    assert list_classes("mvtec", synth_root) == ["grain", "weave"]
    recs = load_dataset("mvtec", synth_root)
    assert len(recs) == 2 * (8 + 4 + 4 * len(DEFECT_TYPES))
    assert recs == sorted(recs, key=lambda r: (r.cls, r.split, r.relpath))
    assert recs == load_dataset("mvtec", str(synth_root))
    for r in recs:
        assert r.path.is_absolute() and r.path.is_file()
        assert r.relpath == r.path.relative_to(synth_root).as_posix()
        if r.split == "train":
            assert (r.label, r.defect, r.mask_path) == (0, "good", None)
        elif r.defect == "good":
            assert r.label == 0 and r.mask_path is None
        else:
            assert r.label == 1 and r.defect in DEFECT_TYPES
            assert r.mask_path == synth_root / r.cls / "ground_truth" / r.defect / f"{r.path.stem}_mask.png"
    assert has_masks(recs)


def test_class_and_split_filters(synth_root):
    train = load_dataset("mvtec", synth_root, classes="weave", split="train")
    assert len(train) == 8 and {(r.cls, r.split) for r in train} == {("weave", "train")}
    test = load_dataset("mvtec", synth_root, classes=["weave", "grain"], split="test")
    assert len(test) == 2 * (4 + 12) and {r.split for r in test} == {"test"}
    assert [r.cls for r in test][:16] == ["grain"] * 16


def test_missing_root(tmp_path):
    missing = tmp_path / "nope"
    for kind in DATASET_KINDS:
        with pytest.raises(DatasetError, match="not found") as err:
            load_dataset(kind, missing)
        assert str(missing) in str(err.value)
    f = _rgb(tmp_path / "file.png")
    with pytest.raises(DatasetError, match="not a folder"):
        list_classes("mvtec", f)


def test_dataset_names_of_the_study_load_without_a_root(monkeypatch):
    # zsad.load_dataset takes the study's dataset names; without a root the configured one applies
    from zsad import config

    synthetic = load_dataset("synthetic", split="test", validate=False)
    assert synthetic == load_dataset("mvtec", config.SYNTHETIC_DIR, split="test", validate=False)
    assert {r.cls for r in synthetic} == set(list_classes("synthetic"))
    assert load_dataset("magnetic_tile", validate=False) == load_dataset("magnetic_tile", config.MAGNETIC_TILE_SUBSET,
                                                                         validate=False)
    monkeypatch.delenv("ZSAD_MVTEC_ROOT", raising=False)
    with pytest.raises(DatasetError, match=r"dataset 'mvtec' needs a root.*\$ZSAD_MVTEC_ROOT"):
        load_dataset("mvtec")


def test_unknown_kind_split_and_class(tmp_path):
    root = _mvtec_tree(tmp_path / "ds")
    with pytest.raises(DatasetError, match="unknown dataset 'kitti'; expected one of synthetic"):
        load_dataset("kitti", root)
    with pytest.raises(DatasetError, match="unknown split"):
        load_dataset("mvtec", root, split="val")
    with pytest.raises(DatasetError, match=r"unknown class.*'bottle'.*available: widget"):
        load_dataset("mvtec", root, classes=["bottle"])
    with pytest.raises(DatasetError, match="no classes requested"):
        load_dataset("mvtec", root, classes=[])


def test_no_class_folders(tmp_path):
    (tmp_path / "ds" / "misc").mkdir(parents=True)
    with pytest.raises(DatasetError, match="no class folders") as err:
        load_dataset("mvtec", tmp_path / "ds")
    assert str(tmp_path / "ds") in str(err.value)


def test_empty_class_folder(tmp_path):
    root = _mvtec_tree(tmp_path / "ds")
    (root / "empty" / "train" / "good").mkdir(parents=True)
    (root / "empty" / "test").mkdir()
    (root / "empty" / "train" / "good" / "notes.txt").write_text("not an image")
    assert list_classes("mvtec", root) == ["empty", "widget"]
    with pytest.raises(DatasetError, match="no images in class folder") as err:
        load_dataset("mvtec", root, classes="empty")
    assert str(root / "empty") in str(err.value)
    with pytest.raises(DatasetError, match="no test images"):
        (root / "widget" / "test").rename(root / "widget" / "test_moved")
        load_dataset("mvtec", root, classes="widget", split="test")


def test_missing_mask(tmp_path):
    root = _mvtec_tree(tmp_path / "ds")
    (root / "widget" / "ground_truth" / "crack" / "001_mask.png").unlink()
    with pytest.raises(DatasetError, match="mask missing") as err:
        load_dataset("mvtec", root)
    msg = str(err.value)
    assert str(root / "widget" / "test" / "crack" / "001.png") in msg
    assert str(root / "widget" / "ground_truth" / "crack" / "001_mask.png") in msg


def test_mask_size_mismatch(tmp_path):
    root = _mvtec_tree(tmp_path / "ds")
    bad = _mask(root / "widget" / "ground_truth" / "crack" / "000_mask.png", w=30, h=24)
    with pytest.raises(DatasetError, match="30x24") as err:
        load_dataset("mvtec", root)
    assert str(bad) in str(err.value) and str(root / "widget" / "test" / "crack" / "000.png") in str(err.value)
    assert "32x24" in str(err.value)
    assert len(load_dataset("mvtec", root, validate=False)) == 7  # header checks are what validate adds


def test_unreadable_image_found_by_validate(tmp_path):
    root = _mvtec_tree(tmp_path / "ds")
    junk = root / "widget" / "test" / "good" / "junk.png"
    junk.write_bytes(b"this is not a png")
    with pytest.raises(DatasetError, match="cannot read image header") as err:
        load_dataset("mvtec", root)
    assert str(junk) in str(err.value)


def test_masks_paired_by_name_not_by_sorted_order(tmp_path):
    root = _mvtec_tree(tmp_path / "ds")
    gt = root / "widget" / "ground_truth" / "crack"
    _mask(gt / "0000_extra_mask.png")  # sorts first: sorted-order pairing would shift every pair
    (root / "widget" / "test" / "crack" / ".DS_Store").write_bytes(b"\0")
    (root / "widget" / "test" / "crack" / "readme.txt").write_text("x")
    recs = [r for r in load_dataset("mvtec", root) if r.label == 1]
    assert [(r.path.name, r.mask_path.name) for r in recs] == [("000.png", "000_mask.png"), ("001.png", "001_mask.png")]


def test_mask_fallback_names(tmp_path):
    root = _mvtec_tree(tmp_path / "ds")
    gt = root / "widget" / "ground_truth" / "crack"
    (gt / "001_mask.png").rename(gt / "001.png")  # BTAD-like bare stem
    recs = [r for r in load_dataset("mvtec", root) if r.label == 1]
    assert [r.mask_path.name for r in recs] == ["000_mask.png", "001.png"]


def test_image_extensions_case_insensitive(tmp_path):
    root = _mvtec_tree(tmp_path / "ds")
    _rgb(root / "widget" / "train" / "good" / "100.JPG", format="JPEG")
    _rgb(root / "widget" / "train" / "good" / "101.Tiff", format="TIFF")
    _rgb(root / "widget" / "train" / "good" / "102.bmp")
    names = [r.path.name for r in load_dataset("mvtec", root, split="train")]
    assert names == ["000.png", "001.png", "002.png", "100.JPG", "101.Tiff", "102.bmp"]


# ------------------------------------------------------------------------------------------ magnetic tile


def _magnetic_tree(root: Path) -> Path:
    for i in range(3):
        _save(root / "train" / "good" / f"exp0_num_{i}.jpg", Image.fromarray(np.full((20, 30), 90, np.uint8)))
    _save(root / "test" / "good" / "exp1_num_7.jpg", Image.fromarray(np.full((20, 30), 90, np.uint8)))
    _save(root / "test" / "uneven" / "exp2_num_1.jpg", Image.fromarray(np.full((20, 30), 60, np.uint8)))
    _mask(root / "ground_truth" / "uneven" / "exp2_num_1_mask.png", w=30, h=20, box=(0, 0, 0, 0))  # empty
    _save(root / "test" / "crack" / "exp3_num_2.jpg", Image.fromarray(np.full((20, 30), 40, np.uint8)))
    soft = np.zeros((20, 30), np.uint8)
    soft[5:15, 10:20] = 255
    soft[4, 10:20] = soft[15, 10:20] = 100  # anti-aliased rim
    soft[0:20, 0:3] = 3  # faint noise far from the defect
    _save(root / "ground_truth" / "crack" / "exp3_num_2_mask.png", Image.fromarray(soft))
    return root


def test_magnetic_tile_layout_and_empty_masks(tmp_path):
    root = _magnetic_tree(tmp_path / "Magnetic-tile")
    assert list_classes("magnetic_tile", root) == ["magnetic_tile"]
    recs = load_dataset("magnetic_tile", root)
    assert {r.cls for r in recs} == {"magnetic_tile"}
    assert [(r.split, r.defect, r.label) for r in recs] == [
        ("test", "crack", 1), ("test", "good", 0), ("test", "uneven", 1),
        ("train", "good", 0), ("train", "good", 0), ("train", "good", 0),
    ]
    assert recs[0].relpath == "test/crack/exp3_num_2.jpg"
    assert all(r.mask_threshold == 127 for r in recs)
    uneven = recs[2]
    assert uneven.mask_path.name == "exp2_num_1_mask.png"
    assert not load_mask(uneven, 16).any()  # empty mask: still label 1, no anomalous pixel
    crack = recs[0]
    strict = load_mask(crack, 20)  # > 127 via the record
    fade_rule = load_mask(crack.mask_path, 20)  # != 0
    soft = torch.from_numpy(np.asarray(Image.open(crack.mask_path)).copy())[None]
    assert torch.equal(strict, (transforms.Resize((20, 20))((soft > 127).float()) > 0.5)[0])
    assert torch.equal(fade_rule, (transforms.Resize((20, 20))((soft != 0).float()) > 0.5)[0])
    assert torch.equal(load_mask(crack.mask_path, 20, threshold=127), strict)
    assert 0 < strict.sum() < fade_rule.sum()
    with pytest.raises(DatasetError, match="unknown class"):
        load_dataset("magnetic_tile", root, classes="tile")
    with pytest.raises(DatasetError, match="no train/ or test/"):
        load_dataset("magnetic_tile", tmp_path)


# ------------------------------------------------------------------------------------------------- VisA


def _visa_tree(root: Path) -> tuple[Path, list[list[str]]]:
    rows = []
    for cls in ("candle", "pcb1"):
        base = root / cls / "Data"
        for i in range(5):
            rel = f"{cls}/Data/Images/Normal/{i:04d}.JPG"
            _rgb(root / rel, w=40, h=30, seed=i, format="JPEG")
            rows.append([cls, "train" if i < 3 else "test", "normal", rel, ""])
        for i in range(2):
            rel = f"{cls}/Data/Images/Anomaly/{i:03d}.JPG"
            _rgb(root / rel, w=40, h=30, seed=50 + i, format="JPEG")
            ids = np.zeros((30, 40), np.uint8)
            ids[2:6, 3:9] = 1
            ids[10:14, 20:30] = 7  # class ids, not 255
            mrel = f"{cls}/Data/Masks/Anomaly/{i:03d}.png"
            _save(base / "Masks" / "Anomaly" / f"{i:03d}.png", Image.fromarray(ids))
            rows.append([cls, "test", "anomaly", rel, mrel])
    random.Random(3).shuffle(rows)  # the published csv is not sorted either
    _write_csv(root, rows)
    return root, rows


def _write_csv(root: Path, rows, header=("object", "split", "label", "image", "mask")) -> None:
    (root / "split_csv").mkdir(parents=True, exist_ok=True)
    with open(root / "split_csv" / "1cls.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)


def test_visa_loader(tmp_path):
    root, rows = _visa_tree(tmp_path / "VisA")
    assert list_classes("visa", root) == ["candle", "pcb1"]
    recs = load_dataset("visa", root)
    assert len(recs) == len(rows) == 14
    assert recs == sorted(recs, key=lambda r: (r.cls, r.split, r.relpath))
    for r in recs:
        row = rows[r.source_order]
        assert row[0] == r.cls and row[1] == r.split and row[3] == r.relpath
        if row[2] == "normal":
            assert (r.label, r.defect, r.mask_path) == (0, "good", None)
        else:
            assert (r.label, r.defect) == (1, "anomaly") and r.mask_path == root / row[4]
    train = load_dataset("visa", root, classes="pcb1", split="train")
    assert len(train) == 3 and all(r.cls == "pcb1" and r.label == 0 for r in train)
    anomalous = next(r for r in recs if r.label == 1)
    m = load_mask(anomalous, 40, image_size=read_image_size(anomalous.path))
    assert m[:, :].sum() > 0 and m.shape == (40, 40)
    ids = np.asarray(Image.open(anomalous.mask_path))
    full = load_mask(anomalous.mask_path, 30)  # binarised != 0: class ids 1 and 7 both count
    ref = transforms.Resize((30, 30))(torch.from_numpy((ids != 0).astype(np.float32))[None])[0] > 0.5
    assert torch.equal(full, ref)


def test_visa_missing_csv(tmp_path):
    root = tmp_path / "VisA"
    (root / "candle" / "Data").mkdir(parents=True)
    with pytest.raises(DatasetError) as err:
        load_dataset("visa", root)
    msg = str(err.value)
    assert "split_csv/1cls.csv" in msg and "spot-diff" in msg and str(root) in msg
    with pytest.raises(DatasetError, match="split_csv/1cls.csv"):
        list_classes("visa", root)


def test_visa_missing_referenced_file(tmp_path):
    root, rows = _visa_tree(tmp_path / "VisA")
    victim = next(r for r in rows if r[2] == "normal")
    (root / victim[3]).unlink()
    with pytest.raises(DatasetError, match="image file not found") as err:
        load_dataset("visa", root)
    assert str(root / victim[3]) in str(err.value) and "1cls.csv" in str(err.value)
    root2, rows2 = _visa_tree(tmp_path / "VisA2")
    mvictim = next(r for r in rows2 if r[2] == "anomaly")
    (root2 / mvictim[4]).unlink()
    with pytest.raises(DatasetError, match="mask missing") as err:
        load_dataset("visa", root2)
    assert str(root2 / mvictim[4]) in str(err.value)


def test_visa_bad_rows(tmp_path):
    root, rows = _visa_tree(tmp_path / "VisA")
    bad = [list(r) for r in rows]
    next(r for r in bad if r[2] == "anomaly")[4] = ""
    _write_csv(root, bad)
    with pytest.raises(DatasetError, match="mask missing for defect image"):
        load_dataset("visa", root)
    _write_csv(root, rows, header=("object", "split", "label", "path", "mask"))
    with pytest.raises(DatasetError, match="missing column"):
        load_dataset("visa", root)
    bad = [list(r) for r in rows]
    bad[0][2] = "defect"
    _write_csv(root, bad)
    with pytest.raises(DatasetError, match="label must be"):
        load_dataset("visa", root)
    _write_csv(root, rows)
    with pytest.raises(DatasetError, match=r"unknown class.*available: candle, pcb1"):
        load_dataset("visa", root, classes="capsules")


def _visa_error(root: Path, rows) -> str:
    _write_csv(root, rows)
    with pytest.raises(DatasetError) as err:
        load_dataset("visa", root)
    with pytest.raises(DatasetError, match="listed"):  # the whole csv is refused, whatever is selected
        list_classes("visa", root)
    return str(err.value)


def test_visa_image_listed_twice(tmp_path):
    root, rows = _visa_tree(tmp_path / "VisA")
    csv_path = root / "split_csv" / "1cls.csv"
    k = next(i for i, r in enumerate(rows) if r[1] == "test" and r[2] == "normal")
    msg = _visa_error(root, rows + [rows[k]])  # the same row twice
    assert str(csv_path) in msg and f"lines {k + 2} and {len(rows) + 2}" in msg
    assert f"image {rows[k][3]} is listed twice" in msg
    # the same image under another label, and via a path spelled differently, is a repeat too
    other = [rows[k][0], "test", "anomaly", "./" + rows[k][3], rows[k][4] or rows[0][4]]
    msg = _visa_error(root, rows + [other])
    assert f"lines {k + 2} and {len(rows) + 2}" in msg and rows[k][3] in msg
    two = [rows[k], rows[k + 1 if k + 1 < len(rows) else 0]]
    assert "(1 more repeated row(s) in the file)" in _visa_error(root, rows + two)
    # line numbers are the file's lines, also after a blank line (which csv skips)
    _write_csv(root, rows)
    text = csv_path.read_text().splitlines()
    csv_path.write_text("\n".join(text[:3] + [""] + text[3:] + [text[1]]) + "\n")
    with pytest.raises(DatasetError, match=f"lines 2 and {len(rows) + 3}:"):
        load_dataset("visa", root)


def test_visa_test_image_listed_as_train(tmp_path):
    root, rows = _visa_tree(tmp_path / "VisA")
    k = next(i for i, r in enumerate(rows) if r[1] == "test" and r[2] == "normal")
    leaked = [rows[k][0], "train", "normal", rows[k][3], ""]
    msg = _visa_error(root, [leaked] + rows)
    csv_path = root / "split_csv" / "1cls.csv"
    assert str(csv_path) in msg and rows[k][3] in msg
    assert f"lines 2 (train) and {k + 3} (test)" in msg and "both train and test" in msg
    with pytest.raises(DatasetError, match="both train and test"):  # also when only one split is asked for
        load_dataset("visa", root, classes=rows[k][0], split="train")
    _write_csv(root, rows)
    assert len(load_dataset("visa", root)) == len(rows)  # the published-style csv still loads


# ------------------------------------------------------------------------------------------------ folder


def _folder_tree(root: Path) -> Path:
    for i in range(2):
        _rgb(root / "good" / f"g{i}.png", seed=i)
        _rgb(root / "scratch" / f"s{i}.png", seed=10 + i)
        _mask(root / "masks" / "scratch" / f"s{i}_mask.png")
        _rgb(root / "train" / f"t{i}.png", seed=20 + i)
    _rgb(root / "dent" / "d0.png", seed=30)
    return root


def test_folder_kind(tmp_path):
    root = _folder_tree(tmp_path / "bolts")
    assert list_classes("folder", root) == ["bolts"]
    recs = load_dataset("folder", root)
    assert {r.cls for r in recs} == {"bolts"}
    by = {r.relpath: r for r in recs}
    assert sorted(by) == ["dent/d0.png", "good/g0.png", "good/g1.png", "scratch/s0.png", "scratch/s1.png",
                          "train/t0.png", "train/t1.png"]
    assert (by["good/g0.png"].label, by["good/g0.png"].split) == (0, "test")
    assert (by["train/t1.png"].label, by["train/t1.png"].split) == (0, "train")
    assert by["scratch/s1.png"].label == 1 and by["scratch/s1.png"].mask_path == root / "masks/scratch/s1_mask.png"
    assert by["dent/d0.png"].label == 1 and by["dent/d0.png"].mask_path is None  # no masks/dent: image-level only
    assert not has_masks(recs) and has_masks([r for r in recs if r.defect != "dent"])
    assert len(load_dataset("folder", root, split="train")) == 2
    with pytest.raises(DatasetError, match="available: bolts"):
        load_dataset("folder", root, classes="nuts")


def test_folder_errors(tmp_path):
    root = _folder_tree(tmp_path / "bolts")
    (root / "masks" / "scratch" / "s0_mask.png").unlink()
    with pytest.raises(DatasetError, match="mask missing") as err:
        load_dataset("folder", root)
    assert str(root / "scratch" / "s0.png") in str(err.value)
    empty = tmp_path / "empty_cls"
    (empty / "good").mkdir(parents=True)
    with pytest.raises(DatasetError, match="no images in folder") as err:
        load_dataset("folder", empty)
    assert str(empty) in str(err.value)


# ------------------------------------------------------------------------------------------------ images


def test_load_image_16bit_grey(tmp_path):
    values = np.array([[0, 257, 65535, 32768], [1000, 128, 65280, 255]], dtype=np.uint16)
    expected = np.array([[0, 1, 255, 128], [4, 0, 254, 1]], dtype=np.uint8)  # round(v / 257)
    path = _save(tmp_path / "g16.png", Image.fromarray(values))
    assert Image.open(path).mode.startswith("I")
    img = load_image(path)
    arr = np.asarray(img)
    assert img.mode == "RGB" and arr.shape == (2, 4, 3)
    for c in range(3):
        np.testing.assert_array_equal(arr[..., c], expected)
    as_int32 = load_image(_save(tmp_path / "g32.tif", Image.fromarray(values.astype(np.int32))))
    np.testing.assert_array_equal(np.asarray(as_int32)[..., 0], expected)


def test_load_image_alpha_dropped_palette_cmyk(tmp_path):
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., :3] = (10, 200, 30)
    rgba[0, :, 3] = 255  # one opaque row, the rest fully transparent
    img = np.asarray(load_image(_save(tmp_path / "rgba.png", Image.fromarray(rgba, "RGBA"))))
    assert (img == (10, 200, 30)).all()  # alpha dropped, stored colours kept (= convert("RGB"), as FADE)
    la = Image.fromarray(np.stack([np.full((3, 3), 77, np.uint8), np.zeros((3, 3), np.uint8)], -1), "LA")
    assert (np.asarray(load_image(_save(tmp_path / "la.png", la))) == 77).all()

    pal = Image.new("P", (4, 2))
    pal.putpalette([10, 20, 30, 200, 100, 50] + [0] * 762)
    pal.putdata([0, 1, 1, 0, 1, 1, 1, 1])
    expected = np.array([[[10, 20, 30], [200, 100, 50], [200, 100, 50], [10, 20, 30]],
                         [[200, 100, 50]] * 4], np.uint8)
    np.testing.assert_array_equal(np.asarray(load_image(_save(tmp_path / "p.png", pal))), expected)
    pal.info["transparency"] = 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = np.asarray(load_image(_save(tmp_path / "pt.png", pal, transparency=0)))
    np.testing.assert_array_equal(out, expected)

    cmyk = Image.new("CMYK", (3, 3), (0, 255, 255, 0))
    path = _save(tmp_path / "cmyk.tif", cmyk)
    img = load_image(path)
    assert img.mode == "RGB" and img.getpixel((1, 1)) == Image.open(path).convert("RGB").getpixel((1, 1))
    assert img.getpixel((1, 1)) == (255, 0, 0)

    grey = load_image(_save(tmp_path / "l.png", Image.fromarray(np.full((2, 2), 42, np.uint8))))
    assert grey.mode == "RGB" and grey.getpixel((0, 0)) == (42, 42, 42)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_image(tmp_path, fmt):
    arr = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt)
    path = tmp_path / f"cut.{fmt.lower()}"
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    assert read_image_size(path) == (64, 64)  # the header alone is fine ...
    with pytest.raises(DatasetError, match="truncated") as err:  # ... the full decode is not
        load_image(path)
    assert str(path) in str(err.value)


def _jpeg_bytes(seed: int = 0, **kw) -> bytes:
    yy, xx = np.mgrid[:48, :64]
    arr = np.stack([xx * 4, yy * 5, (xx + yy) * 2], -1) + np.random.default_rng(seed).integers(0, 40, (48, 64, 3))
    buf = io.BytesIO()
    Image.fromarray(arr.clip(0, 255).astype(np.uint8)).save(buf, format="JPEG", quality=90, **kw)
    return buf.getvalue()


def _pillow_decodes_silently(data: bytes) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with Image.open(io.BytesIO(data)) as im:
            im.load()


def test_truncated_jpeg_stays_an_error_with_load_truncated_images(tmp_path, monkeypatch):
    data = _jpeg_bytes()
    scan = data.find(b"\xff\xda")
    path = tmp_path / "cut.jpg"
    path.write_bytes(data[: (scan + len(data)) // 2])  # cut in the middle of the scan data
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)  # set by some libraries and notebooks
    _pillow_decodes_silently(path.read_bytes())  # Pillow then fills the missing part without a word ...
    with pytest.raises(DatasetError, match="truncated JPEG") as err:  # ... zsad still refuses the file
        load_image(path)
    assert str(path) in str(err.value)
    mask = tmp_path / "cut_mask.jpg"
    mask.write_bytes(path.read_bytes())
    with pytest.raises(DatasetError, match="cannot read mask.*truncated") as err:
        load_mask(mask, 8)
    assert str(mask) in str(err.value)


def test_corrupt_jpeg_scan_warns(tmp_path):
    data = _jpeg_bytes()
    scan = data.find(b"\xff\xda")
    mid = (scan + len(data)) // 2
    cases = {
        # garbage with a marker inside the scan: libjpeg reports "premature end of data segment", Pillow drops it
        "garbage.jpg": data[:mid] + b"\xff\xe1\x00\x04ab" + data[mid:],
    }
    rst = _jpeg_bytes(restart_marker_rows=1)
    at = [i for i in range(len(rst) - 1) if rst[i] == 0xFF and 0xD0 <= rst[i + 1] <= 0xD7]
    assert len(at) == 2
    swapped = bytearray(rst)
    swapped[at[1] + 1] = 0xD5
    cases["rst_order.jpg"] = bytes(swapped)  # RST5 where RST1 is due: libjpeg resyncs, pixels lost
    cases["rst_missing.jpg"] = rst[: at[1]] + rst[-2:]  # the last restart interval is gone
    expected = {"garbage.jpg": "expected a marker at byte", "rst_order.jpg": "RST5 at byte .* where RST1 was due",
                "rst_missing.jpg": "1 restart marker.* where 2 are due"}
    for name, corrupt in cases.items():
        _pillow_decodes_silently(corrupt)
        path = tmp_path / name
        path.write_bytes(corrupt)
        with pytest.warns(ImageWarning, match=expected[name]) as rec:
            img = load_image(path)
        assert img.mode == "RGB" and img.size == (64, 48)  # the decoded pixels are still used
        assert len(rec) == 1 and str(path) in str(rec[0].message) and "corrupt JPEG data" in str(rec[0].message)
        with pytest.warns(ImageWarning, match="part of the mask") as rec:
            load_mask(path, 8)
        assert str(path) in str(rec[0].message)
    # an unknown marker inside the scan is fatal for libjpeg: an error naming the file, as before
    bad = tmp_path / "bad_marker.jpg"
    bad.write_bytes(data[:mid] + b"\x13\x37\xff\x3a\x42" + data[mid:])
    with pytest.raises(DatasetError, match="cannot read image") as err:
        load_image(bad)
    assert str(bad) in str(err.value)


@pytest.mark.parametrize("kw", [dict(), dict(progressive=True), dict(optimize=True), dict(subsampling=0),
                                dict(restart_marker_blocks=3), dict(restart_marker_rows=1, progressive=True),
                                dict(comment=b"\xff\xd9 in a comment")])
@pytest.mark.parametrize("mode,size", [("RGB", (61, 45)), ("L", (17, 9)), ("CMYK", (40, 33)), ("RGB", (1, 1))])
def test_sound_jpegs_do_not_warn(tmp_path, kw, mode, size):
    arr = np.random.default_rng(sum(size)).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    path = _save(tmp_path / "ok.jpg", Image.fromarray(arr).convert(mode), format="JPEG", **kw)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_image(path).size == size
        data = path.read_bytes()
        path.write_bytes(data + b"trailing junk after the end-of-image marker")  # cameras do this; harmless
        load_image(path)


def test_unreadable_and_missing_images(tmp_path):
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"\x89PNG garbage")
    with pytest.raises(DatasetError, match="cannot read image") as err:
        load_image(junk)
    assert str(junk) in str(err.value)
    with pytest.raises(DatasetError, match="not found"):
        load_image(tmp_path / "missing.png")
    with pytest.raises(DatasetError, match="not a file"):
        load_image(tmp_path)


# ------------------------------------------------------------------------------------------- preprocess


def _fade_compose(size: int, **resize_kw) -> transforms.Compose:
    return transforms.Compose([
        transforms.Resize((size, size), interpolation=transforms.InterpolationMode.BICUBIC, **resize_kw),
        transforms.ToTensor(),
        transforms.Normalize(mean=[0.48145466, 0.4578275, 0.40821073], std=[0.26862954, 0.26130258, 0.27577711]),
    ])


@pytest.mark.parametrize("size", [240, 448, 17])
def test_preprocess_equals_fade(tmp_path, size):
    path = _rgb(tmp_path / "x.png", w=61, h=45, seed=size)
    img = Image.open(path).convert("RGB")
    out = preprocess(load_image(path), size)
    assert out.shape == (3, size, size) and out.dtype == torch.float32
    assert torch.equal(out, _fade_compose(size)(img))
    assert torch.equal(preprocess(path, size), out)
    # antialias is irrelevant on PIL input: PIL's resize always antialiases (torchvision says so, and ignores it)
    with pytest.warns(UserWarning, match="always applied for PIL"):
        assert torch.equal(_fade_compose(size, antialias=False)(img), out)


def test_preprocess_non_rgb_and_constants():
    grey = Image.fromarray(np.arange(12 * 9, dtype=np.uint8).reshape(9, 12))
    assert torch.equal(preprocess(grey, 16), preprocess(grey.convert("RGB"), 16))
    assert CLIP_MEAN == (0.48145466, 0.4578275, 0.40821073)
    assert CLIP_STD == (0.26862954, 0.26130258, 0.27577711)
    with pytest.raises(ValueError):
        preprocess(grey, 0)
    with pytest.raises(TypeError):
        preprocess(np.zeros((4, 4, 3)), 8)


# ------------------------------------------------------------------------------------------------- masks


@pytest.mark.parametrize("size", [16, 64, 29])
def test_load_mask_equals_fade(tmp_path, size):
    arr = np.zeros((29, 37), np.uint8)
    arr[3:11, 5:20] = 255
    arr[20:23, 30:33] = 1  # value 1 is anomalous under != 0
    path = _save(tmp_path / "m.png", Image.fromarray(arr))
    fade = (transforms.Resize((size, size))((pil_to_tensor(Image.open(path)) != 0).float()) > 0.5)[0]
    out = load_mask(path, size)
    assert out.dtype == torch.bool and out.shape == (size, size)
    assert torch.equal(out, fade)
    assert out.any()


def test_load_mask_none_modes_and_sizes(tmp_path):
    assert torch.equal(load_mask(None, 8), torch.zeros(8, 8, dtype=torch.bool))
    assert load_mask(_records(1)[0], 8).sum() == 0  # a normal record
    # palette masks: FADE reads the indices, so index 1 counts even if its palette colour is black
    pal = Image.new("P", (8, 8), 0)
    pal.putpalette([0, 0, 0] * 256)
    pal.paste(1, (0, 0, 4, 8))
    pmask = load_mask(_save(tmp_path / "p.png", pal), 8)
    assert pmask[:, :4].all() and not pmask[:, 4:].any()
    rgb = np.zeros((8, 8, 3), np.uint8)
    rgb[:4, :, 2] = 9
    assert load_mask(_save(tmp_path / "rgb.png", Image.fromarray(rgb)), 8)[:4].all()
    assert load_mask(tmp_path / "rgb.png", 8, threshold=9).sum() == 0
    img = _rgb(tmp_path / "img.png", w=10, h=8)
    with pytest.raises(DatasetError, match="8x8 but image") as err:
        load_mask(tmp_path / "rgb.png", 8, image_size=read_image_size(img), image_path=img)
    assert str(img) in str(err.value) and "10x8" in str(err.value) and str(tmp_path / "rgb.png") in str(err.value)
    assert load_mask(tmp_path / "rgb.png", 8, image_size=(8, 8)).any()


def _fade_mask(binary: np.ndarray, size: int) -> torch.Tensor:
    return (transforms.Resize((size, size))(torch.from_numpy(binary.astype(np.float32))[None]) > 0.5)[0]


def test_mask_16bit_full_range(tmp_path):
    arr8 = np.zeros((24, 32), np.uint8)
    arr8[4:10, 4:12] = 255
    p16 = _save(tmp_path / "m16.png", Image.fromarray(arr8.astype(np.uint16) * 257))  # 0 / 65535
    assert Image.open(p16).mode == "I;16"
    p8 = _save(tmp_path / "m8.png", Image.fromarray(arr8))
    for t in (None, 1, 127, 254):
        assert torch.equal(load_mask(p16, 16, threshold=t), load_mask(p8, 16, threshold=t)), t
    assert load_mask(p16, 16).any() and not load_mask(p16, 16, threshold=255).any()


def test_mask_16bit_threshold_in_8bit_units(tmp_path):
    # a magnetic-tile record (threshold 127, 8-bit units) whose mask was saved as 16-bit
    root = _magnetic_tree(tmp_path / "Magnetic-tile")
    crack = next(r for r in load_dataset("magnetic_tile", root) if r.defect == "crack")
    assert crack.mask_threshold == 127
    arr = np.zeros((20, 30), np.uint16)
    arr[2:8, 3:12] = 20000  # 8-bit 78: below 127, not defect
    arr[10:18, 14:26] = 40000  # 8-bit 156: defect
    arr[0, :] = 32767  # round(32767 / 257) = 127: not above 127
    arr[19, :] = 32768  # round(32768 / 257) = 128: defect
    _save(crack.mask_path, Image.fromarray(arr))
    assert Image.open(crack.mask_path).mode == "I;16"
    expected = np.rint(arr / 257.0) > 127  # the value load_image would give, above the threshold
    assert expected[10:18, 14:26].all() and not expected[2:8, 3:12].any() and not expected[0].any()
    assert expected[19].all()
    out = load_mask(crack, 30, image_size=read_image_size(crack.path))
    assert torch.equal(out, _fade_mask(expected, 30))
    assert torch.equal(load_mask(crack.mask_path, 30, threshold=127), out)
    # the same mask converted to 8 bits as load_image does gives the same pixels
    p8 = _save(tmp_path / "as8.png", Image.fromarray(np.rint(arr / 257.0).astype(np.uint8)))
    assert torch.equal(load_mask(p8, 30, threshold=127), out)
    # without a threshold every non-zero stored value counts (FADE), also 16-bit values below 8-bit 1
    arr[:, 0] = 100
    _save(crack.mask_path, Image.fromarray(arr))
    assert torch.equal(load_mask(crack.mask_path, 30), _fade_mask(arr != 0, 30))


def test_mask_jpeg_threshold(tmp_path):
    arr = np.zeros((45, 45), np.uint8)
    arr[7:30, 9:33] = 255  # edges off the 8x8 block grid: JPEG ringing around them
    path = _save(tmp_path / "m.jpg", Image.fromarray(arr), quality=75)
    stored = np.asarray(Image.open(path))
    true_area = int((arr > 0).sum())
    assert (stored != 0).sum() > 1.2 * true_area  # FADE's != 0 grows the mask with the ringing
    out = load_mask(path, 45)
    assert abs(int(out.sum()) - true_area) <= 0.03 * true_area
    assert torch.equal(out, _fade_mask(stored > LOSSY_MASK_THRESHOLD, 45))
    assert torch.equal(load_mask(path, 45, threshold=200), _fade_mask(stored > 200, 45))  # a set threshold wins
    rgb = np.zeros((45, 45, 3), np.uint8)
    rgb[7:30, 9:33, 0] = 255  # red only: any channel counts
    rpath = _save(tmp_path / "r.jpg", Image.fromarray(rgb), quality=75)
    assert abs(int(load_mask(rpath, 45).sum()) - true_area) <= 0.03 * true_area
    # a JPEG mask found by the `_mask.<ext>` fallback of the loaders gets the same rule through its record
    root = _mvtec_tree(tmp_path / "ds")
    gt = root / "widget" / "ground_truth" / "crack"
    big = np.zeros((24, 32), np.uint8)
    big[3:17, 5:23] = 255
    (gt / "000_mask.png").unlink()
    _save(gt / "000_mask.jpg", Image.fromarray(big), quality=75)
    rec = next(r for r in load_dataset("mvtec", root) if r.mask_path.name == "000_mask.jpg")
    assert rec.mask_threshold == 0
    stored = np.asarray(Image.open(rec.mask_path))
    assert (stored != 0).sum() > (big > 0).sum()
    assert torch.equal(load_mask(rec, 24), _fade_mask(stored > 127, 24))


def test_mask_palette_and_one_bit(tmp_path):
    pal = Image.new("P", (8, 8), 0)
    pal.putpalette([0, 0, 0, 255, 255, 255, 100, 100, 100] + [0] * 759)
    pal.paste(1, (0, 0, 4, 4))  # white
    pal.paste(2, (4, 0, 8, 4))  # grey 100
    path = _save(tmp_path / "p.png", pal)
    assert Image.open(path).mode == "P"
    fade = load_mask(path, 8)  # no threshold: palette indices != 0 (FADE)
    assert fade[:4].all() and not fade[4:].any()
    strict = load_mask(path, 8, threshold=127)  # a threshold compares the colours, not the indices 1 and 2
    assert strict[:4, :4].all() and strict.sum() == 16
    one = np.zeros((8, 8), bool)
    one[2:6, 2:6] = True
    opath = _save(tmp_path / "one.png", Image.fromarray(one))
    assert Image.open(opath).mode == "1"
    rec = ImageRecord(tmp_path / "x.png", "x.png", "c", "test", 1, "crack", opath, mask_threshold=127)
    assert torch.equal(load_mask(rec, 8), torch.from_numpy(one))  # 1-bit is 0/255, as images read it
    assert torch.equal(load_mask(opath, 8), torch.from_numpy(one))
    with pytest.raises(ValueError, match="0..255"):
        load_mask(opath, 8, threshold=256)
    with pytest.raises(DatasetError, match="0..255"):
        load_dataset("mvtec", _mvtec_tree(tmp_path / "ds"), mask_threshold=300)


# --------------------------------------------------------------------------------------------- synthetic


def test_synth_layout_readme_and_masks(synth_root):
    readme = (synth_root / "README.txt").read_text()
    assert "seed: 0" in readme and "classes: weave, grain" in readme and "size: 128" in readme
    recs = load_dataset("mvtec", synth_root)
    for r in recs:
        img = Image.open(r.path)
        assert img.mode == "RGB" and img.size == (128, 128)
        if r.label:
            m = np.asarray(Image.open(r.mask_path))
            assert m.shape == (128, 128) and set(np.unique(m)) <= {0, 255}
            assert 0.005 <= (m > 0).mean() <= 0.05, (r.relpath, (m > 0).mean())
            # the written files are exactly render_image's output
            index = int(r.path.stem)
            clean, image, mask = synth.render_image(r.cls, index, seed=0, group=r.defect)
            np.testing.assert_array_equal(np.asarray(img), image)
            np.testing.assert_array_equal(m > 0, mask)


@pytest.mark.parametrize("cls", ["weave", "grain"])
@pytest.mark.parametrize("defect", DEFECT_TYPES)
def test_synth_masks_are_exactly_the_changed_pixels(cls, defect):
    for index in range(6):
        clean, image, mask = synth.render_image(cls, index, seed=3, group=defect, size=96)
        changed = (image != clean).any(axis=-1)
        assert np.array_equal(changed, mask)
        assert 0.005 <= mask.mean() <= 0.05
        diff = np.abs(image.astype(float) - clean.astype(float)).mean(-1)[mask].mean()
        assert diff > 15  # visible
    c2, i2, m2 = synth.render_image(cls, 0, seed=3, group="train", size=96)
    assert np.array_equal(c2, i2) and not m2.any()


def test_synth_deterministic(tmp_path):
    kw = dict(classes=("weave", "grain", "custom"), n_train=2, n_test_good=1, n_test_defect=1, size=64)
    a = make_synthetic(tmp_path / "a", seed=5, **kw)
    b = make_synthetic(tmp_path / "b", seed=5, **kw)
    c = make_synthetic(tmp_path / "c", seed=6, **kw)
    ha, hb, hc = _tree_hash(a), _tree_hash(b), _tree_hash(c)
    assert ha == hb and len(ha) == 3 * (2 + 1 + 3 * 2) + 1
    assert ha.keys() == hc.keys()
    assert all(ha[k] != hc[k] for k in ha if k.endswith(".png") and "_mask" not in k)
    assert list_classes("mvtec", a) == ["custom", "grain", "weave"]


def test_synth_overwrite(tmp_path):
    out = tmp_path / "tree"
    out.mkdir()  # an empty folder is fine
    kw = dict(classes=("grain",), n_train=1, n_test_good=1, n_test_defect=1, size=32)
    assert make_synthetic(out, **kw) == out
    with pytest.raises(FileExistsError, match="not empty"):
        make_synthetic(out, **kw)
    make_synthetic(out, overwrite=True, seed=1, **kw)
    assert "seed: 1" in (out / "README.txt").read_text()
    (out / "stray.txt").write_text("x")  # a file the generator did not write: the folder is no longer only ours
    with pytest.raises(FileExistsError, match="not a synthetic tree written by zsad"):
        make_synthetic(out, overwrite=True, **kw)
    assert (out / "stray.txt").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["tree"]  # no temporary folder left behind


# -------------------------------------------------------------------------------------- few-shot sampling


def _fade_dataloader_picks(n: int, shots: int, seed: int) -> list[int]:
    """Replicate FADE's reference loader: iterate once, seed the global RNG, take the first shots of a fresh pass."""
    loader = torch.utils.data.DataLoader(list(range(n)), batch_size=1, shuffle=True)
    for _ in loader:
        pass
    torch.manual_seed(seed)
    return [int(batch[0]) for batch in itertools.islice(loader, shots)]


@pytest.mark.parametrize("n,shots,seed", [(5, 1, 0), (8, 4, 0), (37, 3, 1), (37, 37, 42), (220, 8, 7)])
def test_fade_sampler_matches_dataloader(n, shots, seed):
    recs = _records(n, shuffle_seed=seed)
    pool = sorted(recs, key=lambda r: str(r.path))
    before = torch.get_rng_state()
    picked = sample_references(recs, shots, seed)
    assert torch.equal(torch.get_rng_state(), before)  # the caller's global RNG is untouched
    torch.manual_seed(1234)
    expected = [pool[i] for i in _fade_dataloader_picks(n, shots, seed)]
    assert picked == expected


def test_fade_sampler_indexes_csv_order_when_given():
    n = 12
    recs = [dataclasses.replace(r, source_order=int(r.path.stem) * 7 % n) for r in _records(n)]
    pool = sorted(recs, key=lambda r: r.source_order)
    torch.manual_seed(0)
    expected = [pool[i] for i in _fade_dataloader_picks(n, 4, 0)]
    assert sample_references(recs, 4, 0) == expected


def test_samplers_deterministic_distinct_and_seeded():
    recs = _records(20)
    pool = sorted(recs, key=lambda r: str(r.path))
    for sampler in ("fade", "numpy"):
        picks = [tuple(sample_references(recs, 5, s, sampler=sampler)) for s in range(6)]
        assert picks[0] == tuple(sample_references(list(reversed(recs)), 5, 0, sampler=sampler))
        assert len(set(picks)) > 1
        assert all(len(set(p)) == 5 for p in picks)
    np_state = np.random.get_state()[1].copy()
    expected = [pool[i] for i in np.random.default_rng(3).choice(20, 4, replace=False)]
    assert sample_references(recs, 4, 3, sampler="numpy") == expected
    assert np.array_equal(np.random.get_state()[1], np_state)


def test_sampler_errors(synth_root):
    recs = _records(4, cls="screw")
    with pytest.raises(DatasetError, match=r"'screw'.*5 shots.*only 4"):
        sample_references(recs, 5, 0)
    with pytest.raises(ValueError, match="shots"):
        sample_references(recs, 0, 0)
    with pytest.raises(DatasetError, match="one class"):
        sample_references(recs + _records(2, cls="nut"), 1, 0)
    with pytest.raises(DatasetError, match="no train records"):
        sample_references([], 1, 0)
    with pytest.raises(DatasetError, match="must be normal"):
        sample_references(recs + [dataclasses.replace(recs[0], path=Path("/x.png"), label=1)], 1, 0)
    with pytest.raises(ValueError, match="unknown sampler"):
        sample_references(recs, 1, 0, sampler="random")
    train = load_dataset("mvtec", synth_root, classes="weave", split="train")
    refs = sample_references(train, 2, 0)
    assert len(refs) == 2 and all(r in train for r in refs)
