"""Part and object segmentation without a framework: datasets, the protocols as data, the dense kNN protocol.

Zhu et al. Table 4 / Figure 6 (docs/protocols.md#linear-segmentation). Three protocols:

* ``linear`` (preset ``partaware``, the official code): the frozen encoder's patch-token maps of blocks
  [3, 5, 7, 11] (before the final norm), concatenated, one 1x1 conv at stride 16, logits resized in the
  loss; an auxiliary FCN head on block 8 (training only); AdamW 4e-4, wd 0.05, 1,500 linear warm-up
  iterations then poly; 160k iterations, batch 16; slide inference. Preset ``paper-text`` is the paper's
  wording: 4x bilinear upsampling before the 1x1 conv, on the last block.
* ``finetune`` (preset ``mae-upernet``): the BEiT/MAE recipe as mmsegmentation ships it for MAE
  (UperNet over a 4-level feature pyramid of the same blocks, AdamW 1e-4, layer-wise lr decay 0.65,
  drop path 0.1), the encoder trained.
* ``dense`` (not in the paper, no training): every validation patch takes the label distribution of its
  k nearest training patches (cosine, faiss), softmax-weighted (Hummingbird's soft label transfer),
  upsampled bilinearly to the label map's size; the training patches are a seeded sample of bounded size.

The two trained protocols run through mmsegmentation (``probes/adapters/mmseg.py``); this module holds what
they share without it: the class sets and label conventions, the encoder as a dense backbone, the protocol
description and the generated runner configuration (plain data, one description for every model and
dataset), and mmseg's metric definitions.
"""
from __future__ import annotations

import dataclasses
import math
import os
import re
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

IGNORE = 255
# mmseg's (and the official configs') normalisation, in 0-255 pixel units, for every model
# (docs/protocols.md#segmentation-training-and-inference).
MEAN = (123.675, 116.28, 103.53)
STD = (58.395, 57.12, 57.375)
PAPER_ITERS = 160_000
PAPER_LAYERS = (3, 5, 7, 11)          # blocks 4, 6, 8 and 12 of a 12-block ViT (0-based)
AUX_INDEX = 2                          # the auxiliary FCN reads the third selected map: block 8 (in_index=2)
# DINO and iBOT keep img_size 224 and interpolate position embeddings on the fly
# (docs/protocols.md#segmentation-position-embeddings).
ON_THE_FLY_POS_METHODS = ("DINO", "iBOT")
PROTOCOLS = ("linear", "finetune", "dense")
PROBE_NAMES = {"linear": "linear_segmentation", "finetune": "finetune_segmentation", "dense": "dense_segmentation"}


# ---------------------------------------------------------------------------------------------------------
# Datasets: class sets, label conventions and the readers of probes/data
# ---------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SegDataset:
    name: str            # the record's dataset name
    num_classes: int
    family: str          # table row: ade20k, pascal or lip (docs/protocols.md#segmentation-training-and-inference)
    labels: str          # how stored values become classes 0..N-1 and ignore (255); recorded
    pair: str | None     # the object (or part) set annotated on the same images, for Figure 6
    layout: str          # the reader of probes/data and its on-disk layout


_REDUCE = "stored 0 = background/unlabelled -> ignore, v -> v - 1 (mmseg reduce_zero_label)"
DATASETS = {d.name: d for d in (
    SegDataset("ade20k", 150, "ade20k", _REDUCE, None, "ADEChallengeData2016 (probes.data.ade20k)"),
    SegDataset("ade20k_object59", 59, "ade20k", _REDUCE, "ade20k_part209",
               "the authors' ADE20K-Object-59, ADEChallengeData2016 folders (probes.data.mmseg_layout)"),
    SegDataset("ade20k_part209", 209, "ade20k", _REDUCE, "ade20k_object59",
               "the authors' ADE20K-Part-209, img/ and ann/ (probes.data.mmseg_layout)"),
    SegDataset("ade20k_part234", 234, "ade20k", "stored 0..233 = parts, 65535 -> ignore", "ade20k_object44",
               "OV-PARTS ADE20KPart234/ part maps (probes.data.ade20k_part234)"),
    SegDataset("ade20k_object44", 44, "ade20k", "stored 0..43 = objects, 255 = ignore", "ade20k_part234",
               "ADE20KPart234/annotations_detectron2_obj (probes.data.ade20k_part234)"),
    SegDataset("pascal_part58", 58, "pascal", "stored 0 = background (a class), 1..57 parts, 255 = ignore", None,
               "PascalPartGMNet/ label58 (probes.data.pascal_part)"),
    SegDataset("pascal_part108", 108, "pascal", "stored 0 = background (a class), 1..107 parts, 255 = ignore", None,
               "PascalPartGMNet/ label108 (probes.data.pascal_part)"),
    SegDataset("pascal_part116", 116, "pascal", "stored 0..115 = parts, 255 = ignore", "pascal_object20",
               "OV-PARTS PascalPart116/ part maps (probes.data.pascal_part)"),
    SegDataset("pascal_object20", 20, "pascal", "stored 0..19 = VOC objects, 255 = background (ignored)",
               "pascal_part116", "PascalPart116/annotations_detectron2_obj (probes.data.pascal_part)"),
    SegDataset("pascal_part193", 193, "pascal", _REDUCE, "pascal_object16",
               "the authors' Pascal-Part-193, img/ and ann/ (probes.data.mmseg_layout)"),
    SegDataset("pascal_object16", 16, "pascal", _REDUCE, "pascal_part193",
               "the authors' Pascal-Object-16, img/ and ann/ (probes.data.mmseg_layout)"),
    SegDataset("lip19", 19, "lip", "stored 0 = Background -> ignore (the paper), v -> v - 1", None,
               "LIP (probes.data.lip) or the authors' img/ and ann/ (probes.data.mmseg_layout)"),
    SegDataset("lip20", 20, "lip", "stored 0..19, Background kept as class 0", None,
               "LIP (probes.data.lip) or the authors' img/ and ann/ (probes.data.mmseg_layout)"),
)}
ALIASES = {"lip": "lip19"}
_LAYOUT_PRESET = {"ade20k_object59": "ade20k-object-59", "ade20k_part209": "ade20k-part-209",
                  "pascal_part193": "pascal-part-193", "pascal_object16": "pascal-object-16", "lip19": "lip-19",
                  "lip20": "lip-19"}


