"""Bad input through every command, as a user types it (a subprocess from a checkout): each case ends with exit
status 2 and one message naming the option or the file, no traceback, and neither a record nor a feature-cache
entry written. The data cases are found by the data check before any feature is computed, every problem at once.

Each case is (command, arguments, what the message must name); ``{name}`` in them is a path of the fixtures.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from probes.data.generated import MARKER
from probes.data.synth import synth
from probes.results import iter_record_paths

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow
COLOR = ["--model", "colorstats", "--input-size", "32"]
PAPER_PARTS = (11, 12, 9, 14)


def cub_paths(root: Path) -> dict[int, Path]:
    folder = root / "CUB_200_2011"
    lines = (folder / "images.txt").read_text().split("\n")
    return {int(i): folder / "images" / rel for i, rel in (line.split() for line in lines if line.strip())}


def keypoint_outside(root: Path) -> Path:
    """Move one visible paper keypoint of an intact image with several of them to x = 5000; returns its image."""
    locs = root / "CUB_200_2011" / "parts" / "part_locs.txt"
    rows = [line.split() for line in locs.read_text().split("\n") if line.strip()]
    visible = {}
    for image_id, part_id, _, _, shown in rows:
        if int(part_id) in PAPER_PARTS and shown == "1":
            visible.setdefault(int(image_id), []).append(int(part_id))
    image_id = max((i for i in visible if i >= 5), key=lambda i: len(visible[i]))
    for row in rows:
        if int(row[0]) == image_id and int(row[1]) == visible[image_id][0]:
            row[2] = "5000.0"
    locs.write_text("\n".join(" ".join(row) for row in rows) + "\n")
    return cub_paths(root)[image_id]


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    """Generated datasets, copies of them with one damage each, and bad files."""
    base = tmp_path_factory.mktemp("bad_inputs")
    out = {"cub": synth("cub", base / "cub", seed=2, images=8), "coco": synth("coco", base / "coco", seed=1,
                                                                              train_images=3, val_images=3)}

    def damaged(name: str, source: str = "cub") -> Path:
        root = base / name
        shutil.copytree(out[source], root)
        out[name] = root
        return root

    images = cub_paths(damaged("cub_missing"))
    images[1].unlink()
    out["missing_image"] = images[1]
    images = cub_paths(damaged("cub_truncated"))
    truncate(images[2])
    out["truncated_image"] = images[2]
    images = cub_paths(damaged("cub_text"))
    images[3].write_text("not a picture")
    out["text_image"] = images[3]
    images = cub_paths(damaged("cub_unreadable"))
    images[4].chmod(0)
    out["unreadable_image"] = images[4]
    out["outside_image"] = keypoint_outside(damaged("cub_keypoint"))
    images = cub_paths(damaged("cub_all"))
    images[1].unlink()
    truncate(images[2])
    out["all_missing_image"], out["all_truncated_image"] = images[1], images[2]
    out["all_outside_image"] = keypoint_outside(out["cub_all"])

    coco = damaged("coco_missing", "coco")
    instances = json.loads((coco / "annotations" / "instances_val2017.json").read_text())
    used = {a["image_id"] for a in instances["annotations"] if min(a["bbox"][2:]) >= 32 and not a["iscrowd"]}
    name = next(i["file_name"] for i in instances["images"] if i["id"] in used)
    (coco / "val2017" / name).unlink()
    out["coco_missing_image"] = coco / "val2017" / name
    coco = damaged("coco_keypoint", "coco")
    keypoints_file = coco / "annotations" / "person_keypoints_train2017.json"
    persons = json.loads(keypoints_file.read_text())
    person = next(a for a in persons["annotations"] if sum(a["keypoints"][3 * (k - 1) + 2] == 2 for k in (1, 11, 16)) >= 2)
    nose = next(k for k in (1, 11, 16) if person["keypoints"][3 * (k - 1) + 2] == 2)
    person["keypoints"][3 * (nose - 1)] = 100000.0
    keypoints_file.write_text(json.dumps(persons))
    out["coco_outside_image"] = coco / "train2017" / next(i["file_name"] for i in persons["images"]
                                                          if i["id"] == person["image_id"])

    lip = synth("lip-19", base / "lip19", seed=0, train_images=2, val_images=1)
    out["lip19"] = lip
    label = sorted((damaged("lip19_label", "lip19") / "ann" / "train").glob("*.png"))[0]
    values = np.asarray(Image.open(label)).copy()
    values[0, 0] = 77
    Image.fromarray(values).save(label)
    out["bad_label_map"] = label

    folder = base / "images"
    folder.mkdir()
    good = cub_paths(out["cub"])
    shutil.copy(good[1], folder / "a.jpg")
    (folder / "b.jpg").write_text("not a picture")
    out["images"], out["text_in_folder"] = folder, folder / "b.jpg"
    out["truncated_checkpoint"] = base / "truncated.pth"
    out["truncated_checkpoint"].write_bytes((REPO.parent / "shared/golden/deit_vit/checkpoint.pth").read_bytes()[:3000]
                                            if (REPO.parent / "shared/golden").is_dir() else b"PK\x03\x04" + b"0" * 3000)
    out["text_checkpoint"] = base / "notes.safetensors"
    out["text_checkpoint"].write_text("hello")
    out["bad_json"] = base / "bad.json"
    out["bad_json"].write_text("{oops")
    out["missing"] = base / "nowhere"
    return out


# (id, command, arguments, words the message must contain). A command is a script of probes/ or "-m module".
PR, LP, AP, OR, PG, SEG = ("part_retrieval", "linear_probe", "attentive_probe", "object_retrieval", "patch_grid",
                           "part_segmentation")
CUB = ["--data-root", "{cub}"]
CASES = [
    # option values, at parse time (or, for what depends on the model, when it is loaded)
    ("batch-size", PR, [*COLOR, *CUB, "--batch-size", "0"], ["--batch-size 0", ">= 1"]),
    ("num-workers", PR, [*COLOR, *CUB, "--num-workers", "-1"], ["--num-workers -1", ">= 0"]),
    ("block-negative", PR, [*COLOR, *CUB, "--block", "-1"], ["--block -1", ">= 0"]),
    ("block-depth", PR, [*COLOR, *CUB, "--block", "5"], ["--block 5", "0..0"]),
    ("input-size-zero", PR, ["--model", "colorstats", "--input-size", "0", *CUB], ["--input-size 0"]),
    ("input-size-patch", PR, ["--model", "colorstats", "--input-size", "30", *CUB], ["input_size 30", "16 or 32"]),
    ("feature-name", PR, [*COLOR, *CUB, "--feature", "foo"], ["--feature", "patch_mean"]),
    ("feature-projection", PR, [*COLOR, *CUB, "--feature", "projection"], ["--feature projection", "no projection"]),
    ("device-name", PR, [*COLOR, *CUB, "--device", "gpu"], ["--device gpu", "cuda:N"]),
    ("split-name", PR, [*COLOR, *CUB, "--split", "val"], ["--split val", "train, test"]),
    ("preset-name", PR, [*COLOR, *CUB, "--preset", "fast"], ["--preset"]),
    ("model-name", PR, ["--model", "nosuchmodel", *CUB], ["nosuchmodel", "aliases"]),
    ("model-file", PR, ["--model", "{missing}/model.pth", *CUB], ["{missing}/model.pth"]),
    ("name-for-two", PR, ["--model", "colorstats", "--model", "pixels", "--name", "mine", *CUB], ["--name mine"]),
    ("data-root", PR, [*COLOR, "--data-root", "{missing}"], ["{missing}"]),
    ("official-on-generated", PR, [*COLOR, *CUB, "--data-source", "official"], ["--data-source official", MARKER]),
    ("config-missing", PR, [*COLOR, *CUB, "--config", "{missing}/config.json"], ["{missing}/config.json"]),
    ("config-json", PR, [*COLOR, *CUB, "--config", "{bad_json}"], ["{bad_json}", "JSON"]),
    ("epochs", LP, [*COLOR, *CUB, "--epochs", "0"], ["--epochs 0"]),
    ("learning-rate", LP, [*COLOR, *CUB, "--lr", "0"], ["--lr 0"]),
    ("knn-ks", LP, [*COLOR, *CUB, "--knn-ks", "10", "0", "--knn-k", "10"], ["--knn-ks 10 0"]),
    ("num-heads", AP, [*COLOR, *CUB, "--num-heads", "0"], ["--num-heads 0"]),
    ("capi-width", AP, [*COLOR, *CUB, "--head", "capi", "--epochs", "1"], ["--head capi", "64"]),
    ("coco-split", OR, [*COLOR, "--dataset", "coco", "--data-root", "{coco}", "--split", "train2018"],
     ["--split train2018", "val2017"]),
    ("min-box-size", OR, [*COLOR, "--dataset", "coco", "--data-root", "{coco}", "--min-box-size", "-3"],
     ["--min-box-size -3"]),
    ("query-cell", PG, [*COLOR, "--images", "{images}", "--query", "a.jpg:9,3", "--out", "{missing}/g.png"],
     ["--query", "0..6"]),
    ("grid-k", PG, [*COLOR, "--images", "{images}", "--query", "a.jpg:3,3", "--k", "0", "--out", "{missing}/g.png"],
     ["--k 0"]),
    ("seg-dataset", SEG, ["--model", "colorstats", "--dataset", "nonsense", *CUB], ["--dataset", "nonsense"]),
    ("seg-layers", SEG, ["--model", "colorstats", "--dataset", "lip-19", "--data-root", "{lip19}", "--protocol", "dense",
                         "--layers", "3"], ["layers 3", "0..0"]),
    ("seg-skip", SEG, ["--model", "colorstats", "--dataset", "lip-19", "--data-root", "{lip19}", "--protocol", "dense",
                       "--skip-bad-items"], ["--skip-bad-items"]),
    # checkpoints
    ("truncated-checkpoint", PR, ["--model", "{truncated_checkpoint}", *CUB], ["{truncated_checkpoint}"]),
    ("text-checkpoint", PR, ["--model", "{text_checkpoint}", *CUB], ["{text_checkpoint}", "text file"]),
    # data: found by the check before the work, every problem listed
    ("missing-image", PR, [*COLOR, "--data-root", "{cub_missing}"], ["{missing_image}", "not found", "--skip-bad-items"]),
    ("truncated-image", PR, [*COLOR, "--data-root", "{cub_truncated}"], ["{truncated_image}", "truncated"]),
    ("text-image", PR, [*COLOR, "--data-root", "{cub_text}"], ["{text_image}", "not an image"]),
    ("unreadable-image", PR, [*COLOR, "--data-root", "{cub_unreadable}"], ["{unreadable_image}", "permission"]),
    ("keypoint-outside", PR, [*COLOR, "--data-root", "{cub_keypoint}"], ["{outside_image}", "5000", "outside"]),
    ("every-problem", PR, [*COLOR, "--data-root", "{cub_all}"],
     ["{all_missing_image}", "{all_truncated_image}", "{all_outside_image}", "fail the data check"]),
    ("missing-image-classification", LP, [*COLOR, "--data-root", "{cub_missing}"], ["{missing_image}"]),
    ("coco-object-image", OR, [*COLOR, "--dataset", "coco", "--data-root", "{coco_missing}"],
     ["{coco_missing_image}", "not found"]),
    ("coco-keypoint-outside", PR, [*COLOR, "--dataset", "coco", "--data-root", "{coco_keypoint}"],
     ["{coco_outside_image}", "outside", "annotation id"]),
    ("label-map-value", SEG, ["--model", "colorstats", "--dataset", "lip-19", "--data-root", "{lip19_label}",
                              "--protocol", "dense"], ["{bad_label_map}", "value 77", "0..19"]),
    ("folder-image", PG, [*COLOR, "--images", "{images}", "--query", "a.jpg:3,3", "--out", "{missing}/g.png"],
     ["{text_in_folder}", "not an image"]),
    # the other commands
    ("synth-size", "-m probes.data", ["synth", "cifar10", "--out", "{missing}/c", "--size", "images=5"],
     ["--size images=5", "train_per_class"]),
    ("synth-value", "-m probes.data", ["synth", "cub", "--out", "{missing}/c", "--size", "images=0"], ["--size images=0"]),
    ("prepare-archive", "-m probes.data", ["prepare", "cub", "--root", "{missing}"], ["{missing}/CUB_200_2011.tgz"]),
    ("zoo-name", "-m probes.zoo", ["info", "nosuchmodel"], ["nosuchmodel"]),
    ("zoo-detect", "-m probes.zoo", ["detect", "{text_checkpoint}"], ["{text_checkpoint}"]),
    ("leaderboard-results", "-m analysis.leaderboard", ["--results", "{missing}", "--out", "{missing}/l.csv"],
     ["{missing}"]),
    ("figures-results", "-m analysis.figures", ["--results", "{missing}", "--out", "{missing}/figures"], ["{missing}"]),
    ("grid-record", "-m analysis.retrieval_grid", ["--record", "{missing}/r.json", "--out", "{missing}/g.png"],
     ["{missing}/r.json"]),
    ("published-table", "-m probes.published", ["--table", "5"], ["--table"]),
]


def command(script: str) -> list[str]:
    return [sys.executable, *script.split()] if script.startswith("-m ") else [sys.executable, f"probes/{script}.py"]


def run(script: str, args: list[str], home: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    environment = {**os.environ, "PARTPROBE_HOME": str(home), "PYTHONPATH": "", "OMP_NUM_THREADS": "1",
                   "PARTPROBE_DEBUG": "", **(env or {})}
    return subprocess.run([*command(script), *args], cwd=REPO, env=environment, capture_output=True, text=True,
                          timeout=300)


def filled(items, data) -> list[str]:
    return [str(item).format(**{k: str(v) for k, v in data.items()}) for item in items]


@pytest.mark.parametrize("case, script, args, words", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_message_and_writes_nothing(case, script, args, words, data, tmp_path):
    if case == "unreadable-image" and os.geteuid() == 0:
        pytest.skip("root reads a file without read permission")
    home, results = tmp_path / "home", tmp_path / "results"
    experiment = not script.startswith("-m ")
    done = run(script, filled(args, data) + (["--results", str(results)] if experiment else []), home)
    printed = done.stdout + done.stderr
    assert done.returncode == 2, printed
    assert "Traceback" not in printed, printed
    assert "error: " in done.stderr, printed
    for word in filled(words, data):
        assert word in done.stderr, (word, done.stderr)
    assert not (results.is_dir() and list(iter_record_paths(results))), "a record was written"
    assert not [p for p in (home / "features").rglob("*") if p.is_file()], "a feature-cache entry was written"


def test_debug_shows_the_traceback_of_the_same_error(data, tmp_path):
    args = filled([*COLOR, *CUB, "--batch-size", "0"], data)
    for extra, env in ((["--debug"], None), ([], {"PARTPROBE_DEBUG": "1"})):
        done = run(PR, args + extra, tmp_path / "home", env)
        assert done.returncode == 1 and "Traceback" in done.stderr and "ConfigError: --batch-size 0" in done.stderr
    done = run("-m probes.zoo", ["--debug", "info", "nosuchmodel"], tmp_path / "home")
    assert done.returncode == 1 and "RegistryError" in done.stderr


def test_every_error_class_of_the_suite_is_a_user_error():
    """The policy catches ``UserError``: every exception class the suite defines must derive from it."""
    import importlib
    import pkgutil

    import analysis
    import probes
    from probes.errors import UserError

    found = []
    for package in (probes, analysis):
        for module in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
            if module.name.endswith("__main__") or ".adapters" in module.name:
                continue
            loaded = importlib.import_module(module.name)
            found += [value for value in vars(loaded).values() if isinstance(value, type)
                      and issubclass(value, Exception) and value.__module__ == loaded.__name__]
    assert {cls.__name__ for cls in found} >= {"ConfigError", "DatasetFormatError", "RecordError", "ZooError",
                                               "LeaderboardError", "GridError", "BadItemsError"}
    assert [cls for cls in found if not issubclass(cls, UserError)] == []
