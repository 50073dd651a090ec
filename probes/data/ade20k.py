"""ADE20K: the SceneParsing benchmark (ADEChallengeData2016, 150 classes) and the full release (2021_17_01).

SceneParsing (docs/datasets.md#ade20k-sceneparsing)::

    ADEChallengeData2016/images/{training,validation}/ADE_*.jpg
                        annotations/{training,validation}/ADE_*.png   mode L, 0 = other (ignored), 1..150
                        objectInfo150.txt                              Idx Ratio Train Val Name (tab separated)

Full release (docs/datasets.md#ade20k-full-release)::

    ADE20K_2021_17_01/images/ADE/<split>/<scene group>/<scene>/ADE_train_00016869.jpg
        .json            per-image objects and parts (mixed scalar/list field shapes)
        _seg.png         RGB: class = (R // 10) * 256 + G (1-based into objectnames, 0 = none), instance in B
        _parts_<L>.png   same encoding for part level L = 1, 2, ... (only the levels present)
        ADE_train_00016869/instance_NNN_ADE_train_00016869.png   L: 255 visible, 128 occluded, 0 outside

`mapFromADE.txt` of the SceneParsing devkit turns full-release classes into the 150 challenge classes;
`full_to_challenge` reproduces the devkit's `convertFromADE.m` (map, then nearest resize so the shorter
side is at most 512).
"""
from __future__ import annotations

import functools
import json
import os
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from probes.data.errors import DatasetFormatError
from probes.data.labelmaps import checked_label_maps, open_image, read_label_png
from probes.data.records import require_dir, require_file
from probes.data.report import add_problem, new_report

NUM_CLASSES_150 = 150
NUM_OBJECTNAMES = 3688            # classes of ADE20K_2021_17_01 (`index_ade20k.pkl['objectnames']`)
CHALLENGE_SHORT_SIDE = 512        # convertFromADE.m shrinks images whose shorter side is longer than this
SPLITS = ("training", "validation")
INSTANCE_VALUES = (0, 128, 255)   # outside, occluded (amodal) extent, visible

_RESOURCES = Path(__file__).with_name("resources")


@functools.lru_cache(maxsize=1)
def class_lists() -> dict:
    """The machine-readable class lists (docs/datasets.md#class-lists), shipped as `resources/class_lists.json`.

    Shared, read once: callers must not modify the lists."""
    with open(_RESOURCES / "class_lists.json", "r", encoding="utf-8") as handle:
        return json.load(handle)


# ---------------------------------------------------------------------------------------------------------
# SceneParsing (ADEChallengeData2016)
# ---------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SceneParsingSample:
    stem: str
    image_path: Path
    annotation_path: Path


def read_object_info(path: str | os.PathLike) -> list[str]:
    """Class names of `objectInfo150.txt`, in label order (names[v - 1] is the class of label value v)."""
    path = require_file(path, "objectInfo150.txt of ADEChallengeData2016")
    with open(path, "r", encoding="utf-8") as handle:
        lines = [line.rstrip("\r\n") for line in handle if line.strip()]
    header = lines[0].split("\t") if lines else []
    if [column.strip() for column in header] != ["Idx", "Ratio", "Train", "Val", "Name"]:
        raise DatasetFormatError(path, f"header {lines[0] if lines else ''!r}", line=1,
                                 expected="tab-separated header Idx Ratio Train Val Name")
    names = []
    for line_number, line in enumerate(lines[1:], start=2):
        columns = line.split("\t")
        if len(columns) != 5:
            raise DatasetFormatError(path, f"{len(columns)} tab-separated columns", line=line_number,
                                     expected="5 columns: Idx Ratio Train Val Name")
        if columns[0].strip() != str(len(names) + 1):
            raise DatasetFormatError(path, f"index {columns[0]!r}", line=line_number, field="Idx",
                                     expected=f"{len(names) + 1} (rows numbered 1, 2, ... in order)")
        names.append(columns[4])
    if len(names) != NUM_CLASSES_150:
        raise DatasetFormatError(path, f"{len(names)} class rows", expected=f"{NUM_CLASSES_150} rows")
    return names


def read_challenge_label(path: str | os.PathLike) -> np.ndarray:
    """uint8 [H, W] with values 0..150 (0 = other objects, ignored in evaluation)."""
    return read_label_png(path, ("L",), NUM_CLASSES_150 + 1, what="an ADE20K-150 annotation: mode L, values 0..150")


