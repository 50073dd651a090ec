"""CUB-200-2011 in its official layout (docs/datasets.md#cub-200-2011).

    CUB_200_2011/images.txt              <image_id> <class_dir>/<file>.jpg
                 image_class_labels.txt  <image_id> <class_id>
                 train_test_split.txt    <image_id> <is_training_image 0/1>
                 classes.txt             <class_id> <NNN.Name>
                 bounding_boxes.txt      <image_id> <x> <y> <width> <height>
                 parts/parts.txt         <part_id> <part name, may contain a space>
                 parts/part_locs.txt     <image_id> <part_id> <x> <y> <visible 0/1>, 15 rows per image
                 images/<class_dir>/<file>.jpg

All ids are 1-based. Not-visible part rows are present as `0.0 0.0 0`.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from probes.data.errors import DatasetFormatError
from probes.data.records import integer, number, read_records, require_dir, require_file
from probes.data.report import add_problem, new_report

FOLDER = "CUB_200_2011"
PART_NAMES = ("back", "beak", "belly", "breast", "crown", "forehead", "left eye", "left leg", "left wing",
              "nape", "right eye", "right leg", "right wing", "tail", "throat")
NUM_PARTS = len(PART_NAMES)
# The four parts of the paper's CUB experiments (official code `keypoint_cls_list`, 1-based part ids):
# right eye, right leg, left wing, tail.
PAPER_PART_IDS = (11, 12, 9, 14)

URL = "https://data.caltech.edu/records/65de6-vp158/files/CUB_200_2011.tgz?download=1"
ARCHIVE = "CUB_200_2011.tgz"
MD5 = "97eceeb196236b17998738112f37df78"


@dataclass(frozen=True, eq=False)   # holds arrays: compare and hash by identity
class CubImage:
    image_id: int
    path: Path                 # absolute path of the JPEG
    class_id: int              # 1-based, index into classes.txt
    is_train: bool
    bbox: tuple                # (x, y, width, height) in pixels, floats
    parts: np.ndarray = field(repr=False)   # float64 [15, 3]: x, y, visible; row i is part_id i + 1
    relative_path: str = ""    # as written in images.txt, e.g. "001.Black_footed_Albatross/..._0046_18.jpg"


def locate(root: str | os.PathLike) -> Path:
    """The CUB_200_2011 folder: `root` itself or `root/CUB_200_2011`."""
    root = Path(root)
    for candidate in (root, root / FOLDER):
        if (candidate / "images.txt").is_file():
            return candidate
    raise DatasetFormatError(root / FOLDER / "images.txt", "file not found",
                             expected=f"{root} to be the {FOLDER} folder or to contain it")


class CUB200:
    """All images of CUB-200-2011 with labels, split, box and the 15 part locations."""

    def __init__(self, root: str | os.PathLike):
        self.root = locate(root)
        folder = self.root
        require_dir(folder / "images", "the images/<class_dir>/ tree of CUB_200_2011")
        self.class_dirs = self._read_classes(folder / "classes.txt")
        self.class_names = [name.split(".", 1)[1] if "." in name else name for name in self.class_dirs]
        self.part_names = self._read_part_names(folder / "parts" / "parts.txt")

        paths = self._read_paths(folder / "images.txt")
        labels = self._read_per_image(folder / "image_class_labels.txt", ("class_id", integer), paths)
        splits = self._read_per_image(folder / "train_test_split.txt", ("is_training_image", integer), paths)
        boxes = self._read_boxes(folder / "bounding_boxes.txt", paths)
        parts, self.part_locs_order = self._read_part_locs(folder / "parts" / "part_locs.txt", paths)

        self.images: list[CubImage] = []
        for image_id, relative in paths.items():
            class_id = labels[image_id]
            self._check_class(folder / "image_class_labels.txt", image_id, relative, class_id)
            if splits[image_id] not in (0, 1):
                raise DatasetFormatError(folder / "train_test_split.txt", f"image {image_id} has {splits[image_id]}",
                                         field="is_training_image", expected="0 or 1")
            self.images.append(CubImage(image_id, folder / "images" / relative, class_id, splits[image_id] == 1,
                                        boxes[image_id], parts[image_id], relative))
        self.image_by_id = {image.image_id: image for image in self.images}

    def __len__(self) -> int:
        return len(self.images)

    # --- one reader per file -------------------------------------------------------------------------
    @staticmethod
    def _read_classes(path: Path) -> list[str]:
        require_file(path, "classes.txt: '<class_id> <NNN.Name>' per line")
        names = []
        for line, (class_id, name) in read_records(path, [("class_id", integer), ("class_name", str)]):
            if class_id != len(names) + 1:
                raise DatasetFormatError(path, f"class id {class_id}", line=line, field="class_id",
                                         expected=f"consecutive ids from 1, here {len(names) + 1}")
            names.append(name)
        if not names:
            raise DatasetFormatError(path, "no classes", expected="one line per class")
        return names

    @staticmethod
    def _read_part_names(path: Path) -> list[str]:
        require_file(path, "parts/parts.txt: '<part_id> <part name>' per line, 15 lines")
        names = []
        records = read_records(path, [("part_id", integer), ("part_name", str)], last_is_text=True)
        for line, (part_id, name) in records:
            if part_id != len(names) + 1:
                raise DatasetFormatError(path, f"part id {part_id}", line=line, field="part_id",
                                         expected=f"consecutive ids from 1, here {len(names) + 1}")
            names.append(name)
        if len(names) != NUM_PARTS:
            raise DatasetFormatError(path, f"{len(names)} parts", expected=f"{NUM_PARTS} parts")
        return names

    @staticmethod
    def _read_paths(path: Path) -> dict[int, str]:
        require_file(path, "images.txt: '<image_id> <class_dir>/<file>.jpg' per line")
        paths: dict[int, str] = {}
        for line, (image_id, relative) in read_records(path, [("image_id", integer), ("path", str)]):
            if image_id < 1 or image_id in paths:
                raise DatasetFormatError(path, f"image id {image_id} is {'repeated' if image_id in paths else '< 1'}",
                                         line=line, field="image_id", expected="unique 1-based ids")
            if relative.count("/") != 1 or not relative.lower().endswith(".jpg"):
                raise DatasetFormatError(path, f"path {relative!r}", line=line, field="path",
                                         expected="<class_dir>/<file>.jpg")
            paths[image_id] = relative
        if not paths:
            raise DatasetFormatError(path, "no images", expected="one line per image")
        return paths

    @staticmethod
    def _read_per_image(path: Path, field: tuple, paths: dict[int, str]) -> dict[int, int]:
        require_file(path, f"'<image_id> <{field[0]}>' per line")
        values: dict[int, int] = {}
        for line, (image_id, value) in read_records(path, [("image_id", integer), field]):
            _known_once(path, line, image_id, paths, values)
            values[image_id] = value
        _all_present(path, paths, values)
        return values

    @staticmethod
    def _read_boxes(path: Path, paths: dict[int, str]) -> dict[int, tuple]:
        require_file(path, "bounding_boxes.txt: '<image_id> <x> <y> <width> <height>' per line")
        fields = [("image_id", integer), ("x", number), ("y", number), ("width", number), ("height", number)]
        boxes: dict[int, tuple] = {}
        for line, (image_id, x, y, width, height) in read_records(path, fields):
            _known_once(path, line, image_id, paths, boxes)
            for name, value in (("x", x), ("y", y), ("width", width), ("height", height)):
                if value < 0:
                    raise DatasetFormatError(path, f"{name} = {value}", line=line, field=name, expected="a value >= 0")
            boxes[image_id] = (x, y, width, height)
        _all_present(path, paths, boxes)
        return boxes

    @staticmethod
    def _read_part_locs(path: Path, paths: dict[int, str]):
        require_file(path, "parts/part_locs.txt: '<image_id> <part_id> <x> <y> <visible>' per line")
        fields = [("image_id", integer), ("part_id", integer), ("x", number), ("y", number), ("visible", integer)]
        parts: dict[int, np.ndarray] = {}
        seen: dict[int, set] = {}
        order: list[tuple[int, int]] = []
        for line, (image_id, part_id, x, y, visible) in read_records(path, fields):
            if image_id not in paths:
                raise DatasetFormatError(path, f"image id {image_id} is not in images.txt", line=line,
                                         field="image_id", expected="an id listed in images.txt")
            if not 1 <= part_id <= NUM_PARTS:
                raise DatasetFormatError(path, f"part id {part_id}", line=line, field="part_id",
                                         expected=f"1..{NUM_PARTS}")
            if visible not in (0, 1):
                raise DatasetFormatError(path, f"visible = {visible}", line=line, field="visible",
                                         expected="0 or 1")
            if x < 0 or y < 0:
                raise DatasetFormatError(path, f"({x}, {y})", line=line, field="x" if x < 0 else "y",
                                         expected="pixel coordinates >= 0")
            done = seen.setdefault(image_id, set())
            if part_id in done:
                raise DatasetFormatError(path, f"second row for image {image_id} part {part_id}", line=line,
                                         expected=f"exactly {NUM_PARTS} rows per image, one per part")
            done.add(part_id)
            parts.setdefault(image_id, np.zeros((NUM_PARTS, 3)))[part_id - 1] = (x, y, visible)
            order.append((image_id, part_id))
        for image_id in paths:
            rows = len(seen.get(image_id, ()))
            if rows != NUM_PARTS:
                missing = sorted(set(range(1, NUM_PARTS + 1)) - seen.get(image_id, set()))
                raise DatasetFormatError(path, f"image {image_id} has {rows} rows (missing part ids {missing})",
                                         expected=f"exactly {NUM_PARTS} rows per image, one per part")
        return parts, order

    def _check_class(self, path: Path, image_id: int, relative: str, class_id: int) -> None:
        if not 1 <= class_id <= len(self.class_dirs):
            raise DatasetFormatError(path, f"image {image_id} has class {class_id}", field="class_id",
                                     expected=f"1..{len(self.class_dirs)} (classes.txt)")
        folder = relative.split("/", 1)[0]
        if folder != self.class_dirs[class_id - 1]:
            raise DatasetFormatError(path, f"image {image_id} is in folder {folder!r} but has class {class_id} "
                                           f"({self.class_dirs[class_id - 1]!r})", field="class_id",
                                     expected="the class whose folder holds the image")


def _known_once(path: Path, line: int, image_id: int, paths: dict, values: dict) -> None:
    if image_id not in paths:
        raise DatasetFormatError(path, f"image id {image_id} is not in images.txt", line=line, field="image_id",
                                 expected="an id listed in images.txt")
    if image_id in values:
        raise DatasetFormatError(path, f"image id {image_id} appears twice", line=line, field="image_id",
                                 expected="one line per image")


def _all_present(path: Path, paths: dict, values: dict) -> None:
    missing = [image_id for image_id in paths if image_id not in values]
    if missing:
        raise DatasetFormatError(path, f"no line for image ids {missing[:5]}{' ...' if len(missing) > 5 else ''}",
                                 expected="one line for every image of images.txt")


# --- CLI hooks (python -m probes.data download|prepare|check cub) ----------------------------------------
def download(root: str | os.PathLike, name: str = "cub") -> Path:
    from probes.data.download import download_file
    return download_file(URL, Path(root) / ARCHIVE, md5=MD5)


def prepare(root: str | os.PathLike, name: str = "cub", source=None) -> Path:
    """Unpack CUB_200_2011.tgz (in `root`, or the `source` file) so that CUB200(root) reads it."""
    from probes.data.download import extract_archive
    root = Path(root)
    if not (root / FOLDER / "images.txt").is_file():
        extract_archive(Path(source) if source else root / ARCHIVE, root)
    return root


def check(root: str | os.PathLike, name: str = "cub") -> dict:
    from PIL import Image

    report = new_report(name, root)
    try:
        dataset = CUB200(root)
    except DatasetFormatError as error:
        add_problem(report, error)
        return report
    images = dataset.images
    visible = np.stack([image.parts[:, 2] for image in images])
    report["counts"] = {"images": len(images), "train": sum(i.is_train for i in images),
                        "test": sum(not i.is_train for i in images), "classes": len(dataset.class_dirs),
                        "visible parts per part": dict(zip(dataset.part_names, visible.sum(0).astype(int).tolist()))}
    histogram = np.bincount([image.class_id for image in images], minlength=len(dataset.class_dirs) + 1)[1:]
    report["class_histogram"] = {name: int(count) for name, count in zip(dataset.class_dirs, histogram)}
    for image in images:
        if not image.path.is_file():
            add_problem(report, f"{image.path}: image file not found (images.txt id {image.image_id})")
            continue
        with Image.open(image.path) as opened:       # reads the header only
            width, height = opened.size
        shown = image.parts[image.parts[:, 2] == 1]
        outside = shown[(shown[:, 0] >= width) | (shown[:, 1] >= height)]
        if len(outside):
            add_problem(report, f"{image.path}: visible part at {outside[0, :2].tolist()} outside the "
                                f"{width}x{height} image (part_locs.txt)")
    return report
