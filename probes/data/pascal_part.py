"""Pascal-Part (Chen et al., CVPR 2014): the original `.mat` release and the 58 / 108 / 116-part label sets.

Original release (docs/datasets.md#pascal-part-original-release)::

    Annotations_Part/<imname>.mat      one struct `anno`: imname, objects(k).class / class_ind / mask / parts(j)
    VOCdevkit/VOC2010/JPEGImages/<imname>.jpg          (images come from PASCAL VOC 2010)
    VOCdevkit/VOC2010/ImageSets/Main/{train,val}.txt   (the 4,998 / 5,105 split of the 58/108 papers)

Pixel semantics (the devkit's `mat2map.m`): objects are painted in file order (later objects occlude
earlier ones); inside an object, parts are painted in file order (a later part, e.g. an eye, overwrites an
earlier one, e.g. the head); a pixel of an object that no part of that object covers is "object, no part".
Each raw part name (numbered instances such as `engine_3` merged to `engine`) is one of 193 raw part
classes; the named sets below are groupings of those.

Derived sets written by `prepare`:

* Pascal-Part-116 (OV-PARTS, docs/datasets.md#pascal-part-116): `PascalPart116/` with 8-bit part maps
  0..115 and object maps 0..19, 255 = background / ignore, plus `*_label_count.json` side files.
* Pascal-Part-58 and -108 (BSANet/GMNet, docs/datasets.md#pascal-part-58-and-pascal-part-108):
  `PascalPartGMNet/` with `label58/gray/all/`, `label108/gray/all/` (0 = background, 255 = ignore) and
  `label21/gray/all/` (VOC 0..20).
* Pascal-Object-16 (the TMLR paper's object set, docs/datasets.md#pascal-part-193-and-pascal-object-16):
  `PascalObject16/` in the mmseg `img/`, `ann/` layout (0 = background or one of the four classes without
  parts, 1..16).
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from probes.data.ade20k import class_lists
from probes.data.errors import DatasetFormatError
from probes.data.generated import carry_marker
from probes.data.labelmaps import (open_image, ov_parts_part_maps, present_labels, read_json, read_label_png,
                                   write_png)
from probes.data.records import require_dir, require_file
from probes.data.report import add_problem, new_report
from probes.fileio import atomic_path, write_bytes_atomic, write_json_atomic

VOC_CLASSES = ("aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
               "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
               "train", "tvmonitor")
OBJECT16 = ("aeroplane", "bicycle", "bird", "bottle", "bus", "car", "cat", "cow", "dog", "horse",
            "motorbike", "person", "pottedplant", "sheep", "train", "tvmonitor")
SPLITS = ("train", "val")
IGNORE = 255


def _numbered(name: str, first: int, count: int = 10) -> dict[str, int]:
    return {f"{name}_{i}": first + i - 1 for i in range(1, count + 1)}


# part2ind.m of the devkit (verified through twuilliam/pascal-part-py `part2ind.py`): raw part name -> index.
_VEHICLE = {"frontside": 1, "leftside": 2, "rightside": 3, "backside": 4, "roofside": 5, "leftmirror": 6,
            "rightmirror": 7, "fliplate": 8, "bliplate": 9, **_numbered("door", 11), **_numbered("wheel", 21),
            **_numbered("headlight", 31), **_numbered("window", 41, 20)}
_CAT = {"head": 1, "leye": 2, "reye": 3, "lear": 4, "rear": 5, "nose": 6, "torso": 7, "neck": 8, "lfleg": 9,
        "lfpa": 10, "rfleg": 11, "rfpa": 12, "lbleg": 13, "lbpa": 14, "rbleg": 15, "rbpa": 16, "tail": 17}
_COW = {"head": 1, "leye": 2, "reye": 3, "lear": 4, "rear": 5, "muzzle": 6, "lhorn": 7, "rhorn": 8, "torso": 9,
        "neck": 10, "lfuleg": 11, "lflleg": 12, "rfuleg": 13, "rflleg": 14, "lbuleg": 15, "lblleg": 16,
        "rbuleg": 17, "rblleg": 18, "tail": 19}
_HORSE = {**{k: v for k, v in _COW.items() if k not in ("lhorn", "rhorn")},
          "lfho": 30, "rfho": 31, "lbho": 32, "rbho": 33}
PART2IND: dict[str, dict[str, int]] = {
    "aeroplane": {"body": 1, "stern": 2, "lwing": 3, "rwing": 4, "tail": 5, **_numbered("engine", 11),
                  **_numbered("wheel", 21)},
    "bicycle": {"fwheel": 1, "bwheel": 2, "saddle": 3, "handlebar": 4, "chainwheel": 5, **_numbered("headlight", 11)},
    "bird": {"head": 1, "leye": 2, "reye": 3, "beak": 4, "torso": 5, "neck": 6, "lwing": 7, "rwing": 8, "lleg": 9,
             "lfoot": 10, "rleg": 11, "rfoot": 12, "tail": 13},
    "boat": {},
    "bottle": {"cap": 1, "body": 2},
    "bus": _VEHICLE,
    "car": _VEHICLE,
    "cat": _CAT,
    "chair": {},
    "cow": _COW,
    "diningtable": {},
    "dog": {**_CAT, "muzzle": 20},
    "horse": _HORSE,
    "motorbike": {"fwheel": 1, "bwheel": 2, "handlebar": 3, "saddle": 4, **_numbered("headlight", 11)},
    "person": {"head": 1, "leye": 2, "reye": 3, "lear": 4, "rear": 5, "lebrow": 6, "rebrow": 7, "nose": 8,
               "mouth": 9, "hair": 10, "torso": 11, "neck": 12, "llarm": 13, "luarm": 14, "lhand": 15, "rlarm": 16,
               "ruarm": 17, "rhand": 18, "llleg": 19, "luleg": 20, "lfoot": 21, "rlleg": 22, "ruleg": 23,
               "rfoot": 24},
    "pottedplant": {"pot": 1, "plant": 2},
    "sheep": _COW,
    "sofa": {},
    "train": {"head": 1, "hfrontside": 2, "hleftside": 3, "hrightside": 4, "hbackside": 5, "hroofside": 6,
              **_numbered("headlight", 11), **_numbered("coach", 21), **_numbered("cfrontside", 31),
              **_numbered("cleftside", 41), **_numbered("crightside", 51), **_numbered("cbackside", 61),
              **_numbered("croofside", 71)},
    "tvmonitor": {"screen": 1},
}


def base_part_name(name: str) -> str:
    """`engine_3` -> `engine`: numbered instances of one part are one raw part class."""
    return re.sub(r"_\d+$", "", name)


# The 193 raw part classes: (class, base part name) in VOC class order, then part2ind order. Code 0 = no part.
RAW_PARTS: list[tuple[str, str]] = []
for _cls in VOC_CLASSES:
    for _name in sorted(PART2IND[_cls], key=PART2IND[_cls].get):
        if (_cls, base_part_name(_name)) not in RAW_PARTS:
            RAW_PARTS.append((_cls, base_part_name(_name)))
RAW_CODE = {key: code for code, key in enumerate(RAW_PARTS, start=1)}

# Grouping of the raw parts into the named sets: raw base name -> (58 suffix, 108 suffix, 116 part name).
# None = ignore (255). 58 follows the grouping of pmeletis/panoptic_parts `ppp_parts_58.yaml` (GMNet's list).
# 108 keeps the finer parts and merges left/right (and front/back sides) into the `r...` name of GMNet's
# list; parts that list has no name for go to the part that contains them (eyes and eyebrows -> head where
# the 108 list has no eye), car mirrors to the car side, the bicycle headlight to ignore [inferred: the
# BSANet conversion script is not public]. 116 = OV-PARTS names, left/right merged.
_LR = ("l", "r")
_ANIMAL_HEAD = {
    "head": ("head", "head", "head"),
    "lear": ("head", "rear", "ear"), "rear": ("head", "rear", "ear"),
    "torso": ("torso", "torso", "torso"), "neck": ("torso", "neck", "neck"),
}
_CAT_LIKE = {
    **_ANIMAL_HEAD,
    "leye": ("head", "reye", "eye"), "reye": ("head", "reye", "eye"),
    "nose": ("head", "nose", "nose"),
    **{f"{s}{fb}leg": ("leg", "rfleg", "leg") for s in _LR for fb in "fb"},
    **{f"{s}{fb}pa": ("leg", "rfpa", "paw") for s in _LR for fb in "fb"},
    "tail": ("tail", "tail", "tail"),
}
_HOOFED = {
    **_ANIMAL_HEAD,
    "leye": ("head", "head", "eye"), "reye": ("head", "head", "eye"),
    "muzzle": ("head", "muzzle", "muzzle"),
    **{f"{s}{fb}{ul}leg": ("leg", "rfuleg", "leg") for s in _LR for fb in "fb" for ul in "ul"},
    "tail": ("tail", "tail", "tail"),
}
_HORNS = {"lhorn": ("head", "rhorn", "horn"), "rhorn": ("head", "rhorn", "horn")}
_VEHICLE_SIDES = {
    "frontside": ("body", "rightside", "front"), "leftside": ("body", "rightside", "side"),
    "rightside": ("body", "rightside", "side"), "backside": ("body", "rightside", "back"),
    "roofside": ("body", "roofside", "roof"), "door": ("body", "door", "door"),
    "wheel": ("wheel", "wheel", "wheel"), "window": ("window", "window", "window"),
}
GROUPS: dict[str, dict[str, tuple]] = {
    "aeroplane": {"body": ("body", "body", "body"), "stern": ("stern", "stern", "stern"),
                  "lwing": ("wing", "rwing", "wing"), "rwing": ("wing", "rwing", "wing"),
                  "tail": ("stern", "stern", "tail"), "engine": ("engine", "engine", "engine"),
                  "wheel": ("wheel", "wheel", "wheel")},
    "bicycle": {"fwheel": ("wheel", "fwheel", "wheel"), "bwheel": ("wheel", "fwheel", "wheel"),
                "saddle": ("body", "saddle", "saddle"), "handlebar": ("body", "handlebar", "handlebar"),
                "chainwheel": ("wheel", "chainwheel", "chainwheel"), "headlight": ("body", None, "headlight")},
    "bird": {"head": ("head", "head", "head"), "leye": ("head", "head", "eye"), "reye": ("head", "head", "eye"),
             "beak": ("head", "beak", "beak"), "torso": ("torso", "torso", "torso"), "neck": ("torso", "neck", "neck"),
             "lwing": ("wing", "rwing", "wing"), "rwing": ("wing", "rwing", "wing"),
             "lleg": ("leg", "rleg", "leg"), "rleg": ("leg", "rleg", "leg"),
             "lfoot": ("leg", "rfoot", "foot"), "rfoot": ("leg", "rfoot", "foot"), "tail": ("torso", "tail", "tail")},
    "bottle": {"cap": ("cap", "cap", "cap"), "body": ("body", "body", "body")},
    "bus": {**_VEHICLE_SIDES,
            "leftmirror": ("body", "rightmirror", "mirror"), "rightmirror": ("body", "rightmirror", "mirror"),
            "fliplate": ("body", "fliplate", "license plate"), "bliplate": ("body", "fliplate", "license plate"),
            "headlight": ("body", "headlight", "headlight")},
    "car": {**_VEHICLE_SIDES,
            "leftmirror": ("body", "rightside", "mirror"), "rightmirror": ("body", "rightside", "mirror"),
            "fliplate": ("plate", "fliplate", "license plate"), "bliplate": ("plate", "fliplate", "license plate"),
            "headlight": ("light", "headlight", "headlight")},
    "cat": _CAT_LIKE,
    "cow": {**_HOOFED, **_HORNS},
    "dog": {**_CAT_LIKE, "muzzle": ("head", "muzzle", "muzzle")},
    "horse": {**_HOOFED, **{f"{s}{fb}ho": ("leg", "rfho", "hoof") for s in _LR for fb in "fb"}},
    "motorbike": {"fwheel": ("wheel", "fwheel", "wheel"), "bwheel": ("wheel", "fwheel", "wheel"),
                  "handlebar": ("body", "handlebar", "handlebar"), "saddle": ("body", "saddle", "saddle"),
                  "headlight": ("body", "headlight", "headlight")},
    "person": {"head": ("head", "head", "head"), "leye": ("head", "reye", "eye"), "reye": ("head", "reye", "eye"),
               "lear": ("head", "rear", "ear"), "rear": ("head", "rear", "ear"),
               "lebrow": ("head", "head", "eyebrow"), "rebrow": ("head", "head", "eyebrow"),
               "nose": ("head", "nose", "nose"), "mouth": ("head", "mouth", "mouth"), "hair": ("head", "hair", "hair"),
               "torso": ("torso", "torso", "torso"), "neck": ("head", "neck", "neck"),
               "llarm": ("larm", "ruarm", "lower arm"), "rlarm": ("larm", "ruarm", "lower arm"),
               "luarm": ("uarm", "ruarm", "upper arm"), "ruarm": ("uarm", "ruarm", "upper arm"),
               "lhand": ("larm", "rhand", "hand"), "rhand": ("larm", "rhand", "hand"),
               "llleg": ("lleg", "ruleg", "leg"), "rlleg": ("lleg", "ruleg", "leg"),
               "luleg": ("uleg", "ruleg", "leg"), "ruleg": ("uleg", "ruleg", "leg"),
               "lfoot": ("lleg", "rfoot", "foot"), "rfoot": ("lleg", "rfoot", "foot")},
    "pottedplant": {"pot": ("pot", "pot", "pot"), "plant": ("plant", "plant", "plant")},
    "sheep": {**_HOOFED, **_HORNS, "tail": ("torso", "tail", "tail")},
    "train": {"head": (None, "head", "head"),
              "hfrontside": (None, "hrightside", "front"), "hleftside": (None, "hrightside", "side"),
              "hrightside": (None, "hrightside", "side"), "hbackside": (None, "hrightside", "back"),
              "hroofside": (None, "hroofside", "roof"), "headlight": (None, "headlight", "headlight"),
              "coach": (None, "coach", "coach"),
              "cfrontside": (None, "crightside", "front"), "cleftside": (None, "crightside", "side"),
              "crightside": (None, "crightside", "side"), "cbackside": (None, "crightside", "back"),
              "croofside": (None, "croofside", "roof")},
    "tvmonitor": {"screen": ("screen", "screen", "screen")},
}
_PREFIX = {58: {"bicycle": "bycicle"}, 108: {"bird": "birds"}}

# Every pixel of these objects gets the whole-object class, parts or not (boat, chair, table and sofa have
# no parts; the 58 set keeps the train whole). Pixels of other objects not covered by any part are
# ignored, except the tvmonitor "frame" of the 58 set, which is the monitor minus its screen.
WHOLE_OBJECT = {
    58: {"boat": "boat", "chair": "chair", "diningtable": "dining_table", "sofa": "sofa", "train": "train"},
    108: {"boat": "boat", "chair": "chair", "diningtable": "dining_table", "sofa": "sofa"},
    116: {},
}
UNPARTED_PIXELS = {58: {"tvmonitor": "tvmonitor_frame"}, 108: {}, 116: {}}


def class_names(variant: int) -> list[str]:
    """Label value -> name of a part set: 58 and 108 include 0 = background; 116 is 0-based parts."""
    key = {58: "pp58", 108: "pp108", 116: "pp116_part"}[variant]
    return class_lists()[key]


def _target_name(variant: int, cls: str, suffix: str | None) -> str | None:
    if suffix is None:
        return None
    if variant == 116:
        return f"{cls}'s {suffix}"
    return f"{_PREFIX[variant].get(cls, cls)}_{suffix}"


def _build_lookup(variant: int) -> np.ndarray:
    """lookup[class_ind, raw part code] -> label of the set (rows 0..20, columns 0..193)."""
    names = class_names(variant)
    background = 0 if variant in (58, 108) else IGNORE
    lookup = np.full((len(VOC_CLASSES) + 1, len(RAW_PARTS) + 1), IGNORE, dtype=np.uint8)
    lookup[0, 0] = background
    column = {58: 0, 108: 1, 116: 2}[variant]
    for class_ind, cls in enumerate(VOC_CLASSES, start=1):
        whole = WHOLE_OBJECT[variant].get(cls)
        if whole is not None:
            lookup[class_ind, :] = names.index(whole)
            continue
        if cls in UNPARTED_PIXELS[variant]:
            lookup[class_ind, 0] = names.index(UNPARTED_PIXELS[variant][cls])
        for raw, targets in GROUPS.get(cls, {}).items():
            name = _target_name(variant, cls, targets[column])
            lookup[class_ind, RAW_CODE[(cls, raw)]] = IGNORE if name is None else names.index(name)
    return lookup


LOOKUP = {variant: _build_lookup(variant) for variant in (58, 108, 116)}


# ---------------------------------------------------------------------------------------------------------
# The .mat reader
# ---------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class PascalPartMask:
    name: str                 # raw name as annotated, e.g. "engine_3"
    mask: np.ndarray          # bool [H, W]


@dataclass(frozen=True)
class PascalObject:
    class_name: str
    class_ind: int            # VOC index 1..20
    mask: np.ndarray          # bool [H, W]
    parts: tuple[PascalPartMask, ...]


@dataclass(frozen=True)
class PascalPartAnnotation:
    path: Path
    imname: str
    height: int
    width: int
    objects: tuple[PascalObject, ...]


def _text(value) -> str:
    """A MATLAB char array as loaded by scipy: array(['person'], dtype='<U6') (or empty)."""
    array = np.asarray(value)
    return str(array.ravel()[0]) if array.size else ""


def _binary_mask(path, where: str, value, shape) -> np.ndarray:
    mask = np.asarray(value)
    if mask.ndim != 2 or (shape is not None and mask.shape != shape):
        raise DatasetFormatError(path, f"mask of shape {mask.shape}", field=where,
                                 expected=f"a 2-D mask{'' if shape is None else f' of shape {shape}'}")
    if mask.size and not np.isin(mask, (0, 1)).all():
        raise DatasetFormatError(path, f"mask values {np.unique(mask)[:5].tolist()}", field=where,
                                 expected="0/1 values")
    return mask.astype(bool)


def read_annotation_mat(path: str | os.PathLike) -> PascalPartAnnotation:
    """Read and check one `Annotations_Part/<imname>.mat` (MATLAB 5 file with one struct `anno`)."""
    from scipy.io import loadmat
    from scipy.io.matlab import MatReadError

    path = require_file(path, "a Pascal-Part annotation (.mat)")
    try:
        anno = loadmat(path)["anno"][0, 0]
        imname, objects = _text(anno["imname"]), anno["objects"]
    except (MatReadError, ValueError, KeyError, IndexError, TypeError, OSError, NotImplementedError) as error:
        raise DatasetFormatError(path, f"not a Pascal-Part .mat ({error!r})",
                                 expected="a MATLAB struct 'anno' with fields imname and objects") from None
    parsed, shape = [], None
    for k, obj in enumerate(np.asarray(objects).ravel()):
        where = f"anno.objects({k + 1})"
        cls = _text(obj["class"])
        class_ind = int(np.asarray(obj["class_ind"]).ravel()[0]) if np.asarray(obj["class_ind"]).size else 0
        if not 1 <= class_ind <= 20 or VOC_CLASSES[class_ind - 1] != cls:
            raise DatasetFormatError(path, f"class {cls!r} with class_ind {class_ind}", field=f"{where}.class_ind",
                                     expected="a VOC class name and its index 1..20")
        mask = _binary_mask(path, f"{where}.mask", obj["mask"], shape)
        shape = mask.shape
        parts = []
        for j, part in enumerate(np.asarray(obj["parts"]).ravel()):
            name = _text(part["part_name"])
            if name not in PART2IND[cls]:
                raise DatasetFormatError(path, f"unknown part name {name!r} for class {cls}",
                                         field=f"{where}.parts({j + 1}).part_name",
                                         expected=f"a part2ind name of {cls}: "
                                                  f"{', '.join(sorted({base_part_name(n) for n in PART2IND[cls]})) or 'none'}")
            part_mask = _binary_mask(path, f"{where}.parts({j + 1}).mask", part["mask"], shape)
            if (part_mask & ~mask).any():
                raise DatasetFormatError(path, f"part {name!r} has {int((part_mask & ~mask).sum())} pixels outside "
                                         f"its object", field=f"{where}.parts({j + 1}).mask",
                                         expected="part masks inside the object mask")
            parts.append(PascalPartMask(name, part_mask))
        parsed.append(PascalObject(cls, class_ind, mask, tuple(parts)))
    if shape is None:
        raise DatasetFormatError(path, "no objects", field="anno.objects", expected="at least one object")
    return PascalPartAnnotation(path, imname, shape[0], shape[1], tuple(parsed))


@dataclass(frozen=True)
class PascalLabels:
    object20: np.ndarray        # uint8, 0 = background, 1..20 VOC classes (GMNet label21)
    raw_parts: np.ndarray       # uint8, 0 = no part, 1..193 raw part classes (RAW_PARTS order)
    part58: np.ndarray
    part108: np.ndarray
    part116: np.ndarray
    object116: np.ndarray       # 0..19, 255 = background (OV-PARTS object map)
    object16: np.ndarray        # 0 = background or class without parts, 1..16 (TMLR Pascal-Object)


_OBJECT16_LOOKUP = np.array([0] + [OBJECT16.index(c) + 1 if c in OBJECT16 else 0 for c in VOC_CLASSES], np.uint8)
_OBJECT116_LOOKUP = np.array([IGNORE] + list(range(20)), np.uint8)


def render_labels(annotation: PascalPartAnnotation) -> PascalLabels:
    """Label maps of one annotation with the devkit's painting order (see the module docstring)."""
    shape = (annotation.height, annotation.width)
    classes = np.zeros(shape, np.uint8)
    codes = np.zeros(shape, np.uint8)
    for obj in annotation.objects:
        classes[obj.mask] = obj.class_ind
        codes[obj.mask] = 0                  # the occluding object's own parts replace those below it
        for part in obj.parts:
            codes[part.mask] = RAW_CODE[(obj.class_name, base_part_name(part.name))]
    return PascalLabels(
        object20=classes,
        raw_parts=codes,
        part58=LOOKUP[58][classes, codes],
        part108=LOOKUP[108][classes, codes],
        part116=LOOKUP[116][classes, codes],
        object116=_OBJECT116_LOOKUP[classes],
        object16=_OBJECT16_LOOKUP[classes],
    )


