"""ADE20K-Part-234 (OV-PARTS): the mapping, the converter from the full release, the reader and the CLI.

The round trip converts a generated full release and compares with the labels the generator planted from
hand-typed part names (probes/data/ade20k_synth.py); the real-sample test compares with part sets derived
by hand from samples/README.md and the mapping entries quoted in docs/datasets.md#ade20k-part-234 and
docs/datasets.md#ade20k-part-234-parts.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from probes.data.__main__ import main as data_cli
from probes.data.ade20k import ADE20KFull
from probes.data.ade20k_part234 import (
    ADE20KPart234,
    convert_full_release,
    convert_image,
    load_mapping,
    read_part_map,
)
from probes.data.ade20k_synth import synth_ade20k_full, synth_ade20k_part234
from probes.data.errors import DatasetFormatError
from probes.data.generated import MARKER, find_marker


def tree(root: Path) -> list[str]:
    """The dataset's files (the generated-data marker names its generator, so it differs; its presence is tested)."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")
                  if p.is_file() and p.name != MARKER and ".partprobe_convert" not in p.parts)


def assert_same_tree(expected: Path, got: Path) -> None:
    """Every file of `expected` is in `got` with the same pixels (PNG), the same JSON (minus info), same bytes."""
    assert tree(expected) == tree(got)
    for relative in tree(expected):
        a, b = expected / relative, got / relative
        if relative.endswith(".png"):
            x, y = np.asarray(Image.open(a)), np.asarray(Image.open(b))
            assert x.dtype == y.dtype and np.array_equal(x, y), relative
        elif relative.endswith(".json"):
            x, y = json.loads(a.read_text()), json.loads(b.read_text())
            if isinstance(x, dict):
                x.pop("info", None), y.pop("info", None)
            assert x == y, relative
        else:
            assert a.read_bytes() == b.read_bytes(), relative


def test_mapping_has_the_documented_objects_and_parts():
    mapping = load_mapping()
    assert len(mapping.object_names) == 44 and len(mapping.part_names) == 234
    obj = mapping.object_names.index
    part = mapping.part_names.index
    assert mapping.object_of_ndx[1831] == obj("person") and mapping.object_of_ndx[401] == obj("car")
    assert mapping.object_of_ndx[783] == mapping.object_of_ndx[774] == obj("door")
    assert mapping.object_of_ndx[2985] == mapping.object_of_ndx[533] == obj("wardrobe")
    assert mapping.part_of[(obj("person"), 1206)] == part("person's head") == 5
    assert mapping.part_of[(obj("person"), 1428)] == mapping.part_of[(obj("person"), 2117)] == part("person's arm") == 0
    assert mapping.part_of[(obj("car"), 3057)] == mapping.part_of[(obj("car"), 3050)] == part("car's window")
    assert mapping.part_of[(obj("van"), 2700)] == part("van's taillight")
    assert (obj("car"), 2700) not in mapping.part_of                      # cars have no taillight class
    assert mapping.part_of[(obj("door"), 774)] == part("door's panel")


@pytest.fixture(scope="module")
def real_labels(shared):
    release = ADE20KFull(shared / "samples" / "ade20k_full")
    mapping = load_mapping()
    out = {}
    for image in release.images:
        if image.stem in ("ADE_train_00016869", "ADE_train_00016964"):
            problems = []
            out[image.stem] = (convert_image(image, mapping, problems), problems)
    return mapping, out


