"""Build the timm model for a converted state dict and load it strictly.

``load_model(obj, format, arch)`` is the whole path from a loaded checkpoint object to a model in eval
mode: convert -> refuse non-float or non-finite tensors -> decide the architecture (what the shapes
determine, heads from the method's rule) -> create the timm model -> adapt position embeddings to the
model's resolution -> refuse any missing, unexpected or mis-shaped tensor -> load.
"""
from __future__ import annotations

import contextlib
import json
import math
from dataclasses import dataclass
from typing import Any, Mapping

import timm
import torch
from timm.layers import resample_abs_pos_embed, resize_rel_pos_bias_table
from timm.models.beit import Beit
from timm.models.resnet import ResNet
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from probes.zoo.convert import bias_qv_to_qkv, qkv_to_bias_qv
from probes.zoo.errors import CheckpointError, RegistryError
from probes.zoo.formats import FORMATS, convert
from probes.zoo.projection import build_projection
from probes.zoo.registry import Arch

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
# timm names for the usual sizes; other sizes take the base model with their own kwargs.
# embed_dim -> (model name, its default depth)
VIT_NAMES = {192: ("vit_tiny_patch16_224", 12), 384: ("vit_small_patch16_224", 12),
             768: ("vit_base_patch16_224", 12), 1024: ("vit_large_patch16_224", 24)}
BEIT_NAMES = {768: ("beit_base_patch16_224", 12), 1024: ("beit_large_patch16_224", 24)}
SHARED_REL_TABLE = "rel_pos_bias.relative_position_bias_table"


def _ask(where: str, field: str, problem: str, example: Any) -> CheckpointError:
    """The tensors leave ``field`` open: say which, and how to give it."""
    kwargs = json.dumps({field: example})
    return CheckpointError(
        f"{where}: cannot infer the architecture: {field}: {problem}; pass --arch-kwargs '{kwargs}' "
        f"(Python: arch={{'kwargs': {{{field!r}: ...}}}}), or a full arch (a timm model name, or "
        "{'model': name, 'kwargs': {...}})")


def _block_indices(sd: Mapping[str, torch.Tensor]) -> list[int]:
    return sorted({int(k.split(".")[1]) for k in sd if k.startswith("blocks.") and k.split(".")[1].isdigit()})


def _square_side(count: int) -> int | None:
    side = math.isqrt(count) if count >= 0 else 0
    return side if side * side == count and side > 0 else None


def rel_table_window(rows: int) -> int | None:
    """Side of the (square) window a BEiT relative position table of ``rows`` rows was made for:
    rows = (2 * side - 1) ** 2 + 3 (the three extra rows are cls-to-token, token-to-cls, cls-to-cls)."""
    span = _square_side(rows - 3)
    return (span + 1) // 2 if span is not None and span % 2 == 1 else None


def rel_tables(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in sd.items() if k.endswith("relative_position_bias_table")}


def table_heads(sd: Mapping[str, torch.Tensor]) -> int | None:
    """BEiT's relative position tables have one column per head: the one place shapes tell the head count."""
    widths = {int(v.shape[-1]) for v in rel_tables(sd).values() if v.dim() == 2}
    return widths.pop() if len(widths) == 1 else None


def patch_size_of(sd: Mapping[str, torch.Tensor]) -> int | None:
    weight = sd.get("patch_embed.proj.weight")
    return int(weight.shape[-1]) if weight is not None and weight.dim() == 4 else None


def _infer_resnet(sd: Mapping[str, torch.Tensor], where: str) -> Arch:
    blocks = tuple(len({k.split(".")[1] for k in sd if k.startswith(f"layer{i}.")}) for i in range(1, 5))
    bottleneck = "layer1.0.conv3.weight" in sd
    name = RESNETS.get((blocks, bottleneck))
    if name is None:
        raise CheckpointError(f"{where}: cannot infer the architecture: a ResNet with {blocks} blocks per stage "
                              f"({'bottleneck' if bottleneck else 'basic'} blocks) is none of "
                              f"{sorted(set(RESNETS.values()))}; pass arch= (a timm model name)")
    return Arch(name, {"num_classes": 0})


