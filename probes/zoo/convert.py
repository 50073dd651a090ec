"""One converter per released container format -> a clean timm state dict (+ the projection head).

Each converter is named by its format's entry in ``probes.zoo.formats.FORMATS``;
``probes.zoo.formats.convert(obj, format)`` returns ``(state_dict, projection_state or None)``. ``obj`` is what
``load_checkpoint`` read from the file. The state dict has timm's key names for the registry's target
class (``VisionTransformer``, ``Beit`` for BEiT, ``ResNet``); the projection state is the head's own
state dict with weight-norm already folded. Rules: docs/checkpoints.md#conversion-rules and golden/README.md.

Everything is done here, before timm sees the keys: timm's own ``checkpoint_filter_fn`` misroutes
some of these layouts (a top-level ``mask_token`` is taken for DINOv2, an ``encoder`` key for I-JEPA).
"""
from __future__ import annotations

from typing import Any, Mapping

import torch

from probes.zoo.errors import CheckpointError

StateDict = dict[str, torch.Tensor]


# --------------------------------------------------------------------------------------- helpers
def describe(obj: Any) -> str:
    if isinstance(obj, Mapping):
        keys = list(obj)
        shown = ", ".join(repr(k) for k in keys[:8]) + (", ..." if len(keys) > 8 else "")
        return f"a dict with {len(keys)} keys [{shown}]"
    return f"an object of type {type(obj).__name__}"


def is_state_dict(obj: Any) -> bool:
    """A non-empty dict of tensors under string keys."""
    return (isinstance(obj, Mapping) and bool(obj)
            and all(isinstance(k, str) and torch.is_tensor(v) for k, v in obj.items()))


def _entry(obj: Any, key: str, fmt: str, where: str) -> StateDict:
    if not isinstance(obj, Mapping) or key not in obj:
        raise CheckpointError(f"{where}: format {fmt!r} expects a dict with a {key!r} entry; found {describe(obj)}")
    sd = obj[key]
    if not is_state_dict(sd):
        raise CheckpointError(f"{where}['{key}']: expected a non-empty dict of tensors; found {describe(sd)}")
    return dict(sd)


def _take(sd: Mapping[str, torch.Tensor], prefix: str, where: str) -> StateDict:
    out = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
    if not out:
        prefixes = sorted({k.split(".")[0] + "." for k in sd})
        raise CheckpointError(f"{where}: no key starts with {prefix!r} (key prefixes found: {prefixes[:12]})")
    return out


def strip_leading(sd: Mapping[str, torch.Tensor], prefix: str) -> StateDict:
    return {(k[len(prefix):] if k.startswith(prefix) else k): v for k, v in sd.items()}


def _split(sd: Mapping[str, torch.Tensor], prefix: str) -> tuple[StateDict, StateDict | None]:
    """Keys under ``prefix`` (stripped) and the rest."""
    inside = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
    rest = {k: v for k, v in sd.items() if not k.startswith(prefix)}
    return rest, (inside or None)


def _drop(sd: Mapping[str, torch.Tensor], exact=(), prefixes=(), suffixes=()) -> StateDict:
    return {k: v for k, v in sd.items()
            if k not in exact and not k.startswith(tuple(prefixes)) and not k.endswith(tuple(suffixes))}


def fold_weight_norm(head: Mapping[str, torch.Tensor]) -> StateDict:
    """Replace every ``X.weight_g``/``X.weight_v`` pair by ``X.weight = g * v / ||v||``.

    ``torch.nn.utils.weight_norm`` (dim=0) normalises each output row of ``v`` over all other dims. A row
    whose ``v`` is all zeros has no direction; it becomes a zero row rather than torch's 0/0 = NaN (a NaN
    or inf in ``g`` or ``v`` still gives a non-finite weight, which the loader refuses).
    """
    out = dict(head)
    for key in [k for k in head if k.endswith(".weight_g")]:
        base = key[: -len("weight_g")]
        g, v = out.pop(key), out.pop(base + "weight_v")
        norm = v.flatten(1).norm(dim=1).reshape(g.shape)
        out[base + "weight"] = v * torch.where(norm > 0, g / norm, torch.zeros_like(g))
    return out


