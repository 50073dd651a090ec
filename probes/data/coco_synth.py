"""A small COCO 2017 (instances + person_keypoints, train2017 + val2017) with planted parts and objects.

Planted parts (docs/CONTRACTS.md): each keypoint with v = 2 is a filled disk of PART_COLOURS[k]
(k = 0-based keypoint index) with radius 0.2 x distance to the nearest other v = 2 keypoint of the image;
v = 1 (occluded) keypoints are annotated but not drawn; v = 0 ones are x = y = 0. All labelled keypoints
of an image lie >= 48 px apart (jittered 56 px grid). Objects of the instance file are boxes filled with
CATEGORY_COLOURS[category_id] striped at a category-specific angle and period, plus noise.

The format details readers trip over are all present: info + licenses, the 80 non-contiguous category ids,
12-digit file names, num_keypoints = count(v > 0), an iscrowd = 1 person with an uncompressed RLE, a
person with num_keypoints = 0, and persons with fewer than two visible paper keypoints.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from probes.data import coco
from probes.data.drawing import jittered_grid, noise_background, plant_disks, save_jpeg
from probes.data.generated import generator
from probes.fileio import write_json_atomic

# One colour per keypoint (index = keypoint id - 1). The paper's three get the primaries:
# nose red, right_wrist green, left_ankle blue.
PART_COLOURS = (
    (255, 0, 0),     # 1 nose
    (255, 0, 255),   # 2 left_eye
    (0, 255, 255),   # 3 right_eye
    (255, 128, 0),   # 4 left_ear
    (128, 0, 255),   # 5 right_ear
    (0, 128, 255),   # 6 left_shoulder
    (128, 255, 0),   # 7 right_shoulder
    (255, 0, 128),   # 8 left_elbow
    (0, 255, 128),   # 9 right_elbow
    (255, 255, 0),   # 10 left_wrist
    (0, 255, 0),     # 11 right_wrist
    (128, 0, 0),     # 12 left_hip
    (0, 128, 0),     # 13 right_hip
    (0, 0, 128),     # 14 left_knee
    (128, 128, 0),   # 15 right_knee
    (0, 0, 255),     # 16 left_ankle
    (128, 0, 128),   # 17 right_ankle
)
# Object categories drawn by default (non-contiguous ids on purpose) and their fill colours; the crowd
# region (category 1, person) is light grey. Levels 40/220 keep objects apart from the part colours.
OBJECT_CATEGORIES = (3, 18, 44, 62, 72, 90)       # car, dog, bottle, chair, tv, toothbrush
CATEGORY_COLOURS = {1: (225, 225, 225), 3: (220, 40, 40), 18: (40, 220, 40), 44: (40, 40, 220),
                    62: (220, 220, 40), 72: (220, 40, 220), 90: (40, 220, 220)}
STRIPE_ANGLES = (0.0, 45.0, 90.0, 135.0)          # degrees, chosen by category position
STRIPE_PERIODS = (8, 12, 16)                      # pixels

CELL, MARGIN = 56, 8
LICENSES = [
    {"url": "http://creativecommons.org/licenses/by-nc-sa/2.0/", "id": 1, "name": "Attribution-NonCommercial-ShareAlike License"},
    {"url": "http://creativecommons.org/licenses/by-nc/2.0/", "id": 2, "name": "Attribution-NonCommercial License"},
    {"url": "http://creativecommons.org/licenses/by-nc-nd/2.0/", "id": 3, "name": "Attribution-NonCommercial-NoDerivs License"},
    {"url": "http://creativecommons.org/licenses/by/2.0/", "id": 4, "name": "Attribution License"},
    {"url": "http://creativecommons.org/licenses/by-sa/2.0/", "id": 5, "name": "Attribution-ShareAlike License"},
    {"url": "http://creativecommons.org/licenses/by-nd/2.0/", "id": 6, "name": "Attribution-NoDerivs License"},
    {"url": "http://flickr.com/commons/usage/", "id": 7, "name": "No known copyright restrictions"},
    {"url": "http://www.usa.gov/copyright.shtml", "id": 8, "name": "United States Government Work"},
]
INFO = {"description": "COCO 2017 Dataset", "url": "http://cocodataset.org", "version": "1.0", "year": 2017,
        "contributor": "COCO Consortium", "date_created": "2017/09/01"}
PAPER_INDEX = [k - 1 for k in coco.PAPER_KEYPOINT_IDS]


@generator
def synth_coco(out_dir: str | os.PathLike, seed: int = 0, train_images: int = 20, val_images: int = 10,
               object_categories=OBJECT_CATEGORIES) -> Path:
    """Write out_dir/annotations/*.json, out_dir/train2017/, out_dir/val2017/; returns out_dir."""
    for category_id in object_categories:
        if category_id not in CATEGORY_COLOURS or category_id == 1:
            raise ValueError(f"object category {category_id} has no colour; choose from {OBJECT_CATEGORIES}")
    if min(train_images, val_images) < 2:
        raise ValueError("each split needs >= 2 images (the first two carry the special annotations)")
    rng = np.random.default_rng(seed)
    out_dir = Path(out_dir)
    state = {"next_ann_id": int(rng.integers(100_000, 200_000)), "used_image_ids": set()}
    for split, count in (("train2017", train_images), ("val2017", val_images)):
        images, instance_anns, keypoint_anns = [], [], []
        for index in range(count):
            image, instances, persons = _make_image(rng, state, out_dir / split, split, index, object_categories)
            images.append(image)
            instance_anns.extend(instances)
            keypoint_anns.extend(persons)
        categories = [{"supercategory": supercategory, "id": category_id, "name": name}
                      for category_id, (name, supercategory) in coco.CATEGORIES.items()]
        person_category = {"supercategory": "person", "id": 1, "name": "person",
                           "keypoints": list(coco.KEYPOINT_NAMES), "skeleton": [list(p) for p in coco.SKELETON]}
        write_json_atomic(out_dir / "annotations" / f"instances_{split}.json",
                          {"info": INFO, "licenses": LICENSES, "images": images, "annotations": instance_anns,
                           "categories": categories}, indent=None)
        write_json_atomic(out_dir / "annotations" / f"person_keypoints_{split}.json",
                          {"info": INFO, "licenses": LICENSES, "images": images, "annotations": keypoint_anns,
                           "categories": [person_category]}, indent=None)
    return out_dir


def _make_image(rng, state, image_dir: Path, split: str, index: int, object_categories):
    cols, rows = int(rng.integers(6, 8)), int(rng.integers(5, 7))
    width, height = cols * CELL + 2 * MARGIN, rows * CELL + 2 * MARGIN
    image_id = _new_image_id(rng, state)
    file_name = f"{image_id:012d}.jpg"
    pixels = noise_background(rng, height, width)
    free = np.ones((rows, cols), dtype=bool)          # grid cells not yet used by an object or a keypoint
    instances, persons = [], []

    def new_ann_id() -> int:
        state["next_ann_id"] += int(rng.integers(1_000, 50_000))   # far apart, like real COCO ids
        return state["next_ann_id"]

    # The first image of each split has a crowd (iscrowd = 1, uncompressed RLE), the second a person
    # too small to have keypoints (num_keypoints = 0).
    if index == 0:
        block = _take_block(rng, free)
        mask = _ellipse_mask(height, width, _block_box(rng, block))
        _fill_texture(rng, pixels, mask, CATEGORY_COLOURS[1], 0.0, 10)
        crowd = _crowd_annotation(new_ann_id(), image_id, mask)
        instances.append(crowd)
        persons.append(dict(crowd, keypoints=[0] * 51, num_keypoints=0))
    if index == 1:
        row, col = np.argwhere(free)[int(rng.integers(free.sum()))]
        free[row, col] = False
        x0, y0 = MARGIN + col * CELL + 12, MARGIN + row * CELL + 8
        small = _box_annotation(new_ann_id(), image_id, 1, x0, y0, x0 + 30, y0 + 40)
        instances.append(small)
        persons.append(dict(small, keypoints=[0] * 51, num_keypoints=0))

    # Objects: 1-2 boxes, each inside its own 2x2 block of cells.
    for _ in range(int(rng.integers(1, 3))):
        block = _take_block(rng, free)
        if block is None:
            break
        category_id = int(object_categories[int(rng.integers(len(object_categories)))])
        x0, y0, x1, y1 = _block_box(rng, block)
        _fill_object(rng, pixels, x0, y0, x1, y1, category_id, object_categories)
        instances.append(_box_annotation(new_ann_id(), image_id, category_id, x0, y0, x1, y1))

    # Persons: 1-3, each with its share of the free cells for its labelled keypoints.
    grid = jittered_grid(rng, cols, rows, cell=CELL, margin=MARGIN).astype(int)
    n_persons = int(rng.integers(1, 4))
    cells = [tuple(c) for c in rng.permutation(np.argwhere(free))]
    share = min(coco.NUM_KEYPOINTS, len(cells) // n_persons)
    visible_points, visible_parts = [], []
    for person_index in range(n_persons):
        force_few = index == 1 and person_index == n_persons - 1
        v = _visibilities(rng, share, force_few)
        keypoints = np.zeros((coco.NUM_KEYPOINTS, 3), dtype=int)
        for k in np.flatnonzero(v > 0):
            row, col = cells.pop()
            keypoints[k] = (grid[row, col, 0], grid[row, col, 1], v[k])
            if v[k] == 2:
                visible_points.append(grid[row, col])
                visible_parts.append(int(k))
        labelled = keypoints[keypoints[:, 2] > 0, :2]
        if len(labelled) == 0:
            continue
        x0, y0 = np.maximum(labelled.min(0) - 16, 0)
        x1, y1 = np.minimum(labelled.max(0) + 16, (width - 1, height - 1))
        person = _box_annotation(new_ann_id(), image_id, 1, int(x0), int(y0), int(x1), int(y1))
        instances.append(person)
        persons.append(dict(person, keypoints=keypoints.reshape(-1).tolist(),
                            num_keypoints=int((keypoints[:, 2] > 0).sum())))
    if visible_points:
        plant_disks(pixels, np.array(visible_points, dtype=float), visible_parts, PART_COLOURS)

    save_jpeg(image_dir / file_name, pixels)
    image = {"license": int(rng.integers(1, 9)), "file_name": file_name,
             "coco_url": f"http://images.cocodataset.org/{split}/{file_name}", "height": height, "width": width,
             "date_captured": f"2013-11-{int(rng.integers(10, 29))} 17:02:52",
             "flickr_url": f"http://farm{int(rng.integers(1, 10))}.staticflickr.com/synthetic/{image_id}.jpg",
             "id": image_id}
    return image, instances, persons


def _visibilities(rng, share: int, force_few: bool) -> np.ndarray:
    """v per keypoint; at most `share` labelled. Paper keypoints are mostly visible."""
    v = rng.choice([0, 1, 2], size=coco.NUM_KEYPOINTS, p=[0.15, 0.25, 0.6])
    v[PAPER_INDEX] = rng.choice([0, 1, 2], size=len(PAPER_INDEX), p=[0.05, 0.1, 0.85])
    if force_few:                       # fewer than two visible paper keypoints: dropped by the official code
        v[PAPER_INDEX] = (2, 1, 0)
    labelled = np.flatnonzero(v > 0)
    if len(labelled) > share:           # not enough free cells: unlabel extras, keeping paper keypoints first
        order = sorted(labelled, key=lambda k: (k not in PAPER_INDEX, rng.random()))
        v[order[share:]] = 0
    return v


def _new_image_id(rng, state) -> int:
    while True:
        image_id = int(rng.integers(1, 600_000))
        if image_id not in state["used_image_ids"]:
            state["used_image_ids"].add(image_id)
            return image_id


def _take_block(rng, free: np.ndarray):
    """Claim a free 2x2 block of cells; (row, col) of its top-left cell, or None."""
    rows, cols = free.shape
    options = [(r, c) for r in range(rows - 1) for c in range(cols - 1) if free[r:r + 2, c:c + 2].all()]
    if not options:
        return None
    row, col = options[int(rng.integers(len(options)))]
    free[row:row + 2, col:col + 2] = False
    return row, col


def _block_box(rng, block) -> tuple[int, int, int, int]:
    row, col = block
    inset = rng.integers(2, 11, size=4)
    x0, y0 = MARGIN + col * CELL + inset[0], MARGIN + row * CELL + inset[1]
    x1, y1 = MARGIN + (col + 2) * CELL - inset[2], MARGIN + (row + 2) * CELL - inset[3]
    return int(x0), int(y0), int(x1), int(y1)


def _fill_object(rng, pixels, x0, y0, x1, y1, category_id, object_categories) -> None:
    position = list(object_categories).index(category_id)
    mask = np.zeros(pixels.shape[:2], dtype=bool)
    mask[y0:y1, x0:x1] = True
    _fill_texture(rng, pixels, mask, CATEGORY_COLOURS[category_id], STRIPE_ANGLES[position % 4],
                  STRIPE_PERIODS[position % 3])


def _fill_texture(rng, pixels, mask, colour, angle_degrees: float, period: int) -> None:
    """Colour with stripes (every other stripe 35 % darker) at a random phase, then +-16 noise."""
    yy, xx = np.nonzero(mask)
    theta = np.deg2rad(angle_degrees)
    phase = (xx * np.cos(theta) + yy * np.sin(theta)) / period + rng.random()
    dark = (np.floor(phase) % 2 == 1)[:, None]
    base = np.asarray(colour, dtype=float) * np.where(dark, 0.65, 1.0)
    noise = rng.integers(-16, 17, size=base.shape)
    pixels[yy, xx] = np.clip(base + noise, 0, 255).astype(np.uint8)


def _box_annotation(ann_id, image_id, category_id, x0, y0, x1, y1) -> dict:
    w, h = x1 - x0, y1 - y0
    polygon = [float(v) for v in (x0, y0, x1, y0, x1, y1, x0, y1)]
    return {"segmentation": [polygon], "area": float(w * h), "iscrowd": 0, "image_id": image_id,
            "bbox": [float(x0), float(y0), float(w), float(h)], "category_id": category_id, "id": ann_id}


def _ellipse_mask(height, width, box) -> np.ndarray:
    x0, y0, x1, y1 = box
    cx, cy, rx, ry = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2, (y1 - y0) / 2
    yy, xx = np.mgrid[0:height, 0:width]
    return ((xx + 0.5 - cx) / rx) ** 2 + ((yy + 0.5 - cy) / ry) ** 2 <= 1.0


def rle_counts(mask: np.ndarray) -> list[int]:
    """COCO uncompressed RLE: run lengths over the column-major pixels, starting with a background run."""
    flat = np.asarray(mask, dtype=np.uint8).flatten(order="F")
    boundaries = np.concatenate([[0], np.flatnonzero(np.diff(flat)) + 1, [flat.size]])
    runs = np.diff(boundaries).tolist()
    return ([0] + runs) if flat[0] == 1 else runs


def _crowd_annotation(ann_id, image_id, mask: np.ndarray) -> dict:
    rows, cols = np.nonzero(mask)
    x0, y0 = cols.min(), rows.min()
    w, h = cols.max() - x0 + 1, rows.max() - y0 + 1
    return {"segmentation": {"counts": rle_counts(mask), "size": [int(mask.shape[0]), int(mask.shape[1])]},
            "area": float(mask.sum()), "iscrowd": 1, "image_id": image_id,
            "bbox": [float(x0), float(y0), float(w), float(h)], "category_id": 1, "id": ann_id}


# ------------------------------------------------------------------------------------------------------------
# Instances only, for detection and instance segmentation: every object is a polygon whose shape, colour and
# stripes name its category, so a detector learns something measurable in a few hundred CPU iterations.
# ------------------------------------------------------------------------------------------------------------

# Unit-square outlines (x, y in [0, 1]) per category: convex and non-convex, with straight and curved edges.
_ELLIPSE = tuple((0.5 + 0.5 * np.cos(t), 0.5 + 0.5 * np.sin(t)) for t in np.linspace(0, 2 * np.pi, 24, endpoint=False))
OBJECT_SHAPES = {
    3: ((0, 0), (1, 0), (1, 1), (0, 1)),                                  # car: rectangle
    18: _ELLIPSE,                                                         # dog: ellipse
    44: ((0.5, 0), (1, 1), (0, 1)),                                       # bottle: triangle
    62: ((0.5, 0), (1, 0.5), (0.5, 1), (0, 0.5)),                         # chair: diamond
    72: ((0.25, 0), (0.75, 0), (1, 0.5), (0.75, 1), (0.25, 1), (0, 0.5)),  # tv: hexagon
    90: ((0, 0), (1, 0), (1, 0.4), (0.4, 0.4), (0.4, 1), (0, 1)),         # toothbrush: L shape
}
MIN_OBJECT_SIDE = 10


@generator
def synth_coco_instances(out_dir: str | os.PathLike, seed: int = 0, train_images: int = 16, val_images: int = 8,
                         image_size: int = 128, max_objects: int = 4, object_categories=OBJECT_CATEGORIES,
                         size_mix=(0.35, 0.45, 0.2)) -> Path:
    """COCO 2017 instances files (annotations/instances_{train,val}2017.json, train2017/, val2017/) of planted
    polygon objects; returns out_dir.

    Images are ``image_size`` wide and 0.75-1 x as high. Each holds 1 to ``max_objects`` non-overlapping
    objects; ``size_mix`` gives the chances of COCO's small (< 32^2 px), medium and large (> 96^2 px, as large as
    the image allows: it needs images of 160 px and up) ranges. The drawn pixels are exactly the annotation's mask (pycocotools
    rasterises the polygon), ``area`` is that mask's area and ``bbox`` its extent. The first image of each
    split also has a crowd (iscrowd = 1, uncompressed RLE), which training and COCOeval ignore. All 80
    categories are listed, with their non-contiguous ids.
    """
    from pycocotools import mask as mask_utils

    for category_id in object_categories:
        if category_id not in OBJECT_SHAPES:
            raise ValueError(f"object category {category_id} has no shape; choose from {sorted(OBJECT_SHAPES)}")
    if len(size_mix) != 3 or min(size_mix) < 0 or abs(sum(size_mix) - 1) > 1e-6:
        raise ValueError(f"size_mix must be three chances (small, medium, large) summing to 1, got {size_mix}")
    if image_size < 4 * MIN_OBJECT_SIDE or min(train_images, val_images) < 1 or max_objects < 1:
        raise ValueError(f"image_size >= {4 * MIN_OBJECT_SIDE}, >= 1 image per split and max_objects >= 1 expected, "
                         f"got {image_size}, {train_images}/{val_images}, {max_objects}")
    rng = np.random.default_rng(seed)
    out_dir = Path(out_dir)
    state = {"next_ann_id": int(rng.integers(100_000, 200_000)), "used_image_ids": set()}
    categories = [{"supercategory": supercategory, "id": category_id, "name": name}
                  for category_id, (name, supercategory) in coco.CATEGORIES.items()]
    for split, count in (("train2017", train_images), ("val2017", val_images)):
        images, annotations = [], []
        for index in range(count):
            width, height = image_size, int(round(image_size * rng.uniform(0.75, 1.0)))
            image_id = _new_image_id(rng, state)
            pixels = noise_background(rng, height, width)
            boxes = []
            if index == 0:   # a crowd in one corner region
                state["next_ann_id"] += int(rng.integers(1_000, 50_000))
                box = (0, 0, width // 3, height // 3)
                mask = _ellipse_mask(height, width, box)
                _fill_texture(rng, pixels, mask, CATEGORY_COLOURS[1], 0.0, 10)
                annotations.append(_crowd_annotation(state["next_ann_id"], image_id, mask))
                boxes.append(box)
            for _ in range(int(rng.integers(1, max_objects + 1))):
                placed = _place_box(rng, width, height, boxes, size_mix)
                if placed is None:
                    continue
                boxes.append(placed)
                category_id = int(object_categories[int(rng.integers(len(object_categories)))])
                x0, y0, x1, y1 = placed
                polygon = [float(v) for px, py in OBJECT_SHAPES[category_id]
                           for v in (x0 + px * (x1 - x0), y0 + py * (y1 - y0))]
                rle = mask_utils.merge(mask_utils.frPyObjects([polygon], height, width))
                mask = mask_utils.decode(rle).astype(bool)
                position = list(object_categories).index(category_id)
                _fill_texture(rng, pixels, mask, CATEGORY_COLOURS[category_id], STRIPE_ANGLES[position % 4],
                              STRIPE_PERIODS[position % 3])
                state["next_ann_id"] += int(rng.integers(1_000, 50_000))
                annotations.append({"segmentation": [polygon], "area": float(mask_utils.area(rle)), "iscrowd": 0,
                                    "image_id": image_id, "bbox": [float(v) for v in mask_utils.toBbox(rle)],
                                    "category_id": category_id, "id": state["next_ann_id"]})
            file_name = f"{image_id:012d}.jpg"
            save_jpeg(out_dir / split / file_name, pixels)
            images.append({"license": int(rng.integers(1, 9)), "file_name": file_name,
                           "coco_url": f"http://images.cocodataset.org/{split}/{file_name}", "height": height,
                           "width": width, "date_captured": f"2013-11-{int(rng.integers(10, 29))} 17:02:52",
                           "flickr_url": f"http://farm{int(rng.integers(1, 10))}.staticflickr.com/synthetic/{image_id}.jpg",
                           "id": image_id})
        write_json_atomic(out_dir / "annotations" / f"instances_{split}.json",
                          {"info": INFO, "licenses": LICENSES, "images": images, "annotations": annotations,
                           "categories": categories}, indent=None)
    return out_dir


def _place_box(rng, width: int, height: int, taken: list, size_mix, tries: int = 40):
    """A box (x0, y0, x1, y1) 2 px clear of every taken box, or None if none fits. Its area is drawn from COCO's
    small (< 32^2), medium or large (> 96^2) range (chances ``size_mix``), log-uniform within it, aspect 0.6-1.6,
    sides <= 0.9 x image."""
    high = int(0.9 * min(width, height))
    lo, hi = {0: (MIN_OBJECT_SIDE ** 2, 32 ** 2), 1: (32 ** 2, 96 ** 2), 2: (96 ** 2, high ** 2)}[
        int(rng.choice(3, p=size_mix))]
    for _ in range(tries):
        area, aspect = np.exp(rng.uniform(np.log(lo), np.log(max(lo, hi)))), np.exp(rng.uniform(np.log(0.6), np.log(1.6)))
        w, h = (int(np.clip(round(v), MIN_OBJECT_SIDE, high)) for v in (np.sqrt(area * aspect), np.sqrt(area / aspect)))
        x0, y0 = int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1))
        box = (x0, y0, x0 + w, y0 + h)
        if all(box[0] >= b[2] + 2 or box[2] + 2 <= b[0] or box[1] >= b[3] + 2 or box[3] + 2 <= b[1] for b in taken):
            return box
    return None