def test_converter_on_real_samples_finds_the_hand_derived_parts(real_labels):
    mapping, out = real_labels
    names = mapping.part_names
    # 16869: car 4 has wheel, wheel, door, taillight, window, headlight, bumper; traffic light 68 a housing.
    labels, problems = out["ADE_train_00016869"]
    assert problems == []
    parts = {names[v] for v in np.unique(labels.part_map) if v != 65535}
    assert parts == {"car's bumper", "car's door", "car's headlight", "car's wheel", "car's window",
                     "traffic light's housing"}
    objects = {mapping.object_names[v] for v in np.unique(labels.object_map) if v != 255}
    assert objects == {"car", "person", "traffic light", "minibike"}
    # 11 cars (incl. "cars"), 9 persons, 7 traffic lights, 3 motorbikes in the README table.
    categories = sorted(mapping.object_names[c] for c, _ in labels.instances)
    assert len(categories) == 30 and categories.count("car") == 11 and categories.count("person") == 9
    # Every part pixel lies on an object of the part's own class.
    for value in np.unique(labels.part_map[labels.part_map != 65535]):
        owner = names[value].split("'s ")[0]
        assert set(np.unique(labels.object_map[labels.part_map == value]).tolist()) == {mapping.object_names.index(owner)}
    # 16964: vans 5 (license plate) and 8 (window, windshield); the building's doors and windows are no class.
    labels, problems = out["ADE_train_00016964"]
    assert {names[v] for v in np.unique(labels.part_map) if v != 65535} == {"van's license plate", "van's window"}
    assert sorted(mapping.object_names[c] for c, _ in labels.instances) == ["car", "traffic light", "van", "van"]
    assert labels.part_map.dtype == np.uint16 and labels.part_map.shape == (1467, 2200)


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    base = tmp_path_factory.mktemp("ade234")
    release = synth_ade20k_full(base / "raw", seed=5)
    expected = synth_ade20k_part234(base / "expected", seed=5)
    got = convert_full_release(release, base / "converted", progress=False)
    return release, expected, got


def test_generated_release_converts_to_exactly_the_planted_labels(converted):
    _, expected, got = converted
    assert_same_tree(expected, got)
    assert find_marker(got) == got / MARKER                    # converted from generated data: still marked
    # Not vacuous: the planted set holds parts of several objects, an excluded image and a validation image.
    assert tree(got)[:3] == ["ade20k_instance_train.json", "ade20k_instance_val.json",
                             "annotations_detectron2_obj/training/ADE_train_00000101.png"]
    assert "images/training/ADE_train_00000103.jpg" not in tree(got)              # no part of the 44 objects
    street = read_part_map(got / "annotations_detectron2_part/training/ADE_train_00000101.png")
    names = load_mapping().part_names
    assert {names[v] for v in np.unique(street) if v != 65535} == {
        "person's arm", "person's head", "person's torso", "car's door", "car's wheel", "car's window"}


def test_conversion_is_resumable_and_skips_finished_images(converted, tmp_path):
    release, expected, got = converted
    stamps = {p: p.stat().st_mtime_ns for p in got.rglob("*.png")}
    convert_full_release(release, got.parent, progress=False)
    assert {p: p.stat().st_mtime_ns for p in got.rglob("*.png")} == stamps
    # An interrupted image (outputs gone, no record) is redone; the others stay untouched.
    victim = got / "annotations_detectron2_part/validation/ADE_val_00000201.png"
    victim.unlink()
    (got / ".partprobe_convert/validation/ADE_val_00000201.json").unlink()
    convert_full_release(release, got.parent, progress=False)
    assert np.array_equal(np.asarray(Image.open(victim)),
                          np.asarray(Image.open(expected / "annotations_detectron2_part/validation/ADE_val_00000201.png")))
    others = {p: t for p, t in stamps.items() if p.stem != "ADE_val_00000201"}
    assert len(others) == 4 and {p: p.stat().st_mtime_ns for p in others} == others


def test_reader_of_the_ov_parts_layout(converted):
    _, expected, _ = converted
    train = ADE20KPart234(expected.parent, "training")
    assert [s.stem for s in train.samples] == ["ADE_train_00000101", "ADE_train_00000102"]
    part_map, object_map = train.part_map(1), train.object_map(1)
    assert part_map.dtype == np.uint16 and object_map.dtype == np.uint8 and part_map.shape == (96, 128)
    instances = train.instances()
    assert [c["name"] for c in instances["categories"][:3]] == ["airplane", "armchair", "bed"]
    door = train.object_names.index("door")
    annotation = next(a for a in instances["annotations"] if a["image_id"] == 102 and a["category_id"] == door)
    rle = mask_utils.frPyObjects(annotation["segmentation"], 96, 128)
    assert np.array_equal(mask_utils.decode(rle).astype(bool), object_map == door)