def infer_arch(sd: Mapping[str, torch.Tensor], fmt: str, where: str, given: Mapping[str, Any] | None = None) -> Arch:
    """Everything the tensors of a converted state dict determine, as a timm model name + kwargs.

    Read from the shapes: embed dim, depth, patch size, input channels, grid (-> img_size), MLP ratio,
    qkv bias, layer scale, absolute vs relative position tables, shared vs per-block relative bias, and
    BEiT's head count (its relative tables have one column per head). Left to :func:`resolve_arch`: the
    head count of the other ViTs (the method's rule). A field the tensors leave open and ``given`` does not
    set raises a :class:`CheckpointError` naming it.
    """
    given = dict(given or {})
    if "conv1.weight" in sd and "layer4.0.conv1.weight" in sd:
        return _infer_resnet(sd, where)
    proj = sd.get("patch_embed.proj.weight")
    if proj is None or "cls_token" not in sd or proj.dim() != 4:
        raise CheckpointError(f"{where}: cannot infer the architecture of this {fmt!r} checkpoint (neither a ViT with "
                              "'cls_token' and 'patch_embed.proj.weight' nor a ResNet with 'conv1.weight' and "
                              "'layer4.*'); pass arch= (a timm model name, or {'model': name, 'kwargs': {...}})")
    dim, chans, patch_h, patch_w = (int(n) for n in proj.shape)
    if patch_h != patch_w and "patch_size" not in given:
        raise _ask(where, "patch_size", f"patch_embed.proj.weight has non-square {patch_h}x{patch_w} patches", [patch_h, patch_w])
    blocks = _block_indices(sd)
    if not blocks:
        raise CheckpointError(f"{where}: cannot infer the architecture: no 'blocks.N.*' tensors in this ViT checkpoint")
    depth = blocks[-1] + 1
    hidden = {int(sd[k].shape[0]) for k in sd if k.startswith("blocks.") and k.endswith(".mlp.fc1.weight")}
    mlp_ratio = None
    if len(hidden) == 1:
        mlp_ratio = hidden.pop() / dim
        if int(dim * mlp_ratio) != round(dim * mlp_ratio):  # timm builds int(dim * ratio) hidden units
            mlp_ratio = (round(dim * mlp_ratio) + 0.5) / dim
    elif "mlp_ratio" not in given:
        raise _ask(where, "mlp_ratio", f"the MLP widths differ between blocks ({sorted(hidden)}) or are missing", 4.0)

    tables = rel_tables(sd)
    shared = SHARED_REL_TABLE in sd
    per_block = any(k.startswith("blocks.") for k in tables)
    has_abs = "pos_embed" in sd
    grids = set()
    if has_abs:
        tokens = int(sd["pos_embed"].shape[1]) - 1 - ("dist_token" in sd)
        side = _square_side(tokens)
        if side is None and "img_size" not in given:
            raise _ask(where, "img_size", f"pos_embed has {tokens} patch positions, not a square grid", 224)
        grids.add(side)
    for key, table in tables.items():
        side = rel_table_window(int(table.shape[0]))
        if side is None and "img_size" not in given:
            raise _ask(where, "img_size", f"{key} has {int(table.shape[0])} rows, not (2*side-1)**2 + 3", 224)
        grids.add(side)
    grids.discard(None)
    if len(grids) > 1 and "img_size" not in given:
        raise _ask(where, "img_size", f"the position tables disagree on the patch grid ({sorted(grids)} per side)", 224)
    if not grids and "img_size" not in given:
        raise _ask(where, "img_size", "no position table (pos_embed or relative_position_bias_table) tells the grid", 224)
    img_size = grids.pop() * patch_w if grids else None

    layer_scale = any(k.endswith((".gamma_1", ".ls1.gamma")) for k in sd)
    qkv_bias = any(k.endswith((".attn.qkv.bias", ".attn.q_bias")) for k in sd)
    beit = shared or per_block or not has_abs
    names = BEIT_NAMES if beit else VIT_NAMES
    name, default_depth = names.get(dim, (("beit" if beit else "vit") + "_base_patch16_224", 12))
    kwargs: dict[str, Any] = {"num_classes": 0, "global_pool": "token"}
    if dim not in names:
        kwargs["embed_dim"] = dim
    if depth != default_depth:
        kwargs["depth"] = depth
    if patch_w != 16:
        kwargs["patch_size"] = patch_w
    if img_size is not None and img_size != 224:
        kwargs["img_size"] = img_size
    if mlp_ratio is not None and mlp_ratio != 4.0:
        kwargs["mlp_ratio"] = mlp_ratio
    if chans != 3:
        kwargs["in_chans"] = chans
    if not qkv_bias:
        kwargs["qkv_bias"] = False
    if beit:
        kwargs.update(use_abs_pos_emb=has_abs, use_rel_pos_bias=per_block, use_shared_rel_pos_bias=shared,
                      # 0, not None: timm.create_model drops None kwargs, which would restore BEiT's default 0.1
                      init_values=0.1 if layer_scale else 0)
        if table_heads(sd) is not None:
            kwargs["num_heads"] = table_heads(sd)
    elif layer_scale:
        kwargs["init_values"] = 0.1  # overwritten by the stored gammas; only switches LayerScale on
    return Arch(name, kwargs)


