"""ADE20K readers (SceneParsing, full release) against the real samples, and their generators.

Expected values are typed from docs/datasets.md#ade20k-sceneparsing, docs/datasets.md#ade20k-full-release
and samples/README.md, never computed by the code under test. Each large sample PNG is decoded once per
module (fixtures below).
"""
from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from probes.data import ade20k
from probes.data.ade20k import (
    ADE20KFull,
    ADE20KSceneParsing,
    challenge_size,
    decode_class_instance,
    full_to_challenge,
    read_annotation,
    read_challenge_label,
    read_instance_mask,
    read_map_from_ade,
    read_object_info,
    read_objectnames,
)
from probes.data.ade20k_synth import synth_ade20k, synth_ade20k_full
from probes.data.errors import DatasetFormatError

STREET = "ade20k_full/ADE20K_2021_17_01/images/ADE/training/urban/street"
SCENEPARSING = "ade20k_full/sceneparsing"

# docs/datasets.md#ade20k-real-samples: (classes, instances) per level, and the class lists of the README.
SPEC_TABLE = {
    "ADE_train_00016869": {
        "size": (2048, 1536), "objects per level": (51, 14, 5),
        "levels": [(13, 51), (9, 14), (4, 5)],
        "classes": [{64, 312, 401, 461, 1563, 1831, 2131, 2377, 2380, 2420, 2616, 2836, 2855},
                    {101, 320, 774, 1213, 1279, 2346, 2700, 3035, 3050},
                    {1180, 1564, 2122, 3050}],
    },
    "ADE_train_00016900": {
        "size": (2200, 1650), "objects per level": (34, 3, 0),
        "levels": [(16, 34), (3, 3)],
        "classes": [None, {1213, 1439, 3057}],
    },
    "ADE_train_00016964": {
        "size": (2200, 1467), "objects per level": (24, 8, 0),
        "levels": [(14, 24), (6, 8)],
        "classes": [None, {774, 783, 1439, 1541, 3050, 3057}],
    },
}


@pytest.fixture(scope="module")
def release(shared) -> ADE20KFull:
    return ADE20KFull(shared / "samples" / "ade20k_full")


@pytest.fixture(scope="module")
def decoded(release):
    """stem -> (image, annotation, levels, raw RGB arrays per level); every PNG decoded once."""
    out = {}
    for image in release.images:
        raw = [np.asarray(Image.open(path).convert("RGB")) for path in [image.seg_path, *image.part_paths()]]
        out[image.stem] = (image, release.annotation(image), release.levels(image), raw)
    return out


def round_half_up_levels(count: int) -> list[int]:
    return [int(np.floor(k * 255 / count + 0.5)) for k in range(1, count + 1)]


# ---------------------------------------------------------------------------------------------------------
# Full release: real samples
# ---------------------------------------------------------------------------------------------------------

def test_release_finds_the_three_sample_images(release):
    assert [(image.stem, image.split) for image in release.images] == [
        ("ADE_train_00016869", "training"), ("ADE_train_00016900", "training"), ("ADE_train_00016964", "training")]
    assert [len(image.part_paths()) for image in release.images] == [2, 1, 1]   # stops at the first missing level


def test_masks_decode_to_the_spec_table(decoded):
    for stem, expected in SPEC_TABLE.items():
        image, annotation, levels, _ = decoded[stem]
        assert (annotation.width, annotation.height) == expected["size"]
        assert levels.classes[0].shape == expected["size"][::-1]
        assert len(levels.classes) == len(expected["levels"])
        for level, (n_classes, n_instances) in enumerate(expected["levels"]):
            classes = set(np.unique(levels.classes[level]).tolist()) - {0}
            assert len(classes) == n_classes, (stem, level)
            assert levels.instances[level].max() == n_instances, (stem, level)
            if expected["classes"][level] is not None:
                assert classes == expected["classes"][level], (stem, level)


def test_instance_channel_is_round_k_255_over_n_of_the_json_count(decoded):
    for stem, expected in SPEC_TABLE.items():
        _, _, _, raw = decoded[stem]
        for level, rgb in enumerate(raw):
            count = expected["objects per level"][level]
            blue = set(np.unique(rgb[..., 2]).tolist()) - {0}
            assert sorted(blue) == round_half_up_levels(count), (stem, level)
            assert (rgb[..., 0] % 10 == 0).all()


