"""Part views: keypoint-centred crops of CUB-200-2011 and COCO (docs/protocols.md#part-patch-database).

``PartCropOptions`` are the crop rules, shared by part retrieval and part classification; ``part_crops``
builds the database (probes.parts) and wraps it as a view: each crop encoded as its own image, resized
to the encoder's input size. ``PartKeypointView`` is the dense protocol's view of the same keypoints: each
full image once, resized (aspect not kept), its patch-token map sampled at the keypoints.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from probes import parts
from probes.options import ConfigError, option
from probes.views.transforms import SquareResize

VISIBILITY = {"cub": "visible == 1", "coco": "v == 2, persons with >= 2 target keypoints"}


@dataclass
class PartCropOptions:
    """Which keypoints, and how each becomes a crop (docs/protocols.md#part-patch-database)."""

    crop: Literal["official-code", "paper", "dense"] | None = option(
        None, help="Crop rule: official-code (~d/2 square, the code), paper (d x d, the text), or dense (the "
                   "full image's token map sampled at the keypoint; part retrieval only). Default: the preset's.")
    keypoints: Literal["paper", "all"] = option("paper", help="The paper's 4 CUB / 3 COCO keypoints, or all 15 / 17.")
    dist_filter: Literal["official", "none"] | None = option(
        None, help="Keep only 40 < d < 2000 px (official) or every keypoint with a neighbour (none). "
                   "Default: official for the official-code crop, none for the paper's.")
    coco_dist_scope: Literal["code_exact", "image", "person"] | None = option(
        None, help="COCO distance pool: the official code's (annotation id as a third coordinate), the whole "
                   "image, or each person. Default: the preset's.")
    crop_shift: float = option(0.0, help="Audit only: move every crop by this fraction of its side in a random "
                                         "direction (a correct pipeline's AP must drop).")
    crop_shift_seed: int = option(0, help="Seed of the crop-shift directions.")


class PartCropDataset(torch.utils.data.Dataset):
    """(tensor, label) per part patch: ``transform(db.crop(i))``. Works with DataLoader workers."""

    def __init__(self, db: parts.PartDatabase, transform):
        self.db = db
        self.transform = transform

    def __len__(self) -> int:
        return len(self.db)

    def __getitem__(self, index: int):
        return self.transform(self.db.crop(index)), int(self.db.items[index].label)


class PartCropView:
    """Every part patch of a database as its own image."""

    def __init__(self, db: parts.PartDatabase, transform):
        self.db, self.transform = db, transform
        self.dataset = PartCropDataset(db, transform)
        self.labels = db.labels()
        self.class_names = list(db.class_names)
        self.split = db.split

    def __len__(self) -> int:
        return len(self.db)

    def identity(self) -> dict:
        return {"view": "part_crops", **self.db.identity(), "transform": self.transform.describe()}

    def describe(self) -> dict:
        """The database's settings and counts, as records carry them."""
        options = self.db.options
        out = {"crop": options["crop"], "dist_filter": options["dist_filter"], "crop_pad": options["crop_pad"],
               "keypoints": options["keypoints"], "keypoint_ids": options["keypoint_ids"],
               "crop_shift": options["crop_shift"], "crop_shift_seed": options["crop_shift_seed"],
               "num_items": len(self.db), "part_counts": self.db.counts()}
        if self.db.dataset == "coco":
            out["coco_dist_scope"] = options["coco_dist_scope"]
        return out

    def notes(self) -> dict:
        """Descriptions of the same settings (unhashed)."""
        return {"crop_side": self.db.options["crop_side"], "part_visibility": VISIBILITY[self.db.dataset],
                "crop_resize": "PIL bicubic (antialiased)", "transform": self.transform.describe()}


class FullImages(torch.utils.data.Dataset):
    """Whole images resized (aspect not kept) to S x S and normalised, with their original (width, height)."""

    def __init__(self, paths, transform):
        self.paths = list(paths)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        from PIL import Image
        with Image.open(self.paths[index]) as image:
            size = image.size
            tensor = self.transform(image.convert("RGB"))
        return tensor, torch.tensor(size)


class PartKeypointView(PartCropView):
    """The dense protocol: the keypoints of a part database, read from their full images' token maps.

    ``items`` (image path, keypoint) of the database; ``images(paths)`` is the dataset of full images.
    """

    def __init__(self, db: parts.PartDatabase, transform):
        super().__init__(db, transform)
        self.items = db.items

    def images(self, paths) -> FullImages:
        return FullImages(paths, self.transform)

    def identity(self) -> dict:
        return {**super().identity(), "view": "part_keypoints_dense"}

    def describe(self) -> dict:
        return {**super().describe(), "crop": "dense"}

    def notes(self) -> dict:
        return {"part_visibility": VISIBILITY[self.db.dataset],
                "dense": "full image resized to input_size x input_size (aspect not kept, PIL bicubic); token map "
                         "sampled bilinearly at the keypoint, pixel centre (x + 0.5, y + 0.5), grid_sample "
                         "align_corners=False, border padding",
                "transform": self.transform.describe()}


def part_database(dataset: str, root, options: PartCropOptions, split=None) -> parts.PartDatabase:
    """The part database under ``options`` (the dense protocol uses the official-code database's keypoints)."""
    crop = "official-code" if options.crop == "dense" else options.crop
    db = parts.build_part_database(dataset, root, crop=crop, keypoints=options.keypoints, split=split,
                                   dist_filter=options.dist_filter, coco_dist_scope=options.coco_dist_scope or "code_exact",
                                   crop_shift=options.crop_shift, crop_shift_seed=options.crop_shift_seed)
    if len(db) == 0:
        raise ConfigError(f"{dataset} at {root} (split {db.split}): no part patch survived the protocol ({db.options})")
    return db


def part_crops(dataset: str, root, options: PartCropOptions, transform, split=None) -> PartCropView:
    """The crops (or, with ``crop: dense``, the keypoint view) of one split, through ``transform``."""
    db = part_database(dataset, root, options, split)
    return (PartKeypointView if options.crop == "dense" else PartCropView)(db, transform)


def crop_transform(encoder, mean, std, size: int | None = None) -> SquareResize:
    """Each crop (or full image) resized to the encoder's input size."""
    return SquareResize(size or encoder.crop_size, mean, std)
