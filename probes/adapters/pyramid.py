"""A plain ViT as a multi-scale detection backbone, in plain torch (no detectron2 needed to test it).

ViTDet (Li et al., ECCV 2022, "Exploring Plain Vision Transformer Backbones for Object Detection") keeps
the ViT as it is and builds the pyramid from its last stride-16 map alone: scale factors 4, 2, 1, 1/2
give strides 4, 8, 16, 32 (for 16 px patches), each followed by a 1x1 and a 3x3 conv with LayerNorm over
channels; an optional top block max-pools the coarsest level once more (stride 64, as FPN's P6).

    trunk = ViTFeatureMap(encoder.model, frozen=True)          # [B, 3, H, W] -> [B, D, H/16, W/16]
    pyramid = SimpleFeaturePyramid(encoder.embed_dim, encoder.patch_size, out_channels=256)
    features = pyramid(trunk(images))                           # {"p2": ..., "p3": ..., "p6": ...}

Level names follow detectron2's FPN: ``p<k>`` has stride 2**k.
"""
from __future__ import annotations

import contextlib
import math
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

SCALE_FACTORS = (4.0, 2.0, 1.0, 0.5)


def pyramid_levels(patch_size: int, scale_factors=SCALE_FACTORS, top_block: bool = True) -> dict[str, int]:
    """Level name -> stride, finest first, for a ViT with ``patch_size`` px patches."""
    strides = []
    for scale in scale_factors:
        stride = patch_size / scale
        if stride != int(stride) or int(stride) < 1 or int(stride) & (int(stride) - 1):
            raise ValueError(f"scale factor {scale} on {patch_size} px patches gives stride {stride}; the pyramid "
                             f"needs power-of-two strides (patch sizes 8, 16, 32 with scales 4, 2, 1, 0.5)")
        strides.append(int(stride))
    if any(b != 2 * a for a, b in zip(strides, strides[1:])):
        raise ValueError(f"scale factors {tuple(scale_factors)} give strides {strides}; each level must halve "
                         f"the resolution of the one before (e.g. 4, 2, 1, 0.5)")
    if top_block:
        strides.append(2 * strides[-1])
    return OrderedDict((f"p{int(math.log2(s))}", s) for s in strides)


