"""The feature cache can never change a number, through the command line as a user runs it: a shard changed
on disk is found and recomputed, a full disk keeps the batches written, and two runs filling the same cache
and the same results folder at once lose nothing and never read a half-written file."""
from __future__ import annotations

import errno
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from probes.results import RunRecord, iter_record_paths
from test_features import overwrite_rows

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow

# A stand-in for a full disk: every file opened for writing under PARTPROBE_TEST_DISK_DIR shares a budget of
# PARTPROBE_TEST_DISK_BYTES; the write that goes past it writes what fits and fails with ENOSPC, as write(2)
# does. Loaded by Python at start-up (sitecustomize) in the subprocess only.
FULL_DISK = f'''
import builtins, os
_open, _root = builtins.open, os.environ["PARTPROBE_TEST_DISK_DIR"]
_left = [int(os.environ["PARTPROBE_TEST_DISK_BYTES"])]


class _Disk:
    def __init__(self, file, path):
        self._file, self._path = file, path

    def write(self, data):
        if len(data) > _left[0]:
            self._file.write(data[:_left[0]])
            _left[0] = 0
            raise OSError({errno.ENOSPC}, os.strerror({errno.ENOSPC}), self._path)
        _left[0] -= len(data)
        return self._file.write(data)

    def __getattr__(self, name):
        return getattr(self._file, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._file.close()


def _limited_open(file, mode="r", *args, **kwargs):
    handle = _open(file, mode, *args, **kwargs)
    if isinstance(file, (str, os.PathLike)) and any(m in mode for m in "wax") and \\
            os.path.abspath(os.fspath(file)).startswith(_root):
        return _Disk(handle, os.fspath(file))
    return handle


builtins.open = _limited_open
'''


@pytest.fixture(scope="module")
def cub(tmp_path_factory):
    from probes.data.synth import synth
    return synth("cub", tmp_path_factory.mktemp("cub"), seed=0, images=40)


def command(cub, results, batch_size=16):
    return [sys.executable, str(REPO / "probes" / "part_retrieval.py"), "--model", "colorstats", "--dataset", "cub",
            "--data-root", str(cub), "--data-source", "synthetic", "--input-size", "64",
            "--batch-size", str(batch_size), "--results", str(results)]


def environment(home, **extra):
    env = {**os.environ, "PARTPROBE_HOME": str(home), "OMP_NUM_THREADS": "1", **extra}
    for var in ("PARTPROBE_FEATURES", "PARTPROBE_RESULTS"):
        env.pop(var, None)
    return env