def _key(name: str) -> str:
    return re.sub(r"[-_ ]", "", name.lower())


def seg_dataset(name: str) -> SegDataset:
    """The class set called ``name``: a record name (``ade20k_part209``), the data CLI's (``ade20k-part-209``)
    or an alias (``lip`` = ``lip19``, the paper's LIP)."""
    by_key = {_key(n): d for n, d in DATASETS.items()}
    by_key.update({_key(a): DATASETS[n] for a, n in ALIASES.items()})
    try:
        return by_key[_key(name)]
    except KeyError:
        raise ValueError(f"unknown segmentation dataset {name!r}; known: {', '.join(DATASETS)} "
                         f"(aliases: {', '.join(f'{a}={n}' for a, n in ALIASES.items())})") from None


@dataclass(frozen=True)
class SegSplit:
    """One split: (image, label map) pairs in the reader's order, and the class names."""
    dataset: str
    root: Path
    split: str
    items: tuple[tuple[Path, Path], ...]
    class_names: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.items)

    def labels(self, index: int) -> np.ndarray:
        return read_labels(self.dataset, self.items[index][1])

    def identity(self) -> dict:
        """What the split's numbers depend on (its files, by path, size and modification time)."""
        import hashlib

        digest = hashlib.sha256()
        for image, label in self.items:
            for path in (image, label):
                stat = os.stat(path)
                digest.update(f"{path}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
        return {"view": "segmentation", "dataset": self.dataset, "root": str(self.root), "split": self.split,
                "count": len(self), "files_sha256": digest.hexdigest()}


def load_split(name: str, root: str | os.PathLike, split: str) -> SegSplit:
    """A split ("train" or "val") of a dataset, read with its probes.data reader (errors name file and field)."""
    from probes.data import lip, mmseg_layout, pascal_part
    from probes.data.ade20k import ADE20KSceneParsing
    from probes.data.ade20k_part234 import ADE20KPart234

    spec = seg_dataset(name)
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    root = Path(root)
    ade_split = {"train": "training", "val": "validation"}[split]
    if spec.name == "ade20k":
        reader = ADE20KSceneParsing(root, ade_split)
        items = [(s.image_path, s.annotation_path) for s in reader.samples]
        names = reader.class_names
    elif spec.name in ("ade20k_part234", "ade20k_object44"):
        reader = ADE20KPart234(root, ade_split)
        if spec.name == "ade20k_part234":
            items, names = [(s.image_path, s.part_path) for s in reader.samples], reader.part_names
        else:
            missing = next((s for s in reader.samples if s.object_path is None), None)
            if missing is not None:
                reader.object_map(reader.samples.index(missing))        # raises: names the missing file
            items, names = [(s.image_path, s.object_path) for s in reader.samples], reader.object_names
    elif spec.name in ("pascal_part58", "pascal_part108"):
        reader = pascal_part.PascalPartGMNet(root, spec.num_classes, split)
        items, names = [(s.image_path, s.label_path) for s in reader.samples], reader.class_names
    elif spec.name in ("pascal_part116", "pascal_object20"):
        reader = pascal_part.PascalPart116(root, split)
        if spec.name == "pascal_part116":
            items, names = [(s.image_path, s.label_path) for s in reader.samples], reader.part_names
        else:
            items = [(s.image_path, pascal_part.object_map_path(s.label_path)) for s in reader.samples]
            names = reader.object_names
    elif spec.name in ("lip19", "lip20") and not (root / "img").is_dir():
        reader = lip.LIP(root, split)
        items = [(s.image_path, s.label_path) for s in reader.samples]
        names = lip.LABELS[1:] if spec.name == "lip19" else lip.LABELS
    else:
        reader = mmseg_layout.MMSegLayout(root, _LAYOUT_PRESET[spec.name], split)
        items = [(s.image_path, s.label_path) for s in reader.samples]
        names = reader.class_names if spec.name != "lip20" else lip.LABELS
    if len(names) != spec.num_classes:
        raise ValueError(f"{root}: the reader names {len(names)} classes, {spec.name} has {spec.num_classes}")
    return SegSplit(spec.name, root, split, tuple(items), tuple(names))


def read_labels(name: str, path: str | os.PathLike) -> np.ndarray:
    """uint8 [H, W] of classes 0..N-1 and 255 = ignore, from the stored label map (its reader checks values)."""
    from probes.data import ade20k, ade20k_part234, lip, mmseg_layout, pascal_part

    spec = seg_dataset(name)
    if spec.name == "ade20k":
        return mmseg_layout.reduce_zero_label(ade20k.read_challenge_label(path))
    if spec.name == "ade20k_part234":
        parts = ade20k_part234.read_part_map(path)
        return np.where(parts == ade20k_part234.PART_IGNORE, IGNORE, parts).astype(np.uint8)
    if spec.name == "ade20k_object44":
        return ade20k_part234.read_object_map(path)
    if spec.name in ("pascal_part58", "pascal_part108"):
        return pascal_part.read_gmnet_map(path, spec.num_classes)
    if spec.name == "pascal_part116":
        return pascal_part.read_part116_map(path)
    if spec.name == "pascal_object20":
        return pascal_part.read_object20_map(path)
    if spec.name == "lip19":
        return mmseg_layout.reduce_zero_label(lip.read_label_map(path))
    if spec.name == "lip20":
        return lip.read_label_map(path)
    return mmseg_layout.reduce_zero_label(mmseg_layout.read_raw_label(path, spec.num_classes))


def training_table(name: str) -> dict:
    """crop, train/test resize scale and slide stride of the official configs for the dataset's family."""
    from probes.data.mmseg_layout import PRESETS
    row = PRESETS[{"ade20k": "ade20k-part-209", "pascal": "pascal-part-193", "lip": "lip-19"}[seg_dataset(name).family]]
    return {"crop_size": row.crop_size, "train_scale": list(row.train_scale), "test_scale": list(row.test_scale),
            "slide_stride": row.slide_stride}


# ---------------------------------------------------------------------------------------------------------
# Metrics: mmseg's IoUMetric definitions on exact integer counts
# ---------------------------------------------------------------------------------------------------------

def intersect_and_union(pred: np.ndarray, label: np.ndarray, num_classes: int, ignore_index: int = IGNORE) -> np.ndarray:
    """int64 [4, C]: intersection, union, predicted and labelled pixels per class (ignored pixels left out)."""
    pred, label = np.asarray(pred).ravel(), np.asarray(label).ravel()
    if pred.shape != label.shape:
        raise ValueError(f"prediction has {pred.size} pixels, the label map {label.size}")
    keep = label != ignore_index
    pred, label = pred[keep].astype(np.int64), label[keep].astype(np.int64)
    if pred.size and (pred.min() < 0 or pred.max() >= num_classes or label.max() >= num_classes):
        raise ValueError(f"labels must be 0..{num_classes - 1} or {ignore_index}")
    intersect = np.bincount(pred[pred == label], minlength=num_classes)
    area_pred = np.bincount(pred, minlength=num_classes)
    area_label = np.bincount(label, minlength=num_classes)
    return np.stack([intersect, area_pred + area_label - intersect, area_pred, area_label])


def summarize(areas: np.ndarray, class_names: Sequence[str]) -> dict:
    """mIoU, mAcc, aAcc in percent as mmseg's IoUMetric defines them, unrounded, with per-class IoU/Acc.

    A class with no pixel in the labels and none predicted has IoU 0/0 (NaN in mmseg) and is left out of
    mIoU; a class never labelled has Acc NaN and is left out of mAcc. A class predicted but never labelled
    has IoU 0 and counts. Per-class values that are NaN are None here and listed in ``absent``.
    """
    intersect, union, _, label = np.asarray(areas, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        iou, acc = intersect / union, intersect / label
    if not label.sum():
        raise ValueError("no labelled pixel: the metrics are undefined")
    present = ~np.isnan(iou)
    return {
        "aAcc": 100 * intersect.sum() / label.sum(),
        "mIoU": 100 * float(np.nanmean(iou)) if present.any() else 0.0,
        "mAcc": 100 * float(np.nanmean(acc)),
        "IoU": {n: (100 * float(v) if not np.isnan(v) else None) for n, v in zip(class_names, iou)},
        "Acc": {n: (100 * float(v) if not np.isnan(v) else None) for n, v in zip(class_names, acc)},
        "absent": [n for n, ok in zip(class_names, present) if not ok],
        "num_pixels": int(label.sum()),
    }


def record_metrics(summary: dict) -> dict:
    """The record's metrics: mIoU, mAcc, aAcc and IoU[<class>] for every class with a defined IoU."""
    metrics = {"mIoU": summary["mIoU"], "mAcc": summary["mAcc"], "aAcc": summary["aAcc"]}
    metrics.update({f"IoU[{name}]": value for name, value in summary["IoU"].items() if value is not None})
    return metrics


# ---------------------------------------------------------------------------------------------------------
# The encoder as a dense backbone
# ---------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class EncoderSpec:
    """What the protocols need to know about an encoder before loading its weights."""
    model: str                      # registry name/alias or checkpoint path, as given
    format: str | None
    arch: dict | None               # {"model": timm name, "kwargs": {...}} as registered or given
    branch: str
    method: str
    kind: str                       # vit, resnet or baseline
    depth: int                      # ViT blocks, ResNet stages (4), baseline 1
    channels: tuple[int, ...]       # channels of each block / stage
    patch_size: int | None
    img_size: int | None            # the registered input size of a ViT
    sincos: bool                    # the method's position table is a fixed sin-cos one
    relative_position: bool         # BEiT-style relative position tables

    def default_layers(self) -> list[int]:
        if self.kind == "vit":
            if max(PAPER_LAYERS) >= self.depth:
                raise ValueError(f"{self.model}: {self.depth} blocks; the paper's blocks {list(PAPER_LAYERS)} need "
                                 f"12: pass the blocks to use (--layers)")
            return list(PAPER_LAYERS)
        return list(range(self.depth))       # every ResNet stage; the baseline's one "block"


def describe_encoder(model: str, format: str | None = None, arch: Any = None, branch: str = "teacher") -> EncoderSpec:
    """Method, kind, depth and channels of an encoder without loading its weights where possible.

    Registry entries are built on the meta device; a checkpoint file without ``arch`` is loaded once to learn
    its architecture. ``timm:<name>`` is refused: timm's pretrained models cannot be rebuilt at the
    segmentation input size through the zoo.
    """
    from probes.zoo.build import build_model
    from probes.zoo.formats import FORMATS
    from probes.zoo.registry import BASELINE_FORMAT, Arch, get_entry, local_entry, parse_arch

    model = os.fspath(model)
    if model.startswith("timm:"):
        raise ValueError(f"{model}: segmentation rebuilds the encoder at the crop size through the zoo; use a "
                         f"registry name or a checkpoint file with --format/--arch")
    if Path(model).expanduser().is_file():
        if format is None:
            raise ValueError(f"{model}: pass the checkpoint's format (--format) for segmentation")
        if arch is None:
            from probes.encoders import load_encoder
            built = load_encoder(model, format=format, device="cpu", branch=branch).arch
            arch = {"model": built.model, "kwargs": dict(built.kwargs)}
        base = parse_arch(arch, model)
        entry = local_entry(model, format, base)
    else:
        entry = get_entry(model)
        if entry.format == BASELINE_FORMAT:
            from probes.baselines import build_baseline
            baseline = build_baseline(entry.name)
            return EncoderSpec(model, None, None, branch, "baseline", "baseline", 1, (baseline.embed_dim,),
                               baseline.patch_size, None, False, False)
        base = entry.arch
        if isinstance(arch, dict):
            base = Arch(arch.get("model", base.model), {**base.kwargs, **dict(arch.get("kwargs") or {})})
        elif arch is not None:
            base = parse_arch(arch, model)
    net = build_model(base, "meta")
    arch_dict = {"model": base.model, "kwargs": dict(base.kwargs)}
    fmt = entry.format
    if hasattr(net, "blocks"):
        size = net.patch_embed.img_size
        return EncoderSpec(model, format, arch_dict, branch, entry.method, "vit", len(net.blocks),
                           (int(net.embed_dim),) * len(net.blocks), int(net.patch_embed.patch_size[0]), int(size[0]),
                           FORMATS[fmt].sincos is not None, base.model.startswith("beit"))
    channels = tuple(int(info["num_chs"]) for info in net.feature_info[1:])
    return EncoderSpec(model, format, arch_dict, branch, entry.method, "resnet", len(channels), channels, None, None,
                       False, False)


def backbone_arch(spec: EncoderSpec, crop_size: int, drop_path: float = 0.0) -> dict | None:
    """The architecture the segmentation backbone is built with, by each method's rule
    (docs/protocols.md#segmentation-position-embeddings).

    DINO and iBOT keep their input size and interpolate the position table on the fly (timm's
    ``dynamic_img_size``); every other ViT is built at the crop size, where the zoo interpolates a learned
    table, rebuilds a sin-cos one with the method's formula and resizes BEiT's relative-position tables.
    """
    if spec.kind != "vit":
        return None
    kwargs = dict(spec.arch["kwargs"])
    if spec.method in ON_THE_FLY_POS_METHODS:
        kwargs.update(dynamic_img_size=True, dynamic_img_pad=True)
    else:
        kwargs["img_size"] = crop_size
    if drop_path:
        kwargs["drop_path_rate"] = drop_path
    return {"model": spec.arch["model"], "kwargs": kwargs}


def position_rule(spec: EncoderSpec, crop_size: int) -> str:
    if spec.kind != "vit":
        return "none (convolutional)" if spec.kind == "resnet" else "none (no position embedding)"
    if spec.method in ON_THE_FLY_POS_METHODS:
        return f"built at {spec.img_size}; position table interpolated on the fly to each input (timm dynamic_img_size)"
    if spec.relative_position:
        return f"built at {crop_size}; relative-position tables resized at load (probes.zoo)"
    if spec.sincos:
        return f"built at {crop_size}; fixed sin-cos table rebuilt with the method's formula (probes.zoo)"
    return f"built at {crop_size}; learned table interpolated at load (probes.zoo)"


class EncoderBackbone(nn.Module):
    """Token maps [B, C, H/p, W/p] of chosen ViT blocks (before the final norm unless ``final_norm``), ResNet
    stages or the baseline's patch grid.

    A plain nn.Module without ``init_weights``: a framework that initialises its children's weights
    (mmengine's BaseModule) leaves the pretrained ones alone. Frozen: eval mode whatever ``train()`` says,
    no gradients. A ViT built for a fixed input takes smaller inputs padded at the bottom/right, and its
    maps are cut back to ceil(H/p) x ceil(W/p) cells.
    """

    def __init__(self, encoder, layers: Sequence[int], *, frozen: bool = True, final_norm: bool = False):
        super().__init__()
        self.encoder, self.kind = encoder, encoder.kind
        self.layers, self.frozen, self.final_norm = [int(b) for b in layers], bool(frozen), bool(final_norm)
        depth = encoder.num_blocks
        bad = [b for b in self.layers if not 0 <= b < depth]
        if bad or not self.layers or len(set(self.layers)) != len(self.layers):
            raise ValueError(f"{encoder.name}: layers {self.layers} must be distinct blocks in 0..{depth - 1}")
        if final_norm and self.kind != "vit":
            raise ValueError(f"{encoder.name}: final_norm applies to ViTs, not to a {self.kind}")
        if self.kind == "baseline":
            if frozen is False:
                raise ValueError(f"{encoder.name}: a baseline has no weights to train")
            self.model = None
            self.out_channels = [encoder.embed_dim]
        else:
            self.model = encoder.model
            self.model.requires_grad_(not frozen)
            self.out_channels = ([encoder.embed_dim] * len(self.layers) if self.kind == "vit" else
                                 [int(self.model.feature_info[b + 1]["num_chs"]) for b in self.layers])
        self.train(False)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.model is not None and self.frozen:
            self.model.eval()
        return self

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        with torch.no_grad() if self.frozen else nullcontext():
            if self.kind == "baseline":
                maps = [self.encoder.extract(images, ["patch_map"])["patch_map"].to(images.device)]
            elif self.kind == "resnet":
                maps = self.model.forward_intermediates(images, indices=[b + 1 for b in self.layers],
                                                        intermediates_only=True)
            else:
                maps = self._vit_maps(images)
        return tuple(maps)

    def _vit_maps(self, images: torch.Tensor) -> list[torch.Tensor]:
        height, width = images.shape[-2:]
        if not getattr(self.model, "dynamic_img_size", False):
            built_h, built_w = self.model.patch_embed.img_size
            if height > built_h or width > built_w:
                raise ValueError(f"{self.encoder.name}: input {height}x{width} is larger than the {built_h}x{built_w} "
                                 f"the backbone was built for")
            images = F.pad(images, (0, built_w - width, 0, built_h - height))
        maps = self.model.forward_intermediates(images, indices=self.layers, output_fmt="NCHW",
                                                intermediates_only=True, norm=self.final_norm)
        patch = self.encoder.patch_size
        return [m[..., : math.ceil(height / patch), : math.ceil(width / patch)] for m in maps]


def build_backbone(model: str, format: str | None = None, arch: dict | None = None, branch: str = "teacher",
                   layers: Sequence[int] = PAPER_LAYERS, frozen: bool = True, final_norm: bool = False,
                   device: str = "cpu") -> EncoderBackbone:
    """Load the encoder through the zoo (``load_encoder``) and wrap it as a backbone."""
    from probes.encoders import load_encoder
    encoder = load_encoder(model, format=format, arch=arch, device=device, branch=branch)
    return EncoderBackbone(encoder, layers, frozen=frozen, final_norm=final_norm)


# ---------------------------------------------------------------------------------------------------------
# The protocols as data
# ---------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SegProtocol:
    """Every setting that changes a number; None = the dataset's or model's value (see ``resolve_protocol``)."""
    protocol: str = "linear"
    preset: str = "partaware"
    seg_layers: tuple | None = None        # None: [3, 5, 7, 11] for a 12-block ViT
    seg_upsample: str = "none"             # none (official code) or 4x (paper text)
    seg_final_norm: bool = False
    seg_aux_head: bool = True              # FCN on the third selected map, weight 0.4, training only
    seg_checkpoint: str = "last"           # last or best (highest val mIoU among the evaluations)
    head: str = "linear"                   # linear (1x1 conv) or upernet
    frozen: bool = True
    iters: int = PAPER_ITERS
    batch_size: int = 16                   # over all processes (official: 2 per GPU x 8)
    optimizer: str = "adamw"
    lr: float = 4e-4
    betas: tuple = (0.9, 0.999)
    weight_decay: float = 0.05
    layer_decay: float | None = None       # layer-wise lr decay (fine-tuning)
    drop_path: float = 0.0
    warmup_iters: int | None = None        # None: 1,500 x iters / 160k
    warmup_ratio: float = 1e-6
    poly_power: float = 1.0
    min_lr: float = 0.0
    checkpoint_interval: int | None = None  # None: min(8,000, iters)
    eval_interval: int | None = None        # None: min(16,000, iters); the last iteration is always evaluated
    augmentation: str = "partaware"         # partaware (resize 0.5-2, crop, flip, photometric) or none
    ratio_range: tuple = (0.5, 2.0)
    cat_max_ratio: float = 0.75
    # crop_size None: the dataset's (docs/protocols.md#segmentation-training-and-inference)
    crop_size: int | None = None
    train_scale: tuple | None = None
    test_scale: tuple | None = None
    slide_stride: int | None = None
    # dense protocol
    dense_k: int = 30
    dense_temperature: float = 0.02
    dense_memory: int = 102_400             # training patches kept (Hummingbird's smallest memory, 1024 x 100)
    dense_input_size: int | None = None     # None: the dataset's crop size
    seed: int = 0


PRESETS = {
    ("linear", "partaware"): SegProtocol(),
    ("linear", "paper-text"): SegProtocol(preset="paper-text", seg_upsample="4x", seg_layers=("last",)),
    ("finetune", "mae-upernet"): SegProtocol(protocol="finetune", preset="mae-upernet", head="upernet", frozen=False,
                                             lr=1e-4, layer_decay=0.65, drop_path=0.1),
    ("dense", "hummingbird"): SegProtocol(protocol="dense", preset="hummingbird", seg_layers=("last",),
                                          seg_aux_head=False, head="knn", iters=0, batch_size=16),
}
DEFAULT_PRESET = {"linear": "partaware", "finetune": "mae-upernet", "dense": "hummingbird"}


def resolve_protocol(protocol: str, dataset: str, spec: EncoderSpec, preset: str | None = None,
                     **overrides) -> SegProtocol:
    """The preset with every explicit option (not None) laid over it and every default filled in."""
    preset = preset or DEFAULT_PRESET.get(protocol)
    if (protocol, preset) not in PRESETS:
        raise ValueError(f"no preset {preset!r} for protocol {protocol!r}; known: "
                         f"{', '.join(f'{p}/{n}' for p, n in PRESETS)}")
    fields = {f.name for f in dataclasses.fields(SegProtocol)}
    unknown = set(overrides) - fields
    if unknown:
        raise TypeError(f"unknown segmentation option(s) {sorted(unknown)}")
    proto = dataclasses.replace(PRESETS[(protocol, preset)], **{k: v for k, v in overrides.items() if v is not None})
    table = training_table(dataset)
    layers = proto.seg_layers
    if layers is None:
        layers = spec.default_layers()
    layers = [spec.depth - 1 if b == "last" else int(b) for b in layers]
    iters = proto.iters
    resolved = dataclasses.replace(
        proto, seg_layers=tuple(layers),
        crop_size=proto.crop_size or table["crop_size"],
        train_scale=tuple(proto.train_scale or table["train_scale"]),
        test_scale=tuple(proto.test_scale or table["test_scale"]),
        slide_stride=proto.slide_stride or table["slide_stride"],
        warmup_iters=proto.warmup_iters if proto.warmup_iters is not None else round(1500 * iters / PAPER_ITERS),
        checkpoint_interval=proto.checkpoint_interval or max(1, min(8000, iters)),
        eval_interval=proto.eval_interval or max(1, min(16000, iters)),
        dense_input_size=proto.dense_input_size or proto.crop_size or table["crop_size"])
    _check(resolved, spec)
    return resolved


def _check(p: SegProtocol, spec: EncoderSpec) -> None:
    choices = {"seg_upsample": ("none", "4x"), "seg_checkpoint": ("last", "best"), "augmentation": ("partaware", "none"),
               "head": ("linear", "upernet", "knn"), "optimizer": ("adamw",)}
    for name, allowed in choices.items():
        if getattr(p, name) not in allowed:
            raise ValueError(f"{name} must be one of {allowed}, got {getattr(p, name)!r}")
    bad = [b for b in p.seg_layers if not 0 <= b < spec.depth]
    if bad or len(set(p.seg_layers)) != len(p.seg_layers):
        raise ValueError(f"layers {','.join(map(str, p.seg_layers))}: expected distinct "
                         f"{'blocks' if spec.kind == 'vit' else 'stages'} of {spec.model}, 0..{spec.depth - 1}")
    if p.protocol != "dense" and p.iters < 1:
        raise ValueError(f"iters must be positive, got {p.iters}")
    if p.warmup_iters >= max(p.iters, 1) and p.protocol != "dense":
        raise ValueError(f"warmup_iters ({p.warmup_iters}) must be below iters ({p.iters})")
    if p.head == "upernet" and spec.kind == "vit" and len(p.seg_layers) != 4:
        raise ValueError(f"UperNet takes 4 levels (a feature pyramid at x4, x2, x1, x0.5); got layers {p.seg_layers}")
    for name in ("crop_size", "dense_input_size"):
        if spec.patch_size and getattr(p, name) % spec.patch_size:
            raise ValueError(f"{name} {getattr(p, name)} is not a multiple of the {spec.patch_size}-pixel patch")
    if p.seg_upsample == "4x" and p.head != "linear":
        raise ValueError("seg_upsample=4x applies to the linear head")


def aux_index(p: SegProtocol) -> int:
    return min(AUX_INDEX, len(p.seg_layers) - 1)


def runner_config(p: SegProtocol, dataset: str, data_root: str | os.PathLike, spec: EncoderSpec, *,
                  work_dir: str | os.PathLike, world_size: int = 1, device: str = "cpu", num_workers: int = 2,
                  log_interval: int = 50) -> dict:
    """The mmengine/mmseg runner configuration of a trained protocol, as plain data (one description for all)."""
    if p.batch_size % world_size:
        raise ValueError(f"batch_size {p.batch_size} does not split over {world_size} processes")
    data = seg_dataset(dataset)
    crop = (p.crop_size, p.crop_size)
    distributed_gpu = world_size > 1 and device == "cuda"
    norm = dict(type="SyncBN" if distributed_gpu else "BN", requires_grad=True)
    channels = [spec.channels[b] for b in p.seg_layers]
    backbone = dict(type="PartprobeBackbone", model=os.fspath(spec.model), format=spec.format,
                    arch=backbone_arch(spec, p.crop_size, p.drop_path), branch=spec.branch,
                    layers=list(p.seg_layers), frozen=p.frozen, final_norm=p.seg_final_norm)
    loss = dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=1.0)
    if p.head == "linear":
        decode_head = dict(type="FCNHead" if p.seg_upsample == "none" else "PartprobeUpsampledFCNHead",
                           in_channels=channels, in_index=list(range(len(channels))), input_transform="resize_concat",
                           channels=sum(channels), num_convs=0, concat_input=False, dropout_ratio=0.0,
                           num_classes=data.num_classes, norm_cfg=norm, align_corners=False, loss_decode=loss)
        neck = None
    else:
        width = channels[0]
        neck = dict(type="Feature2Pyramid", embed_dim=width, rescales=[4, 2, 1, 0.5], norm_cfg=norm) \
            if spec.kind == "vit" else None
        decode_head = dict(type="UPerHead", in_channels=channels, in_index=list(range(len(channels))),
                           pool_scales=(1, 2, 3, 6), channels=width, dropout_ratio=0.1, num_classes=data.num_classes,
                           norm_cfg=norm, align_corners=False, loss_decode=loss)
    model = dict(
        type="EncoderDecoder",
        data_preprocessor=dict(type="SegDataPreProcessor", mean=list(MEAN), std=list(STD), bgr_to_rgb=True,
                               pad_val=0, seg_pad_val=IGNORE, size=crop),
        backbone=backbone, decode_head=decode_head,
        train_cfg=dict(), test_cfg=dict(mode="slide", crop_size=crop, stride=(p.slide_stride, p.slide_stride)))
    if neck is not None:
        model["neck"] = neck
    if p.seg_aux_head:
        model["auxiliary_head"] = dict(
            type="FCNHead", in_channels=channels[aux_index(p)], in_index=aux_index(p), channels=256, num_convs=1,
            concat_input=False, dropout_ratio=0.1, num_classes=data.num_classes, norm_cfg=norm, align_corners=False,
            loss_decode=dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=0.4))
    load = [dict(type="LoadImageFromFile"), dict(type="PartprobeLoadLabels", dataset=data.name)]
    if p.augmentation == "partaware":
        train_pipeline = load + [
            dict(type="RandomResize", scale=tuple(p.train_scale), ratio_range=tuple(p.ratio_range), keep_ratio=True),
            dict(type="RandomCrop", crop_size=crop, cat_max_ratio=p.cat_max_ratio),
            dict(type="RandomFlip", prob=0.5),
            dict(type="PhotoMetricDistortion"),
            dict(type="PackSegInputs")]
    else:   # deterministic: every image squeezed to the crop (a resumed run repeats the same batches exactly)
        train_pipeline = load + [dict(type="Resize", scale=crop, keep_ratio=False), dict(type="PackSegInputs")]
    test_pipeline = [dict(type="LoadImageFromFile"), dict(type="Resize", scale=tuple(p.test_scale), keep_ratio=True),
                     dict(type="PartprobeLoadLabels", dataset=data.name), dict(type="PackSegInputs")]

    def loader(split, pipeline, batch, sampler):
        return dict(batch_size=batch, num_workers=num_workers, persistent_workers=num_workers > 0,
                    sampler=sampler, dataset=dict(type="PartprobeSegDataset", dataset=data.name,
                                                  data_root=os.fspath(data_root), split=split, pipeline=pipeline))

    optimizer = dict(type="AdamW", lr=p.lr, betas=tuple(p.betas), weight_decay=p.weight_decay)
    optim_wrapper = dict(type="AmpOptimWrapper" if device == "cuda" else "OptimWrapper", optimizer=optimizer)
    if device == "cuda":
        optim_wrapper["loss_scale"] = "dynamic"
    if p.layer_decay is not None:
        optim_wrapper.update(constructor="PartprobeLayerDecayConstructor",
                             paramwise_cfg=dict(num_layers=spec.depth, layer_decay_rate=p.layer_decay))
    schedulers = [dict(type="PolyLR", eta_min=p.min_lr, power=p.poly_power, begin=p.warmup_iters, end=p.iters,
                       by_epoch=False)]
    if p.warmup_iters:
        schedulers.insert(0, dict(type="LinearLR", start_factor=p.warmup_ratio, by_epoch=False, begin=0,
                                  end=p.warmup_iters))
    checkpoint = dict(type="CheckpointHook", by_epoch=False, interval=p.checkpoint_interval, max_keep_ckpts=3,
                      save_last=True)
    if p.seg_checkpoint == "best":
        checkpoint.update(save_best="mIoU", rule="greater")
    config = dict(
        default_scope="mmseg", work_dir=os.fspath(work_dir), model=model,
        train_dataloader=loader("train", train_pipeline, p.batch_size // world_size,
                                dict(type="InfiniteSampler", shuffle=True)),
        val_dataloader=loader("val", test_pipeline, 1, dict(type="DefaultSampler", shuffle=False)),
        val_evaluator=dict(type="PartprobeIoUMetric", iou_metrics=["mIoU"]),
        train_cfg=dict(type="IterBasedTrainLoop", max_iters=p.iters, val_interval=p.eval_interval),
        val_cfg=dict(type="ValLoop"),
        optim_wrapper=optim_wrapper, param_scheduler=schedulers,
        default_hooks=dict(timer=dict(type="IterTimerHook"),
                           logger=dict(type="LoggerHook", interval=log_interval, log_metric_by_epoch=False),
                           param_scheduler=dict(type="ParamSchedulerHook"), checkpoint=checkpoint,
                           sampler_seed=dict(type="DistSamplerSeedHook")),
        custom_hooks=[dict(type="PartprobeHistoryHook")],
        log_processor=dict(by_epoch=False),
        randomness=dict(seed=p.seed, deterministic=True),
        env_cfg=dict(cudnn_benchmark=False, mp_cfg=dict(mp_start_method="fork", opencv_num_threads=0),
                     dist_cfg=dict(backend="nccl" if device == "cuda" else "gloo")),
        launcher="pytorch" if world_size > 1 else "none",
    )
    if world_size > 1 and device != "cuda":
        # CPU processes: no device ids (mmengine's default wrapper asks for a GPU).
        config["model_wrapper_cfg"] = dict(type="MMDistributedDataParallel", device_ids=None, broadcast_buffers=False)
    return config


