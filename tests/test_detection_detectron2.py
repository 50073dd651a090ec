"""The detectron2 adapter against upstream detectron2: the backbones from yacs and LazyConfig, the ResNet weights
against torchvision, and `python probes/detection.py` end to end on generated COCO data (train, COCOEvaluator,
kill -9 and resume). Skipped, with the install instructions as the reason, where detectron2 is not installed.

Measured on a loaded 2-core machine (one thread each, two runs): the frozen tiny ViT reaches box AP 17.9 / 36.6
(mask AP 22.6 / 36.6) after 200 iterations, killed at 100 and resumed; the fine-tuned ResNet-50 FPN box AP
18.7 / 25.3 (mask AP 27.1 / 35.2) after 100; the same detectors untrained score box AP 0.0. The tests ask for
5 AP points over the untrained detector. About 3.5 minutes of CPU time in all.
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

from probes.adapters.d2_config import detectron2_missing, encoder_facts, load_backbone_encoder, mask_rcnn_config, \
    resolve_settings
from probes.results import RunRecord, iter_record_paths

MISSING = detectron2_missing()
pytestmark = [pytest.mark.skipif(MISSING is not None, reason=MISSING or ""), pytest.mark.usefixtures("one_thread")]
REPO = Path(__file__).resolve().parents[1]
VIT_KWARGS = {"img_size": 224, "embed_dim": 32, "depth": 3, "num_heads": 2, "num_classes": 0, "global_pool": "token"}
SMALL_HEADS = ["channels=64", "fc_dim=256", "roi_batch=128", "score_thresh=0.0"]  # CPU speed; scores for AP at 0 iters


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """An untrained tiny ViT (timm layout), an untrained ResNet-50 (torchvision layout) whose BatchNorm statistics
    are estimated on noise (the default 0/1 statistics make a frozen random ResNet diverge), and generated COCO."""
    import timm
    import torchvision
    from probes.data.coco_synth import synth_coco_instances

    folder = tmp_path_factory.mktemp("detection")
    torch.manual_seed(0)
    vit = timm.create_model("vit_small_patch16_224", pretrained=False, **VIT_KWARGS)
    torch.save(vit.state_dict(), folder / "tiny_vit.pth")
    resnet = torchvision.models.resnet50(weights=None)
    for module in resnet.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = None
    with torch.no_grad():
        resnet.train()(torch.randn(8, 3, 128, 128))
    torch.save(resnet.state_dict(), folder / "resnet50.pth")
    coco = synth_coco_instances(folder / "coco", seed=0, image_size=128, max_objects=3, object_categories=(3, 18, 44),
                                size_mix=(0.1, 0.7, 0.2))
    return {"vit": folder / "tiny_vit.pth", "resnet": folder / "resnet50.pth", "coco": coco}


def vit_args(files) -> list[str]:
    return ["--model", str(files["vit"]), "--format", "timm", "--arch", "vit_small_patch16_224",
            "--arch-kwargs", json.dumps(VIT_KWARGS)]


def config_keys(files, kind: str, recipe: str, frozen: bool, **overrides):
    model, fmt, arch = ((str(files["vit"]), "timm", {"model": "vit_small_patch16_224", "kwargs": VIT_KWARGS})
                        if kind == "vit" else (str(files["resnet"]), "torchvision", None))
    encoder = load_backbone_encoder(model, format=fmt, arch=arch)
    settings, _ = resolve_settings(recipe, kind, frozen=frozen, overrides={"image_size": 128, **overrides})
    facts = encoder_facts(encoder, model=model, format=fmt, arch=arch, branch="teacher", frozen=frozen)
    return mask_rcnn_config(settings, facts, train="det_test_train", test="det_test_val", num_classes=80,
                            output_dir="unused", num_workers=0)


def training_batch(files, count: int = 2):
    from detectron2.data import DatasetCatalog, DatasetMapper
    from probes.adapters.detectron2 import register_coco

    register_coco("det_test_train", files["coco"] / "annotations/instances_train2017.json", files["coco"] / "train2017")
    mapper = DatasetMapper(is_train=True, augmentations=[], image_format="RGB", use_instance_mask=True)
    return [mapper(d) for d in DatasetCatalog.get("det_test_train")[:count]]


# ------------------------------------------------------------------------------------------ in process
def test_vit_backbone_from_yacs_declares_what_it_returns(files):
    from detectron2.modeling import BACKBONE_REGISTRY, build_model
    from detectron2.utils.events import EventStorage
    from probes.adapters.detectron2 import ViTPyramidBackbone, build_cfg, build_optimizer

    assert "build_partprobe_backbone" in BACKBONE_REGISTRY
    model = build_model(build_cfg(config_keys(files, "vit", "vitdet", frozen=True, channels=64)))
    backbone = model.backbone
    assert isinstance(backbone, ViTPyramidBackbone)
    assert backbone.size_divisibility == 32 and backbone.padding_constraints == {"size_divisibility": 32, "square_size": 128}
    batch = training_batch(files)
    images = model.preprocess_image(batch)
    assert images.tensor.shape[-2:] == (128, 128)          # every image padded to the ViT's square
    features = backbone(images.tensor)
    for name, shape in backbone.output_shape().items():
        assert features[name].shape == (2, shape.channels, 128 // shape.stride, 128 // shape.stride), name
    model.train()
    with EventStorage():
        losses = model(batch)
    assert set(losses) >= {"loss_rpn_cls", "loss_cls", "loss_box_reg", "loss_mask"}
    sum(losses.values()).backward()
    assert all(p.grad is None for p in backbone.trunk.parameters())           # frozen: the ViT never changes
    assert all(p.grad is not None for p in backbone.pyramid.parameters())

    # Fine-tuning: AdamW with ViTDet's layer-wise decay (0.7 per block from the top, 3 blocks here).
    cfg = build_cfg(config_keys(files, "vit", "vitdet", frozen=False, channels=64))
    tuned = build_model(cfg)
    optimizer = build_optimizer(cfg, tuned)
    lr_of = {id(p): group["lr"] for group in optimizer.param_groups for p in group["params"]}
    assert lr_of[id(tuned.backbone.trunk.model.patch_embed.proj.weight)] == pytest.approx(1e-4 * 0.7 ** 4)
    assert lr_of[id(tuned.backbone.trunk.model.blocks[2].mlp.fc1.weight)] == pytest.approx(1e-4 * 0.7)
    assert lr_of[id(tuned.roi_heads.box_predictor.cls_score.weight)] == pytest.approx(1e-4)


def test_backbone_works_from_lazyconfig_in_detectron2s_vitdet_model(files):
    from detectron2 import model_zoo
    from detectron2.config import LazyCall as L, instantiate
    from detectron2.utils.events import EventStorage
    from probes.adapters.detectron2 import suite_backbone

    model_cfg = model_zoo.get_config("common/models/mask_rcnn_vitdet.py").model
    model_cfg.backbone = L(suite_backbone)(encoder=str(files["vit"]), format="timm",
                                           arch={"model": "vit_small_patch16_224", "kwargs": VIT_KWARGS},
                                           image_size=128, frozen=True)
    model = instantiate(model_cfg).train()
    with EventStorage():
        losses = model(training_batch(files))
    assert all(torch.isfinite(v) for v in losses.values()) and "loss_mask" in losses


def test_resnet_backbones_carry_the_torchvision_weights(files):
    import torchvision
    from detectron2.layers import FrozenBatchNorm2d
    from detectron2.modeling import build_model
    from probes.adapters.detectron2 import build_cfg, finish_model, suite_backbone

    reference = torchvision.models.resnet50(weights=None)
    reference.load_state_dict(torch.load(files["resnet"], weights_only=True))
    reference.eval()
    fpn = suite_backbone(str(files["resnet"]), format="torchvision", neck="fpn", frozen=True).eval()
    images = torch.randn(2, 3, 128, 96)
    with torch.no_grad():
        stages = fpn.bottom_up(images)
        x = reference.maxpool(reference.relu(reference.bn1(reference.conv1(images))))
        for index, layer in enumerate((reference.layer1, reference.layer2, reference.layer3, reference.layer4)):
            x = layer(x)
            torch.testing.assert_close(stages[f"res{index + 2}"], x, rtol=1e-4, atol=1e-4)
    shapes = fpn.output_shape()
    assert {k: (v.channels, v.stride) for k, v in shapes.items()} == {
        "p2": (256, 4), "p3": (256, 8), "p4": (256, 16), "p5": (256, 32), "p6": (256, 64)}
    assert fpn.size_divisibility == 32

    # C4: the backbone ends at res4; the ROI head's res5 gets layer4, frozen with everything else.
    model = finish_model(build_model(build_cfg(config_keys(files, "resnet", "c4_1x", frozen=True))))
    assert {k: (v.channels, v.stride) for k, v in model.backbone.output_shape().items()} == {"res4": (1024, 16)}
    torch.testing.assert_close(model.roi_heads.res5[0].shortcut.weight, reference.layer4[0].downsample[0].weight)
    torch.testing.assert_close(model.roi_heads.res5[2].conv3.norm.running_var, reference.layer4[2].bn3.running_var)
    assert not any(p.requires_grad for p in model.backbone.parameters())
    assert not any(p.requires_grad for p in model.roi_heads.res5.parameters())
    assert isinstance(model.roi_heads.res5[0].conv1.norm, FrozenBatchNorm2d)
    assert any(p.requires_grad for p in model.roi_heads.box_predictor.parameters())


# ------------------------------------------------------------------------------------------ the command
def command(files, model_args: list[str], results: Path, work: Path, *extra: str, batch: int = 2) -> list[str]:
    return [sys.executable, "probes/detection.py", *model_args, "--data-root", str(files["coco"]), "--image-size", "128",
            "--train-batch-size", str(batch), "--num-workers", "0", "--data-source", "synthetic", "--results", str(results),
            "--work-dir", str(work), *extra]


def run_command(args: list[str], home: Path, timeout: int = 400) -> str:
    env = {**os.environ, "PARTPROBE_HOME": str(home), "PYTHONPATH": "", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{args} failed:\n{done.stdout[-3000:]}\n{done.stderr[-5000:]}"
    return done.stdout


def only_record(results: Path) -> RunRecord:
    (path,) = list(iter_record_paths(results))
    return RunRecord.load(path)


def untrained_box_ap(files, model_args, tmp_path, extra) -> float:
    results = tmp_path / "untrained"
    run_command(command(files, model_args, results, tmp_path / "untrained_work", "--iters", "0", *extra), tmp_path)
    return only_record(results).metrics["coco_detection/box_AP"]


@pytest.mark.slow
def test_frozen_vit_trains_is_killed_resumes_and_beats_the_untrained_detector(files, tmp_path):
    # No scale jitter, and anchors sized for objects that fill up to 90 % of a 128 px image.
    extra = ["--frozen", "--lr", "3e-3", "--set", *SMALL_HEADS, "lsj_scale=[1.0,1.0]", "checkpoint_period=100",
             "anchor_sizes=[16,32,64,128,256]"]
    untrained = untrained_box_ap(files, vit_args(files), tmp_path, extra)

    results, work = tmp_path / "results", tmp_path / "work"
    args = command(files, vit_args(files), results, work, "--iters", "200", *extra)
    env = {**os.environ, "PARTPROBE_HOME": str(tmp_path), "PYTHONPATH": "", "OMP_NUM_THREADS": "1"}
    first = subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True)
    try:
        deadline = time.time() + 240
        while not (work / "model_0000099.pth").exists() or "model_0000099" not in _read(work / "last_checkpoint"):
            assert first.poll() is None and time.time() < deadline, "no checkpoint at iteration 100 in time"
            time.sleep(0.5)
    finally:
        os.killpg(first.pid, signal.SIGKILL)   # kill -9, mid-training
        first.wait()
    assert not list(iter_record_paths(results))                         # the killed run wrote no record

    printed = run_command(args, tmp_path)
    record = only_record(results)
    assert "resumed at iteration 100" in " ".join(record.notes), record.notes
    assert "resuming from" in _read(work / "log.txt") and (work / "model_final.pth").exists()
    trained = record.metrics["coco_detection/box_AP"]
    print(f"tiny frozen ViT, 200 iterations (killed at 100, resumed): box AP {trained:.1f} "
          f"(untrained {untrained:.1f}), mask AP {record.metrics['coco_detection/mask_AP']:.1f}\n{printed}")
    assert trained > untrained + 5.0
    assert record.probe == "detection" and record.task == "coco_detection" and record.split == "val2017"
    assert record.feature == "simple_fpn" and not record.published
    protocol = record.protocol
    assert (protocol["recipe"], protocol["backbone_training"], protocol["synthetic"]) == ("vitdet", "frozen", True)
    assert protocol["recipe_overrides"] == ["anchor_sizes", "base_lr", "batch_size", "channels", "checkpoint_period", "fc_dim",
                                            "image_size", "lsj_scale", "max_iter", "roi_batch", "score_thresh"]
    assert {f"coco_detection/{k}_{m}" for k in ("box", "mask") for m in ("AP", "AP50", "AP75")} <= set(record.metrics)


@pytest.mark.slow
def test_fine_tuned_resnet50_fpn_beats_the_untrained_detector(files, tmp_path):
    model_args = ["--model", str(files["resnet"]), "--format", "torchvision"]
    # A random ResNet's features make plain SGD diverge in a few steps: clip each gradient, warm up for 20.
    extra = ["--lr", "0.01", "--set", *SMALL_HEADS, "grad_clip=1.0", "warmup_iters=20"]
    untrained = untrained_box_ap(files, model_args, tmp_path, extra)
    results = tmp_path / "results"
    run_command(command(files, model_args, results, tmp_path / "work", "--iters", "100", *extra), tmp_path)
    record = only_record(results)
    trained = record.metrics["coco_detection/box_AP"]
    print(f"ResNet-50 FPN fine-tuned, 100 iterations: box AP {trained:.1f} (untrained {untrained:.1f}), "
          f"mask AP {record.metrics['coco_detection/mask_AP']:.1f}")
    assert trained > untrained + 5.0
    assert (record.feature, record.protocol["recipe"], record.protocol["backbone_training"]) == ("fpn", "fpn_1x", "fine-tune")
    assert record.protocol["backbone_norm"] == "FrozenBN" and record.protocol["freeze_at"] == 2


def _read(path: Path) -> str:
    return path.read_text() if path.exists() else ""


@pytest.mark.slow
def test_two_processes_train_through_detectron2_launch(files, tmp_path):
    """--gpus 2 on a CPU: two gloo processes, DistributedDataParallel without device ids, distributed evaluation."""
    results = tmp_path / "results"
    run_command(command(files, vit_args(files), results, tmp_path / "work", "--frozen", "--iters", "4", "--gpus", "2",
                        "--set", *SMALL_HEADS, batch=4), tmp_path)
    record = only_record(results)
    assert record.protocol["world_size"] == 2 and record.protocol["batch_size"] == 4
    assert (tmp_path / "work" / "log.txt.rank1").exists() and (tmp_path / "work" / "model_final.pth").exists()
