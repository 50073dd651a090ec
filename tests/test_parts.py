"""The part database against hand-computed crop tables (official-code and paper variants, both datasets).

The layouts are written by hand (not by the generator) so that every number below can be checked with
pencil and paper: distances, round-half-to-even halves, PIL's rounding of float edges, the strict 40 px
bound, the 999999 lone keypoint, distances taken before the filter, COCO's three distance scopes.
"""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from probes import parts
from probes.views.parts import PartCropDataset
from probes.views.transforms import SquareResize
from probes.parts import (build_part_database, crop_box, keep_distance,
                          nearest_distances, pixel_box)

CUB_PART_NAMES = ["back", "beak", "belly", "breast", "crown", "forehead", "left eye", "left leg", "left wing",
                  "nape", "right eye", "right leg", "right wing", "tail", "throat"]


def pattern_image(width: int, height: int) -> np.ndarray:
    """uint8 [H, W, 3] whose pixel (x, y) is (x + 10, y + 10, 7): lets a test read where a crop came from."""
    yy, xx = np.mgrid[0:height, 0:width]
    return np.stack([xx + 10, yy + 10, np.full_like(xx, 7)], axis=-1).astype(np.uint8)


def write_cub(root, images: list[dict], locs_order: list[int]) -> None:
    """A CUB_200_2011 folder; images: {id, size, parts: {part_id: (x, y, visible)}, train}.

    Image files are PNG bytes under .jpg names (PIL reads by content), so pixels are exact.
    """
    folder = root / "CUB_200_2011"
    (folder / "parts").mkdir(parents=True)
    (folder / "images" / "001.Test_bird").mkdir(parents=True)
    lines = {"images.txt": [], "image_class_labels.txt": [], "train_test_split.txt": [], "bounding_boxes.txt": []}
    for image in images:
        relative = f"001.Test_bird/Test_Bird_{image['id']:04d}.jpg"
        width, height = image["size"]
        Image.fromarray(pattern_image(width, height)).save(folder / "images" / relative, format="PNG")
        lines["images.txt"].append(f"{image['id']} {relative}")
        lines["image_class_labels.txt"].append(f"{image['id']} 1")
        lines["train_test_split.txt"].append(f"{image['id']} {int(image['train'])}")
        lines["bounding_boxes.txt"].append(f"{image['id']} 0.0 0.0 {width}.0 {height}.0")
    for name, content in lines.items():
        (folder / name).write_text("\n".join(content) + "\n")
    (folder / "classes.txt").write_text("1 001.Test_bird\n")
    (folder / "parts" / "parts.txt").write_text("".join(f"{i + 1} {n}\n" for i, n in enumerate(CUB_PART_NAMES)))
    by_id = {image["id"]: image for image in images}
    rows = []
    for image_id in locs_order:
        for part_id in range(1, 16):
            x, y, visible = by_id[image_id]["parts"].get(part_id, (0.0, 0.0, 0))
            rows.append(f"{image_id} {part_id} {x:.1f} {y:.1f} {visible}")
    (folder / "parts" / "part_locs.txt").write_text("\n".join(rows) + "\n")


CUB_IMAGES = [
    # Image 1: eye-leg 50 (half 12.5 -> 12), leg-wing 50.5 (half 12.625 -> 13), eye at x = 10.5 (PIL rounds
    # the edges -1.5 -> -2 and 22.5 -> 22), a non-target visible part (back) that must not count.
    {"id": 1, "size": (120, 90), "train": True,
     "parts": {9: (60.0, 45.0, 1), 11: (10.5, 5.0, 1), 12: (10.5, 55.0, 1), 14: (0.0, 0.0, 0), 1: (30.0, 30.0, 1)}},
    # Image 2 (first in part_locs.txt): eye-leg exactly 40 -> both removed (strict bound); the tail keeps
    # d = 79, measured to the eye that the filter removes; its box runs past the right border.
    {"id": 2, "size": (100, 100), "train": False,
     "parts": {11: (20.0, 20.0, 1), 12: (20.0, 60.0, 1), 14: (99.0, 20.0, 1)}},
    # Image 3: one visible target (d = 999999) and a visible non-target: nothing.
    {"id": 3, "size": (80, 80), "train": True, "parts": {11: (40.0, 40.0, 1), 1: (10.0, 10.0, 1)}},
    # Image 4: a visible eye at x = 0.0 is kept (the flag alone decides); an invisible wing at (0, 0) is not.
    {"id": 4, "size": (120, 120), "train": False,
     "parts": {11: (0.0, 50.0, 1), 14: (0.0, 100.0, 1), 9: (0.0, 0.0, 0)}},
]
LABEL = {11: 0, 12: 1, 9: 2, 14: 3}       # paper keypoint order: right eye, right leg, left wing, tail

