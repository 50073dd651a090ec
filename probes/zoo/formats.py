"""What the suite knows about each released container format, in one entry per format.

A :class:`FormatSpec` holds everything that depends on the format: the method it comes from, the
method's eval transform, its head-count rule, the converter to a timm state dict, the projection head it
may carry, whether the file holds a teacher and a student, the sin-cos formula of its fixed position
table, and the predicate that recognises its layout. Adding a format is one converter in
``probes/zoo/convert.py`` plus one entry in :data:`FORMATS`.

Detection (:func:`detect_format`) tries the predicates in the order of :data:`FORMATS` and takes the
first that holds (docs/checkpoints.md#format-detection, made per format):

 1. ``carp``        ``teacher`` + ``student``; a ResNet teacher whose head has BatchNorm (CARPHead)
 2. ``ibot_full``   ``teacher`` + ``student``; ViT, and an iBOT head (``last_layer2``) or ``masked_embed``
 3. ``dino_full``   ``teacher`` + ``student`` (anything else with both)
 4. ``mocov3``      ``state_dict`` with ``module.base_encoder.*``
 5. ``mec``         ``state_dict`` with ``module.encoder.*`` and ``module.teacher.*``
 6. ``ibot``        ``state_dict`` with ``cls_token``
 7. ``cae``         ``model``/``module`` with ``encoder.*``, or BEiT-style attention with layer scale and
                    no relative position bias / lm_head (a stripped CAE encoder)
 8. ``beit``        ``model``/``module`` with a relative position table, ``lm_head`` or ``q_bias``
 9. ``mae``         ``model``/``module`` with ``decoder_*``, or without a classifier ``head.weight``
10. ``deit``        ``model``/``module`` with a classifier ``head.weight``
11. ``dino``        a plain dict of tensors
``timm`` and ``torchvision`` (already-clean state dicts) are never guessed: ask for them by name.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from probes.zoo import convert as c
from probes.zoo.errors import CheckpointError
from probes.zoo.posembed import mae_sincos_pos_embed, mocov3_sincos_pos_embed
from probes.zoo.registry import IMAGENET, Transform

STANDARD_HEADS = {192: 3, 384: 6, 768: 12, 1024: 16}  # head_dim 64
TWELVE_HEAD_SMALL = {384: 12, 768: 12, 1024: 16}  # MoCo v3 and CAE: ViT-S has 12 heads (head_dim 32)

BRANCHES = ("teacher", "student")

_BILINEAR = dataclasses.replace(IMAGENET, interpolation="bilinear")
_HALF = Transform((0.5, 0.5, 0.5), (0.5, 0.5, 0.5), "bicubic")


@dataclass(frozen=True)
class FormatSpec:
    method: str
    # obj, where (, branch) -> (timm state dict, projection state or None)
    converter: Callable[..., tuple[dict, dict | None]]
    detect: Callable[[Any], bool] | None = None  # None: never guessed, only asked for by name
    transform: Transform = IMAGENET
    # Heads per embed_dim. Shapes cannot tell heads apart, so the method decides (docs/checkpoints.md#head-counts).
    heads: Mapping[int, int] = field(default_factory=lambda: STANDARD_HEADS)
    # The fixed sin-cos table the file stores, by the method's own formula (regenerate it, never resample it).
    sincos: Callable | None = None
    projection: str | None = None  # kind of projection head the file may carry (probes.zoo.projection.HEADS)
    branched: bool = False  # a full training checkpoint: teacher and student


# ------------------------------------------------------------------------------ detection predicates
def _full(obj: Any) -> bool:
    return isinstance(obj, Mapping) and "teacher" in obj and "student" in obj


def _teacher_keys(obj: Any) -> list[str]:
    teacher = obj["teacher"] if isinstance(obj["teacher"], Mapping) else {}
    return [k for k in c.strip_leading(teacher, "module.") if isinstance(k, str)]


def _resnet_teacher(obj: Any) -> bool:
    return any(k.startswith("backbone.conv1") for k in _teacher_keys(obj))


def _is_carp(obj: Any) -> bool:
    # CARPHead has BatchNorm in its MLP (use_bn_in_head); DINOHead on ResNets does not.
    return _full(obj) and _resnet_teacher(obj) and any(
        k.startswith("head.") and "running_mean" in k for k in _teacher_keys(obj))


def _is_ibot_full(obj: Any) -> bool:
    if not _full(obj) or _resnet_teacher(obj):
        return False
    student = obj["student"] if isinstance(obj["student"], Mapping) else {}
    return any(k.startswith("head.last_layer2") for k in _teacher_keys(obj)) or any(
        isinstance(k, str) and k.endswith("masked_embed") for k in student)


def _state_dict_entry(obj: Any) -> Mapping:
    return obj["state_dict"] if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping) else {}


def _has_prefix(sd: Mapping, prefix: str) -> bool:
    return any(isinstance(k, str) and k.startswith(prefix) for k in sd)


def _has_suffix(sd: Mapping, suffix: str) -> bool:
    return any(isinstance(k, str) and k.endswith(suffix) for k in sd)


def _model_entry(obj: Any) -> Mapping | None:
    """The ``model`` entry, else the ``module`` entry (BEiT's loader order), when it is a dict."""
    for key in ("model", "module"):
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            return obj[key]
    return None


def _beit_markers(sd: Mapping) -> bool:
    return "rel_pos_bias.relative_position_bias_table" in sd or "lm_head.weight" in sd


def _is_cae(obj: Any) -> bool:
    sd = _model_entry(obj)
    if sd is None:
        return False
    # BEiT-style attention without relative bias and with layer scale: a stripped CAE encoder
    # (BEiT pt1k_800ep has no layer scale).
    return _has_prefix(sd, "encoder.") or (
        not _beit_markers(sd) and _has_suffix(sd, ".attn.q_bias") and _has_suffix(sd, ".gamma_1"))


def _is_beit(obj: Any) -> bool:
    sd = _model_entry(obj)
    return sd is not None and (_beit_markers(sd) or _has_suffix(sd, ".attn.q_bias"))


def _is_mae(obj: Any) -> bool:
    sd = _model_entry(obj)
    return sd is not None and (_has_prefix(sd, "decoder_") or "head.weight" not in sd)


def _is_deit(obj: Any) -> bool:
    sd = _model_entry(obj)
    return sd is not None and "head.weight" in sd


# ------------------------------------------------------------------------------------------ the table
# Dict order is detection order (module docstring).
FORMATS: dict[str, FormatSpec] = {
    "carp": FormatSpec("CARP", c.convert_carp, _is_carp, branched=True),
    "ibot_full": FormatSpec("iBOT", c.convert_ibot_full, _is_ibot_full, projection="ibot_head", branched=True),
    "dino_full": FormatSpec("DINO", c.convert_dino_full, _full, projection="dino_head", branched=True),
    "mocov3": FormatSpec("MoCo v3", c.convert_mocov3, lambda o: _has_prefix(_state_dict_entry(o), "module.base_encoder."),
                         _BILINEAR, heads=TWELVE_HEAD_SMALL, sincos=mocov3_sincos_pos_embed, projection="mlp"),
    "mec": FormatSpec("MEC", c.convert_mec, lambda o: _has_prefix(_state_dict_entry(o), "module.encoder.")
                      and _has_prefix(_state_dict_entry(o), "module.teacher."), _BILINEAR),
    "ibot": FormatSpec("iBOT", c.convert_ibot, lambda o: bool({"cls_token", "module.cls_token"} & set(_state_dict_entry(o))),
                       projection="ibot_head"),
    "cae": FormatSpec("CAE", c.convert_cae, _is_cae, heads=TWELVE_HEAD_SMALL, sincos=mocov3_sincos_pos_embed),
    "beit": FormatSpec("BEiT", c.convert_beit, _is_beit, _HALF),
    "mae": FormatSpec("MAE", c.convert_mae, _is_mae, sincos=mae_sincos_pos_embed),
    "deit": FormatSpec("DeiT", c.convert_deit, _is_deit),
    "dino": FormatSpec("DINO", c.convert_dino, c.is_state_dict),
    "timm": FormatSpec("timm", c.convert_timm),
    "torchvision": FormatSpec("torchvision", c.convert_torchvision, transform=_BILINEAR),
}
BRANCHED_FORMATS = tuple(name for name, spec in FORMATS.items() if spec.branched)


def format_spec(format: str, where: str = "checkpoint") -> FormatSpec:
    if format not in FORMATS:
        raise CheckpointError(f"{where}: unknown format {format!r} (expected one of {sorted(FORMATS)})")
    return FORMATS[format]


def convert(obj: Any, format: str, where: str = "checkpoint",
            branch: str = "teacher") -> tuple[dict, dict | None]:
    """Convert a loaded checkpoint of ``format`` into ``(timm_state_dict, projection_state or None)``.

    ``branch`` picks the teacher or the student of a full training checkpoint (``BRANCHED_FORMATS``).
    """
    spec = format_spec(format, where)
    if branch not in BRANCHES:
        raise CheckpointError(f"{where}: branch must be one of {BRANCHES}, got {branch!r}")
    if spec.branched:
        return spec.converter(obj, where, branch=branch)
    if branch != "teacher":
        raise CheckpointError(f"{where}: format {format!r} holds one network; a {branch} branch exists only in "
                              f"full training checkpoints ({', '.join(BRANCHED_FORMATS)})")
    return spec.converter(obj, where)


def detect_format(obj: Any, where: str = "checkpoint") -> str:
    """The first format whose predicate holds, in the documented order (module docstring)."""
    for name, spec in FORMATS.items():
        if spec.detect is not None and spec.detect(obj):
            return name
    raise CheckpointError(f"{where}: cannot recognise the checkpoint layout ({c.describe(obj)}); pass format= "
                          f"explicitly (one of {sorted(FORMATS)})")