def run(cub, home, results, *extra, env=None, batch_size=16):
    done = subprocess.run(command(cub, results, batch_size) + list(extra), env=env or environment(home),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return done


def metrics_of(results) -> dict:
    """{(feature, self-match): metrics} of every record under ``results``, each configuration once."""
    out = {}
    for path in iter_record_paths(results):
        record = RunRecord.load(path)
        out.setdefault((record.feature, record.protocol["include_self"]), []).append(record.metrics)
    return out


@pytest.fixture(scope="module")
def reference(cub, tmp_path_factory):
    """The records of a clean run (its own cache)."""
    home = tmp_path_factory.mktemp("clean_home")
    run(cub, home, home / "results")
    metrics = metrics_of(home / "results")
    assert len(metrics) == 2 and all(len(v) == 1 for v in metrics.values())
    return {key: values[0] for key, values in metrics.items()}


def cache_files(home) -> list[Path]:
    return sorted(p for p in (home / "features").rglob("*") if p.is_file())


def test_a_shard_changed_on_disk_is_named_and_the_rerun_writes_the_right_ap(cub, reference, tmp_path):
    home = tmp_path / "home"
    run(cub, home, tmp_path / "first")
    shard = next(p for p in cache_files(home) if p.parent.name == "patch_mean")
    clean = torch.load(shard, weights_only=True)["values"]
    overwrite_rows(shard, [3, 17, 40, 41, 90])
    damaged = torch.load(shard, weights_only=True)["values"]   # a valid file: torch reads it without complaint
    assert (damaged != clean).any(dim=1).sum() == 5

    # What the damaged shard would have given: a different AP (so the check below can fail).
    from probes.metrics import retrieval_metrics
    labels = np.array([int(row["label"]) for row in _items(tmp_path / "first")])
    assert retrieval_metrics(damaged, labels)["AP"] != pytest.approx(retrieval_metrics(clean, labels)["AP"], abs=1e-9)

    rerun = run(cub, home, tmp_path / "second")
    assert f"partprobe: feature cache: {shard} does not match the digest written with it" in rerun.stderr
    assert "recomputing it" in rerun.stderr
    assert {key: values[0] for key, values in metrics_of(tmp_path / "second").items()} == reference
    assert torch.equal(torch.load(shard, weights_only=True)["values"], clean)


def _items(results):
    from probes.artifacts import read_table
    path = next(iter_record_paths(results))
    return read_table(path.parent / "items.csv")


def test_a_full_disk_keeps_the_batches_written_and_the_rerun_reuses_them(cub, reference, tmp_path):
    home, shim = tmp_path / "home", tmp_path / "shim"
    shim.mkdir()
    (shim / "sitecustomize.py").write_text(FULL_DISK)
    env = environment(home, PYTHONPATH=os.pathsep.join([str(shim), os.environ.get("PYTHONPATH", "")]),
                      PARTPROBE_TEST_DISK_DIR=str(home / "features"), PARTPROBE_TEST_DISK_BYTES="40000")
    full = run(cub, home, tmp_path / "first", env=env)
    assert re.search(r"feature cache: cannot write \S+\.pt \(No space left on device\)", full.stderr), full.stderr
    assert "the next run reuses them" in full.stderr
    # The run itself is right: the cache only saves work.
    assert {key: values[0] for key, values in metrics_of(tmp_path / "first").items()} == reference
    written = [p for p in cache_files(home) if p.suffix == ".pt"]
    assert written and not [p for p in cache_files(home) if p.name.endswith(".tmp")]
    rows_cached = {}
    for path in written:                                     # every file left is whole, with its digest
        data = torch.load(path, weights_only=True)
        assert "-part-" in path.name and "sha256" in data
        rows_cached.setdefault(path.parent.name, set()).update(range(data["start"], data["stop"]))
    both = set.intersection(*rows_cached.values()) if len(rows_cached) == 2 else set()
    assert 0 < sum(map(len, rows_cached.values())) and len(both) < 143

    again = run(cub, home, tmp_path / "second")             # the disk has room again
    assert "feature cache" not in again.stderr
    totals = re.findall(r"\| *\d+/(\d+) \[", again.stderr)
    assert totals and int(totals[-1]) == 143 - len(both)     # only what was not cached is encoded
    assert {key: values[0] for key, values in metrics_of(tmp_path / "second").items()} == reference
    assert sorted(p.name for p in cache_files(home) if p.parent.name == "cls") == ["00000.pt"]


def test_two_runs_at_once_on_one_cache_and_one_results_folder_lose_nothing(cub, reference, tmp_path):
    home, results = tmp_path / "home", tmp_path / "results"
    runs = [subprocess.Popen(command(cub, results, batch_size=8), env=environment(home), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [process.communicate(timeout=300) for process in runs]
    for process, (_, err) in zip(runs, outputs):
        assert process.returncode == 0, err
        assert "feature cache" not in err                     # no file was ever found half-written or damaged
    metrics = metrics_of(results)
    assert {key: len(values) for key, values in metrics.items()} == {key: 2 for key in reference}
    assert all(values == [reference[key]] * 2 for key, values in metrics.items())
    assert len({p.parent for p in iter_record_paths(results)}) == 2
    leftovers = [p for p in cache_files(home) if p.name != "key.json" and not re.fullmatch(r"\d{5}\.pt", p.name)]
    assert leftovers == []
    # Both runs' cache is the clean one: a third run reads it whole.
    third = run(cub, home, tmp_path / "third")
    assert "feature cache" not in third.stderr
    assert not re.findall(r"\| *\d+/\d+ \[", third.stderr)          # nothing to encode: no progress bar
