"""The paper authors' preprocessed segmentation data (mmseg CustomDataset layout;
docs/datasets.md#ade20k-part-209, docs/datasets.md#pascal-part-193-and-pascal-object-16, docs/datasets.md#lip).

    <root>/img/{train,val}/<stem>.jpg      <root>/ann/{train,val}/<stem>.png
    (ADE20K-Object-59 instead uses ADEChallengeData2016's images/{training,validation}, annotations/...)

Label PNGs are single-channel 8-bit with raw values 0..N: 0 = background / unlabelled, v = class v - 1.
Every preset is loaded with mmseg's reduce_zero_label=True: 0 -> 255 (ignored), v -> v - 1, 255 stays
255, giving N classes 0..N-1. The authors' class-name tuples for the part sets are placeholders ("please
note that the class name is not right"), so those classes are named part_0 .. part_{N-1}.
"""
from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from probes.data import lip
from probes.data.errors import DatasetFormatError
from probes.data.generated import carry_marker
from probes.data.labelmaps import checked_label_maps, read_label_png
from probes.data.records import require_dir
from probes.data.report import new_report

IGNORE = 255
DRIVE = "https://drive.google.com/drive/folders/1JSNzbxc9MBpNIhMRP8Vd0FFk7K5hC65q"

ADE20K_OBJECT_59 = (
    "building", "sky", "tree", "bed", "windowpane", "cabinet", "person", "door", "table", "plant", "chair", "car",
    "sofa", "shelf", "house", "armchair", "seat", "fence", "desk", "wardrobe", "lamp", "bathtub", "column",
    "chest of drawers", "sink", "skyscraper", "refrigerator", "boat", "stairs", "pool table", "stairway",
    "bookcase", "blind", "coffee table", "toilet", "stove", "computer", "swivel chair", "bus", "light", "truck",
    "chandelier", "airplane", "ottoman", "bottle", "van", "washer", "stool", "minibike", "oven", "microwave",
    "dishwasher", "screen", "hood", "sconce", "traffic light", "fan", "glass", "clock")
PASCAL_OBJECT_16 = ("aeroplane", "bicycle", "bird", "bottle", "bus", "car", "cat", "cow", "dog", "horse",
                    "motorbike", "person", "pottedplant", "sheep", "train", "tvmonitor")


@dataclass(frozen=True)
class Preset:
    name: str
    class_names: tuple
    image_dirs: dict            # split ("train"/"val") -> folder under the root
    label_dirs: dict
    # crop_size, train_scale, test_scale, slide_stride: the settings of the official configs
    # (docs/protocols.md#segmentation-training-and-inference)
    crop_size: int
    train_scale: tuple
    test_scale: tuple
    slide_stride: int
    names_known: bool = True    # False: the authors' names are placeholders; ours are part_<i>
    stem_style: str = field(default="plain", repr=False)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def _placeholders(count: int) -> tuple:
    return tuple(f"part_{i}" for i in range(count))


_IMG_ANN = dict(image_dirs={"train": "img/train", "val": "img/val"}, label_dirs={"train": "ann/train", "val": "ann/val"})
_ADE_LAYOUT = dict(image_dirs={"train": "images/training", "val": "images/validation"},
                   label_dirs={"train": "annotations/training", "val": "annotations/validation"})
_ADE_TRAINING = dict(crop_size=512, train_scale=(2048, 512), test_scale=(2048, 512), slide_stride=341)
_PASCAL_TRAINING = dict(crop_size=480, train_scale=(520, 520), test_scale=(3840, 480), slide_stride=161)

PRESETS = {
    "ade20k-part-209": Preset("ade20k-part-209", _placeholders(209), **_IMG_ANN, **_ADE_TRAINING,
                              names_known=False, stem_style="ade"),
    "ade20k-object-59": Preset("ade20k-object-59", ADE20K_OBJECT_59, **_ADE_LAYOUT, **_ADE_TRAINING, stem_style="ade"),
    "pascal-part-193": Preset("pascal-part-193", _placeholders(193), **_IMG_ANN, **_PASCAL_TRAINING,
                              names_known=False, stem_style="voc"),
    "pascal-object-16": Preset("pascal-object-16", PASCAL_OBJECT_16, **_IMG_ANN, **_PASCAL_TRAINING, stem_style="voc"),
    "lip-19": Preset("lip-19", tuple(lip.LABELS[1:]), **_IMG_ANN, crop_size=320, train_scale=(1024, 320),
                     test_scale=(4096, 320), slide_stride=161, stem_style="lip"),
}


def reduce_zero_label(raw: np.ndarray) -> np.ndarray:
    """mmseg's reduce_zero_label: 0 -> 255, v -> v - 1 (1..254), 255 -> 255."""
    raw = np.asarray(raw, dtype=np.uint8)
    reduced = raw.astype(np.int16) - 1
    reduced[(raw == 0) | (raw == IGNORE)] = IGNORE
    return reduced.astype(np.uint8)


@dataclass(frozen=True)
class SegSample:
    stem: str
    image_path: Path
    label_path: Path


def preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise KeyError(f"no preset {name!r}; known: {', '.join(PRESETS)}") from None


