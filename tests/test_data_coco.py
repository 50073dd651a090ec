"""COCO 2017: generated files are what pycocotools and the spec expect; the readers keep JSON order.

Independent references: pycocotools (loading, RLE decoding, loadRes) and docs/datasets.md#coco-2017
(category ids, keypoint names, skeleton, visibility rules).
"""
from __future__ import annotations

import contextlib
import io
import json
import re

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from probes.data.coco import COCOInstances, COCOKeypoints, check
from probes.data.coco_synth import CATEGORY_COLOURS, PART_COLOURS
from probes.data.errors import DatasetFormatError
from probes.data.synth import synth

SPEC_KEYPOINTS = ["nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder",
                  "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip",
                  "left_knee", "right_knee", "left_ankle", "right_ankle"]
SPEC_SKELETON = [[16, 14], [14, 12], [17, 15], [15, 13], [12, 13], [6, 12], [7, 13], [6, 7], [6, 8], [7, 9],
                 [8, 10], [9, 11], [2, 3], [1, 2], [1, 3], [2, 4], [3, 5], [4, 6], [5, 7]]
MISSING_CATEGORY_IDS = {12, 26, 29, 30, 45, 66, 68, 69, 71, 83}
PAPER = [0, 10, 15]   # nose, right_wrist, left_ankle (0-based)
SPLITS = ("train2017", "val2017")


@pytest.fixture(scope="module")
def coco_root(tmp_path_factory):
    return synth("coco", tmp_path_factory.mktemp("coco"), seed=0)


def raw(root, kind, split):
    return json.loads((root / "annotations" / f"{kind}_{split}.json").read_text())


def pycoco(path) -> COCO:
    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(str(path))


@pytest.mark.parametrize("split", SPLITS)
def test_pycocotools_loads_generated_files(coco_root, split):
    instances = pycoco(coco_root / "annotations" / f"instances_{split}.json")
    keypoints = pycoco(coco_root / "annotations" / f"person_keypoints_{split}.json")
    ids = set(instances.getCatIds())
    assert ids == set(range(1, 91)) - MISSING_CATEGORY_IDS and len(ids) == 80
    assert instances.loadCats(90)[0]["name"] == "toothbrush" and instances.loadCats(13)[0]["name"] == "stop sign"
    person = keypoints.loadCats(1)[0]
    assert person["keypoints"] == SPEC_KEYPOINTS and person["skeleton"] == SPEC_SKELETON
    assert keypoints.getCatIds() == [1]
    data = raw(coco_root, "instances", split)
    assert data["info"]["year"] == 2017 and [lic["id"] for lic in data["licenses"]] == list(range(1, 9))
    # loadRes deep-copies 'info' in pycocotools 2.0.9/2.0.10: it must be present.
    with contextlib.redirect_stdout(io.StringIO()):
        result = keypoints.loadRes([{"image_id": keypoints.getImgIds()[0], "category_id": 1,
                                     "keypoints": [0.0] * 51, "score": 1.0}])
    assert len(result.getAnnIds()) == 1
    # The instance file holds every person of the keypoint file under the same annotation id.
    assert set(keypoints.getAnnIds()) <= set(instances.getAnnIds(catIds=[1]))
    assert len(instances.getAnnIds()) == len({a["id"] for a in data["annotations"]})   # unique ids


@pytest.mark.parametrize("split", SPLITS)
def test_image_records_and_file_names(coco_root, split):
    data = raw(coco_root, "instances", split)
    assert data["images"] == raw(coco_root, "person_keypoints", split)["images"]
    for image in data["images"]:
        assert re.fullmatch(r"\d{12}\.jpg", image["file_name"]) and image["file_name"] == f"{image['id']:012d}.jpg"
        assert image["coco_url"].endswith(f"/{split}/{image['file_name']}")
        with Image.open(coco_root / split / image["file_name"]) as opened:
            assert opened.size == (image["width"], image["height"]) and opened.format == "JPEG"
            assert 240 <= min(opened.size) and max(opened.size) <= 420


@pytest.mark.parametrize("split", SPLITS)
def test_keypoint_annotations_follow_the_format_rules(coco_root, split):
    data = raw(coco_root, "person_keypoints", split)
    sizes = {image["id"]: (image["width"], image["height"]) for image in data["images"]}
    few_paper, zero_kp_persons, crowds = 0, 0, 0
    for ann in data["annotations"]:
        kp = np.array(ann["keypoints"]).reshape(17, 3)
        assert set(kp[:, 2]) <= {0, 1, 2}
        assert (kp[kp[:, 2] == 0, :2] == 0).all()                       # x = y = 0 when v = 0
        assert ann["num_keypoints"] == int((kp[:, 2] > 0).sum())
        labelled = kp[kp[:, 2] > 0, :2]
        assert ((labelled >= 0) & (labelled < sizes[ann["image_id"]])).all()
        crowds += ann["iscrowd"]
        zero_kp_persons += ann["num_keypoints"] == 0 and not ann["iscrowd"]
        few_paper += ann["num_keypoints"] > 0 and int((kp[PAPER, 2] == 2).sum()) < 2
    assert crowds >= 1 and zero_kp_persons >= 1 and few_paper >= 1
    assert {v for a in data["annotations"] for v in a["keypoints"][2::3]} == {0, 1, 2}


