"""Mask R-CNN recipes for COCO as plain data, and their detectron2 (yacs) configuration, without detectron2.

One description, ``RECIPES``, holds every number of each recipe; ``resolve_settings`` makes its frozen or
fine-tune variant and applies explicit overrides (each one recorded); ``mask_rcnn_config`` turns the
settings into detectron2 config keys (``{"SOLVER.BASE_LR": 1e-4, ...}``), which
``probes.adapters.detectron2.build_cfg`` merges into detectron2's ``get_cfg()`` (unknown keys fail there).

Recipes (values from the configs named in ``RECIPE_SOURCES``):

- ``vitdet``: ViTDet for plain ViTs: simple feature pyramid, 1024 px large-scale jitter, AdamW 1e-4,
  weight decay 0.1, layer-wise lr decay 0.7, drop path 0.1, 100 epochs at batch 64, LayerNorm heads.
- ``fpn_1x`` / ``fpn_3x``: detectron2's standard R50-FPN Mask R-CNN, SGD 0.02 at batch 16, 90k / 270k
  iterations, multi-scale training 640-800 px, frozen BatchNorm, stem and res2 frozen.
- ``c4_1x``: R50-C4 Mask R-CNN 1x with synchronised BatchNorm trained everywhere: the fine-tuning protocol of
  MoCo that later SSL papers (MEC among them) report COCO numbers with.

Frozen variants keep every pretrained weight fixed (ViT in eval mode; ResNet with frozen BatchNorm and all
stages frozen, the C4 head's res5 included): only the neck and the heads train.
"""
from __future__ import annotations

import importlib
import json
import math
from typing import Any, Mapping

INSTALL_HELP = """\
detectron2 is not installed in this Python environment ({python}).
It is on no package registry: build it from its upstream source, in a virtual environment that already
has torch and torchvision (about 3 minutes on 2 cores):

    git clone https://github.com/facebookresearch/detectron2 /path/to/detectron2
    pip install "setuptools<81" ninja
    MAX_JOBS=2 pip install --no-build-isolation -e /path/to/detectron2
    pip install shapely        # ViTDet's large-scale jitter crops polygon masks with it

Then run this command with that environment's python, from a folder that does not contain the
detectron2 checkout (there `import detectron2` finds the bare folder instead of the package)."""

_SHARED = {  # detectron2 configs/Base-RCNN-FPN.yaml and config/defaults.py: what every recipe keeps
    "anchor_sizes": (32, 64, 128, 256, 512), "score_thresh": 0.05, "roi_batch": 512, "checkpoint_period": 5000,
    "warmup_factor": 0.001, "channels": 256, "fc_dim": 1024, "grad_clip": None,
}
_FPN = dict(_SHARED, neck="fpn", image_size=800, max_size=1333, train_sizes=(640, 672, 704, 736, 768, 800),
            augmentation="multiscale", lsj_scale=None, optimizer="SGD", base_lr=0.02, momentum=0.9, betas=None,
            weight_decay=1e-4, layer_decay=None, batch_size=16, max_iter=90000, steps=(60000, 80000),
            warmup_iters=1000, amp=False, drop_path=0.0, backbone_norm="FrozenBN", freeze_at=2, pyramid_norm="",
            head_norm="", rpn_convs=1, box_convs=0, box_fcs=2, mask_convs=4)