# ---------------------------------------------------------------------------------------------------------
# The original release on disk
# ---------------------------------------------------------------------------------------------------------

class PascalPartSource:
    """`Annotations_Part/*.mat` plus the VOC 2010 images and split lists.

    `root` holds `Annotations_Part/` (or is it); `voc_root` is the VOC2010 folder (JPEGImages/,
    ImageSets/Main/) and defaults to `<root>/VOCdevkit/VOC2010`.
    """

    def __init__(self, root: str | os.PathLike, voc_root: str | os.PathLike | None = None):
        root = Path(root)
        if root.name == "Annotations_Part":
            root = root.parent
        self.root = root
        annotation_dir = root / "Annotations_Part"
        nested = sorted(root.glob("*/Annotations_Part"))
        if not annotation_dir.is_dir() and len(nested) == 1:   # the tarball may wrap it in one more folder
            annotation_dir = nested[0]
        self.annotation_dir = require_dir(annotation_dir, "Annotations_Part/ of Pascal-Part trainval.tar.gz")
        self.voc_root = Path(voc_root) if voc_root is not None else root / "VOCdevkit" / "VOC2010"
        self.stems = sorted(path.stem for path in self.annotation_dir.glob("*.mat"))
        if not self.stems:
            raise DatasetFormatError(self.annotation_dir, "no .mat files", expected="<imname>.mat annotations")

    def annotation_path(self, stem: str) -> Path:
        return self.annotation_dir / f"{stem}.mat"

    def image_path(self, stem: str) -> Path:
        return self.voc_root / "JPEGImages" / f"{stem}.jpg"

    def annotation(self, stem: str) -> PascalPartAnnotation:
        return read_annotation_mat(self.annotation_path(stem))

    def split_of(self) -> dict[str, str]:
        """stem -> "train" | "val" from VOC2010 ImageSets/Main/{train,val}.txt."""
        split = {}
        for name in SPLITS:
            path = require_file(self.voc_root / "ImageSets" / "Main" / f"{name}.txt",
                                f"the VOC2010 {name} list (VOCdevkit/VOC2010/ImageSets/Main/{name}.txt)")
            for line in path.read_text(encoding="utf-8").split():
                split[line] = name
        return split