def test_json_objects_levels_ids_and_mixed_field_shapes(decoded):
    for stem, expected in SPEC_TABLE.items():
        annotation = decoded[stem][1]
        assert tuple(len(annotation.level(level)) for level in range(3)) == expected["objects per level"]
    ids = {obj.id for obj in decoded["ADE_train_00016900"][1].objects}
    assert ids == set(range(42)) - {1, 3, 4, 18, 23}

    objects = decoded["ADE_train_00016869"][1].by_id()
    assert (objects[0].name_ndx, objects[0].raw_name, objects[0].occluded) == (2836, "traffic light", False)
    assert objects[54].hasparts == (55,) and objects[54].ispartof == 4          # "hasparts": 55 (bare int)
    assert objects[58].hasparts == (59, 60, 61) and objects[58].part_level == 1
    assert objects[55].ispartof == 54 and objects[55].part_level == 2
    assert objects[1].ispartof == 68 and objects[68].hasparts == (1,)
    assert objects[5].occluded is None                                        # "occluded": []
    assert objects[53].attributes == ("walking",)                             # "attributes": "walking"
    assert objects[0].attributes == ()
    assert objects[0].instance_mask == "ADE_train_00016869/instance_000_ADE_train_00016869.png"
    parts = {(obj.name_ndx, obj.raw_name) for obj in decoded["ADE_train_00016869"][1].objects if obj.part_level > 0}
    assert parts == {(101, "balcony"), (320, "bumper"), (774, "door"), (1180, "handle"), (1213, "headlight"),
                     (1279, "housing"), (1564, "mirror"), (2122, "rim"), (2346, "shop window"), (2700, "taillight"),
                     (3035, "wheel"), (3050, "window")}


# README table of ADE_train_00016869: id -> (name_ndx, level, has 128)
INSTANCES_16869 = {0: (2836, 0, True), 4: (401, 0, True), 6: (64, 0, False), 54: (3035, 1, False),
                   55: (2122, 2, False), 68: (2836, 0, True)}


def test_instance_masks_are_amodal_and_point_at_their_level_region(decoded):
    """The 255 pixels of an instance PNG are its region in _seg/_parts_L, except that an object's _seg region
    also takes in its own parts where they stick out of it (the PNG marks those 128): true of the car (id 4)
    and the traffic light (id 68) whose housing sticks out. The source notes said
    "coincides exactly" (docs/datasets.md#ade20k-instance-masks-and-level-masks)."""
    image, annotation, levels, _ = decoded["ADE_train_00016869"]
    objects = annotation.by_id()
    for obj_id, (name_ndx, level, has_occluded) in INSTANCES_16869.items():
        obj = objects[obj_id]
        assert (obj.name_ndx, obj.part_level) == (name_ndx, level)
        mask = read_instance_mask(image.instance_path(obj))
        assert set(np.unique(mask).tolist()) <= {0, 128, 255}
        assert (128 in mask) == has_occluded
        visible = mask == 255
        instance = np.unique(levels.instances[level][visible])
        assert len(instance) == 1 and instance[0] > 0
        region = (levels.instances[level] == instance[0]) & (levels.classes[level] == name_ndx)
        parts_sticking_out = np.zeros_like(visible)
        for part_id in obj.hasparts:
            parts_sticking_out |= read_instance_mask(image.instance_path(objects[part_id])) == 255
        parts_sticking_out &= mask == 128
        assert np.array_equal(region, visible | parts_sticking_out), obj_id
        assert parts_sticking_out.sum() == {4: 153, 68: 174}.get(obj_id, 0)


def test_every_instance_png_of_one_image_is_mode_l_with_three_values(decoded):
    image, annotation, _, _ = decoded["ADE_train_00016964"]
    assert len(annotation.objects) == 32
    for obj in annotation.objects:
        with Image.open(image.instance_path(obj)) as opened:
            assert opened.mode == "L" and opened.size == (2200, 1467)
            assert set(np.unique(np.asarray(opened)).tolist()) <= {0, 128, 255}


# ---------------------------------------------------------------------------------------------------------
# SceneParsing: real samples
# ---------------------------------------------------------------------------------------------------------

def test_object_info_and_challenge_label(shared):
    names = read_object_info(shared / "samples" / SCENEPARSING / "objectInfo150.txt")
    assert len(names) == 150
    assert (names[0], names[1], names[149]) == ("wall", "building, edifice", "flag")
    labels = read_challenge_label(shared / "samples" / SCENEPARSING / "sampleData/annotations/ADE_val_00000001.png")
    assert labels.shape == (512, 683)
    assert set(np.unique(labels).tolist()) == {0, 1, 2, 3, 5, 7, 10, 18}


def test_map_from_ade_has_two_sources_for_three_classes(shared):
    mapping = read_map_from_ade(shared / "samples" / SCENEPARSING / "convertFromADE/mapFromADE.txt")
    assert len(mapping) == 153
    sources = {}
    for full, challenge in mapping.items():
        sources.setdefault(challenge, set()).add(full)
    assert sorted(c for c, s in sources.items() if len(s) == 2) == [15, 36, 89]
    assert (mapping[2978], mapping[312], mapping[2420], mapping[2855]) == (1, 2, 3, 5)
    assert sources[15] == {774, 783}


