"""Generated data can never meet the paper: every generator marks its dataset, converters carry the mark, and a
run on marked data records ``data_source: synthetic`` whatever the options say (``official`` is an error)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from probes.data.generated import MARKER, carry_marker, find_marker
from probes.data.synth import GENERATORS, synth
from probes.results import RunRecord, iter_record_paths

REPO = Path(__file__).resolve().parents[1]
SMALL = {"cub": {"images": 4}, "coco": {"train_images": 2, "val_images": 2},
         "coco-instances": {"train_images": 1, "val_images": 1}, "cifar10": {"train_per_class": 1},
         "lip": {"train_images": 1, "val_images": 1}}


@pytest.mark.parametrize("name", sorted(GENERATORS))
def test_every_generator_marks_the_folder_it_returns(name, tmp_path):
    sizes = SMALL.get(name, {})
    if name in ("ade20k-part-209", "ade20k-object-59", "pascal-part-193", "pascal-object-16", "lip-19"):
        sizes = {"train_images": 1, "val_images": 1}
    root = synth(name, tmp_path / "out", seed=0, **sizes)
    marker = json.loads((root / MARKER).read_text())
    assert marker["generated_by"] == "partprobe" and marker["seed"] == 0 and "never compared" in marker["note"]
    assert {k: marker["sizes"][k] for k in sizes} == sizes
    inside = next(p for p in root.rglob("*") if p.is_dir())
    assert find_marker(inside) == root / MARKER                  # a reader pointed inside the tree still sees it


def test_find_marker_looks_up_not_down_and_converters_carry_it(tmp_path):
    root = synth("cub", tmp_path / "made", images=3)
    assert find_marker(tmp_path) is None                        # the folder above a generated one is not generated
    assert find_marker(root / "CUB_200_2011" / "images") == root / MARKER
    assert carry_marker(tmp_path / "elsewhere", tmp_path / "converted") is None
    (tmp_path / "converted").mkdir()
    copied = carry_marker(root, tmp_path / "converted")
    assert copied == tmp_path / "converted" / MARKER and "converted" in json.loads(copied.read_text())["generator"]


def run(args, home, check=True):
    env = {**os.environ, "PARTPROBE_HOME": str(home), "PYTHONPATH": "", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    if check:
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


@pytest.mark.slow
def test_a_run_on_generated_data_is_synthetic_without_any_option_and_official_is_refused(tmp_path):
    """The case of the issue: part retrieval on `python -m probes.data synth cub` data was compared with the
    paper's 48.9. Now its record says synthetic, carries no published value or delta, and the same protocol on
    official data would have been compared (so it is the data that refuses, not the protocol)."""
    from probes.published import lookup

    home = tmp_path / "home"
    run(["-m", "probes.data", "synth", "cub", "--out", str(tmp_path / "cub"), "--size", "images=8"], home)
    check = run(["-m", "probes.data", "check", "cub", "--root", str(tmp_path / "cub")], home)
    assert f"generated data (marker {tmp_path / 'cub' / MARKER})" in check.stdout
    args = ["probes/part_retrieval.py", "--model", "colorstats", "--input-size", "32", "--data-root",
            str(tmp_path / "cub" / "CUB_200_2011"), "--feature", "patch_mean", "--results", str(tmp_path / "r")]
    printed = run(args, home).stdout
    assert "generated data: these numbers are never compared with the paper" in printed
    record, = [RunRecord.load(p) for p in iter_record_paths(tmp_path / "r")]
    assert record.protocol["data_source"] == "synthetic" and record.protocol["synthetic"] is True
    assert record.published == {} and record.delta == {}
    config = json.loads((next(iter_record_paths(tmp_path / "r")).parent / "config.json").read_text())
    assert config["data"]["data_source"] == "synthetic"           # a replay of the config says it too
    paper = lookup(task=record.task, model="dino", feature="patch_mean", protocol=record.protocol, split=record.split)
    assert paper.values == {} and any("data_source='synthetic'" in reason for reason in paper.reasons)
    official = {k: v for k, v in record.protocol.items() if k not in ("data_source", "synthetic", "input_size")}
    assert lookup(task=record.task, model="dino", feature="patch_mean", protocol={**official, "precision": "fp32"},
                  split=record.split).values == {"AP": 48.9}
    refused = run([*args, "--data-source", "official"], home, check=False)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert f"--data-source official: {(tmp_path / 'cub' / 'CUB_200_2011').resolve()} is generated data" in refused.stderr
    assert len(list(iter_record_paths(tmp_path / "r"))) == 1


def test_unmarked_data_is_official_unless_told_otherwise(tmp_path):
    from conftest import run_cli
    from probes import part_retrieval

    root = synth("cub", tmp_path / "cub", images=4)
    (root / MARKER).unlink()                                    # as if it were a real dataset
    options = ["--model", "colorstats", "--input-size", "32", "--data-root", root, "--no-write", "--quiet"]
    assert run_cli(part_retrieval, *options)[0].protocol["data_source"] == "official"
    told = run_cli(part_retrieval, *options, "--data-source", "synthetic")[0]
    assert told.protocol["data_source"] == "synthetic" and told.protocol["synthetic"] is True