def work_dir_for(dataset: str, spec: EncoderSpec, config: dict) -> Path:
    """The training-state folder of a configuration: the same command finds (and resumes) its own checkpoints."""
    from probes.paths import home
    from probes.results import config_hash
    identity = {k: v for k, v in config.items() if k != "work_dir"}
    name = re.sub(r"[^A-Za-z0-9._+-]+", "_", Path(spec.model).name if os.sep in spec.model else spec.model)
    return home() / "train_state" / "segmentation" / seg_dataset(dataset).name / name / config_hash(identity)


def protocol_record(p: SegProtocol, dataset: str, spec: EncoderSpec, *, world_size: int = 1, device: str = "cpu",
                    data_source: str = "official") -> dict:
    """Every option that changes a number, under the names published.py and the leaderboard read."""
    data = seg_dataset(dataset)
    record = {k: v for k, v in dataclasses.asdict(p).items()}
    record["seg_layers"] = list(p.seg_layers)
    record["feature_source"] = (f"{'block' if spec.kind == 'vit' else 'stage'} outputs {list(p.seg_layers)}, "
                                f"{'after' if p.seg_final_norm else 'before'} the final norm")
    record["labels"] = data.labels
    record["num_classes"] = data.num_classes
    record["pos_embed"] = position_rule(spec, p.dense_input_size if p.protocol == "dense" else p.crop_size)
    record["normalize_mean"], record["normalize_std"] = list(MEAN), list(STD)
    record["data_source"] = data_source
    if data_source == "synthetic":
        record["synthetic"] = True
    dense = {k for k in record if k.startswith("dense_")}
    trained = {"iters", "batch_size", "optimizer", "lr", "betas", "weight_decay", "layer_decay", "drop_path",
               "warmup_iters", "warmup_ratio", "poly_power", "min_lr", "checkpoint_interval", "eval_interval",
               "augmentation", "ratio_range", "cat_max_ratio", "train_scale", "seg_aux_head", "seg_checkpoint",
               "seg_upsample", "frozen", "slide_stride", "crop_size", "test_scale"}
    for name in (trained if p.protocol == "dense" else dense):
        record.pop(name, None)
    if p.protocol != "dense":
        record["seg_aux_block"] = p.seg_layers[aux_index(p)] if p.seg_aux_head else None
        record["train_augmentation"] = record.pop("augmentation")
        if p.augmentation == "partaware":
            record["train_flip"] = "horizontal, p 0.5, labels unchanged (left/right parts not swapped, as mmseg's RandomFlip)"
        record["world_size"] = world_size
        record["precision"] = "amp fp16 (AmpOptimWrapper)" if device == "cuda" else "fp32"
        record["aux_norm"] = "SyncBN" if world_size > 1 and device == "cuda" else "BN"
        record["inference"] = f"slide {p.crop_size} / {p.slide_stride}, test resize {list(p.test_scale)} keep ratio"
    return record


