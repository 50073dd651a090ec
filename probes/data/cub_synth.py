"""A small CUB-200-2011 in the official layout, with planted parts (docs/CONTRACTS.md).

Every visible part p of an image is a filled disk of PART_COLOURS[p - 1] centred on its part_locs.txt
location, radius 0.2 x distance to the nearest other visible part of that image; everything else is
noise in [80, 176]. Parts of one image lie >= 48 px apart (jittered 56 px grid), some coordinates are
half pixels (real part locations are medians of clicks).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from probes.data import cub
from probes.data.drawing import jittered_grid, noise_background, plant_disks, save_jpeg
from probes.data.generated import generator
from probes.fileio import write_bytes_atomic

# One colour per CUB part, index = part_id - 1. The paper's four parts get the primaries so that they are
# the easiest to tell apart: left wing yellow, right eye red, right leg green, tail blue.
PART_COLOURS = (
    (255, 128, 0),   # 1 back
    (128, 0, 255),   # 2 beak
    (0, 128, 255),   # 3 belly
    (128, 255, 0),   # 4 breast
    (255, 0, 128),   # 5 crown
    (0, 255, 128),   # 6 forehead
    (255, 0, 255),   # 7 left eye
    (0, 255, 255),   # 8 left leg
    (255, 255, 0),   # 9 left wing
    (128, 0, 0),     # 10 nape
    (255, 0, 0),     # 11 right eye
    (0, 255, 0),     # 12 right leg
    (0, 128, 0),     # 13 right wing
    (0, 0, 255),     # 14 tail
    (0, 0, 128),     # 15 throat
)

# The first classes of the real classes.txt; image files use the capitalisation of the real release.
CLASS_DIRS = ("001.Black_footed_Albatross", "002.Laysan_Albatross", "003.Sooty_Albatross",
              "004.Groove_billed_Ani", "005.Crested_Auklet", "006.Least_Auklet", "007.Parakeet_Auklet",
              "008.Rhinoceros_Auklet")
CELL = 56


@generator
def synth_cub(out_dir: str | os.PathLike, seed: int = 0, images: int = 40, classes: int = 4,
              visible_probability: float = 0.75, paper_visible_probability: float = 0.9) -> Path:
    """Write out_dir/CUB_200_2011/ and return out_dir (the root CUB200 takes)."""
    if not 1 <= classes <= len(CLASS_DIRS):
        raise ValueError(f"classes must be 1..{len(CLASS_DIRS)}, got {classes}")
    if images < 3:
        raise ValueError(f"images must be >= 3 (two of them carry forced invisible paper parts), got {images}")
    rng = np.random.default_rng(seed)
    out_dir = Path(out_dir)
    folder = out_dir / cub.FOLDER
    paper_index = [part_id - 1 for part_id in cub.PAPER_PART_IDS]

    image_lines, label_lines, split_lines, box_lines, loc_lines = [], [], [], [], []
    per_class_count = [0] * classes
    for image_id in range(1, images + 1):
        class_index = (image_id - 1) % classes
        per_class_count[class_index] += 1
        number_in_class = per_class_count[class_index]
        class_dir = CLASS_DIRS[class_index]
        file_stem = "_".join(word.capitalize() for word in class_dir.split(".", 1)[1].split("_"))
        relative = f"{class_dir}/{file_stem}_{number_in_class:04d}_{int(rng.integers(100, 1_000_000))}.jpg"

        cols, rows = int(rng.integers(5, 8)), int(rng.integers(4, 7))
        width, height = cols * CELL + 16, rows * CELL + 16
        probability = np.full(cub.NUM_PARTS, visible_probability)
        probability[paper_index] = paper_visible_probability
        visible = rng.random(cub.NUM_PARTS) < probability
        if image_id == 2:
            visible[cub.PAPER_PART_IDS[3] - 1] = False       # tests need an invisible paper part: tail
        if image_id == 3:
            visible[cub.PAPER_PART_IDS[1] - 1] = False       # and right leg
        if visible.sum() < 2:
            visible[paper_index[:2]] = True

        grid = jittered_grid(rng, cols, rows, cell=CELL, half_pixels=True).reshape(-1, 2)
        shown = np.flatnonzero(visible)
        points = grid[rng.choice(len(grid), size=len(shown), replace=False)]
        pixels = noise_background(rng, height, width)
        plant_disks(pixels, points, shown, PART_COLOURS)
        save_jpeg(folder / "images" / relative, pixels)

        locations = np.zeros((cub.NUM_PARTS, 2))
        locations[shown] = points
        for part_index in range(cub.NUM_PARTS):
            x, y = locations[part_index]
            loc_lines.append(f"{image_id} {part_index + 1} {x:.1f} {y:.1f} {int(visible[part_index])}")
        x0, y0 = np.clip(points.min(0) - 20, 0, None)
        x1, y1 = np.minimum(points.max(0) + 20, (width - 1, height - 1))
        box_lines.append(f"{image_id} {x0:.1f} {y0:.1f} {x1 - x0:.1f} {y1 - y0:.1f}")
        image_lines.append(f"{image_id} {relative}")
        label_lines.append(f"{image_id} {class_index + 1}")
        split_lines.append(f"{image_id} {number_in_class % 2}")   # alternate within a class: both splits per class

    _write_lines(folder / "images.txt", image_lines)
    _write_lines(folder / "image_class_labels.txt", label_lines)
    _write_lines(folder / "train_test_split.txt", split_lines)
    _write_lines(folder / "bounding_boxes.txt", box_lines)
    _write_lines(folder / "classes.txt", [f"{i + 1} {CLASS_DIRS[i]}" for i in range(classes)])
    _write_lines(folder / "parts" / "parts.txt", [f"{i + 1} {name}" for i, name in enumerate(cub.PART_NAMES)])
    _write_lines(folder / "parts" / "part_locs.txt", loc_lines)
    return out_dir


def _write_lines(path: Path, lines: list[str]) -> None:
    write_bytes_atomic(path, ("\n".join(lines) + "\n").encode("utf-8"))
