"""Suite encoders as detectron2 backbones, and a Mask R-CNN training run on COCO-format data.

Everything that imports detectron2 lives here; nothing else in the suite imports this module at start
(check ``probes.adapters.d2_config.detectron2_missing()`` first). The backbone, usable both ways:

    # yacs: the registered builder reads cfg.PARTPROBE (build_cfg adds that node)
    cfg.MODEL.BACKBONE.NAME = "build_partprobe_backbone"; model = build_model(cfg); finish_model(model)
    # LazyConfig
    model.backbone = L(suite_backbone)(encoder="mae", neck="simple_fpn", image_size=1024)

A ViT goes through the simple feature pyramid (probes.adapters.pyramid), a ResNet-50 through detectron2's
own ResNet with the encoder's weights renamed (probes.adapters.d2_weights), under its FPN or as C4.
``train_and_evaluate`` launches detectron2's trainer (one process per GPU through
``detectron2.engine.launch``, gloo processes on a CPU), resumes from the last checkpoint in its output
folder, and evaluates box and mask AP with ``COCOEvaluator``.
"""
from __future__ import annotations

import json
import logging
import os
from functools import partial
from pathlib import Path
from typing import Any, Mapping

import torch
from detectron2.config import CfgNode, get_cfg
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, Backbone
from detectron2.modeling.backbone import FPN, BasicStem, ResNet
from detectron2.modeling.backbone.fpn import LastLevelMaxPool

from probes.adapters.d2_config import load_backbone_encoder
from probes.adapters.d2_weights import resnet_to_detectron2, split_c4
from probes.adapters.pyramid import SCALE_FACTORS, SimpleFeaturePyramid, ViTFeatureMap, layer_decay_factor
from probes.fileio import write_json_atomic

TRUNK_PREFIX = "backbone.trunk.model."  # where the ViT's parameters sit in a GeneralizedRCNN
RESNET_DEPTHS = {(3, 4, 6, 3): 50, (3, 4, 23, 3): 101, (3, 8, 36, 3): 152}


class ViTPyramidBackbone(Backbone):
    """A plain ViT and ViTDet's simple feature pyramid; inputs padded to one square (``square_size``)."""

    def __init__(self, vit: torch.nn.Module, *, patch_size: int, embed_dim: int, frozen: bool = True,
                 out_channels: int = 256, scale_factors=SCALE_FACTORS, top_block: bool = True, norm: str = "LN",
                 square_size: int = 1024):
        super().__init__()
        self.trunk = ViTFeatureMap(vit, frozen=frozen)
        self.pyramid = SimpleFeaturePyramid(embed_dim, patch_size, out_channels, scale_factors, top_block, norm)
        self._out_features = list(self.pyramid.levels)
        self._square_size = int(square_size)
        level_strides = list(self.pyramid.levels.values())
        self._size_divisibility = level_strides[-2] if top_block else level_strides[-1]

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return dict(self.pyramid(self.trunk(x)))

    def output_shape(self) -> dict[str, ShapeSpec]:
        return {name: ShapeSpec(channels=c, stride=s) for name, (c, s) in self.pyramid.output_shapes().items()}

    @property
    def size_divisibility(self) -> int:
        return self._size_divisibility

    @property
    def padding_constraints(self) -> dict[str, int]:
        return {"size_divisibility": self._size_divisibility, "square_size": self._square_size}


