"""The part-patch database: keypoint-centred square crops of CUB-200-2011 and COCO
(docs/protocols.md#part-patch-database, docs/protocols.md#official-part-retrieval-behaviour).

Each part is its own image: a square crop centred on one keypoint, resized to the encoder's input size
and encoded on its own. Which keypoints, which crop size and which filter are protocol choices where the
paper text and its official code disagree; every one is an explicit option, recorded in
``PartDatabase.options`` (and from there in every result record).

Keypoints (1-based ids). CUB: right eye 11, right leg 12, left wing 9, tail 14 (``keypoints="paper"``)
or all 15. COCO: nose 1, right wrist 11, left ankle 16, or all 17.

Visibility. CUB: the ``visible`` flag alone decides (a visible part at x = 0.0 is kept). COCO: v == 2
only, and a person needs at least two such target keypoints (fewer: the person is skipped entirely and
never enters a distance pool); ``iscrowd`` and the category are not checked (as the official code).

Distance d of a keypoint = its smallest Euclidean distance to the other *selected* keypoints of the
same pool (CUB: the image; COCO: ``coco_dist_scope``), computed before any filtering, so a kept keypoint
may take its d from one the filter later removes. A zero distance counts as "no other keypoint" (it is
replaced by 999999, as in the official code), so a lone keypoint has d = 999999.

``coco_dist_scope``:
- ``code_exact``: the official code. All qualifying persons of an image are pooled and the annotation id
  is a third coordinate, so persons with ids far apart never mix, but consecutive ids do (and the id
  term changes the distance slightly: 50 px -> 50.01).
- ``image``: all qualifying persons of an image pooled, plain 2-D distances (the paper's "same image").
- ``person``: each person on its own (what the official code effectively does for real COCO ids).

Crop variants (``crop``):
- ``official-code``: half = round(d / 4) (Python's round-half-to-even on the float d/2/2), PIL box
  ``(x - half, y - half, x + half, y + half)`` on the float keypoint; PIL rounds each float edge the same
  way, so fractional CUB coordinates shift the crop. Filter: keep only 40 < d < 2000 px, both strict.
- ``paper``: a d x d square. Side s = round(d) (half-to-even), left edge round(x - s/2), likewise top, so
  the box is exactly s x s in whole pixels. Filter (``dist_filter="none"``): only keypoints without any
  other keypoint (d = 999999) are dropped.

Outside the image the crop is zero (black), as PIL's ``crop`` pads. The crop is then resized to the
encoder's input size (``crop_size``; 224 for real models) with PIL's antialiased bicubic filter, which
the official pipeline uses (a tensor bicubic resize moves per-query AP by up to 8e-3:
docs/protocols.md#part-retrieval-crops).

Order (docs/protocols.md#official-part-retrieval-behaviour, item 1). CUB: images in the order of their first
visible target keypoint in part_locs.txt, within an image in file (= part id) order. COCO: images in the
order of their first qualifying annotation in the JSON; within an image, annotations in JSON order, within
a person keypoint order.

``crop_shift`` (tests and audits): moves every box by ``crop_shift`` x its side in a random direction
(one angle per crop from ``crop_shift_seed``). With 0.5, a planted part sits at the crop's edge; the AP of
a correct pipeline must drop, which proves the geometry end to end.
"""
from __future__ import annotations

import functools
import hashlib
import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from probes.fileio import write_json_atomic

CROP_VARIANTS = ("official-code", "paper")
DIST_FILTERS = ("official", "none")
COCO_DIST_SCOPES = ("code_exact", "image", "person")
DATASETS = ("cub", "coco")
CUB_PAPER_KEYPOINTS = (11, 12, 9, 14)     # right eye, right leg, left wing, tail (official keypoint_cls_list)
COCO_PAPER_KEYPOINTS = (1, 11, 16)        # nose, right_wrist, left_ankle
NO_OTHER_KEYPOINT = 999999.0              # the official code's stand-in for a zero distance
OFFICIAL_MIN_D, OFFICIAL_MAX_D = 40.0, 2000.0   # the code keeps 20 < d/2 < 1000, strictly


@dataclass(frozen=True)
class PartItem:
    """One part patch: where to crop, and what it is."""
    image_path: str
    box: tuple                 # (x0, y0, x1, y1) as given to PIL's crop (floats allowed; PIL rounds each edge)
    label: int                 # index into PartDatabase.class_names
    part_name: str
    image_id: int
    split: str                 # CUB: "train" / "test"; COCO: the split folder, e.g. "train2017"
    keypoint: tuple = (0.0, 0.0)   # (x, y) in image pixels, as annotated
    distance: float = 0.0      # d: distance to the nearest other selected keypoint (999999: none)
    part_id: int = 0           # 1-based keypoint id of the dataset
    ann_id: int | None = None  # COCO person annotation id


