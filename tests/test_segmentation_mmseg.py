"""The trained protocols through a real mmengine Runner on the CPU: learning planted part masks, weights left
alone, kill -9 and resume, a 2-process gloo run, fine-tuning with layer-wise lr decay.

Encoder: the tiny DINO golden (random weights, 4 blocks of width 64, built at 64 px and run at 128 px with
its position table interpolated on the fly, as the paper runs DINO). Data: generated LIP and ADE20K-Part-209
whose part regions carry their class colour; the chance level of each validation set is computed from its
labels (probes.segmentation.chance_summary) and the learned mIoU must be far above it.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

pytest.importorskip("mmseg", reason="the seg extra (MMCV_WITH_OPS=0 pip install -e '.[seg]') is not installed")

from probes import segmentation as seg  # noqa: E402
from probes.adapters import mmseg as adapter  # noqa: E402
from probes.data.synth import synth  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "probes" / "part_segmentation.py"
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]
# Small crops for the tiny encoder: 128 px (8 x 8 patches), resize scales shrunk in proportion.
SMALL = dict(crop_size=128, train_scale=(512, 128), test_scale=(512, 128), slide_stride=85)


@pytest.fixture(scope="module")
def golden(shared):
    case = shared / "golden" / "dino_vit_full"
    target = json.loads((case / "meta.json").read_text())["timm_target"]["this_golden"]
    arch = {"model": target["create_model"], "kwargs": target["kwargs"]}
    return case / "checkpoint.pth", arch, seg.describe_encoder(str(case / "checkpoint.pth"), "dino_full", arch)


@pytest.fixture(scope="module")
def lip_root(tmp_path_factory):
    return synth("lip", tmp_path_factory.mktemp("lip"), seed=0, train_images=16, val_images=4)


def _state(module) -> dict:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _golden_state(golden) -> dict:
    from probes.encoders import load_encoder
    path, arch, _ = golden
    return _state(load_encoder(path, format="dino_full", arch=arch, device="cpu").model)


@pytest.mark.parametrize("generator, dataset, options", [
    ("lip", "lip", dict(iters=300, batch_size=4)),
    # 209 classes make every pixel's loss 11x dearer: half the batch, no auxiliary head (with the encoder frozen
    # it never touches the main head's input), 4 training images (16 classes whose colours stay apart).
    ("ade20k-part-209", "ade20k_part209", dict(iters=200, batch_size=2, seg_aux_head=False)),
])
def test_linear_protocol_learns_planted_parts_and_keeps_the_weights(golden, tmp_path, generator, dataset, options):
    train_images = 16 if generator == "lip" else 4
    root = synth(generator, tmp_path / "data", seed=0, train_images=train_images, val_images=4)
    protocol = seg.resolve_protocol("linear", dataset, golden[2], seg_layers=(0, 1, 2, 3), **SMALL, **options)
    config = seg.runner_config(protocol, dataset, root, golden[2], work_dir=tmp_path / "work", num_workers=0)
    runner, resumed = adapter.build_runner(config)
    assert not resumed
    pretrained = _golden_state(golden)
    backbone = runner.model.backbone
    assert type(backbone) is seg.EncoderBackbone and not hasattr(backbone, "init_weights")
    runner.train()
    after = _state(backbone.model)
    assert pretrained.keys() == after.keys()
    assert all(torch.equal(pretrained[k], after[k]) for k in after), "the Runner changed the frozen encoder"
    entry = adapter.select(adapter.read_history(tmp_path / "work"), "last")
    chance = seg.chance_summary(seg.load_split(dataset, root, "val"))
    mIoU = entry["summary"]["mIoU"]
    # Chance is a few percent here (best constant: ~1-2, prior-weighted random labels: ~4); learned: 25-35.
    assert chance["chance_mIoU"] < 6, chance
    assert mIoU > 20 and mIoU > 4 * chance["chance_mIoU"], (mIoU, chance)
    assert entry["iter"] == options["iters"]


def _script(golden, root, results, work_dir, *extra):
    path, arch, _ = golden
    return [sys.executable, str(SCRIPT), "--model", str(path), "--format", "dino_full", "--arch", arch["model"],
            "--arch-kwargs", json.dumps(arch["kwargs"]), "--dataset", "lip", "--data-root", str(root),
            "--layers", "0,1,2,3", "--crop-size", "128", "--train-scale", "512,128", "--test-scale", "512,128",
            "--slide-stride", "85", "--num-workers", "0", "--data-source", "synthetic", "--device", "cpu",
            "--results", str(results), "--work-dir", str(work_dir), *extra]


def _env(home) -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PARTPROBE_HOME": str(home)}


def _records(folder) -> list[dict]:
    from probes.results import iter_record_paths
    return [json.loads(p.read_text()) for p in iter_record_paths(folder)] if Path(folder).is_dir() else []


def test_kill_9_then_resume_ends_like_an_uninterrupted_run(golden, lip_root, tmp_path):
    # Deterministic batches (no random augmentation, workers 0): a resumed run must repeat the same steps.
    options = ["--iters", "120", "--train-batch-size", "2", "--checkpoint-interval", "10", "--augmentation", "none"]
    whole = subprocess.run(_script(golden, lip_root, tmp_path / "r_whole", tmp_path / "w_whole", *options),
                           env=_env(tmp_path / "h1"), capture_output=True, text=True, timeout=300)
    assert whole.returncode == 0, whole.stderr[-3000:]

    work = tmp_path / "w_cut"
    command = _script(golden, lip_root, tmp_path / "r_cut", work, *options)
    process = subprocess.Popen(command, env=_env(tmp_path / "h2"), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while not (work / "iter_20.pth").is_file() and process.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    assert process.wait(timeout=30) == -signal.SIGKILL, "the run ended before it could be killed"
    assert not _records(tmp_path / "r_cut")
    done = int((work / "last_checkpoint").read_text().strip().rsplit("iter_", 1)[1].split(".")[0])
    assert 20 <= done < 120

    resumed = subprocess.run(command, env=_env(tmp_path / "h2"), capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Falling back to weights_only=False" not in resumed.stdout + resumed.stderr
    (a,), (b,) = _records(tmp_path / "r_whole"), _records(tmp_path / "r_cut")
    assert any("resumed" in note for note in b["notes"]) and not any("resumed" in n for n in a["notes"])
    assert a["metrics"] == b["metrics"] and a["config_hash"] == b["config_hash"]
    assert b["protocol"]["reported_iter"] == 120 and b["protocol"]["train_augmentation"] == "none"


def test_two_process_gloo_run_writes_one_record(golden, lip_root, tmp_path):
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               *_script(golden, lip_root, tmp_path / "records", tmp_path / "work", "--iters", "20",
                        "--train-batch-size", "4")[1:]]
    out = subprocess.run(command, env=_env(tmp_path / "home"), capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-4000:]
    records = _records(tmp_path / "records")
    assert len(records) == 1
    protocol = records[0]["protocol"]
    assert protocol["world_size"] == 2 and protocol["batch_size"] == 4 and protocol["aux_norm"] == "BN"
    assert records[0]["task"] == "lip19_linear_segmentation" and records[0]["published"] == {}


def test_finetune_trains_the_encoder_with_layer_wise_decay(golden, lip_root, tmp_path):
    protocol = seg.resolve_protocol("finetune", "lip", golden[2], seg_layers=(0, 1, 2, 3), iters=3, batch_size=2,
                                    warmup_iters=0, **SMALL)
    config = seg.runner_config(protocol, "lip", lip_root, golden[2], work_dir=tmp_path / "work", num_workers=0)
    runner, _ = adapter.build_runner(config)
    runner.train()
    backbone = runner.model.backbone
    assert not backbone.frozen and all(p.requires_grad for p in backbone.model.parameters())
    pretrained, after = _golden_state(golden), _state(backbone.model)
    assert not torch.equal(pretrained["blocks.0.attn.qkv.weight"], after["blocks.0.attn.qkv.weight"])
    groups = {g["param_name"]: g for g in runner.optim_wrapper.optimizer.param_groups}
    base = protocol.lr
    for name, layer in (("backbone.model.patch_embed.proj.weight", 0), ("backbone.model.blocks.0.mlp.fc1.weight", 1),
                        ("backbone.model.blocks.3.mlp.fc1.weight", 4), ("decode_head.conv_seg.weight", 5)):
        assert groups[name]["layer_id"] == layer
        assert groups[name]["initial_lr"] == pytest.approx(base * 0.65 ** (5 - layer))
    assert groups["backbone.model.pos_embed"]["weight_decay"] == 0.0
    assert groups["backbone.model.blocks.0.attn.qkv.bias"]["weight_decay"] == 0.0
    assert groups["backbone.model.blocks.0.attn.qkv.weight"]["weight_decay"] == 0.05
    assert adapter.read_history(tmp_path / "work")["3"]["summary"]["mIoU"] >= 0


def test_paper_text_head_and_best_checkpoint(golden, lip_root, tmp_path):
    protocol = seg.resolve_protocol("linear", "lip", golden[2], preset="paper-text", iters=6, batch_size=2,
                                    eval_interval=2, seg_checkpoint="best", **SMALL)
    assert protocol.seg_layers == (3,)
    config = seg.runner_config(protocol, "lip", lip_root, golden[2], work_dir=tmp_path / "work", num_workers=0)
    result = adapter.train(config)
    history = result["history"]
    assert sorted(history, key=int) == ["2", "4", "6"]
    best = adapter.select(history, "best")
    assert best["summary"]["mIoU"] == max(e["summary"]["mIoU"] for e in history.values())
    head = adapter.build_runner(config)[0].model.decode_head
    assert type(head).__name__ == "PartprobeUpsampledFCNHead"
    logits = head([torch.randn(1, 64, 8, 8)])
    assert tuple(logits.shape) == (1, 19, 32, 32)                       # 4x upsampled before the 1x1 conv
    best_files = list((tmp_path / "work").glob("best_mIoU_iter_*.pth"))
    assert len(best_files) == 1 and best_files[0].name == f"best_mIoU_iter_{best['iter']}.pth"
