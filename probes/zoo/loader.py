"""One loading path: a registry name or alias, ``timm:<model>`` or a file path -> one :class:`LoadedEncoder`.

    loaded = load("dino")                                          # registry (downloaded, hash-checked)
    loaded = load("timm:vit_small_patch16_224.dino")               # timm's weights (cache first)
    loaded = load("ckpt.pth", format="mocov3")                     # a file; arch inferred from the tensors
    loaded = load("ckpt.pth", arch={"kwargs": {"num_heads": 8}})   # ... with what the tensors leave open
    loaded = load("model.safetensors", format="timm")              # a `convert` output (+ projection sidecar)

The result holds the model and projection head (CPU, eval mode), the architecture, the eval transform
and the provenance (name, method, format, source, checkpoint_sha256, branch). Registry entries of
``format: baseline`` come back with ``model=None`` and ``format="baseline"``: ``probes.encoders.load_encoder``
builds them with ``probes.baselines.build_baseline``.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from torch import nn

from probes.zoo.build import LoadedModel, check_input_size, load_model
from probes.zoo.checkpoint import load_checkpoint, metadata_json, safetensors_metadata
from probes.zoo.download import fetch, file_hashes
from probes.zoo.errors import CheckpointError, RegistryError
from probes.zoo.formats import FORMATS, detect_format, format_spec
from probes.zoo.registry import (BASELINE_FORMAT, Arch, Entry, Transform, fit_transform, get_entry, local_entry,
                                 parse_arch)
from probes.zoo.timm_hub import load_timm

CHECKPOINT_SUFFIXES = (".pth", ".pt", ".tar", ".bin", ".safetensors")
# Metadata `convert` writes into its .safetensors output (read back by `load(file, format="timm")`).
CONVERTED_MARK = "partprobe-convert"


@dataclass
class LoadedEncoder:
    model: nn.Module | None  # None for a baseline
    projection: nn.Module | None
    arch: Arch | None
    transform: Transform | None
    name: str
    method: str
    format: str
    source: str
    checkpoint_sha256: str
    branch: str | None = None  # teacher or student of a full training checkpoint; None for one network

    @property
    def is_baseline(self) -> bool:
        return self.format == BASELINE_FORMAT


def load(name: str | os.PathLike, format: str | None = None, arch: Any = None, offline: bool | None = None,
         transform: Transform | None = None, branch: str = "teacher", input_size: int | None = None) -> LoadedEncoder:
    """Load ``name`` on the CPU (see the module docstring). ``arch``: a timm model name,
    ``{"model": name, "kwargs": {...}}``, or ``{"kwargs": {...}}`` laid over the registry's / the inferred
    architecture. ``input_size``: build at that square size (position tables rebuilt by each method's rule)."""
    name = os.fspath(name)
    if name.startswith("timm:"):
        return _load_timm(name[len("timm:"):], format, arch, offline, transform, input_size)
    path = Path(name).expanduser()
    if path.is_file():
        return _load_file(path, format, arch, transform, branch, input_size)
    if os.sep in name or name.endswith(CHECKPOINT_SUFFIXES):
        raise CheckpointError(f"{path}: no such checkpoint file")
    return _load_entry(get_entry(name), format, arch, offline, transform, branch, input_size)


# ------------------------------------------------------------------------------------------ registry
def _load_entry(entry: Entry, format, arch, offline, transform, branch, input_size) -> LoadedEncoder:
    if entry.format == BASELINE_FORMAT:
        return LoadedEncoder(None, None, None, None, name=entry.name, method=entry.method, format=BASELINE_FORMAT,
                             source="probes.baselines", checkpoint_sha256="")
    if format is not None and format != entry.format:
        raise RegistryError(f"{entry.name}: registry format is {entry.format!r}; format={format!r} contradicts it")
    path, sha256 = fetch(entry, offline=offline)
    loaded = load_model(load_checkpoint(path), entry.format, override_arch(entry.arch, arch, entry.name),
                        where=str(path), branch=branch, input_size=input_size)
    return _result(loaded, entry.format, entry.format, entry.transform, transform, input_size, str(path),
                   name=entry.name, source=entry.source, sha256=sha256, branch=branch)


def check_layout(entry: Entry, path: Path) -> LoadedModel:
    """Prove that a registry file converts and loads strictly into its declared architecture, on the meta
    device (nothing is allocated). Run before a first-use hash is trusted."""
    return load_model(load_checkpoint(path), entry.format, entry.arch, where=str(path), device="meta")


def override_arch(base: Arch, arch: Any, where: str) -> Arch:
    """Registry arch with the caller's kwargs on top (e.g. ``{"kwargs": {"img_size": 448}}``)."""
    if arch is None:
        return base
    if isinstance(arch, str):
        return Arch(arch, dict(base.kwargs))
    if isinstance(arch, Mapping) and set(arch) <= {"model", "kwargs"}:
        return Arch(arch.get("model", base.model), {**base.kwargs, **dict(arch.get("kwargs") or {})})
    return parse_arch(arch, where)


# ------------------------------------------------------------------------------------------ files
def split_arch(arch: Any, where: str) -> tuple[Arch | None, dict]:
    """A caller's arch for a file: (a full architecture or None, kwargs to lay over it or over the inferred one)."""
    if arch is None:
        return None, {}
    if isinstance(arch, Mapping) and "model" not in arch and set(arch) <= {"kwargs"}:
        kwargs = arch.get("kwargs") or {}
        if not isinstance(kwargs, Mapping):
            raise RegistryError(f"{where}, field 'arch.kwargs': got {kwargs!r} (expected a mapping of timm.create_model kwargs)")
        return None, dict(kwargs)
    return parse_arch(arch, where), {}


def converted_info(path: Path) -> dict | None:
    """What `convert` recorded in a .safetensors it wrote: source format, arch, forced heads, projection kind."""
    meta = safetensors_metadata(path)
    if meta.get(CONVERTED_MARK) is None:
        return None
    source_format = meta.get("source_format")
    if source_format not in FORMATS:
        raise CheckpointError(f"{path}: metadata field 'source_format' is {source_format!r} "
                              f"(expected one of {sorted(FORMATS)})")
    arch = metadata_json(meta, "arch", path)
    return {"source_format": source_format, "arch": parse_arch(arch, f"{path} (metadata)") if arch else None,
            "force_heads": meta.get("force_heads") == "true", "source": meta.get("source")}


def projection_sidecar(path: Path) -> Path:
    """``model.safetensors`` -> ``model.projection.safetensors`` (the head `convert` writes beside the model)."""
    return path.with_name(path.name[: -len(".safetensors")] + ".projection.safetensors")


def _load_file(path: Path, format, arch, transform, branch, input_size) -> LoadedEncoder:
    obj = load_checkpoint(path)
    converted = converted_info(path) if path.name.endswith(".safetensors") else None
    fmt = format or ("timm" if converted else detect_format(obj, where=str(path)))
    format_spec(fmt, str(path))
    base, overrides = split_arch(arch, str(path))
    rules, force_heads, head_state = fmt, False, None
    if fmt == "timm" and converted:  # the method's rules of the file it was converted from
        rules, force_heads = converted["source_format"], converted["force_heads"]
        base = base or converted["arch"]
        sidecar = projection_sidecar(path)
        if sidecar.is_file():
            head_state = load_checkpoint(sidecar)
    loaded = load_model(obj, fmt, base, where=str(path), branch=branch, overrides=overrides,
                        force_heads=force_heads, rules=rules, input_size=input_size, head_state=head_state)
    entry = local_entry(path, fmt)
    return _result(loaded, fmt, rules, FORMATS[rules].transform, transform, input_size, str(path),
                   name=entry.name, source=str(entry.local_path), sha256=file_hashes(path)[0], branch=branch)


# ------------------------------------------------------------------------------------------ timm
def _load_timm(model_name, format, arch, offline, transform, input_size) -> LoadedEncoder:
    if format not in (None, "timm") or arch is not None:
        raise RegistryError(f"timm:{model_name}: timm's pretrained models take neither format= nor arch= "
                            "(the tag names both); use input_size= for another resolution")
    weights = load_timm(model_name, offline=offline, input_size=input_size)
    return LoadedEncoder(weights.model.eval(), None, weights.arch,
                         _given_transform(transform, input_size, f"timm:{model_name}") or weights.transform,
                         name=f"timm:{model_name}", method="timm", format="timm", source=weights.source,
                         checkpoint_sha256=weights.checkpoint_sha256)


# ------------------------------------------------------------------------------------------ shared
def _built_size(arch: Arch) -> int | None:
    size = arch.kwargs.get("img_size")
    if isinstance(size, (tuple, list)) and len(set(size)) == 1:
        size = size[0]
    return size if isinstance(size, int) else None


def _given_transform(transform: Transform | None, input_size: int | None, where: str) -> Transform | None:
    if transform is not None and input_size is not None and transform.crop != input_size:
        raise CheckpointError(f"{where}: transform crop {transform.crop} contradicts input_size={input_size} "
                              "(the model takes input_size x input_size images); give one of them")
    return transform


def _result(loaded: LoadedModel, fmt: str, rules: str, method_transform: Transform, transform, input_size, where,
            *, name: str, source: str, sha256: str, branch: str) -> LoadedEncoder:
    transform = _given_transform(transform, input_size, where) or fit_transform(
        method_transform, input_size or _built_size(loaded.arch))
    return LoadedEncoder(loaded.model, loaded.projection, loaded.arch, transform, name=name,
                         method=FORMATS[rules].method, format=fmt, source=source, checkpoint_sha256=sha256,
                         branch=branch if FORMATS[fmt].branched else None)


def fit_baseline(encoder: Any, input_size: int | None) -> Any:
    """A baseline encoder at ``input_size``: its crop is the size, its resize keeps the 256/224 ratio."""
    if input_size is None:
        return encoder
    check_input_size(input_size, getattr(encoder, "patch_size", None), getattr(encoder, "name", "baseline"))
    fitted = fit_transform(Transform(tuple(encoder.mean), tuple(encoder.std), encoder.interpolation,
                                     encoder.resize, encoder.crop_size), input_size)
    encoder.crop_size, encoder.resize = fitted.crop, fitted.resize
    return encoder


def converted_metadata(source_format: str, arch: Arch, source: str, force_heads: bool) -> dict[str, str]:
    """The metadata `convert` stores, read back by :func:`converted_info`."""
    meta = {CONVERTED_MARK: "1", "format": "timm", "source_format": source_format,
            "arch": json.dumps({"model": arch.model, "kwargs": dict(arch.kwargs)}), "source": source}
    if force_heads:
        meta["force_heads"] = "true"
    return meta

