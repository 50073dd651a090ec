"""Projection heads rebuilt from their stored tensors: the MoCo v3 projector, DINOHead and iBOTHead.

The modules are rebuilt from the indices of the saved ``nn.Sequential`` (a missing index is the
activation between layers), so one builder covers every head size; all run in eval mode (BatchNorm
uses the stored running statistics).
"""
from __future__ import annotations

from typing import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from probes.zoo.errors import CheckpointError


def sequential_from_state(state: Mapping[str, torch.Tensor], activation: type[nn.Module], where: str) -> nn.Sequential:
    """Rebuild an indexed ``nn.Sequential`` of Linear/BatchNorm1d layers; gaps are ``activation()``."""
    indices = sorted({int(k.split(".")[0]) for k in state})
    layers: list[nn.Module] = []
    for i in range(indices[-1] + 1):
        weight = state.get(f"{i}.weight")
        if f"{i}.running_mean" in state:
            layers.append(nn.BatchNorm1d(state[f"{i}.running_mean"].shape[0], affine=weight is not None))
        elif weight is not None and weight.dim() == 2:
            layers.append(nn.Linear(weight.shape[1], weight.shape[0], bias=f"{i}.bias" in state))
        elif i in indices:
            raise CheckpointError(f"{where}: layer {i} of the projection head is neither Linear nor BatchNorm "
                                  f"(keys {sorted(k for k in state if k.startswith(f'{i}.'))})")
        else:
            layers.append(activation())
    seq = nn.Sequential(*layers)
    _load(seq, state, where)
    return seq


def _load(module: nn.Module, state: Mapping[str, torch.Tensor], where: str) -> None:
    from probes.zoo.build import check_state_dict  # one strict check for every module

    check_state_dict(module, state, where)
    module.load_state_dict(state, strict=True, assign=True)


class MLPProjector(nn.Module):
    """MoCo v3 projector (``base_encoder.head`` / ``.fc``): Linear-BN-ReLU-...-BN(affine=False)."""

    def __init__(self, state: Mapping[str, torch.Tensor], where: str):
        super().__init__()
        self.mlp = sequential_from_state(state, nn.ReLU, where)

    def forward(self, cls: torch.Tensor) -> torch.Tensor:
        return self.mlp(cls)


def _dino_mlp(state: Mapping[str, torch.Tensor], where: str) -> nn.Module:
    mlp = {k[len("mlp."):]: v for k, v in state.items() if k.startswith("mlp.")}
    if set(mlp) <= {"weight", "bias"}:  # nlayers=1: a single Linear
        linear = nn.Linear(mlp["weight"].shape[1], mlp["weight"].shape[0], bias="bias" in mlp)
        _load(linear, mlp, where)
        return linear
    return sequential_from_state(mlp, nn.GELU, where)


def _last_layer(state: Mapping[str, torch.Tensor], name: str, where: str) -> nn.Linear:
    weight = state.get(f"{name}.weight")
    if weight is None:
        raise CheckpointError(f"{where}: projection head has no {name}.weight (or weight_g/weight_v)")
    layer = nn.Linear(weight.shape[1], weight.shape[0], bias=False)
    _load(layer, {"weight": weight}, where)
    return layer


class DINOHead(nn.Module):
    """DINO: MLP -> L2-normalise -> last layer (weight-norm folded into one weight)."""

    def __init__(self, state: Mapping[str, torch.Tensor], where: str):
        super().__init__()
        self.mlp = _dino_mlp(state, where)
        self.last_layer = _last_layer(state, "last_layer", where)

    def forward(self, cls: torch.Tensor) -> torch.Tensor:
        return self.last_layer(F.normalize(self.mlp(cls), dim=-1, p=2))


class IBOTHead(DINOHead):
    """iBOT: the DINO head on the CLS token; ``last_layer2`` on the patch tokens (shared when shared_head)."""

    def __init__(self, state: Mapping[str, torch.Tensor], where: str):
        super().__init__(state, where)
        self.last_layer2 = _last_layer(state, "last_layer2", where) if "last_layer2.weight" in state else self.last_layer

    def forward_patches(self, patches: torch.Tensor) -> torch.Tensor:
        return self.last_layer2(F.normalize(self.mlp(patches), dim=-1, p=2))


HEADS = {"mlp": MLPProjector, "dino_head": DINOHead, "ibot_head": IBOTHead}


def build_projection(kind: str, state: Mapping[str, torch.Tensor], where: str) -> nn.Module:
    if kind not in HEADS:
        raise CheckpointError(f"{where}: unknown projection kind {kind!r} (expected one of {sorted(HEADS)})")
    return HEADS[kind](state, where).eval()
