"""Build the timm model for a converted state dict and load it strictly.

``load_model(obj, format, arch)`` is the whole path from a loaded checkpoint object to a model in eval
mode: convert -> decide the architecture (heads from the method, never from shapes) -> create the timm
model -> adapt position embeddings to the model's resolution -> refuse any missing, unexpected or
mis-shaped tensor -> load.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Mapping

import timm
import torch
from timm.layers import resample_abs_pos_embed, resize_rel_pos_bias_table
from timm.models.beit import Beit
from timm.models.resnet import ResNet
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from probes.zoo.convert import PROJECTION_KINDS, bias_qv_to_qkv, convert, qkv_to_bias_qv
from probes.zoo.errors import CheckpointError, RegistryError
from probes.zoo.posembed import SINCOS_BY_FORMAT
from probes.zoo.projection import build_projection
from probes.zoo.registry import FORMATS, STANDARD_HEADS, Arch

VIT_CLASSES = (VisionTransformer, Beit)
# (blocks per stage, bottleneck blocks) -> torchvision/timm ResNet
RESNETS = {((2, 2, 2, 2), False): "resnet18", ((3, 4, 6, 3), False): "resnet34", ((3, 4, 6, 3), True): "resnet50",
           ((3, 4, 23, 3), True): "resnet101", ((3, 8, 36, 3), True): "resnet152"}


@dataclass
class LoadedModel:
    model: nn.Module
    projection: nn.Module | None
    arch: Arch


# --------------------------------------------------------------------------------- architecture
def infer_arch(sd: Mapping[str, torch.Tensor], fmt: str, where: str) -> Arch:
    """The registry-style architecture of a converted state dict, for a user's file given without ``arch``."""
    if "conv1.weight" in sd and "layer4.0.conv1.weight" in sd:
        blocks = tuple(len({k.split(".")[1] for k in sd if k.startswith(f"layer{i}.")}) for i in range(1, 5))
        bottleneck = "layer1.0.conv3.weight" in sd
        name = RESNETS.get((blocks, bottleneck))
        if name:
            return Arch(name, {"num_classes": 0})
    if "cls_token" in sd and "patch_embed.proj.weight" in sd:
        dim = sd["cls_token"].shape[-1]
        patch = sd["patch_embed.proj.weight"].shape[-1]
        depth = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))
        names = {384: "small", 768: "base", 1024: "large"}
        if dim in names and patch == 16 and depth == (24 if dim == 1024 else 12):
            beit_style = "rel_pos_bias.relative_position_bias_table" in sd or "pos_embed" not in sd or any(
                k.endswith("relative_position_bias_table") for k in sd)
            if beit_style:
                return Arch(f"beit_{names[dim]}_patch16_224", {
                    "num_classes": 0, "global_pool": "token",
                    "use_abs_pos_emb": "pos_embed" in sd,
                    "use_rel_pos_bias": any(k.startswith("blocks.") and k.endswith("relative_position_bias_table")
                                            for k in sd),
                    "use_shared_rel_pos_bias": "rel_pos_bias.relative_position_bias_table" in sd,
                    "init_values": 0.1 if any(k.endswith(".gamma_1") for k in sd) else 0})
            kwargs: dict[str, Any] = {"num_classes": 0, "global_pool": "token"}
            if any(k.endswith(".ls1.gamma") for k in sd):
                kwargs["init_values"] = 0.1  # overwritten by the stored gammas; only switches LayerScale on
            return Arch(f"vit_{names[dim]}_patch16_224", kwargs)
    raise CheckpointError(f"{where}: cannot infer the architecture of this {fmt!r} checkpoint; pass arch= "
                          "(a timm model name, or {'model': name, 'kwargs': {...}})")


def embed_dim_of(sd: Mapping[str, torch.Tensor]) -> int | None:
    if "cls_token" in sd:
        return int(sd["cls_token"].shape[-1])
    return None


def resolve_arch(arch: Arch | None, sd: Mapping[str, torch.Tensor], fmt: str, where: str) -> Arch:
    """Fill in and check the head count: the method decides it, shapes cannot (checkpoints.md section 8.1)."""
    arch = arch or infer_arch(sd, fmt, where)
    kwargs = {"num_classes": 0, **arch.kwargs}
    dim = embed_dim_of(sd)
    if dim is None:  # ResNets: no heads, no token pooling
        return Arch(arch.model, kwargs)
    kwargs.setdefault("global_pool", "token")  # 'avg' would swap the pretrained norm for a random fc_norm
    spec = FORMATS.get(fmt)
    expected = spec.heads.get(dim) if spec else None
    given = kwargs.get("num_heads")
    if given is None and expected is not None:
        kwargs["num_heads"] = expected
    elif given is None and spec is not None and spec.heads is not STANDARD_HEADS:
        raise CheckpointError(
            f"{where}: {spec.method} ViTs with embed_dim {dim} have no known head count; pass "
            "arch={'model': ..., 'kwargs': {'num_heads': N}} (heads are not recoverable from tensor shapes)")
    elif given is not None and expected is not None and given != expected:
        raise CheckpointError(
            f"{where}: num_heads={given} disagrees with {spec.method} (embed_dim {dim} has {expected} heads). "
            "Tensor shapes are identical for any head count, so this would load and silently give wrong features.")
    return Arch(arch.model, kwargs)


