"""Pascal-Part: the .mat reader on the real samples, the 58/108/116 groupings, the converter and the generators.

Expected values come from samples/README.md §3 and the class lists and grouping rules of
docs/datasets.md#pascal-part; the round trip compares the converter with labels the generator planted from
hand-typed names.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy.io import loadmat, savemat

from probes.data import pascal_part
from probes.data.__main__ import main as data_cli
from probes.data.errors import DatasetFormatError
from probes.data.generated import MARKER
from probes.data.pascal_part import (
    LOOKUP,
    RAW_PARTS,
    PascalPart116,
    PascalPartGMNet,
    PascalPartSource,
    class_names,
    convert_release,
    read_annotation_mat,
    render_labels,
)
from probes.data.pascal_part_synth import synth_pascal_part, synth_pascal_part_derived

SAMPLES = "samples/pascal_part/Annotations_Part"


@pytest.fixture(scope="module")
def real(shared):
    return {path.stem: read_annotation_mat(path) for path in sorted((shared / SAMPLES).glob("*.mat"))}


def test_real_mat_files_hold_the_documented_objects_and_parts(real):
    summary = {stem: [(o.class_name, o.class_ind, len(o.parts)) for o in anno.objects] for stem, anno in real.items()}
    assert summary == {
        "2008_000652": [("person", 15, 18)],
        "2008_003228": [("person", 15, 5), ("person", 15, 16), ("person", 15, 14), ("cat", 8, 6)],
        "2009_001103": [("person", 15, 4), ("person", 15, 18), ("tvmonitor", 20, 0),
                        ("bottle", 5, 2), ("bottle", 5, 2), ("bottle", 5, 2)],
        "2010_000145": [("boat", 4, 0)],
    }
    assert {stem: (a.height, a.width) for stem, a in real.items()} == {
        "2008_000652": (213, 320), "2008_003228": (375, 500), "2009_001103": (375, 500), "2010_000145": (375, 500)}
    assert real["2008_000652"].imname == "2008_000652"
    assert [p.name for p in real["2008_003228"].objects[3].parts] == ["head", "lear", "rear", "torso", "neck", "tail"]
    assert {p.name for p in real["2008_003228"].objects[1].parts} >= {"hair", "lebrow", "rebrow"}
    assert [p.name for p in real["2009_001103"].objects[3].parts] == ["body", "cap"]
    assert {"rlarm", "ruarm", "rhand"} <= {p.name for p in real["2009_001103"].objects[0].parts}
    for anno in real.values():
        for obj in anno.objects:
            assert obj.mask.dtype == bool and obj.mask.any()
            assert all(not (part.mask & ~obj.mask).any() for part in obj.parts)


def test_real_samples_render_to_the_documented_conventions(real):
    boat = render_labels(real["2010_000145"])
    boat_mask = real["2010_000145"].objects[0].mask
    assert set(np.unique(boat.part58).tolist()) == {0, 12}                        # 12 = boat (whole object)
    assert np.array_equal(boat.part58 == 12, boat_mask)
    assert set(np.unique(boat.part108).tolist()) == {0, 18}
    assert (boat.part116 == 255).all()                                            # no part: ignored
    assert set(np.unique(boat.object116).tolist()) == {3, 255} and not boat.object16.any()

    scene = real["2009_001103"]
    labels = render_labels(scene)
    monitor = scene.objects[2].mask.copy()
    for later in scene.objects[3:]:                                               # later objects occlude it
        monitor &= ~later.mask
    assert np.array_equal(labels.part58 == class_names(58).index("tvmonitor_frame"), monitor)
    assert (labels.part108[monitor] == 255).all() and (labels.part116[monitor] == 255).all()
    assert (labels.object20[monitor] == 20).all() and (labels.object16[monitor] == 16).all()

    cat = render_labels(real["2008_003228"])
    cat_parts = {class_names(116)[v] for v in np.unique(cat.part116) if v != 255 and "cat" in class_names(116)[v]}
    assert cat_parts == {"cat's head", "cat's ear", "cat's torso", "cat's neck", "cat's tail"}
    cat58 = {class_names(58)[v] for v in np.unique(cat.part58) if v not in (0, 255) and "cat" in class_names(58)[v]}
    assert cat58 == {"cat_head", "cat_torso", "cat_tail"}                         # ears -> head, neck -> torso


def test_groupings_cover_every_class_of_the_published_lists():
    assert len(RAW_PARTS) == 193                                 # the TMLR paper's "193 part categories"
    for variant, size in ((58, 58), (108, 108), (116, 116)):
        names = class_names(variant)
        assert len(names) == size
        reachable = set(np.unique(LOOKUP[variant]).tolist()) - {255}
        assert reachable == set(range(size)), variant


def _label(variant: int, cls: str, raw: str) -> str | None:
    value = LOOKUP[variant][pascal_part.VOC_CLASSES.index(cls) + 1, pascal_part.RAW_CODE[(cls, raw)]]
    return None if value == 255 else class_names(variant)[value]


def test_grouping_rules_stated_in_the_spec():
    # 58: stern = stern + tail, left/right and sub-parts grouped, train a whole-object class
    # (docs/datasets.md#pascal-part-58-and-pascal-part-108).
    assert _label(58, "aeroplane", "tail") == "aeroplane_stern"
    assert _label(58, "person", "lhand") == "person_larm" and _label(58, "person", "ruleg") == "person_uleg"
    assert _label(58, "train", "coach") == "train" and _label(58, "car", "fliplate") == "car_plate"
    # 108: left/right merged into the r... name.
    assert _label(108, "person", "luarm") == "person_ruarm" and _label(108, "cat", "lear") == "cat_rear"
    assert _label(108, "aeroplane", "lwing") == "aeroplane_rwing" and _label(108, "bird", "lfoot") == "birds_rfoot"
    # 116: OV-PARTS names, left/right merged.
    assert _label(116, "horse", "rbho") == "horse's hoof" and _label(116, "person", "rebrow") == "person's eyebrow"
    assert _label(116, "bus", "bliplate") == "bus's license plate" and _label(116, "train", "cfrontside") == "train's front"


# ---------------------------------------------------------------------------------------------------------
# Generators and conversion
# ---------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    base = tmp_path_factory.mktemp("pascal")
    release = synth_pascal_part(base / "release", seed=4)
    expected = synth_pascal_part_derived(base / "expected", seed=4)
    convert_release(release, progress=False)
    return release, expected


def tree(root: Path) -> list[str]:
    """The dataset's files, less the generated-data marker (it names its generator, so the two trees differ there)."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")
                  if p.is_file() and p.name != MARKER
                  and not ({".partprobe_convert", "Annotations_Part", "VOCdevkit"} & set(p.parts)))