class ADE20KSceneParsing:
    """ADEChallengeData2016 split: image/annotation pairs matched by file stem.

    `root` is the ADEChallengeData2016 folder or a folder holding it.
    """

    def __init__(self, root: str | os.PathLike, split: str = "training"):
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        root = Path(root)
        if (root / "ADEChallengeData2016").is_dir():
            root = root / "ADEChallengeData2016"
        self.root = root
        self.split = split
        image_dir = require_dir(root / "images" / split, f"ADEChallengeData2016/images/{split}/ with ADE_*.jpg")
        label_dir = require_dir(root / "annotations" / split, f"ADEChallengeData2016/annotations/{split}/")
        info = root / "objectInfo150.txt"
        self.class_names = read_object_info(info) if info.is_file() else class_lists()["ade150_long"]
        self.samples = []
        for image_path in sorted(image_dir.glob("*.jpg")):
            label_path = label_dir / f"{image_path.stem}.png"
            if not label_path.is_file():
                raise DatasetFormatError(label_path, "annotation missing for " + image_path.name,
                                         expected="one annotations/<split>/<stem>.png per image")
            self.samples.append(SceneParsingSample(image_path.stem, image_path, label_path))

    def __len__(self) -> int:
        return len(self.samples)

    def label(self, index: int) -> np.ndarray:
        return read_challenge_label(self.samples[index].annotation_path)