# ---------------------------------------------------------------------------------------------------------
# Readers of the derived layouts
# ---------------------------------------------------------------------------------------------------------

FOLDER_116, FOLDER_GMNET, FOLDER_OBJECT16 = "PascalPart116", "PascalPartGMNet", "PascalObject16"


@dataclass(frozen=True)
class LabelledImage:
    stem: str
    image_path: Path
    label_path: Path


class PascalPart116:
    """One split of OV-PARTS' PascalPart116/: part maps (0..115, 255) and object maps (0..19, 255)."""

    def __init__(self, root: str | os.PathLike, split: str = "train"):
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        root, pairs = ov_parts_part_maps(root, FOLDER_116, split)
        self.root, self.split = root, split
        self.part_names, self.object_names = class_lists()["pp116_part"], class_lists()["pp116_obj"]
        self.samples = [LabelledImage(image_path.stem, image_path, part_path) for image_path, part_path in pairs]

    def __len__(self) -> int:
        return len(self.samples)

    def part_map(self, index: int) -> np.ndarray:
        return read_part116_map(self.samples[index].label_path)

    def object_map(self, index: int) -> np.ndarray:
        return read_object20_map(object_map_path(self.samples[index].label_path))

    def label_counts(self, kind: str = "obj") -> dict[str, list[int]]:
        """`<split>_{obj,part}_label_count.json`: {"<stem>.png": [labels present]}."""
        path = self.root / "annotations_detectron2_part" / f"{self.split}_{kind}_label_count.json"
        return read_json(path, f"the OV-PARTS {kind} label-count file (written by `prepare pascal-part`)")