def bias_qv_to_qkv(sd: Mapping[str, torch.Tensor]) -> StateDict:
    """BEiT/CAE attention (qkv without bias + ``q_bias``/``v_bias``) -> timm ``VisionTransformer``.

    ``attn.qkv.bias = cat(q_bias, 0, v_bias)``: BEiT's k bias is identically zero. Layer scale
    ``gamma_1``/``gamma_2`` becomes ``ls1.gamma``/``ls2.gamma``.
    """
    out: StateDict = {}
    for key, value in sd.items():
        if key.endswith("attn.v_bias"):
            continue
        if key.endswith("attn.q_bias"):
            v_bias = sd[key[: -len("q_bias")] + "v_bias"]
            out[key[: -len("q_bias")] + "qkv.bias"] = torch.cat([value, torch.zeros_like(value), v_bias])
        elif key.endswith(".gamma_1") or key.endswith(".gamma_2"):
            out[key[:-len("gamma_1")] + f"ls{key[-1]}.gamma"] = value
        else:
            out[key] = value
    return out


def qkv_to_bias_qv(sd: Mapping[str, torch.Tensor], where: str) -> StateDict:
    """The inverse of :func:`bias_qv_to_qkv`, for loading a fused state dict into timm's ``Beit``."""
    out: StateDict = {}
    for key, value in sd.items():
        if key.endswith("attn.qkv.bias"):
            q, k, v = value.chunk(3)
            if not k.is_meta and bool(k.abs().max() > 0):
                raise CheckpointError(f"{where}: {key} has a non-zero k bias, which BEiT attention cannot hold")
            out[key[: -len("qkv.bias")] + "q_bias"], out[key[: -len("qkv.bias")] + "v_bias"] = q, v
        elif ".ls1.gamma" in key or ".ls2.gamma" in key:
            out[key.replace(".ls1.gamma", ".gamma_1").replace(".ls2.gamma", ".gamma_2")] = value
        else:
            out[key] = value
    return out


def _backbone_and_head(sd: StateDict, where: str) -> tuple[StateDict, StateDict | None]:
    """DINO/iBOT/CARP MultiCropWrapper: ``[module.]backbone.*`` and ``[module.]head.*``."""
    sd = strip_leading(sd, "module.")
    backbone = _take(sd, "backbone.", where)
    _, head = _split(sd, "head.")
    return backbone, head


# ------------------------------------------------------------------------------------ converters
def convert_deit(obj: Any, where: str):
    sd = _entry(obj, "model", "deit", where)
    return _drop(sd, prefixes=("head.", "head_dist.")), None


def convert_mocov3(obj: Any, where: str):
    sd = _entry(obj, "state_dict", "mocov3", where)
    encoder = _take(sd, "module.base_encoder.", where + "['state_dict']")
    # The projector replaced the classifier: `head` on ViTs, `fc` on ResNets.
    body, projector = _split(encoder, "head." if "cls_token" in encoder else "fc.")
    return body, projector


def convert_dino(obj: Any, where: str):
    if isinstance(obj, Mapping) and "teacher" in obj:
        raise CheckpointError(f"{where}: this is a full DINO training checkpoint ({describe(obj)}); use format 'dino_full'")
    if not is_state_dict(obj):
        raise CheckpointError(f"{where}: format 'dino' expects a plain dict of tensors; found {describe(obj)}")
    return _drop(obj, prefixes=("fc.", "head.")), None


def convert_dino_full(obj: Any, where: str, branch: str = "teacher"):
    backbone, head = _backbone_and_head(_entry(obj, branch, "dino_full", where), where + f"['{branch}']")
    return _drop(backbone, prefixes=("fc.", "head.")), (fold_weight_norm(head) if head else None)