# --- geometry (pure functions; tests check them against hand-computed tables) ---------------------------------
def nearest_distances(coords) -> np.ndarray:
    """Distance of each row of ``coords`` [K, 2 or 3] to its nearest other row, as the official code computes it.

    ``((c[:, None] - c[None]) ** 2).sum(2) ** 0.5``; every zero distance (the row itself, or a coincident
    keypoint) becomes 999999 before the minimum, so a lone row gets 999999.
    """
    coords = np.asarray(coords, dtype=np.float64)
    if coords.ndim != 2 or len(coords) == 0:
        raise ValueError(f"coords must be a non-empty [K, 2|3] array, got shape {coords.shape}")
    dist = ((coords[:, None] - coords[None]) ** 2).sum(axis=2) ** 0.5
    dist[dist == 0] = NO_OTHER_KEYPOINT
    return dist.min(axis=1)


def keep_distance(d: float, dist_filter: str) -> bool:
    """Whether a keypoint with distance d enters the database."""
    if dist_filter == "official":
        half = d / 2                      # the code stores d/2 and keeps 20 < d/2 < 1000
        return 20 < half < 1000
    if dist_filter == "none":
        return d < NO_OTHER_KEYPOINT      # only "no other keypoint" has no crop size
    raise ValueError(f"dist_filter must be one of {DIST_FILTERS}, got {dist_filter!r}")


def crop_box(x: float, y: float, d: float, crop: str) -> tuple:
    """The box handed to PIL's ``crop`` for a keypoint (x, y) with distance d."""
    if crop == "official-code":
        half = round((d / 2) / 2)         # Python round: half to even (12.5 -> 12, 13.5 -> 14)
        return (x - half, y - half, x + half, y + half)
    if crop == "paper":
        side = round(d)
        left, top = round(x - side / 2), round(y - side / 2)
        return (left, top, left + side, top + side)
    raise ValueError(f"crop must be one of {CROP_VARIANTS}, got {crop!r}")


def pixel_box(box) -> tuple:
    """The whole-pixel box PIL actually cuts for a float box (each edge rounded half to even)."""
    return tuple(int(round(v)) for v in box)


def shift_boxes(boxes: list[tuple], fraction: float, seed: int) -> list[tuple]:
    """Each box moved by ``fraction`` x its side, in a random direction drawn per box from ``seed``."""
    if fraction == 0:
        return list(boxes)
    angles = np.random.default_rng(seed).uniform(0, 2 * math.pi, size=len(boxes))
    out = []
    for (x0, y0, x1, y1), angle in zip(boxes, angles):
        side = x1 - x0
        dx, dy = fraction * side * math.cos(angle), fraction * side * math.sin(angle)
        out.append((x0 + dx, y0 + dy, x1 + dx, y1 + dy))
    return out