def suite_backbone(encoder: str, *, format: str | None = None, arch: Any = None, branch: str = "teacher",
                   neck: str | None = None, frozen: bool = True, image_size: int = 1024, drop_path: float = 0.0,
                   out_channels: int = 256, pyramid_norm: str = "LN", top_block: bool = True,
                   resnet_norm: str = "FrozenBN", freeze_at: int | None = None) -> Backbone:
    """A detectron2 Backbone from any suite encoder (registry name, ``timm:<name>`` or file).

    ``neck``: ``simple_fpn`` (ViTs, the default for them), ``fpn`` (ResNets, their default) or ``c4``
    (ResNets: the backbone ends at res4; ``finish_model`` gives the ROI head's res5 the encoder's weights).
    ``freeze_at`` (ResNets): detectron2's count of frozen stages, default 5 (all) when frozen, else 2.
    """
    loaded = load_backbone_encoder(encoder, format=format, arch=arch, branch=branch, image_size=image_size,
                                   drop_path=0.0 if frozen else drop_path)
    where = loaded.info()["name"]
    if loaded.kind == "vit":
        if neck not in (None, "simple_fpn"):
            raise ValueError(f"{where}: a ViT takes neck 'simple_fpn' (ViTDet), not {neck!r}")
        return ViTPyramidBackbone(loaded.model, patch_size=loaded.patch_size, embed_dim=loaded.embed_dim,
                                  frozen=frozen, out_channels=out_channels, top_block=top_block, norm=pyramid_norm,
                                  square_size=image_size)
    if loaded.kind != "resnet":
        raise ValueError(f"{where}: no detection backbone for a {loaded.kind} encoder (ViT or ResNet expected)")
    neck = neck or "fpn"
    if neck not in ("fpn", "c4"):
        raise ValueError(f"{where}: a ResNet takes neck 'fpn' or 'c4', not {neck!r}")
    weights = resnet_to_detectron2(loaded.model.state_dict(), where)
    depth = _resnet_depth(weights, where)
    freeze_at = (5 if frozen else 2) if freeze_at is None else int(freeze_at)
    if frozen and (freeze_at < 5 or resnet_norm != "FrozenBN"):
        raise ValueError(f"{where}: a frozen ResNet needs freeze_at=5 and FrozenBN, got {freeze_at}, {resnet_norm!r}")
    stages = ResNet.make_default_stages(depth, stride_in_1x1=False, norm=resnet_norm)
    out_features = ["res4"] if neck == "c4" else ["res2", "res3", "res4", "res5"]
    resnet = ResNet(BasicStem(3, 64, norm=resnet_norm), stages, out_features=out_features)
    backbone_weights, head_weights = split_c4(weights) if neck == "c4" else (weights, {})
    _load_exactly(resnet, backbone_weights, where)
    resnet.freeze(freeze_at)  # after loading: FrozenBN conversion keeps the loaded statistics
    if neck == "c4":
        resnet.partprobe_res5 = {"weights": head_weights, "frozen": frozen, "norm": resnet_norm, "where": where}
        return resnet
    return FPN(bottom_up=resnet, in_features=out_features, out_channels=out_channels, norm="",
               top_block=LastLevelMaxPool(), fuse_type="sum")


def _resnet_depth(weights: Mapping[str, torch.Tensor], where: str) -> int:
    blocks = tuple(len({k.split(".")[1] for k in weights if k.startswith(f"res{stage}.")}) for stage in (2, 3, 4, 5))
    if blocks not in RESNET_DEPTHS or "res2.0.conv3.weight" not in weights:
        raise ValueError(f"{where}: blocks per stage {blocks} are not a bottleneck ResNet-50/101/152")
    return RESNET_DEPTHS[blocks]


def _load_exactly(module: torch.nn.Module, weights: Mapping[str, torch.Tensor], where: str) -> None:
    """Every weight lands and every parameter and statistic gets one (BatchNorm's counter aside)."""
    missing, unexpected = module.load_state_dict(weights, strict=False)
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise ValueError(f"{where}: weights do not fit detectron2's ResNet: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]} ({len(missing)} / {len(unexpected)} in all)")


def finish_model(model: torch.nn.Module) -> torch.nn.Module:
    """After building a C4 model: its ROI head's res5 takes the encoder's last stage, frozen with it."""
    pending = getattr(model.backbone, "partprobe_res5", None)
    if pending is None:
        return model
    res5 = model.roi_heads.res5
    _load_exactly(res5, pending["weights"], f"{pending['where']} (res5 of the C4 head)")
    if pending["frozen"]:
        from detectron2.layers import FrozenBatchNorm2d
        res5.requires_grad_(False)
        model.roi_heads.res5 = FrozenBatchNorm2d.convert_frozen_batchnorm(res5)
    del model.backbone.partprobe_res5
    return model


@BACKBONE_REGISTRY.register()
def build_partprobe_backbone(cfg: CfgNode, input_shape: ShapeSpec) -> Backbone:
    p = cfg.PARTPROBE
    return suite_backbone(p.ENCODER, format=p.FORMAT or None, arch=json.loads(p.ARCH), branch=p.BRANCH, neck=p.NECK,
                          frozen=p.FROZEN, image_size=p.IMAGE_SIZE, drop_path=p.DROP_PATH,
                          out_channels=cfg.MODEL.FPN.OUT_CHANNELS, pyramid_norm=p.PYRAMID_NORM,
                          resnet_norm=cfg.MODEL.RESNETS.NORM, freeze_at=cfg.MODEL.BACKBONE.FREEZE_AT)


