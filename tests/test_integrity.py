"""Integrity of the numbers (issue 16) through the command line: different data, another format or an edited
record never pass for the same configuration, and a failure while writing leaves no partial set of records."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import golden_model_args
from probes.data.synth import synth
from probes.results import RunRecord, iter_record_paths

REPO = Path(__file__).resolve().parents[1]


def script(name, *args, env=None, home=None):
    environment = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    if home is not None:
        environment["PARTPROBE_HOME"] = str(home)
    return subprocess.run([sys.executable, str(REPO / "probes" / f"{name}.py"), *map(str, args)], cwd=REPO,
                          env=environment, capture_output=True, text=True, timeout=300)


def records(folder) -> list[RunRecord]:
    return [RunRecord.load(p) for p in iter_record_paths(folder)] if Path(folder).is_dir() else []


@pytest.mark.slow
def test_the_same_command_on_two_datasets_or_two_formats_is_two_configurations(shared, tmp_path):
    first, second = synth("cub", tmp_path / "cub_a", seed=0, images=12), synth("cub", tmp_path / "cub_b", seed=1,
                                                                              images=12)
    common = ["--model", "colorstats", "--feature", "cls", "--data-source", "synthetic", "--quiet"]
    for root, out in ((first, "a"), (second, "b")):
        done = script("part_retrieval", *common, "--data-root", root, "--results", tmp_path / out, home=tmp_path)
        assert done.returncode == 0, done.stderr
    (a,), (b,) = records(tmp_path / "a"), records(tmp_path / "b")
    assert a.data_sha256 != b.data_sha256 and a.config_hash != b.config_hash
    # one DINO file read as dino_full and as ibot_full (both layouts hold a teacher and a student)
    dino = golden_model_args(shared / "golden" / "dino_vit_full")
    hashes = {}
    for fmt in ("dino_full", "ibot_full"):
        args = list(dino)
        args[args.index("--format") + 1] = fmt
        done = script("part_retrieval", *args, "--data-root", first, "--feature", "patch_mean", "--results",
                      tmp_path / fmt, "--data-source", "synthetic", "--quiet", home=tmp_path)
        assert done.returncode == 0, done.stderr
        (record,) = records(tmp_path / fmt)
        assert record.format == fmt
        hashes[fmt] = record.config_hash
    assert hashes["dino_full"] != hashes["ibot_full"]


@pytest.mark.slow
def test_one_file_built_with_two_head_counts_is_two_models_and_neither_supersedes(shared, tmp_path):
    """The case a reviewer found: one DINO file with --arch-kwargs num_heads 4 and 8 gave two different APs under
    one config_hash and one label, and the leaderboard kept the later (wrong-head) run."""
    cub = synth("cub", tmp_path / "cub", seed=0, images=12)
    base = golden_model_args(shared / "golden" / "dino_vit_full")
    kwargs = json.loads(base[base.index("--arch-kwargs") + 1])
    for heads in (4, 8):
        args = list(base)
        args[args.index("--arch-kwargs") + 1] = json.dumps({**kwargs, "num_heads": heads})
        done = script("part_retrieval", *args, "--data-root", cub, "--feature", "patch_mean", "--results",
                      tmp_path / "r", "--quiet", home=tmp_path)
        assert done.returncode == 0, done.stderr
    four, eight = sorted(records(tmp_path / "r"), key=lambda r: "num_heads=8" in r.arch)
    assert "num_heads=4" in four.arch and "num_heads=8" in eight.arch
    assert four.config_hash != eight.config_hash and four.model != eight.model
    assert four.metrics != eight.metrics                      # the build changes the number: it must be told apart
    assert four.model.startswith(f"checkpoint-{four.checkpoint_sha256[:8]}-")
    out = tmp_path / "board.csv"
    done = subprocess.run([sys.executable, "-m", "analysis.leaderboard", "--results", str(tmp_path / "r"), "--out",
                           str(out)], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    rows = out.read_text().splitlines()
    assert sorted(line.split(",")[0] for line in rows[1:]) == sorted([four.model, eight.model])
    assert len(out.with_suffix(".superseded.csv").read_text().splitlines()) == 1     # header only


@pytest.mark.slow
def test_a_hand_edited_record_is_refused_by_the_leaderboard(tmp_path):
    cub = synth("cub", tmp_path / "cub", seed=0, images=12)
    done = script("part_retrieval", "--model", "colorstats", "--data-root", cub, "--feature", "cls",
                  "--results", tmp_path / "results", "--data-source", "synthetic", "--quiet", home=tmp_path)
    assert done.returncode == 0, done.stderr
    path, = iter_record_paths(tmp_path / "results")
    data = json.loads(path.read_text())
    data["metrics"]["cub_part_retrieval/AP"] = 99.9
    path.write_text(json.dumps(data))
    board = subprocess.run([sys.executable, "-m", "analysis.leaderboard", "--results", str(tmp_path / "results"),
                            "--out", str(tmp_path / "board.csv")], cwd=REPO, capture_output=True, text=True,
                           timeout=120)
    assert board.returncode == 2 and str(path) in board.stderr and "content_sha256" in board.stderr
    assert not (tmp_path / "board.csv").exists()


SHIM = '''
import errno, probes.results as results
real, calls = results.write_json_atomic, []
def full_disk(path, obj, *a, **k):
    calls.append(path)
    if len(calls) == 3:
        raise OSError(errno.ENOSPC, "No space left on device", str(path))
    return real(path, obj, *a, **k)
results.write_json_atomic = full_disk
'''


@pytest.mark.slow
def test_a_full_disk_while_writing_leaves_no_record_and_the_rerun_writes_all(tmp_path):
    cub = synth("cub", tmp_path / "cub", seed=0, images=12)
    (tmp_path / "shim").mkdir()
    (tmp_path / "shim" / "sitecustomize.py").write_text(SHIM)
    args = ["--model", "colorstats", "--data-root", cub, "--self-match", "both", "--results", tmp_path / "results",
            "--data-source", "synthetic", "--quiet"]
    failed = script("part_retrieval", *args, env={"PYTHONPATH": str(tmp_path / "shim")}, home=tmp_path)
    assert failed.returncode != 0 and "No space left on device" in failed.stderr
    assert records(tmp_path / "results") == []
    assert not [p for p in (tmp_path / "results").rglob("*") if p.is_file()]       # no partial set, no orphan
    again = script("part_retrieval", *args, home=tmp_path)                         # features come from the cache
    assert again.returncode == 0, again.stderr
    assert len(records(tmp_path / "results")) == 4


def test_an_unwritable_results_folder_stops_before_the_work(tmp_path):
    cub = synth("cub", tmp_path / "cub", seed=0, images=12)
    blocked = tmp_path / "a_file"
    blocked.write_text("not a folder")          # a folder cannot be made under a file, even by root
    done = script("part_retrieval", "--model", "colorstats", "--data-root", cub, "--results", blocked / "r",
                  "--data-source", "synthetic", "--quiet", home=tmp_path)
    assert done.returncode == 2 and str(blocked / "r") in done.stderr and "cannot write" in done.stderr
    assert "Traceback" not in done.stderr and not (tmp_path / "features").exists()
    # the feature cache under PARTPROBE_HOME: the message says which setting moves it
    done = script("part_retrieval", "--model", "colorstats", "--data-root", cub, "--results", tmp_path / "r",
                  "--data-source", "synthetic", "--quiet", home=blocked / "home")
    assert done.returncode == 2 and str(blocked / "home" / "features") in done.stderr
    assert "PARTPROBE_HOME" in done.stderr and "--no-cache" in done.stderr and records(tmp_path / "r") == []
