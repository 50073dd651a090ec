"""A non-editable install (``pip install .`` into a fresh venv), run from another directory, finds the shipped
registry, takes a user's registry from PARTPROBE_REGISTRY and loads a model of it from the cache."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SKIP = shutil.ignore_patterns(".venv", ".git", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache",
                              ".partprobe", "demo_data", "results", ".ipynb_checkpoints")


def run(cmd, cwd, env, timeout=300):
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{cmd} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(venv python, its site-packages): partprobe installed from a copy of the checkout, not editable."""
    root = tmp_path_factory.mktemp("install")
    source = root / "source"
    shutil.copytree(REPO, source, symlinks=True, ignore=SKIP)  # symlinks kept, as in a git checkout
    env_dir = root / "venv"
    venv.create(env_dir, with_pip=False)
    python = env_dir / "bin" / "python"
    site = Path(subprocess.check_output([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                        text=True).strip())
    # Reuse this environment's torch/timm/setuptools (the directory only: its .pth files, among them the
    # editable install of this checkout, are not processed from there).
    (site / "reuse_test_env.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "PARTPROBE_", "PIP_"))}
    run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-build-isolation",
         "--no-index", "-q", str(source)], cwd=root, env=env)
    return python, site


def test_installed_copy_finds_the_registry_and_loads_a_user_model(installed, shared, tmp_path):
    python, site = installed
    golden = shared / "golden/dino_vit_full"
    target = json.loads((golden / "meta.json").read_text())["timm_target"]["this_golden"]
    mine = tmp_path / "my_models.yaml"
    mine.write_text(yaml.safe_dump({"models": {"tiny_dino": {
        "method": "DINO", "file": "tiny_dino_full.pth", "urls": ["https://example.org/tiny_dino_full.pth"],
        "sha256": hashlib.sha256((golden / "checkpoint.pth").read_bytes()).hexdigest(), "format": "dino_full",
        "arch": {"model": target["create_model"], "kwargs": target["kwargs"]},
        "transform": {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "interpolation": "bicubic",
                      "resize": 73, "crop": 64}}}}))
    home = tmp_path / "home"
    (home / "checkpoints").mkdir(parents=True)
    shutil.copy(golden / "checkpoint.pth", home / "checkpoints" / "tiny_dino_full.pth")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "PARTPROBE_"))}
    env.update(PARTPROBE_HOME=str(home), PARTPROBE_REGISTRY=str(mine), PARTPROBE_OFFLINE="1")

    listing = run([str(python), "-m", "probes.zoo", "list"], cwd=elsewhere, env=env)
    assert "tiny_dino" in listing and "mocov3_vit_base_300ep" in listing and "colorstats" in listing
    shipped = site / "probes" / "zoo" / "checkpoints.yaml"
    assert f"in {shipped} + {mine}" in listing  # the installed copy's registry, not the checkout's
    assert shipped.is_file() and not shipped.is_symlink()
    assert shipped.read_text() == (REPO / "checkpoints.yaml").read_text()
    # the console script: one command with subcommands, beside python probes/<script>.py
    assert run([str(python.parent / "partprobe"), "zoo", "list"], cwd=elsewhere, env=env) == listing
    usage = run([str(python.parent / "partprobe"), "--help"], cwd=elsewhere, env=env)
    assert "part-retrieval" in usage and "linear-probe" in usage
    assert "--self-match" in run([str(python.parent / "partprobe"), "part-retrieval", "--help"], cwd=elsewhere, env=env)

    script = f"""
import json, torch, probes
from probes.encoders import load_encoder
enc = load_encoder("tiny_dino", device="cpu")
x = torch.load({str(golden / 'input.pt')!r}, weights_only=True)
expected = torch.load({str(golden / 'expected.pt')!r}, weights_only=True)
print(json.dumps({{"file": probes.__file__, "diff": (enc.features(x, "tokens") - expected["tokens"]).abs().max().item(),
                  "info": enc.info()}}))
"""
    out = json.loads(run([str(python), "-c", script], cwd=elsewhere, env=env).strip().splitlines()[-1])
    assert out["file"].startswith(str(site))  # the installed package ran, not the checkout
    assert out["diff"] <= 1e-5
    assert out["info"]["name"] == "tiny_dino" and out["info"]["source"] == "https://example.org/tiny_dino_full.pth"


def test_installed_console_script_is_declared(installed):
    python, site = installed
    entry_points = next(site.glob("partprobe-*.dist-info")) / "entry_points.txt"
    assert "partprobe = probes.__main__:main" in entry_points.read_text()