# --- the database --------------------------------------------------------------------------------------------
@dataclass
class PartDatabase:
    """Part patches of one dataset under one protocol. ``options`` records every choice that shaped them."""
    dataset: str
    root: Path
    split: str
    items: list[PartItem]
    class_names: list[str]
    options: dict
    source_files: list[Path] = field(default_factory=list)
    # Every selected keypoint read (before the distance filter, which it takes part in): (image path, part name,
    # x, y, where it is annotated). The data check (probes/views/checks.py) finds those outside their image.
    keypoints: list[tuple] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.items)

    def labels(self) -> np.ndarray:
        return np.array([item.label for item in self.items], dtype=np.int64)

    def counts(self) -> dict[str, int]:
        """Number of patches per part class (every class listed, zeros included)."""
        counts = {name: 0 for name in self.class_names}
        for item in self.items:
            counts[item.part_name] += 1
        return counts

    def crop(self, index: int) -> Image.Image:
        """The patch of item ``index``: PIL crop of the RGB image, zero padded outside it, not resized."""
        item = self.items[index]
        return _load_rgb(item.image_path).crop(item.box)

    def image_paths(self) -> list[str]:
        """Distinct image paths in database order."""
        return list(dict.fromkeys(item.image_path for item in self.items))

    def identity(self) -> dict:
        """What the features of this database depend on: for cache keys (cheap: file stats, no image reads)."""
        items = hashlib.sha256()
        for item in self.items:
            items.update(repr((item.image_path, tuple(float(v) for v in item.box), item.label)).encode())
        files = hashlib.sha256()
        for path in list(self.source_files) + [Path(p) for p in self.image_paths()]:
            try:
                stat = os.stat(path)
                files.update(f"{path}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
            except FileNotFoundError:
                files.update(f"{path}|missing\n".encode())
        return {"dataset": self.dataset, "root": str(self.root), "split": self.split, "options": self.options,
                "num_items": len(self.items), "items_sha256": items.hexdigest(),
                "files_sha256": files.hexdigest()}

    def write_boxes(self, path: str | os.PathLike) -> Path:
        """Write every crop box (float box for PIL, whole-pixel box, keypoint, d, label) as JSON, for audit."""
        rows = []
        for item in self.items:
            row = asdict(item)
            row["box"] = list(item.box)
            row["pixel_box"] = list(pixel_box(item.box))
            row["keypoint"] = list(item.keypoint)
            rows.append(row)
        return write_json_atomic(path, {"dataset": self.dataset, "root": str(self.root), "split": self.split,
                                        "options": self.options, "class_names": self.class_names,
                                        "counts": self.counts(), "items": rows})


@functools.lru_cache(maxsize=8)
def _load_rgb(path: str) -> Image.Image:
    # Items of one image are consecutive: keep the last few decoded images instead of re-reading them.
    with Image.open(path) as image:
        return image.convert("RGB")


def resolve_keypoints(dataset: str, keypoints) -> tuple[int, ...]:
    """1-based keypoint ids for "paper", "all" or an explicit sequence of ids."""
    total = {"cub": 15, "coco": 17}[dataset]
    if isinstance(keypoints, str):
        if keypoints == "paper":
            return CUB_PAPER_KEYPOINTS if dataset == "cub" else COCO_PAPER_KEYPOINTS
        if keypoints == "all":
            return tuple(range(1, total + 1))
        raise ValueError(f"keypoints must be 'paper', 'all' or a list of 1-based ids, got {keypoints!r}")
    ids = tuple(int(k) for k in keypoints)
    bad = [k for k in ids if not 1 <= k <= total]
    if bad or len(set(ids)) != len(ids) or not ids:
        raise ValueError(f"keypoint ids for {dataset} must be distinct values in 1..{total}, got {list(ids)}")
    return ids


def build_part_database(dataset: str, root, crop: str = "official-code", keypoints="paper", split=None, *,
                        dist_filter: str | None = None, coco_dist_scope: str = "code_exact",
                        crop_shift: float = 0.0, crop_shift_seed: int = 0) -> PartDatabase:
    """Read a CUB or COCO root and build its part patches under the given protocol.

    ``split``: CUB None = all images (the retrieval database), "train" / "test" by train_test_split.txt;
    COCO None = train2017 (the retrieval database), "train" = train2017, "test" = val2017, or a split
    folder name. ``db.split`` is "all" for the retrieval database of either dataset (COCO's image split
    is then in ``db.options["image_split"]``), else "train"/"test" (CUB) or the COCO split folder.
    ``dist_filter`` defaults to "official" for the official-code crop, "none" for the paper's.
    """
    if dataset not in DATASETS:
        raise ValueError(f"dataset must be one of {DATASETS}, got {dataset!r}")
    if crop not in CROP_VARIANTS:
        raise ValueError(f"crop must be one of {CROP_VARIANTS}, got {crop!r}")
    dist_filter = dist_filter or ("official" if crop == "official-code" else "none")
    if dist_filter not in DIST_FILTERS:
        raise ValueError(f"dist_filter must be one of {DIST_FILTERS}, got {dist_filter!r}")
    if coco_dist_scope not in COCO_DIST_SCOPES:
        raise ValueError(f"coco_dist_scope must be one of {COCO_DIST_SCOPES}, got {coco_dist_scope!r}")
    ids = resolve_keypoints(dataset, keypoints)
    options = {
        "crop": crop, "dist_filter": dist_filter, "keypoints": keypoints if isinstance(keypoints, str) else "custom",
        "keypoint_ids": list(ids), "crop_pad": "zero",
        "crop_side": "2*round(d/4) (official code)" if crop == "official-code" else "round(d) (paper: d x d)",
        "crop_shift": float(crop_shift), "crop_shift_seed": int(crop_shift_seed),
    }
    if dataset == "cub":
        db = _build_cub(root, ids, split, crop, dist_filter, options)
    else:
        options["coco_dist_scope"] = coco_dist_scope
        db = _build_coco(root, ids, split, crop, dist_filter, coco_dist_scope, options)
    if crop_shift:
        boxes = shift_boxes([item.box for item in db.items], crop_shift, crop_shift_seed)
        db.items = [_replace_box(item, box) for item, box in zip(db.items, boxes)]
    return db


def _replace_box(item: PartItem, box: tuple) -> PartItem:
    data = asdict(item)
    data["box"] = tuple(box)
    return PartItem(**data)


def _build_cub(root, ids, split, crop, dist_filter, options) -> PartDatabase:
    from probes.data.cub import CUB200

    if split not in (None, "all", "train", "test"):
        raise ValueError(f"CUB split must be None/'all' (whole database), 'train' or 'test', got {split!r}")
    ds = CUB200(root)
    targets = set(ids)
    label_of = {part_id: i for i, part_id in enumerate(ids)}
    class_names = [ds.part_names[part_id - 1] for part_id in ids]

    # Walk part_locs.txt in file order: image order = first visible target; parts within in file order.
    per_image: dict[int, list[int]] = {}
    for image_id, part_id in ds.part_locs_order:
        image = ds.image_by_id[image_id]
        if split in ("train", "test") and image.is_train != (split == "train"):
            continue
        if part_id in targets and image.parts[part_id - 1, 2] == 1:
            per_image.setdefault(image_id, []).append(part_id)

    items, keypoints = [], []
    for image_id, part_ids in per_image.items():
        image = ds.image_by_id[image_id]
        coords = image.parts[[p - 1 for p in part_ids], :2]
        distances = nearest_distances(coords)
        keypoints += [(str(image.path), ds.part_names[p - 1], float(x), float(y), f"parts/part_locs.txt, image id "
                       f"{image_id}") for p, (x, y) in zip(part_ids, coords)]
        for part_id, (x, y), d in zip(part_ids, coords, distances):
            if not keep_distance(d, dist_filter):
                continue
            x, y, d = float(x), float(y), float(d)
            items.append(PartItem(str(image.path), crop_box(x, y, d, crop), label_of[part_id], class_names[label_of[part_id]],
                                  image_id, "train" if image.is_train else "test", (x, y), d, part_id))
    sources = [ds.root / "images.txt", ds.root / "parts" / "part_locs.txt", ds.root / "train_test_split.txt"]
    return PartDatabase("cub", ds.root, split if split in ("train", "test") else "all", items, class_names,
                        options, sources, keypoints)


def _coco_split(split) -> str:
    if split in (None, "all", "train"):
        return "train2017"
    if split == "test":
        return "val2017"
    return str(split)


def _build_coco(root, ids, split, crop, dist_filter, scope, options) -> PartDatabase:
    from probes.data.coco import COCOKeypoints

    coco_split = _coco_split(split)
    kp = COCOKeypoints(root, split=coco_split)
    label_of = {part_id: i for i, part_id in enumerate(ids)}
    class_names = [kp.keypoint_names[part_id - 1] for part_id in ids]
    targets = sorted(ids)   # within a person: keypoint order

    # (part_id, x, y, ann_id) per image, images in order of their first qualifying person.
    per_image: dict[int, list[tuple]] = {}
    for ann in kp.annotations:
        chosen = [k for k in targets if ann.keypoints[k - 1, 2] >= 2]
        if len(chosen) < 2:
            continue
        per_image.setdefault(ann.image_id, []).extend(
            (k, float(ann.keypoints[k - 1, 0]), float(ann.keypoints[k - 1, 1]), ann.id) for k in chosen)

    items, keypoints = [], []
    for image_id, entries in per_image.items():
        image = kp.images[image_id]
        distances = _coco_distances(entries, scope)
        keypoints += [(str(image.path), kp.keypoint_names[part_id - 1], x, y,
                       f"{kp.annotation_file.name}, annotation id {ann_id}") for part_id, x, y, ann_id in entries]
        for (part_id, x, y, ann_id), d in zip(entries, distances):
            if not keep_distance(d, dist_filter):
                continue
            d = float(d)
            items.append(PartItem(str(image.path), crop_box(x, y, d, crop), label_of[part_id],
                                  class_names[label_of[part_id]], image_id, coco_split, (x, y), d, part_id, ann_id))
    # The whole retrieval database (split None) is called "all" for both datasets, as in the records of the
    # paper's protocol; for COCO it is the train2017 keypoint file, named in options["image_split"].
    options["image_split"] = coco_split
    label = "all" if split in (None, "all") else coco_split
    return PartDatabase("coco", Path(root), label, items, class_names, options, [kp.annotation_file], keypoints)


def _coco_distances(entries: list[tuple], scope: str) -> np.ndarray:
    if scope == "code_exact":
        return nearest_distances(np.array([(x, y, ann_id) for _, x, y, ann_id in entries], dtype=np.float64))
    if scope == "image":
        return nearest_distances(np.array([(x, y) for _, x, y, _ in entries], dtype=np.float64))
    out = np.empty(len(entries))
    ann_ids = np.array([e[3] for e in entries])
    for ann_id in dict.fromkeys(ann_ids.tolist()):
        rows = np.flatnonzero(ann_ids == ann_id)
        out[rows] = nearest_distances(np.array([entries[r][1:3] for r in rows], dtype=np.float64))
    return out


def part_counts_table(db: PartDatabase) -> str:
    counts = db.counts()
    return ", ".join(f"{name}: {count}" for name, count in counts.items())


def load_boxes(path: str | os.PathLike) -> dict:
    """Read a boxes JSON written by ``PartDatabase.write_boxes``."""
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)
