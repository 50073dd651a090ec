"""CUB-200-2011: the generator writes the official format, the reader reads it, bad input fails clearly.

Expected values come from docs/datasets.md#cub-200-2011 (file formats, the 15 part names) and from the
planted-part rule of docs/CONTRACTS.md, recomputed here from the annotation files.
"""
from __future__ import annotations

import re
import shutil

import numpy as np
import pytest
from PIL import Image

from probes.data.cub import CUB200, check
from probes.data.cub_synth import PART_COLOURS
from probes.data.errors import DatasetFormatError
from probes.data.synth import synth

SPEC_PART_NAMES = ["back", "beak", "belly", "breast", "crown", "forehead", "left eye", "left leg", "left wing",
                   "nape", "right eye", "right leg", "right wing", "tail", "throat"]
PAPER_PARTS = [11, 12, 9, 14]   # right eye, right leg, left wing, tail (1-based, official code)


@pytest.fixture(scope="module")
def cub(cub_root):
    return CUB200(cub_root)


def lines(root, name):
    return (root / "CUB_200_2011" / name).read_text().splitlines()


def test_reader_reads_generated_files_with_documented_values(cub_root, cub):
    assert cub.part_names == SPEC_PART_NAMES
    assert len(cub.images) == 40
    assert cub.class_names == ["Black_footed_Albatross", "Laysan_Albatross", "Sooty_Albatross", "Groove_billed_Ani"]
    assert cub.class_dirs[0] == "001.Black_footed_Albatross"
    # Every field agrees with the raw lines, parsed here independently.
    for line, image in zip(lines(cub_root, "images.txt"), cub.images):
        image_id, relative = line.split()
        assert (image.image_id, image.relative_path) == (int(image_id), relative)
        assert image.path.is_file()
    for line in lines(cub_root, "image_class_labels.txt"):
        image_id, class_id = map(int, line.split())
        assert cub.image_by_id[image_id].class_id == class_id
    for line in lines(cub_root, "train_test_split.txt"):
        image_id, is_train = map(int, line.split())
        assert cub.image_by_id[image_id].is_train == (is_train == 1)
    for line in lines(cub_root, "bounding_boxes.txt"):
        image_id, *box = line.split()
        assert cub.image_by_id[int(image_id)].bbox == tuple(float(v) for v in box)
    rows = [line.split() for line in lines(cub_root, "parts/part_locs.txt")]
    assert cub.part_locs_order == [(int(r[0]), int(r[1])) for r in rows]
    for image_id, part_id, x, y, visible in rows:
        assert cub.image_by_id[int(image_id)].parts[int(part_id) - 1].tolist() == [float(x), float(y), int(visible)]
    assert {i.is_train for i in cub.images} == {True, False}