@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")   # pycocotools vs numpy 2
@pytest.mark.parametrize("split", SPLITS)
def test_crowd_rle_decodes_to_its_area_and_box(coco_root, split):
    data = raw(coco_root, "instances", split)
    crowds = [a for a in data["annotations"] if a["iscrowd"] == 1]
    assert crowds
    for ann in crowds:
        segmentation = ann["segmentation"]
        assert isinstance(segmentation["counts"], list)                  # uncompressed RLE
        height, width = segmentation["size"]
        rle = mask_utils.frPyObjects(segmentation, height, width)
        decoded = mask_utils.decode(rle)
        assert decoded.shape == (height, width)
        assert decoded.sum() == ann["area"] == mask_utils.area(rle)
        assert mask_utils.toBbox(rle).tolist() == ann["bbox"]
        image = next(i for i in data["images"] if i["id"] == ann["image_id"])
        assert (height, width) == (image["height"], image["width"])


def test_readers_keep_json_order_and_shapes(coco_root):
    kp = COCOKeypoints(coco_root, split="train2017")
    data = raw(coco_root, "person_keypoints", "train2017")
    assert kp.keypoint_names == SPEC_KEYPOINTS
    assert [a.id for a in kp.annotations] == [a["id"] for a in data["annotations"]]
    assert list(kp.images) == [i["id"] for i in data["images"]]
    first = kp.annotations[0]
    source = data["annotations"][0]
    assert first.keypoints.shape == (17, 3) and first.keypoints.dtype == np.float64
    assert first.keypoints.reshape(-1).tolist() == source["keypoints"]
    assert (first.image_id, first.bbox, first.iscrowd, first.num_keypoints) == (
        source["image_id"], tuple(source["bbox"]), source["iscrowd"], source["num_keypoints"])
    image = kp.images[first.image_id]
    assert image.path == coco_root / "train2017" / image.file_name and image.path.is_file()

    inst = COCOInstances(coco_root, split="val2017")
    data = raw(coco_root, "instances", "val2017")
    assert list(inst.categories) == [c["id"] for c in data["categories"]] and inst.categories[1] == "person"
    assert [(a.id, a.category_id, a.area) for a in inst.annotations] == [
        (a["id"], a["category_id"], a["area"]) for a in data["annotations"]]
    assert inst.coco.getAnnIds() and len(inst.coco.getImgIds()) == len(inst.images)


@pytest.mark.parametrize("split", SPLITS)
def test_planted_disks_at_visible_keypoints_only(coco_root, split):
    data = raw(coco_root, "person_keypoints", split)
    names = {i["id"]: i["file_name"] for i in data["images"]}
    for image_id, file_name in names.items():
        pixels = np.asarray(Image.open(coco_root / split / file_name).convert("RGB")).astype(int)
        points, kinds = [], []
        for ann in data["annotations"]:
            if ann["image_id"] == image_id:
                kp = np.array(ann["keypoints"]).reshape(17, 3)
                for k in np.flatnonzero(kp[:, 2] > 0):
                    points.append(kp[k, :2]), kinds.append((k, kp[k, 2]))
        points = np.array(points, dtype=float)
        distances = np.sqrt(((points[:, None] - points[None]) ** 2).sum(-1))
        np.fill_diagonal(distances, np.inf)
        assert distances.min() >= 48                       # all labelled keypoints of one image
        for (x, y), (k, v) in zip(points.astype(int), kinds):
            gap = np.abs(pixels[y, x] - np.array(PART_COLOURS[k])).max()
            if v == 2:
                assert gap <= 40, (file_name, k)
            else:                                          # occluded: annotated, not drawn
                assert gap > 60 and 60 <= pixels[y, x].min() and pixels[y, x].max() <= 196, (file_name, k)