def test_planted_colours_identify_the_parts(converted):
    """A nearest-class-mean colour classifier (the simplest probe) recovers the planted part labels from the
    JPEG pixels; scored against a wrong (rotated) class mapping it fails."""
    _, expected, _ = converted
    pixels, truth = [], []
    for split, stem in (("training", "ADE_train_00000101"), ("training", "ADE_train_00000102"),
                        ("validation", "ADE_val_00000201")):
        image = np.asarray(Image.open(expected / "images" / split / f"{stem}.jpg"), dtype=np.float64)
        labels = read_part_map(expected / "annotations_detectron2_part" / split / f"{stem}.png")
        pixels.append(image[labels != 65535])
        truth.append(labels[labels != 65535].astype(np.int64))
    pixels, truth = np.concatenate(pixels), np.concatenate(truth)
    present = np.unique(truth)
    assert len(present) == 13
    means = np.stack([pixels[truth == c].mean(0) for c in present])
    predicted = present[np.argmin(((pixels[:, None, :] - means[None]) ** 2).sum(-1), axis=1)]
    # JPEG chroma subsampling blurs the edges of the 4-6 px wide parts; every class stays well recognised.
    assert (predicted == truth).mean() > 0.9
    assert min((predicted[truth == c] == c).mean() for c in present) > 0.6
    rotated = dict(zip(present, np.roll(present, 1)))
    assert (predicted == np.vectorize(rotated.get)(truth)).mean() < 0.05


def test_cli_prepares_and_checks(tmp_path, capsys):
    synth_ade20k_full(tmp_path, seed=0)
    assert data_cli(["prepare", "ade20k-part-234", "--root", str(tmp_path)]) == 0
    assert (tmp_path / "ADE20KPart234/annotations_detectron2_part/validation/ADE_val_00000201.png").is_file()
    capsys.readouterr()
    assert data_cli(["check", "ade20k-part-234", "--root", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "training images: 2" in printed and "van's taillight: " in printed


# ---------------------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------------------

def test_part_map_values_and_mode_are_checked(tmp_path):
    values = np.full((4, 4), 65535, np.uint16)
    values[1, 2] = 234
    Image.fromarray(values).save(tmp_path / "a.png")
    with pytest.raises(DatasetFormatError, match=r"a\.png.*pixel value"):
        read_part_map(tmp_path / "a.png")
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "b.png")
    with pytest.raises(DatasetFormatError, match=r"b\.png, field 'mode': PNG mode L"):
        read_part_map(tmp_path / "b.png")


def test_instance_file_category_ids_are_checked(converted, tmp_path):
    _, expected, _ = converted
    document = json.loads((expected / "ade20k_instance_val.json").read_text())
    document["annotations"][0]["category_id"] = 44
    root = tmp_path / "ADE20KPart234"
    for relative in tree(expected):
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_bytes((expected / relative).read_bytes())
    (root / "ade20k_instance_val.json").write_text(json.dumps(document))
    with pytest.raises(DatasetFormatError, match=r"ade20k_instance_val\.json, field 'annotations\[0\]\.category_id'"):
        ADE20KPart234(tmp_path, "validation").instances()


def test_an_instance_png_that_points_nowhere_is_reported_and_skipped(tmp_path):
    release = ADE20KFull(synth_ade20k_full(tmp_path, seed=0))
    street = release.images[0]
    head = street.folder / street.stem / f"instance_002_{street.stem}.png"
    bogus = np.zeros((96, 128), np.uint8)
    bogus[0:4, 0:4] = 255                                # sky corner: no level-1 head pixel there
    Image.fromarray(bogus).save(head)
    problems = []
    labels = convert_image(street, load_mapping(), problems)
    assert len(problems) == 1 and "instance_002_ADE_train_00000101.png: no visible pixel has class 1206" in problems[0]
    assert load_mapping().part_names.index("person's head") not in labels.part_map


def test_missing_part_level_file_is_named(tmp_path):
    release = ADE20KFull(synth_ade20k_full(tmp_path, seed=0))
    image = release.images[3]
    (image.folder / f"{image.stem}_parts_1.png").unlink()
    with pytest.raises(DatasetFormatError, match=r"ADE_val_00000201_parts_1\.png: file not found"):
        convert_image(image, load_mapping())
