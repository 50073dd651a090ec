"""Object views: whole CIFAR-10 images and COCO object crops (docs/protocols.md#object-retrieval).

- ``cifar_split(root, train, transform)``: every image of a CIFAR-10 split, each 32 x 32 array as a PIL
  image through ``transform``.
- ``coco_objects(root, split, rule, min_box_size, transform)``: one crop per non-crowd instance whose box is
  at least ``min_box_size`` px on both sides. ``rule``: ``square`` = the box pasted centred on a black square
  of side max(w, h) (aspect kept, no context), ``box`` = the box alone (aspect not kept when resized),
  ``context`` = the square of side max(w, h) centred on the box, cut from the image (zero outside it).
  Box edges are rounded outwards to whole pixels.

``max_per_class`` keeps the first N items of each class in dataset order (quick runs; recorded).
"""
from __future__ import annotations

import hashlib
import math
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image

OBJECT_CROPS = ("square", "box", "context")


def _stat_fingerprint(paths) -> str:
    digest = hashlib.sha256()
    for path in paths:
        stat = os.stat(path)
        digest.update(f"{path}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def limit_per_class(labels: np.ndarray, max_per_class: int | None) -> np.ndarray:
    """Indices kept: all, or the first ``max_per_class`` of each class in dataset order."""
    if not max_per_class:
        return np.arange(len(labels))
    keep, seen = [], {}
    for index, label in enumerate(labels.tolist()):
        if seen.get(label, 0) < max_per_class:
            keep.append(index)
            seen[label] = seen.get(label, 0) + 1
    return np.array(keep, dtype=np.int64)


class ArrayImages(torch.utils.data.Dataset):
    """uint8 [N, H, W, 3] images -> (transform(PIL image), label)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform):
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        return self.transform(Image.fromarray(self.images[index])), int(self.labels[index])


class ArrayImageView:
    """A split of an in-memory image dataset (CIFAR-10)."""

    def __init__(self, name: str, root, split: str, images: np.ndarray, labels: np.ndarray, class_names, transform,
                 fingerprint: str, max_per_class: int | None = None):
        keep = limit_per_class(np.asarray(labels), max_per_class)
        self.name, self.root, self.split, self.transform = name, str(root), split, transform
        self.labels = np.asarray(labels)[keep].astype(np.int64)
        self.class_names = list(class_names)
        self.dataset = ArrayImages(images[keep], self.labels, transform)
        self.max_per_class = max_per_class
        self._fingerprint = fingerprint

    def __len__(self) -> int:
        return len(self.labels)

    def identity(self) -> dict:
        return {"view": "images", "dataset": self.name, "root": self.root, "split": self.split, "count": len(self),
                "max_per_class": self.max_per_class, "content_sha256": self._fingerprint,
                "transform": self.transform.describe()}

    def describe(self) -> dict:
        out = {"image_transform": self.transform.kind}
        if self.max_per_class:
            out["max_per_class"] = self.max_per_class
        return out


def cifar_split(root, train: bool, transform, max_per_class: int | None = None) -> ArrayImageView:
    from probes.data.cifar import CIFAR10

    data = CIFAR10(root, train=train)
    digest = hashlib.sha256(data.data.tobytes() + np.asarray(data.labels).tobytes()).hexdigest()
    return ArrayImageView("cifar10", data.root, "train" if train else "test", data.data, np.asarray(data.labels),
                          data.classes, transform, digest, max_per_class)


def object_crop(image: Image.Image, bbox, rule: str) -> Image.Image:
    """The crop of a COCO box (x, y, w, h) under ``rule`` (see the module docstring)."""
    x, y, w, h = bbox
    x0, y0, x1, y1 = math.floor(x), math.floor(y), math.ceil(x + w), math.ceil(y + h)
    if rule == "box":
        return image.crop((x0, y0, x1, y1))
    side = max(x1 - x0, y1 - y0)
    if rule == "square":
        canvas = Image.new("RGB", (side, side))
        canvas.paste(image.crop((x0, y0, x1, y1)), ((side - (x1 - x0)) // 2, (side - (y1 - y0)) // 2))
        return canvas
    if rule == "context":
        left, top = (x0 + x1 - side) // 2, (y0 + y1 - side) // 2
        return image.crop((left, top, left + side, top + side))
    raise ValueError(f"object crop rule must be one of {OBJECT_CROPS}, got {rule!r}")


class ObjectCrops(torch.utils.data.Dataset):
    def __init__(self, items: list, rule: str, transform):
        self.items, self.rule, self.transform = items, rule, transform

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int):
        path, bbox, label = self.items[index]
        with Image.open(path) as image:
            crop = object_crop(image.convert("RGB"), bbox, self.rule)
        return self.transform(crop), int(label)


class ObjectCropView:
    """The object crops of one COCO instances split."""

    def __init__(self, root, split: str, rule: str, min_box_size: float, transform, max_per_class: int | None = None):
        from probes.data.coco import COCOInstances

        if rule not in OBJECT_CROPS:
            raise ValueError(f"object crop rule must be one of {OBJECT_CROPS}, got {rule!r}")
        inst = COCOInstances(root, split=split)
        category_ids = sorted(inst.categories)
        label_of = {category_id: i for i, category_id in enumerate(category_ids)}
        items = [(str(inst.images[a.image_id].path), a.bbox, label_of[a.category_id]) for a in inst.annotations
                 if not a.iscrowd and a.bbox[2] >= min_box_size and a.bbox[3] >= min_box_size]
        keep = limit_per_class(np.array([label for _, _, label in items], dtype=np.int64), max_per_class)
        self.items = [items[i] for i in keep]
        self.root, self.split, self.rule, self.min_box_size = str(root), split, rule, min_box_size
        self.max_per_class, self.transform = max_per_class, transform
        self.labels = np.array([label for _, _, label in self.items], dtype=np.int64)
        self.class_names = [inst.categories[c] for c in category_ids]
        self.dataset = ObjectCrops(self.items, rule, transform)
        self._annotation_file = inst.annotation_file

    def __len__(self) -> int:
        return len(self.items)

    def identity(self) -> dict:
        digest = hashlib.sha256(repr([(p, tuple(b), l) for p, b, l in self.items]).encode()).hexdigest()
        return {"view": "object_crops", "root": self.root, "split": self.split, "object_crop": self.rule,
                "min_box_size": self.min_box_size, "max_per_class": self.max_per_class, "items_sha256": digest,
                "files": _stat_fingerprint([self._annotation_file]), "transform": self.transform.describe()}

    def describe(self) -> dict:
        out = {"object_crop": self.rule, "min_box_size": self.min_box_size, "iscrowd": "excluded"}
        if self.max_per_class:
            out["max_per_class"] = self.max_per_class
        return out


def coco_objects(root, split: str, rule: str, min_box_size: float, transform,
                 max_per_class: int | None = None) -> ObjectCropView:
    return ObjectCropView(root, split, rule, min_box_size, transform, max_per_class)