# (image id, part id, float box handed to PIL), in database order.
CUB_OFFICIAL = [
    (2, 14, (79.0, 0.0, 119.0, 40.0)),
    (1, 9, (47.0, 32.0, 73.0, 58.0)),
    (1, 11, (-1.5, -7.0, 22.5, 17.0)),
    (1, 12, (-1.5, 43.0, 22.5, 67.0)),
    (4, 11, (-12.0, 38.0, 12.0, 62.0)),
    (4, 14, (-12.0, 88.0, 12.0, 112.0)),
]
CUB_PAPER = [   # side round(d), left round(x - side/2): 50.5 -> 50, -14.5 -> -14, 59.5 -> 60, -19.5 -> -20
    (2, 11, (0, 0, 40, 40)), (2, 12, (0, 40, 40, 80)), (2, 14, (60, -20, 139, 59)),
    (1, 9, (35, 20, 85, 70)), (1, 11, (-14, -20, 36, 30)), (1, 12, (-14, 30, 36, 80)),
    (4, 11, (-25, 25, 25, 75)), (4, 14, (-25, 75, 25, 125)),
]


@pytest.fixture(scope="module")
def cub_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("hand_cub")
    write_cub(root, CUB_IMAGES, locs_order=[2, 1, 3, 4])
    return root


def table(db) -> list[tuple]:
    return [(item.image_id, item.part_id, tuple(item.box)) for item in db.items]


def test_cub_official_code_boxes_match_the_hand_table(cub_root):
    db = build_part_database("cub", cub_root, crop="official-code")
    assert table(db) == CUB_OFFICIAL
    assert [item.label for item in db.items] == [LABEL[p] for _, p, _ in CUB_OFFICIAL]
    assert db.class_names == ["right eye", "right leg", "left wing", "tail"]
    assert db.counts() == {"right eye": 2, "right leg": 1, "left wing": 1, "tail": 2}
    tail = db.items[0]
    assert tail.distance == pytest.approx(79.0)                  # measured to the removed eye
    assert db.items[1].distance == pytest.approx(50.5)
    assert [pixel_box(item.box) for item in db.items[2:4]] == [(-2, -7, 22, 17), (-2, 43, 22, 67)]


def test_cub_paper_boxes_match_the_hand_table(cub_root):
    db = build_part_database("cub", cub_root, crop="paper")
    assert table(db) == CUB_PAPER
    assert db.options["dist_filter"] == "none"


def test_cub_split_filter(cub_root):
    train = build_part_database("cub", cub_root, split="train")
    test = build_part_database("cub", cub_root, split="test")
    assert {i.image_id for i in train.items} == {1} and {i.image_id for i in test.items} == {2, 4}
    assert train.split == "train" and build_part_database("cub", cub_root).split == "all"


def test_crop_pixels_follow_pil_rounding_and_zero_padding(cub_root):
    db = build_part_database("cub", cub_root, crop="official-code")
    eye = db.crop(2)                                            # box (-1.5, -7, 22.5, 17) -> pixels (-2, -7, 22, 17)
    pixels = np.asarray(eye)
    assert pixels.shape == (24, 24, 3)
    assert (pixels[:7] == 0).all() and (pixels[:, :2] == 0).all()          # outside the image: black
    np.testing.assert_array_equal(pixels[7:, 2:], pattern_image(120, 90)[0:17, 0:22])
    tail = np.asarray(db.crop(0))                               # (79, 0, 119, 40) in a 100 px wide image
    np.testing.assert_array_equal(tail[:, :21], pattern_image(100, 100)[0:40, 79:100])
    assert (tail[:, 21:] == 0).all()


