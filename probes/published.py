"""Published values of Zhu et al. (docs/protocols.md#published-values) as data, and the rule that says when
one applies.

Every number below is copied from the ICLR 2023 submission text (OpenReview ``3tYvDb4dwab``), the only
version whose tables were available; the TMLR camera-ready may differ. A published value is attached to
a result only when the run is the paper's measurement: one of the paper's seven ViT-B checkpoints (suite
aliases ``deit mocov3 dino beit mae cae ibot``), the same task, feature and metric, and the paper's
protocol. Anything else gets no published value, and ``lookup`` says why, so a number is never compared
against a different protocol silently.

How the paper's columns map to the suite's names (the assumptions are repeated in each value's
provenance string, which ``make_record`` copies into the record's ``published_source``):

* Table 3 retrieval "Encoded" -> ``<cub|coco>_part_retrieval``, feature ``patch_mean``, metric ``AP``.
  Which feature "Encoded" is, is not stated; ``patch_mean`` is the official script's primary feature
  (docs/protocols.md#part-retrieval-metric, docs/protocols.md#protocol-options ``retrieval_feature``).
  **``cls`` gets no published value**: comparing it with the "Encoded" column would compare against a
  possibly different feature. "AP" is taken to be the mean over queries (the script's ``AP``), not the
  class mean (``mAP``), which gets none either.
* Table 3 retrieval "Projected" -> same tasks, feature ``projection`` (MoCo v3, DINO, iBOT only).
* The retrieval protocol that matches is the official code's (the only executable reference for the
  published numbers): self-match included, ``official-code`` crop (about d/2 x d/2, 40 < d < 2000),
  the paper's keypoints, ImageNet normalisation, the whole database (split ``all``). The paper-text crop
  (d x d) does not match: its numbers were never published.
* Table 3 classification "Linear" / "Attentive" -> ``<cub|coco>_linear_probe`` (feature ``cls``, head
  ``linear``) / ``<cub|coco>_attentive_probe`` (variant ``partaware``), on the same crops, metric
  ``top1_best`` (best epoch, which the official script prints), or ``top1`` when the run records
  ``model_selection: best``; the official recipe where recorded (SGD, wd 0, 90 epochs, batch 1024, base
  lr 0.1 linear / 0.01 attentive): a shortened schedule is another measurement.
* Table 1 -> ``imagenet_linear_probe`` (CLS, head ``linear-bn``, the CAE protocol) and
  ``imagenet_attentive_probe`` (variant ``cae``), metric as for Table 3.
* Tables 2 and 4 -> ``<dataset>_linear_segmentation`` for datasets ``ade20k`` (150 classes),
  ``ade20k_part209``, ``pascal_part193`` and ``lip19`` (the authors' preprocessed class sets), metrics
  ``mIoU``, ``mAcc``, ``aAcc``; the official code's head (blocks [3, 5, 7, 11], no 4x upsampling).

Protocol options are read from the record's ``protocol`` under the names in ``OPTION_KEYS``. An option
marked *required* must be recorded with an accepted value (``preset: partaware`` stands for the official
code's values when the option itself is not recorded); an *optional* one is checked only when recorded,
and its absence is written into the provenance.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any, Mapping

SOURCE = "Zhu et al., ICLR 2023 submission (OpenReview 3tYvDb4dwab), copied in docs/protocols.md#published-values"

# Suite alias -> the paper's row name. Only these checkpoints are the paper's models (docs/protocols.md#suite-aliases).
PAPER_MODELS = {
    "deit": "DeiT", "mocov3": "MoCo v3", "dino": "DINO", "beit": "BEiT",
    "mae": "MAE", "cae": "CAE", "ibot": "iBOT",
}
# Encoders of other papers whose own published numbers the suite compares with (``PEER_PUBLISHED``); they are
# not Zhu et al.'s models, so the leaderboard and the figures do not treat them as such.
PEER_MODELS = {"mec": "MEC"}
MEC_SOURCE = ("Liu et al., Self-Supervised Learning via Maximum Entropy Coding, NeurIPS 2022 (MEC), COCO transfer "
              "(values as given in the partprobe issue on COCO detection)")

# ---------------------------------------------------------------------------------------------------
# The tables, verbatim. None = "-" in the paper (no projection head).
# ---------------------------------------------------------------------------------------------------

# Table 1: ImageNet-1k top-1, (linear, attentive).
TABLE1_IMAGENET = {
    "deit": (81.8, 81.8), "mocov3": (76.2, 77.0), "dino": (77.3, 77.8), "beit": (41.8, 51.9),
    "mae": (67.8, 74.2), "cae": (70.4, 77.1), "ibot": (79.5, 79.8),
}

# Table 2: ADE20K object-level linear segmentation, 150 classes, (mIoU, mAcc, aAcc).
TABLE2_ADE20K = {
    "deit": (34.9, 44.2, 75.4), "mocov3": (34.7, 43.9, 75.9), "dino": (34.5, 43.5, 76.1),
    "beit": (17.8, 23.7, 64.9), "mae": (27.1, 34.8, 71.6), "cae": (32.6, 42.2, 75.2),
    "ibot": (38.3, 47.4, 78.1),
}

# Table 3 columns, in the paper's order.
TABLE3_COLUMNS = (
    "Retrieval CUB Encoded", "Retrieval CUB Projected", "Retrieval COCO Encoded", "Retrieval COCO Projected",
    "Classification CUB Linear", "Classification CUB Attentive",
    "Classification COCO Linear", "Classification COCO Attentive",
)
TABLE3_PARTS = {
    "deit":   (35.0, None, 44.1, None, 90.9, 92.9, 88.5, 91.4),
    "mocov3": (50.8, 28.4, 52.3, 36.8, 93.8, 96.0, 92.4, 95.3),
    "dino":   (48.9, 31.7, 51.8, 41.2, 93.2, 95.2, 91.7, 94.5),
    "beit":   (27.9, None, 35.3, None, 55.4, 86.5, 69.3, 86.5),
    "mae":    (28.5, None, 37.1, None, 86.9, 92.8, 88.0, 93.9),
    "cae":    (58.0, None, 57.0, None, 89.5, 95.8, 91.1, 95.5),
    "ibot":   (49.3, 31.2, 59.2, 41.5, 93.8, 95.8, 92.1, 95.1),
}

# Table 4: part-level linear segmentation, (mIoU, mAcc, aAcc) for each dataset.
TABLE4_DATASETS = ("ade20k_part209", "pascal_part193", "lip19")
TABLE4_PART_SEG = {
    "deit":   ((27.3, 34.7, 69.2), (27.4, 36.1, 65.8), (41.4, 52.6, 73.5)),
    "mocov3": ((27.1, 34.7, 70.1), (27.1, 35.8, 66.0), (41.9, 53.0, 74.5)),
    "dino":   ((28.9, 36.8, 70.3), (27.8, 36.5, 66.4), (41.0, 51.9, 74.0)),
    "beit":   ((18.6, 25.8, 58.2), (14.8, 21.4, 47.0), (27.2, 36.5, 60.1)),
    "mae":    ((26.3, 35.0, 67.3), (24.3, 32.9, 61.5), (38.2, 48.7, 71.3)),
    "cae":    ((28.4, 36.9, 71.1), (27.8, 37.0, 66.3), (43.7, 55.1, 75.9)),
    "ibot":   ((32.2, 40.0, 73.4), (30.7, 40.0, 69.7), (44.6, 55.7, 76.6)),
}

# ---------------------------------------------------------------------------------------------------
# Protocol requirements
# ---------------------------------------------------------------------------------------------------

# Option -> the protocol keys that may carry it (the first one present is read). The suite's scripts
# write the first name; the others are the spec's option names (docs/protocols.md#protocol-options).
OPTION_KEYS = {
    "include_self": ("include_self", "retrieval_include_self", "self_match"),
    "crop": ("crop", "part_crop", "part_crop_side"),
    "keypoints": ("keypoints",),
    "normalize": ("normalize", "retrieval_normalize"),
    "coco_dist_scope": ("coco_dist_scope",),
    "mae_token_shuffle": ("mae_token_shuffle",),
    "head": ("head",),
    "attentive_variant": ("attentive_variant", "variant"),
    "seg_layers": ("seg_layers",),
    "seg_upsample": ("seg_upsample",),
    "data_source": ("data_source",),
    "dist_filter": ("dist_filter", "part_dist_filter"),
    "crop_shift": ("crop_shift",),
    "input_size": ("input_size",),
    "precision": ("precision",),
    "attentive_bn_eval": ("attentive_bn_eval",),
    "eval_batch_size": ("eval_batch_size",),
    "tokens": ("tokens",),
    "num_heads": ("num_heads",),
    "epochs": ("epochs",),
    "batch_size": ("batch_size",),
    "base_lr": ("base_lr",),
    "optimizer": ("optimizer",),
    "weight_decay": ("weight_decay",),
    "iters": ("iters",),
    "lr": ("lr",),
    "seg_final_norm": ("seg_final_norm",),
    "seg_aux_head": ("seg_aux_head",),
    "crop_size": ("crop_size",),
    "train_augmentation": ("train_augmentation",),
    "recipe": ("recipe",),
    "backbone_training": ("backbone_training",),
    "recipe_overrides": ("recipe_overrides",),
    "backbone_norm": ("backbone_norm",),
}


@dataclass(frozen=True)
class Requirement:
    option: str                   # a key of OPTION_KEYS
    accepted: tuple[Any, ...]     # values that match the paper's protocol
    required: bool                # True: must be recorded (or implied by a preset); False: checked if recorded
    presets: tuple[str, ...] = ()  # protocol["preset"] values that imply an accepted value when not recorded
    why: str = ""


_OFFICIAL_CODE = ("partaware",)
_SELF_MATCH = Requirement("include_self", (True, "include", "included"), True, _OFFICIAL_CODE,
                          "the official code keeps each query in its own gallery "
                          "(docs/protocols.md#self-match-in-the-gallery)")
_CROP = Requirement("crop", ("official-code", "d/2"), True, _OFFICIAL_CODE,
                    "the published numbers come from the official code's ~d/2 crop "
                    "(docs/protocols.md#distance-and-crop-size)")
_KEYPOINTS = Requirement("keypoints", ("paper",), False, (), "the paper's 4 CUB / 3 COCO keypoints")
_NORMALIZE = Requirement("normalize", ("imagenet",), False, (),
                         "ImageNet mean/std for every model (docs/protocols.md#part-retrieval-crops)")
_COCO_SCOPE = Requirement("coco_dist_scope", ("code_exact",), False, (),
                          "the official code pools the persons of an image with the annotation id as a third "
                          "coordinate, which can change d when ids are close "
                          "(docs/protocols.md#official-part-retrieval-behaviour item 4)")
_DIST_FILTER = Requirement("dist_filter", ("official",), False, (), "the official code keeps 40 < d < 2000 "
                           "(docs/protocols.md#official-part-retrieval-behaviour)")
_NO_SHIFT = Requirement("crop_shift", (0, 0.0), False, (), "crops centred on their keypoint")
_INPUT_224 = Requirement("input_size", (224,), False, (),
                         "crops resized to 224 x 224 (docs/protocols.md#part-retrieval-crops)")
_FP32 = Requirement("precision", ("fp32",), False, (),
                    "the official code ran in float32; bf16 autocast moves per-query AP by ~1e-3 to 1e-2")
_BN_BATCH = Requirement("attentive_bn_eval", ("batch",), False, (),
                        "the official attentive probe's BatchNorm uses batch statistics at evaluation "
                        "(docs/protocols.md#attentive-batchnorm-at-evaluation)")
_ATTENTIVE_HEAD_DOC = "docs/protocols.md#part-classification-attentive-head"
_EVAL_BATCH_256 = Requirement("eval_batch_size", (256,), False, (),
                              f"those batch statistics come from evaluation batches of 256 ({_ATTENTIVE_HEAD_DOC})")
_ALL_TOKENS = Requirement("tokens", ("all",), False, (),
                          f"keys/values are all output tokens, CLS included ({_ATTENTIVE_HEAD_DOC})")
_TWELVE_HEADS = Requirement("num_heads", (12,), False, (),
                            f"12 attention heads in the attentive block ({_ATTENTIVE_HEAD_DOC})")
_MAE_SHUFFLE = Requirement("mae_token_shuffle", (True,), True, (),
                           "the official MAE path shuffled tokens before the position embedding "
                           "(docs/protocols.md#mae-token-shuffle); "
                           "MAE numbers without that shuffle measure another forward pass")
_DATA = Requirement("data_source", ("official",), False, (), "generated data never compares with the paper")
_LINEAR_HEAD = Requirement("head", ("linear",), False, (), "Table 3 linear probe: Linear on CLS, no BatchNorm "
                           "(docs/protocols.md#part-classification-linear-head)")
_LINEAR_BN_HEAD = Requirement("head", ("linear-bn",), True, (),
                              "Table 1: the CAE protocol, BatchNorm + Linear (docs/protocols.md#imagenet-probes)")
_PARTAWARE_ATTENTIVE = Requirement("attentive_variant", ("partaware",), True, _OFFICIAL_CODE,
                                   f"Table 3 attentive probe: the official code's head ({_ATTENTIVE_HEAD_DOC})")
_CAE_ATTENTIVE = Requirement("attentive_variant", ("cae",), True, (),
                             "Table 1 attentive probe: the CAE protocol (docs/protocols.md#imagenet-probes)")
# Table 3 classification: the official patch_lincls.py recipe. A shortened or otherwise changed schedule
# measures something else.
_RECIPE_DOC = "docs/protocols.md#part-classification-recipe"
_PARTAWARE_RECIPE = (
    Requirement("epochs", (90,), False, (), f"90 epochs ({_RECIPE_DOC})"),
    Requirement("batch_size", (1024,), False, (), f"batch 1024 ({_RECIPE_DOC})"),
    Requirement("optimizer", ("sgd",), False, (), f"SGD, momentum 0.9 ({_RECIPE_DOC})"),
    Requirement("weight_decay", (0, 0.0), False, (), f"no weight decay ({_RECIPE_DOC})"),
)
_LINEAR_BASE_LR = Requirement("base_lr", (0.1,), False, (),
                              f"base lr 0.1 x batch/256 for the linear head ({_RECIPE_DOC})")
_ATTENTIVE_BASE_LR = Requirement("base_lr", (0.01,), False, (), "base lr 0.01 x batch/256 for the attentive head")
_CAE_EPOCHS = Requirement("epochs", (90,), False, (), "90 epochs, the CAE protocol (docs/protocols.md#imagenet-probes)")
_SEG_HEAD_DOC = "docs/protocols.md#segmentation-head"
_SEG_LAYERS = Requirement("seg_layers", ([3, 5, 7, 11],), False, (),
                          f"official head on blocks [3,5,7,11] ({_SEG_HEAD_DOC})")
_SEG_UPSAMPLE = Requirement("seg_upsample", ("none",), False, (),
                            f"the official code has no 4x upsampling before the 1x1 conv ({_SEG_HEAD_DOC})")
# The official segmentation recipe: a shortened or otherwise changed schedule measures something else.
_SEG_RECIPE_DOC = "docs/protocols.md#segmentation-training-and-inference"
_SEG_RECIPE = (
    Requirement("iters", (160_000,), False, (), f"160k iterations ({_SEG_RECIPE_DOC})"),
    Requirement("batch_size", (16,), False, (), f"batch 16 = 2 per GPU x 8 ({_SEG_RECIPE_DOC})"),
    Requirement("optimizer", ("adamw",), False, (), f"AdamW ({_SEG_RECIPE_DOC})"),
    Requirement("lr", (4e-4,), False, (), f"lr 4e-4 ({_SEG_RECIPE_DOC})"),
    Requirement("weight_decay", (0.05,), False, (), f"weight decay 0.05 ({_SEG_RECIPE_DOC})"),
    Requirement("seg_final_norm", (False,), False, (), f"block outputs before the final norm ({_SEG_HEAD_DOC})"),
    Requirement("seg_aux_head", (True,), False, (), f"the auxiliary FCN head on block 8 ({_SEG_HEAD_DOC})"),
    Requirement("train_augmentation", ("partaware",), False, (),
                f"resize 0.5-2, crop, flip, photometric distortion ({_SEG_RECIPE_DOC})"),
)
_SEG_CROP = {"ade20k": 512, "ade20k_part209": 512, "pascal_part193": 480, "lip19": 320}


@dataclass(frozen=True)
class PublishedValue:
    """One cell of the paper's tables, mapped to the suite's names."""
    model: str                       # suite alias
    table: str                       # e.g. "Table 3"
    column: str                      # the paper's column, e.g. "Retrieval CUB Encoded"
    task: str                        # e.g. "cub_part_retrieval"
    metrics: tuple[str, ...]         # suite metric names the value applies to (see _metric_names)
    features: tuple[str, ...] | None  # None: the feature is not constrained (segmentation)
    value: float
    requirements: tuple[Requirement, ...]
    split: str | None = None         # required split, None: any
    assumptions: tuple[str, ...] = field(default_factory=tuple)
    source: str = SOURCE             # the publication the value comes from

    def provenance(self) -> str:
        name = {**PAPER_MODELS, **PEER_MODELS}[self.model]
        text = f"{self.source}: {self.table}, {name}, {self.column} = {self.value}"
        return text + "".join(f"; {a}" for a in self.assumptions)


_ENCODED_ASSUMPTION = ("'Encoded' taken as patch_mean (docs/protocols.md#part-retrieval-metric, [inferred]); "
                       "cls gets no published value")
_AP_ASSUMPTION = "'AP' taken as the mean over queries (the official script's AP), not the class mean"
_RETRIEVAL_PROTOCOL = "protocol: official code (self-match included, official-code crop, split all)"
_BEST_EPOCH = "best-epoch top-1 (the official script's best_acc1, [inferred])"
_MAE_DRAWS = ("MAE: the official probe drew a new token permutation at every forward pass; the suite computes "
              "features once, so each crop keeps one permutation for all epochs [a known deviation]")
_DINO_BRANCH = ("DINO weights: teacher or student is not stated for Table 3 (the official README says teacher, "
                "the official script loads the student by default, docs/protocols.md#dino-student-or-teacher); "
                "compared with either, the record's weights_branch says which ran")


def _build_table() -> tuple[PublishedValue, ...]:
    values: list[PublishedValue] = []
    crops = (_CROP, _DIST_FILTER, _NO_SHIFT, _INPUT_224, _KEYPOINTS, _NORMALIZE, _DATA)
    # Retrieval compares features directly, so the arithmetic matters; trained heads absorb it.
    retrieval_reqs = (_SELF_MATCH, _FP32) + crops
    for model, row in TABLE3_PARTS.items():
        for column, value in zip(TABLE3_COLUMNS, row):
            if value is None:
                continue
            _, dataset_name, kind = column.split()
            dataset = dataset_name.lower()
            reqs = retrieval_reqs + ((_COCO_SCOPE,) if dataset == "coco" else ())
            if model == "mae":
                reqs += (_MAE_SHUFFLE,)
            notes = (_DINO_BRANCH,) if model == "dino" else ()
            probe_notes = notes + ((_MAE_DRAWS,) if model == "mae" else ())
            if kind == "Encoded":
                values.append(PublishedValue(
                    model, "Table 3", column, f"{dataset}_part_retrieval", ("AP",), ("patch_mean",), value,
                    reqs, split="all", assumptions=(_ENCODED_ASSUMPTION, _AP_ASSUMPTION, _RETRIEVAL_PROTOCOL) + notes))
            elif kind == "Projected":
                values.append(PublishedValue(
                    model, "Table 3", column, f"{dataset}_part_retrieval", ("AP",), ("projection",), value,
                    reqs, split="all", assumptions=(_AP_ASSUMPTION, _RETRIEVAL_PROTOCOL) + notes))
            elif kind == "Linear":
                values.append(PublishedValue(
                    model, "Table 3", column, f"{dataset}_linear_probe", ("top1_best",), ("cls",), value,
                    crops + (_LINEAR_HEAD, _LINEAR_BASE_LR) + _PARTAWARE_RECIPE
                    + ((_MAE_SHUFFLE,) if model == "mae" else ()),
                    assumptions=(_BEST_EPOCH, "head: Linear on CLS, no BatchNorm; official-code crops") + probe_notes))
            else:  # Attentive
                values.append(PublishedValue(
                    model, "Table 3", column, f"{dataset}_attentive_probe", ("top1_best",), ("tokens",), value,
                    crops + (_PARTAWARE_ATTENTIVE, _ATTENTIVE_BASE_LR, _BN_BATCH, _EVAL_BATCH_256, _ALL_TOKENS,
                             _TWELVE_HEADS) + _PARTAWARE_RECIPE + ((_MAE_SHUFFLE,) if model == "mae" else ()),
                    assumptions=(_BEST_EPOCH, "attentive variant partaware; official-code crops") + probe_notes))
    for model, (linear, attentive) in TABLE1_IMAGENET.items():
        values.append(PublishedValue(model, "Table 1", "Linear", "imagenet_linear_probe", ("top1_best",), ("cls",),
                                     linear, (_LINEAR_BN_HEAD, _CAE_EPOCHS, _DATA),
                                     assumptions=(_BEST_EPOCH, "CAE protocol")))
        values.append(PublishedValue(model, "Table 1", "Attentive", "imagenet_attentive_probe", ("top1_best",),
                                     ("tokens",), attentive, (_CAE_ATTENTIVE, _CAE_EPOCHS, _DATA),
                                     assumptions=(_BEST_EPOCH, "CAE protocol")))
    def seg_reqs(dataset):
        crop = Requirement("crop_size", (_SEG_CROP[dataset],), False, (),
                           f"{_SEG_CROP[dataset]} px crops ({_SEG_RECIPE_DOC})")
        return (_SEG_LAYERS, _SEG_UPSAMPLE, _DATA, crop) + _SEG_RECIPE
    seg_note = "official segmentation head (blocks [3,5,7,11], no 4x upsampling); checkpoint choice not published"
    for model, triple in TABLE2_ADE20K.items():
        for metric, value in zip(("mIoU", "mAcc", "aAcc"), triple):
            values.append(PublishedValue(model, "Table 2", f"ADE20K {metric}", "ade20k_linear_segmentation",
                                         (metric,), None, value, seg_reqs("ade20k"), assumptions=(seg_note,)))
    for model, per_dataset in TABLE4_PART_SEG.items():
        for dataset, triple in zip(TABLE4_DATASETS, per_dataset):
            for metric, value in zip(("mIoU", "mAcc", "aAcc"), triple):
                values.append(PublishedValue(model, "Table 4", f"{dataset} {metric}",
                                             f"{dataset}_linear_segmentation", (metric,), None, value,
                                             seg_reqs(dataset),
                                             assumptions=(seg_note,)))
    return tuple(values)


PUBLISHED: tuple[PublishedValue, ...] = _build_table()

# MEC's COCO numbers: Mask R-CNN fine-tuned end to end from the 100-epoch ResNet-50 on train2017, evaluated on
# val2017. Only the suite's c4_1x recipe, unchanged, fine-tuned, on the official data is that measurement.
_MEC_COCO_REQS = (
    Requirement("recipe", ("c4_1x",), True, (), "R50-C4 Mask R-CNN, 1x schedule (the MoCo protocol MEC follows)"),
    Requirement("backbone_training", ("fine-tune",), True, (), "the whole network is fine-tuned"),
    Requirement("recipe_overrides", ([],), True, (), "the recipe as published: schedule, batch, sizes, heads"),
    Requirement("backbone_norm", ("SyncBN",), False, (), "synchronised BatchNorm across GPUs"),
    _DATA,
)
_MEC_ASSUMPTION = ("setting taken as Mask R-CNN R50-C4 1x fine-tuned with SyncBN (the MoCo detectron2 protocol) "
                   "[inferred: the MEC table's exact setting is not in the spec]")
PEER_PUBLISHED: tuple[PublishedValue, ...] = (
    PublishedValue("mec", "COCO transfer", "Mask R-CNN box AP75", "coco_detection", ("box_AP75",), None, 43.2,
                   _MEC_COCO_REQS, split="val2017", assumptions=(_MEC_ASSUMPTION,), source=MEC_SOURCE),
    PublishedValue("mec", "COCO transfer", "Mask R-CNN mask AP75", "coco_detection", ("mask_AP75",), None, 36.8,
                   _MEC_COCO_REQS, split="val2017", assumptions=(_MEC_ASSUMPTION,), source=MEC_SOURCE),
)


# ---------------------------------------------------------------------------------------------------
# Lookup
# ---------------------------------------------------------------------------------------------------

@dataclass
class PublishedMatch:
    values: dict[str, float] = field(default_factory=dict)   # suite metric name (unprefixed) -> value
    sources: dict[str, str] = field(default_factory=dict)    # same keys -> provenance string
    reasons: list[str] = field(default_factory=list)         # why a table entry for this task/model did not apply


def _recorded(protocol: Mapping[str, Any], option: str) -> tuple[bool, Any, str]:
    for key in OPTION_KEYS[option]:
        if key in protocol:
            return True, protocol[key], key
    return False, None, OPTION_KEYS[option][0]


def _same(value: Any, accepted: Any) -> bool:
    if isinstance(accepted, bool) or isinstance(value, bool):
        return value is accepted or (isinstance(value, str) and value.lower() == str(accepted).lower())
    return value == accepted


def _check(req: Requirement, protocol: Mapping[str, Any]) -> tuple[str | None, str | None]:
    """(reason it fails, caveat when it passes only because the option is unrecorded)."""
    present, value, key = _recorded(protocol, req.option)
    if present:
        if any(_same(value, ok) for ok in req.accepted):
            return None, None
        return f"{key}={value!r} but the paper's protocol has {req.accepted[0]!r} ({req.why})", None
    if protocol.get("preset") in req.presets:
        return None, f"{key} not recorded; implied by preset {protocol['preset']!r}"
    if req.required:
        return f"{key} not recorded (the paper's protocol has {req.accepted[0]!r}: {req.why})", None
    return None, f"{key} not recorded (assumed {req.accepted[0]!r})"


def _metric_names(entry: PublishedValue, protocol: Mapping[str, Any]) -> tuple[str, ...]:
    # A best-epoch value also applies to a plain "top1" when the run says it selected the best epoch.
    if entry.metrics == ("top1_best",) and protocol.get("model_selection") == "best":
        return ("top1_best", "top1")
    return entry.metrics


def lookup(*, task: str, model: str, feature: str, protocol: Mapping[str, Any],
           block: int | None = None, split: str | None = None) -> PublishedMatch:
    """The published values that apply to this configuration, their provenance, and why others do not."""
    match = PublishedMatch()
    alias = _alias(model)
    entries = [e for e in PUBLISHED + PEER_PUBLISHED if e.task == task and e.model == alias]
    for entry in entries:
        label = f"{entry.table} {entry.column}"
        if entry.features is not None and feature not in entry.features:
            if feature == "cls" and entry.features == ("patch_mean",):
                match.reasons.append(f"{label}: 'Encoded' is taken as patch_mean, so cls is not compared")
            continue  # another feature's column: not a reason worth reporting for this run
        if block is not None:
            match.reasons.append(f"{label}: the paper reports the final block only (this run: block {block})")
            continue
        if entry.split is not None and split is not None and split != entry.split:
            match.reasons.append(f"{label}: the paper uses split {entry.split!r} (this run: {split!r})")
            continue
        failures, caveats = [], []
        for req in entry.requirements:
            failure, caveat = _check(req, protocol)
            if failure:
                failures.append(failure)
            if caveat:
                caveats.append(caveat)
        if protocol.get("synthetic") is True:
            failures.append("synthetic=True: generated data never compares with the paper")
        if protocol.get("bad_items_skipped"):
            failures.append(f"bad_items_skipped={protocol['bad_items_skipped']}: items left out of the dataset "
                            f"make another measurement")
        if failures:
            match.reasons.append(f"{label}: " + "; ".join(failures))
            continue
        source = entry.provenance() + "".join(f"; {c}" for c in caveats)
        for metric in _metric_names(entry, protocol):
            match.values[metric] = entry.value
            match.sources[metric] = source
    return match


def paper_alias(model: str) -> str | None:
    """The paper alias a model name stands for: the alias itself, or the registry entry that carries it.

    ``encoder.info()["name"]`` is the registry name (e.g. ``dino_vit_base16_full``, whose alias is
    ``dino``); a user's own file or any other entry is not one of the paper's models.
    """
    alias = _alias(model)
    return alias if alias in PAPER_MODELS else None


def _alias(model: str) -> str | None:
    """The paper or peer alias a model name stands for (``mec_resnet50_100ep`` -> ``mec``)."""
    if model in PAPER_MODELS or model in PEER_MODELS:
        return model
    return _registry_paper_names().get(model)


@functools.lru_cache(maxsize=1)
def _registry_paper_names() -> dict[str, str]:
    try:
        from probes.zoo.errors import RegistryError
        from probes.zoo.registry import load_registry
    except ImportError:  # the zoo is not importable: only the bare aliases match
        return {}
    try:
        registry = load_registry()
    except RegistryError:  # no or broken registry file: only the bare aliases match
        return {}
    return {entry_name: alias for alias, entry_name in registry.aliases.items()
            if alias in PAPER_MODELS or alias in PEER_MODELS}


def published_values(*, task: str, model: str, feature: str, protocol: Mapping[str, Any],
                     block: int | None = None, split: str | None = None) -> dict[str, float]:
    """Metric name (unprefixed) -> published value for this configuration, or {} when none applies."""
    return lookup(task=task, model=model, feature=feature, protocol=protocol, block=block, split=split).values


def reference_values(task: str, metric: str, feature: str | None) -> dict[str, PublishedValue]:
    """Every paper model's published value for one task/metric/feature (for figures), by model alias."""
    out = {}
    for entry in PUBLISHED:
        if entry.task == task and metric in entry.metrics + (("top1",) if entry.metrics == ("top1_best",) else ()):
            if entry.features is None or feature in entry.features:
                out[entry.model] = entry
    return out


