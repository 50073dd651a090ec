"""Fake checkpoints with the exact layout of a released file, built from its manifest.

The shared golden set describes every released file in ``golden/manifests/<file>.json`` (top-level
container, every tensor key and full-size shape). ``fake_checkpoint`` rebuilds that object either on
the meta device (shapes only, no memory: enough to prove a layout converts and loads strictly) or
filled by the recipe of ``golden/README.md`` section 7 (real values, to compare outputs).
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any, Callable, Mapping

import torch

from probes.zoo.errors import CheckpointError

PLAIN = "<file>"


def read_manifest(path: str | Path) -> dict:
    path = Path(path)
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{path}: cannot read manifest ({err})") from None
    if not isinstance(manifest.get("tensors"), Mapping) or not isinstance(manifest.get("container"), Mapping):
        raise CheckpointError(f"{path}: expected 'tensors' and 'container' fields")
    manifest["_path"] = str(path)
    return manifest


def tensor_groups(manifest: Mapping) -> dict[str, Mapping]:
    """Container key -> {'shapes': {key: shape}, 'non_float32': {key: dtype}} (groups without shapes skipped)."""
    return {name.split(" ")[0]: group for name, group in manifest["tensors"].items()
            if isinstance(group, Mapping) and isinstance(group.get("shapes"), Mapping)}


def _recipe_value(key: str, shape: list[int], dtype: str | None, g: torch.Generator) -> torch.Tensor:
    """golden/README.md section 7, step 2 (rules in that order)."""
    if dtype == "int64":
        return torch.full(shape, 1000, dtype=torch.int64)
    if key.endswith("running_var"):
        return torch.rand(shape, generator=g) + 0.5
    if key.endswith("running_mean"):
        return 0.1 * torch.randn(shape, generator=g)
    if len(shape) >= 2:
        return torch.randn(shape, generator=g) / math.sqrt(math.prod(shape[1:]))
    if key.endswith(".weight") or key.endswith("weight_g"):
        return 1 + 0.1 * torch.randn(shape, generator=g)
    return 0.1 * torch.randn(shape, generator=g)


def fake_state_dict(group: Mapping, fill: str = "meta", generator: torch.Generator | None = None,
                    recipe_only: Callable[[str], bool] | None = None) -> dict[str, torch.Tensor]:
    dtypes = group.get("non_float32") if isinstance(group.get("non_float32"), Mapping) else {}
    out = {}
    for key in sorted(group["shapes"]):
        shape = list(group["shapes"][key])
        dtype = getattr(torch, dtypes.get(key) or "float32")
        if fill == "meta":
            out[key] = torch.empty(shape, dtype=dtype, device="meta")
        elif fill == "recipe" and recipe_only is not None and not recipe_only(key):
            out[key] = torch.zeros(shape, dtype=dtype)
        elif fill == "recipe":
            out[key] = _recipe_value(key, shape, dtypes.get(key), generator)
        else:
            raise ValueError(f"fill must be 'meta' or 'recipe', got {fill!r}")
    return out


def _placeholder(kind: str, spec: Mapping) -> Any:
    if kind.startswith("argparse.Namespace"):
        return argparse.Namespace(**dict(spec.get("attributes_with_parser_defaults_or_documented_flags") or {}))
    if kind.startswith("int"):
        return 100
    if kind.startswith("str"):
        return "resnet50" if "resnet50" in kind else "vit"
    if kind.startswith("dict"):
        return {"state": {}, "param_groups": []} if "keys" in spec and "param_groups" in spec["keys"] else {}
    return None


def fake_checkpoint(manifest: Mapping, fill: str = "meta", seed: int = 0,
                    recipe_only: Callable[[str, str], bool] | None = None) -> Any:
    """The object ``torch.load`` would return for the released file, with fake tensors.

    ``fill="recipe"`` fills every tensor by the README recipe, or only those where
    ``recipe_only(container_key, tensor_key)`` holds: the others are zeros, which is cheap for branches
    a test does not compare (an EMA copy, a 65536-wide head).
    """
    container = manifest["container"]
    if "paddle" in str(container.get("type", "")).lower():
        raise CheckpointError(f"{manifest.get('_path', 'manifest')}: Paddle pickles are not torch checkpoints")
    generator = torch.Generator().manual_seed(seed) if fill == "recipe" else None
    groups = {name: fake_state_dict(group, fill, generator,
                                    None if recipe_only is None else (lambda key, name=name: recipe_only(name, key)))
              for name, group in tensor_groups(manifest).items()}
    if PLAIN in groups:
        return groups[PLAIN]
    obj: dict[str, Any] = {}
    for key, spec in (container.get("top_level") or {}).items():
        if key in groups:
            obj[key] = groups[key]
        else:
            obj[key] = _placeholder(str(spec.get("type", "")) if isinstance(spec, Mapping) else "", spec or {})
    return obj
