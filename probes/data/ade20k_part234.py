"""ADE20K-Part-234 (OV-PARTS): 234 named parts of 44 object classes, read from or built out of the full release.

Layout written and read (docs/datasets.md#ade20k-part-234; the code path of OV-PARTS, not its README drawing)::

    ADE20KPart234/images/{training,validation}/<stem>.jpg
                  annotations_detectron2_part/{training,validation}/<stem>.png   16-bit, 0..233, 65535 = ignore
                  ade20k_instance_train.json, ade20k_instance_val.json           COCO, category_id 0..43
                  annotations_detectron2_obj/{training,validation}/<stem>.png    8-bit, 0..43, 255 = none
                  annotations_detectron2_part/<split>_{part,obj}_label_count.json

The object PNGs and the label-count files are this suite's additions (OV-PARTS' ADE loader does not read
them); they hold the same objects as the COCO file and make the 44-object probe a plain label map.

Conversion rule from the full release (the OV-PARTS conversion script is not public; this is the documented
best reading of `ade20kpart234_mapping.json`) [inferred]:

* an object instance is a JSON object with `part_level == 0` whose `name_ndx` is one of the mapping's object
  ids (e.g. car 401, door 783 or 774); its pixels are its instance's pixels in `_seg.png`, the instance
  (B value) being the one its instance PNG's visible (255) pixels fall on (see `_region`);
* a part pixel is labelled "O's P" when it is a pixel of a `part_level == 1` instance in `_parts_1.png`
  (found the same way) whose `parts.ispartof` is an object instance of class O, whose `name_ndx` is listed
  under O's part P, and the pixel also belongs to that parent object in `_seg.png` (a part never leaks
  onto an object in front of it);
* deeper parts (level 2: a car door's handle) are not separate classes: their pixels keep the level-1 label,
  because `_parts_1.png` already covers them; parts of parts-as-objects (a door that is itself a part of a
  car) are not objects, so they give no "door's ..." labels;
* every other pixel is 65535 (ignore), and images with no part pixel at all are left out of the set.
"""
from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from probes.data.ade20k import (
    SPLITS,
    ADE20KFull,
    AdeFullImage,
    class_lists,
    decode_class_instance,
    read_annotation,
    read_instance_mask,
)
from probes.data.errors import DatasetFormatError
from probes.data.generated import carry_marker
from probes.data.labelmaps import (
    mask_bbox,
    ov_parts_part_maps,
    present_labels,
    read_json,
    read_label_png,
    rle_encode,
    write_png,
)
from probes.data.report import add_problem, new_report
from probes.fileio import write_bytes_atomic, write_json_atomic

NUM_PARTS = 234
NUM_OBJECTS = 44
PART_IGNORE = 65535
OBJECT_IGNORE = 255
FOLDER = "ADE20KPart234"
INSTANCE_JSON = {"training": "ade20k_instance_train.json", "validation": "ade20k_instance_val.json"}
_RESOURCES = Path(__file__).with_name("resources")


@dataclass(frozen=True)
class Part234Mapping:
    object_names: list[str]                    # 44, index = category_id / object PNG value
    part_names: list[str]                      # 234, index = part PNG value
    object_of_ndx: dict[int, int]              # full-release name_ndx -> object index
    part_of: dict[tuple[int, int], int]        # (object index, part name_ndx) -> part index


def load_mapping(path: str | os.PathLike | None = None) -> Part234Mapping:
    """Read OV-PARTS' `ade20kpart234_mapping.json` (a verbatim copy ships with the package).

    The JSON keys are full WordNet names ("person, individual, ..."); the class lists use the first name,
    so "<first name>'s <part>" must be one of the 234 CLASS_NAMES. Anything else is a format error.
    """
    path = Path(path) if path is not None else _RESOURCES / "ade20kpart234_mapping.json"
    document = read_json(path, "the OV-PARTS ADE20K-Part-234 mapping JSON")
    lists = class_lists()
    object_names, part_names = lists["ade234_obj"], lists["ade234_part"]
    object_of_ndx: dict[int, int] = {}
    part_of: dict[tuple[int, int], int] = {}
    for key, entry in document.items():
        short = key.split(",")[0].strip()
        if short not in object_names:
            raise DatasetFormatError(path, f"object {short!r} is not one of the 44 objects", field=key,
                                     expected="an OV-PARTS object class")
        obj = object_names.index(short)
        ids = entry["id"] if isinstance(entry["id"], list) else [entry["id"]]
        for ndx in ids:
            if object_of_ndx.setdefault(ndx, obj) != obj:
                raise DatasetFormatError(path, f"name_ndx {ndx} used by two objects", field=f"{key}.id",
                                         expected="each object id once")
        for part, ndxs in entry["parts"].items():
            name = f"{short}'s {part}"
            if name not in part_names:
                raise DatasetFormatError(path, f"part {name!r} is not one of the 234 parts", field=f"{key}.parts",
                                         expected="an OV-PARTS part class")
            for ndx in ndxs if isinstance(ndxs, list) else [ndxs]:
                part_of[(obj, ndx)] = part_names.index(name)
    covered = sorted(set(part_of.values()))
    if covered != list(range(NUM_PARTS)) or sorted(set(object_of_ndx.values())) != list(range(NUM_OBJECTS)):
        raise DatasetFormatError(path, f"covers {len(covered)} parts", expected="all 234 parts of all 44 objects")
    return Part234Mapping(object_names, part_names, object_of_ndx, part_of)