# ------------------------------------------------------------------------------------------ config
def add_partprobe_config(cfg: CfgNode) -> CfgNode:
    """The suite's keys (encoder, neck, optimizer and augmentation of the recipe) under cfg.PARTPROBE."""
    cfg.PARTPROBE = CfgNode({
        "ENCODER": "", "FORMAT": "", "ARCH": "null", "BRANCH": "teacher", "NECK": "", "FROZEN": True,
        "IMAGE_SIZE": 1024, "DROP_PATH": 0.0, "PYRAMID_NORM": "LN", "OPTIMIZER": "SGD", "BETAS": [0.9, 0.999],
        "LAYER_DECAY": 0.0, "AUGMENTATION": "multiscale", "LSJ_SCALE": [0.1, 2.0],
    })
    return cfg


def build_cfg(keys: Mapping[str, Any]) -> CfgNode:
    """detectron2's defaults plus cfg.PARTPROBE, with ``keys`` (probes.adapters.d2_config.mask_rcnn_config) set.

    Values are taken as they are (yacs' merge_from_list would parse strings as Python literals); an unknown
    key or a value of another type than detectron2's default fails, naming the key.
    """
    from yacs.config import _check_and_coerce_cfg_value_type

    cfg = add_partprobe_config(get_cfg())
    for key, value in keys.items():
        *path, leaf = key.split(".")
        node = cfg
        for part in path:
            node = node.get(part)
            if not isinstance(node, CfgNode):
                raise KeyError(f"detectron2 config has no node {key.rsplit('.', 1)[0]!r} (setting {key})")
        if leaf not in node:
            raise KeyError(f"detectron2 config has no key {key!r}")
        node[leaf] = _check_and_coerce_cfg_value_type(value, node[leaf], leaf, key)
    cfg.freeze()
    return cfg


def build_optimizer(cfg: CfgNode, model: torch.nn.Module) -> torch.optim.Optimizer:
    """SGD as detectron2 builds it, or AdamW with ViTDet's layer-wise lr decay and no decay on pos_embed."""
    if cfg.PARTPROBE.OPTIMIZER == "SGD":
        from detectron2.solver import build_optimizer as detectron2_sgd
        return detectron2_sgd(cfg, model)
    from detectron2.solver.build import get_default_optimizer_params, maybe_add_gradient_clipping

    decay = cfg.PARTPROBE.LAYER_DECAY
    num_blocks = len(model.backbone.trunk.model.blocks) if hasattr(model.backbone, "trunk") else 0
    factor = partial(layer_decay_factor, num_blocks=num_blocks, rate=decay, trunk_prefix=TRUNK_PREFIX) \
        if decay and num_blocks else None
    params = get_default_optimizer_params(model, base_lr=cfg.SOLVER.BASE_LR, weight_decay=cfg.SOLVER.WEIGHT_DECAY,
                                          weight_decay_norm=cfg.SOLVER.WEIGHT_DECAY_NORM, lr_factor_func=factor,
                                          overrides={"pos_embed": {"weight_decay": 0.0}})
    return maybe_add_gradient_clipping(cfg, torch.optim.AdamW)(
        params, lr=cfg.SOLVER.BASE_LR, betas=tuple(cfg.PARTPROBE.BETAS), weight_decay=cfg.SOLVER.WEIGHT_DECAY)


def build_train_loader(cfg: CfgNode):
    """detectron2's loader; with ViTDet's large-scale jitter (flip, resize 0.1-2x, crop to the square)."""
    from detectron2.data import DatasetMapper, build_detection_train_loader
    from detectron2.data import transforms as T

    if cfg.PARTPROBE.AUGMENTATION == "multiscale":
        return build_detection_train_loader(cfg)
    size = cfg.PARTPROBE.IMAGE_SIZE
    low, high = cfg.PARTPROBE.LSJ_SCALE
    augmentations = [T.RandomFlip(horizontal=True), T.ResizeScale(min_scale=low, max_scale=high, target_height=size,
                                                                   target_width=size),
                     T.FixedSizeCrop(crop_size=(size, size), pad=False)]
    mapper = DatasetMapper(cfg, is_train=True, augmentations=augmentations, recompute_boxes=True)
    return build_detection_train_loader(cfg, mapper=mapper)