def test_geometry_primitives():
    np.testing.assert_allclose(nearest_distances([[0, 0], [30, 40], [100, 0]]), [50, 50, math.hypot(70, 40)])
    assert nearest_distances([[5, 5]])[0] == 999999
    np.testing.assert_allclose(nearest_distances([[5, 5], [5, 5], [8, 9]]), [5, 5, 5])   # zero distance ignored
    assert [keep_distance(d, "official") for d in (40.0, 40.000001, 1999.9999, 2000.0, 999999.0)] == \
        [False, True, True, False, False]
    assert keep_distance(12.0, "none") and not keep_distance(999999.0, "none")
    assert crop_box(0, 0, 50, "official-code") == (-12, -12, 12, 12)      # 12.5 -> 12
    assert crop_box(0, 0, 54, "official-code") == (-14, -14, 14, 14)      # 13.5 -> 14
    assert crop_box(0, 0, 41, "official-code") == (-10, -10, 10, 10)      # 10.25 -> 10
    with pytest.raises(ValueError, match="crop must be one of"):
        crop_box(0, 0, 50, "d/3")


# --- COCO ------------------------------------------------------------------------------------------------------
KEYPOINT_NAMES = ["nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder",
                  "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip",
                  "left_knee", "right_knee", "left_ankle", "right_ankle"]


def person(ann_id, image_id, **points):
    keypoints = [0] * 51
    for name, (x, y, v) in points.items():
        k = KEYPOINT_NAMES.index(name)
        keypoints[3 * k: 3 * k + 3] = [x, y, v]
    return {"id": ann_id, "image_id": image_id, "category_id": 1, "bbox": [0, 0, 10, 10], "iscrowd": 0,
            "area": 100.0, "keypoints": keypoints, "num_keypoints": sum(1 for v in points.values() if v[2] > 0)}


COCO_ANNOTATIONS = [
    person(900, 3, nose=(50, 50, 2), right_wrist=(50, 110, 2)),                  # image 3 comes first
    person(10, 7, nose=(100, 100, 2), right_wrist=(100, 160, 2)),                # A
    person(11, 7, nose=(100, 130, 2), left_ankle=(100, 210, 2)),                 # B: ids 10, 11 consecutive
    person(12, 7, nose=(100, 215, 2), right_wrist=(300, 300, 1)),                # D: one v=2 target -> skipped
    person(500, 7, nose=(300, 100, 2), right_wrist=(300, 148, 2)),               # C: id far away
]
IMAGE3 = [(3, 1, 900, (35, 35, 65, 65)), (3, 11, 900, (35, 95, 65, 125))]
COCO_TABLES = {
    # Each person alone: A 60 -> 15, B 80 -> 20, C 48 -> 12.
    "person": IMAGE3 + [(7, 1, 10, (85, 85, 115, 115)), (7, 11, 10, (85, 145, 115, 175)),
                        (7, 1, 11, (80, 110, 120, 150)), (7, 16, 11, (80, 190, 120, 230)),
                        (7, 1, 500, (288, 88, 312, 112)), (7, 11, 500, (288, 136, 312, 160))],
    # Pooled in 2-D: A/B noses 30 apart -> removed; B's ankle 50 from A's wrist -> 12.5 -> 12 (D's nose,
    # 5 px away, never enters the pool).
    "image": IMAGE3 + [(7, 16, 11, (88, 198, 112, 222)),
                       (7, 1, 500, (288, 88, 312, 112)), (7, 11, 500, (288, 136, 312, 160))],
    # The official code: ids 10 and 11 differ by 1, so B's ankle is sqrt(50^2 + 1) = 50.01 from A's wrist
    # -> 12.5025 -> 13; C's id is far away, so C stays on its own.
    "code_exact": IMAGE3 + [(7, 16, 11, (87, 197, 113, 223)),
                            (7, 1, 500, (288, 88, 312, 112)), (7, 11, 500, (288, 136, 312, 160))],
}


@pytest.fixture(scope="module")
def coco_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("hand_coco")
    (root / "annotations").mkdir()
    data = {"info": {}, "licenses": [],
            "images": [{"id": 7, "width": 400, "height": 300, "file_name": "000000000007.jpg"},
                       {"id": 3, "width": 200, "height": 200, "file_name": "000000000003.jpg"}],
            "annotations": COCO_ANNOTATIONS,
            "categories": [{"id": 1, "name": "person", "supercategory": "person", "keypoints": KEYPOINT_NAMES,
                            "skeleton": []}]}
    (root / "annotations" / "person_keypoints_train2017.json").write_text(json.dumps(data))
    return root