# ---------------------------------------------------------------------------------------------------------
# Reader of the OV-PARTS layout
# ---------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Part234Sample:
    stem: str
    image_path: Path
    part_path: Path
    object_path: Path | None       # this suite's object PNG, when present


def read_part_map(path: str | os.PathLike) -> np.ndarray:
    """uint16 [H, W], 0..233 or 65535."""
    return read_label_png(path, ("I;16", "I;16B", "I;16L", "I"), NUM_PARTS, ignore=PART_IGNORE,
                          what="an ADE20K-Part-234 part map: 16-bit grayscale, 0..233, 65535 = ignore")


def read_object_map(path: str | os.PathLike) -> np.ndarray:
    return read_label_png(path, ("L",), NUM_OBJECTS, ignore=OBJECT_IGNORE,
                          what="an ADE20K-Part-234 object map: mode L, 0..43, 255 = none")


class ADE20KPart234:
    """One split of the OV-PARTS layout. `root` is ADE20KPart234/ or a folder holding it."""

    def __init__(self, root: str | os.PathLike, split: str = "training"):
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        root, pairs = ov_parts_part_maps(root, FOLDER, split)
        self.root, self.split = root, split
        lists = class_lists()
        self.part_names, self.object_names = lists["ade234_part"], lists["ade234_obj"]
        object_dir = root / "annotations_detectron2_obj" / split
        self.samples = []
        for image_path, part_path in pairs:
            object_path = object_dir / f"{image_path.stem}.png"
            self.samples.append(Part234Sample(image_path.stem, image_path, part_path,
                                              object_path if object_path.is_file() else None))

    def __len__(self) -> int:
        return len(self.samples)

    def part_map(self, index: int) -> np.ndarray:
        return read_part_map(self.samples[index].part_path)

    def object_map(self, index: int) -> np.ndarray:
        sample = self.samples[index]
        if sample.object_path is None:
            raise DatasetFormatError(self.root / "annotations_detectron2_obj" / self.split / f"{sample.stem}.png",
                                     "file not found", expected="the object map written by `prepare ade20k-part-234`")
        return read_object_map(sample.object_path)

    def instances(self) -> dict:
        """The COCO object file of this split, checked: 0-based category ids over the 44 objects."""
        path = self.root / INSTANCE_JSON[self.split]
        document = read_json(path, "an OV-PARTS COCO instance file")
        for key in ("images", "annotations", "categories"):
            if not isinstance(document.get(key), list):
                raise DatasetFormatError(path, "missing list", field=key, expected="a COCO instance file")
        for i, annotation in enumerate(document["annotations"]):
            category = annotation.get("category_id")
            if not isinstance(category, int) or not 0 <= category < NUM_OBJECTS:
                raise DatasetFormatError(path, f"category_id {category!r}", field=f"annotations[{i}].category_id",
                                         expected="0..43 (index into the 44 OV-PARTS objects)")
        return document


# ---------------------------------------------------------------------------------------------------------
# Conversion from the full release
# ---------------------------------------------------------------------------------------------------------

@dataclass
class Part234Labels:
    part_map: np.ndarray              # uint16 [H, W]
    object_map: np.ndarray            # uint8 [H, W]
    instances: list[tuple[int, np.ndarray]]   # (object index, visible mask) in JSON order


def _region(image: AdeFullImage, obj, classes: np.ndarray, instances: np.ndarray, level_file: Path,
            problems: list[str]) -> np.ndarray:
    """The pixels of one JSON object in its level mask, found through its instance PNG.

    The instance PNG links the JSON id to an instance (B value) of the level mask: the instance of the
    object's class that most of the PNG's visible (255) pixels fall on. The region is that instance's
    pixels in the level mask, not the PNG's 255 pixels: in the real samples the object mask also holds
    the pixels of the object's own parts where they stick out of its polygon (the PNG marks those 128),
    and a level-2 PNG can claim pixels that a sibling part covers.
    """
    path = image.instance_path(obj)
    visible = read_instance_mask(path) == 255
    if visible.shape != classes.shape:
        raise DatasetFormatError(path, f"size {visible.shape[1]}x{visible.shape[0]}",
                                 expected=f"the size of {level_file.name}")
    candidates = instances[visible & (classes == obj.name_ndx)]
    if candidates.size == 0:
        if visible.any():   # a broken link in one object must not stop a 27k-image conversion: report it
            problems.append(f"{path}: no visible pixel has class {obj.name_ndx} in {level_file.name}")
        return np.zeros(classes.shape, bool)
    ids, counts = np.unique(candidates, return_counts=True)
    return instances == ids[np.argmax(counts)]


