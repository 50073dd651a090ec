"""The data check before the work (probes/views/checks.py) and --skip-bad-items: every problem found at once;
skipped items leave the records saying how many and which, and such a record is never compared with the paper."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
from PIL import Image

from conftest import artifact, configs, run_cli
from probes import linear_probe, object_retrieval, part_retrieval
from probes.data.synth import synth
from probes.results import iter_record_paths
from probes.views.checks import BadItemsError, check_view, checked, image_problem, left_out_protocol, without

SMALL = ["--model", "colorstats", "--input-size", "32", "--quiet"]
pytestmark = pytest.mark.usefixtures("one_thread")


def cub_images(root):
    folder = root / "CUB_200_2011"
    return {int(i): folder / "images" / rel for i, rel in
            (line.split() for line in (folder / "images.txt").read_text().splitlines() if line.strip())}


@pytest.fixture(scope="module")
def cub(tmp_path_factory):
    return synth("cub", tmp_path_factory.mktemp("cub"), seed=4, images=12)


@pytest.fixture
def broken_cub(cub, tmp_path):
    """Image 1 missing, image 2 truncated."""
    root = tmp_path / "cub"
    shutil.copytree(cub, root)
    images = cub_images(root)
    images[1].unlink()
    images[2].write_bytes(images[2].read_bytes()[:600])
    return root, images


def test_image_problems_are_told_apart(tmp_path):
    Image.new("RGB", (40, 30), "red").save(tmp_path / "good.jpg")
    Image.new("RGB", (40, 30), "red").save(tmp_path / "good.png")
    assert image_problem(str(tmp_path / "good.jpg")) == ((40, 30), None)
    assert image_problem(str(tmp_path / "good.png")) == ((40, 30), None)
    (tmp_path / "cut.png").write_bytes((tmp_path / "good.png").read_bytes()[:60])
    (tmp_path / "text.jpg").write_text("hello")
    (tmp_path / "folder.jpg").mkdir()
    problems = {name: image_problem(str(tmp_path / name))[1] for name in ("absent.jpg", "cut.png", "text.jpg",
                                                                           "folder.jpg")}
    assert problems["absent.jpg"] == "image file not found"
    assert problems["cut.png"].startswith("image does not decode")
    assert problems["text.jpg"] == "not an image file PIL can read"
    assert problems["folder.jpg"] == "a folder where an image file was expected"


def test_a_truncated_jpeg_is_found_by_the_scaled_decode(cub, tmp_path):
    source = cub_images(cub)[1]
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(source.read_bytes()[: source.stat().st_size // 2])
    with Image.open(cut) as image:                                    # the header alone looks fine
        image.verify()
    size, problem = image_problem(str(cut))
    assert size is None and "truncated" in problem


def test_every_problem_is_reported_before_any_work(broken_cub, tmp_path):
    root, images = broken_cub
    with pytest.raises(BadItemsError) as err:
        part_retrieval.run(*configs(part_retrieval, *SMALL, "--data-root", root, "--results", tmp_path / "results"))
    message = str(err.value)
    assert f"{images[1]}: image file not found" in message and f"{images[2]}: image does not decode" in message
    assert "nothing was computed" in message and "--skip-bad-items" in message
    assert not list(iter_record_paths(tmp_path / "results"))


def test_skipped_items_are_recorded_with_their_count_and_names(broken_cub, cub, tmp_path, capsys):
    root, images = broken_cub
    whole = run_cli(part_retrieval, *SMALL, "--data-root", cub, "--no-write")
    capsys.readouterr()
    kept = run_cli(part_retrieval, *SMALL, "--data-root", root, "--results", tmp_path, "--skip-bad-items")
    printed = capsys.readouterr().out
    skipped = whole[0].protocol["num_items"] - kept[0].protocol["num_items"]
    assert skipped > 0
    for record in kept:
        assert record.protocol["bad_items_skipped"] == skipped
        note = record.protocol_notes["bad_items_skipped"]
        assert note.startswith(f"{skipped} items left out by --skip-bad-items") and str(images[1]) in note \
            and str(images[2]) in note
        assert not record.published and record.data_sha256 != whole[0].data_sha256
    assert "left out" in printed and f"{skipped} bad items were left out (--skip-bad-items)" in printed
    assert "bad_items_skipped" not in whole[0].protocol
    rows = artifact(tmp_path, kept[0], "items")
    assert len(rows) == kept[0].protocol["num_items"]
    assert not [row for row in rows if row["image_path"] in (str(images[1]), str(images[2]))]


def test_skipping_in_a_task_counts_both_splits_once(broken_cub, cub):
    root, images = broken_cub
    whole = run_cli(linear_probe, *SMALL, "--data-root", cub, "--epochs", "1", "--no-write")
    kept = run_cli(linear_probe, *SMALL, "--data-root", root, "--epochs", "1", "--no-write", "--skip-bad-items")
    assert [r.probe for r in kept] == ["linear_probe", "knn"]
    skipped = kept[0].protocol["bad_items_skipped"]
    assert {r.protocol["bad_items_skipped"] for r in kept} == {skipped}
    total = lambda r: r.protocol["num_train"] + r.protocol["num_eval"]       # noqa: E731
    assert total(kept[0]) + skipped == total(whole[0]) and skipped > 0
    assert all(str(images[1]) in r.protocol_notes["bad_items_skipped"] for r in kept)


def coco_without_one_image(root):
    """Delete one val2017 image holding object crops; (its crops, all crops) under the default box size."""
    import json

    instances = json.loads((root / "annotations" / "instances_val2017.json").read_text())
    crops = [a for a in instances["annotations"] if min(a["bbox"][2:]) >= 32 and not a["iscrowd"]]
    image = next(i for i in instances["images"] if i["id"] == crops[0]["image_id"])
    (root / "val2017" / image["file_name"]).unlink()
    return sum(a["image_id"] == image["id"] for a in crops), len(crops)


def test_coco_queries_that_are_the_gallery_are_checked_and_counted_once(tmp_path):
    root = synth("coco", tmp_path / "coco", seed=1, train_images=2, val_images=3)
    lost, total = coco_without_one_image(root)
    records = run_cli(object_retrieval, *SMALL, "--dataset", "coco", "--data-root", root, "--feature", "cls",
                      "--no-write", "--skip-bad-items")
    assert {r.protocol["bad_items_skipped"] for r in records} == {lost}
    assert all(r.protocol["num_eval"] == r.protocol["num_train"] == total - lost for r in records)


def test_object_boxes_outside_their_image_and_labels_out_of_range_are_problems(tmp_path):
    from probes.views.objects import ArrayImageView, ObjectCropView
    from probes.views.transforms import SquareResize

    transform = SquareResize(32, (0.5,) * 3, (0.5,) * 3)
    root = synth("coco", tmp_path / "coco", seed=1, train_images=2, val_images=2)
    view = ObjectCropView(root, "val2017", "square", 32, transform)
    path, (x, y, w, h), label = view.items[0]
    view.items[0] = (path, (x + 10_000, y, w, h), label)
    bad, = check_view(view)
    assert bad.index == 0 and bad.where == path and "lies outside the" in bad.problem
    smaller = without(view, [bad])
    assert len(smaller) == len(view) - 1 and smaller.items == view.items[1:] and len(smaller.dataset) == len(smaller)
    assert smaller.identity() != view.identity() and left_out_protocol(smaller) == {"bad_items_skipped": 1}

    images = np.zeros((3, 32, 32, 3), np.uint8)
    array = ArrayImageView("cifar10", tmp_path, "test", images, np.array([0, 1, 7]), ["a", "b"], transform, "x")
    bad, = check_view(array)
    assert bad.index == 2 and "label 7 is not a class index 0..1" in bad.problem
    with pytest.raises(BadItemsError, match="1 of 3 items fail the data check"):
        checked({"eval": array}, False, what="cifar10 here")
    assert len(checked({"eval": array}, True, what="cifar10 here")["eval"]) == 2


def test_an_image_folder_with_a_broken_file_stops_before_the_work(tmp_path):
    for split in ("train", "val"):
        for name in ("cat", "dog"):
            folder = tmp_path / "folder" / split / name
            folder.mkdir(parents=True)
            for i in range(2):
                Image.new("RGB", (24, 24), (i * 90, 40, 200 if name == "cat" else 10)).save(folder / f"{i}.jpg")
    broken = tmp_path / "folder" / "val" / "dog" / "1.jpg"
    broken.write_bytes(broken.read_bytes()[:200])
    with pytest.raises(BadItemsError, match=f"{broken}: image does not decode"):
        linear_probe.run(*configs(linear_probe, *SMALL, "--dataset", "folder", "--data-root", tmp_path / "folder",
                                  "--epochs", "1", "--no-write"))
    records = run_cli(linear_probe, *SMALL, "--dataset", "folder", "--data-root", tmp_path / "folder", "--epochs", "1",
                      "--no-write", "--skip-bad-items")
    assert records[0].protocol["num_eval"] == 3 and records[0].protocol["bad_items_skipped"] == 1


def test_a_record_with_items_left_out_gets_no_published_value():
    from probes.published import lookup

    official = {"include_self": True, "crop": "official-code", "keypoints": "paper"}
    assert lookup(task="cub_part_retrieval", model="dino", feature="patch_mean", protocol=official,
                  split="all").values == {"AP": 48.9}
    refused = lookup(task="cub_part_retrieval", model="dino", feature="patch_mean",
                     protocol={**official, "bad_items_skipped": 3}, split="all")
    assert refused.values == {} and any("bad_items_skipped=3" in reason for reason in refused.reasons)