RECIPES: dict[str, dict[str, Any]] = {
    "vitdet": dict(_SHARED, neck="simple_fpn", image_size=1024, max_size=1024, train_sizes=None, augmentation="lsj",
                   lsj_scale=(0.1, 2.0), optimizer="AdamW", base_lr=1e-4, momentum=None, betas=(0.9, 0.999),
                   weight_decay=0.1, layer_decay=0.7, batch_size=64, max_iter=184375, steps=(163889, 177546),
                   warmup_iters=250, amp=True, drop_path=0.1, backbone_norm=None, freeze_at=None, pyramid_norm="LN",
                   head_norm="LN", rpn_convs=2, box_convs=4, box_fcs=1, mask_convs=4),
    "fpn_1x": _FPN,
    "fpn_3x": dict(_FPN, max_iter=270000, steps=(210000, 250000)),
    "c4_1x": dict(_FPN, neck="c4", backbone_norm="SyncBN", freeze_at=0, mask_convs=0),
}
RECIPE_SOURCES = {
    "vitdet": "detectron2 projects/ViTDet/configs/COCO/mask_rcnn_vitdet_b_100ep.py, common/models/mask_rcnn_vitdet.py, "
              "projects/ViTDet/configs/common/coco_loader_lsj.py, configs/common/optim.py (AdamW)",
    "fpn_1x": "detectron2 configs/COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml (Base-RCNN-FPN.yaml)",
    "fpn_3x": "detectron2 configs/COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x.yaml (Base-RCNN-FPN.yaml)",
    "c4_1x": "detectron2 configs/COCO-InstanceSegmentation/mask_rcnn_R_50_C4_1x.yaml (Base-RCNN-C4.yaml) with "
             "MoCo's fine-tuning changes: SyncBN in backbone and res5 head, no frozen stage [inferred from MoCo's "
             "detection/configs/Base-RCNN-C4-BN.yaml]",
}
RECIPES_BY_KIND = {"vit": ("vitdet",), "resnet": ("fpn_1x", "fpn_3x", "c4_1x")}
DEFAULT_RECIPE = {"vit": "vitdet", "resnet": "fpn_1x"}


def detectron2_missing() -> str | None:
    """None when detectron2 (with its config system) imports, else how to install it."""
    import sys
    try:
        importlib.import_module("detectron2.config")
    except ImportError as err:
        return INSTALL_HELP.format(python=sys.executable) + f"\n(import error: {err})"
    return None


def resolve_settings(recipe: str, kind: str, *, frozen: bool, overrides: Mapping[str, Any] | None = None,
                     device: str = "cpu") -> tuple[dict[str, Any], list[str]]:
    """(settings, names of the overridden settings) of a recipe's frozen or fine-tune variant for an encoder kind.

    Changing ``image_size`` rescales the sizes that follow it (training sizes, max size, anchors) and changing
    ``max_iter`` rescales the lr steps and the warm-up, unless those are overridden too. On a CPU, mixed
    precision is off and SyncBN becomes BN (SyncBN needs GPUs); the settings say what ran.
    """
    if recipe not in RECIPES:
        raise ValueError(f"recipe must be one of {sorted(RECIPES)}, got {recipe!r}")
    if recipe not in RECIPES_BY_KIND.get(kind, ()):
        raise ValueError(f"recipe {recipe!r} is for {[k for k, v in RECIPES_BY_KIND.items() if recipe in v]} "
                         f"encoders; a {kind} encoder takes {RECIPES_BY_KIND.get(kind, ())}")
    base = dict(RECIPES[recipe])
    if frozen:
        base.update(drop_path=0.0, layer_decay=None)
        if kind == "resnet":
            base.update(backbone_norm="FrozenBN", freeze_at=5)
    overrides = dict(overrides or {})
    unknown = sorted(set(overrides) - set(base))
    if unknown:
        raise ValueError(f"unknown recipe setting(s) {unknown}; settings: {sorted(base)}")
    settings = dict(base, **overrides)
    if "image_size" in overrides:
        scale = settings["image_size"] / base["image_size"]
        for name in ("anchor_sizes", "train_sizes"):
            if name not in overrides and base[name] is not None:
                settings[name] = tuple(max(1, round(v * scale)) for v in base[name])
        if "max_size" not in overrides:
            settings["max_size"] = max(1, round(base["max_size"] * scale))
    if "max_iter" in overrides:
        fraction = settings["max_iter"] / base["max_iter"]
        if "steps" not in overrides:  # distinct and before the end, as detectron2's scheduler requires
            steps = {min(round(s * fraction), settings["max_iter"] - 1) for s in base["steps"]}
            settings["steps"] = tuple(sorted(s for s in steps if s > 0))
        if "warmup_iters" not in overrides:
            settings["warmup_iters"] = round(base["warmup_iters"] * fraction)
    if device == "cpu":
        settings["amp"] = False
        if settings["backbone_norm"] == "SyncBN":
            settings["backbone_norm"] = "BN"
    _check(settings)
    return settings, sorted(overrides)