class PascalPartGMNet:
    """Pascal-Part-58 or -108 in GMNet's layout: RGB/, label<N>/gray/all/, train.txt, val.txt.

    `root` is the folder holding those (GMNet's `dataset/`) or a folder holding `dataset/` or
    PascalPartGMNet/. Label maps: 8-bit, 0 = background, 1..N-1 parts, 255 = ignore.
    """

    def __init__(self, root: str | os.PathLike, num_classes: int = 58, split: str = "train"):
        if num_classes not in (58, 108):
            raise ValueError(f"num_classes must be 58 or 108, got {num_classes}")
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        root = Path(root)
        for sub in (FOLDER_GMNET, "dataset"):
            if (root / sub).is_dir():
                root = root / sub
                break
        self.root, self.split, self.num_classes = root, split, num_classes
        self.class_names = class_names(num_classes)
        list_path = require_file(root / f"{split}.txt", f"the {split} list of the GMNet layout ({split}.txt)")
        label_dir = require_dir(root / f"label{num_classes}" / "gray" / "all", f"label{num_classes}/gray/all/")
        self.samples = []
        for line_number, stem in enumerate(list_path.read_text(encoding="utf-8").splitlines(), start=1):
            stem = stem.strip()
            if not stem:
                continue
            image_path = next((p for p in (root / "RGB" / f"{stem}.jpg", root / "RGB" / f"{stem}.png") if p.is_file()),
                              None)
            if image_path is None:
                raise DatasetFormatError(list_path, f"no image RGB/{stem}.jpg or .png", line=line_number,
                                         expected="an image per listed id")
            label_path = label_dir / f"{stem}.png"
            if not label_path.is_file():
                raise DatasetFormatError(label_path, "file not found", expected=f"the label map of {stem}")
            self.samples.append(LabelledImage(stem, image_path, label_path))

    def __len__(self) -> int:
        return len(self.samples)

    def label(self, index: int) -> np.ndarray:
        return read_gmnet_map(self.samples[index].label_path, self.num_classes)


