"""Classification tasks: a train view and an evaluation view with one class list (docs/protocols.md#part-classification).

- ``cub`` / ``coco``: 4-way / 3-way part classification on the keypoint crops of the part database; train =
  CUB ``is_train=1`` images / COCO train2017, evaluation = ``is_train=0`` / val2017. The official
  transforms: training crops PIL-bicubic ``Resize(resize)`` + ``CenterCrop(size)``, evaluation crops resized to
  size x size, with resize = round(size x 256 / 224) (256 for a 224 model).
- ``cifar10``: train -> test; ``imagenet`` / ``folder``: ImageNet-style folders (``train/<class>/``,
  ``val/<class>/``; ``imagenet`` also requires the 1000 classes). Whole images take one transform for both
  splits (``image_transform``: ``eval``, the encoder's own Resize + CenterCrop, or ``resize``).

No random augmentation: features are computed once and cached.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from probes.options import ConfigError
from probes.views.objects import cifar_split
from probes.views.parts import PartCropOptions, PartCropView, part_database
from probes.views.transforms import ResizeCenterCrop, SquareResize, normalization
from probes.views.transforms import image_transform as make_image_transform

DATASETS = ("cub", "coco", "cifar10", "imagenet", "folder")
PART_DATASETS = ("cub", "coco")


@dataclass
class Task:
    dataset: str             # record name: cub, coco, cifar10, imagenet, folder
    train: object            # a view
    eval: object             # a view
    class_names: list

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def describe(self) -> dict:
        """Data-side settings and counts for records."""
        out = {"train_split": self.train.split, "eval_split": self.eval.split,
               "num_train": len(self.train), "num_eval": len(self.eval)}
        train = self.train.describe()
        if isinstance(self.train, PartCropView):
            out.update({k: v for k, v in train.items() if k not in ("num_items", "part_counts")})
            out.update(train_counts=train["part_counts"], eval_counts=self.eval.describe()["part_counts"])
            if "image_split" in self.train.db.options:
                out["image_split"] = self.train.db.options["image_split"]
        else:
            out.update(train)
        return out

    def notes(self) -> dict:
        from probes.views.checks import left_out_notes

        notes = {"train_transform": self.train.transform.describe(), "eval_transform": self.eval.transform.describe()}
        if isinstance(self.train, PartCropView):
            notes["crop_side"] = self.train.db.options["crop_side"]
        return {**notes, **left_out_notes(self.train, self.eval)}


class FolderView:
    """One split of an image folder through a transform."""

    def __init__(self, folder, root, transform):
        self.folder, self.root, self.transform = folder, str(Path(root).resolve()), transform
        self.dataset = folder
        self.labels = np.asarray(folder.targets, dtype=np.int64)
        self.class_names = list(folder.classes)
        self.split = folder.split

    def __len__(self) -> int:
        return len(self.labels)

    def identity(self) -> dict:
        digest = hashlib.sha256()
        for path, label in self.folder.samples:
            stat = os.stat(path)
            digest.update(f"{path}|{label}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
        return {"view": "image_folder", "root": self.root, "split": self.split, "files_sha256": digest.hexdigest(),
                "transform": self.transform.describe()}

    def describe(self) -> dict:
        return {"image_transform": self.transform.kind}


def build_task(dataset: str, root, encoder, normalize: str, crops: PartCropOptions | None = None,
               image_transform: str = "eval", max_per_class: int | None = None) -> Task:
    """The train and evaluation views of ``dataset``, sized for ``encoder``."""
    if dataset not in DATASETS:
        raise ConfigError(f"--dataset {dataset!r}: expected one of {', '.join(DATASETS)}")
    if not Path(root).exists():
        raise ConfigError(f"--data-root {root}: does not exist (the {dataset} dataset folder)")
    mean, std = normalization(normalize, encoder)
    size = int(encoder.crop_size)
    if dataset in PART_DATASETS:
        if crops.crop == "dense":
            raise ConfigError("--crop dense is a retrieval protocol; part classification trains on crops "
                              "(official-code or paper)")
        resize = round(size * 256 / 224)
        train_db = part_database(dataset, root, crops, split="train")
        eval_db = part_database(dataset, root, crops, split="test")
        train = PartCropView(train_db, ResizeCenterCrop(resize, size, "bicubic", mean, std))
        evaluation = PartCropView(eval_db, SquareResize(size, mean, std))
        return Task(dataset, train, evaluation, list(train_db.class_names))
    transform = make_image_transform(image_transform, encoder, normalize)
    if dataset == "cifar10":
        train = cifar_split(root, True, transform, max_per_class)
        test = cifar_split(root, False, transform, max_per_class)
        return Task(dataset, train, test, train.class_names)
    from probes.data.folder import image_folder_splits

    train, val = image_folder_splits(root, transform, transform)
    if dataset == "imagenet" and len(train.classes) != 1000:
        raise ConfigError(f"{root}/train has {len(train.classes)} class folders, ImageNet-1k has 1000; "
                          f"use --dataset folder for other image folders")
    return Task(dataset, FolderView(train, root, transform), FolderView(val, root, transform), list(train.classes))
