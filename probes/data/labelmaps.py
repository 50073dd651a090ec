"""Label-map images and small JSON files: read with errors that name the file, write atomically.

Shared by the segmentation datasets (ADE20K, ADE20K-Part-234, Pascal-Part, LIP). COCO-style instance masks
are written as uncompressed RLE (`counts` a list of run lengths), which pycocotools and detectron2 accept.
"""
from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
from PIL import Image

from probes.data.errors import DatasetFormatError
from probes.fileio import write_bytes_atomic


def open_image(path: str | os.PathLike, what: str) -> Image.Image:
    """The image, fully decoded (the file is closed again), in its stored mode."""
    path = Path(path)
    if not path.is_file():
        raise DatasetFormatError(path, "file not found", expected=what)
    try:
        with Image.open(path) as image:
            image.load()
            return image
    except (OSError, SyntaxError, ValueError) as error:
        raise DatasetFormatError(path, f"unreadable image ({error})", expected=what) from None


def read_label_png(path: str | os.PathLike, modes: tuple, num_values: int, ignore: int | None = None,
                   what: str = "a label map") -> np.ndarray:
    """The label array of a PNG whose mode is one of `modes` and whose values are 0..num_values-1 or `ignore`."""
    path = Path(path)
    image = open_image(path, what)
    if image.mode not in modes:
        raise DatasetFormatError(path, f"PNG mode {image.mode}", field="mode", expected=what)
    labels = np.array(image)          # mode P: the palette indices are the labels
    allowed = labels < num_values
    if ignore is not None:
        allowed |= labels == ignore
    if not allowed.all():
        y, x = np.argwhere(~allowed)[0]
        raise DatasetFormatError(path, f"pixel (x={x}, y={y}) has value {labels[y, x]}", field="pixel value",
                                 expected=what)
    return labels


def write_png(path: str | os.PathLike, array: np.ndarray) -> Path:
    """uint8 [H, W] -> mode L, uint16 [H, W] -> mode I;16, uint8 [H, W, 3] -> RGB; written atomically."""
    array = np.ascontiguousarray(array)
    if array.dtype not in (np.uint8, np.uint16) or array.ndim not in (2, 3):
        raise ValueError(f"write_png takes uint8/uint16 [H, W] or uint8 [H, W, 3], got {array.dtype} {array.shape}")
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return write_bytes_atomic(path, buffer.getvalue())


def present_labels(labels: np.ndarray, ignore: int | None) -> list[int]:
    """Sorted distinct values of a label map, without `ignore`."""
    values = np.unique(labels)
    return [int(v) for v in values if ignore is None or v != ignore]


def rle_encode(mask: np.ndarray) -> dict:
    """COCO uncompressed RLE of a boolean mask: column-major run lengths starting with a background run."""
    mask = np.asarray(mask, dtype=bool)
    flat = mask.flatten(order="F").astype(np.uint8)
    boundaries = np.concatenate([[0], np.flatnonzero(np.diff(flat)) + 1, [flat.size]])
    runs = np.diff(boundaries).tolist()
    if flat.size and flat[0] == 1:
        runs = [0] + runs
    return {"counts": [int(r) for r in runs], "size": [int(mask.shape[0]), int(mask.shape[1])]}


def mask_bbox(mask: np.ndarray) -> list[float]:
    """COCO box [x, y, width, height] of the True pixels ([0, 0, 0, 0] for an empty mask)."""
    rows, cols = np.nonzero(np.asarray(mask, dtype=bool))
    if len(rows) == 0:
        return [0.0, 0.0, 0.0, 0.0]
    x0, y0 = cols.min(), rows.min()
    return [float(x0), float(y0), float(cols.max() - x0 + 1), float(rows.max() - y0 + 1)]


def read_json(path: str | os.PathLike, what: str):
    path = Path(path)
    if not path.is_file():
        raise DatasetFormatError(path, "file not found", expected=what)
    try:
        with open(path, "rb") as handle:
            return json.load(handle)
    except json.JSONDecodeError as error:
        raise DatasetFormatError(path, f"invalid JSON: {error.msg}", line=error.lineno, expected=what) from None