def convert_image(image: AdeFullImage, mapping: Part234Mapping, problems: list[str] | None = None) -> Part234Labels:
    """Part and object labels of one full-release image by the rule in the module docstring.

    Objects whose instance PNG does not point at their class in the level mask are skipped and described
    in `problems`.
    """
    problems = [] if problems is None else problems
    annotation = read_annotation(image.json_path)
    shape = (annotation.height, annotation.width)
    part_map = np.full(shape, PART_IGNORE, dtype=np.uint16)
    object_map = np.full(shape, OBJECT_IGNORE, dtype=np.uint8)
    instances: list[tuple[int, np.ndarray]] = []
    objects = [obj for obj in annotation.level(0) if obj.name_ndx in mapping.object_of_ndx]
    if not objects:
        return Part234Labels(part_map, object_map, instances)
    if not image.seg_path.is_file():
        raise DatasetFormatError(image.seg_path, "file not found", expected=f"the object mask of {image.stem}")
    seg_classes, seg_instances = decode_class_instance(image.seg_path)
    if seg_classes.shape != shape:
        raise DatasetFormatError(image.seg_path, f"size {seg_classes.shape[1]}x{seg_classes.shape[0]}",
                                 expected=f"imsize {annotation.width}x{annotation.height} of {image.json_path.name}")
    parents = {}
    for obj in objects:
        category = mapping.object_of_ndx[obj.name_ndx]
        region = _region(image, obj, seg_classes, seg_instances, image.seg_path, problems)
        object_map[region] = category
        parents[obj.id] = (category, region)
        if region.any():
            instances.append((category, region))
    parts = [p for p in annotation.level(1)
             if p.ispartof in parents and (parents[p.ispartof][0], p.name_ndx) in mapping.part_of]
    if parts:
        parts_file = image.folder / f"{image.stem}_parts_1.png"
        if not parts_file.is_file():
            raise DatasetFormatError(parts_file, "file not found",
                                     expected=f"the level-1 part mask ({image.json_path.name} lists level-1 parts)")
        part_classes, part_instances = decode_class_instance(parts_file)
        for part in parts:
            category, parent_region = parents[part.ispartof]
            region = _region(image, part, part_classes, part_instances, parts_file, problems) & parent_region
            part_map[region] = mapping.part_of[(category, part.name_ndx)]
    return Part234Labels(part_map, object_map, instances)


def _record_path(out: Path, split: str, stem: str) -> Path:
    # Written last for each image: its presence means the image's PNGs and copy are complete (resumability).
    return out / ".partprobe_convert" / split / f"{stem}.json"


def convert_full_release(root: str | os.PathLike, out: str | os.PathLike | None = None, splits=SPLITS,
                         progress: bool = True) -> Path:
    """Convert a full release under `root` into `<out>/ADE20KPart234/` (default out = root).

    Deterministic and resumable: an image whose record file exists is skipped; every file is written
    atomically, the per-image record last, and the COCO files and label counts are rebuilt at the end.
    Objects the converter had to skip (see `convert_image`) are kept in the records and summarised.
    """
    source = ADE20KFull(root)
    out_root = Path(out if out is not None else root) / FOLDER
    mapping = load_mapping()
    problems: list[str] = []
    for split in splits:
        images = [image for image in source.images if image.split == split]
        for image in tqdm(images, desc=f"ADE20K-Part-234 {split}", unit="img", disable=not progress):
            record_path = _record_path(out_root, split, image.stem)
            if record_path.is_file():
                continue
            image_problems: list[str] = []
            labels = convert_image(image, mapping, image_problems)
            record = {"stem": image.stem, "included": bool((labels.part_map != PART_IGNORE).any()),
                      "problems": image_problems}
            if record["included"]:
                if not image.image_path.is_file():
                    raise DatasetFormatError(image.image_path, "file not found", expected=f"the JPEG of {image.stem}")
                write_bytes_atomic(out_root / "images" / split / f"{image.stem}.jpg", image.image_path.read_bytes())
                write_png(out_root / "annotations_detectron2_part" / split / f"{image.stem}.png", labels.part_map)
                write_png(out_root / "annotations_detectron2_obj" / split / f"{image.stem}.png", labels.object_map)
                record.update(
                    height=int(labels.part_map.shape[0]), width=int(labels.part_map.shape[1]),
                    parts=present_labels(labels.part_map, PART_IGNORE),
                    objects=present_labels(labels.object_map, OBJECT_IGNORE),
                    instances=[{"category_id": category, "segmentation": rle_encode(mask),
                                "area": int(mask.sum()), "bbox": mask_bbox(mask)}
                               for category, mask in labels.instances],
                )
            write_json_atomic(record_path, record, indent=None)
        problems += _write_split_files(out_root, split, [image.stem for image in images], mapping)
    if problems:
        print(f"{len(problems)} objects skipped, e.g.:\n  " + "\n  ".join(problems[:5]), file=sys.stderr)
    carry_marker(root, out_root)
    return out_root