def read_part116_map(path: str | os.PathLike) -> np.ndarray:
    return read_label_png(path, ("L",), 116, ignore=IGNORE, what="a Pascal-Part-116 part map: mode L, 0..115, 255 = ignore")


def object_map_path(part_map_path: str | os.PathLike) -> Path:
    """The object map beside a PascalPart116 part map (annotations_detectron2_obj/ for _part/)."""
    return Path(str(part_map_path).replace("annotations_detectron2_part", "annotations_detectron2_obj"))


def read_object20_map(path: str | os.PathLike) -> np.ndarray:
    return read_label_png(path, ("L",), 20, ignore=IGNORE,
                          what="a Pascal-Part-116 object map: mode L, 0..19, 255 = background")


def read_gmnet_map(path: str | os.PathLike, num_classes: int) -> np.ndarray:
    return read_label_png(path, ("L",), num_classes, ignore=IGNORE,
                          what=f"a Pascal-Part-{num_classes} map: mode L, 0..{num_classes - 1}, 255")


# ---------------------------------------------------------------------------------------------------------
# Conversion
# ---------------------------------------------------------------------------------------------------------

def _place_image(source: Path, target: Path) -> None:
    """Hard-link the JPEG when the file system allows it (10k images, ~1 GB), else copy; atomic either way."""
    if not source.is_file():
        raise DatasetFormatError(source, "file not found", expected="the VOC2010 JPEG of this annotation")
    with atomic_path(target) as tmp:
        tmp.unlink()
        try:
            os.link(source, tmp)
        except OSError:
            tmp.write_bytes(source.read_bytes())


