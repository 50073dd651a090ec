"""LIP: official zip layout and the prepared flat tree read the same; label values are validated.

Reference values: docs/datasets.md#lip (20 labels, 0 = Background, folder and id-list names).
"""
from __future__ import annotations

import shutil
import zipfile

import numpy as np
import pytest
from PIL import Image
from scipy.ndimage import binary_erosion

from probes.data.errors import DatasetFormatError
from probes.data.lip import LIP, check, prepare
from probes.data.lip_synth import LABEL_COLOURS
from probes.data.synth import synth

SPEC_LABELS = ["Background", "Hat", "Hair", "Glove", "Sunglasses", "UpperClothes", "Dress", "Coat", "Socks", "Pants",
               "Jumpsuits", "Scarf", "Skirt", "Face", "Left-arm", "Right-arm", "Left-leg", "Right-leg", "Left-shoe",
               "Right-shoe"]


@pytest.fixture(scope="module")
def lip_root(tmp_path_factory):
    return synth("lip", tmp_path_factory.mktemp("lip"), seed=0)


def test_reads_official_layout_in_id_list_order(lip_root):
    train, val = LIP(lip_root, "train"), LIP(lip_root, "val")
    assert train.classes == SPEC_LABELS and len(train) == 8 and len(val) == 4
    ids = (lip_root / "TrainVal_images" / "train_id.txt").read_text().split()
    assert [s.stem for s in train.samples] == ids
    sample = train.samples[0]
    assert sample.image_path == lip_root / "TrainVal_images" / "train_images" / f"{ids[0]}.jpg"
    assert sample.label_path == lip_root / "TrainVal_parsing_annotations" / "train_segmentations" / f"{ids[0]}.png"
    assert all(stem.count("_") == 1 and stem.replace("_", "").isdigit() for stem in ids)   # <int>_<int>


def test_label_maps_are_mode_L_with_values_0_to_19_and_coloured_regions(lip_root):
    dataset = LIP(lip_root, "train")
    seen = set()
    for index, sample in enumerate(dataset.samples):
        with Image.open(sample.label_path) as png:
            assert png.mode == "L"
            raw = np.array(png)
        labels = dataset.load_label(index)
        assert np.array_equal(labels, raw) and labels.max() <= 19 and (labels == 0).any()
        pixels = np.asarray(Image.open(sample.image_path).convert("RGB")).astype(float)
        assert pixels.shape[:2] == labels.shape
        for value in np.unique(labels[labels > 0]):
            interior = binary_erosion(labels == value, iterations=4)    # away from JPEG-blurred edges
            if interior.sum() > 50:
                # noise of +-24 is clipped at 0 and 255, which moves the mean by up to ~6
                assert np.abs(pixels[interior].mean(0) - LABEL_COLOURS[value - 1]).max() < 14, (sample.stem, value)
        background = pixels[labels == 0]
        assert abs(background.mean() - 128) < 4
        seen |= set(np.unique(labels).tolist())
    assert seen == set(range(20))          # training cycles through every label


def _zip_folder(folder, archive):
    with zipfile.ZipFile(archive, "w") as zipped:
        for path in sorted(folder.rglob("*")):
            zipped.write(path, path.relative_to(folder.parent))


def test_prepare_unpacks_the_zips_including_a_nested_annotation_zip(lip_root, tmp_path):
    downloads, root = tmp_path / "downloads", tmp_path / "LIP"
    downloads.mkdir()
    _zip_folder(lip_root / "TrainVal_images", downloads / "TrainVal_images.zip")
    # The annotation zip holding only a nested copy of itself (the case mmseg's recipe handles).
    inner = tmp_path / "inner.zip"
    _zip_folder(lip_root / "TrainVal_parsing_annotations", inner)
    with zipfile.ZipFile(downloads / "TrainVal_parsing_annotations.zip", "w") as outer:
        outer.write(inner, "TrainVal_parsing_annotations/TrainVal_parsing_annotations.zip")
        outer.writestr("TrainVal_parsing_annotations/README_parsing.md", "labels 0..19")
    prepare(root, source=downloads)
    prepare(root, source=downloads)                      # a second run is a no-op
    for split in ("train", "val"):
        ours, original = LIP(root, split), LIP(lip_root, split)
        assert [s.stem for s in ours.samples] == [s.stem for s in original.samples]
        assert ours.samples[0].label_path.read_bytes() == original.samples[0].label_path.read_bytes()
    assert not list(root.rglob("*.partial")) and not (root / "TrainVal_parsing_annotations" / ".nested").exists()
    assert check(root)["ok"]


def test_prepared_flat_tree_without_id_lists_is_read_sorted(lip_root, tmp_path):
    shutil.copytree(lip_root / "TrainVal_images" / "val_images", tmp_path / "val_images")
    shutil.copytree(lip_root / "TrainVal_parsing_annotations" / "val_segmentations", tmp_path / "val_segmentations")
    dataset = LIP(tmp_path, "val")
    assert dataset.id_file is None
    assert [s.stem for s in dataset.samples] == sorted(s.stem for s in LIP(lip_root, "val").samples)


def test_check_counts_and_histogram(lip_root):
    report = check(lip_root)
    assert report["ok"] and report["counts"] == {"train images": 8, "val images": 4}
    assert list(report["class_histogram"])[0] == "0 Background" and len(report["class_histogram"]) == 20


# --- bad input ------------------------------------------------------------------------------------------
@pytest.fixture
def val_copy(lip_root, tmp_path):
    shutil.copytree(lip_root, tmp_path / "lip")
    return tmp_path / "lip"


def test_error_label_value_out_of_range(val_copy):
    dataset = LIP(val_copy, "val")
    path = dataset.samples[1].label_path
    labels = np.array(Image.open(path))
    labels[3, 5] = 20
    Image.fromarray(labels).save(path)
    with pytest.raises(DatasetFormatError) as caught:
        dataset.load_label(1)
    message = str(caught.value)
    assert str(path) in message and "pixel (x=5, y=3) has value 20" in message and "values 0..19" in message
    assert not check(val_copy)["ok"]


def test_error_rgb_label_map(val_copy):
    dataset = LIP(val_copy, "val")
    path = dataset.samples[0].label_path
    Image.open(path).convert("RGB").save(path)
    with pytest.raises(DatasetFormatError, match="PNG mode RGB.*single-channel 8-bit"):
        dataset.load_label(0)


def test_error_id_without_image(val_copy):
    ids = val_copy / "TrainVal_images" / "val_id.txt"
    ids.write_text(ids.read_text() + "999_999\n")
    with pytest.raises(DatasetFormatError) as caught:
        LIP(val_copy, "val")
    assert "val_images/999_999.jpg: image of '999_999' not found" in str(caught.value)
    assert "val_id.txt" in str(caught.value)


def test_error_id_line_with_extension(val_copy):
    ids = val_copy / "TrainVal_images" / "val_id.txt"
    lines = ids.read_text().splitlines()
    ids.write_text("\n".join(lines[:2] + [lines[2] + ".jpg"] + lines[3:]) + "\n")
    with pytest.raises(DatasetFormatError, match=r"val_id.txt, line 3: .*without folder or extension"):
        LIP(val_copy, "val")


def test_error_wrong_layout(tmp_path):
    (tmp_path / "images").mkdir()
    with pytest.raises(DatasetFormatError, match="no train_images/ and train_segmentations/ folders"):
        LIP(tmp_path, "train")
