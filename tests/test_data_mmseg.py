"""The authors' mmseg layouts: presets, reduce_zero_label, generated data, the LIP -> lip-19 converter.

References: docs/protocols.md#segmentation-class-sets (class counts 209/59/193/16/19 and the named
59/16/19 lists), docs/datasets.md#ade20k-part-209, docs/datasets.md#pascal-part-193-and-pascal-object-16 and
docs/datasets.md#lip (folders), and mmseg's reduce_zero_label rule, worked out by hand below.
"""
from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image
from scipy.ndimage import binary_erosion

from probes.data.errors import DatasetFormatError
from probes.data.lip import LIP
from probes.data.mmseg_layout import PRESETS, MMSegLayout, check, convert_lip, prepare, reduce_zero_label
from probes.data.mmseg_synth import region_colours
from probes.data.synth import synth

LIP_19 = ["Hat", "Hair", "Glove", "Sunglasses", "UpperClothes", "Dress", "Coat", "Socks", "Pants", "Jumpsuits",
          "Scarf", "Skirt", "Face", "Left-arm", "Right-arm", "Left-leg", "Right-leg", "Left-shoe", "Right-shoe"]
PASCAL_16 = ["aeroplane", "bicycle", "bird", "bottle", "bus", "car", "cat", "cow", "dog", "horse", "motorbike",
             "person", "pottedplant", "sheep", "train", "tvmonitor"]
EXPECTED = {   # preset: (classes, image folder of train, label folder of val)
    "ade20k-part-209": (209, "img/train", "ann/val"),
    "ade20k-object-59": (59, "images/training", "annotations/validation"),
    "pascal-part-193": (193, "img/train", "ann/val"),
    "pascal-object-16": (16, "img/train", "ann/val"),
    "lip-19": (19, "img/train", "ann/val"),
}


def test_reduce_zero_label_by_hand():
    raw = np.array([[0, 1, 2], [255, 19, 209]], dtype=np.uint8)
    assert reduce_zero_label(raw).tolist() == [[255, 0, 1], [255, 18, 208]]


def test_presets_class_lists():
    assert set(PRESETS) == set(EXPECTED)
    for name, (count, _, _) in EXPECTED.items():
        assert PRESETS[name].num_classes == count
    assert PRESETS["ade20k-part-209"].class_names[0] == "part_0" and PRESETS["ade20k-part-209"].class_names[-1] == "part_208"
    assert PRESETS["pascal-part-193"].class_names[-1] == "part_192" and not PRESETS["pascal-part-193"].names_known
    ade59 = PRESETS["ade20k-object-59"].class_names
    assert (ade59[0], ade59[6], ade59[23], ade59[-1]) == ("building", "person", "chest of drawers", "clock")
    assert list(PRESETS["pascal-object-16"].class_names) == PASCAL_16
    assert list(PRESETS["lip-19"].class_names) == LIP_19
    assert (PRESETS["lip-19"].crop_size, PRESETS["pascal-part-193"].slide_stride) == (320, 161)


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    base = tmp_path_factory.mktemp("mmseg")
    return {name: synth(name, base / name, seed=0) for name in EXPECTED}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_generated_layout_reads_back(roots, name):
    count, train_images, val_labels = EXPECTED[name]
    root = roots[name]
    train, val = MMSegLayout(root, name, "train"), MMSegLayout(root, name, "val")
    assert (len(train), len(val), train.num_classes) == (8, 4, count)
    assert train.samples[0].image_path.parent == root / train_images
    assert val.samples[0].label_path.parent == root / val_labels
    assert sorted(os.listdir(root / train_images)) == [f"{s.stem}.jpg" for s in train.samples]
    train_classes = set()
    for dataset in (train, val):
        for index, sample in enumerate(dataset.samples):
            with Image.open(sample.label_path) as png:
                assert png.mode == "L"
                raw = np.array(png)
            assert np.array_equal(dataset.load_raw_label(index), raw) and raw.max() <= count and (raw == 0).any()
            reduced = dataset.load_label(index)
            assert np.array_equal(reduced == 255, raw == 0) and np.array_equal(reduced[raw > 0], raw[raw > 0] - 1)
            present = set(np.unique(reduced[reduced != 255]).tolist())
            if dataset is train:
                train_classes |= present
            else:
                assert present <= train_classes          # validation only uses classes seen in training
    if count <= 32:                                      # 8 images x 4 regions cover every class
        assert train_classes == set(range(count))


