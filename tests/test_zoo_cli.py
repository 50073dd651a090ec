"""The zoo's fixes of issue 15 (items 5-8) through the command line as a user types it (a subprocess each):
``verify`` trusts a hash only after the layout check and says how to replace a wrong lock entry, ``timm:``
models fail fast offline, ``--input-size`` rebuilds a sin-cos table, and ``convert`` writes files with the
umask's permissions, a projection sidecar that loads back, and refuses a head count against the method's rule."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import golden_model_args
from probes.data.synth import synth
from probes.results import RunRecord, iter_record_paths

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow
TRANSFORM = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "interpolation": "bicubic", "resize": 73,
             "crop": 64}


def run(args, home: Path, umask: int | None = None, **env) -> subprocess.CompletedProcess:
    environment = {**os.environ, "PARTPROBE_HOME": str(home), "PYTHONPATH": "", "OMP_NUM_THREADS": "1", **env}
    return subprocess.run([sys.executable, *map(str, args)], cwd=REPO, env=environment, capture_output=True, text=True,
                          timeout=300, preexec_fn=None if umask is None else (lambda: os.umask(umask)))


def ok(done: subprocess.CompletedProcess) -> str:
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


def refused(done: subprocess.CompletedProcess) -> str:
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stderr


def arch_of(golden: Path) -> dict:
    target = json.loads((golden / "meta.json").read_text())["timm_target"]["this_golden"]
    return {"model": target["create_model"], "kwargs": target["kwargs"]}


@pytest.fixture(scope="module")
def cub(tmp_path_factory):
    return synth("cub", tmp_path_factory.mktemp("cub"), seed=6, images=6)


def test_verify_trusts_a_hash_only_after_the_layout_check_and_says_how_to_reset_it(shared, tmp_path):
    golden = shared / "golden" / "dino_vit_full"
    registry = tmp_path / "mine.yaml"
    registry.write_text(yaml.safe_dump({"models": {"my_dino": {
        "method": "DINO", "file": "my_dino_full.pth", "urls": ["https://example.org/my_dino_full.pth"],
        "format": "dino_full", "arch": arch_of(golden), "transform": TRANSFORM}}}))
    home, env = tmp_path / "home", {"PARTPROBE_REGISTRY": str(registry)}
    cached = home / "checkpoints" / "my_dino_full.pth"
    lock = home / "checkpoints" / "hashes.lock.json"
    cached.parent.mkdir(parents=True)
    shutil.copy(shared / "golden" / "deit_vit" / "checkpoint.pth", cached)          # the wrong file
    assert "expects a dict with a 'teacher' entry" in refused(run(["-m", "probes.zoo", "verify", "my_dino"], home, **env))
    assert not lock.exists() or "my_dino_full.pth" not in json.loads(lock.read_text())
    shutil.copy(golden / "checkpoint.pth", cached)                                   # the right one
    assert "loads strictly" in ok(run(["-m", "probes.zoo", "verify", "my_dino"], home, **env))
    recorded = json.loads(lock.read_text())["my_dino_full.pth"]
    assert recorded["sha256"] == hashlib.sha256(cached.read_bytes()).hexdigest() and recorded["trust"] == "first-use"
    shutil.copy(shared / "golden" / "dino_vit_backbone" / "checkpoint.pth", cached)  # replaced by another file
    message = refused(run(["-m", "probes.zoo", "verify", "my_dino"], home, **env))
    assert "recorded in" in message and "python -m probes.zoo verify my_dino --reset-lock" in message
    # a user's own file: verified with --format/--arch, never recorded
    mine = ok(run(["-m", "probes.zoo", "verify", golden / "checkpoint.pth", "--format", "dino_full", "--arch",
                   json.dumps(arch_of(golden))], home))
    assert hashlib.sha256((golden / "checkpoint.pth").read_bytes()).hexdigest() in mine and "loads strictly" in mine
    assert set(json.loads(lock.read_text())) == {"my_dino_full.pth"}


def test_timm_models_fail_fast_offline_and_info_works_without_the_hub(cub, tmp_path):
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()
    env = {"HF_HOME": str(tmp_path / "hf"), "HF_ENDPOINT": f"http://127.0.0.1:{port}"}
    name = "timm:vit_small_patch16_224.dino"
    message = refused(run(["probes/part_retrieval.py", "--model", name, "--data-root", cub, "--no-write"],
                          tmp_path / "home", **env))
    assert "network is unreachable" in message and f"127.0.0.1:{port}" in message
    message = refused(run(["probes/part_retrieval.py", "--model", name, "--data-root", cub, "--no-write"],
                          tmp_path / "home", HF_HUB_OFFLINE="1", **env))
    assert "not in the cache and downloads are off" in message
    info = ok(run(["-m", "probes.zoo", "info", name], tmp_path / "home", HF_HUB_OFFLINE="1", **env))
    assert "hf://timm/vit_small_patch16_224.dino" in info
    message = refused(run(["-m", "probes.zoo", "download", name], tmp_path / "home", HF_HUB_OFFLINE="1", **env))
    assert f"python -m probes.zoo download {name}" in message


def test_input_size_rebuilds_a_sincos_table_through_the_command_line(shared, cub, tmp_path):
    golden = shared / "golden" / "mae_encoder"
    common = ["probes/part_retrieval.py", *golden_model_args(golden), "--data-root", cub, "--feature", "cls",
              "--quiet"]
    ok(run([*common, "--input-size", "96", "--results", tmp_path / "r"], tmp_path / "home"))
    record, = [RunRecord.load(p) for p in iter_record_paths(tmp_path / "r")]
    assert record.protocol["input_size"] == 96
    message = refused(run([*common, "--input-size", "100", "--no-write"], tmp_path / "home"))
    assert "input_size 100 is not a multiple of the patch size 16" in message and "96 or 112" in message


def test_convert_writes_umask_permissions_a_sidecar_that_loads_back_and_refuses_a_wrong_head_count(shared, cub,
                                                                                                     tmp_path):
    golden = shared / "golden" / "dino_vit_full"
    out = tmp_path / "dino.safetensors"
    ok(run(["-m", "probes.zoo", "convert", golden / "checkpoint.pth", "--arch", json.dumps(arch_of(golden)),
            "--out", out], tmp_path / "home", umask=0o022))
    sidecar = tmp_path / "dino.projection.safetensors"
    assert out.stat().st_mode & 0o777 == 0o644 and sidecar.stat().st_mode & 0o777 == 0o644
    ok(run(["probes/part_retrieval.py", "--model", out, "--data-root", cub, "--feature", "projection",
            "--results", tmp_path / "r", "--quiet"], tmp_path / "home"))
    record, = [RunRecord.load(p) for p in iter_record_paths(tmp_path / "r")]
    assert record.feature == "projection" and record.method == "DINO"
    sidecar.unlink()
    message = refused(run(["probes/part_retrieval.py", "--model", out, "--data-root", cub, "--feature", "projection",
                           "--no-write"], tmp_path / "home"))
    assert "--feature projection" in message and "no projection head" in message

    small = mocov3_small(shared, tmp_path / "vit-s.pth.tar")      # ViT-S width: MoCo v3's rule says 12 heads
    wrong = tmp_path / "wrong.safetensors"
    message = refused(run(["-m", "probes.zoo", "convert", small, "--arch-kwargs", '{"num_heads": 6}', "--out", wrong],
                          tmp_path / "home"))
    assert "num_heads=6 disagrees with MoCo v3 (embed_dim 384 has 12 heads)" in message and "--force-heads" in message
    assert not wrong.exists()
    ok(run(["-m", "probes.zoo", "convert", small, "--arch-kwargs", '{"num_heads": 6}', "--force-heads", "--out", wrong],
           tmp_path / "home"))
    assert wrong.is_file()
    # a head count that cannot split the width (384 / 7): one line, forced or not, before timm's assertion
    for extra in ([], ["--force-heads"]):
        message = refused(run(["-m", "probes.zoo", "convert", small, "--arch-kwargs", '{"num_heads": 7}', *extra,
                               "--out", tmp_path / "seven.safetensors"], tmp_path / "home"))
        assert "num_heads=7" in message and "divides embed_dim 384" in message and "vit-s.pth.tar" in message
    six = golden_model_args(golden)
    six[six.index("--arch-kwargs") + 1] = json.dumps({**arch_of(golden)["kwargs"], "num_heads": 6})
    message = refused(run(["probes/part_retrieval.py", *six, "--data-root", cub, "--no-write"], tmp_path / "home"))
    assert "num_heads=6" in message and "divides embed_dim 64" in message and "(head dimension 64 is the usual: 1)" \
        in message


def mocov3_small(shared, path: Path) -> Path:
    """The MoCo v3 golden's container holding a one-block ViT-S/16 base encoder (random weights)."""
    import torch
    from timm.models.vision_transformer import VisionTransformer

    from probes.zoo.checkpoint import load_checkpoint

    torch.manual_seed(0)
    model = VisionTransformer(img_size=32, patch_size=16, embed_dim=384, depth=1, num_heads=12, num_classes=0,
                              global_pool="token")
    obj = load_checkpoint(shared / "golden" / "mocov3_vit" / "checkpoint.pth")
    prefix = "module.base_encoder."
    kept = {k: v for k, v in obj["state_dict"].items() if not k.startswith(prefix) or k[len(prefix):].startswith("head.")}
    obj["state_dict"] = {**kept, **{prefix + k: v.clone() for k, v in model.state_dict().items()}}
    torch.save(obj, path)
    return path