def test_raw_full_release_mask_converts_to_the_challenge_png_pixel_for_pixel(shared):
    folder = shared / "samples" / SCENEPARSING / "convertFromADE"
    classes, instances = decode_class_instance(folder / "ADE_train_00000970_raw.png")
    assert set(np.unique(classes).tolist()) - {0} == {312, 838, 1125, 1910, 2128, 2855}
    assert instances.max() == 17
    assert challenge_size(1024, 768) == (683, 512) and challenge_size(600, 400) == (600, 400)
    converted = full_to_challenge(classes, read_map_from_ade(folder / "mapFromADE.txt"))
    expected = np.asarray(Image.open(folder / "ADE_train_00000970_challenge.png"))
    assert converted.shape == expected.shape == (512, 683)
    assert set(np.unique(converted).tolist()) == {0, 2, 5, 10, 14, 18, 61}
    assert np.array_equal(converted, expected)


# ---------------------------------------------------------------------------------------------------------
# Generators
# ---------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def synthetic_release(tmp_path_factory) -> Path:
    return synth_ade20k_full(tmp_path_factory.mktemp("ade_full"), seed=3)


def test_generated_release_has_the_official_encodings(synthetic_release):
    release = ADE20KFull(synthetic_release)
    assert [(i.stem, i.split) for i in release.images] == [
        ("ADE_train_00000101", "training"), ("ADE_train_00000102", "training"), ("ADE_train_00000103", "training"),
        ("ADE_val_00000201", "validation")]
    street = release.images[0]
    assert street.folder == synthetic_release / "images/ADE/training/urban/street"
    assert [p.name for p in street.part_paths()] == ["ADE_train_00000101_parts_1.png", "ADE_train_00000101_parts_2.png"]
    raw = json.loads(street.json_path.read_text())["annotation"]
    assert raw["imsize"] == [96, 128, 3]
    shapes = {type(o["parts"]["hasparts"]).__name__ for o in raw["object"]}
    assert shapes == {"int", "list"}
    assert {type(o["attributes"]).__name__ for o in raw["object"]} == {"str", "list"}
    assert [] in [o["occluded"] for o in raw["object"]]
    annotation = read_annotation(street.json_path)
    assert 6 not in {o.id for o in annotation.objects}                       # ids are not contiguous
    for level, path in enumerate([street.seg_path, *street.part_paths()]):
        rgb = np.asarray(Image.open(path))
        assert rgb.shape == (96, 128, 3) and (rgb[..., 0] % 10 == 0).all()
        blue = set(np.unique(rgb[..., 2]).tolist()) - {0}
        assert sorted(blue) == round_half_up_levels(len(annotation.level(level)))
    car = annotation.by_id()[5]
    mask = read_instance_mask(street.instance_path(car))
    assert set(np.unique(mask).tolist()) == {0, 128, 255}                     # the person hides part of the car


def test_generated_sceneparsing_reads_back(tmp_path):
    root = synth_ade20k(tmp_path, seed=1, train_images=3, val_images=1)
    train = ADE20KSceneParsing(tmp_path, "training")
    assert train.root == root and len(train) == 3 and train.class_names[0] == "wall"
    assert len(ADE20KSceneParsing(root, "validation")) == 1
    labels = train.label(0)
    assert labels.dtype == np.uint8 and labels.shape == (64, 96) and labels.max() <= 150 and 0 in labels
    assert len(read_object_info(root / "objectInfo150.txt")) == 150


# ---------------------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------------------

def _save_rgb(path: Path, rgb) -> Path:
    Image.fromarray(np.asarray(rgb, np.uint8)).save(path)
    return path


def test_r_channel_not_a_multiple_of_ten_is_rejected(tmp_path):
    rgb = np.zeros((4, 5, 3), np.uint8)
    rgb[2, 3] = (15, 1, 255)
    with pytest.raises(DatasetFormatError, match=r"bad_seg\.png, field 'R channel': .*R = 15 .*multiple of 10"):
        decode_class_instance(_save_rgb(tmp_path / "bad_seg.png", rgb))