def test_generated_release_converts_to_exactly_the_planted_labels(converted):
    release, expected = converted
    assert tree(expected) == tree(release)
    for relative in tree(expected):
        a, b = expected / relative, release / relative
        if relative.endswith(".png"):
            assert np.array_equal(np.asarray(Image.open(a)), np.asarray(Image.open(b))), relative
        else:
            assert a.read_bytes() == b.read_bytes(), relative
    # Not vacuous: both part layouts, every split, and the image without parts kept only by GMNet's sets.
    assert (release / "PascalPartGMNet/val.txt").read_text().split() == ["2008_000002", "2010_000005", "2010_000007"]
    assert "PascalPartGMNet/label58/gray/all/2010_000006.png" in tree(release)
    assert not (release / "PascalPart116/images/train/2010_000006.jpg").exists()
    assert not (release / "PascalObject16/img/train/2010_000006.jpg").exists()


def test_generated_mat_files_follow_the_matlab_recipe(converted):
    release, _ = converted
    path = release / "Annotations_Part/2009_000003.mat"
    header = path.read_bytes()[:128]
    assert header.startswith(b"MATLAB 5.0 MAT-file")
    assert int.from_bytes(path.read_bytes()[128:132], "little") == 15           # miCOMPRESSED
    anno = loadmat(path)["anno"][0, 0]
    objects = anno["objects"]
    assert anno["imname"][0] == "2009_000003" and objects.shape == (1, 3)
    assert objects[0, 0]["class_ind"].dtype == np.uint8 and objects[0, 0]["class_ind"][0, 0] == 20
    assert objects[0, 0]["parts"][0, 0]["part_name"][0] == "screen"
    assert objects[0, 1]["parts"].shape == (0, 0) and objects[0, 2]["parts"].shape == (0, 0)


