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
