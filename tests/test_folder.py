"""Image-folder datasets: one class mapping for both splits, and clear errors for every malformed layout."""
from __future__ import annotations

import pytest
from PIL import Image

from probes.data.errors import DatasetFormatError
from probes.data.folder import ImageFolderSplit, image_folder_splits


def make_tree(root, layout):
    for split, classes in layout.items():
        for name, count in classes.items():
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                Image.new("RGB", (8, 6), (10 * i, 0, 0)).save(folder / f"{name}_{i}.png")
    return root


def test_val_without_a_class_keeps_the_training_indices(tmp_path):
    root = make_tree(tmp_path / "ds", {"train": {"cat": 2, "dog": 1, "emu": 2}, "val": {"cat": 1, "emu": 2}})
    train, val = image_folder_splits(root)
    assert train.classes == val.classes == ["cat", "dog", "emu"]
    assert sorted(train.targets) == [0, 0, 1, 2, 2]
    assert sorted(val.targets) == [0, 2, 2]          # plain ImageFolder would make emu = 1 here
    image, label = val[1]
    assert image.size == (8, 6) and label == 2


def test_malformed_layouts_are_reported_with_the_path(tmp_path):
    with pytest.raises(DatasetFormatError, match="does not exist"):
        image_folder_splits(tmp_path / "nowhere")
    root = make_tree(tmp_path / "a", {"train": {"cat": 1}})
    with pytest.raises(DatasetFormatError, match=r"val: split folder is missing"):
        image_folder_splits(root)
    root = make_tree(tmp_path / "b", {"train": {"cat": 1}, "val": {"cat": 1, "yak": 1}})
    with pytest.raises(DatasetFormatError, match=r"\['yak'\] are not training classes"):
        image_folder_splits(root)
    root = make_tree(tmp_path / "c", {"train": {"cat": 1, "dog": 0}, "val": {"cat": 1}})
    with pytest.raises(DatasetFormatError, match=r"dog: class folder holds no image"):
        image_folder_splits(root)
    (tmp_path / "d" / "train").mkdir(parents=True)
    with pytest.raises(DatasetFormatError, match="no class folders"):
        image_folder_splits(tmp_path / "d")
    with pytest.raises(ValueError, match="split must be one of"):
        ImageFolderSplit(tmp_path / "a", "test")


def test_an_unreadable_image_names_its_file(tmp_path):
    root = make_tree(tmp_path / "ds", {"train": {"cat": 1}, "val": {"cat": 1}})
    broken = root / "val" / "cat" / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    _, val = image_folder_splits(root)
    index = [p for p, _ in val.samples].index(str(broken))
    with pytest.raises(DatasetFormatError, match=r"broken\.jpg: cannot read the image"):
        val[index]