def _check(settings: Mapping[str, Any]) -> None:
    steps, max_iter = settings["steps"], settings["max_iter"]
    if max_iter < 0 or any(not 0 < s < max_iter for s in steps) or list(steps) != sorted(set(steps)):
        raise ValueError(f"max_iter {max_iter} and lr steps {steps}: expected max_iter >= 0 and increasing steps "
                         f"between 0 and max_iter")
    if settings["batch_size"] < 1 or settings["image_size"] < 32 or settings["channels"] < 1:
        raise ValueError(f"batch_size >= 1, image_size >= 32 and channels >= 1 expected, got {settings['batch_size']}, "
                         f"{settings['image_size']}, {settings['channels']}")


def pyramid_names(settings: Mapping[str, Any], patch_size: int | None) -> list[str]:
    """The feature names the RPN reads, finest first (the ROI heads read all but the top one)."""
    if settings["neck"] == "c4":
        return ["res4"]
    if settings["neck"] == "fpn":
        return ["p2", "p3", "p4", "p5", "p6"]
    from probes.adapters.pyramid import pyramid_levels
    return list(pyramid_levels(patch_size))


def mask_rcnn_config(settings: Mapping[str, Any], encoder: Mapping[str, Any], *, train: str, test: str,
                     num_classes: int, output_dir: str, device: str = "cpu", num_workers: int = 4,
                     seed: int = 0) -> dict[str, Any]:
    """detectron2 config keys -> values for one run.

    ``encoder``: how to load it (``model``, ``format``, ``arch``, ``branch``) and what it is (``kind``,
    ``patch_size``, ``mean``, ``std`` in 0-1 RGB), as ``encoder_facts`` returns.
    """
    s, neck = settings, settings["neck"]
    names = pyramid_names(s, encoder.get("patch_size"))
    in_features = names if neck == "c4" else names[:-1]
    anchors = [list(s["anchor_sizes"])] if neck == "c4" else [[a] for a in s["anchor_sizes"]]
    if len(anchors) not in (1, len(names)):
        raise ValueError(f"{len(s['anchor_sizes'])} anchor sizes for pyramid levels {names}: one per level expected")
    train_sizes = s["train_sizes"] or (s["image_size"],)
    cfg = {
        "MODEL.META_ARCHITECTURE": "GeneralizedRCNN", "MODEL.MASK_ON": True, "MODEL.WEIGHTS": "",
        "MODEL.BACKBONE.NAME": "build_partprobe_backbone", "MODEL.DEVICE": device,
        # The encoder's own normalisation, on detectron2's 0-255 RGB input.
        "MODEL.PIXEL_MEAN": [255.0 * m for m in encoder["mean"]], "MODEL.PIXEL_STD": [255.0 * v for v in encoder["std"]],
        "INPUT.FORMAT": "RGB", "INPUT.MASK_FORMAT": "polygon",
        "INPUT.MIN_SIZE_TRAIN": tuple(train_sizes), "INPUT.MAX_SIZE_TRAIN": s["max_size"],
        "INPUT.MIN_SIZE_TEST": s["image_size"], "INPUT.MAX_SIZE_TEST": s["max_size"],
        "MODEL.ANCHOR_GENERATOR.SIZES": anchors, "MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS": [[0.5, 1.0, 2.0]],
        "MODEL.RPN.IN_FEATURES": names, "MODEL.RPN.CONV_DIMS": [-1] * s["rpn_convs"],
        "MODEL.ROI_HEADS.IN_FEATURES": in_features, "MODEL.ROI_HEADS.NUM_CLASSES": int(num_classes),
        "MODEL.ROI_HEADS.SCORE_THRESH_TEST": float(s["score_thresh"]),
        "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE": int(s["roi_batch"]),
        "MODEL.ROI_MASK_HEAD.NAME": "MaskRCNNConvUpsampleHead", "MODEL.ROI_MASK_HEAD.NUM_CONV": s["mask_convs"],
        "MODEL.ROI_MASK_HEAD.CONV_DIM": s["channels"], "MODEL.ROI_MASK_HEAD.NORM": s["head_norm"],
        "MODEL.ROI_MASK_HEAD.POOLER_RESOLUTION": 14,
        "DATASETS.TRAIN": (train,), "DATASETS.TEST": (test,), "DATALOADER.NUM_WORKERS": int(num_workers),
        "SOLVER.IMS_PER_BATCH": s["batch_size"], "SOLVER.BASE_LR": float(s["base_lr"]),
        "SOLVER.WEIGHT_DECAY": float(s["weight_decay"]), "SOLVER.WEIGHT_DECAY_NORM": 0.0,
        "SOLVER.MOMENTUM": float(s["momentum"] or 0.9), "SOLVER.MAX_ITER": s["max_iter"], "SOLVER.STEPS": tuple(s["steps"]),
        "SOLVER.WARMUP_ITERS": s["warmup_iters"], "SOLVER.WARMUP_FACTOR": float(s["warmup_factor"]),
        "SOLVER.CHECKPOINT_PERIOD": s["checkpoint_period"], "SOLVER.AMP.ENABLED": bool(s["amp"]),
        "SOLVER.CLIP_GRADIENTS.ENABLED": s["grad_clip"] is not None, "SOLVER.CLIP_GRADIENTS.CLIP_TYPE": "norm",
        "SOLVER.CLIP_GRADIENTS.CLIP_VALUE": float(s["grad_clip"] or 1.0),
        "TEST.EVAL_PERIOD": 0, "SEED": int(seed), "OUTPUT_DIR": str(output_dir),
        "PARTPROBE.ENCODER": str(encoder["model"]), "PARTPROBE.FORMAT": encoder.get("format") or "",
        "PARTPROBE.ARCH": json.dumps(encoder.get("arch")), "PARTPROBE.BRANCH": encoder.get("branch") or "teacher",
        "PARTPROBE.NECK": neck, "PARTPROBE.FROZEN": bool(encoder["frozen"]), "PARTPROBE.IMAGE_SIZE": s["image_size"],
        "PARTPROBE.DROP_PATH": float(s["drop_path"]), "PARTPROBE.PYRAMID_NORM": s["pyramid_norm"],
        "PARTPROBE.OPTIMIZER": s["optimizer"], "PARTPROBE.BETAS": list(s["betas"] or (0.9, 0.999)),
        "PARTPROBE.LAYER_DECAY": float(s["layer_decay"] or 0.0), "PARTPROBE.AUGMENTATION": s["augmentation"],
        "PARTPROBE.LSJ_SCALE": list(s["lsj_scale"] or (1.0, 1.0)),
    }
    if neck == "c4":
        cfg.update({"MODEL.ROI_HEADS.NAME": "Res5ROIHeads", "MODEL.RPN.PRE_NMS_TOPK_TEST": 6000,
                    "MODEL.RPN.POST_NMS_TOPK_TEST": 1000})
    else:
        cfg.update({"MODEL.ROI_HEADS.NAME": "StandardROIHeads", "MODEL.FPN.OUT_CHANNELS": s["channels"],
                    "MODEL.RPN.PRE_NMS_TOPK_TRAIN": 2000, "MODEL.RPN.PRE_NMS_TOPK_TEST": 1000,
                    "MODEL.RPN.POST_NMS_TOPK_TRAIN": 1000, "MODEL.RPN.POST_NMS_TOPK_TEST": 1000,
                    "MODEL.ROI_BOX_HEAD.NAME": "FastRCNNConvFCHead", "MODEL.ROI_BOX_HEAD.NUM_CONV": s["box_convs"],
                    "MODEL.ROI_BOX_HEAD.CONV_DIM": s["channels"], "MODEL.ROI_BOX_HEAD.NUM_FC": s["box_fcs"],
                    "MODEL.ROI_BOX_HEAD.FC_DIM": s["fc_dim"], "MODEL.ROI_BOX_HEAD.NORM": s["head_norm"],
                    "MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION": 7})
    if encoder["kind"] == "resnet":
        cfg.update({"MODEL.RESNETS.DEPTH": 50, "MODEL.RESNETS.STRIDE_IN_1X1": False,  # torchvision layout
                    "MODEL.RESNETS.NORM": s["backbone_norm"], "MODEL.BACKBONE.FREEZE_AT": s["freeze_at"],
                    "MODEL.RESNETS.OUT_FEATURES": ["res4"] if neck == "c4" else ["res2", "res3", "res4", "res5"],
                    "MODEL.FPN.IN_FEATURES": [] if neck == "c4" else ["res2", "res3", "res4", "res5"]})
    return cfg


