"""The paper's figure patches: every image of a folder cut into 7 x 7 overlapping 224 x 224 patches
(probes.grid.image_patches), each patch encoded as its own image."""
from __future__ import annotations

import functools
import hashlib
import os

import numpy as np
import torch

from probes.grid import PER_SIDE, image_patches


@functools.lru_cache(maxsize=2)
def _patches(path: str) -> list:
    # Items of one image are consecutive: cut it once, not 49 times.
    return image_patches(path)[0]


class PatchDataset(torch.utils.data.Dataset):
    def __init__(self, paths, transform):
        self.paths, self.transform = list(paths), transform

    def __len__(self) -> int:
        return len(self.paths) * PER_SIDE * PER_SIDE

    def __getitem__(self, index: int):
        image, patch = divmod(index, PER_SIDE * PER_SIDE)
        return self.transform(_patches(self.paths[image])[patch]), image


class ImagePatchView:
    """Item ``i * 49 + r * 7 + c`` = patch (row r, column c) of image i; its label is the image index."""

    def __init__(self, paths, transform):
        self.paths = [str(p) for p in paths]
        self.transform = transform
        self.dataset = PatchDataset(self.paths, transform)
        self.labels = np.repeat(np.arange(len(self.paths)), PER_SIDE * PER_SIDE)
        self.class_names = [os.path.basename(p) for p in self.paths]
        self.split = "all"

    def __len__(self) -> int:
        return len(self.dataset)

    def index(self, path: str, row: int, col: int) -> int:
        if not (0 <= row < PER_SIDE and 0 <= col < PER_SIDE):
            raise ValueError(f"patch ({row}, {col}) is outside the {PER_SIDE} x {PER_SIDE} grid")
        return self.paths.index(str(path)) * PER_SIDE * PER_SIDE + row * PER_SIDE + col

    def crop(self, index: int):
        image, patch = divmod(index, PER_SIDE * PER_SIDE)
        return _patches(self.paths[image])[patch]

    def identity(self) -> dict:
        digest = hashlib.sha256()
        for path in self.paths:
            stat = os.stat(path)
            digest.update(f"{path}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
        return {"view": "image_patches_7x7", "files_sha256": digest.hexdigest(), "count": len(self.paths),
                "transform": self.transform.describe()}

    def describe(self) -> dict:
        return {"images": len(self.paths), "patches_per_image": PER_SIDE * PER_SIDE}
