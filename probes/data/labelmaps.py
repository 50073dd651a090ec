"""Label-map images and small JSON files: read with errors that name the file, write atomically.

Shared by the segmentation datasets (ADE20K, ADE20K-Part-234, Pascal-Part, LIP, the mmseg layouts), as are
the walk over every label map that their `check` reports are built from and the OV-PARTS image/part-map
layout. COCO-style instance masks are written as uncompressed RLE (`counts` a list of run lengths), which
pycocotools and detectron2 accept.
"""
from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np
from PIL import Image

from probes.data.errors import DatasetFormatError
from probes.data.records import require_dir
from probes.data.report import add_problem
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


def checked_label_maps(report: dict, splits: Iterable[str], open_split: Callable[[str], Any],
                       load_label: Callable[[Any, int], np.ndarray],
                       label_path: Callable[[Any], Path]) -> Iterator[np.ndarray]:
    """The label map of every sample of every split, for a dataset's `check` to count.

    A split that does not open and a label map that does not decode are added to `report` as problems and
    skipped; a label map whose size differs from its image's is a problem too, but still yielded. Each
    split's image count goes into ``report["counts"]``. Only the images' headers are read.
    """
    for split in splits:
        try:
            dataset = open_split(split)
        except DatasetFormatError as error:
            add_problem(report, error)
            continue
        report["counts"][f"{split} images"] = len(dataset)
        for index, sample in enumerate(dataset.samples):
            try:
                labels = load_label(dataset, index)
            except DatasetFormatError as error:
                add_problem(report, error)
                continue
            with Image.open(sample.image_path) as image:
                if image.size != labels.shape[::-1]:
                    add_problem(report, f"{label_path(sample)}: {labels.shape[1]}x{labels.shape[0]} label map for a "
                                        f"{image.size[0]}x{image.size[1]} image")
            yield labels


def ov_parts_part_maps(root: str | os.PathLike, folder: str, split: str) -> tuple[Path, list[tuple[Path, Path]]]:
    """OV-PARTS' layout (ADE20KPart234/, PascalPart116/): ``images/<split>/<stem>.jpg`` with one part map
    ``annotations_detectron2_part/<split>/<stem>.png`` each.

    `root` is the `folder` itself or a folder holding it. Returns that folder and every (image, part map)
    pair in file-name order; an image without its part map is an error.
    """
    root = Path(root)
    if (root / folder).is_dir():
        root = root / folder
    image_dir = require_dir(root / "images" / split, f"{folder}/images/{split}/")
    part_dir = require_dir(root / "annotations_detectron2_part" / split,
                           f"{folder}/annotations_detectron2_part/{split}/")
    pairs = []
    for image_path in sorted(image_dir.glob("*.jpg")):
        part_path = part_dir / f"{image_path.stem}.png"
        if not part_path.is_file():
            raise DatasetFormatError(part_path, f"part map missing for {image_path.name}",
                                     expected="annotations_detectron2_part/<split>/<stem>.png per image")
        pairs.append((image_path, part_path))
    return root, pairs