def _write_split_files(out_root: Path, split: str, stems: list[str], mapping: Part234Mapping) -> list[str]:
    """COCO instance file and label counts of a split, assembled from the per-image records.

    Returns the problems the records hold.
    """
    images, annotations, part_counts, object_counts, problems = [], [], {}, {}, []
    for stem in stems:
        with open(_record_path(out_root, split, stem), "r", encoding="utf-8") as handle:
            record = json.load(handle)
        problems += record["problems"]
        if not record["included"]:
            continue
        image_id = int(stem.rsplit("_", 1)[1])      # ADE ids are unique within a split
        images.append({"id": image_id, "file_name": f"{stem}.jpg", "height": record["height"],
                       "width": record["width"]})
        for instance in record["instances"]:
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "iscrowd": 0, **instance})
        part_counts[f"{stem}.png"] = record["parts"]
        object_counts[f"{stem}.png"] = record["objects"]
    document = {
        "info": {"description": "ADE20K-Part-234 objects converted by partprobe from ADE20K_2021_17_01"},
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": [{"id": i, "name": name} for i, name in enumerate(mapping.object_names)],
    }
    write_json_atomic(out_root / INSTANCE_JSON[split], document, indent=None)
    label_dir = out_root / "annotations_detectron2_part"
    write_json_atomic(label_dir / f"{split}_part_label_count.json", part_counts)
    write_json_atomic(label_dir / f"{split}_obj_label_count.json", object_counts)
    return problems


# --- CLI hooks (python -m probes.data download|prepare|check ade20k-part-234) -----------------------------
def download(root: str | os.PathLike, name: str = "ade20k-part-234") -> None:
    print(DOWNLOAD_INSTRUCTIONS)


def prepare(root: str | os.PathLike, name: str = "ade20k-part-234", source=None) -> Path:
    """Build `<root>/ADE20KPart234/` from the full release in `source` (default: the one under `root`)."""
    return convert_full_release(source if source is not None else root, out=root)


def check(root: str | os.PathLike, name: str = "ade20k-part-234", max_images: int | None = None) -> dict:
    """Counts, part histogram (pixels per class) and the first problems of a prepared ADE20KPart234 folder."""
    report = new_report(name, root)
    histogram = np.zeros(NUM_PARTS, dtype=np.int64)
    for split in SPLITS:
        try:
            dataset = ADE20KPart234(root, split)
        except DatasetFormatError as error:
            add_problem(report, error)
            continue
        report["counts"][f"{split} images"] = len(dataset)
        try:
            report["counts"][f"{split} object instances"] = len(dataset.instances()["annotations"])
        except DatasetFormatError as error:
            add_problem(report, error)
        for index in range(len(dataset) if max_images is None else min(max_images, len(dataset))):
            try:
                labels = dataset.part_map(index)
            except DatasetFormatError as error:
                add_problem(report, error)
                continue
            histogram += np.bincount(labels[labels != PART_IGNORE].ravel(), minlength=NUM_PARTS)[:NUM_PARTS]
    names = class_lists()["ade234_part"]
    report["class_histogram"] = {names[i]: int(histogram[i]) for i in np.flatnonzero(histogram)}
    return report


DOWNLOAD_INSTRUCTIONS = """\
ADE20K-Part-234 is distributed by OV-PARTS on Google Drive only (no scripted download):
  https://drive.google.com/file/d/1EBVPW_tqzBOQ_DC6yLcouyxR7WrctRKi/view  ->  tar -xzf ADE20KPart234.tar.gz
Or build it from the ADE20K full release (registration: https://ade20k.csail.mit.edu/request_data/):
  python -m probes.data prepare ade20k-part-234 --root /data   (reads /data/ADE20K_2021_17_01, writes
  /data/ADE20KPart234; add --source DIR when the release is elsewhere)
"""
