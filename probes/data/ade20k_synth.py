"""Small ADE20K datasets in the official layouts: SceneParsing, the full release and ADE20K-Part-234.

`synth_ade20k_full` and `synth_ade20k_part234` draw the same hand-placed scenes (same seed, same pixels),
the first as the raw full release (RGB-encoded masks, JSON with the mixed field shapes, amodal instance
PNGs, nested folders), the second as the OV-PARTS layout holding the labels the scenes were built to have.
The expected part and object names below are typed by hand from docs/datasets.md#ade20k-part-234-parts (not taken
from the converter's mapping), so converting the first and comparing with the second tests the converter
against an independent statement of what each planted part is.

Images carry planted classes: pixels of a part with a 234-class label get that class's colour, other
pixels of a 44-class object their object colour, everything else uniform noise in [80, 176].
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from probes.data.ade20k import class_lists
from probes.data.drawing import BACKGROUND_HIGH, BACKGROUND_LOW, noise_background, region_colour_fill, save_jpeg
from probes.data.generated import generator
from probes.data.labelmaps import mask_bbox, present_labels, rle_encode, write_png
from probes.fileio import write_bytes_atomic, write_json_atomic

WIDTH, HEIGHT = 128, 96


def distinct_colours(count: int) -> list[tuple[int, int, int]]:
    """`count` colours 85 levels apart in some channel (channel levels 0, 85, 170, 255), none inside the noise
    background's range, most saturated first. The planted classes of one dataset take them in a fixed order:
    with the +-24 region noise and JPEG, nearest-colour assignment stays right (a 234-entry palette could not
    keep its colours that far apart)."""
    levels = (0, 85, 170, 255)
    grid = [(r, g, b) for r in levels for g in levels for b in levels
            if not all(BACKGROUND_LOW <= c <= BACKGROUND_HIGH for c in (r, g, b))]
    grid.sort(key=lambda c: (-(max(c) - min(c)), c))
    if count > len(grid):
        raise ValueError(f"at most {len(grid)} well-separated colours, asked for {count}")
    return grid[:count]


@dataclass
class Thing:
    """One JSON object: a whole object (parent None) or a part of the object with id `parent`."""
    id: int
    name_ndx: int
    name: str
    rect: tuple[int, int, int, int]          # x0, y0, x1, y1 (exclusive), before the seeded shift
    parent: int | None = None
    expected: str | None = None             # 234-part name or 44-object name it must come out as
    attributes: object = field(default_factory=list)   # [] or a bare string, as in the real files
    occluded: object = "no"                 # "yes" / "no" / []


@dataclass
class Scene:
    stem: str
    split: str
    folder: str                              # <scene group>/<scene>
    things: list[Thing]                      # JSON order (by id)
    drawing_order: list[int]                 # ids in the order they are painted (per level, front last)


def _scenes() -> list[Scene]:
    """Hand-placed scenes. Names and expected labels typed from the spec; name_ndx from the real JSONs."""
    street = Scene("ADE_train_00000101", "training", "urban/street", [
        Thing(0, 312, "building, edifice", (0, 0, 60, 50)),
        Thing(1, 1831, "person, individual, someone, somebody, mortal, soul", (88, 30, 116, 94), expected="person",
              attributes="walking"),
        Thing(2, 1206, "head", (96, 30, 108, 42), parent=1, expected="person's head"),
        Thing(3, 2420, "sky", (0, 0, WIDTH, HEIGHT), occluded=[]),
        Thing(4, 2820, "torso", (90, 42, 114, 70), parent=1, expected="person's torso"),
        Thing(5, 401, "car, auto, automobile, machine, motorcar", (40, 50, 110, 92), expected="car", occluded="yes"),
        Thing(7, 3050, "window", (5, 5, 20, 20), parent=0),                        # building: not one of the 44
        Thing(8, 3050, "window", (30, 5, 45, 20), parent=0),
        Thing(9, 3035, "wheel", (44, 76, 60, 92), parent=5, expected="car's wheel"),
        Thing(10, 3057, "windshield", (55, 52, 80, 62), parent=5, expected="car's window"),
        Thing(11, 2700, "taillight", (34, 60, 46, 68), parent=5),                 # car has no taillight class
        Thing(12, 2122, "rim", (49, 80, 56, 88), parent=9),                        # level 2: stays car's wheel
        Thing(13, 774, "door", (62, 62, 86, 86), parent=5, expected="car's door"),
        Thing(14, 1180, "handle", (78, 70, 84, 74), parent=13),
        Thing(15, 3035, "wheel", (92, 76, 106, 92), parent=5, expected="car's wheel"),  # hidden by the person
        Thing(16, 2117, "arm", (84, 44, 90, 66), parent=1, expected="person's arm"),
    ], drawing_order=[3, 0, 5, 1, 7, 8, 11, 2, 4, 16, 9, 10, 13, 15, 12, 14])
    # The arm pokes out of the person and the taillight out of the car: each object's _seg region takes in
    # its parts (as in the real files), so the arm is labelled; the car has no taillight class. The second
    # wheel is hidden by the person: a part in _parts_1.png that _seg.png shows as another object.
    living_room = Scene("ADE_train_00000102", "training", "home_or_hotel/living_room", [
        Thing(0, 774, "door", (70, 10, 110, 90), expected="door", attributes="closed"),
        Thing(1, 1748, "panel", (74, 14, 106, 50), parent=0, expected="door's panel"),
        Thing(2, 2684, "table", (10, 50, 60, 90), expected="table", occluded=[]),
        Thing(3, 2814, "top", (10, 50, 60, 60), parent=2, expected="table's top"),
        Thing(4, 1433, "leg", (12, 60, 18, 90), parent=2, expected="table's leg"),
        Thing(5, 1380, "knob", (100, 55, 104, 59), parent=0, expected="door's knob"),
        Thing(6, 1433, "leg", (52, 60, 58, 90), parent=2, expected="table's leg"),
        Thing(8, 2978, "wall", (0, 0, WIDTH, HEIGHT)),
    ], drawing_order=[8, 2, 0, 3, 4, 6, 1, 5])
    no_parts = Scene("ADE_train_00000103", "training", "urban/street", [
        Thing(0, 2420, "sky", (0, 0, WIDTH, HEIGHT)),
        Thing(1, 312, "building, edifice", (20, 20, 100, 96)),
        Thing(2, 3050, "window", (30, 30, 50, 50), parent=1),
    ], drawing_order=[0, 1, 2])
    highway = Scene("ADE_val_00000201", "validation", "transportation/highway", [
        Thing(0, 2928, "van", (10, 30, 80, 90), expected="van"),
        Thing(1, 2700, "taillight", (70, 40, 78, 50), parent=0, expected="van's taillight"),
        Thing(2, 3050, "window", (20, 35, 40, 50), parent=0, expected="van's window"),
        Thing(3, 2836, "traffic light, traffic signal, stoplight", (90, 5, 100, 40), expected="traffic light"),
        Thing(4, 1279, "housing", (90, 5, 100, 30), parent=3, expected="traffic light's housing"),
        Thing(5, 2131, "road, route", (0, 0, WIDTH, HEIGHT)),
    ], drawing_order=[5, 0, 3, 2, 1, 4])
    return [street, living_room, no_parts, highway]


def _level(thing: Thing, by_id: dict[int, Thing]) -> int:
    return 0 if thing.parent is None else 1 + _level(by_id[thing.parent], by_id)


@dataclass
class RenderedScene:
    scene: Scene
    levels: dict[int, Thing]                 # id -> level
    class_maps: list[np.ndarray]             # per level, int32 name_ndx (0 = none)
    instance_maps: list[np.ndarray]          # per level, int32 object id + 1 (0 = none)
    amodal: dict[int, np.ndarray]            # id -> bool rect
    part_labels: np.ndarray                  # uint16, 234 part index or 65535
    object_labels: np.ndarray                # uint8, 44 object index or 255
    instances: list[tuple[int, np.ndarray]]  # (object index, visible mask), JSON order
    image: np.ndarray                        # uint8 RGB


def _colour_table() -> dict[str, tuple[int, int, int]]:
    """One colour per planted part or object name of all scenes (parts first), fixed for the dataset."""
    parts, objects = [], []
    for scene in _scenes():
        for thing in scene.things:
            names = objects if thing.parent is None else parts
            if thing.expected is not None and thing.expected not in names:
                names.append(thing.expected)
    return dict(zip(parts + objects, distinct_colours(len(parts) + len(objects))))


def _render(scene: Scene, rng: np.random.Generator, colours: dict[str, tuple[int, int, int]]) -> RenderedScene:
    lists = class_lists()
    part_names, object_names = lists["ade234_part"], lists["ade234_obj"]
    by_id = {thing.id: thing for thing in scene.things}
    level_of = {thing.id: _level(thing, by_id) for thing in scene.things}
    dx, dy = (int(v) for v in rng.integers(0, 3, size=2))        # the seed moves every box a little
    amodal = {}
    for thing in scene.things:
        x0, y0, x1, y1 = thing.rect
        box = np.zeros((HEIGHT, WIDTH), bool)
        full = thing.rect == (0, 0, WIDTH, HEIGHT)
        box[(0 if full else y0 + dy):y1 + dy, (0 if full else x0 + dx):x1 + dx] = True
        amodal[thing.id] = box
    depth = max(level_of.values()) + 1
    class_maps = [np.zeros((HEIGHT, WIDTH), np.int32) for _ in range(depth)]
    instance_maps = [np.zeros((HEIGHT, WIDTH), np.int32) for _ in range(depth)]
    for thing_id in scene.drawing_order:           # each level is its own painting; front objects last
        level = level_of[thing_id]
        region = amodal[thing_id].copy()
        if level == 0:
            # As in the real _seg.png files, an object's region also takes in its parts where they stick
            # out of its own outline (its instance PNG marks those pixels 128, not 255).
            for part in scene.things:
                if part.parent == thing_id:
                    region |= amodal[part.id]
        class_maps[level][region] = by_id[thing_id].name_ndx
        instance_maps[level][region] = thing_id + 1

    part_labels = np.full((HEIGHT, WIDTH), 65535, np.uint16)
    object_labels = np.full((HEIGHT, WIDTH), 255, np.uint8)
    instances = []
    for thing in scene.things:                     # JSON order, as the instance file lists them
        visible = instance_maps[level_of[thing.id]] == thing.id + 1
        if thing.expected is None:
            continue
        if thing.parent is None:
            object_labels[visible] = object_names.index(thing.expected)
            instances.append((object_names.index(thing.expected), visible))
    for thing in scene.things:
        if thing.expected is not None and thing.parent is not None:
            parent_visible = instance_maps[0] == thing.parent + 1
            visible = (instance_maps[1] == thing.id + 1) & parent_visible
            part_labels[visible] = part_names.index(thing.expected)

    image = noise_background(rng, HEIGHT, WIDTH)
    for index in np.unique(object_labels[object_labels != 255]):
        region_colour_fill(rng, image, object_labels == index, colours[object_names[index]])
    for index in np.unique(part_labels[part_labels != 65535]):
        region_colour_fill(rng, image, part_labels == index, colours[part_names[index]])
    return RenderedScene(scene, level_of, class_maps, instance_maps, amodal, part_labels, object_labels,
                         instances, image)


def _rendered(seed: int) -> list[RenderedScene]:
    rng = np.random.default_rng(seed)
    colours = _colour_table()
    return [_render(scene, rng, colours) for scene in _scenes()]


# ---------------------------------------------------------------------------------------------------------
# Full release
# ---------------------------------------------------------------------------------------------------------

def _encode_level(classes: np.ndarray, instances: np.ndarray, drawing_ids: list[int]) -> np.ndarray:
    """RGB mask: R = (class // 256) * 10, G = class % 256, B = round_half_up(k * 255 / N), k = drawing rank."""
    rgb = np.zeros(classes.shape + (3,), np.uint8)
    rgb[..., 0] = (classes // 256) * 10
    rgb[..., 1] = classes % 256
    count = len(drawing_ids)
    for k, thing_id in enumerate(drawing_ids, start=1):
        rgb[..., 2][instances == thing_id + 1] = int(np.floor(k * 255 / count + 0.5))
    return rgb


def _json_record(thing: Thing, rendered: RenderedScene, rank: int) -> dict:
    scene = rendered.scene
    children = [t.id for t in scene.things if t.parent == thing.id]
    xs = [thing.rect[0], thing.rect[2] - 1, thing.rect[2] - 1, thing.rect[0]]
    ys = [thing.rect[1], thing.rect[1], thing.rect[3] - 1, thing.rect[3] - 1]
    return {
        "id": thing.id,
        "name": thing.name,
        "name_ndx": thing.name_ndx,
        "hypernym": [],
        "raw_name": thing.name.split(",")[0],
        "attributes": thing.attributes,
        "depth_ordering_rank": rank,
        "occluded": thing.occluded,
        "crop": "0",
        # MATLAB's jsonencode squeezes one-element arrays: one child is a bare int, none is [].
        "parts": {"hasparts": children[0] if len(children) == 1 else children,
                  "ispartof": [] if thing.parent is None else thing.parent,
                  "part_level": rendered.levels[thing.id]},
        "instance_mask": f"{scene.stem}/instance_{thing.id:03d}_{scene.stem}.png",
        "polygon": {"x": xs, "y": ys, "click_date": []},
        "saved_date": "18-Dec-2005 06:56:48",
    }


@generator
def synth_ade20k_full(out_dir: str | os.PathLike, seed: int = 0) -> Path:
    """Write out_dir/ADE20K_2021_17_01/images/ADE/<split>/<group>/<scene>/...; returns the release folder."""
    root = Path(out_dir) / "ADE20K_2021_17_01"
    for rendered in _rendered(seed):
        scene = rendered.scene
        folder = root / "images" / "ADE" / scene.split / scene.folder
        save_jpeg(folder / f"{scene.stem}.jpg", rendered.image)
        for level in range(len(rendered.class_maps)):
            drawing = [i for i in scene.drawing_order if rendered.levels[i] == level]
            rgb = _encode_level(rendered.class_maps[level], rendered.instance_maps[level], drawing)
            write_png(folder / (f"{scene.stem}_seg.png" if level == 0 else f"{scene.stem}_parts_{level}.png"), rgb)
        records = []
        for thing in scene.things:
            level = rendered.levels[thing.id]
            region = rendered.instance_maps[level] == thing.id + 1
            visible = region & rendered.amodal[thing.id]
            mask = np.where(visible, 255, np.where(region | rendered.amodal[thing.id], 128, 0)).astype(np.uint8)
            write_png(folder / scene.stem / f"instance_{thing.id:03d}_{scene.stem}.png", mask)
            records.append(_json_record(thing, rendered, scene.drawing_order.index(thing.id) + 1))
        document = {"annotation": {
            "filename": f"{scene.stem}.jpg",
            "folder": f"ADE20K_2021_17_01/images/ADE/{scene.split}/{scene.folder}",
            "imsize": [HEIGHT, WIDTH, 3],
            "source": {"folder": "synthetic", "filename": f"{scene.stem}.jpg", "origin": "partprobe synth"},
            "scene": ["outdoor" if "urban" in scene.folder or "highway" in scene.folder else "indoor",
                      *scene.folder.split("/")],
            "object": records,
        }}
        write_bytes_atomic(folder / f"{scene.stem}.json", json.dumps(document, indent=1).encode("utf-8"))
    return root


@generator
def synth_ade20k_part234(out_dir: str | os.PathLike, seed: int = 0) -> Path:
    """Write out_dir/ADE20KPart234/ holding the planted labels of the same scenes; returns that folder."""
    root = Path(out_dir) / "ADE20KPart234"
    names = class_lists()["ade234_obj"]
    for split, json_name in (("training", "ade20k_instance_train.json"), ("validation", "ade20k_instance_val.json")):
        images, annotations, part_counts, object_counts = [], [], {}, {}
        for rendered in _rendered(seed):
            scene = rendered.scene
            if scene.split != split or not (rendered.part_labels != 65535).any():
                continue
            save_jpeg(root / "images" / split / f"{scene.stem}.jpg", rendered.image)
            write_png(root / "annotations_detectron2_part" / split / f"{scene.stem}.png", rendered.part_labels)
            write_png(root / "annotations_detectron2_obj" / split / f"{scene.stem}.png", rendered.object_labels)
            image_id = int(scene.stem.rsplit("_", 1)[1])
            images.append({"id": image_id, "file_name": f"{scene.stem}.jpg", "height": HEIGHT, "width": WIDTH})
            for category, mask in rendered.instances:
                annotations.append({"id": len(annotations) + 1, "image_id": image_id, "iscrowd": 0,
                                    "category_id": category, "segmentation": rle_encode(mask),
                                    "area": int(mask.sum()), "bbox": mask_bbox(mask)})
            part_counts[f"{scene.stem}.png"] = present_labels(rendered.part_labels, 65535)
            object_counts[f"{scene.stem}.png"] = present_labels(rendered.object_labels, 255)
        write_json_atomic(root / json_name, {
            "info": {"description": "partprobe synthetic ADE20K-Part-234"}, "licenses": [], "images": images,
            "annotations": annotations, "categories": [{"id": i, "name": n} for i, n in enumerate(names)]})
        write_json_atomic(root / "annotations_detectron2_part" / f"{split}_part_label_count.json", part_counts)
        write_json_atomic(root / "annotations_detectron2_part" / f"{split}_obj_label_count.json", object_counts)
    return root


# ---------------------------------------------------------------------------------------------------------
# SceneParsing (ADEChallengeData2016)
# ---------------------------------------------------------------------------------------------------------

@generator
def synth_ade20k(out_dir: str | os.PathLike, seed: int = 0, train_images: int = 6, val_images: int = 2) -> Path:
    """Write out_dir/ADEChallengeData2016/ (L-mode labels 0..150, class-coloured regions); returns that folder."""
    rng = np.random.default_rng(seed)
    root = Path(out_dir) / "ADEChallengeData2016"
    names = class_lists()["ade150_long"]
    # A dozen of the 150 classes per dataset, so that each gets a colour nothing else is close to.
    planted = np.sort(rng.choice(np.arange(1, len(names) + 1), size=12, replace=False))
    colour_of = dict(zip(planted.tolist(), distinct_colours(len(planted))))
    scene_lines = []
    width, height, cell = 96, 64, 16
    for split, count, prefix in (("training", train_images, "ADE_train"), ("validation", val_images, "ADE_val")):
        for number in range(1, count + 1):
            stem = f"{prefix}_{number:08d}"
            # A 6x4 grid of 16 px cells, each one planted class or 0 ("other", left as noise).
            cells = rng.choice(np.concatenate([[0], planted]), size=(height // cell, width // cell))
            cells[0, 0] = 0                                  # every image has "other" pixels
            labels = np.kron(cells, np.ones((cell, cell), np.int64)).astype(np.uint8)
            image = noise_background(rng, height, width)
            for value in np.unique(labels[labels > 0]):
                region_colour_fill(rng, image, labels == value, colour_of[int(value)])
            save_jpeg(root / "images" / split / f"{stem}.jpg", image)
            write_png(root / "annotations" / split / f"{stem}.png", labels)
            scene_lines.append(f"{stem} {('street', 'bedroom', 'kitchen')[number % 3]}")
    rows = ["Idx\tRatio\tTrain\tVal\tName"]
    rows += [f"{i}\t{0.5 / i:.4f}\t{1000 // i}\t{100 // i}\t{name}" for i, name in enumerate(names, start=1)]
    write_bytes_atomic(root / "objectInfo150.txt", ("\n".join(rows) + "\n").encode("utf-8"))
    write_bytes_atomic(root / "sceneCategories.txt", ("\n".join(scene_lines) + "\n").encode("utf-8"))
    return root