def test_object_boxes_carry_their_category_colour(coco_root):
    data = raw(coco_root, "instances", "train2017")
    names = {i["id"]: i["file_name"] for i in data["images"]}
    objects = [a for a in data["annotations"] if a["category_id"] != 1]
    assert len({a["category_id"] for a in objects}) >= 4
    for ann in objects:
        x, y, w, h = map(int, ann["bbox"])
        pixels = np.asarray(Image.open(coco_root / "train2017" / names[ann["image_id"]]).convert("RGB")).astype(float)
        inner = pixels[y + 4:y + h - 4, x + 4:x + w - 4].reshape(-1, 3)
        expected = np.array(CATEGORY_COLOURS[ann["category_id"]]) * (1 + 0.65) / 2   # half the stripes darker
        assert np.abs(inner.mean(0) - expected).max() < 25, ann["id"]
        assert inner.std(0).max() > 10                   # textured, not flat


def test_check_reports_counts(coco_root):
    report = check(coco_root)
    assert report["ok"], report["problems"]
    assert report["counts"]["train2017 images"] == 20 and report["counts"]["val2017 images"] == 10
    assert report["counts"]["train2017 crowd annotations"] >= 1
    assert report["class_histogram"]["person"] > 0


def test_generator_is_deterministic(tmp_path, coco_root):
    again = synth("coco", tmp_path / "a", seed=0)
    assert raw(again, "person_keypoints", "val2017") == raw(coco_root, "person_keypoints", "val2017")
    other = synth("coco", tmp_path / "b", seed=3, train_images=3, val_images=2)
    assert len(raw(other, "instances", "train2017")["images"]) == 3


# --- bad input ------------------------------------------------------------------------------------------
def _write_broken(tmp_path, coco_root, edit, kind="person_keypoints", split="val2017"):
    data = raw(coco_root, kind, split)
    edit(data)
    (tmp_path / "annotations").mkdir()
    path = tmp_path / "annotations" / f"{kind}_{split}.json"
    path.write_text(json.dumps(data, indent=1))
    return path


def _error(reader, root, split="val2017") -> str:
    with pytest.raises(DatasetFormatError) as caught:
        reader(root, split=split)
    return str(caught.value)


def test_error_missing_annotation_file(tmp_path):
    message = _error(COCOKeypoints, tmp_path)
    assert "annotations/person_keypoints_val2017.json: file not found" in message


def test_error_malformed_json_names_the_line(tmp_path, coco_root):
    path = _write_broken(tmp_path, coco_root, lambda d: None)
    text = path.read_text().splitlines()
    text[5] = text[5] + " oops"
    path.write_text("\n".join(text))
    message = _error(COCOKeypoints, tmp_path)
    assert "person_keypoints_val2017.json, line 6: invalid JSON" in message


def test_error_missing_images_list(tmp_path, coco_root):
    _write_broken(tmp_path, coco_root, lambda d: d.pop("images"))
    assert "field 'images': no 'images' list" in _error(COCOKeypoints, tmp_path)


def test_error_keypoints_of_wrong_length(tmp_path, coco_root):
    def edit(data):
        data["annotations"][2]["keypoints"] = data["annotations"][2]["keypoints"][:-1]
    _write_broken(tmp_path, coco_root, edit)
    ann_id = raw(coco_root, "person_keypoints", "val2017")["annotations"][2]["id"]
    message = _error(COCOKeypoints, tmp_path)
    assert f"field 'annotations[2] (id {ann_id}).keypoints'" in message and "expected 51 numbers x, y, v" in message


def test_error_visibility_out_of_range(tmp_path, coco_root):
    def edit(data):
        data["annotations"][3]["keypoints"][2] = 3
    _write_broken(tmp_path, coco_root, edit)
    assert "v = 3 for nose (expected visibility v in {0, 1, 2})" in _error(COCOKeypoints, tmp_path)


def test_error_annotation_for_unknown_image(tmp_path, coco_root):
    def edit(data):
        data["annotations"][0]["image_id"] = 123456789
    _write_broken(tmp_path, coco_root, edit, kind="instances")
    message = _error(COCOInstances, tmp_path)
    assert "instances_val2017.json" in message and "image id 123456789 is not in 'images'" in message


def test_error_wrong_keypoint_names(tmp_path, coco_root):
    def edit(data):
        data["categories"][0]["keypoints"] = data["categories"][0]["keypoints"][:16]
    _write_broken(tmp_path, coco_root, edit)
    assert "categories[person].keypoints" in _error(COCOKeypoints, tmp_path)


def test_check_flags_inconsistent_num_keypoints(tmp_path, coco_root):
    def edit(data):
        ann = next(a for a in data["annotations"] if a["num_keypoints"] > 0)
        ann["num_keypoints"] += 1
    _write_broken(tmp_path, coco_root, edit, split="train2017")
    report = check(tmp_path)
    assert not report["ok"] and any("num_keypoints" in p for p in report["problems"])