class MMSegLayout:
    """One split of a preset: `samples` sorted by stem, `class_names`, labels after reduce_zero_label."""

    def __init__(self, root: str | os.PathLike, preset_name: str, split: str = "train"):
        self.preset = preset(preset_name)
        split = {"training": "train", "validation": "val", "test": "val"}.get(split, split)
        if split not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val', got {split!r}")
        self.root, self.split = Path(root), split
        layout = f"{self.preset.image_dirs[split]}/*.jpg with {self.preset.label_dirs[split]}/*.png"
        self.image_dir = require_dir(self.root / self.preset.image_dirs[split], f"the {preset_name} layout: {layout}")
        self.label_dir = require_dir(self.root / self.preset.label_dirs[split], f"the {preset_name} layout: {layout}")
        self.class_names = list(self.preset.class_names)
        self.num_classes = self.preset.num_classes
        self.samples = []
        for image_path in sorted(self.image_dir.glob("*.jpg")):
            label_path = self.label_dir / f"{image_path.stem}.png"
            if not label_path.is_file():
                raise DatasetFormatError(label_path, f"no label map for {image_path.name}",
                                         expected=f"one .png per .jpg, same stem ({layout})")
            self.samples.append(SegSample(image_path.stem, image_path, label_path))
        if not self.samples:
            raise DatasetFormatError(self.image_dir, "no .jpg images", expected=layout)

    def __len__(self) -> int:
        return len(self.samples)

    def load_raw_label(self, index: int) -> np.ndarray:
        """The PNG as stored: 0 = background, 1..N = classes, 255 = ignore."""
        return read_raw_label(self.samples[index].label_path, self.num_classes)

    def load_label(self, index: int) -> np.ndarray:
        """After reduce_zero_label: classes 0..N-1, 255 = ignore (background included)."""
        return reduce_zero_label(self.load_raw_label(index))

    def load_image(self, index: int):
        from PIL import Image
        with Image.open(self.samples[index].image_path) as image:
            return image.convert("RGB")


def read_raw_label(path: str | os.PathLike, num_classes: int) -> np.ndarray:
    return read_label_png(path, ("L", "P"), num_classes + 1, ignore=IGNORE,
                          what=f"a label map: single-channel 8-bit, 0 = background, 1..{num_classes} = classes, "
                               f"255 = ignore")


# --- CLI hooks ---------------------------------------------------------------------------------------------
def instructions(name: str, root) -> str:
    folders = ", ".join(sorted(set(PRESETS[name].image_dirs.values()) | set(PRESETS[name].label_dirs.values())))
    text = (f"{name} is the paper authors' preprocessed data, shared only through their Google Drive folder\n"
            f"  {DRIVE}\n"
            f"(\"ADE20K Part and Object, Pascal Part and Object, LIP Part\"). Download it by hand and unpack it so that\n"
            f"  {Path(root)} holds {folders}.")
    if name == "lip-19":
        text += ("\nOr build it from the official LIP release:\n"
                 f"  python -m probes.data prepare lip-19 --root {Path(root)} --source <LIP root>")
    return text


def download(root: str | os.PathLike, name: str) -> None:
    print(instructions(name, root))


def prepare(root: str | os.PathLike, name: str, source=None) -> Path:
    """lip-19 with --source: build the img/ann tree from an official LIP tree (labels unchanged: the
    authors load LIP's 0..19 maps with reduce_zero_label). Other presets: verify the layout is there."""
    root = Path(root)
    if name == "lip-19" and source is not None:
        return convert_lip(source, root)
    for split in ("train", "val"):
        try:
            MMSegLayout(root, name, split)
        except DatasetFormatError as error:
            raise DatasetFormatError(error.path, error.problem, expected=instructions(name, root)) from None
    return root


def convert_lip(source: str | os.PathLike, root: str | os.PathLike) -> Path:
    """Hard-link (or copy) every LIP image and label map into root/img/<split>, root/ann/<split>.

    Deterministic and resumable: a file already in place with the source's size is kept; each copy is
    written under a temporary name and renamed, so an interrupted run leaves no partial file.
    """
    root = Path(root)
    for split in ("train", "val"):
        dataset = lip.LIP(source, split)
        for sample in dataset.samples:
            _place(sample.image_path, root / "img" / split / f"{sample.stem}.jpg")
            _place(sample.label_path, root / "ann" / split / f"{sample.stem}.png")
    carry_marker(source, root)
    return root


def _place(source: Path, target: Path) -> None:
    if target.is_file() and target.stat().st_size == source.stat().st_size:
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(f".{target.name}.partial")
    temporary.unlink(missing_ok=True)
    try:
        os.link(source, temporary)
    except OSError:                      # another file system, or links not allowed
        shutil.copyfile(source, temporary)
    os.replace(temporary, target)


def check(root: str | os.PathLike, name: str) -> dict:
    report = new_report(name, root)
    layout = preset(name)
    histogram = np.zeros(layout.num_classes + 1, dtype=np.int64)   # last bin: ignored pixels
    for labels in checked_label_maps(report, ("train", "val"), lambda split: MMSegLayout(root, name, split),
                                     MMSegLayout.load_label, lambda sample: sample.label_path):
        values = np.where(labels == IGNORE, layout.num_classes, labels)
        histogram += np.bincount(values.ravel(), minlength=layout.num_classes + 1)
    report["counts"]["classes"] = layout.num_classes
    report["counts"]["classes present"] = int((histogram[:-1] > 0).sum())
    report["counts"]["ignored pixels (background)"] = int(histogram[-1])
    report["class_histogram"] = {f"{i} {n}": int(c) for i, (n, c) in enumerate(zip(layout.class_names, histogram))
                                 if c > 0}
    return report