def test_readers_of_the_derived_layouts(converted):
    release, _ = converted
    ov = PascalPart116(release, "train")
    assert [s.stem for s in ov.samples] == ["2008_000001", "2009_000003", "2009_000004"]
    parts, objects = ov.part_map(0), ov.object_map(0)
    names = ov.part_names
    assert {names[v] for v in np.unique(parts) if v != 255} == {
        "person's head", "person's eye", "person's eyebrow", "person's torso", "person's lower arm",
        "person's upper arm", "person's foot", "bottle's cap", "bottle's body"}
    assert {ov.object_names[v] for v in np.unique(objects) if v != 255} == {"person", "bottle"}
    assert ov.label_counts("obj")["2008_000001.png"] == [4, 14]
    gmnet = PascalPartGMNet(release, 58, "val")
    assert len(gmnet) == 3 and gmnet.label(0).dtype == np.uint8
    assert len(PascalPartGMNet(release / "PascalPartGMNet", 108, "train")) == 4


def test_object16_set_reads_as_the_papers_pascal_object_layout(converted):
    """The converter's PascalObject16/ is the mmseg img/ann layout the TMLR preset reads (reduce_zero_label)."""
    from probes.data.mmseg_layout import MMSegLayout

    release, _ = converted
    layout = MMSegLayout(release / "PascalObject16", "pascal-object-16", "train")
    assert [s.stem for s in layout.samples] == ["2008_000001", "2009_000003", "2009_000004"]
    labels = layout.load_label(0)                                  # person and bottle, 0-based after reduction
    assert {layout.class_names[v] for v in np.unique(labels) if v != 255} == {"person", "bottle"}


def test_conversion_is_resumable(converted):
    release, _ = converted
    stamps = {p: p.stat().st_mtime_ns for p in release.rglob("*.png")}
    convert_release(release, progress=False)
    assert {p: p.stat().st_mtime_ns for p in release.rglob("*.png")} == stamps


def test_planted_colours_identify_the_parts(converted):
    """Nearest-class-mean colour classification recovers the 116-part labels of the generated images."""
    _, expected = converted
    pixels, truth = [], []
    for path in sorted((expected / "PascalPart116/annotations_detectron2_part").rglob("*.png")):
        labels = np.asarray(Image.open(path))
        image = np.asarray(Image.open(str(path).replace("annotations_detectron2_part", "images")[:-4] + ".jpg"), float)
        pixels.append(image[labels != 255])
        truth.append(labels[labels != 255].astype(np.int64))
    pixels, truth = np.concatenate(pixels), np.concatenate(truth)
    present = np.unique(truth)
    assert len(present) == 31
    means = np.stack([pixels[truth == c].mean(0) for c in present])
    predicted = present[np.argmin(((pixels[:, None, :] - means[None]) ** 2).sum(-1), axis=1)]
    assert (predicted == truth).mean() > 0.9
    rotated = dict(zip(present, np.roll(present, 1)))
    assert (predicted == np.vectorize(rotated.get)(truth)).mean() < 0.05


def test_cli_builds_every_set_and_checks_them(tmp_path, capsys):
    synth_pascal_part(tmp_path, seed=0)
    assert data_cli(["prepare", "pascal-part", "--root", str(tmp_path)]) == 0
    for name, line in (("pascal-part-116", "train images: 3"), ("pascal-part-58", "val images: 3"),
                       ("pascal-part-108", "train images: 4"), ("pascal-part", "annotations: 7")):
        capsys.readouterr()
        assert data_cli(["check", name, "--root", str(tmp_path)]) == 0, name
        assert line in capsys.readouterr().out, name


