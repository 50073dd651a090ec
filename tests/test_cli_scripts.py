"""The user's commands, exactly as typed: `python probes/<script>.py ...` run as files from a checkout,
from the golden DINO full checkpoint (the original code's file layout) on generated CUB data."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from probes.results import RunRecord, iter_record_paths

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cub(tmp_path_factory):
    from probes.data.synth import synth

    return synth("cub", tmp_path_factory.mktemp("cub"), seed=1, images=24)


def golden_args(shared: Path) -> list[str]:
    case = shared / "golden" / "dino_vit_full"
    target = json.loads((case / "meta.json").read_text())["timm_target"]["this_golden"]
    return ["--model", str(case / "checkpoint.pth"), "--format", "dino_full", "--arch", target["create_model"],
            "--arch-kwargs", json.dumps(target["kwargs"])]


def run_script(script: str, args: list[str], home: Path) -> str:
    env = {**os.environ, "PARTPROBE_HOME": str(home), "PYTHONPATH": ""}  # no help from an installed path
    done = subprocess.run([sys.executable, f"probes/{script}.py", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, f"{script} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


@pytest.mark.slow
@pytest.mark.parametrize("script, extra, probes_written", [
    ("part_retrieval", ["--self-match", "both"], {"part_retrieval"}),
    ("linear_probe", ["--epochs", "2", "--train-batch-size", "32"], {"linear_probe", "knn"}),
    ("attentive_probe", ["--epochs", "1", "--train-batch-size", "32"], {"attentive_probe"}),
])
def test_script_runs_golden_checkpoint_end_to_end(shared, cub, tmp_path, script, extra, probes_written):
    results = tmp_path / "results"
    printed = run_script(script, [*golden_args(shared), "--dataset", "cub", "--data-root", str(cub),
                                  "--results", str(results), "--data-source", "synthetic", *extra], tmp_path / "home")
    records = [RunRecord.load(p) for p in iter_record_paths(results)]
    assert records, printed
    assert {r.probe for r in records} == probes_written
    digest = hashlib.sha256((shared / "golden/dino_vit_full/checkpoint.pth").read_bytes()).hexdigest()
    assert {r.checkpoint_sha256 for r in records} == {digest}      # the record names the exact file
    assert all(r.protocol["data_source"] == "synthetic" and not r.published for r in records)
    for record in records:
        assert (record.metrics and all(0.0 <= v <= 100.0 for k, v in record.metrics.items()
                                       if not k.endswith("best_epoch")))


def test_every_partprobe_command_answers_help(tmp_path):
    """`partprobe COMMAND --help` for each listed command: each is importable and explains its options (detection
    included: its help needs no detectron2)."""
    import os
    import subprocess
    import sys

    from probes.__main__ import COMMANDS

    env = {**os.environ, "PARTPROBE_HOME": str(tmp_path), "PYTHONPATH": ""}
    for name in COMMANDS:
        done = subprocess.run([sys.executable, "-m", "probes", name, "--help"], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0 and "usage:" in done.stdout.lower(), f"{name}: {done.stdout[-500:]}{done.stderr[-1500:]}"
    assert {"part-segmentation", "detection", "published"} <= set(COMMANDS)
