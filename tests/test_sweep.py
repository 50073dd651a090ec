"""Sweeps (probes.sweep): a killed sweep reruns only what did not finish, a failing cell is reported and does not
stop the others, and the Slurm executor's jobs (through submitit's local executor) do the same."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from probes.results import RunRecord, iter_record_paths

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from probes.data.synth import synth
    root = tmp_path_factory.mktemp("data")
    return synth("cub", root / "cub", seed=0, images=20), synth("coco", root / "coco", seed=0, train_images=6,
                                                                   val_images=2)


def sweep_file(path: Path, data, results: Path, models) -> Path:
    cub, coco = data
    path.write_text(f"""
results: {results}
models: [{', '.join(models)}]
experiments: [part-retrieval, object-retrieval]
datasets:
  cub: {{data-root: {cub}, data-source: synthetic}}
  coco: {{data-root: {coco}, data-source: synthetic}}
options: {{input-size: 64, batch-size: 32, quiet: true}}
""")
    return path


def environment(home):
    env = {**os.environ, "PARTPROBE_HOME": str(home), "OMP_NUM_THREADS": "1"}
    env.pop("PARTPROBE_RESULTS", None)
    return env


def sweep(path, home, *args):
    return subprocess.run([sys.executable, "-m", "probes", "sweep", str(path), *args], env=environment(home),
                          capture_output=True, text=True, timeout=600)


def runs(results) -> dict:
    """{(experiment, model, dataset): [run folder]} of every finished run."""
    out = {}
    for path in iter_record_paths(results):
        record = RunRecord.load(path)
        out.setdefault((record.probe if record.probe != "knn" else "object_retrieval", record.model,
                        record.dataset), set()).add(path.parent)
    return {key: sorted(folders) for key, folders in out.items()}


def test_cells_are_the_experiments_datasets_and_presets_that_exist(data, tmp_path):
    from probes.sweep import cells_of, load_sweep

    spec = load_sweep(sweep_file(tmp_path / "grid.yaml", data, tmp_path / "results", ["colorstats", "pixels"]))
    cells, not_cells = cells_of(spec)
    assert [c.name for c in cells] == [
        "part-retrieval.cub.partaware.colorstats", "part-retrieval.cub.partaware.pixels",
        "part-retrieval.coco.partaware.colorstats", "part-retrieval.coco.partaware.pixels",
        "object-retrieval.coco.default.colorstats", "object-retrieval.coco.default.pixels"]
    assert not_cells == ["object-retrieval reads no cub data"]
    assert cells[0].argv == ["--model", "colorstats", "--preset", "partaware", "--dataset", "cub", "--data-root",
                             str(data[0]), "--data-source", "synthetic", "--input-size", "64", "--batch-size", "32",
                             "--quiet", "--results", str(tmp_path / "results")]


def test_a_killed_sweep_reruns_only_the_cells_that_did_not_finish(data, tmp_path):
    results, home = tmp_path / "results", tmp_path / "home"
    path = sweep_file(tmp_path / "grid.yaml", data, results, ["colorstats", "pixels"])
    path.write_text(path.read_text().replace("experiments: [part-retrieval, object-retrieval]",
                                             "experiments: [part-retrieval]"))
    process = subprocess.Popen([sys.executable, "-m", "probes", "sweep", str(path)], env=environment(home),
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    deadline = time.time() + 300
    while not list(iter_record_paths(results)) and time.time() < deadline and process.poll() is None:
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)               # the sweep and the cell it runs, as a kill -9 of the job
    process.wait()
    before = runs(results)
    assert 1 <= len(before) < 4, before                   # killed mid-way: some cells finished, not all

    again = sweep(path, home)
    assert again.returncode == 0, again.stdout + again.stderr
    assert f"4/4 done ({len(before)} already)" in again.stdout
    after = runs(results)
    assert sorted(after) == sorted((("part_retrieval", m, d) for m in ("colorstats", "pixels")
                                    for d in ("cub", "coco")))
    assert all(len(folders) == 1 for folders in after.values())      # every cell once
    assert all(after[key] == folders for key, folders in before.items())   # the finished ones were not rerun
    board = (results / "leaderboard.csv").read_text().splitlines()
    assert [line.split(",")[0] for line in board[1:]] == ["colorstats", "pixels"]
    assert len((results / "leaderboard.superseded.csv").read_text().splitlines()) == 1   # header: no reruns

    third = sweep(path, home, "--dry-run")
    assert third.stdout.count("skipped ") == 4


def test_a_failing_cell_is_reported_and_does_not_stop_the_others(data, tmp_path):
    results = tmp_path / "results"
    path = sweep_file(tmp_path / "grid.yaml", data, results, ["no-such-model", "colorstats"])
    done = sweep(path, tmp_path / "home", "--workers", "2")
    assert done.returncode == 1
    for dataset in ("cub", "coco"):
        assert f"failed: part-retrieval.{dataset}.partaware.no-such-model: configuration: " \
               f"unknown model 'no-such-model'" in done.stdout       # found before any cell runs
    assert "failed: object-retrieval.coco.default.no-such-model" in done.stdout
    assert sorted(runs(results)) == [("object_retrieval", "colorstats", "coco"), ("part_retrieval", "colorstats", "coco"),
                                     ("part_retrieval", "colorstats", "cub")]
    assert "3/6 done (0 already), 0 running, 3 failed, 0 waiting" in done.stdout
    assert (results / "leaderboard.csv").is_file()


def test_the_slurm_executor_runs_one_submitit_job_per_cell(data, tmp_path):
    pytest.importorskip("submitit")
    results = tmp_path / "results"
    broken = tmp_path / "broken.pth"     # a valid command line whose job fails: the file is not a checkpoint
    broken.write_bytes(b"not a checkpoint")
    path = sweep_file(tmp_path / "grid.yaml", data, results, ["colorstats", str(broken)])
    path.write_text(path.read_text().replace("experiments: [part-retrieval, object-retrieval]",
                                             "experiments: [part-retrieval]"))
    args = ["--executor", "slurm", "--cluster", "local", "--partition", "debug", "--timeout-min", "10"]
    first = sweep(path, tmp_path / "home", *args)
    assert first.returncode == 1, first.stdout + first.stderr
    assert sorted(runs(results)) == [("part_retrieval", "colorstats", "coco"), ("part_retrieval", "colorstats", "cub")]
    failed = [line for line in first.stdout.splitlines() if line.startswith("failed: ")]
    assert len(failed) == 2 and all("broken.pth" in line and "_log.err" in line for line in failed), failed
    jobs = list((results / ".sweep" / "grid" / "submitit").glob("*_submitted.pkl"))
    assert len(jobs) == 4                                  # one job per cell
    again = sweep(path, tmp_path / "home", *args)           # resumable: only the failed cells are submitted again
    assert "2/4 done (2 already)" in again.stdout
    assert len(list((results / ".sweep" / "grid" / "submitit").glob("*_submitted.pkl"))) == 6
    assert all(len(folders) == 1 for folders in runs(results).values())