class ChannelLayerNorm(nn.Module):
    """LayerNorm over the channels of an NCHW map (ViTDet's "LN"; ConvNeXt's channels_first LayerNorm)."""

    def __init__(self, channels: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.layer_norm(x.permute(0, 2, 3, 1), self.weight.shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


def _norm(norm: str, channels: int) -> nn.Module:
    if norm == "LN":
        return ChannelLayerNorm(channels)
    if norm == "":
        return nn.Identity()
    raise ValueError(f"pyramid norm must be 'LN' (ViTDet) or '' (none), got {norm!r}")


class SimpleFeaturePyramid(nn.Module):
    """One stride-``patch_size`` map of ``in_channels`` -> ``out_channels`` maps at every pyramid level."""

    def __init__(self, in_channels: int, patch_size: int, out_channels: int = 256, scale_factors=SCALE_FACTORS,
                 top_block: bool = True, norm: str = "LN"):
        super().__init__()
        if 4.0 in scale_factors and in_channels % 4:
            raise ValueError(f"scale factor 4 halves the channels twice: in_channels {in_channels} must divide by 4")
        self.levels = pyramid_levels(patch_size, scale_factors, top_block)
        self.out_channels = out_channels
        self.top_block = top_block
        self.stages = nn.ModuleList()
        for scale in scale_factors:
            if scale == 4.0:
                dim = in_channels // 4
                resample = [nn.ConvTranspose2d(in_channels, in_channels // 2, 2, stride=2),
                            _norm("LN", in_channels // 2), nn.GELU(),
                            nn.ConvTranspose2d(in_channels // 2, dim, 2, stride=2)]
            elif scale == 2.0:
                dim = in_channels // 2
                resample = [nn.ConvTranspose2d(in_channels, dim, 2, stride=2)]
            elif scale == 1.0:
                dim, resample = in_channels, []
            elif scale == 0.5:
                dim, resample = in_channels, [nn.MaxPool2d(2, stride=2)]
            else:
                raise ValueError(f"scale factor {scale} is not one of ViTDet's 4, 2, 1, 0.5")
            bias = norm == ""  # a norm right after the conv makes its bias redundant
            self.stages.append(nn.Sequential(
                *resample,
                nn.Conv2d(dim, out_channels, 1, bias=bias), _norm(norm, out_channels),
                nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=bias), _norm(norm, out_channels)))
        for module in self.modules():
            if isinstance(module, nn.Conv2d):  # detectron2's c2_xavier_fill, the init of its FPN convs
                nn.init.kaiming_uniform_(module.weight, a=1)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def output_shapes(self) -> dict[str, tuple[int, int]]:
        """Level name -> (channels, stride)."""
        return OrderedDict((name, (self.out_channels, stride)) for name, stride in self.levels.items())

    def forward(self, feature_map: torch.Tensor) -> dict[str, torch.Tensor]:
        names = list(self.levels)
        out = OrderedDict((name, stage(feature_map)) for name, stage in zip(names, self.stages))
        if self.top_block:  # FPN's P6: subsample the coarsest level (kernel 1, stride 2)
            out[names[-1]] = F.max_pool2d(out[names[-2]], kernel_size=1, stride=2)
        return out


class ViTFeatureMap(nn.Module):
    """A timm ViT (or BEiT) as one NCHW map: the output of block ``block`` (default the last), before the final
    norm, as ViTDet reads it. Window or global attention stays as the model has it.

    ``frozen``: no gradients and eval mode whatever ``train()`` says (drop path off), so a frozen-backbone
    run measures the pretrained features. Otherwise the whole ViT trains (fine-tuning).
    """

    def __init__(self, vit: nn.Module, block: int | None = None, frozen: bool = True):
        super().__init__()
        self.model = vit
        self.block = len(vit.blocks) - 1 if block is None else int(block)
        if not 0 <= self.block < len(vit.blocks):
            raise ValueError(f"block must be in 0..{len(vit.blocks) - 1}, got {block}")
        self.frozen = frozen
        self.model.requires_grad_(not frozen)
        self.train(False)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.frozen:
            self.model.eval()
        return self

    @property
    def image_size(self) -> tuple[int, int] | None:
        """The input size the ViT takes, or None when it resizes its position table per input."""
        embed = self.model.patch_embed
        return None if getattr(embed, "dynamic_img_size", False) else tuple(embed.img_size)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        size = self.image_size
        if size is not None and tuple(images.shape[-2:]) != size:
            raise ValueError(f"the ViT was built for {size[0]}x{size[1]} inputs, got {tuple(images.shape[-2:])}: "
                             f"pad every image to that square (padding_constraints square_size) or build the "
                             f"encoder with img_size equal to the padded size")
        with torch.no_grad() if self.frozen else contextlib.nullcontext():
            (out,) = self.model.forward_intermediates(images, indices=[self.block], norm=False, output_fmt="NCHW",
                                                      intermediates_only=True)
        return out


def vit_layer_id(name: str, num_blocks: int, trunk_prefix: str) -> int:
    """Layer index for layer-wise lr decay (BEiT/MAE/ViTDet): 0 for the embeddings, i + 1 for block i,
    num_blocks + 1 for everything outside the ViT (pyramid, heads)."""
    if not name.startswith(trunk_prefix):
        return num_blocks + 1
    rest = name[len(trunk_prefix):]
    if rest.startswith("blocks."):
        return int(rest.split(".")[1]) + 1
    if rest.startswith(("patch_embed", "cls_token", "pos_embed", "reg_token", "rel_pos")):
        return 0
    return num_blocks + 1  # final norm and anything after the blocks


def layer_decay_factor(name: str, num_blocks: int, rate: float, trunk_prefix: str) -> float:
    """The lr multiplier of parameter ``name``: rate ** (num_blocks + 1 - layer id)."""
    return rate ** (num_blocks + 1 - vit_layer_id(name, num_blocks, trunk_prefix))