def convert_ibot(obj: Any, where: str):
    sd = strip_leading(_entry(obj, "state_dict", "ibot", where), "module.")
    # Student files (the IN-22k release) carry the mask-token parameter of masked image modelling.
    body, head = _split(_drop(sd, exact=("masked_embed",)), "head.")
    return body, (fold_weight_norm(head) if head else None)


def convert_ibot_full(obj: Any, where: str, branch: str = "teacher"):
    backbone, head = _backbone_and_head(_entry(obj, branch, "ibot_full", where), where + f"['{branch}']")
    return _drop(backbone, exact=("masked_embed",)), (fold_weight_norm(head) if head else None)


def convert_beit(obj: Any, where: str):
    # BEiT's own fine-tuning loader tries 'model', then 'module', then the raw dict.
    for key in ("model", "module"):
        if isinstance(obj, Mapping) and key in obj:
            sd = _entry(obj, key, "beit", where)
            break
    else:
        if not is_state_dict(obj):
            raise CheckpointError(f"{where}: format 'beit' expects {{'model': sd}}, {{'module': sd}} or a plain "
                                  f"state dict; found {describe(obj)}")
        sd = dict(obj)
    return _drop(sd, exact=("mask_token",), prefixes=("lm_head.",), suffixes=("relative_position_index",)), None


def convert_mae(obj: Any, where: str):
    sd = _entry(obj, "model", "mae", where)
    return _drop(sd, exact=("mask_token",), prefixes=("decoder_",)), None


def convert_cae(obj: Any, where: str):
    sd = _entry(obj, "model", "cae", where) if isinstance(obj, Mapping) and "model" in obj else obj
    if not is_state_dict(sd):
        raise CheckpointError(f"{where}: format 'cae' expects {{'model': sd}} or a state dict; found {describe(obj)}")
    # "starts with", never "contains": 'alignment_encoder.' also contains 'encoder.'.
    if any(k.startswith("encoder.") for k in sd):
        sd = _take(sd, "encoder.", where + "['model']")
    else:
        others = ("alignment_encoder.", "teacher.", "regresser.", "decoder.")
        leftovers = sorted({k.split(".")[0] for k in sd if k.startswith(others)})
        if leftovers:
            raise CheckpointError(f"{where}: CAE checkpoint without 'encoder.*' keys but with {leftovers}; "
                                  "cannot tell the encoder apart")
    sd = _drop(sd, exact=("mask_token", "rd_pos_embed"), suffixes=("relative_position_index",))
    return bias_qv_to_qkv(sd), None


def convert_mec(obj: Any, where: str):
    sd = _entry(obj, "state_dict", "mec", where)
    encoder = _take(sd, "module.encoder.", where + "['state_dict']")
    return _drop(encoder, prefixes=("fc.",)), None


def convert_carp(obj: Any, where: str, branch: str = "teacher"):
    backbone, _ = _backbone_and_head(_entry(obj, branch, "carp", where), where + f"['{branch}']")
    return _drop(backbone, prefixes=("fc.", "head.")), None


def convert_timm(obj: Any, where: str):
    if isinstance(obj, Mapping) and not is_state_dict(obj):
        for key in ("state_dict", "model"):
            if key in obj and is_state_dict(obj[key]):
                return dict(obj[key]), None
    if not is_state_dict(obj):
        raise CheckpointError(f"{where}: format 'timm' expects a state dict; found {describe(obj)}")
    return dict(obj), None


def convert_torchvision(obj: Any, where: str):
    sd, _ = convert_timm(obj, where)
    if "conv1.weight" not in sd:
        raise CheckpointError(f"{where}: format 'torchvision' supports ResNets (key 'conv1.weight'); not found "
                              f"({describe(sd)})")
    # torchvision and timm ResNets share every parameter name.
    return _drop(sd, prefixes=("fc.",)), None
