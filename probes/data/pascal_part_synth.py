"""Small Pascal-Part datasets: the original `.mat` release with VOC images, and the derived 58/108/116 sets.

`synth_pascal_part` writes `Annotations_Part/*.mat` (compressed MATLAB 5 files built with the recipe of
docs/datasets.md#pascal-part-original-release) plus `VOCdevkit/VOC2010/{JPEGImages,ImageSets/Main}`;
`synth_pascal_part_derived` writes the same scenes as the prepared layouts (PascalPart116/, PascalPartGMNet/,
PascalObject16/) with the labels the scenes were planted with. The planted labels come from EXPECTED below,
typed by hand from the spec's class lists, not from the converter's grouping tables, so converting the first
and comparing with the second checks the converter against an independent statement of each part's class.

Images: pixels of a part get the colour of its 116-class label, other object pixels the object's colour,
the rest uniform noise in [80, 176]; the colours are `distinct_colours`, far enough apart to tell apart.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.io import savemat

from probes.data.ade20k import class_lists
from probes.data.ade20k_synth import distinct_colours
from probes.data.drawing import noise_background, region_colour_fill, save_jpeg
from probes.data.labelmaps import present_labels, write_png
from probes.data.generated import generator
from probes.fileio import atomic_path, write_bytes_atomic, write_json_atomic

WIDTH, HEIGHT = 80, 60
IGNORE = 255

# (class, part name as annotated) -> (Pascal-Part-58 name, -108 name, -116 name); None = ignore.
EXPECTED = {
    ("person", "head"): ("person_head", "person_head", "person's head"),
    ("person", "leye"): ("person_head", "person_reye", "person's eye"),
    ("person", "lebrow"): ("person_head", "person_head", "person's eyebrow"),
    ("person", "torso"): ("person_torso", "person_torso", "person's torso"),
    ("person", "llarm"): ("person_larm", "person_ruarm", "person's lower arm"),
    ("person", "ruarm"): ("person_uarm", "person_ruarm", "person's upper arm"),
    ("person", "rfoot"): ("person_lleg", "person_rfoot", "person's foot"),
    ("bottle", "cap"): ("bottle_cap", "bottle_cap", "bottle's cap"),
    ("bottle", "body"): ("bottle_body", "bottle_body", "bottle's body"),
    ("aeroplane", "body"): ("aeroplane_body", "aeroplane_body", "aeroplane's body"),
    ("aeroplane", "tail"): ("aeroplane_stern", "aeroplane_stern", "aeroplane's tail"),
    ("aeroplane", "lwing"): ("aeroplane_wing", "aeroplane_rwing", "aeroplane's wing"),
    ("aeroplane", "engine_2"): ("aeroplane_engine", "aeroplane_engine", "aeroplane's engine"),
    ("car", "window_7"): ("car_window", "car_window", "car's window"),
    ("car", "bliplate"): ("car_plate", "car_fliplate", "car's license plate"),
    ("car", "leftmirror"): ("car_body", "car_rightside", "car's mirror"),
    ("tvmonitor", "screen"): ("tvmonitor_screen", "tvmonitor_screen", "tvmonitor's screen"),
    ("train", "coach_2"): ("train", "train_coach", "train's coach"),
    ("train", "cleftside_3"): ("train", "train_crightside", "train's side"),
    ("cat", "lbpa"): ("cat_leg", "cat_rfpa", "cat's paw"),
    ("cat", "head"): ("cat_head", "cat_head", "cat's head"),
    ("dog", "muzzle"): ("dog_head", "dog_muzzle", "dog's muzzle"),
    ("cow", "rhorn"): ("cow_head", "cow_rhorn", "cow's horn"),
    ("sheep", "tail"): ("sheep_torso", "sheep_tail", "sheep's tail"),
    ("horse", "lbho"): ("horse_leg", "horse_rfho", "horse's hoof"),
    ("bird", "neck"): ("bird_torso", "birds_neck", "bird's neck"),
    ("bicycle", "bwheel"): ("bycicle_wheel", "bicycle_fwheel", "bicycle's wheel"),
    ("bicycle", "headlight_1"): ("bycicle_body", None, "bicycle's headlight"),
    ("bus", "backside"): ("bus_body", "bus_rightside", "bus's back"),
    ("motorbike", "saddle"): ("motorbike_body", "motorbike_saddle", "motorbike's saddle"),
    ("pottedplant", "pot"): ("pottedplant_pot", "pottedplant_pot", "pottedplant's pot"),
}
# Pixels of an object that none of its parts covers: (58, 108, 116) label; classes not listed are ignored.
UNPARTED = {
    "tvmonitor": ("tvmonitor_frame", None, None),
    "train": ("train", None, None),
    "boat": ("boat", "boat", None),
    "chair": ("chair", "chair", None),
    "diningtable": ("dining_table", "dining_table", None),
    "sofa": ("sofa", "sofa", None),
}
OBJECT16 = ("aeroplane", "bicycle", "bird", "bottle", "bus", "car", "cat", "cow", "dog", "horse", "motorbike",
            "person", "pottedplant", "sheep", "train", "tvmonitor")


@dataclass
class PlantedObject:
    cls: str
    rect: tuple[int, int, int, int]                       # x0, y0, x1, y1 (exclusive)
    parts: tuple[tuple[str, tuple[int, int, int, int]], ...] = ()


@dataclass
class PascalScene:
    stem: str
    split: str
    objects: tuple[PlantedObject, ...]                    # later objects occlude earlier ones


SCENES = (
    # The bottle stands in front of the person; the eye and eyebrow are painted over the head.
    PascalScene("2008_000001", "train", (
        PlantedObject("person", (10, 5, 40, 58), (
            ("head", (15, 5, 35, 20)), ("leye", (18, 8, 22, 12)), ("lebrow", (26, 8, 30, 10)),
            ("torso", (12, 20, 38, 40)), ("llarm", (10, 25, 14, 40)), ("ruarm", (36, 20, 40, 30)),
            ("rfoot", (25, 50, 35, 58)))),
        PlantedObject("bottle", (30, 30, 50, 55), (("cap", (36, 30, 44, 36)), ("body", (30, 36, 50, 55)))),
    )),
    PascalScene("2008_000002", "val", (
        PlantedObject("aeroplane", (5, 5, 75, 40), (
            ("body", (20, 15, 60, 30)), ("tail", (60, 5, 75, 20)), ("lwing", (30, 5, 45, 15)),
            ("engine_2", (25, 30, 35, 38)))),
        PlantedObject("car", (5, 42, 60, 58), (
            ("window_7", (10, 43, 25, 50)), ("bliplate", (50, 50, 58, 56)), ("leftmirror", (28, 44, 32, 47)))),
    )),
    # A monitor with its screen, one without part masks (empty 0x0 parts), and a boat (no parts at all).
    PascalScene("2009_000003", "train", (
        PlantedObject("tvmonitor", (5, 5, 40, 40), (("screen", (10, 10, 35, 35)),)),
        PlantedObject("tvmonitor", (45, 5, 75, 35)),
        PlantedObject("boat", (5, 45, 40, 58)),
    )),
    PascalScene("2009_000004", "train", (
        PlantedObject("train", (0, 0, 80, 30), (("coach_2", (0, 0, 40, 30)), ("cleftside_3", (5, 5, 20, 25)))),
        PlantedObject("cat", (5, 32, 40, 58), (("lbpa", (5, 50, 12, 58)), ("head", (30, 32, 40, 42)))),
        PlantedObject("dog", (42, 32, 78, 58), (("muzzle", (70, 40, 78, 48)),)),
    )),
    PascalScene("2010_000005", "val", (
        PlantedObject("cow", (0, 0, 38, 40), (("rhorn", (2, 0, 8, 6)),)),
        PlantedObject("sheep", (40, 0, 78, 40), (("tail", (70, 20, 78, 30)),)),
        PlantedObject("horse", (0, 42, 30, 60), (("lbho", (0, 55, 5, 60)),)),
        PlantedObject("bird", (32, 42, 50, 60), (("neck", (36, 44, 42, 50)),)),
        PlantedObject("bicycle", (52, 42, 80, 60), (("bwheel", (52, 50, 62, 60)), ("headlight_1", (70, 44, 74, 48)))),
    )),
    # No part and none of the 16 object classes: only in the 58/108 sets.
    PascalScene("2010_000006", "train", (
        PlantedObject("chair", (5, 5, 30, 50)),
        PlantedObject("sofa", (35, 5, 75, 50)),
        PlantedObject("diningtable", (10, 50, 70, 60)),
    )),
    PascalScene("2010_000007", "val", (
        PlantedObject("bus", (0, 0, 50, 40), (("backside", (0, 0, 20, 40)),)),
        PlantedObject("motorbike", (52, 0, 80, 30), (("saddle", (60, 5, 70, 12)),)),
        PlantedObject("pottedplant", (52, 32, 80, 60), (("pot", (55, 45, 78, 60)),)),
    )),
)


def _box(rect, dx: int, dy: int) -> np.ndarray:
    x0, y0, x1, y1 = rect
    mask = np.zeros((HEIGHT, WIDTH), bool)
    mask[max(0, y0 + dy):y1 + dy, max(0, x0 + dx):x1 + dx] = True
    return mask


@dataclass
class RenderedPascal:
    scene: PascalScene
    masks: list[tuple[np.ndarray, list[np.ndarray]]]     # per object: (object mask, part masks)
    labels: dict[str, np.ndarray]                        # part58, part108, part116, object20, object116, object16
    image: np.ndarray


def _colour_table() -> dict[str, tuple[int, int, int]]:
    """One colour per planted 116-part name and per object class of the scenes (parts first)."""
    parts = list(dict.fromkeys(names[2] for names in EXPECTED.values()))
    objects = list(dict.fromkeys(obj.cls for scene in SCENES for obj in scene.objects))
    return dict(zip(parts + objects, distinct_colours(len(parts) + len(objects))))


def _render(scene: PascalScene, rng: np.random.Generator, colours: dict[str, tuple[int, int, int]]) -> RenderedPascal:
    lists = class_lists()
    voc = lists["pp116_obj"]
    names = {58: lists["pp58"], 108: lists["pp108"], 116: lists["pp116_part"]}
    dx, dy = (int(v) for v in rng.integers(0, 3, size=2))   # the seed moves every box a little
    labels = {f"part{v}": np.full((HEIGHT, WIDTH), 0 if v != 116 else IGNORE, np.uint8) for v in (58, 108, 116)}
    labels["object20"] = np.zeros((HEIGHT, WIDTH), np.uint8)
    masks = []
    for obj in scene.objects:
        obj_mask = _box(obj.rect, dx, dy)
        for column, variant in enumerate((58, 108, 116)):
            unparted = UNPARTED.get(obj.cls, (None, None, None))[column]
            labels[f"part{variant}"][obj_mask] = IGNORE if unparted is None else names[variant].index(unparted)
        labels["object20"][obj_mask] = voc.index(obj.cls) + 1
        part_masks = []
        for name, rect in obj.parts:
            part_mask = _box(rect, dx, dy) & obj_mask
            for column, variant in enumerate((58, 108, 116)):
                expected = EXPECTED[(obj.cls, name)][column]
                labels[f"part{variant}"][part_mask] = IGNORE if expected is None else names[variant].index(expected)
            part_masks.append(part_mask)
        masks.append((obj_mask, part_masks))
    labels["object116"] = np.where(labels["object20"] > 0, labels["object20"].astype(np.int64) - 1, IGNORE).astype(np.uint8)
    lookup16 = np.array([0] + [OBJECT16.index(c) + 1 if c in OBJECT16 else 0 for c in voc], np.uint8)
    labels["object16"] = lookup16[labels["object20"]]

    image = noise_background(rng, HEIGHT, WIDTH)
    for value in np.unique(labels["object20"][labels["object20"] > 0]):
        region_colour_fill(rng, image, labels["object20"] == value, colours[voc[value - 1]])
    for value in np.unique(labels["part116"][labels["part116"] != IGNORE]):
        region_colour_fill(rng, image, labels["part116"] == value, colours[names[116][value]])
    return RenderedPascal(scene, masks, labels, image)


def _rendered(seed: int) -> list[RenderedPascal]:
    rng = np.random.default_rng(seed)
    colours = _colour_table()
    return [_render(scene, rng, colours) for scene in SCENES]


def _write_mat(path: Path, rendered: RenderedPascal) -> None:
    """The recipe of docs/datasets.md#pascal-part-original-release: nested structured arrays of objects, then
    a compressed MATLAB 5 file."""
    part_dtype = [("part_name", "O"), ("mask", "O")]
    object_dtype = [("class", "O"), ("class_ind", "O"), ("mask", "O"), ("parts", "O")]
    voc = class_lists()["pp116_obj"]
    objects = np.empty((1, len(rendered.scene.objects)), dtype=object_dtype)
    for k, (obj, (obj_mask, part_masks)) in enumerate(zip(rendered.scene.objects, rendered.masks)):
        if obj.parts:
            parts = np.empty((1, len(obj.parts)), dtype=part_dtype)
            for j, ((name, _), part_mask) in enumerate(zip(obj.parts, part_masks)):
                parts[0, j] = (name, part_mask.astype(np.uint8))
        else:
            parts = np.empty((0, 0), dtype=part_dtype)
        objects[0, k] = (obj.cls, np.array([[voc.index(obj.cls) + 1]], np.uint8), obj_mask.astype(np.uint8), parts)
    anno = np.empty((1, 1), dtype=[("imname", "O"), ("objects", "O")])
    anno[0, 0] = (rendered.scene.stem, objects)
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        savemat(handle, {"anno": anno}, do_compression=True)


@generator
def synth_pascal_part(out_dir: str | os.PathLike, seed: int = 0) -> Path:
    """Write out_dir/Annotations_Part/*.mat and out_dir/VOCdevkit/VOC2010/...; returns out_dir."""
    out = Path(out_dir)
    voc = out / "VOCdevkit" / "VOC2010"
    for rendered in _rendered(seed):
        _write_mat(out / "Annotations_Part" / f"{rendered.scene.stem}.mat", rendered)
        save_jpeg(voc / "JPEGImages" / f"{rendered.scene.stem}.jpg", rendered.image)
    for split in ("train", "val"):
        stems = [scene.stem for scene in SCENES if scene.split == split]
        write_bytes_atomic(voc / "ImageSets" / "Main" / f"{split}.txt", "".join(f"{s}\n" for s in stems).encode())
    return out


@generator
def synth_pascal_part_derived(out_dir: str | os.PathLike, seed: int = 0) -> Path:
    """Write PascalPart116/, PascalPartGMNet/ and PascalObject16/ under out_dir; returns out_dir."""
    out = Path(out_dir)
    counts = {(split, kind): {} for split in ("train", "val") for kind in ("part", "obj")}
    for rendered in _rendered(seed):
        stem, split, labels = rendered.scene.stem, rendered.scene.split, rendered.labels
        gmnet = out / "PascalPartGMNet"
        save_jpeg(gmnet / "RGB" / f"{stem}.jpg", rendered.image)
        write_png(gmnet / "label58" / "gray" / "all" / f"{stem}.png", labels["part58"])
        write_png(gmnet / "label108" / "gray" / "all" / f"{stem}.png", labels["part108"])
        write_png(gmnet / "label21" / "gray" / "all" / f"{stem}.png", labels["object20"])
        if (labels["part116"] != IGNORE).any():
            save_jpeg(out / "PascalPart116" / "images" / split / f"{stem}.jpg", rendered.image)
            write_png(out / "PascalPart116" / "annotations_detectron2_part" / split / f"{stem}.png", labels["part116"])
            write_png(out / "PascalPart116" / "annotations_detectron2_obj" / split / f"{stem}.png", labels["object116"])
            counts[(split, "part")][f"{stem}.png"] = present_labels(labels["part116"], IGNORE)
            counts[(split, "obj")][f"{stem}.png"] = present_labels(labels["object116"], IGNORE)
        if labels["object16"].any():
            save_jpeg(out / "PascalObject16" / "img" / split / f"{stem}.jpg", rendered.image)
            write_png(out / "PascalObject16" / "ann" / split / f"{stem}.png", labels["object16"])
    for split in ("train", "val"):
        stems = [scene.stem for scene in SCENES if scene.split == split]
        write_bytes_atomic(out / "PascalPartGMNet" / f"{split}.txt", "".join(f"{s}\n" for s in stems).encode())
        for kind in ("part", "obj"):
            write_json_atomic(out / "PascalPart116" / "annotations_detectron2_part" / f"{split}_{kind}_label_count.json",
                              counts[(split, kind)])
    return out


@generator
def synth_pascal_part_116(out_dir: str | os.PathLike, seed: int = 0) -> Path:
    return synth_pascal_part_derived(out_dir, seed) / "PascalPart116"


@generator
def synth_pascal_part_gmnet(out_dir: str | os.PathLike, seed: int = 0) -> Path:
    return synth_pascal_part_derived(out_dir, seed) / "PascalPartGMNet"
