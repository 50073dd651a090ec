"""Runs are named (``--name``; by default the registry alias, ``timm:<name>``, or a file's stem and hash), several
models run in turn from one command, and ``python -m probes.published`` lists the paper's values: each through
the command line as a user types it."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import golden_model_args
from probes.data.synth import synth
from probes.published import PAPER_MODELS, PUBLISHED
from probes.results import RunRecord, iter_record_paths

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cub(tmp_path_factory):
    return synth("cub", tmp_path_factory.mktemp("cub"), seed=5, images=6)


def run(args, home: Path, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "PARTPROBE_HOME": str(home), "PYTHONPATH": "", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, *map(str, args)], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)
    if check:
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def written(folder: Path) -> list[tuple[RunRecord, Path]]:
    return [(RunRecord.load(p), p) for p in iter_record_paths(folder)]


def test_files_of_one_name_get_labels_of_their_own_and_name_sets_one(shared, cub, tmp_path):
    common = ["--data-root", cub, "--feature", "cls", "--results", tmp_path / "r", "--quiet"]
    labels = {}
    for case in ("dino_vit_full", "deit_vit"):
        run(["probes/part_retrieval.py", *golden_model_args(shared / "golden" / case), *common], tmp_path / "home")
        digest = hashlib.sha256((shared / "golden" / case / "checkpoint.pth").read_bytes()).hexdigest()
        labels[case] = f"checkpoint-{digest[:8]}"             # + 4 hex of the build: golden files need --arch-kwargs
    run(["probes/part_retrieval.py", *golden_model_args(shared / "golden" / "dino_vit_full"), "--name", "my dino",
         *common], tmp_path / "home")
    records = written(tmp_path / "r")
    assert sorted(r.model[:len("checkpoint-") + 8] if r.model != "my dino" else r.model for r, _ in records) == \
        sorted([*labels.values(), "my dino"])
    named, path = next((r, p) for r, p in records if r.model == "my dino")
    assert path.parts[-3] == "my_dino"                                   # the run folder is filed under it
    first = next(r for r, _ in records if r.model.startswith(labels["dino_vit_full"] + "-"))
    assert named.checkpoint_sha256 == first.checkpoint_sha256 and named.metrics == first.metrics


def test_several_models_run_in_turn_and_one_name_for_them_is_refused(cub, tmp_path):
    common = ["probes/part_retrieval.py", "--input-size", "32", "--data-root", cub, "--feature", "cls",
              "--results", tmp_path / "r", "--quiet"]
    printed = run([*common, "--model", "colorstats", "--model", "pixels"], tmp_path / "home").stdout
    assert printed.index("colorstats (baseline") < printed.index("pixels (baseline")
    assert sorted(r.model for r, _ in written(tmp_path / "r")) == ["colorstats", "pixels"]
    refused = run([*common, "--model", "colorstats", "--model", "pixels", "--name", "both"], tmp_path / "home", False)
    assert refused.returncode == 2 and "--name both: one label for 2 models (colorstats, pixels)" in refused.stderr
    missing = run([*common, "--model", "colorstats", "--model", "nosuchmodel"], tmp_path / "home2", False)
    assert missing.returncode == 2 and "nosuchmodel" in missing.stderr
    assert "colorstats (baseline" not in missing.stdout                 # refused before the first model ran


def test_the_default_label_of_a_registry_entry_is_its_alias():
    from types import SimpleNamespace

    from probes.experiment import model_label
    from probes.zoo.registry import load_registry

    registry = load_registry()
    alias, entry = next((a, e) for a, e in registry.aliases.items() if a in PAPER_MODELS)
    cfg = lambda model, name=None, kwargs=None: SimpleNamespace(  # noqa: E731
        model=SimpleNamespace(model=model, name=name, arch=None, arch_kwargs=kwargs))
    assert model_label(cfg(entry), {}) == registry.get(entry).aliases[0]
    assert model_label(cfg(alias), {}) == alias
    six, twelve = model_label(cfg(alias, kwargs={"num_heads": 6}), {}), model_label(cfg(alias, kwargs={"num_heads": 12}), {})
    assert six.startswith(alias + "-") and len(six) == len(alias) + 5 and six != twelve    # built two ways: two names
    assert model_label(cfg("timm:vit_small_patch16_224.dino"), {}) == "timm:vit_small_patch16_224.dino"
    assert model_label(cfg("colorstats", "mine"), {}) == "mine"


def test_a_label_never_makes_a_paper_model(shared, cub, tmp_path):
    """A user's file called `dino` is not DINO: whether a published value applies depends on what ran."""
    from probes.results import make_record

    info = {"name": "checkpoint.pth", "method": "DINO", "arch": "vit", "checkpoint_sha256": "0" * 64, "format": "dino"}
    protocol = {"include_self": True, "crop": "official-code", "keypoints": "paper", "data_source": "official"}
    mine = make_record(probe="part_retrieval", dataset="cub", split="all", encoder_info=info, feature="patch_mean",
                       block=None, protocol=protocol, metrics={"AP": 50.0}, seed=0, wall_time_s=1.0, device="cpu",
                       model="dino")
    paper = make_record(probe="part_retrieval", dataset="cub", split="all", encoder_info={**info, "name": "dino"},
                        feature="patch_mean", block=None, protocol=protocol, metrics={"AP": 50.0}, seed=0,
                        wall_time_s=1.0, device="cpu", model="my label")
    assert mine.model == "dino" and mine.published == {}
    assert paper.model == "my label" and paper.published == {"cub_part_retrieval/AP": 48.9}


def test_published_values_are_listed_with_their_conditions(tmp_path):
    everything = run(["-m", "probes.published"], tmp_path).stdout
    rows = [line.split() for line in everything.splitlines() if line.startswith("Table ")]
    assert len(rows) == len(PUBLISHED)
    for entry in PUBLISHED:
        assert f"{entry.value:g}" in everything
    third = run(["-m", "probes.published", "--table", "3"], tmp_path).stdout
    lines = [line for line in third.splitlines() if line.startswith("Table ")]
    assert all(line.startswith("Table 3 ") for line in lines) and len(lines) == sum(e.table == "Table 3" for e in PUBLISHED)
    dino = next(line for line in lines if "DINO" in line and "Retrieval CUB Encoded" in line)
    assert dino.split()[-2:][0] == "48.9"
    letter = dino.split()[-1]
    block = third.split(f"conditions {letter} ")[1].split("\nconditions ")[0]
    assert "include_self = True" in block and "crop = 'official-code'" in block and "split 'all'" in block
    assert "not on generated data" in block and "assumption (DINO)" in block
    only = run(["-m", "probes.published", "--table", "1", "--model", "mae"], tmp_path).stdout
    assert [line.split()[-2] for line in only.splitlines() if line.startswith("Table ")] == ["67.8", "74.2"]
