"""Segmentation without training: the generated configuration against docs/protocols.md#segmentation-head
and docs/protocols.md#segmentation-training-and-inference field by field, the class sets read through the
probes.data readers, mmseg's IoUMetric on hand-made predictions, the backbone, and the training-free dense
kNN protocol on generated data with planted part masks."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from probes import segmentation as seg
from probes.data.synth import synth

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_thread")


# ------------------------------------------------------------------------------------------ the configuration
# docs/protocols.md#segmentation-training-and-inference typed by hand:
# dataset -> (classes, train img_scale, crop, test resize, stride).
SPEC_TABLE = {"ade20k_part209": (209, (2048, 512), 512, (2048, 512), 341),
              "pascal_part193": (193, (520, 520), 480, (3840, 480), 161),
              "lip19": (19, (1024, 320), 320, (4096, 320), 161)}


@pytest.mark.parametrize("model, dataset, img_size", [("dino", "ade20k-part-209", None), ("mae", "pascal-part-193", 480)])
def test_generated_config_matches_the_spec(model, dataset, img_size):
    spec = seg.describe_encoder(model)                       # registry entry built on the meta device: no download
    protocol = seg.resolve_protocol("linear", dataset, spec)
    cfg = seg.runner_config(protocol, dataset, "/data/root", spec, work_dir="/w", world_size=8, device="cuda")
    name = seg.seg_dataset(dataset).name
    classes, train_scale, crop, test_scale, stride = SPEC_TABLE[name]
    m = cfg["model"]
    # Backbone: frozen, blocks 4/6/8/12 before the final norm; DINO at 224 interpolated on the fly, MAE at the crop.
    backbone = m["backbone"]
    assert backbone["layers"] == [3, 5, 7, 11] and backbone["frozen"] is True and backbone["final_norm"] is False
    kwargs = backbone["arch"]["kwargs"]
    if img_size is None:
        assert "img_size" not in kwargs and kwargs["dynamic_img_size"] is True and spec.img_size == 224
    else:
        assert kwargs["img_size"] == img_size and "dynamic_img_size" not in kwargs
    # Head: FCNHead, resize_concat of 4 x 768 = 3072 channels, num_convs 0, no concat, dropout 0, no upsampling.
    head = m["decode_head"]
    assert head["type"] == "FCNHead" and head["input_transform"] == "resize_concat"
    assert head["in_channels"] == [768] * 4 and head["channels"] == 3072 and head["in_index"] == [0, 1, 2, 3]
    assert head["num_convs"] == 0 and head["concat_input"] is False and head["dropout_ratio"] == 0.0
    assert head["num_classes"] == classes and head["align_corners"] is False
    assert head["loss_decode"] == {"type": "CrossEntropyLoss", "use_sigmoid": False, "loss_weight": 1.0}
    # Auxiliary FCN on block 8 (in_index 2), 256 channels, one conv, dropout 0.1, weight 0.4; SyncBN on 8 GPUs.
    aux = m["auxiliary_head"]
    assert (aux["in_index"], aux["in_channels"], aux["channels"], aux["num_convs"]) == (2, 768, 256, 1)
    assert aux["dropout_ratio"] == 0.1 and aux["loss_decode"]["loss_weight"] == 0.4 and aux["concat_input"] is False
    assert aux["norm_cfg"]["type"] == "SyncBN"
    # Normalisation and padding.
    pre = m["data_preprocessor"]
    assert pre["mean"] == [123.675, 116.28, 103.53] and pre["std"] == [58.395, 57.12, 57.375]
    assert pre["bgr_to_rgb"] is True and pre["seg_pad_val"] == 255 and tuple(pre["size"]) == (crop, crop)
    # Slide inference.
    assert m["test_cfg"] == {"mode": "slide", "crop_size": (crop, crop), "stride": (stride, stride)}
    # Training pipeline: resize ratio 0.5-2 at the dataset's img_scale, crop with cat_max_ratio 0.75, flip 0.5,
    # photometric distortion; test: keep-ratio resize.
    train = cfg["train_dataloader"]
    steps = {s["type"]: s for s in train["dataset"]["pipeline"]}
    assert tuple(steps["RandomResize"]["scale"]) == train_scale and steps["RandomResize"]["ratio_range"] == (0.5, 2.0)
    assert steps["RandomResize"]["keep_ratio"] is True
    assert steps["RandomCrop"]["crop_size"] == (crop, crop) and steps["RandomCrop"]["cat_max_ratio"] == 0.75
    assert steps["RandomFlip"]["prob"] == 0.5 and "PhotoMetricDistortion" in steps
    test = {s["type"]: s for s in cfg["val_dataloader"]["dataset"]["pipeline"]}
    assert tuple(test["Resize"]["scale"]) == test_scale and test["Resize"]["keep_ratio"] is True
    # Batch 16 = 2 per GPU x 8; 160k iterations; AdamW 4e-4, betas (0.9, 0.999), wd 0.05; mixed precision.
    assert train["batch_size"] * 8 == 16 and protocol.batch_size == 16
    assert cfg["train_cfg"] == {"type": "IterBasedTrainLoop", "max_iters": 160_000, "val_interval": 16_000}
    assert cfg["optim_wrapper"]["optimizer"] == {"type": "AdamW", "lr": 4e-4, "betas": (0.9, 0.999), "weight_decay": 0.05}
    assert cfg["optim_wrapper"]["type"] == "AmpOptimWrapper"
    # Warm-up 1,500 linear iterations from ratio 1e-6, then poly power 1 to 0.
    warmup, poly = cfg["param_scheduler"]
    assert (warmup["type"], warmup["start_factor"], warmup["begin"], warmup["end"]) == ("LinearLR", 1e-6, 0, 1500)
    assert (poly["type"], poly["power"], poly["eta_min"], poly["begin"], poly["end"]) == ("PolyLR", 1.0, 0.0, 1500, 160_000)
    assert cfg["default_hooks"]["checkpoint"]["interval"] == 8000
    assert cfg["randomness"] == {"seed": 0, "deterministic": True}
    # The record names every one of these choices.
    record = seg.protocol_record(protocol, dataset, spec, world_size=8, device="cuda")
    assert record["seg_layers"] == [3, 5, 7, 11] and record["seg_upsample"] == "none" and record["seg_aux_block"] == 7
    assert record["seg_checkpoint"] == "last" and record["crop_size"] == crop and record["iters"] == 160_000
    assert record["precision"].startswith("amp") and record["train_augmentation"] == "partaware"


def test_paper_text_preset_and_cpu_choices():
    spec = seg.describe_encoder("dino")
    protocol = seg.resolve_protocol("linear", "lip", spec, preset="paper-text")
    assert protocol.seg_layers == (11,) and protocol.seg_upsample == "4x"
    cfg = seg.runner_config(protocol, "lip", "/d", spec, work_dir="/w", world_size=2, device="cpu")
    assert cfg["model"]["decode_head"]["type"] == "PartprobeUpsampledFCNHead"
    assert cfg["model"]["auxiliary_head"]["norm_cfg"]["type"] == "BN"         # no SyncBN on CPU processes
    assert cfg["model_wrapper_cfg"]["device_ids"] is None and cfg["optim_wrapper"]["type"] == "OptimWrapper"
    short = seg.resolve_protocol("linear", "lip", spec, iters=1600)
    assert short.warmup_iters == 15 and short.checkpoint_interval == 1600 and short.eval_interval == 1600
    with pytest.raises(ValueError, match="seg_upsample"):
        seg.resolve_protocol("linear", "lip", spec, seg_upsample="8x")
    with pytest.raises(ValueError, match="pass the blocks"):
        seg.resolve_protocol("linear", "lip", _four_block_spec())


def _four_block_spec():
    return seg.EncoderSpec("x", None, {"model": "vit_small_patch16_224", "kwargs": {}}, "teacher", "DINO", "vit", 4,
                           (64,) * 4, 16, 64, False, False)


def test_finetune_preset_is_the_mae_upernet_recipe():
    spec = seg.describe_encoder("mae")
    protocol = seg.resolve_protocol("finetune", "ade20k", spec)
    cfg = seg.runner_config(protocol, "ade20k", "/d", spec, work_dir="/w")
    assert cfg["model"]["backbone"]["frozen"] is False and cfg["model"]["backbone"]["arch"]["kwargs"]["drop_path_rate"] == 0.1
    assert cfg["model"]["neck"]["rescales"] == [4, 2, 1, 0.5] and cfg["model"]["decode_head"]["type"] == "UPerHead"
    assert cfg["optim_wrapper"]["optimizer"]["lr"] == 1e-4
    assert cfg["optim_wrapper"]["paramwise_cfg"] == {"num_layers": 12, "layer_decay_rate": 0.65}


# ------------------------------------------------------------------------------------------ class sets and readers
REDUCE_ZERO_LABEL = ("lip19", "ade20k", "ade20k_object59", "ade20k_part209", "pascal_part193", "pascal_object16")


@pytest.mark.parametrize("generator, dataset, classes", [
    ("lip", "lip", 19), ("lip", "lip20", 20), ("lip-19", "lip19", 19), ("ade20k-part-209", "ade20k_part209", 209),
    ("ade20k-object-59", "ade20k_object59", 59), ("pascal-part-193", "pascal_part193", 193),
    ("pascal-object-16", "pascal_object16", 16), ("ade20k", "ade20k", 150), ("ade20k-part-234", "ade20k_part234", 234),
    ("ade20k-part-234", "ade20k_object44", 44), ("pascal-part-116", "pascal_part116", 116),
    ("pascal-part-116", "pascal_object20", 20), ("pascal-part-58", "pascal_part58", 58),
    ("pascal-part-108", "pascal_part108", 108)])
def test_every_class_set_reads_its_layout(tmp_path, generator, dataset, classes):
    root = synth(generator, tmp_path, seed=0)
    for split in ("train", "val"):
        data = seg.load_split(dataset, root, split)
        assert len(data.class_names) == classes and len(data) > 0
        values = np.unique(np.concatenate([data.labels(i).ravel() for i in range(len(data))]))
        assert ((values < classes) | (values == 255)).all() and (values < classes).any()
        if seg.seg_dataset(dataset).name in REDUCE_ZERO_LABEL:
            assert 255 in values            # the generated background border (stored 0) became ignore
        if dataset == "lip20":
            assert 0 in values and 255 not in values     # background kept as class 0


def test_label_conventions_by_hand(tmp_path):
    from probes.data.labelmaps import write_png
    raw = np.array([[0, 1, 19], [2, 255, 0]], dtype=np.uint8)
    write_png(tmp_path / "lip.png", raw)
    assert seg.read_labels("lip19", tmp_path / "lip.png").tolist() == [[255, 0, 18], [1, 255, 255]]
    assert seg.read_labels("lip20", tmp_path / "lip.png").tolist() == raw.tolist()     # background kept as class 0
    parts = np.array([[0, 233], [65535, 7]], dtype=np.uint16)
    write_png(tmp_path / "p234.png", parts)
    assert seg.read_labels("ade20k_part234", tmp_path / "p234.png").tolist() == [[0, 233], [255, 7]]
    write_png(tmp_path / "bad.png", np.array([[20]], dtype=np.uint8))
    with pytest.raises(Exception, match="bad.png"):
        seg.read_labels("lip19", tmp_path / "bad.png")


def test_object_and_part_sets_are_paired():
    assert seg.seg_dataset("ade20k-object-59").pair == "ade20k_part209"
    assert seg.seg_dataset("pascal_part193").pair == "pascal_object16"
    assert seg.seg_dataset("ade20k_part234").pair == "ade20k_object44"
    assert seg.seg_dataset("LIP").name == "lip19"
    with pytest.raises(ValueError, match="known"):
        seg.seg_dataset("pascal-part-999")


# ------------------------------------------------------------------------------------------ metrics
def test_metrics_equal_mmseg_iou_metric_with_an_absent_class():
    iou_metric = pytest.importorskip("mmseg.evaluation.metrics.iou_metric")
    names = ("a", "b", "c", "d")
    label = np.array([[0, 0, 1, 1], [0, 1, 1, 255], [3, 3, 255, 255]])
    pred = np.array([[0, 1, 1, 1], [0, 1, 0, 2], [3, 2, 2, 0]])  # c (2) predicted but never labelled; none absent
    label2 = np.array([[0, 0], [1, 1]])
    pred2 = np.array([[0, 0], [1, 0]])
    ours = seg.intersect_and_union(pred, label, 4) + seg.intersect_and_union(pred2, label2, 4)
    theirs = [iou_metric.IoUMetric.intersect_and_union(torch.tensor(p), torch.tensor(l), 4, 255)
              for p, l in ((pred, label), (pred2, label2))]
    metric = iou_metric.IoUMetric(iou_metrics=["mIoU"])
    metric.dataset_meta = {"classes": names}
    reference = metric.compute_metrics(theirs)
    summary = seg.summarize(ours, names)
    for key in ("mIoU", "mAcc", "aAcc"):
        assert summary[key] == pytest.approx(reference[key], abs=0.005)           # mmseg rounds to 2 decimals
    assert summary["IoU"]["c"] == 0.0 and summary["Acc"]["c"] is None              # predicted, never labelled
    # A class neither labelled nor predicted: NaN in mmseg, left out of the means; None here, not in the record.
    absent = ("a", "b", "c", "d", "e")
    ours5 = np.concatenate([ours, np.zeros((4, 1), dtype=np.int64)], axis=1)
    metric.dataset_meta = {"classes": absent}
    theirs5 = [tuple(torch.cat([t, torch.zeros(1)]) for t in r) for r in theirs]
    reference5 = metric.compute_metrics(theirs5)
    summary5 = seg.summarize(ours5, absent)
    assert summary5["mIoU"] == pytest.approx(reference5["mIoU"], abs=0.005) == pytest.approx(summary["mIoU"], abs=0.005)
    assert summary5["IoU"]["e"] is None and summary5["absent"] == ["e"]
    assert "IoU[e]" not in seg.record_metrics(summary5) and "IoU[c]" in seg.record_metrics(summary5)


def test_chance_levels_by_hand(tmp_path):
    root = synth("lip", tmp_path, seed=0, train_images=2, val_images=2)
    val = seg.load_split("lip", root, "val")
    chance = seg.chance_summary(val)
    areas = sum(seg.intersect_and_union(val.labels(i), val.labels(i), 19) for i in range(len(val)))
    frequent = int(np.argmax(areas[3]))
    # The most frequent class everywhere: IoU = its share of the labelled pixels, the other present classes 0.
    assert chance["constant_mIoU"] == pytest.approx(100 * areas[3, frequent] / areas[3].sum() / chance["classes_present"])
    assert 0 < chance["chance_mIoU"] < 20


# ------------------------------------------------------------------------------------------ backbone
def test_backbone_maps_frozen_and_padded(shared):
    case = shared / "golden" / "mae_encoder"
    meta = json.loads((case / "meta.json").read_text())
    target = meta["timm_target"]["this_golden"]
    spec = seg.describe_encoder(str(case / "checkpoint.pth"), format="mae",
                                arch={"model": target["create_model"], "kwargs": target["kwargs"]})
    arch = seg.backbone_arch(spec, 96)
    assert arch["kwargs"]["img_size"] == 96 and spec.sincos
    backbone = seg.build_backbone(spec.model, "mae", arch, layers=[0, spec.depth - 1])
    from probes.zoo.posembed import mae_sincos_pos_embed
    expected = mae_sincos_pos_embed((6, 6), spec.channels[0])
    assert torch.allclose(backbone.model.pos_embed.float(), expected.to(backbone.model.pos_embed), atol=1e-6)
    backbone.train()
    assert not backbone.model.training and not any(p.requires_grad for p in backbone.parameters())
    maps = backbone(torch.randn(2, 3, 96, 96))
    assert [tuple(m.shape) for m in maps] == [(2, spec.channels[0], 6, 6)] * 2
    small = backbone(torch.randn(1, 3, 64, 80))                                   # padded to 96, cut to 4 x 5
    assert tuple(small[0].shape[-2:]) == (4, 5)
    # The block outputs are the encoder's own, before the final norm.
    tokens = backbone.encoder.extract(torch.randn(1, 3, 96, 96).clone(), ["block"], block=0)["block"]
    assert tokens.shape[1] == 1 + 36


def test_core_imports_without_mmseg():
    code = ("import sys, importlib.abc\n"
            "class Block(importlib.abc.MetaPathFinder):\n"
            "    def find_spec(self, name, path, target=None):\n"
            "        if name.split('.')[0] in ('mmseg', 'mmengine', 'mmcv'): raise ImportError('blocked ' + name)\n"
            "sys.meta_path.insert(0, Block())\n"
            "import probes.segmentation, probes.part_segmentation, probes.results, probes.published\n"
            "try:\n    import probes.adapters.mmseg\nexcept ImportError as e:\n    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "MMCV_WITH_OPS=0 pip install -e '.[seg]'" in out.stdout


# ------------------------------------------------------------------------------------------ dense protocol
@pytest.mark.parametrize("generator, dataset", [("lip", "lip"), ("ade20k-part-209", "ade20k_part209")])
def test_dense_protocol_learns_planted_parts_without_training(dino_golden, tmp_path, generator, dataset):
    case, meta, _ = dino_golden
    # ADE20K-Part-209: 4 training images (16 of the 209 classes, whose planted colours stay apart).
    root = synth(generator, tmp_path, seed=0, train_images=16 if generator == "lip" else 4, val_images=4)
    target = meta["timm_target"]["this_golden"]
    spec = seg.describe_encoder(str(case / "checkpoint.pth"), format="dino_full",
                                arch={"model": target["create_model"], "kwargs": target["kwargs"]})
    protocol = seg.resolve_protocol("dense", dataset, spec, dense_input_size=128, dense_memory=512)
    backbone = seg.build_backbone(spec.model, spec.format, seg.backbone_arch(spec, 128), layers=protocol.seg_layers)
    train, val = seg.load_split(dataset, root, "train"), seg.load_split(dataset, root, "val")
    result = seg.dense_knn(backbone, train, val, protocol)
    chance = seg.chance_summary(val)
    assert result["memory_patches"] <= 512 and result["patches_per_image"] == 512 // len(train)   # bounded
    # Chance: the better of the best constant prediction and prior-weighted random labels (a few percent).
    assert chance["chance_mIoU"] < 10
    assert result["summary"]["mIoU"] > 20 and result["summary"]["mIoU"] > 4 * chance["chance_mIoU"], \
        (result["summary"]["mIoU"], chance)


def test_published_value_only_for_the_papers_settings():
    from probes.published import lookup
    spec = seg.describe_encoder("dino")
    paper = seg.protocol_record(seg.resolve_protocol("linear", "lip", spec), "lip", spec, world_size=8, device="cuda")
    match = lookup(task="lip19_linear_segmentation", model="dino", feature="blocks", protocol=paper)
    assert match.values == {"mIoU": 41.0, "mAcc": 51.9, "aAcc": 74.0}
    for change in (dict(iters=16_000), dict(lr=1e-3), dict(seg_aux_head=False), dict(crop_size=512),
                   dict(augmentation="none"), dict(seg_layers=(11,))):
        other = seg.protocol_record(seg.resolve_protocol("linear", "lip", spec, **change), "lip", spec)
        missed = lookup(task="lip19_linear_segmentation", model="dino", feature="blocks", protocol=other)
        assert missed.values == {} and missed.reasons, change
    synthetic = seg.protocol_record(seg.resolve_protocol("linear", "lip", spec), "lip", spec, data_source="synthetic")
    assert lookup(task="lip19_linear_segmentation", model="dino", feature="blocks", protocol=synthetic).values == {}


def test_resnet_stages_and_baseline_grid(tmp_path):
    import timm
    from safetensors.torch import save_file
    arch = {"model": "resnet18", "kwargs": {"num_classes": 0}}
    save_file(timm.create_model("resnet18", pretrained=False, **arch["kwargs"]).state_dict(), tmp_path / "r18.safetensors")
    spec = seg.describe_encoder(str(tmp_path / "r18.safetensors"), "timm", arch)
    assert spec.kind == "resnet" and spec.channels == (64, 128, 256, 512) and spec.default_layers() == [0, 1, 2, 3]
    assert seg.backbone_arch(spec, 320) is None
    backbone = seg.build_backbone(spec.model, "timm", arch, layers=[1, 3])
    maps = backbone(torch.randn(1, 3, 128, 128))
    assert [tuple(m.shape) for m in maps] == [(1, 128, 16, 16), (1, 512, 4, 4)] and backbone.out_channels == [128, 512]
    baseline = seg.build_backbone("colorstats", layers=[0])
    (grid,) = baseline(torch.randn(2, 3, 64, 96))
    assert tuple(grid.shape) == (2, 66, 4, 6)
    with pytest.raises(ValueError, match="no weights to train"):
        seg.build_backbone("colorstats", layers=[0], frozen=False)
