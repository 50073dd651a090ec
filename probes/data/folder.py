"""ImageNet-style image folders: ``ROOT/train/<class>/<image>`` and ``ROOT/val/<class>/<image>``.

Built on torchvision's ``ImageFolder`` (its image extensions and loader), with two guarantees it does not
give on its own:

* the class index comes from the **training** split's sorted class folders and the evaluation split uses
  the same mapping (``ImageFolder`` would renumber a ``val/`` that lacks a class, silently shifting every
  label after it); a ``val/`` class unknown to ``train/`` is an error;
* every problem is reported with the folder or file and what was expected (`DatasetFormatError`).

Items are ``(transform(image), label)``; an unreadable image raises with its path.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

from torchvision.datasets import ImageFolder
from torchvision.datasets.folder import IMG_EXTENSIONS, default_loader

from probes.data.errors import DatasetFormatError

SPLITS = ("train", "val")


def class_folders(split_dir: Path) -> list[str]:
    if not split_dir.is_dir():
        parent = split_dir.parent
        present = sorted(p.name for p in parent.iterdir() if p.is_dir()) if parent.is_dir() else []
        raise DatasetFormatError(split_dir, "split folder is missing",
                                 expected=f"{parent}/{{train,val}}/<class>/<image>; found folders {present}")
    classes = sorted(entry.name for entry in os.scandir(split_dir) if entry.is_dir())
    if not classes:
        raise DatasetFormatError(split_dir, "no class folders", expected="one sub-folder per class holding its images")
    return classes


class ImageFolderSplit(ImageFolder):
    """One split of an image-folder dataset, with class indices fixed by ``classes`` (sorted train classes)."""

    def __init__(self, root: str | os.PathLike, split: str = "train", transform: Callable | None = None,
                 classes: list[str] | None = None):
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        root = Path(root)
        if not root.is_dir():
            raise DatasetFormatError(root, "dataset folder does not exist", expected="a folder holding train/ and val/")
        split_dir = root / split
        here = class_folders(split_dir)
        self._fixed_classes = list(classes) if classes is not None else here
        unknown = sorted(set(here) - set(self._fixed_classes))
        if unknown:
            raise DatasetFormatError(split_dir, f"class folder(s) {unknown[:5]} are not training classes",
                                     expected=f"the class folders of {root / 'train'}")
        for name in here:
            folder = split_dir / name
            if not any(Path(folder, f).suffix.lower() in IMG_EXTENSIONS for _, _, files in os.walk(folder) for f in files):
                raise DatasetFormatError(folder, "class folder holds no image",
                                         expected=f"files with one of the extensions {', '.join(IMG_EXTENSIONS)}")
        super().__init__(str(split_dir), transform=transform, loader=self._load)
        self.split = split

    def find_classes(self, directory):
        # only the classes present here are scanned, but their indices are the training split's
        present = set(class_folders(Path(directory)))
        mapping = {name: i for i, name in enumerate(self._fixed_classes) if name in present}
        return list(self._fixed_classes), mapping

    @staticmethod
    def _load(path: str):
        try:
            return default_loader(path)
        except Exception as err:  # PIL raises several types for broken files
            raise DatasetFormatError(path, f"cannot read the image ({type(err).__name__}: {err})",
                                     expected="a readable image file") from None


def image_folder_splits(root: str | os.PathLike, train_transform: Callable | None = None,
                        eval_transform: Callable | None = None) -> tuple[ImageFolderSplit, ImageFolderSplit]:
    """``(train, val)`` of ``root`` with one class mapping (the sorted class folders of ``train/``)."""
    classes = class_folders(Path(root) / "train") if Path(root).is_dir() else None
    train = ImageFolderSplit(root, "train", train_transform, classes)
    val = ImageFolderSplit(root, "val", eval_transform, train.classes)
    return train, val