@pytest.mark.parametrize("scope", ["person", "image", "code_exact"])
def test_coco_boxes_match_the_hand_table_per_distance_scope(coco_root, scope):
    db = build_part_database("coco", coco_root, crop="official-code", coco_dist_scope=scope)
    got = [(i.image_id, i.part_id, i.ann_id, tuple(i.box)) for i in db.items]
    assert got == COCO_TABLES[scope]
    assert db.class_names == ["nose", "right_wrist", "left_ankle"] and db.split == "all"
    assert db.options["image_split"] == "train2017"
    assert db.options["coco_dist_scope"] == scope


def test_coco_code_exact_distance_mixes_the_annotation_id(coco_root):
    db = build_part_database("coco", coco_root, coco_dist_scope="code_exact")
    ankle = next(i for i in db.items if i.part_id == 16)
    assert ankle.distance == pytest.approx(math.sqrt(50 ** 2 + 1))


def test_keypoints_all_uses_every_keypoint_as_class(coco_root, cub_root):
    db = build_part_database("coco", coco_root, keypoints="all", coco_dist_scope="person")
    assert len(db.class_names) == 17 and db.options["keypoint_ids"] == list(range(1, 18))
    cub = build_part_database("cub", cub_root, keypoints="all")
    assert len(cub.class_names) == 15
    # With every part selected, the back of image 1 (30, 30) now is a neighbour: wing d = 33.5 -> removed.
    assert (1, 9) not in {(i.image_id, i.part_id) for i in cub.items}
    with pytest.raises(ValueError, match="distinct values in 1..15"):
        build_part_database("cub", cub_root, keypoints=[11, 16])


# --- transforms, shift, audit file -------------------------------------------------------------------------------
def test_crop_transform_equals_the_official_torchvision_pipeline(cub_root):
    from torchvision import transforms
    db = build_part_database("cub", cub_root)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    tensor, label = PartCropDataset(db, SquareResize(64, mean, std))[1]
    # The official retrieval transform: Resize(size, interpolation=3 [bicubic]) on the square PIL crop.
    official = transforms.Compose([transforms.Resize(64, interpolation=transforms.InterpolationMode.BICUBIC),
                                   transforms.ToTensor(), transforms.Normalize(mean, std)])
    assert torch.equal(tensor, official(db.crop(1)))
    assert label == LABEL[9] and tensor.shape == (3, 64, 64)


def test_crop_shift_moves_each_box_by_the_fraction_of_its_side(cub_root):
    plain = build_part_database("cub", cub_root)
    shifted = build_part_database("cub", cub_root, crop_shift=0.5, crop_shift_seed=3)
    moves = []
    for a, b in zip(plain.items, shifted.items):
        side = a.box[2] - a.box[0]
        dx, dy = b.box[0] - a.box[0], b.box[1] - a.box[1]
        assert math.hypot(dx, dy) == pytest.approx(0.5 * side)
        assert b.box[2] - b.box[0] == pytest.approx(side)
        moves.append((dx, dy))
    assert len({(round(dx), round(dy)) for dx, dy in moves}) == len(moves)   # directions differ per crop
    assert shifted.options["crop_shift"] == 0.5


def test_write_boxes_round_trip(cub_root, tmp_path):
    db = build_part_database("cub", cub_root)
    data = parts.load_boxes(db.write_boxes(tmp_path / "boxes.json"))
    assert data["counts"] == db.counts() and data["options"]["crop"] == "official-code"
    assert [tuple(row["box"]) for row in data["items"]] == [box for _, _, box in CUB_OFFICIAL]
    assert data["items"][2]["pixel_box"] == [-2, -7, 22, 17]


def test_bad_options_name_themselves(cub_root):
    with pytest.raises(ValueError, match="dataset must be one of"):
        build_part_database("pascal", cub_root)
    with pytest.raises(ValueError, match="coco_dist_scope must be one of"):
        build_part_database("cub", cub_root, coco_dist_scope="planet")
    with pytest.raises(ValueError, match="CUB split"):
        build_part_database("cub", cub_root, split="val")
    missing = cub_root / "nothing"
    with pytest.raises(ValueError, match="images.txt"):
        build_part_database("cub", missing)


def test_identity_changes_with_the_protocol(cub_root):
    a = build_part_database("cub", cub_root).identity()
    b = build_part_database("cub", cub_root, crop="paper").identity()
    assert a["items_sha256"] != b["items_sha256"] and a["num_items"] == 6
    assert a == build_part_database("cub", cub_root).identity()