# ---------------------------------------------------------------------------------------------------------
# The dense (training-free) protocol
# ---------------------------------------------------------------------------------------------------------

def _image_tensor(path: Path, size: int) -> torch.Tensor:
    from PIL import Image
    with Image.open(path) as image:
        rgb = np.asarray(image.convert("RGB").resize((size, size), Image.BILINEAR), dtype=np.float32)
    return ((torch.from_numpy(rgb) - torch.tensor(MEAN)) / torch.tensor(STD)).permute(2, 0, 1)


def _patch_distributions(labels: np.ndarray, size: int, grid: int, num_classes: int) -> np.ndarray:
    """float32 [grid*grid, C]: the class frequencies of each patch's labelled pixels (label map resized nearest)."""
    from PIL import Image
    resized = np.asarray(Image.fromarray(labels).resize((size, size), Image.NEAREST)).astype(np.int64)
    cell = size // grid
    patch = (np.arange(size) // cell)[:, None] * grid + (np.arange(size) // cell)[None, :]
    keep = resized != IGNORE
    counts = np.bincount(patch[keep] * num_classes + resized[keep], minlength=grid * grid * num_classes)
    counts = counts.reshape(grid * grid, num_classes).astype(np.float32)
    total = counts.sum(1, keepdims=True)
    return np.divide(counts, total, out=np.zeros_like(counts), where=total > 0)


def _features(backbone: EncoderBackbone, images: torch.Tensor) -> torch.Tensor:
    """[B, h*w, D] L2-normalised patch features (the selected maps resized to the first one's grid, concatenated)."""
    maps = backbone(images)
    size = maps[0].shape[-2:]
    maps = [m if m.shape[-2:] == size else F.interpolate(m, size=size, mode="bilinear", align_corners=False)
            for m in maps]
    features = torch.cat(maps, dim=1).flatten(2).transpose(1, 2).float()
    return F.normalize(features, dim=-1)


@torch.no_grad()
def dense_knn(backbone: EncoderBackbone, train: SegSplit, val: SegSplit, p: SegProtocol, *,
              device: str | torch.device = "cpu", batch_size: int = 16, progress: bool = False) -> dict:
    """Training-free segmentation: soft kNN label transfer from a bounded sample of training patches.

    Each training image (resized to ``dense_input_size`` squared) gives up to ceil(memory / images) patches
    with at least one labelled pixel, drawn with a seeded generator; a patch's label is the class histogram
    of its pixels. Each validation patch takes sum_i softmax(cos_i / T) * label_i over its k nearest memory
    patches (faiss inner product on L2-normalised features); the class maps are resized bilinearly to the
    label map's own size and the argmax is the prediction. Returns the summary, the areas and the sample size.
    """
    import faiss
    from tqdm import tqdm

    size, num_classes = p.dense_input_size, len(train.class_names)
    backbone = backbone.to(device).eval()
    rng = np.random.default_rng(p.seed)
    per_image = math.ceil(p.dense_memory / len(train))
    memory_features, memory_labels = [], []
    for start in tqdm(range(0, len(train), batch_size), desc="dense: training patches", disable=not progress):
        indices = range(start, min(start + batch_size, len(train)))
        images = torch.stack([_image_tensor(train.items[i][0], size) for i in indices]).to(device)
        features = _features(backbone, images).cpu().numpy()
        grid = int(round(math.sqrt(features.shape[1])))
        for row, index in enumerate(indices):
            distributions = _patch_distributions(train.labels(index), size, grid, num_classes)
            eligible = np.flatnonzero(distributions.sum(1) > 0)
            chosen = rng.choice(eligible, size=min(per_image, eligible.size), replace=False)
            memory_features.append(features[row, np.sort(chosen)])
            memory_labels.append(distributions[np.sort(chosen)])
    memory_features = np.ascontiguousarray(np.concatenate(memory_features), dtype=np.float32)
    memory_labels = torch.from_numpy(np.concatenate(memory_labels))
    index = faiss.IndexFlatIP(memory_features.shape[1])
    index.add(memory_features)
    k = min(p.dense_k, len(memory_features))

    areas = np.zeros((4, num_classes), dtype=np.int64)
    for i in tqdm(range(len(val)), desc="dense: validation", disable=not progress):
        features = _features(backbone, _image_tensor(val.items[i][0], size)[None].to(device))[0].cpu().numpy()
        grid = int(round(math.sqrt(features.shape[0])))
        similarity, neighbours = index.search(np.ascontiguousarray(features), k)
        weights = torch.softmax(torch.from_numpy(similarity) / p.dense_temperature, dim=1)
        scores = (weights[..., None] * memory_labels[torch.from_numpy(neighbours)]).sum(1)   # [h*w, C]
        scores = scores.T.reshape(1, num_classes, grid, grid)
        labels = val.labels(i)
        prediction = _upsampled_argmax(scores, labels.shape)
        areas += intersect_and_union(prediction, labels, num_classes)
    summary = summarize(areas, val.class_names)
    return {"summary": summary, "areas": areas, "memory_patches": int(len(memory_features)),
            "patches_per_image": per_image, "k": k}


def _upsampled_argmax(scores: torch.Tensor, shape: tuple[int, int], chunk: int = 32) -> np.ndarray:
    """argmax over classes of the bilinearly resized [1, C, h, w] scores, a few classes at a time (bounded memory)."""
    best = torch.full(shape, -1.0)
    argmax = torch.zeros(shape, dtype=torch.int64)
    for start in range(0, scores.shape[1], chunk):
        up = F.interpolate(scores[:, start: start + chunk], size=shape, mode="bilinear", align_corners=False)[0]
        value, index = up.max(0)
        better = value > best
        best = torch.where(better, value, best)
        argmax = torch.where(better, index + start, argmax)
    return argmax.numpy()


def chance_summary(val: SegSplit) -> dict:
    """The chance levels of a split: the best constant prediction's mIoU and the expected mIoU of drawing each
    pixel's class from the labelled pixels' frequencies (computed exactly from the class areas)."""
    num_classes = len(val.class_names)
    areas = sum(intersect_and_union(val.labels(i), val.labels(i), num_classes) for i in range(len(val)))
    label = areas[3].astype(np.float64)
    freq = label / label.sum()
    constant = max(summarize(_constant_areas(label, c), val.class_names)["mIoU"] for c in np.flatnonzero(label))
    # Random prediction with P(class c) = freq_c: E[intersect_c] = label_c freq_c, E[pred_c] = N freq_c.
    inter = label * freq
    union = label + label.sum() * freq - inter
    present = label > 0
    prior = 100 * float(np.mean(inter[present] / union[present]))
    return {"constant_mIoU": constant, "prior_mIoU": prior, "classes_present": int(present.sum()),
            "chance_mIoU": max(constant, prior)}


def _constant_areas(label: np.ndarray, c: int) -> np.ndarray:
    areas = np.zeros((4, label.size))
    areas[3] = label
    areas[2, c] = label.sum()
    areas[0, c] = label[c]
    areas[1] = areas[2] + areas[3] - areas[0]
    return areas