def test_class_index_beyond_the_vocabulary_is_rejected(tmp_path):
    rgb = np.zeros((4, 5, 3), np.uint8)
    rgb[0, 0] = (150, 0, 10)                               # (150 // 10) * 256 = 3840 > 3688 objectnames
    with pytest.raises(DatasetFormatError, match=r"class 3840.*0\.\.3688"):
        decode_class_instance(_save_rgb(tmp_path / "big_seg.png", rgb))
    gray = tmp_path / "gray_seg.png"
    Image.fromarray(np.zeros((4, 5), np.uint8)).save(gray)
    with pytest.raises(DatasetFormatError, match=r"gray_seg\.png.*mode L.*RGB"):
        decode_class_instance(gray)


def test_missing_seg_png_is_named(tmp_path):
    release = ADE20KFull(synth_ade20k_full(tmp_path, seed=0))
    image = release.images[1]
    image.seg_path.unlink()
    with pytest.raises(DatasetFormatError, match=r"ADE_train_00000102_seg\.png: file not found"):
        release.levels(image)


def test_malformed_json_fields_are_named(tmp_path):
    release = ADE20KFull(synth_ade20k_full(tmp_path, seed=0))
    path = release.images[0].json_path
    document = json.loads(path.read_text())
    document["annotation"]["object"][2]["parts"]["ispartof"] = "person"
    path.write_text(json.dumps(document))
    with pytest.raises(DatasetFormatError, match=r"ADE_train_00000101\.json.*annotation\.object\[2\]\.parts\.ispartof"):
        read_annotation(path)
    document["annotation"]["object"][2]["parts"]["ispartof"] = 1
    document["annotation"]["imsize"] = "96x128"
    path.write_text(json.dumps(document))
    with pytest.raises(DatasetFormatError, match=r"annotation\.imsize.*\[height, width"):
        read_annotation(path)
    path.write_text("{\"annotation\": ")
    with pytest.raises(DatasetFormatError, match=r"not valid JSON"):
        read_annotation(path)


def test_bad_instance_and_challenge_values_are_rejected(tmp_path):
    mask = np.zeros((3, 3), np.uint8)
    mask[1, 1] = 100
    Image.fromarray(mask).save(tmp_path / "instance_000_x.png")
    with pytest.raises(DatasetFormatError, match=r"instance_000_x\.png.*value 100.*128"):
        read_instance_mask(tmp_path / "instance_000_x.png")
    mask[1, 1] = 151
    Image.fromarray(mask).save(tmp_path / "ADE_val_1.png")
    with pytest.raises(DatasetFormatError, match=r"ADE_val_1\.png.*label 151|ADE_val_1\.png.*value 151"):
        read_challenge_label(tmp_path / "ADE_val_1.png")


def test_index_pickle_is_read_without_running_code(tmp_path):
    names = np.array(["-", "wall", "sky"], dtype=object)
    (tmp_path / "index_ade20k.pkl").write_bytes(pickle.dumps({"objectnames": names, "filename": ["a.jpg"]}))
    assert read_objectnames(tmp_path / "index_ade20k.pkl") == ["-", "wall", "sky"]

    class Exploit:
        def __reduce__(self):
            return (print, ("this must never run",))
    (tmp_path / "evil.pkl").write_bytes(pickle.dumps({"objectnames": Exploit()}))
    with pytest.raises(DatasetFormatError, match=r"evil\.pkl.*builtins\.print is not allowed"):
        read_objectnames(tmp_path / "evil.pkl")


def test_check_reports_counts_and_problems(tmp_path, capsys):
    root = synth_ade20k_full(tmp_path, seed=0).parent
    report = ade20k.check(root, "ade20k-full")
    assert report["ok"] and report["counts"]["training images"] == 3 and report["counts"]["validation images"] == 1
    assert report["counts"]["level 2 objects"] == 2
    next(root.rglob("instance_004_ADE_train_00000101.png")).unlink()
    report = ade20k.check(root, "ade20k-full")
    assert not report["ok"] and "instance_004_ADE_train_00000101.png: file not found" in report["problems"][0]


def test_prepare_unpacks_the_sceneparsing_zip_and_check_counts(tmp_path, capsys):
    import shutil

    from probes.data.__main__ import main as data_cli

    made = synth_ade20k(tmp_path / "made", seed=2, train_images=2, val_images=1)
    archive = shutil.make_archive(str(tmp_path / "data" / "ADEChallengeData2016"), "zip", made.parent, made.name)
    assert data_cli(["prepare", "ade20k", "--root", str(tmp_path / "data")]) == 0
    assert (tmp_path / "data/ADEChallengeData2016/annotations/validation/ADE_val_00000001.png").is_file()
    assert Path(archive).name == "ADEChallengeData2016.zip"
    capsys.readouterr()
    assert data_cli(["check", "ade20k", "--root", str(tmp_path / "data")]) == 0
    printed = capsys.readouterr().out
    assert "training images: 2" in printed and "validation images: 1" in printed and "0 other: " in printed