def _record_path(out: Path, stem: str) -> Path:
    # Written last for each image: its presence means every output of that image is complete.
    return out / ".partprobe_convert" / "pascal_part" / f"{stem}.json"


def convert_release(root: str | os.PathLike, out: str | os.PathLike | None = None,
                    voc_root: str | os.PathLike | None = None, progress: bool = True) -> Path:
    """Convert Annotations_Part + VOC2010 into PascalPart116/, PascalPartGMNet/ and PascalObject16/ under `out`.

    Deterministic and resumable: an image whose record file exists is skipped; files are written
    atomically, the per-image record last; split lists and label counts are rebuilt at the end.
    """
    source = PascalPartSource(root, voc_root)
    out = Path(out if out is not None else source.root)
    split_of = source.split_of()
    for stem in tqdm(source.stems, desc="Pascal-Part", unit="img", disable=not progress):
        record_path = _record_path(out, stem)
        if record_path.is_file():
            continue
        if stem not in split_of:
            raise DatasetFormatError(source.annotation_path(stem), "image in neither VOC2010 train nor val list",
                                     expected="an id of ImageSets/Main/train.txt or val.txt")
        split = split_of[stem]
        annotation = source.annotation(stem)
        image = open_image(source.image_path(stem), "the VOC2010 JPEG of this annotation")
        if image.size != (annotation.width, annotation.height):
            raise DatasetFormatError(source.annotation_path(stem), f"masks {annotation.width}x{annotation.height}",
                                     field="anno.objects(1).mask", expected=f"the image size {image.size[0]}x{image.size[1]}")
        labels = render_labels(annotation)
        gmnet = out / FOLDER_GMNET
        _place_image(source.image_path(stem), gmnet / "RGB" / f"{stem}.jpg")
        write_png(gmnet / "label58" / "gray" / "all" / f"{stem}.png", labels.part58)
        write_png(gmnet / "label108" / "gray" / "all" / f"{stem}.png", labels.part108)
        write_png(gmnet / "label21" / "gray" / "all" / f"{stem}.png", labels.object20)
        record = {"split": split, "parts116": present_labels(labels.part116, IGNORE),
                  "objects116": present_labels(labels.object116, IGNORE),
                  "object16": bool(labels.object16.any())}
        if record["parts116"]:
            ov = out / FOLDER_116
            _place_image(source.image_path(stem), ov / "images" / split / f"{stem}.jpg")
            write_png(ov / "annotations_detectron2_part" / split / f"{stem}.png", labels.part116)
            write_png(ov / "annotations_detectron2_obj" / split / f"{stem}.png", labels.object116)
        if record["object16"]:
            tmlr = out / FOLDER_OBJECT16
            _place_image(source.image_path(stem), tmlr / "img" / split / f"{stem}.jpg")
            write_png(tmlr / "ann" / split / f"{stem}.png", labels.object16)
        write_json_atomic(record_path, record, indent=None)
    _write_split_files(out, source.stems)
    carry_marker(source.root, out)
    return out


