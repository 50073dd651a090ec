"""Shared fixtures. Tests that need ../shared (goldens, manifests, real samples) skip without it."""
from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


@pytest.fixture(scope="session")
def shared() -> Path:
    if not (SHARED / "golden").is_dir():
        pytest.skip(f"{SHARED} is absent (it sits beside the checkout in CI; a user's clone has none)")
    return SHARED


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path_factory, monkeypatch):
    """No test writes into the user's cache: PARTPROBE_HOME points at a fresh temporary folder."""
    home = tmp_path_factory.mktemp("partprobe_home")
    monkeypatch.setenv("PARTPROBE_HOME", str(home))
    for var in ("PARTPROBE_CHECKPOINTS", "PARTPROBE_FEATURES", "PARTPROBE_RESULTS"):
        monkeypatch.delenv(var, raising=False)
    return home


# Fixtures of the probe and training tests. Module-scoped: each test module builds its own once. A module
# that needs different data defines a fixture of the same name, which takes precedence over these.
@pytest.fixture(scope="module")
def one_thread():
    """Tiny heads run faster on one intra-op thread, and much faster on a CI machine shared by other jobs.
    Opt in per module with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    import torch
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def cub_root(tmp_path_factory):
    """Generated CUB-200-2011 (seed 0)."""
    from probes.data.synth import synth
    return synth("cub", tmp_path_factory.mktemp("cub"), seed=0)


@pytest.fixture(scope="module")
def colorstats():
    """The colour-statistics baseline at 64 px input (resize 73; 4 x 4 patches + CLS: 17 tokens of 63 values):
    the probes size every transform from the encoder's crop_size, and 64 px keeps feature extraction 20x
    cheaper than 224 on a 2-core CI machine."""
    from probes.encoders import load_encoder
    encoder = load_encoder("colorstats")
    encoder.crop_size, encoder.resize = 64, 73
    return encoder


@pytest.fixture
def dino_golden(shared):
    """The tiny DINO golden (random weights, 64-px input) loaded on the CPU as the probes load it:
    (its folder, its meta.json, the encoder)."""
    import json

    from probes.encoders import load_encoder
    from probes.zoo.registry import IMAGENET, Transform

    case = shared / "golden" / "dino_vit_full"
    meta = json.loads((case / "meta.json").read_text())
    target = meta["timm_target"]["this_golden"]
    img = meta["architecture"]["img_size"]
    encoder = load_encoder(case / "checkpoint.pth", format="dino_full", device="cpu",
                           arch={"model": target["create_model"], "kwargs": target["kwargs"]},
                           transform=Transform(IMAGENET.mean, IMAGENET.std, "bicubic", round(img * 256 / 224), img))
    return case, meta, encoder


def run_cli(module, *args):
    """An experiment's records, run as its command line is typed (``module.main(argv)``, in-process)."""
    return module.main([str(a) for a in args])


def configs(module, *args):
    """The configs an experiment's command line describes, without running them."""
    from probes.experiment import parse

    config_cls = next(v for v in vars(module).values() if isinstance(v, type) and hasattr(v, "NAME")
                      and v.__module__ == module.__name__)
    return parse(config_cls, [str(a) for a in args])


def golden_model_args(case) -> list[str]:
    """--model/--format/--arch/--arch-kwargs of a golden checkpoint, as a user types them."""
    import json

    meta = json.loads((case / "meta.json").read_text())
    target = meta["timm_target"]["this_golden"]
    fmt = meta.get("format") or {"dino_vit_full": "dino_full", "mae_encoder": "mae", "mae_full": "mae",
                                 "dino_vit_backbone": "dino", "deit_vit": "deit", "mocov3_vit": "mocov3",
                                 "ibot_vit_teacher": "ibot", "beit_pt": "beit", "cae_full": "cae"}[case.name]
    return ["--model", str(case / "checkpoint.pth"), "--format", fmt, "--arch", target["create_model"],
            "--arch-kwargs", json.dumps(target["kwargs"])]


def artifact(results_dir, record, name: str) -> list[dict]:
    """An artifact table of a written record (rows as dicts of strings)."""
    from probes.artifacts import read_table
    from probes.results import iter_record_paths

    path = next(p for p in iter_record_paths(results_dir) if p.stem == record.run_id)
    return read_table(path.parent / record.artifacts[name])


def history(results_dir, record) -> list[dict]:
    """Per-epoch rows (epoch, top1, top5, train_loss, lr as floats) of a classification record."""
    return [{k: float(v) for k, v in row.items() if v != ""} for row in artifact(results_dir, record, "history")]


def write_record(record, folder, config=None):
    """One record written as its own run (probes.results.write_run); returns its path."""
    from probes.results import write_run

    return write_run([record], folder, record.probe, config or {})[0]
