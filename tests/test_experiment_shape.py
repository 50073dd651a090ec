"""One shape for every experiment: a config dataclass saved beside each record replays the run exactly; an
option added to a shared config part reaches every script's --help, record and cache key with no other edit;
the kNN records of two scripts land in one leaderboard column."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import golden_model_args, run_cli
from probes import linear_probe, object_retrieval, part_retrieval
from probes.data.synth import synth
from probes.results import RunRecord, config_path_for, iter_record_paths

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_a_saved_config_replays_a_student_branch_run_at_another_input_size(shared, cub_root, tmp_path):
    first = run_cli(part_retrieval, *golden_model_args(shared / "golden" / "dino_vit_full"), "--branch", "student",
                    "--input-size", "96", "--data-root", cub_root, "--self-match", "excluded", "--feature",
                    "patch_mean", "--results", tmp_path / "a", "--data-source", "synthetic", "--quiet")
    record, = first
    assert record.protocol["weights_branch"] == "student" and record.protocol["input_size"] == 96
    path, = iter_record_paths(tmp_path / "a")
    config = json.loads(config_path_for(path).read_text())
    assert config["model"]["branch"] == "student" and config["model"]["input_size"] == 96
    # from another directory, with only the saved file (and a new results folder)
    os.chdir(tmp_path)
    again, = run_cli(part_retrieval, "--config", config_path_for(path), "--results", tmp_path / "b")
    assert again.config_hash == record.config_hash and again.run_id != record.run_id
    assert again.metrics == record.metrics and again.protocol == record.protocol
    assert again.data_sha256 == record.data_sha256 and again.checkpoint_sha256 == record.checkpoint_sha256
    replayed, = iter_record_paths(tmp_path / "b")
    assert json.loads(config_path_for(replayed).read_text()) == {**config, "output": {**config["output"],
                                                                                   "results": str(tmp_path / "b")}}


FAKE = '''
    fake_probe_option: int = option(7, help="A fake option, added by a test to one shared part (ModelOptions).")
'''


@pytest.mark.slow
def test_a_new_shared_option_reaches_every_script_without_other_edits(cub_root, tmp_path):
    copy = tmp_path / "repo"
    shutil.copytree(REPO / "probes", copy / "probes", ignore=shutil.ignore_patterns("__pycache__"))
    options = copy / "probes" / "options.py"
    text = options.read_text()
    anchor = "    mae_token_shuffle: bool | None = option("
    assert anchor in text
    options.write_text(text.replace(anchor, FAKE.lstrip("\n") + anchor, 1))          # the only edit
    cifar = synth("cifar10", tmp_path / "cifar", seed=0, train_per_class=4, test_per_class=2)
    lip = synth("lip", tmp_path / "lip", seed=0)
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("PARTPROBE_")},
           "PYTHONPATH": str(copy), "PARTPROBE_HOME": str(tmp_path / "home"), "OMP_NUM_THREADS": "1"}
    small = ["--input-size", "32"]
    runs = {"part_retrieval": [*small, "--data-root", cub_root],
            "object_retrieval": [*small, "--data-root", cifar, "--no-knn"],
            "linear_probe": [*small, "--data-root", cub_root, "--epochs", "1", "--no-knn"],
            "attentive_probe": [*small, "--data-root", cub_root, "--epochs", "1"],
            "part_segmentation": ["--dataset", "lip", "--data-root", lip, "--protocol", "dense",
                                  "--dense-input-size", "64"],
            "patch_grid": None, "detection": None}          # detection's run needs detectron2: --help only
    for script, args in runs.items():
        command = [sys.executable, str(copy / "probes" / f"{script}.py")]
        help_text = subprocess.run(command + ["--help"], env=env, capture_output=True, text=True, timeout=120).stdout
        assert "--fake-probe-option" in help_text, script
        if args is None:
            continue
        results = tmp_path / "results" / script
        done = subprocess.run(command + ["--model", "colorstats", "--fake-probe-option", "3",
                                         "--results", str(results), "--data-source", "synthetic", "--quiet",
                                         *map(str, args)], env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, f"{script}:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
        records = [RunRecord.load(p) for p in iter_record_paths(results)]
        assert records and all(r.protocol["fake_probe_option"] == 3 for r in records), script
    keys = [json.loads(p.read_text()) for p in (tmp_path / "home" / "features").glob("*/key.json")]
    assert keys and all(k["key"]["encoder"]["load_options"]["fake_probe_option"] == 3 for k in keys)


@pytest.mark.slow
def test_knn_records_of_object_retrieval_and_the_linear_probe_share_one_column(tmp_path):
    from analysis import leaderboard

    cifar = synth("cifar10", tmp_path / "cifar", seed=0, train_per_class=6, test_per_class=3)
    same = ["--dataset", "cifar10", "--data-root", cifar, "--feature", "cls", "--input-size", "32",
            "--image-transform", "eval", "--normalize", "model", "--results", tmp_path / "results",
            "--data-source", "synthetic", "--quiet"]
    by_object = {r.probe: r for r in run_cli(object_retrieval, "--model", "colorstats", *same)}["knn"]
    by_linear = {r.probe: r for r in run_cli(linear_probe, "--model", "pixels", *same, "--epochs", "1")}["knn"]
    assert set(by_object.protocol) == set(by_linear.protocol)
    again = {r.probe: r for r in run_cli(linear_probe, "--model", "colorstats", *same, "--epochs", "1")}["knn"]
    assert again.config_hash == by_object.config_hash and again.metrics == by_object.metrics  # one configuration
    summary = leaderboard.export([tmp_path / "results"], tmp_path / "board.csv")
    import csv
    with open(summary.out, newline="") as f:
        rows = {row["model"]: row for row in csv.DictReader(f)}
    column = "cifar10_knn/top1 [cls]"
    assert float(rows["colorstats"][column]) == by_object.metrics["cifar10_knn/top1"]
    assert float(rows["pixels"][column]) == by_linear.metrics["cifar10_knn/top1"]
    assert not [c for c in rows["colorstats"] if c.startswith("cifar10_knn/top1 [") and c != column]


def test_at_their_defaults_the_two_knn_records_split_only_by_the_transform_not_by_the_data(tmp_path):
    """object_retrieval resizes whole images with ImageNet statistics, linear_probe takes the model's eval
    transform: two protocols, so two columns; but the data is one, and the columns say only what differs."""
    from analysis import leaderboard

    cifar = synth("cifar10", tmp_path / "cifar", seed=0, train_per_class=6, test_per_class=3)
    common = ["--model", "colorstats", "--dataset", "cifar10", "--data-root", cifar, "--feature", "cls",
              "--results", tmp_path / "results", "--data-source", "synthetic", "--quiet"]
    by_object = {r.probe: r for r in run_cli(object_retrieval, *common)}["knn"]
    by_linear = {r.probe: r for r in run_cli(linear_probe, *common, "--epochs", "1")}["knn"]
    assert by_object.data_sha256 == by_linear.data_sha256
    assert by_object.protocol["image_transform"] != by_linear.protocol["image_transform"]
    summary = leaderboard.export([tmp_path / "results"], tmp_path / "board.csv")
    import csv
    with open(summary.out, newline="") as f:
        (row,) = list(csv.DictReader(f))
    columns = [c for c in row if c.startswith("cifar10_knn/top1 [") and row[c]]
    assert len(columns) == 2 and not any("data=" in c for c in columns), columns
    assert all("image_transform=" in c for c in columns)
