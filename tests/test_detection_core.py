"""The detection pieces that need no detectron2: the simple feature pyramid and its strides, the ViT feature map,
layer-wise lr decay, the torchvision -> detectron2 ResNet names, the recipes as plain data, the generated
COCO instances, MEC's published values, and the message when detectron2 is missing."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from probes.adapters import d2_config
from probes.adapters.d2_config import RECIPES, mask_rcnn_config, resolve_settings
from probes.adapters.d2_weights import detectron2_name, resnet_to_detectron2, split_c4
from probes.adapters.pyramid import (ChannelLayerNorm, SimpleFeaturePyramid, ViTFeatureMap, layer_decay_factor,
                                     pyramid_levels)

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_thread")


# ------------------------------------------------------------------------------------------ pyramid
def test_pyramid_levels_are_vitdet_strides():
    assert pyramid_levels(16) == {"p2": 4, "p3": 8, "p4": 16, "p5": 32, "p6": 64}
    assert pyramid_levels(16, top_block=False) == {"p2": 4, "p3": 8, "p4": 16, "p5": 32}
    assert pyramid_levels(8) == {"p1": 2, "p2": 4, "p3": 8, "p4": 16, "p5": 32}
    with pytest.raises(ValueError, match="power-of-two"):
        pyramid_levels(14)                       # DINOv2's 14 px patches: stride 3.5
    with pytest.raises(ValueError, match="halve"):
        pyramid_levels(16, scale_factors=(4.0, 1.0))


def test_pyramid_outputs_have_the_shapes_it_declares():
    torch.manual_seed(0)
    pyramid = SimpleFeaturePyramid(in_channels=32, patch_size=16, out_channels=24)
    feature_map = torch.randn(2, 32, 8, 10)      # a 128 x 160 input at stride 16
    out = pyramid(feature_map)
    assert list(out) == ["p2", "p3", "p4", "p5", "p6"]
    for name, (channels, stride) in pyramid.output_shapes().items():
        assert out[name].shape == (2, channels, -(-128 // stride), -(-160 // stride)), name  # ceil
    # FPN's P6 is P5 subsampled (max pool, kernel 1, stride 2): every other cell.
    torch.testing.assert_close(out["p6"], out["p5"][:, :, ::2, ::2])
    # Gradients reach the input through every level.
    feature_map.requires_grad_(True)
    sum(v.sum() for v in pyramid(feature_map).values()).backward()
    assert feature_map.grad is not None and feature_map.grad.abs().sum() > 0


def test_channel_layer_norm_is_layer_norm_over_channels():
    torch.manual_seed(0)
    x = torch.randn(2, 6, 3, 4)
    norm = ChannelLayerNorm(6)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.uniform_(-1, 1)
    reference = torch.nn.LayerNorm(6, eps=1e-6)
    reference.load_state_dict(norm.state_dict())
    torch.testing.assert_close(norm(x), reference(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2))


def test_pyramid_rejects_what_it_cannot_build():
    with pytest.raises(ValueError, match="divide by 4"):
        SimpleFeaturePyramid(in_channels=30, patch_size=16)
    with pytest.raises(ValueError, match="norm"):
        SimpleFeaturePyramid(in_channels=32, patch_size=16, norm="BN")


@pytest.fixture
def tiny_vit():
    import timm
    torch.manual_seed(0)
    return timm.create_model("vit_small_patch16_224", pretrained=False, img_size=64, embed_dim=32, depth=3,
                             num_heads=2, num_classes=0)


def test_vit_feature_map_is_the_last_block_before_the_final_norm(tiny_vit):
    trunk = ViTFeatureMap(tiny_vit, frozen=True)
    images = torch.randn(2, 3, 64, 64)
    # Independent path: embed, add positions, run the blocks, drop the CLS token, lay the patches out as a grid.
    x = tiny_vit.norm_pre(tiny_vit._pos_embed(tiny_vit.patch_embed(images)))
    for block in tiny_vit.blocks:
        x = block(x)
    expected = x[:, tiny_vit.num_prefix_tokens:].transpose(1, 2).reshape(2, 32, 4, 4)
    torch.testing.assert_close(trunk(images), expected)
    with pytest.raises(ValueError, match="built for 64x64"):
        trunk(torch.randn(1, 3, 96, 96))


def test_frozen_trunk_stays_fixed_and_fine_tuned_one_trains(tiny_vit):
    frozen = ViTFeatureMap(tiny_vit, frozen=True).train()
    assert not frozen.model.training and not any(p.requires_grad for p in frozen.parameters())
    assert not frozen(torch.randn(1, 3, 64, 64)).requires_grad
    tuned = ViTFeatureMap(tiny_vit, frozen=False).train()
    assert tuned.model.training
    tuned(torch.randn(1, 3, 64, 64)).sum().backward()
    assert tiny_vit.blocks[0].attn.qkv.weight.grad is not None


def test_layer_decay_follows_vitdet():
    prefix, n, rate = "backbone.trunk.model.", 12, 0.7
    factor = lambda name: layer_decay_factor(name, n, rate, prefix)  # noqa: E731
    assert factor(prefix + "patch_embed.proj.weight") == pytest.approx(0.7 ** 13)
    assert factor(prefix + "pos_embed") == pytest.approx(0.7 ** 13)
    assert factor(prefix + "blocks.0.attn.qkv.weight") == pytest.approx(0.7 ** 12)
    assert factor(prefix + "blocks.11.mlp.fc2.bias") == pytest.approx(0.7)
    assert factor("backbone.pyramid.stages.0.1.weight") == 1.0
    assert factor("roi_heads.box_predictor.cls_score.weight") == 1.0


# ------------------------------------------------------------------------------------------ weights
def test_resnet_names_map_as_detectron2s_converter_does():
    cases = {"conv1.weight": "stem.conv1.weight", "bn1.running_var": "stem.conv1.norm.running_var",
             "layer1.0.conv2.weight": "res2.0.conv2.weight", "layer2.3.bn3.bias": "res3.3.conv3.norm.bias",
             "layer3.0.downsample.0.weight": "res4.0.shortcut.weight",
             "layer4.0.downsample.1.running_mean": "res5.0.shortcut.norm.running_mean"}
    for torchvision_name, expected in cases.items():
        assert detectron2_name(torchvision_name) == expected
    assert detectron2_name("fc.weight") is None and detectron2_name("bn1.num_batches_tracked") is None
    with pytest.raises(ValueError, match="'layer5.0.conv1.weight'"):
        detectron2_name("layer5.0.conv1.weight", "mec.pth")


def test_every_torchvision_resnet50_weight_gets_one_detectron2_name():
    import torchvision
    state = torchvision.models.resnet50(weights=None).state_dict()
    mapped = resnet_to_detectron2(state)
    kept = [k for k in state if not k.startswith("fc.") and not k.endswith("num_batches_tracked")]
    assert len(mapped) == len(kept) == 265           # no two names collide, nothing else dropped
    assert all(mapped[detectron2_name(k)] is state[k] for k in kept)
    assert {k.split(".")[0] for k in mapped} == {"stem", "res2", "res3", "res4", "res5"}
    backbone, head = split_c4(mapped)
    assert not any(k.startswith("res5") for k in backbone) and len(backbone) + len(head) == 265
    assert head["0.shortcut.weight"] is state["layer4.0.downsample.0.weight"]
    with pytest.raises(ValueError, match="not a torchvision-layout ResNet"):
        resnet_to_detectron2({"fc.weight": torch.zeros(1)})


# ------------------------------------------------------------------------------------------ recipes
VIT = {"model": "mae", "format": None, "arch": None, "branch": "teacher", "frozen": False, "kind": "vit",
       "patch_size": 16, "embed_dim": 768, "num_blocks": 12, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
RESNET = dict(VIT, model="mec", kind="resnet", patch_size=None, embed_dim=2048, num_blocks=4)


def test_recipes_hold_the_published_numbers():
    vitdet, _ = resolve_settings("vitdet", "vit", frozen=False, device="cuda")
    assert (vitdet["optimizer"], vitdet["base_lr"], vitdet["weight_decay"], vitdet["layer_decay"]) == ("AdamW", 1e-4, 0.1, 0.7)
    assert (vitdet["batch_size"], vitdet["max_iter"], vitdet["steps"], vitdet["image_size"]) == (64, 184375, (163889, 177546), 1024)
    assert (vitdet["drop_path"], vitdet["amp"], vitdet["lsj_scale"]) == (0.1, True, (0.1, 2.0))
    fpn3x, _ = resolve_settings("fpn_3x", "resnet", frozen=False, device="cuda")
    assert (fpn3x["base_lr"], fpn3x["batch_size"], fpn3x["max_iter"], fpn3x["steps"]) == (0.02, 16, 270000, (210000, 250000))
    assert (fpn3x["backbone_norm"], fpn3x["freeze_at"]) == ("FrozenBN", 2)
    c4, _ = resolve_settings("c4_1x", "resnet", frozen=False, device="cuda")
    assert (c4["neck"], c4["backbone_norm"], c4["freeze_at"], c4["max_iter"]) == ("c4", "SyncBN", 0, 90000)


def test_variants_and_overrides():
    frozen, changed = resolve_settings("vitdet", "vit", frozen=True, device="cuda")
    assert changed == [] and frozen["drop_path"] == 0.0 and frozen["layer_decay"] is None
    frozen_r50, _ = resolve_settings("c4_1x", "resnet", frozen=True, device="cuda")
    assert (frozen_r50["backbone_norm"], frozen_r50["freeze_at"]) == ("FrozenBN", 5)
    short, changed = resolve_settings("vitdet", "vit", frozen=True, overrides={"max_iter": 150, "image_size": 128})
    assert changed == ["image_size", "max_iter"]
    assert short["steps"] == (133, 144) and short["warmup_iters"] == 0     # 163889 / 184375 x 150, ...
    assert short["anchor_sizes"] == (4, 8, 16, 32, 64) and short["max_size"] == 128
    assert short["amp"] is False                                          # on a CPU
    cpu_c4, _ = resolve_settings("c4_1x", "resnet", frozen=False)
    assert cpu_c4["backbone_norm"] == "BN"                                # SyncBN needs GPUs
    fpn_small, _ = resolve_settings("fpn_1x", "resnet", frozen=False, overrides={"image_size": 400})
    assert fpn_small["train_sizes"] == (320, 336, 352, 368, 384, 400) and fpn_small["max_size"] == 666
    with pytest.raises(ValueError, match="unknown recipe setting"):
        resolve_settings("vitdet", "vit", frozen=False, overrides={"learning_rate": 1})
    with pytest.raises(ValueError, match="a vit encoder takes"):
        resolve_settings("fpn_1x", "vit", frozen=False)
    assert set(RECIPES) == {"vitdet", "fpn_1x", "fpn_3x", "c4_1x"}


def test_mask_rcnn_config_wires_pyramid_levels_to_the_heads():
    vitdet, _ = resolve_settings("vitdet", "vit", frozen=False)
    keys = mask_rcnn_config(vitdet, VIT, train="tr", test="te", num_classes=80, output_dir="/w")
    assert keys["MODEL.RPN.IN_FEATURES"] == ["p2", "p3", "p4", "p5", "p6"]
    assert keys["MODEL.ROI_HEADS.IN_FEATURES"] == ["p2", "p3", "p4", "p5"]
    assert keys["MODEL.ANCHOR_GENERATOR.SIZES"] == [[32], [64], [128], [256], [512]]
    assert keys["MODEL.PIXEL_MEAN"] == pytest.approx([123.675, 116.28, 103.53]) and keys["INPUT.FORMAT"] == "RGB"
    assert (keys["MODEL.ROI_BOX_HEAD.NUM_CONV"], keys["MODEL.ROI_BOX_HEAD.NUM_FC"], keys["MODEL.ROI_BOX_HEAD.NORM"]) == (4, 1, "LN")
    assert keys["MODEL.RPN.CONV_DIMS"] == [-1, -1] and keys["PARTPROBE.LAYER_DECAY"] == 0.7
    assert "MODEL.RESNETS.NORM" not in keys
    c4, _ = resolve_settings("c4_1x", "resnet", frozen=False)
    keys = mask_rcnn_config(c4, RESNET, train="tr", test="te", num_classes=80, output_dir="/w")
    assert keys["MODEL.RPN.IN_FEATURES"] == keys["MODEL.ROI_HEADS.IN_FEATURES"] == ["res4"]
    assert keys["MODEL.ROI_HEADS.NAME"] == "Res5ROIHeads" and keys["MODEL.RESNETS.STRIDE_IN_1X1"] is False
    assert keys["MODEL.ANCHOR_GENERATOR.SIZES"] == [[32, 64, 128, 256, 512]]
    fpn, _ = resolve_settings("fpn_1x", "resnet", frozen=True)
    keys = mask_rcnn_config(fpn, RESNET, train="tr", test="te", num_classes=80, output_dir="/w")
    assert keys["MODEL.RESNETS.OUT_FEATURES"] == ["res2", "res3", "res4", "res5"] and keys["MODEL.BACKBONE.FREEZE_AT"] == 5


# ------------------------------------------------------------------------------------------ data
def test_generated_instances_are_consistent_coco(tmp_path):
    from pycocotools import mask as mask_utils
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval
    from probes.data.coco_synth import CATEGORY_COLOURS
    from probes.data.synth import synth
    from PIL import Image

    root = synth("coco-instances", tmp_path / "coco", seed=3, train_images=4, val_images=6, image_size=160)
    gt = COCO(str(root / "annotations" / "instances_val2017.json"))
    assert len(gt.getCatIds()) == 80 and 90 in gt.getCatIds()
    anns = gt.loadAnns(gt.getAnnIds())
    assert len({a["id"] for a in anns}) == len(anns) and sum(a["iscrowd"] for a in anns) == 1
    for ann in (a for a in anns if not a["iscrowd"]):
        info = gt.imgs[ann["image_id"]]
        mask = gt.annToMask(ann).astype(bool)
        assert mask.sum() == ann["area"]
        rows, cols = np.nonzero(mask)
        assert ann["bbox"] == [cols.min(), rows.min(), cols.max() - cols.min() + 1, rows.max() - rows.min() + 1]
        pixels = np.asarray(Image.open(root / "val2017" / info["file_name"]), dtype=float)[mask]
        colour = np.asarray(CATEGORY_COLOURS[ann["category_id"]], dtype=float)
        # Stripes darken every other band to 65 %: the object's mean colour lies between the two shades.
        assert np.all(pixels.mean(0) <= colour + 20) and np.all(pixels.mean(0) >= 0.6 * colour - 20)
    # The ground truth as detections scores AP 100 for boxes and masks (pycocotools as the reference).
    detections = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1.0,
                   "segmentation": mask_utils.encode(np.asfortranarray(gt.annToMask(a)))} for a in anns if not a["iscrowd"]]
    for d in detections:
        d["segmentation"]["counts"] = d["segmentation"]["counts"].decode()
    for kind in ("bbox", "segm"):
        evaluation = COCOeval(gt, gt.loadRes(detections), kind)
        evaluation.evaluate(), evaluation.accumulate()
        evaluation.summarize()
        assert evaluation.stats[0] == pytest.approx(1.0)


# ------------------------------------------------------------------------------------------ published
def test_mec_values_need_the_c4_fine_tune_recipe_as_published():
    from probes.published import lookup, paper_alias
    protocol = {"recipe": "c4_1x", "backbone_training": "fine-tune", "recipe_overrides": [], "backbone_norm": "SyncBN",
                "data_source": "official"}
    match = lookup(task="coco_detection", model="mec", feature="c4", protocol=protocol, split="val2017")
    assert match.values == {"box_AP75": 43.2, "mask_AP75": 36.8}
    assert "Maximum Entropy Coding" in match.sources["box_AP75"]
    shortened = lookup(task="coco_detection", model="mec", feature="c4",
                       protocol=dict(protocol, recipe_overrides=["max_iter"]), split="val2017")
    assert shortened.values == {} and any("recipe_overrides" in r for r in shortened.reasons)
    assert lookup(task="coco_detection", model="mec", feature="fpn", protocol=dict(protocol, recipe="fpn_1x"),
                  split="val2017").values == {}
    assert paper_alias("mec") is None       # a peer's model, not one of Zhu et al.'s


# ------------------------------------------------------------------------------------------ missing detectron2
def test_command_says_how_to_install_detectron2_when_it_is_missing(tmp_path):
    shadow = tmp_path / "shadow" / "detectron2"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('detectron2 hidden by the test')\n")
    env = {**os.environ, "PYTHONPATH": str(shadow.parent), "PARTPROBE_HOME": str(tmp_path / "home")}
    done = subprocess.run([sys.executable, "probes/detection.py", "--model", "mae"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "git clone https://github.com/facebookresearch/detectron2" in done.stderr
    assert 'MAX_JOBS=2 pip install --no-build-isolation -e' in done.stderr
    assert d2_config.INSTALL_HELP.splitlines()[0].split("(")[0] in done.stderr