# ------------------------------------------------------------------------------------------ training
def register_coco(name: str, json_file: str | os.PathLike, image_root: str | os.PathLike) -> None:
    """Register a COCO-format instances file (once per process; the same name must mean the same files)."""
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.data.datasets import register_coco_instances

    json_file, image_root = str(json_file), str(image_root)
    if name in DatasetCatalog.list():
        meta = MetadataCatalog.get(name)
        if (meta.json_file, meta.image_root) != (json_file, image_root):
            raise ValueError(f"dataset {name!r} is registered with {meta.json_file}, not {json_file}")
        return
    register_coco_instances(name, {}, json_file, image_root)


def train_and_evaluate(keys: Mapping[str, Any], datasets: Mapping[str, tuple[str, str]], *, num_gpus: int = 1,
                       results_file: str | os.PathLike) -> dict:
    """Train (resuming from OUTPUT_DIR's last checkpoint) and evaluate; returns what the main process wrote:
    ``{"results": COCOEvaluator results, "start_iter", "max_iter", "world_size"}``."""
    from detectron2.engine import launch

    results_file = Path(results_file)
    if results_file.exists():
        results_file.unlink()  # a stale file must never pass for this run's
    launch(_worker, num_gpus_per_machine=max(1, num_gpus), dist_url="auto",
           args=(dict(keys), {k: list(v) for k, v in datasets.items()}, str(results_file)))
    if not results_file.exists():
        raise RuntimeError(f"training ended without writing {results_file}; see the log in {keys['OUTPUT_DIR']}")
    return json.loads(results_file.read_text())


def _worker(keys: dict, datasets: dict, results_file: str) -> None:
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.data import build_detection_test_loader
    from detectron2.engine import AMPTrainer, SimpleTrainer, create_ddp_model, default_writers, hooks
    from detectron2.evaluation import COCOEvaluator, inference_on_dataset
    from detectron2.modeling import build_model
    from detectron2.solver import build_lr_scheduler
    from detectron2.utils import comm
    from detectron2.utils.env import seed_all_rng
    from detectron2.utils.logger import setup_logger

    for name, (json_file, image_root) in datasets.items():
        register_coco(name, json_file, image_root)
    cfg = build_cfg(keys)
    out = Path(cfg.OUTPUT_DIR)
    out.mkdir(parents=True, exist_ok=True)
    setup_logger(str(out), distributed_rank=comm.get_rank(), name="detectron2")
    logger = setup_logger(str(out), distributed_rank=comm.get_rank(), name="partprobe")
    seed_all_rng(cfg.SEED + comm.get_rank())  # python, numpy and torch; the data order is rank 0's

    model = finish_model(build_model(cfg))
    start_iter, max_iter = 0, cfg.SOLVER.MAX_ITER
    if max_iter > 0:
        optimizer = build_optimizer(cfg, model)
        on_gpu = cfg.MODEL.DEVICE.startswith("cuda")
        ddp = create_ddp_model(model, broadcast_buffers=False,
                               **({} if on_gpu else {"device_ids": None}))  # gloo processes on a CPU
        trainer = (AMPTrainer if cfg.SOLVER.AMP.ENABLED else SimpleTrainer)(ddp, build_train_loader(cfg), optimizer)
        checkpointer = DetectionCheckpointer(model, str(out), trainer=trainer)  # saves optimizer, scheduler, iteration
        trainer.register_hooks([
            hooks.IterationTimer(), hooks.LRScheduler(optimizer, build_lr_scheduler(cfg, optimizer)),
            hooks.PeriodicCheckpointer(checkpointer, cfg.SOLVER.CHECKPOINT_PERIOD) if comm.is_main_process() else None,
            hooks.PeriodicWriter(default_writers(str(out), max_iter), period=20) if comm.is_main_process() else None,
        ])
        if checkpointer.has_checkpoint():
            checkpointer.resume_or_load("", resume=True)
            start_iter = trainer.iter + 1
            logger.info(f"resuming from {checkpointer.get_checkpoint_file()} at iteration {start_iter}")
        if start_iter < max_iter:
            trainer.train(start_iter, max_iter)

    name = cfg.DATASETS.TEST[0]
    evaluator = COCOEvaluator(name, tasks=("bbox", "segm"), distributed=True, output_dir=str(out / "inference"))
    results = inference_on_dataset(model, build_detection_test_loader(cfg, name), evaluator)
    if comm.is_main_process():
        logging.getLogger("partprobe").info(f"evaluation of {name}: {dict(results)}")
        write_json_atomic(Path(results_file), {"results": {k: dict(v) for k, v in results.items()},
                                               "start_iter": start_iter, "max_iter": max_iter,
                                               "world_size": comm.get_world_size()})