def test_generated_files_follow_the_official_text_format(cub_root):
    for line in lines(cub_root, "images.txt"):
        assert re.fullmatch(r"\d+ \d{3}\.[A-Za-z_]+/[A-Za-z_]+_\d{4}_\d+\.jpg", line), line
    for line in lines(cub_root, "classes.txt"):
        assert re.fullmatch(r"(\d+) (\d{3})\.\w+", line) and int(line.split()[0]) == int(line.split()[1][:3])
    for line in lines(cub_root, "bounding_boxes.txt"):
        assert re.fullmatch(r"\d+( \d+\.\d+){4}", line), line          # floats, as in the release
    rows = lines(cub_root, "parts/part_locs.txt")
    assert len(rows) == 40 * 15
    for index, line in enumerate(rows):
        image_id, part_id, x, y, visible = line.split()
        assert (int(image_id), int(part_id)) == (index // 15 + 1, index % 15 + 1)   # image-major, parts 1..15
        assert "." in x and "." in y
        if visible == "0":
            assert f"{x} {y} {visible}" == "0.0 0.0 0"
    assert lines(cub_root, "parts/parts.txt")[10] == "11 right eye"   # name after the id, with its space


def test_paper_parts_visible_in_most_images_and_some_parts_invisible(cub):
    visible = np.stack([image.parts[:, 2] for image in cub.images])
    paper = visible[:, [p - 1 for p in PAPER_PARTS]]
    assert paper.mean() > 0.75
    assert (paper == 0).any()
    assert (visible == 0).any(axis=1).sum() > 10


def _visible(image):
    ids = np.flatnonzero(image.parts[:, 2] == 1)
    return ids, image.parts[ids, :2]


def test_planted_disks_sit_at_visible_parts_with_the_contract_radius(cub):
    for image in cub.images:
        pixels = np.asarray(Image.open(image.path).convert("RGB")).astype(int)
        height, width = pixels.shape[:2]
        ids, points = _visible(image)
        distances = np.sqrt(((points[:, None] - points[None]) ** 2).sum(-1))
        np.fill_diagonal(distances, np.inf)
        assert distances.min() >= 48                                   # keypoints >= 48 px apart
        assert ((points >= 0) & (points < (width, height))).all()
        for part_index, (x, y), nearest in zip(ids, points, distances.min(1)):
            colour = np.array(PART_COLOURS[part_index])
            radius = 0.2 * nearest
            for dx in (0.0, 0.6 * radius, -0.6 * radius):            # inside the disk
                px, py = int(round(x + dx)), int(round(y))
                if 0 <= px < width:
                    assert np.abs(pixels[py, px] - colour).max() <= 40, (image.path, part_index, dx)
            px = int(round(x + radius + 3))                            # just outside: noise background
            if px < width:
                assert np.abs(pixels[int(round(y)), px] - colour).max() > 40


def test_invisible_parts_have_no_disk_anywhere(cub):
    checked = 0
    for image in cub.images[:12]:
        pixels = np.asarray(Image.open(image.path).convert("RGB")).astype(int)
        for part_index in np.flatnonzero(image.parts[:, 2] == 0):
            near = np.abs(pixels - np.array(PART_COLOURS[part_index])).max(-1) <= 40
            # JPEG edges of other disks may pass the colour test; a disk is >= pi * 9.6^2 ~ 290 pixels
            assert near.sum() < 60, (image.path, part_index)
            checked += 1
    assert checked > 0


def test_background_is_noise_in_80_176(cub):
    image = cub.images[0]
    pixels = np.asarray(Image.open(image.path).convert("RGB")).astype(int)
    _, points = _visible(image)
    yy, xx = np.mgrid[0:pixels.shape[0], 0:pixels.shape[1]]
    far = np.min([(xx - x) ** 2 + (yy - y) ** 2 for x, y in points], axis=0) > 60 ** 2
    values = pixels[far]
    low, high = np.percentile(values, [1, 99])     # JPEG compression of noise spills a little past [80, 176]
    assert 70 <= low < 90 and 166 < high <= 186
    assert abs(values.mean() - 128) < 3 and values.std() > 15   # uniform noise: 27.7 before JPEG


def test_generator_is_deterministic(tmp_path, cub_root):
    again = synth("cub", tmp_path / "again", seed=0)
    other = synth("cub", tmp_path / "other", seed=1, images=6, classes=2)
    assert lines(again, "parts/part_locs.txt") == lines(cub_root, "parts/part_locs.txt")
    first = lines(cub_root, "images.txt")[0].split()[1]
    assert ((again / "CUB_200_2011/images" / first).read_bytes()
            == (cub_root / "CUB_200_2011/images" / first).read_bytes())
    assert lines(other, "parts/part_locs.txt")[:15] != lines(cub_root, "parts/part_locs.txt")[:15]
    assert len(CUB200(other).images) == 6


def test_check_reports_counts_and_missing_images(tmp_path, cub_root):
    report = check(cub_root)
    assert report["ok"] and report["counts"]["images"] == 40 and report["counts"]["train"] == 20
    assert report["class_histogram"]["001.Black_footed_Albatross"] == 10
    broken = _annotation_copy(cub_root, tmp_path)
    report = check(broken)
    assert not report["ok"] and report["problems_total"] == 40
    assert "image file not found" in report["problems"][0] and "images.txt id 1" in report["problems"][0]


# --- bad input ------------------------------------------------------------------------------------------
def _annotation_copy(cub_root, tmp_path):
    """The text files only (enough for the reader), so tests can break them."""
    target = tmp_path / "CUB_200_2011"
    shutil.copytree(cub_root / "CUB_200_2011", target, ignore=shutil.ignore_patterns("*.jpg"))
    return tmp_path


def _edit(root, name, edit):
    path = root / "CUB_200_2011" / name
    text = path.read_text().splitlines()
    path.write_text("\n".join(edit(text)) + "\n")
    return path


def _error(root) -> str:
    with pytest.raises(DatasetFormatError) as caught:
        CUB200(root)
    return str(caught.value)


def test_error_missing_file_names_it(tmp_path, cub_root):
    root = _annotation_copy(cub_root, tmp_path)
    (root / "CUB_200_2011/parts/part_locs.txt").unlink()
    message = _error(root)
    assert "parts/part_locs.txt: file not found" in message and "<visible>" in message


def test_error_wrong_layout_names_the_expected_folder(tmp_path):
    (tmp_path / "images").mkdir()
    message = _error(tmp_path)
    assert "CUB_200_2011/images.txt" in message and "to contain it" in message


def test_error_part_locs_row_with_four_fields(tmp_path, cub_root):
    root = _annotation_copy(cub_root, tmp_path)
    _edit(root, "parts/part_locs.txt", lambda rows: rows[:6] + [rows[6].rsplit(" ", 1)[0]] + rows[7:])
    message = _error(root)
    assert "part_locs.txt, line 7: 4 fields" in message and "expected 5 fields" in message


def test_error_non_number_names_line_and_field(tmp_path, cub_root):
    root = _annotation_copy(cub_root, tmp_path)
    _edit(root, "parts/part_locs.txt", lambda rows: rows[:2] + ["1 3 abc 4.0 1"] + rows[3:])
    message = _error(root)
    assert "part_locs.txt, line 3, field 'x': 'abc' is not valid (expected a finite number)" in message


def test_error_out_of_range_visibility(tmp_path, cub_root):
    root = _annotation_copy(cub_root, tmp_path)
    _edit(root, "parts/part_locs.txt", lambda rows: rows[:4] + ["1 5 10.0 12.0 2"] + rows[5:])
    message = _error(root)
    assert "line 5, field 'visible': visible = 2 (expected 0 or 1)" in message


def test_error_image_with_fourteen_part_rows(tmp_path, cub_root):
    root = _annotation_copy(cub_root, tmp_path)
    _edit(root, "parts/part_locs.txt", lambda rows: rows[:15 + 3] + rows[15 + 4:])   # image 2 loses part 4
    message = _error(root)
    assert "image 2 has 14 rows (missing part ids [4])" in message and "exactly 15 rows per image" in message


def test_error_repeated_part_row(tmp_path, cub_root):
    root = _annotation_copy(cub_root, tmp_path)
    _edit(root, "parts/part_locs.txt", lambda rows: rows[:1] + [rows[0]] + rows[2:])
    assert "line 2: second row for image 1 part 1" in _error(root)


def test_error_class_label_contradicts_folder(tmp_path, cub_root):
    root = _annotation_copy(cub_root, tmp_path)
    _edit(root, "image_class_labels.txt", lambda rows: ["1 2"] + rows[1:])
    message = _error(root)
    assert "image_class_labels.txt" in message and "image 1 is in folder '001.Black_footed_Albatross'" in message


def test_error_image_without_split_line(tmp_path, cub_root):
    root = _annotation_copy(cub_root, tmp_path)
    _edit(root, "train_test_split.txt", lambda rows: rows[:-1])
    message = _error(root)
    assert "train_test_split.txt: no line for image ids [40]" in message


def test_error_unknown_class_id(tmp_path, cub_root):
    root = _annotation_copy(cub_root, tmp_path)
    _edit(root, "image_class_labels.txt", lambda rows: ["1 9"] + rows[1:])
    assert "image 1 has class 9 (expected 1..4 (classes.txt))" in _error(root)