def test_regions_carry_their_class_colour(roots):
    dataset = MMSegLayout(roots["pascal-object-16"], "pascal-object-16", "train")
    colours = np.array(region_colours(16), dtype=float)
    hits = total = 0
    for index in range(len(dataset)):
        raw = dataset.load_raw_label(index)
        pixels = np.asarray(dataset.load_image(index)).astype(float)
        for value in np.unique(raw[raw > 0]):
            interior = binary_erosion(raw == value, iterations=4)
            if interior.sum() < 50:
                continue
            mean = pixels[interior].mean(0)
            total += 1
            hits += int(np.abs(colours - mean).max(1).argmin() == value - 1)   # nearest palette colour
    assert total >= 16 and hits == total


def test_check_reports_counts(roots):
    report = check(roots["lip-19"], "lip-19")
    assert report["ok"] and report["counts"]["train images"] == 8 and report["counts"]["classes present"] == 19
    assert list(report["class_histogram"])[0] == "0 Hat"


def test_convert_lip_to_lip19_is_exact_and_resumable(tmp_path):
    source = synth("lip", tmp_path / "lip", seed=2)
    target = tmp_path / "lip19"
    convert_lip(source, target)
    for split in ("train", "val"):
        original, converted = LIP(source, split), MMSegLayout(target, "lip-19", split)
        assert sorted(s.stem for s in original.samples) == [s.stem for s in converted.samples]
        for sample in converted.samples:
            label = original.label_dir / f"{sample.stem}.png"
            assert sample.label_path.read_bytes() == label.read_bytes()
    first = MMSegLayout(target, "lip-19", "val").samples[0]
    first.label_path.unlink()                    # (a hard link to the source: replace it, do not write into it)
    first.label_path.write_bytes(b"truncated")                           # an earlier run died mid-copy
    (first.label_path.parent / f".{first.label_path.name}.partial").write_bytes(b"x")
    before = {p: p.stat().st_mtime_ns for p in target.rglob("*.jpg")}
    prepare(target, "lip-19", source=source)                             # the CLI path of the same converter
    assert first.label_path.read_bytes() == (LIP(source, "val").label_dir / f"{first.stem}.png").read_bytes()
    assert {p: p.stat().st_mtime_ns for p in target.rglob("*.jpg")} == before      # untouched when complete
    assert not list(target.rglob("*.partial"))
    assert check(target, "lip-19")["ok"]


# --- bad input ------------------------------------------------------------------------------------------
def test_error_value_above_the_class_count(roots, tmp_path):
    dataset = MMSegLayout(roots["pascal-object-16"], "pascal-object-16", "val")
    raw = dataset.load_raw_label(0)
    raw[10, 12] = 17
    path = tmp_path / "bad.png"
    Image.fromarray(raw).save(path)
    from probes.data.mmseg_layout import read_raw_label
    with pytest.raises(DatasetFormatError) as caught:
        read_raw_label(path, 16)
    message = str(caught.value)
    assert "bad.png" in message and "pixel (x=12, y=10) has value 17" in message and "1..16 = classes" in message


def test_error_image_without_label(roots, tmp_path):
    import shutil
    root = tmp_path / "copy"
    shutil.copytree(roots["lip-19"], root)
    stem = MMSegLayout(root, "lip-19", "val").samples[2].stem
    (root / "ann" / "val" / f"{stem}.png").unlink()
    with pytest.raises(DatasetFormatError) as caught:
        MMSegLayout(root, "lip-19", "val")
    assert f"ann/val/{stem}.png: no label map for {stem}.jpg" in str(caught.value)


def test_error_missing_layout_names_the_folders(tmp_path):
    with pytest.raises(DatasetFormatError) as caught:
        MMSegLayout(tmp_path, "ade20k-object-59", "train")
    assert "images/training: folder not found" in str(caught.value)
    assert "annotations/training/*.png" in str(caught.value)
    with pytest.raises(DatasetFormatError, match="drive.google.com"):
        prepare(tmp_path, "pascal-part-193")