# ---------------------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------------------

def _edit_first_part(path: Path, **changes) -> None:
    """Rewrite a .mat with the first part of the first object changed (name and/or mask)."""
    mat = loadmat(path)
    part = mat["anno"][0, 0]["objects"][0, 0]["parts"][0, 0]
    for key, value in changes.items():
        part[key] = value
    savemat(path, {"anno": mat["anno"]}, do_compression=True)


def test_unknown_part_name_is_rejected(tmp_path):
    synth_pascal_part(tmp_path, seed=0)
    path = tmp_path / "Annotations_Part/2008_000001.mat"
    _edit_first_part(path, part_name=np.array(["wing"]))
    with pytest.raises(DatasetFormatError, match=r"2008_000001\.mat, field 'anno\.objects\(1\)\.parts\(1\)\.part_name': "
                                                 r"unknown part name 'wing' for class person"):
        read_annotation_mat(path)


def test_part_mask_outside_its_object_is_rejected(tmp_path):
    synth_pascal_part(tmp_path, seed=0)
    path = tmp_path / "Annotations_Part/2008_000001.mat"
    mask = np.zeros((60, 80), np.uint8)
    mask[0, 0] = 1                                             # the person starts at x >= 10
    _edit_first_part(path, mask=mask)
    with pytest.raises(DatasetFormatError, match=r"anno\.objects\(1\)\.parts\(1\)\.mask': part 'head' has 1 pixels "
                                                 r"outside its object"):
        read_annotation_mat(path)


def test_wrong_class_index_and_garbage_files_are_rejected(tmp_path):
    synth_pascal_part(tmp_path, seed=0)
    path = tmp_path / "Annotations_Part/2010_000006.mat"
    mat = loadmat(path)
    mat["anno"][0, 0]["objects"][0, 0]["class_ind"] = np.array([[10]], np.uint8)     # chair is 9
    savemat(path, {"anno": mat["anno"]}, do_compression=True)
    with pytest.raises(DatasetFormatError, match=r"class_ind'.*'chair' with class_ind 10"):
        read_annotation_mat(path)
    path.write_bytes(b"not a mat file at all")
    with pytest.raises(DatasetFormatError, match=r"2010_000006\.mat: not a Pascal-Part \.mat"):
        read_annotation_mat(path)


def test_missing_image_and_split_list_are_named(tmp_path):
    synth_pascal_part(tmp_path, seed=0)
    (tmp_path / "VOCdevkit/VOC2010/JPEGImages/2009_000004.jpg").unlink()
    with pytest.raises(DatasetFormatError, match=r"2009_000004\.jpg: file not found"):
        convert_release(tmp_path, tmp_path / "out", progress=False)
    (tmp_path / "VOCdevkit/VOC2010/ImageSets/Main/val.txt").unlink()
    with pytest.raises(DatasetFormatError, match=r"val\.txt: file not found"):
        PascalPartSource(tmp_path).split_of()


def test_derived_label_values_are_checked(converted, tmp_path):
    _, expected = converted
    root = tmp_path / "PascalPart116"
    for path in (expected / "PascalPart116").rglob("*"):
        if path.is_file():
            target = root / path.relative_to(expected / "PascalPart116")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(path.read_bytes())
    bad = np.full((60, 80), 255, np.uint8)
    bad[5, 7] = 200
    Image.fromarray(bad).save(root / "annotations_detectron2_part/val/2008_000002.png")
    with pytest.raises(DatasetFormatError, match=r"2008_000002\.png.*pixel \(x=7, y=5\)"):
        PascalPart116(tmp_path, "val").part_map(0)
    report = pascal_part.check(tmp_path, "pascal-part-116")
    assert not report["ok"] and "2008_000002.png" in report["problems"][0]