def read_map_from_ade(path: str | os.PathLike) -> dict[int, int]:
    """`mapFromADE.txt` as {full-release class: challenge class}; several sources may share a challenge class."""
    path = require_file(path, "mapFromADE.txt of the SceneParsing devkit (convertFromADE/)")
    mapping: dict[int, int] = {}
    with open(path, "r", encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            columns = line.split()      # some lines carry trailing spaces and tabs
            if not columns:
                continue
            if len(columns) != 2 or not all(c.isdigit() for c in columns):
                raise DatasetFormatError(path, f"line {line.strip()!r}", line=line_number,
                                         expected="<challenge index 1..150> <full-release index>")
            challenge, full = int(columns[0]), int(columns[1])
            if not 1 <= challenge <= NUM_CLASSES_150:
                raise DatasetFormatError(path, f"challenge index {challenge}", line=line_number,
                                         field="challenge index", expected="1..150")
            if mapping.get(full, challenge) != challenge:
                raise DatasetFormatError(path, f"full-release index {full} mapped twice", line=line_number,
                                         expected="each full-release index at most once")
            mapping[full] = challenge
    if sorted(set(mapping.values())) != list(range(1, NUM_CLASSES_150 + 1)):
        raise DatasetFormatError(path, "not every challenge class has a source", expected="classes 1..150")
    return mapping


def challenge_size(width: int, height: int, short_side: int = CHALLENGE_SHORT_SIDE) -> tuple[int, int]:
    """(width, height) after convertFromADE.m's shrink: shorter side scaled to 512 when it is longer."""
    shorter = min(width, height)
    if shorter <= short_side:
        return width, height
    scale = short_side / shorter
    return int(round(width * scale)), int(round(height * scale))


def full_to_challenge(classes: np.ndarray, mapping: dict[int, int]) -> np.ndarray:
    """Map a full-release class map to 0..150 (unmapped classes -> 0) and shrink it with nearest neighbour."""
    lookup = np.zeros(max(int(classes.max()), max(mapping)) + 1, dtype=np.uint8)
    for full, challenge in mapping.items():
        lookup[full] = challenge
    labels = lookup[classes]
    height, width = labels.shape
    size = challenge_size(width, height)
    if size != (width, height):
        labels = np.asarray(Image.fromarray(labels).resize(size, Image.NEAREST))
    return labels


# ---------------------------------------------------------------------------------------------------------
# Full release (2021_17_01): masks
# ---------------------------------------------------------------------------------------------------------

def decode_class_instance(path: str | os.PathLike, vocabulary: int = NUM_OBJECTNAMES) -> tuple[np.ndarray, np.ndarray]:
    """Decode a `_seg.png` / `_parts_<L>.png`: (class int32 [H, W], instance int32 [H, W]).

    class = (R // 10) * 256 + G, 1-based into objectnames (0 = nothing at this level). Instances are
    numbered 1..N by increasing B value (0 where B == 0): the toolkit only uses B through `np.unique`.
    """
    image = open_image(path, "an RGB ADE20K mask (_seg.png or _parts_N.png)")
    if image.mode != "RGB":
        raise DatasetFormatError(path, f"PNG mode {image.mode}", field="mode",
                                 expected="RGB with class (R//10)*256+G and instance in B")
    rgb = np.asarray(image)
    red = rgb[..., 0].astype(np.int32)
    off = red % 10 != 0
    if off.any():
        y, x = np.argwhere(off)[0]
        raise DatasetFormatError(path, f"pixel (x={x}, y={y}) has R = {red[y, x]}", field="R channel",
                                 expected="a multiple of 10 (class = (R//10)*256 + G)")
    classes = (red // 10) * 256 + rgb[..., 1]
    too_big = classes > vocabulary
    if too_big.any():
        y, x = np.argwhere(too_big)[0]
        raise DatasetFormatError(path, f"pixel (x={x}, y={y}) decodes to class {classes[y, x]}",
                                 field="class (R//10)*256+G", expected=f"0..{vocabulary} (objectnames size)")
    blue = rgb[..., 2]
    values, inverse = np.unique(blue, return_inverse=True)
    instances = inverse.reshape(blue.shape).astype(np.int32)
    if values[0] != 0:          # no pixel without an instance: ranks start at 1 anyway
        instances += 1
    return classes, instances


def read_instance_mask(path: str | os.PathLike) -> np.ndarray:
    """An `instance_NNN_*.png`: uint8 [H, W] with values in {0, 128, 255}."""
    labels = read_label_png(path, ("L",), 256, what="an ADE20K instance mask: mode L, values 0/128/255")
    bad = ~np.isin(labels, INSTANCE_VALUES)
    if bad.any():
        y, x = np.argwhere(bad)[0]
        raise DatasetFormatError(path, f"pixel (x={x}, y={y}) has value {labels[y, x]}", field="pixel value",
                                 expected="0 (outside), 128 (occluded extent) or 255 (visible)")
    return labels


# ---------------------------------------------------------------------------------------------------------
# Full release: per-image JSON
# ---------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class AdeObject:
    """One entry of `annotation.object`: a whole object (part_level 0) or a part (level >= 1)."""
    id: int
    name: str
    name_ndx: int                 # 1-based objectnames index == class value in the masks
    raw_name: str
    part_level: int
    ispartof: int | None          # id of the object this part belongs to (None for whole objects)
    hasparts: tuple[int, ...]
    occluded: bool | None         # None where the JSON has []
    attributes: tuple[str, ...]
    crop: bool
    instance_mask: str            # relative to the image folder


@dataclass(frozen=True)
class AdeAnnotation:
    json_path: Path
    filename: str
    height: int
    width: int
    scene: tuple[str, ...]
    objects: tuple[AdeObject, ...]

    @property
    def folder(self) -> Path:
        return self.json_path.parent

    @property
    def stem(self) -> str:
        return self.json_path.stem

    def by_id(self) -> dict[int, AdeObject]:
        return {obj.id: obj for obj in self.objects}

    def level(self, part_level: int) -> list[AdeObject]:
        return [obj for obj in self.objects if obj.part_level == part_level]


def _field_error(path, where: str, value, expected: str) -> DatasetFormatError:
    return DatasetFormatError(path, f"value {value!r}", field=where, expected=expected)


def _integer(path, where: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _field_error(path, where, value, "an integer")
    return value


def _integer_list(path, where: str, value) -> tuple[int, ...]:
    """MATLAB's jsonencode squeezes one-element arrays to scalars: accept an int or a list of ints."""
    values = value if isinstance(value, list) else [value]
    return tuple(_integer(path, where, v) for v in values)


def _parse_object(path, index: int, entry) -> AdeObject:
    where = f"annotation.object[{index}]"
    if not isinstance(entry, dict):
        raise _field_error(path, where, entry, "an object record")
    for key in ("id", "name", "name_ndx", "parts", "instance_mask"):
        if key not in entry:
            raise DatasetFormatError(path, "missing key", field=f"{where}.{key}", expected="present in every object")
    parts = entry["parts"]
    if not isinstance(parts, dict) or "part_level" not in parts:
        raise _field_error(path, f"{where}.parts", parts, "{hasparts, ispartof, part_level}")
    part_level = _integer(path, f"{where}.parts.part_level", parts["part_level"])
    ispartof = _integer_list(path, f"{where}.parts.ispartof", parts.get("ispartof", []))
    if len(ispartof) > 1 or (part_level > 0) != (len(ispartof) == 1):
        raise _field_error(path, f"{where}.parts.ispartof", parts.get("ispartof"),
                           "one object id for a part (part_level > 0), [] for a whole object")
    occluded = entry.get("occluded", [])
    if occluded not in ("yes", "no", []):
        raise _field_error(path, f"{where}.occluded", occluded, '"yes", "no" or []')
    attributes = entry.get("attributes", [])
    attributes = (attributes,) if isinstance(attributes, str) else tuple(attributes)
    crop = entry.get("crop", "0")
    if str(crop) not in ("0", "1"):
        raise _field_error(path, f"{where}.crop", crop, '"0" or "1"')
    name_ndx = _integer(path, f"{where}.name_ndx", entry["name_ndx"])
    if name_ndx < 1:
        raise _field_error(path, f"{where}.name_ndx", name_ndx, "a 1-based objectnames index (>= 1)")
    return AdeObject(
        id=_integer(path, f"{where}.id", entry["id"]),
        name=str(entry["name"]),
        name_ndx=name_ndx,
        raw_name=str(entry.get("raw_name", entry["name"])),
        part_level=part_level,
        ispartof=ispartof[0] if ispartof else None,
        hasparts=_integer_list(path, f"{where}.parts.hasparts", parts.get("hasparts", [])),
        occluded=None if occluded == [] else occluded == "yes",
        attributes=attributes,
        crop=str(crop) == "1",
        instance_mask=str(entry["instance_mask"]),
    )


def read_annotation(path: str | os.PathLike) -> AdeAnnotation:
    """Parse a full-release per-image JSON, checking the fields the converters rely on."""
    path = Path(path)
    if not path.is_file():
        raise DatasetFormatError(path, "file not found", expected="the per-image JSON of the ADE20K full release")
    try:
        with open(path, "r", encoding="utf-8", errors="surrogateescape") as handle:
            document = json.load(handle)
    except json.JSONDecodeError as error:
        raise DatasetFormatError(path, f"not valid JSON ({error})", expected="an ADE20K per-image JSON") from None
    annotation = document.get("annotation") if isinstance(document, dict) else None
    if not isinstance(annotation, dict):
        raise DatasetFormatError(path, "no top-level 'annotation' record", field="annotation",
                                 expected='{"annotation": {...}}')
    imsize = annotation.get("imsize")
    if not (isinstance(imsize, list) and len(imsize) in (2, 3) and all(isinstance(v, int) and v > 0 for v in imsize)):
        raise _field_error(path, "annotation.imsize", imsize, "[height, width, channels] of positive integers")
    entries = annotation.get("object", [])
    if isinstance(entries, dict):       # a single object squeezed to a record
        entries = [entries]
    if not isinstance(entries, list):
        raise _field_error(path, "annotation.object", type(entries).__name__, "a list of object records")
    objects = tuple(_parse_object(path, i, entry) for i, entry in enumerate(entries))
    ids = [obj.id for obj in objects]
    if len(set(ids)) != len(ids):
        raise DatasetFormatError(path, "duplicate object ids", field="annotation.object[].id", expected="unique ids")
    known = set(ids)
    for i, obj in enumerate(objects):
        if obj.ispartof is not None and obj.ispartof not in known:
            raise _field_error(path, f"annotation.object[{i}].parts.ispartof", obj.ispartof,
                               "the id of another object of this image")
    scene = annotation.get("scene", [])
    return AdeAnnotation(
        json_path=path,
        filename=str(annotation.get("filename", path.stem + ".jpg")),
        height=imsize[0],
        width=imsize[1],
        scene=(scene,) if isinstance(scene, str) else tuple(scene),
        objects=objects,
    )


# ---------------------------------------------------------------------------------------------------------
# Full release: the dataset
# ---------------------------------------------------------------------------------------------------------

_STEM = re.compile(r"ADE_(train|val|frame)_\d+")


@dataclass(frozen=True)
class AdeFullImage:
    stem: str
    split: str
    folder: Path

    @property
    def json_path(self) -> Path:
        return self.folder / f"{self.stem}.json"

    @property
    def image_path(self) -> Path:
        return self.folder / f"{self.stem}.jpg"

    @property
    def seg_path(self) -> Path:
        return self.folder / f"{self.stem}_seg.png"

    def part_paths(self) -> list[Path]:
        """`_parts_1.png`, `_parts_2.png`, ... up to the first level that has no file."""
        paths = []
        while (self.folder / f"{self.stem}_parts_{len(paths) + 1}.png").is_file():
            paths.append(self.folder / f"{self.stem}_parts_{len(paths) + 1}.png")
        return paths

    def instance_path(self, obj: AdeObject) -> Path:
        return self.folder / obj.instance_mask


@dataclass
class AdeLevels:
    """Decoded masks of one image: level 0 = `_seg.png`, level L = `_parts_L.png`."""
    classes: list[np.ndarray] = field(default_factory=list)
    instances: list[np.ndarray] = field(default_factory=list)


class ADE20KFull:
    """The full release, scanned for per-image JSON files under `images/ADE/<split>/`.

    `root` is ADE20K_2021_17_01 (the folder holding images/ADE) or a folder holding it.
    """

    def __init__(self, root: str | os.PathLike, split: str | None = None, vocabulary: int = NUM_OBJECTNAMES):
        root = Path(root)
        if not (root / "images" / "ADE").is_dir() and (root / "ADE20K_2021_17_01").is_dir():
            root = root / "ADE20K_2021_17_01"
        self.root = root
        self.vocabulary = vocabulary
        base = require_dir(root / "images" / "ADE", "ADE20K_2021_17_01/images/ADE/<split>/<group>/<scene>/")
        splits = SPLITS if split is None else (split,)
        self.images: list[AdeFullImage] = []
        for name in splits:
            if name not in SPLITS:
                raise ValueError(f"split must be one of {SPLITS}, got {name!r}")
            if not (base / name).is_dir():
                continue
            # Sorted by file name, not by path: the scene folders must not decide the order.
            for json_path in sorted((base / name).rglob("ADE_*.json"), key=lambda p: p.name):
                if _STEM.fullmatch(json_path.stem):
                    self.images.append(AdeFullImage(json_path.stem, name, json_path.parent))
        if not self.images:
            raise DatasetFormatError(base, "no ADE_*.json found", expected=f"images in {', '.join(splits)}")

    def __len__(self) -> int:
        return len(self.images)

    def annotation(self, image: AdeFullImage) -> AdeAnnotation:
        return read_annotation(image.json_path)

    def levels(self, image: AdeFullImage) -> AdeLevels:
        """Decode `_seg.png` and every `_parts_L.png` of an image (a missing `_seg.png` is an error)."""
        levels = AdeLevels()
        if not image.seg_path.is_file():
            raise DatasetFormatError(image.seg_path, "file not found", expected=f"the object mask of {image.stem}")
        for path in [image.seg_path, *image.part_paths()]:
            classes, instances = decode_class_instance(path, self.vocabulary)
            levels.classes.append(classes)
            levels.instances.append(instances)
        return levels


# ---------------------------------------------------------------------------------------------------------
# CLI hooks (python -m probes.data download|prepare|check ade20k|ade20k-full)
# ---------------------------------------------------------------------------------------------------------

SCENEPARSING_URL = "http://data.csail.mit.edu/places/ADEchallenge/ADEChallengeData2016.zip"
FULL_RELEASE_INSTRUCTIONS = """\
The ADE20K full release (ADE20K_2021_17_01) needs a registration: https://ade20k.csail.mit.edu/request_data/
(terms: https://ade20k.csail.mit.edu/terms). Download ADE20K_2021_17_01.zip, then
  python -m probes.data prepare ade20k-full --root {root} --source ADE20K_2021_17_01.zip
"""


def download(root: str | os.PathLike, name: str = "ade20k") -> Path | None:
    """ade20k: fetch ADEChallengeData2016.zip into `root`; ade20k-full: print how to get the release."""
    if name != "ade20k":
        print(FULL_RELEASE_INSTRUCTIONS.format(root=Path(root)))
        return None
    from probes.data.download import download_file

    return download_file(SCENEPARSING_URL, Path(root) / "ADEChallengeData2016.zip")


def prepare(root: str | os.PathLike, name: str = "ade20k", source=None) -> Path:
    """Unpack the archive (in `root`, or the `source` file) unless already unpacked, then check the layout."""
    from probes.data.download import extract_archive

    root = Path(root)
    if name == "ade20k":
        if not any((folder / "objectInfo150.txt").is_file() for folder in (root, root / "ADEChallengeData2016")):
            extract_archive(Path(source) if source else root / "ADEChallengeData2016.zip", root)
        for split in SPLITS:
            ADE20KSceneParsing(root, split)
        return root
    if source is not None and Path(source).is_file():      # ADE20K_2021_17_01.zip
        extract_archive(source, root)
        source = None
    ADE20KFull(source if source is not None else root)     # a release folder elsewhere is only checked
    return root


def check(root: str | os.PathLike, name: str = "ade20k") -> dict:
    return check_scene_parsing(root, name) if name == "ade20k" else check_full_release(root, name)


def check_scene_parsing(root: str | os.PathLike, name: str = "ade20k") -> dict:
    """Images per split, label histogram (pixels per class, 0 = other) and the first problems."""
    report = new_report(name, root)
    histogram = np.zeros(NUM_CLASSES_150 + 1, dtype=np.int64)
    names = ["other"] + class_lists()["ade150_mmseg"]
    for labels in checked_label_maps(report, SPLITS, lambda split: ADE20KSceneParsing(root, split),
                                     ADE20KSceneParsing.label, lambda sample: sample.annotation_path):
        histogram += np.bincount(labels.ravel(), minlength=NUM_CLASSES_150 + 1)
    report["class_histogram"] = {f"{v} {names[v]}": int(n) for v, n in enumerate(histogram) if n}
    return report


def check_full_release(root: str | os.PathLike, name: str = "ade20k-full") -> dict:
    """Images, objects and parts per level, instance histogram of the object classes, first problems.

    Reads the JSON files and checks that every mask file they need exists (no pixel decoding: fast).
    """
    report = new_report(name, root)
    try:
        dataset = ADE20KFull(root)
    except DatasetFormatError as error:
        add_problem(report, error)
        return report
    counts = {f"{split} images": 0 for split in SPLITS}
    per_level: dict[int, int] = {}
    histogram: dict[str, int] = {}
    for image in dataset.images:
        counts[f"{image.split} images"] += 1
        try:
            annotation = dataset.annotation(image)
        except DatasetFormatError as error:
            add_problem(report, error)
            continue
        for path in [image.image_path, image.seg_path]:
            if not path.is_file():
                add_problem(report, f"{path}: file not found")
        levels = len(image.part_paths())
        for obj in annotation.objects:
            per_level[obj.part_level] = per_level.get(obj.part_level, 0) + 1
            if obj.part_level == 0:
                label = f"{obj.name_ndx} {obj.name.split(',')[0]}"
                histogram[label] = histogram.get(label, 0) + 1
            elif obj.part_level > levels:
                add_problem(report, f"{image.folder / f'{image.stem}_parts_{obj.part_level}.png'}: file not found "
                                    f"(object id {obj.id} of {image.json_path.name} is a level-{obj.part_level} part)")
            if not image.instance_path(obj).is_file():
                add_problem(report, f"{image.instance_path(obj)}: file not found (object id {obj.id})")
    counts.update({f"level {level} objects": n for level, n in sorted(per_level.items())})
    report["counts"] = counts
    report["class_histogram"] = dict(sorted(histogram.items(), key=lambda item: -item[1]))
    return report


# ---------------------------------------------------------------------------------------------------------
# index_ade20k.pkl (optional): objectnames without trusting the pickle
# ---------------------------------------------------------------------------------------------------------

class _ArraysOnlyUnpickler(pickle.Unpickler):
    """Rebuilds plain containers and numpy arrays; refuses every other global (no code runs on load)."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"), ("numpy", "dtype"),
        ("collections", "OrderedDict"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed")
        return super().find_class(module, name)


def read_objectnames(path: str | os.PathLike) -> list[str]:
    """`objectnames` of `index_ade20k.pkl` (objectnames[c - 1] is the name of mask class c).

    The pickle is read with an unpickler that only rebuilds numpy arrays and plain containers, so a
    tampered file cannot run code; anything else raises DatasetFormatError.
    """
    path = require_file(path, "index_ade20k.pkl of the ADE20K full release")
    try:
        with open(path, "rb") as handle:
            index = _ArraysOnlyUnpickler(handle).load()
    except (pickle.UnpicklingError, EOFError, AttributeError, ImportError, ValueError, TypeError) as error:
        raise DatasetFormatError(path, f"cannot read the index safely ({error})",
                                 expected="a pickled dict of numpy arrays and lists") from None
    if not isinstance(index, dict) or "objectnames" not in index:
        raise DatasetFormatError(path, "no 'objectnames' key", field="objectnames",
                                 expected="the ADE20K index dict")
    return [str(name) for name in list(index["objectnames"])]