def build_model(arch: Arch, device: str | torch.device = "cpu") -> nn.Module:
    """``timm.create_model`` without pretrained weights, in eval mode. ``device='meta'`` allocates nothing."""
    try:
        with torch.device(device) if str(device) == "meta" else contextlib.nullcontext():
            model = timm.create_model(arch.model, pretrained=False, **dict(arch.kwargs))
    except (RuntimeError, TypeError, ValueError, KeyError) as err:
        raise RegistryError(f"cannot build timm model {arch.describe()}: {err}") from None
    if not isinstance(model, VIT_CLASSES + (ResNet,)):
        raise RegistryError(f"{arch.model}: {type(model).__name__} is not supported (ViT, BEiT or ResNet expected)")
    return model.eval()


def heads_of(model: nn.Module) -> int | None:
    if isinstance(model, VIT_CLASSES):
        return int(model.blocks[0].attn.num_heads)
    return None


# ------------------------------------------------------------------------------ state dict fitting
def _grid(model: nn.Module) -> tuple[int, int]:
    return tuple(model.patch_embed.grid_size)


def adapt_to_model(model: nn.Module, sd: Mapping[str, torch.Tensor], fmt: str,
                   where: str = "checkpoint") -> dict[str, torch.Tensor]:
    """Key style and resolution: BEiT-style attention into a timm ViT (or back into ``Beit``, for CAE's
    alternative target); position tables to the model's grid."""
    sd = dict(sd)
    if isinstance(model, VisionTransformer) and any(k.endswith("attn.q_bias") for k in sd):
        sd = bias_qv_to_qkv(sd)
    elif isinstance(model, Beit) and any(k.endswith("attn.qkv.bias") for k in sd):
        sd = qkv_to_bias_qv(sd, where)
    target = model.state_dict()
    pos = sd.get("pos_embed")
    if pos is not None and "pos_embed" in target and pos.shape != target["pos_embed"].shape and pos.dim() == 3:
        sincos = SINCOS_BY_FORMAT.get(fmt)
        if sincos is not None:
            # Fixed tables: regenerate with the method's own channel order rather than interpolate.
            sd["pos_embed"] = sincos(_grid(model), pos.shape[-1]).to(pos.dtype).to(pos.device)
        else:
            sd["pos_embed"] = resample_abs_pos_embed(pos, new_size=list(_grid(model)), num_prefix_tokens=1)
    for key, value in list(sd.items()):
        if key.endswith("relative_position_bias_table") and key in target and value.shape != target[key].shape:
            owner = model.get_submodule(key[: -len(".relative_position_bias_table")])
            sd[key] = resize_rel_pos_bias_table(value, new_window_size=owner.window_size,
                                                new_bias_shape=tuple(target[key].shape))
    return sd


def check_state_dict(module: nn.Module, sd: Mapping[str, torch.Tensor], where: str) -> None:
    """Refuse, naming the keys, any missing, unexpected or mis-shaped tensor."""
    target = module.state_dict()
    missing = sorted(set(target) - set(sd))
    unexpected = sorted(set(sd) - set(target))
    shapes = sorted(f"{k}: file {tuple(sd[k].shape)} vs model {tuple(target[k].shape)}"
                    for k in set(sd) & set(target) if tuple(sd[k].shape) != tuple(target[k].shape))
    if missing or unexpected or shapes:
        def show(items):
            return ", ".join(items[:10]) + (f", ... ({len(items)} in all)" if len(items) > 10 else "")
        parts = []
        if missing:
            parts.append(f"missing: {show(missing)}")
        if unexpected:
            parts.append(f"unexpected: {show(unexpected)}")
        if shapes:
            parts.append(f"wrong shape: {show(shapes)}")
        raise CheckpointError(f"{where}: does not match {type(module).__name__} ({'; '.join(parts)})")


def load_strict(model: nn.Module, sd: Mapping[str, torch.Tensor], fmt: str, where: str) -> None:
    sd = adapt_to_model(model, sd, fmt, where)
    check_state_dict(model, sd, where)
    meta = next(iter(model.parameters())).is_meta
    target = model.state_dict()
    sd = {k: v.to(dtype=target[k].dtype) if v.is_floating_point() else v for k, v in sd.items()}
    model.load_state_dict(sd, strict=True, assign=meta)


def _all_buffers_persistent(model: nn.Module) -> bool:
    return {name for name, _ in model.named_buffers()} <= set(model.state_dict())


def load_model(obj: Any, fmt: str, arch: Arch | None = None, where: str = "checkpoint",
               device: str | torch.device = "cpu", branch: str = "teacher") -> LoadedModel:
    """Loaded checkpoint object -> timm model (eval mode) + projection head, both on ``device``.

    ``branch``: teacher (default) or student of a full training checkpoint (DINO, iBOT, CARP).
    """
    sd, head_state = convert(obj, fmt, where, branch=branch)
    arch = resolve_arch(arch, sd, fmt, where)
    # Built on the meta device, the model skips its random initialisation and takes the checkpoint's
    # tensors as they are; unless it has buffers a checkpoint does not carry (BEiT's position index).
    model = build_model(arch, "meta")
    if str(device) != "meta" and not _all_buffers_persistent(model):
        model = build_model(arch, "cpu")
    load_strict(model, sd, fmt, where)
    projection = None
    if head_state:
        with torch.device(device) if str(device) == "meta" else contextlib.nullcontext():
            projection = build_projection(PROJECTION_KINDS[fmt], head_state, f"{where} (projection head)")
        if str(device) != "meta":
            projection = projection.to(device)
    return LoadedModel(model.to(device) if str(device) != "meta" else model, projection, arch)