def _write_split_files(out: Path, stems: list[str]) -> None:
    lists = {split: [] for split in SPLITS}
    counts = {(split, kind): {} for split in SPLITS for kind in ("part", "obj")}
    for stem in stems:
        record = read_json(_record_path(out, stem), "a conversion record")
        lists[record["split"]].append(stem)
        if record["parts116"]:
            counts[(record["split"], "part")][f"{stem}.png"] = record["parts116"]
            counts[(record["split"], "obj")][f"{stem}.png"] = record["objects116"]
    for split in SPLITS:
        write_bytes_atomic(out / FOLDER_GMNET / f"{split}.txt", "".join(f"{s}\n" for s in lists[split]).encode())
        for kind in ("part", "obj"):
            write_json_atomic(out / FOLDER_116 / "annotations_detectron2_part" / f"{split}_{kind}_label_count.json",
                              counts[(split, kind)])


def check_release(root: str | os.PathLike, voc_root: str | os.PathLike | None = None,
                  max_images: int | None = None) -> dict:
    """Counts, object-class histogram (instances) and first problems of an original Pascal-Part release."""
    report = new_report("pascal-part", root)
    try:
        source = PascalPartSource(root, voc_root)
    except DatasetFormatError as error:
        add_problem(report, error)
        return report
    stems = source.stems if max_images is None else source.stems[:max_images]
    histogram = {name: 0 for name in VOC_CLASSES}
    parts = missing_images = 0
    for stem in stems:
        try:
            annotation = source.annotation(stem)
        except DatasetFormatError as error:
            add_problem(report, error)
            continue
        for obj in annotation.objects:
            histogram[obj.class_name] += 1
            parts += len(obj.parts)
        if not source.image_path(stem).is_file():
            missing_images += 1
            add_problem(report, f"{source.image_path(stem)}: image missing")
    report["counts"] = {"annotations": len(source.stems), "checked": len(stems), "objects": sum(histogram.values()),
                        "part masks": parts, "images missing": missing_images}
    report["class_histogram"] = {name: count for name, count in histogram.items() if count}
    return report