def embed_dim_of(sd: Mapping[str, torch.Tensor]) -> int | None:
    if "cls_token" in sd:
        return int(sd["cls_token"].shape[-1])
    return None


def resolve_arch(arch: Arch | None, sd: Mapping[str, torch.Tensor], fmt: str, where: str, *,
                 overrides: Mapping[str, Any] | None = None, force_heads: bool = False, rules: str | None = None,
                 input_size: int | None = None) -> Arch:
    """The architecture to build: ``arch`` (or what the tensors determine) with ``overrides`` on top, the head
    count from the method's rule (``rules``: the format whose method decides, default ``fmt``), and the
    input size. Shapes cannot tell heads apart (docs/checkpoints.md#head-counts), so a head count that disagrees
    with the rule is refused unless ``force_heads``."""
    overrides = dict(overrides or {})
    arch = arch or infer_arch(sd, fmt, where, given=overrides)
    kwargs = {"num_classes": 0, **arch.kwargs, **overrides}
    dim = embed_dim_of(sd)
    if dim is None:  # ResNets: no heads, no token pooling, any input size
        return Arch(arch.model, kwargs)
    kwargs.setdefault("global_pool", "token")  # 'avg' would swap the pretrained norm for a random fc_norm
    if input_size is not None:  # the size to run at; an arch's img_size describes the file
        check_input_size(input_size, patch_size_of(sd), where)
        kwargs["img_size"] = input_size
    spec = FORMATS.get(rules or fmt)
    method = spec.method if spec else (rules or fmt)
    from_table = table_heads(sd)
    given = kwargs.get("num_heads")
    if from_table is not None:
        if given is not None and given != from_table:
            raise CheckpointError(f"{where}: num_heads={given}, but the relative position tables have {from_table} "
                                  "columns, one per head")
        kwargs["num_heads"] = from_table
        return Arch(arch.model, kwargs)
    expected = spec.heads.get(dim) if spec else None
    if given is None:
        if expected is None:
            raise _ask(where, "num_heads", f"embed_dim {dim} has no known head count for {method} (heads cannot "
                       "be read from tensor shapes)", _head_count_example(dim))
        kwargs["num_heads"] = expected
    elif not isinstance(given, int) or isinstance(given, bool) or given < 1 or dim % given:
        raise CheckpointError(f"{where}: num_heads={given!r}: expected a whole number of heads that divides embed_dim "
                              f"{dim} (head dimension 64 is the usual: {_head_count_example(dim)})")
    elif expected is not None and given != expected and not force_heads:
        raise CheckpointError(
            f"{where}: num_heads={given} disagrees with {method} (embed_dim {dim} has {expected} heads). "
            f"Tensor shapes are identical for any head count (qkv is [{3 * dim}, {dim}] however it is split), "
            "so this would load and silently give wrong features. If the file really has "
            f"{given} heads, convert it with --force-heads (Python: force_heads=True).")
    return Arch(arch.model, kwargs)


def _head_count_example(dim: int) -> int:
    """Heads of 64 channels, the ViT convention, else the largest divisor of ``dim`` up to 16."""
    return dim // 64 if dim % 64 == 0 else max(h for h in range(1, 17) if dim % h == 0)


def check_input_size(size: Any, patch: int | None, where: str) -> None:
    """A ViT takes whole patches only: refuse, naming the nearest valid sizes, any other input size."""
    if not isinstance(size, int) or isinstance(size, bool) or size <= 0:
        raise CheckpointError(f"{where}: input_size must be a positive int, got {size!r}")
    if patch and size % patch:
        below, above = size // patch * patch, (size // patch + 1) * patch
        near = f"{below} or {above}" if below else f"{above}"
        raise CheckpointError(f"{where}: input_size {size} is not a multiple of the patch size {patch}; "
                              f"valid sizes: multiples of {patch} (nearest: {near})")


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
        sincos = FORMATS[fmt].sincos if fmt in FORMATS else None
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


