"""Extraction and exact AP sharded over torchrun ranks (gloo, CPU) give a single process's features and
records bit for bit; a killed rank's rerun resumes from the batches written."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from probes.results import RunRecord, iter_record_paths

REPO = Path(__file__).resolve().parents[1]
WORKER = REPO / "tests" / "distributed_worker.py"
pytestmark = pytest.mark.slow


def environment(home, **extra):
    env = {**os.environ, "PARTPROBE_HOME": str(home), "OMP_NUM_THREADS": "1", **extra}
    for var in ("PARTPROBE_FEATURES", "PARTPROBE_RESULTS", "WORLD_SIZE", "RANK", "LOCAL_RANK"):
        env.pop(var, None)
    return env


def launch(args, home, ranks=None, check=True, **extra):
    """``args`` as one process, or under ``torchrun --standalone --nproc_per_node ranks``."""
    prefix = [sys.executable] if ranks is None else \
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(ranks)]
    done = subprocess.run(prefix + [str(a) for a in args], env=environment(home, **extra), capture_output=True,
                          text=True, timeout=300)
    if check:
        assert done.returncode == 0, done.stdout + done.stderr
    return done


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    """The features a single process extracts (and its forward calls)."""
    out = tmp_path_factory.mktemp("single")
    launch([WORKER, out], out / "home")
    return torch.load(out / "rank0.pt", weights_only=True)


def cache_names(home):
    return sorted(p.relative_to(p.parents[1]).as_posix() for p in (home / "features").rglob("*.pt"))


def test_two_ranks_extract_what_one_process_does_bit_for_bit(single, tmp_path):
    launch([WORKER, tmp_path / "out"], tmp_path / "home", ranks=2)
    ranks = [torch.load(tmp_path / "out" / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    for got in ranks:                                        # every rank returns every row
        for name, values in single["features"].items():
            assert torch.equal(got["features"][name], values), name
    assert [got["calls"] for got in ranks] == [6, 6]         # 12 batches, shared out in turn
    assert single["calls"] == 12
    # Rank 0 merged the ranks' batches into one file per shard.
    assert cache_names(tmp_path / "home") == [f"{c}/0000{i}.pt" for c in ("cls", "patch_mean") for i in range(3)]


def test_a_killed_rank_resumes_from_the_batches_written(single, tmp_path):
    home = tmp_path / "home"
    killed = launch([WORKER, tmp_path / "killed"], home, ranks=2, check=False, PARTPROBE_TEST_KILL_RANK1_AFTER="3")
    assert killed.returncode != 0
    written = [name for name in cache_names(home) if name.startswith("cls/")]
    assert written and all("-part-" in name for name in written)
    launch([WORKER, tmp_path / "out"], home, ranks=2)
    ranks = [torch.load(tmp_path / "out" / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert sum(got["calls"] for got in ranks) == single["calls"] - len(written)   # only the batches missing
    for got in ranks:
        for name, values in single["features"].items():
            assert torch.equal(got["features"][name], values), name


def test_part_retrieval_under_torchrun_writes_the_single_process_records(cub_root, tmp_path):
    args = [REPO / "probes" / "part_retrieval.py", "--model", "colorstats", "--dataset", "cub", "--data-root",
            cub_root, "--data-source", "synthetic", "--input-size", "64", "--batch-size", "8", "--self-match",
            "both", "--quiet"]
    launch(args + ["--results", tmp_path / "single"], tmp_path / "home1")
    launch(args + ["--results", tmp_path / "sharded"], tmp_path / "home2", ranks=2)
    single = [RunRecord.load(p) for p in iter_record_paths(tmp_path / "single")]
    sharded = [RunRecord.load(p) for p in iter_record_paths(tmp_path / "sharded")]
    assert len({p.parent for p in iter_record_paths(tmp_path / "sharded")}) == 1     # rank 0 alone wrote
    key = lambda r: (r.feature, r.protocol["include_self"])                          # noqa: E731
    assert len(single) == len(sharded) == 4
    for a, b in zip(sorted(single, key=key), sorted(sharded, key=key)):
        assert a.config_hash == b.config_hash
        assert a.metrics == b.metrics                                                # exact, every per-class AP
    queries = "queries.patch_mean.excluded.csv"
    first = next(iter_record_paths(tmp_path / "single")).parent / queries
    second = next(iter_record_paths(tmp_path / "sharded")).parent / queries
    assert first.read_bytes() == second.read_bytes()                                 # every query's AP and P@k
