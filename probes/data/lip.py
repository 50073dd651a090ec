"""LIP (Look Into Person) single-person parsing, 20 labels with 0 = Background (docs/datasets.md#lip).

Two layouts are read:
  * the unpacked official zips:
        TrainVal_images/{train,val}_images/<id>.jpg, TrainVal_images/{train,val}_id.txt
        TrainVal_parsing_annotations/{train,val}_segmentations/<id>.png
  * the prepared flat tree of SCHP and mmseg (`data/LIP`):
        {train,val}_images/, {train,val}_segmentations/, {train,val}_id.txt (optional: mmseg needs none)
Label maps: single-channel 8-bit PNGs, values 0..19; loaders use 255 as ignore (padding), so 255 is accepted.
"""
from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from probes.data.errors import DatasetFormatError
from probes.data.labelmaps import checked_label_maps, read_label_png
from probes.data.report import new_report

LABELS = ("Background", "Hat", "Hair", "Glove", "Sunglasses", "UpperClothes", "Dress", "Coat", "Socks", "Pants",
          "Jumpsuits", "Scarf", "Skirt", "Face", "Left-arm", "Right-arm", "Left-leg", "Right-leg", "Left-shoe",
          "Right-shoe")
NUM_LABELS = len(LABELS)
FLIP_PAIRS = ((14, 15), (16, 17), (18, 19))     # left/right labels swapped by a horizontal flip
SPLITS = ("train", "val")
IGNORE = 255
ARCHIVES = ("TrainVal_images.zip", "TrainVal_parsing_annotations.zip")
INSTRUCTIONS = """LIP is distributed through Google Drive / Baidu links on the LIP page (no direct URL):
  1. open http://sysu-hcp.net/lip/ (or lip.sysuhcp.com/overview.php) and follow "Download";
  2. from the "Single Person" folder get TrainVal_images.zip and TrainVal_parsing_annotations.zip;
  3. put both zips in {root} and run:  python -m probes.data prepare lip --root {root}"""


@dataclass(frozen=True)
class LipSample:
    stem: str
    image_path: Path
    label_path: Path


def locate(root: str | os.PathLike, split: str) -> tuple[Path, Path, Path | None]:
    """(images folder, segmentations folder, id list or None) of a split in either layout."""
    root = Path(root)
    layouts = [(root / f"{split}_images", root / f"{split}_segmentations", root / f"{split}_id.txt"),
               (root / "TrainVal_images" / f"{split}_images",
                root / "TrainVal_parsing_annotations" / f"{split}_segmentations",
                root / "TrainVal_images" / f"{split}_id.txt")]
    for images, labels, ids in layouts:
        if images.is_dir() and labels.is_dir():
            return images, labels, ids if ids.is_file() else None
    raise DatasetFormatError(root, f"no {split}_images/ and {split}_segmentations/ folders",
                             expected=f"the prepared LIP tree ({split}_images/, {split}_segmentations/) or the "
                                      f"unpacked zips (TrainVal_images/, TrainVal_parsing_annotations/)")


class LIP:
    """One split of LIP: `samples` (stem, image, label map) in id-list order; `classes` = the 20 labels."""

    def __init__(self, root: str | os.PathLike, split: str = "train"):
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        self.root, self.split = Path(root), split
        self.image_dir, self.label_dir, self.id_file = locate(root, split)
        self.classes = list(LABELS)
        stems = self._read_ids(self.id_file) if self.id_file else sorted(p.stem for p in self.image_dir.glob("*.jpg"))
        if not stems:
            raise DatasetFormatError(self.image_dir, "no .jpg images", expected=f"the LIP {split} images")
        self.samples = []
        for stem in stems:
            sample = LipSample(stem, self.image_dir / f"{stem}.jpg", self.label_dir / f"{stem}.png")
            for path, what in ((sample.image_path, "image"), (sample.label_path, "label map")):
                if not path.is_file():
                    source = self.id_file or self.image_dir
                    raise DatasetFormatError(path, f"{what} of {stem!r} not found",
                                             expected=f"one .jpg and one .png per id of {source}")
            self.samples.append(sample)

    def __len__(self) -> int:
        return len(self.samples)

    @staticmethod
    def _read_ids(path: Path) -> list[str]:
        stems = []
        with open(path, encoding="utf-8") as handle:
            for line_number, line in enumerate(handle, start=1):
                stem = line.strip()
                if not stem:
                    continue
                if len(stem.split()) != 1 or "." in stem or "/" in stem:
                    raise DatasetFormatError(path, f"{stem!r}", line=line_number,
                                             expected="one image id per line, without folder or extension")
                stems.append(stem)
        return stems

    def load_label(self, index: int) -> np.ndarray:
        """uint8 [H, W] with values 0..19 (0 = Background) or 255."""
        return read_label_map(self.samples[index].label_path)

    def load_image(self, index: int):
        from PIL import Image
        with Image.open(self.samples[index].image_path) as image:
            return image.convert("RGB")


def read_label_map(path: str | os.PathLike) -> np.ndarray:
    return read_label_png(path, ("L", "P"), NUM_LABELS, ignore=IGNORE,
                          what=f"a LIP label map: single-channel 8-bit, values 0..{NUM_LABELS - 1} (or 255)")


# --- CLI hooks ---------------------------------------------------------------------------------------------
def download(root: str | os.PathLike, name: str = "lip") -> None:
    print(INSTRUCTIONS.format(root=Path(root)))


def prepare(root: str | os.PathLike, name: str = "lip", source=None) -> Path:
    """Unpack the two zips (and the nested annotation zip some copies carry) so that LIP(root) reads it."""
    from probes.data.download import extract_archive
    root = Path(root)
    source = Path(source) if source else root
    for archive in ARCHIVES:
        folder = root / archive[:-len(".zip")]
        if not folder.is_dir():
            if not (source / archive).is_file():
                raise DatasetFormatError(source / archive, "archive not found",
                                         expected=INSTRUCTIONS.format(root=root).splitlines()[0])
            extract_archive(source / archive, root)
    annotations = root / "TrainVal_parsing_annotations"
    nested = annotations / "TrainVal_parsing_annotations.zip"
    if not (annotations / "train_segmentations").is_dir() and nested.is_file():
        # Some copies hold the folders only inside a nested zip of the same name (mmseg's recipe unzips
        # it again and moves the two folders up).
        staging = annotations / ".nested"
        extract_archive(nested, staging)
        for split in SPLITS:
            found = next(staging.rglob(f"{split}_segmentations"), None)
            if found is not None and not (annotations / found.name).exists():
                os.replace(found, annotations / found.name)
        shutil.rmtree(staging, ignore_errors=True)
    for split in SPLITS:
        locate(root, split)
    return root


def check(root: str | os.PathLike, name: str = "lip") -> dict:
    report = new_report(name, root)
    histogram = np.zeros(NUM_LABELS, dtype=np.int64)
    for labels in checked_label_maps(report, SPLITS, lambda split: LIP(root, split), LIP.load_label,
                                     lambda sample: sample.label_path):
        histogram += np.bincount(labels[labels != IGNORE].ravel(), minlength=NUM_LABELS)[:NUM_LABELS]
    report["class_histogram"] = {f"{v} {name}": int(n) for v, (name, n) in enumerate(zip(LABELS, histogram))}
    return report