def _file_names(obj: Any) -> dict[int, str]:
    """id(tensor) -> its key path in the loaded file (``state_dict/module.base_encoder.blocks.0.attn.qkv.weight``),
    so that a bad tensor is named as the file names it."""
    names: dict[int, str] = {}

    def walk(value: Any, path: str, depth: int) -> None:
        if torch.is_tensor(value):
            names.setdefault(id(value), path)
        elif isinstance(value, Mapping) and depth < 3:
            for key, item in value.items():
                walk(item, f"{path}/{key}" if path else str(key), depth + 1)

    walk(obj, "", 0)
    return names


def check_tensors(obj: Any, sd: Mapping[str, torch.Tensor], where: str) -> None:
    """Refuse non-float weights (int32 where floats are expected) and NaN/inf values, naming the tensor."""
    names = _file_names(obj)
    for key, value in sd.items():
        name = names.get(id(value), f"{key} (after conversion)")
        if key.endswith("num_batches_tracked"):
            if value.is_floating_point() or value.is_complex():
                raise CheckpointError(f"{where}: tensor {name!r} is {value.dtype} (expected an integer counter)")
            continue
        if not value.is_floating_point():
            raise CheckpointError(f"{where}: tensor {name!r} is {value.dtype} (expected a floating-point tensor: "
                                  "float32, float16 or bfloat16); the file is not a checkpoint of weights, or was "
                                  "written by a tool that changed its dtypes")
        if value.is_meta or value.numel() == 0:
            continue
        finite = torch.isfinite(value)
        if not bool(finite.all()):
            bad = int((~finite).sum())
            raise CheckpointError(f"{where}: tensor {name!r} holds {bad} NaN/inf value(s) of {value.numel()} "
                                  "(expected finite weights); the file is damaged, or was saved from a diverged run")


def load_model(obj: Any, fmt: str, arch: Arch | None = None, where: str = "checkpoint",
               device: str | torch.device = "cpu", branch: str = "teacher", *,
               overrides: Mapping[str, Any] | None = None, force_heads: bool = False, rules: str | None = None,
               input_size: int | None = None, head_state: Mapping[str, torch.Tensor] | None = None) -> LoadedModel:
    """Loaded checkpoint object -> timm model (eval mode) + projection head, both on ``device``.

    ``branch``: teacher (default) or student of a full training checkpoint (DINO, iBOT, CARP).
    ``overrides``: kwargs laid over ``arch`` (or over the architecture inferred from the tensors).
    ``rules``: the format whose method decides heads, sin-cos tables and the projection kind (default
    ``fmt``; a converted file names its source format). ``input_size``: build the ViT at that square size,
    position tables rebuilt (sin-cos), interpolated (learned) or resized (BEiT relative tables).
    ``head_state``: a projection head stored apart from the file (a converted file's sidecar).
    """
    sd, file_head = convert(obj, fmt, where, branch=branch)
    check_tensors(obj, sd, where)
    head_state = file_head or head_state
    rules = rules or fmt
    arch = resolve_arch(arch, sd, fmt, where, overrides=overrides, force_heads=force_heads, rules=rules,
                        input_size=input_size)
    # Built on the meta device, the model skips its random initialisation and takes the checkpoint's
    # tensors as they are; unless it has buffers a checkpoint does not carry (BEiT's position index).
    model = build_model(arch, "meta")
    if str(device) != "meta" and not _all_buffers_persistent(model):
        model = build_model(arch, "cpu")
    load_strict(model, sd, rules, where)
    projection = None
    if head_state:
        kind = FORMATS[rules].projection if rules in FORMATS else None
        if kind is None:
            raise CheckpointError(f"{where}: carries a projection head, but format {rules!r} has no projection kind")
        check_tensors(obj if file_head else head_state, head_state, f"{where} (projection head)")
        with torch.device(device) if str(device) == "meta" else contextlib.nullcontext():
            projection = build_projection(kind, head_state, f"{where} (projection head)")
        if str(device) != "meta":
            projection = projection.to(device)
    return LoadedModel(model.to(device) if str(device) != "meta" else model, projection, arch)