# --------------------------------------------------------------------------------------------- encoders
def load_backbone_encoder(model: str, *, format: str | None = None, arch: Any = None, branch: str = "teacher",
                          image_size: int | None = None, drop_path: float = 0.0):
    """The suite encoder a detector starts from, on the CPU (detectron2 moves it).

    A ViT is rebuilt at ``image_size`` (the square every input is padded to), with the zoo's rule for its
    position table (each method's sin-cos formula, interpolation of learned tables, resized BEiT relative
    tables), and with ``drop_path`` for fine-tuning. A ResNet is loaded as it is.
    """
    from probes.encoders import load_encoder

    encoder = load_encoder(model, format=format, arch=arch, device="cpu", branch=branch)
    wanted = {}
    if encoder.kind == "vit":
        if image_size and tuple(encoder.model.patch_embed.img_size) != (image_size, image_size):
            wanted["img_size"] = int(image_size)
        if drop_path:
            wanted["drop_path_rate"] = float(drop_path)
    if not wanted:
        return encoder
    arch = {"model": encoder.arch.model, "kwargs": {**encoder.arch.kwargs, **wanted}}  # as resolved, plus these
    return load_encoder(model, format=format, arch=arch, device="cpu", branch=branch)


def encoder_facts(encoder, *, model: str, format: str | None, arch: Any, branch: str, frozen: bool) -> dict:
    """What the config needs about an encoder: how to load it again (in each training process) and its shape."""
    if encoder.kind not in RECIPES_BY_KIND:
        raise ValueError(f"{encoder.name}: a {encoder.kind} encoder has no detection backbone (ViT or ResNet expected)")
    return {"model": str(model), "format": format, "arch": arch, "branch": branch, "frozen": bool(frozen),
            "kind": encoder.kind, "patch_size": encoder.patch_size, "embed_dim": encoder.embed_dim,
            "num_blocks": encoder.num_blocks, "mean": list(encoder.mean), "std": list(encoder.std)}


def flat_metrics(results: Mapping[str, Mapping[str, float]]) -> tuple[dict[str, float], list[str]]:
    """COCOEvaluator results -> ({box_AP, box_AP50, ..., mask_APl}, the names without a value and why)."""
    metrics, missing = {}, []
    for task, prefix in (("bbox", "box"), ("segm", "mask")):
        for name in ("AP", "AP50", "AP75", "APs", "APm", "APl"):
            value = results.get(task, {}).get(name)
            if value is None or not math.isfinite(value):
                missing.append(f"{prefix}_{name}")
            else:
                metrics[f"{prefix}_{name}"] = float(value)
    return metrics, missing