def check_derived(root: str | os.PathLike, variant: int, max_images: int | None = None) -> dict:
    """Counts, label histogram (pixels) and first problems of a prepared 58 / 108 / 116 set."""
    report = new_report(f"pascal-part-{variant}", root)
    names = class_names(variant)
    histogram = np.zeros(len(names), np.int64)
    for split in SPLITS:
        try:
            dataset = PascalPart116(root, split) if variant == 116 else PascalPartGMNet(root, variant, split)
        except DatasetFormatError as error:
            add_problem(report, error)
            continue
        report["counts"][f"{split} images"] = len(dataset)
        read = dataset.part_map if variant == 116 else dataset.label
        for index in range(len(dataset) if max_images is None else min(max_images, len(dataset))):
            try:
                labels = read(index)
            except DatasetFormatError as error:
                add_problem(report, error)
                continue
            histogram += np.bincount(labels[labels != IGNORE].ravel(), minlength=len(names))[:len(names)]
    report["class_histogram"] = {names[i]: int(histogram[i]) for i in np.flatnonzero(histogram)}
    return report


ANNOTATIONS_URL = "http://roozbehm.info/pascal-parts/trainval.tar.gz"
VOC2010_URL = "http://host.robots.ox.ac.uk/pascal/VOC/voc2010/VOCtrainval_03-May-2010.tar"
DERIVED_INSTRUCTIONS = """\
{name}: Pascal-Part-116 (OV-PARTS) is on Google Drive only (link in the OpenRobotLab/OV_PARTS README);
Pascal-Part-58/108 ship in GMNet's https://lttm.dei.unipd.it/paper_data/GMNet/data.zip (unpack its dataset/
folder as {root}/PascalPartGMNet). All three, and the TMLR paper's 16-object set, are built from the
original release by:
  python -m probes.data download pascal-part --root {root}
  python -m probes.data prepare pascal-part --root {root}
"""
DERIVED = {"pascal-part-116": 116, "pascal-part-58": 58, "pascal-part-108": 108}


# --- CLI hooks (python -m probes.data download|prepare|check pascal-part[-116|-58|-108]) ------------------
def download(root: str | os.PathLike, name: str = "pascal-part") -> Path | None:
    """pascal-part: fetch and unpack the part annotations and the VOC 2010 trainval images into `root`."""
    if name != "pascal-part":
        print(DERIVED_INSTRUCTIONS.format(name=name, root=Path(root)))
        return None
    from probes.data.download import download_file, extract_archive

    root = Path(root)
    for url in (ANNOTATIONS_URL, VOC2010_URL):
        extract_archive(download_file(url, root / url.rsplit("/", 1)[1]), root)
    return root


def prepare(root: str | os.PathLike, name: str = "pascal-part", source=None) -> Path:
    """Build the derived sets under `root` from the release there; `source` = the VOC2010 folder if elsewhere.

    Every name (pascal-part, pascal-part-116/-58/-108) runs the same conversion: one pass writes all sets.
    """
    return convert_release(root, out=root, voc_root=source)


def check(root: str | os.PathLike, name: str = "pascal-part") -> dict:
    if name in DERIVED:
        return check_derived(root, DERIVED[name])
    return check_release(root)
