"""COCO 2017 instances and person keypoints, read through pycocotools (docs/datasets.md#coco-2017).

    <root>/annotations/instances_{train,val}2017.json
    <root>/annotations/person_keypoints_{train,val}2017.json
    <root>/{train,val}2017/000000397133.jpg

Lists keep the JSON order (the official part-crop code walks annotations in file order). Keypoints are
[17, 3] arrays of (x, y, v): v = 0 not labelled (x = y = 0), 1 labelled but occluded, 2 visible.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from probes.data.errors import DatasetFormatError
from probes.data.records import require_file
from probes.data.report import add_problem, new_report

KEYPOINT_NAMES = ("nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder",
                  "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip",
                  "left_knee", "right_knee", "left_ankle", "right_ankle")
NUM_KEYPOINTS = len(KEYPOINT_NAMES)
SKELETON = ((16, 14), (14, 12), (17, 15), (15, 13), (12, 13), (6, 12), (7, 13), (6, 7), (6, 8), (7, 9),
            (8, 10), (9, 11), (2, 3), (1, 2), (1, 3), (2, 4), (3, 5), (4, 6), (5, 7))   # 1-based, as in the JSON
# The paper's three COCO parts (official code, 1-based keypoint ids): nose, right_wrist, left_ankle.
PAPER_KEYPOINT_IDS = (1, 11, 16)
SPLITS = ("train2017", "val2017")

# The 80 instance categories: id -> (name, supercategory). Ids are non-contiguous (1..90).
CATEGORIES = {
    1: ("person", "person"), 2: ("bicycle", "vehicle"), 3: ("car", "vehicle"), 4: ("motorcycle", "vehicle"),
    5: ("airplane", "vehicle"), 6: ("bus", "vehicle"), 7: ("train", "vehicle"), 8: ("truck", "vehicle"),
    9: ("boat", "vehicle"), 10: ("traffic light", "outdoor"), 11: ("fire hydrant", "outdoor"),
    13: ("stop sign", "outdoor"), 14: ("parking meter", "outdoor"), 15: ("bench", "outdoor"),
    16: ("bird", "animal"), 17: ("cat", "animal"), 18: ("dog", "animal"), 19: ("horse", "animal"),
    20: ("sheep", "animal"), 21: ("cow", "animal"), 22: ("elephant", "animal"), 23: ("bear", "animal"),
    24: ("zebra", "animal"), 25: ("giraffe", "animal"), 27: ("backpack", "accessory"),
    28: ("umbrella", "accessory"), 31: ("handbag", "accessory"), 32: ("tie", "accessory"),
    33: ("suitcase", "accessory"), 34: ("frisbee", "sports"), 35: ("skis", "sports"),
    36: ("snowboard", "sports"), 37: ("sports ball", "sports"), 38: ("kite", "sports"),
    39: ("baseball bat", "sports"), 40: ("baseball glove", "sports"), 41: ("skateboard", "sports"),
    42: ("surfboard", "sports"), 43: ("tennis racket", "sports"), 44: ("bottle", "kitchen"),
    46: ("wine glass", "kitchen"), 47: ("cup", "kitchen"), 48: ("fork", "kitchen"), 49: ("knife", "kitchen"),
    50: ("spoon", "kitchen"), 51: ("bowl", "kitchen"), 52: ("banana", "food"), 53: ("apple", "food"),
    54: ("sandwich", "food"), 55: ("orange", "food"), 56: ("broccoli", "food"), 57: ("carrot", "food"),
    58: ("hot dog", "food"), 59: ("pizza", "food"), 60: ("donut", "food"), 61: ("cake", "food"),
    62: ("chair", "furniture"), 63: ("couch", "furniture"), 64: ("potted plant", "furniture"),
    65: ("bed", "furniture"), 67: ("dining table", "furniture"), 70: ("toilet", "furniture"),
    72: ("tv", "electronic"), 73: ("laptop", "electronic"), 74: ("mouse", "electronic"),
    75: ("remote", "electronic"), 76: ("keyboard", "electronic"), 77: ("cell phone", "electronic"),
    78: ("microwave", "appliance"), 79: ("oven", "appliance"), 80: ("toaster", "appliance"),
    81: ("sink", "appliance"), 82: ("refrigerator", "appliance"), 84: ("book", "indoor"),
    85: ("clock", "indoor"), 86: ("vase", "indoor"), 87: ("scissors", "indoor"), 88: ("teddy bear", "indoor"),
    89: ("hair drier", "indoor"), 90: ("toothbrush", "indoor"),
}

URLS = {
    "annotations": "http://images.cocodataset.org/annotations/annotations_trainval2017.zip",
    "val2017": "http://images.cocodataset.org/zips/val2017.zip",
    "train2017": "http://images.cocodataset.org/zips/train2017.zip",     # 18 GB
}


@dataclass(frozen=True)
class CocoImage:
    id: int
    file_name: str
    path: Path
    width: int
    height: int


@dataclass(frozen=True, eq=False)   # holds arrays: compare and hash by identity
class PersonAnn:
    id: int
    image_id: int
    keypoints: np.ndarray      # float64 [17, 3]: x, y, v
    num_keypoints: int
    iscrowd: int
    bbox: tuple                # (x, y, width, height)
    area: float
    category_id: int = 1


@dataclass(frozen=True, eq=False)   # holds arrays: compare and hash by identity
class ObjectAnn:
    id: int
    image_id: int
    category_id: int
    bbox: tuple
    iscrowd: int
    area: float
    segmentation: object = field(default=None, repr=False)   # polygons, or RLE {counts, size} when iscrowd


def load_json(path: Path) -> dict:
    """The parsed JSON file, with errors that name the file (and the line of a syntax error)."""
    require_file(path, "a COCO annotation JSON (annotations_trainval2017.zip, see `prepare coco`)")
    try:
        with open(path, "rb") as handle:
            data = json.load(handle)
    except json.JSONDecodeError as error:
        raise DatasetFormatError(path, f"invalid JSON: {error.msg}", line=error.lineno,
                                 expected="a COCO annotation file") from None
    if not isinstance(data, dict):
        raise DatasetFormatError(path, f"top level is a {type(data).__name__}", expected="a JSON object")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise DatasetFormatError(path, f"no {key!r} list", field=key,
                                     expected="COCO top-level keys info, licenses, images, annotations, categories")
    return data


def build_index(data: dict):
    """A pycocotools COCO object over already-loaded data (its progress prints are swallowed)."""
    from pycocotools.coco import COCO

    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = data
        coco.createIndex()
    return coco


class _CocoFile:
    kind = ""   # "instances" or "person_keypoints"

    def __init__(self, root: str | os.PathLike, split: str = "train2017"):
        self.root, self.split = Path(root), split
        self.image_dir = self.root / split
        self.annotation_file = self.root / "annotations" / f"{self.kind}_{split}.json"
        data = load_json(self.annotation_file)
        self.images = self._read_images(data["images"])
        self.categories = self._read_categories(data["categories"])
        self.coco = build_index(data)       # for getAnnIds / annToMask / COCOeval
        self.dataset = data

    def _fail(self, where: str, problem: str, expected: str):
        raise DatasetFormatError(self.annotation_file, problem, field=where, expected=expected)

    def _read_images(self, records: list) -> dict[int, CocoImage]:
        images: dict[int, CocoImage] = {}
        for index, record in enumerate(records):
            where = f"images[{index}]"
            if not isinstance(record, dict):
                self._fail(where, f"{record!r}", "an object")
            image_id = _integer(self, record, "id", where)
            if image_id in images:
                self._fail(where + ".id", f"image id {image_id} repeated", "unique image ids")
            width, height = _integer(self, record, "width", where), _integer(self, record, "height", where)
            if width <= 0 or height <= 0:
                self._fail(where, f"size {width}x{height}", "width and height > 0")
            file_name = record.get("file_name")
            if not isinstance(file_name, str) or not file_name:
                self._fail(where + ".file_name", f"{file_name!r}", "a file name such as 000000397133.jpg")
            images[image_id] = CocoImage(image_id, file_name, self.image_dir / file_name, width, height)
        return images

    def _read_categories(self, records: list) -> dict[int, str]:
        categories: dict[int, str] = {}
        for index, record in enumerate(records):
            where = f"categories[{index}]"
            category_id = _integer(self, record, "id", where)
            if category_id in categories:
                self._fail(where + ".id", f"category id {category_id} repeated", "unique category ids")
            categories[category_id] = str(record.get("name", ""))
        return categories

    def _common(self, index: int, record) -> tuple:
        """id, image_id, category_id, bbox, iscrowd, area of one annotation, validated."""
        where = f"annotations[{index}]"
        if not isinstance(record, dict):
            self._fail(where, f"{record!r}", "an object")
        ann_id = _integer(self, record, "id", where)
        where = f"annotations[{index}] (id {ann_id})"
        image_id = _integer(self, record, "image_id", where)
        if image_id not in self.images:
            self._fail(where + ".image_id", f"image id {image_id} is not in 'images'", "an id listed in 'images'")
        category_id = _integer(self, record, "category_id", where)
        if category_id not in self.categories:
            self._fail(where + ".category_id", f"category id {category_id} is not in 'categories'",
                       "an id listed in 'categories'")
        bbox = record.get("bbox")
        if (not isinstance(bbox, list) or len(bbox) != 4 or not all(_is_number(v) for v in bbox)
                or bbox[2] < 0 or bbox[3] < 0):
            self._fail(where + ".bbox", f"{bbox!r}", "[x, y, width, height] with width, height >= 0")
        iscrowd = record.get("iscrowd", 0)
        if iscrowd not in (0, 1):
            self._fail(where + ".iscrowd", f"{iscrowd!r}", "0 or 1")
        area = record.get("area", 0.0)
        if not _is_number(area) or area < 0:
            self._fail(where + ".area", f"{area!r}", "a number >= 0")
        return ann_id, image_id, category_id, tuple(float(v) for v in bbox), int(iscrowd), float(area)


class COCOKeypoints(_CocoFile):
    """person_keypoints_<split>.json: the person category with 17 keypoints per annotation."""
    kind = "person_keypoints"

    def __init__(self, root: str | os.PathLike, split: str = "train2017"):
        super().__init__(root, split)
        data = self.dataset
        person = next((c for c in data["categories"] if c.get("id") == 1), None)
        names = tuple(person.get("keypoints", ())) if person else ()
        if names != KEYPOINT_NAMES:
            self._fail("categories[person].keypoints", f"{list(names)!r}",
                       f"the 17 COCO keypoint names {list(KEYPOINT_NAMES)}")
        self.keypoint_names = list(KEYPOINT_NAMES)
        self.annotations: list[PersonAnn] = []
        seen: set[int] = set()
        for index, record in enumerate(data["annotations"]):
            ann_id, image_id, category_id, bbox, iscrowd, area = self._common(index, record)
            where = f"annotations[{index}] (id {ann_id})"
            if ann_id in seen:
                self._fail(where + ".id", f"annotation id {ann_id} repeated", "unique annotation ids")
            seen.add(ann_id)
            values = record.get("keypoints")
            if (not isinstance(values, list) or len(values) != 3 * NUM_KEYPOINTS
                    or not all(_is_number(v) for v in values)):
                self._fail(where + ".keypoints", f"{_short(values)}", f"{3 * NUM_KEYPOINTS} numbers x, y, v")
            keypoints = np.asarray(values, dtype=np.float64).reshape(NUM_KEYPOINTS, 3)
            bad = ~np.isin(keypoints[:, 2], (0, 1, 2))
            if bad.any():
                k = int(np.flatnonzero(bad)[0])
                self._fail(where + ".keypoints", f"v = {keypoints[k, 2]:g} for {KEYPOINT_NAMES[k]}",
                           "visibility v in {0, 1, 2}")
            if "num_keypoints" in record:
                num_keypoints = _integer(self, record, "num_keypoints", where)
            else:
                num_keypoints = int((keypoints[:, 2] > 0).sum())
            self.annotations.append(PersonAnn(ann_id, image_id, keypoints, int(num_keypoints), iscrowd, bbox,
                                              area, category_id))


class COCOInstances(_CocoFile):
    """instances_<split>.json: 80 categories with non-contiguous ids."""
    kind = "instances"

    def __init__(self, root: str | os.PathLike, split: str = "val2017"):
        super().__init__(root, split)
        self.annotations: list[ObjectAnn] = []
        seen: set[int] = set()
        for index, record in enumerate(self.dataset["annotations"]):
            ann_id, image_id, category_id, bbox, iscrowd, area = self._common(index, record)
            if ann_id in seen:
                self._fail(f"annotations[{index}].id", f"annotation id {ann_id} repeated", "unique annotation ids")
            seen.add(ann_id)
            segmentation = record.get("segmentation")
            if iscrowd and not (isinstance(segmentation, dict) and "counts" in segmentation and "size" in segmentation):
                self._fail(f"annotations[{index}] (id {ann_id}).segmentation", f"{_short(segmentation)}",
                           "an RLE {'counts': ..., 'size': [h, w]} for iscrowd = 1")
            self.annotations.append(ObjectAnn(ann_id, image_id, category_id, bbox, iscrowd, area, segmentation))


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and np.isfinite(value)


def _integer(owner: _CocoFile, record: dict, key: str, where: str) -> int:
    value = record.get(key)
    if isinstance(value, bool) or not isinstance(value, int):
        owner._fail(f"{where}.{key}", f"{value!r}", "an integer")
    return value


def _short(value, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


# --- CLI hooks (python -m probes.data download|prepare|check coco) ---------------------------------------
def download(root: str | os.PathLike, name: str = "coco") -> list[Path]:
    """Annotations, val2017 and train2017 zips (no published checksums; ~19 GB in all)."""
    from probes.data.download import download_file
    root = Path(root)
    return [download_file(url, root / url.rsplit("/", 1)[1]) for url in URLS.values()]


def prepare(root: str | os.PathLike, name: str = "coco", source=None) -> Path:
    """Unpack whichever of the three zips are in `root` (or `source`) and not unpacked yet."""
    from probes.data.download import extract_archive
    root = Path(root)
    source = Path(source) if source else root
    for target, url in (("annotations", URLS["annotations"]), ("val2017", URLS["val2017"]),
                        ("train2017", URLS["train2017"])):
        archive = source / url.rsplit("/", 1)[1]
        if not (root / target).is_dir() and archive.is_file():
            extract_archive(archive, root)
    if not (root / "annotations").is_dir():
        raise DatasetFormatError(root / "annotations", "folder not found",
                                 expected=f"annotations_trainval2017.zip in {source} (see `download coco`)")
    return root


def check(root: str | os.PathLike, name: str = "coco") -> dict:
    report = new_report(name, root)
    root = Path(root)
    histogram: dict[str, int] = {}
    for split in SPLITS:
        files = {kind: root / "annotations" / f"{kind}_{split}.json" for kind in ("instances", "person_keypoints")}
        if not any(path.is_file() for path in files.values()):
            continue
        try:
            instances = COCOInstances(root, split) if files["instances"].is_file() else None
            keypoints = COCOKeypoints(root, split) if files["person_keypoints"].is_file() else None
        except DatasetFormatError as error:
            add_problem(report, error)
            continue
        reader = instances or keypoints
        report["counts"][f"{split} images"] = len(reader.images)
        missing = [image for image in reader.images.values() if not image.path.is_file()]
        report["counts"][f"{split} image files missing"] = len(missing)
        for image in missing[:3]:
            add_problem(report, f"{image.path}: image file not found ({reader.annotation_file.name} id {image.id})")
        if instances:
            report["counts"][f"{split} instance annotations"] = len(instances.annotations)
            report["counts"][f"{split} crowd annotations"] = sum(a.iscrowd for a in instances.annotations)
            for ann in instances.annotations:
                category = instances.categories[ann.category_id]
                histogram[category] = histogram.get(category, 0) + 1
        if keypoints:
            report["counts"][f"{split} person annotations"] = len(keypoints.annotations)
            report["counts"][f"{split} persons with keypoints"] = sum(a.num_keypoints > 0 for a in keypoints.annotations)
            _check_keypoints(report, keypoints)
    if not report["counts"]:
        add_problem(report, f"{root / 'annotations'}: no instances_*/person_keypoints_* JSON for {', '.join(SPLITS)}")
    report["class_histogram"] = dict(sorted(histogram.items(), key=lambda item: -item[1]))
    return report


def _check_keypoints(report: dict, reader: COCOKeypoints) -> None:
    """Consistency rules of the format that the reader tolerates but a converter should not produce."""
    for ann in reader.annotations:
        where = f"{reader.annotation_file}: annotation id {ann.id}"
        labelled = ann.keypoints[:, 2] > 0
        if ann.num_keypoints != int(labelled.sum()):
            add_problem(report, f"{where}: num_keypoints = {ann.num_keypoints} but {int(labelled.sum())} have v > 0")
        if (ann.keypoints[~labelled, :2] != 0).any():
            add_problem(report, f"{where}: a keypoint with v = 0 has x, y != 0, 0")
        image = reader.images[ann.image_id]
        xy = ann.keypoints[labelled, :2]
        if ((xy < 0) | (xy >= (image.width, image.height))).any():
            add_problem(report, f"{where}: a labelled keypoint lies outside the {image.width}x{image.height} image")