# ---------------------------------------------------------------------------------------------------
# The command line: python -m probes.published [--table 3] [--model dino]
# ---------------------------------------------------------------------------------------------------

def _condition_text(req: Requirement) -> str:
    accepted = " or ".join(repr(v) for v in req.accepted)
    if req.required:
        rule = "must be recorded" + (f" (preset {', '.join(req.presets)} implies it)" if req.presets else "")
    else:
        rule = "checked when recorded"
    return f"{req.option} = {accepted}: {rule}; {req.why}"


def describe_table(table: str | None = None, model: str | None = None) -> str:
    """The published values (one line each) and, under a letter per set, the conditions a run must meet for
    one of them to be set beside its result."""
    entries = [e for e in PUBLISHED if (table is None or e.table == f"Table {table}")
               and (model is None or e.model == model)]
    groups: dict[str, list[PublishedValue]] = {}      # one set of conditions -> the values it applies to
    letters: dict[str, str] = {}
    rows = [("table", "model", "column", "task", "metric", "feature", "value", "conditions")]
    for entry in entries:
        key = repr((entry.requirements, entry.split))
        groups.setdefault(key, []).append(entry)
        letter = letters.setdefault(key, chr(ord("A") + len(letters)))
        rows.append((entry.table, PAPER_MODELS[entry.model], entry.column, entry.task, "/".join(entry.metrics),
                     "/".join(entry.features) if entry.features else "any", f"{entry.value:g}", letter))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [f"{SOURCE}", ""]
    lines += ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
    for key, members in groups.items():
        first = members[0]
        lines += ["", f"conditions {letters[key]} (a result is compared with these values only when all hold):"]
        lines += [f"  - the final block (no --block)" + (f", split {first.split!r}" if first.split else "")]
        lines += [f"  - {_condition_text(req)}" for req in first.requirements]
        lines += ["  - not on generated data (synthetic), no item left out by --skip-bad-items"]
        models = {m.model for m in members}
        for text in dict.fromkeys(a for m in members for a in m.assumptions):
            some = sorted({m.model for m in members if text in m.assumptions}, key=list(PAPER_MODELS).index)
            which = "" if set(some) == models else f" ({', '.join(PAPER_MODELS[m] for m in some)})"
            lines.append(f"  assumption{which}: {text}")
    return "\n".join(lines)


def main(argv=None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m probes.published",
                                     description="List the published values of Zhu et al. and the conditions under "
                                                 "which a result is compared with them.")
    parser.add_argument("--table", choices=("1", "2", "3", "4"), help="only this table of the paper")
    parser.add_argument("--model", choices=sorted(PAPER_MODELS), help="only this model (suite alias)")
    args = parser.parse_args(argv)
    print(describe_table(args.table, args.model))
    return 0


if __name__ == "__main__":
    import sys

    from probes.errors import run_main

    sys.exit(run_main(main, prog="python -m probes.published"))
