"""ResNet-50 weights in the torchvision layout (timm's ResNet uses the same names) renamed to detectron2's.

detectron2's own converter (tools/convert-torchvision-to-d2.py) renames ``conv1 / bn1`` to the stem,
``layerN`` to ``res(N+1)``, ``bnK`` to ``convK.norm`` and ``downsample.0 / .1`` to ``shortcut(.norm)``;
the classifier ``fc`` has no place in a detector. This module does the same renaming, by whole names
rather than by suffix matching (which misses most keys when detectron2 is given torchvision names), and
refuses any key it does not know. torchvision puts the stride in the 3x3 conv, so detectron2 must be built with
``stride_in_1x1=False``; its input is RGB in 0-255 with the ImageNet mean and std times 255.
"""
from __future__ import annotations

import re
from typing import Mapping

import torch

_STEM = re.compile(r"(conv1|bn1)\.(weight|bias|running_mean|running_var)")
_BLOCK = re.compile(r"layer([1-4])\.(\d+)\.(conv[1-3]|bn[1-3]|downsample\.0|downsample\.1)\."
                    r"(weight|bias|running_mean|running_var)")
_PARTS = {"conv1": "conv1", "conv2": "conv2", "conv3": "conv3", "bn1": "conv1.norm", "bn2": "conv2.norm",
          "bn3": "conv3.norm", "downsample.0": "shortcut", "downsample.1": "shortcut.norm"}


def detectron2_name(name: str, where: str = "ResNet weights") -> str | None:
    """The detectron2 name of one torchvision ResNet parameter; None for what a detector drops
    (the classifier, BatchNorm's batch counters)."""
    if name.startswith("fc.") or name.endswith(".num_batches_tracked"):
        return None
    stem = _STEM.fullmatch(name)
    if stem:
        layer, kind = stem.groups()
        return f"stem.conv1.{kind}" if layer == "conv1" else f"stem.conv1.norm.{kind}"
    block = _BLOCK.fullmatch(name)
    if block:
        stage, index, part, kind = block.groups()
        return f"res{int(stage) + 1}.{index}.{_PARTS[part]}.{kind}"
    raise ValueError(f"{where}: {name!r} is not a torchvision-layout ResNet parameter (expected conv1, bn1, "
                     f"layer1..4.<i>.conv/bn/downsample, fc)")


def resnet_to_detectron2(state_dict: Mapping[str, torch.Tensor], where: str = "ResNet weights") -> dict[str, torch.Tensor]:
    """torchvision/timm ResNet state dict -> detectron2 ResNet state dict (``stem.*``, ``res2.*`` .. ``res5.*``)."""
    out = {}
    for name, tensor in state_dict.items():
        target = detectron2_name(name, where)
        if target is not None:
            out[target] = tensor
    if "stem.conv1.weight" not in out:
        raise ValueError(f"{where}: no conv1.weight, so this is not a torchvision-layout ResNet")
    return out


def split_c4(weights: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(stem + res2..res4 for the C4 backbone, res5 for the ROI head) of detectron2 ResNet weights.

    In a C4 Mask R-CNN the last stage runs per region inside the ROI heads (``roi_heads.res5``); its keys
    are returned without the ``res5.`` prefix, ready for ``roi_heads.res5.load_state_dict``.
    """
    backbone = {k: v for k, v in weights.items() if not k.startswith("res5.")}
    head = {k[len("res5."):]: v for k, v in weights.items() if k.startswith("res5.")}
    return backbone, head
