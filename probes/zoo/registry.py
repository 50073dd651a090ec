"""The checkpoint registry (``checkpoints.yaml`` at the repository root) and name resolution.

A name resolves to an :class:`Entry`: a registry name or alias, ``timm:<model>`` (timm's own pretrained
weights), or a path to a local file (then ``format`` and optionally ``arch`` come from the caller).
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

from probes.zoo.errors import RegistryError

REGISTRY_PATH = Path(__file__).resolve().parents[2] / "checkpoints.yaml"

INTERPOLATIONS = ("bicubic", "bilinear")


@dataclass(frozen=True)
class Transform:
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bicubic"
    resize: int = 256
    crop: int = 224


IMAGENET = Transform((0.485, 0.456, 0.406), (0.229, 0.224, 0.225), "bicubic")


STANDARD_HEADS = {192: 3, 384: 6, 768: 12, 1024: 16}  # head_dim 64
TWELVE_HEAD_SMALL = {384: 12, 768: 12, 1024: 16}  # MoCo v3 and CAE: ViT-S has 12 heads (head_dim 32)


@dataclass(frozen=True)
class FormatSpec:
    method: str
    transform: Transform = IMAGENET
    # Heads per embed_dim. Shapes cannot tell heads apart, so the method decides (checkpoints.md section 7).
    heads: Mapping[int, int] = field(default_factory=lambda: STANDARD_HEADS)
    sincos: bool = False  # the file stores a fixed sin-cos pos-embed (regenerate it, never resample it)


_BILINEAR = dataclasses.replace(IMAGENET, interpolation="bilinear")

FORMATS: dict[str, FormatSpec] = {
    "deit": FormatSpec("DeiT"),
    "mocov3": FormatSpec("MoCo v3", _BILINEAR, heads=TWELVE_HEAD_SMALL, sincos=True),
    "dino": FormatSpec("DINO"),
    "dino_full": FormatSpec("DINO"),
    "ibot": FormatSpec("iBOT"),
    "ibot_full": FormatSpec("iBOT"),
    "beit": FormatSpec("BEiT", Transform((0.5, 0.5, 0.5), (0.5, 0.5, 0.5), "bicubic")),
    "mae": FormatSpec("MAE", sincos=True),
    "cae": FormatSpec("CAE", heads=TWELVE_HEAD_SMALL, sincos=True),
    "mec": FormatSpec("MEC", _BILINEAR),
    "carp": FormatSpec("CARP"),
    "timm": FormatSpec("timm"),
    "torchvision": FormatSpec("torchvision", _BILINEAR),
}
BASELINE_FORMAT = "baseline"


@dataclass(frozen=True)
class Arch:
    model: str
    kwargs: Mapping[str, Any] = field(default_factory=dict)

    def describe(self) -> str:
        if not self.kwargs:
            return self.model
        return f"{self.model}({', '.join(f'{k}={v!r}' for k, v in self.kwargs.items())})"


@dataclass(frozen=True)
class Entry:
    name: str
    format: str
    method: str
    arch: Arch | None = None
    transform: Transform | None = None
    file: str | None = None
    urls: tuple[str, ...] = ()
    gdrive_id: str | None = None
    gdrive_folder: str | None = None
    sha256: str | None = None
    sha256_prefix: str | None = None
    md5_prefix: str | None = None
    projection: Mapping[str, Any] | None = None
    aliases: tuple[str, ...] = ()
    meta: Mapping[str, Any] = field(default_factory=dict)  # paper, data, epochs, notes, supervised
    local_path: Path | None = None  # set for a user's own file instead of a registry download

    @property
    def source(self) -> str:
        if self.local_path is not None:
            return str(self.local_path)
        if self.format == "timm_pretrained":
            return self.name
        if self.urls:
            return self.urls[0]
        if self.gdrive_id:
            return gdrive_file_url(self.gdrive_id)
        if self.gdrive_folder:
            return gdrive_folder_url(self.gdrive_folder)
        return f"registry:{self.name}"

    @property
    def downloadable(self) -> bool:
        return bool(self.urls or self.gdrive_id)


def gdrive_file_url(file_id: str) -> str:
    return f"https://drive.google.com/file/d/{file_id}/view"


def gdrive_folder_url(folder_id: str) -> str:
    return f"https://drive.google.com/drive/folders/{folder_id}"


# ----------------------------------------------------------------------------------------- parsing
def _field_error(where: str, key: str, problem: str, expected: str) -> RegistryError:
    return RegistryError(f"{where}, field {key!r}: {problem} (expected {expected})")


def parse_arch(value: Any, where: str) -> Arch:
    """``"vit_small_patch16_224"`` or ``{"model": name, "kwargs": {...}}``."""
    if isinstance(value, Arch):
        return value
    if isinstance(value, str) and value:
        return Arch(value, {})
    if isinstance(value, Mapping):
        unknown = set(value) - {"model", "kwargs"}
        if unknown or not isinstance(value.get("model"), str):
            raise _field_error(where, "arch", f"got {dict(value)!r}",
                               "a timm model name, or {'model': name, 'kwargs': {...}}")
        kwargs = value.get("kwargs") or {}
        if not isinstance(kwargs, Mapping):
            raise _field_error(where, "arch.kwargs", f"got {kwargs!r}", "a mapping of timm.create_model kwargs")
        return Arch(value["model"], dict(kwargs))
    raise _field_error(where, "arch", f"got {value!r}", "a timm model name, or {'model': name, 'kwargs': {...}}")


def parse_transform(value: Any, where: str) -> Transform:
    if not isinstance(value, Mapping):
        raise _field_error(where, "transform", f"got {value!r}", "a mapping with mean, std, interpolation, resize, crop")
    for key in ("mean", "std"):
        v = value.get(key)
        if not (isinstance(v, (list, tuple)) and len(v) == 3 and all(isinstance(x, (int, float)) for x in v)):
            raise _field_error(where, f"transform.{key}", f"got {v!r}", "three numbers")
    if value.get("interpolation") not in INTERPOLATIONS:
        raise _field_error(where, "transform.interpolation", f"got {value.get('interpolation')!r}",
                           " or ".join(INTERPOLATIONS))
    for key in ("resize", "crop"):
        if not isinstance(value.get(key), int) or value[key] <= 0:
            raise _field_error(where, f"transform.{key}", f"got {value.get(key)!r}", "a positive int")
    return Transform(tuple(value["mean"]), tuple(value["std"]), value["interpolation"], value["resize"], value["crop"])


_ENTRY_KEYS = {
    "aliases", "method", "paper", "data", "epochs", "supervised", "notes", "file", "urls", "gdrive_id",
    "gdrive_folder", "sha256", "sha256_prefix", "md5_prefix", "format", "arch", "transform", "projection",
}
_META_KEYS = ("paper", "data", "epochs", "supervised", "notes")


def parse_entry(name: str, raw: Any, where: str) -> Entry:
    where = f"{where}, entry {name!r}"
    if not isinstance(raw, Mapping):
        raise RegistryError(f"{where}: got {raw!r} (expected a mapping of fields)")
    unknown = sorted(set(raw) - _ENTRY_KEYS)
    if unknown:
        raise RegistryError(f"{where}: unknown field(s) {unknown} (expected some of {sorted(_ENTRY_KEYS)})")
    fmt = raw.get("format")
    if fmt == BASELINE_FORMAT:
        return Entry(name=name, format=fmt, method=str(raw.get("method", "baseline")),
                     aliases=tuple(raw.get("aliases") or ()), meta={k: raw[k] for k in _META_KEYS if k in raw})
    if fmt not in FORMATS:
        raise _field_error(where, "format", f"got {fmt!r}", f"one of {sorted(FORMATS)} or {BASELINE_FORMAT!r}")
    for key in ("method", "file"):
        if not isinstance(raw.get(key), str) or not raw[key]:
            raise _field_error(where, key, f"got {raw.get(key)!r}", "a non-empty string")
    urls = raw.get("urls") or []
    if not isinstance(urls, list) or not all(isinstance(u, str) and u.startswith(("http://", "https://")) for u in urls):
        raise _field_error(where, "urls", f"got {urls!r}", "a list of http(s) URLs")
    if not (urls or raw.get("gdrive_id") or raw.get("gdrive_folder")):
        raise _field_error(where, "urls", "no source given", "urls, gdrive_id or gdrive_folder")
    sha256 = raw.get("sha256")
    if sha256 is not None and not _is_hex(sha256, 64):
        raise _field_error(where, "sha256", f"got {sha256!r}", "64 hex digits")
    for key in ("sha256_prefix", "md5_prefix"):
        if raw.get(key) is not None and not _is_hex(raw[key]):
            raise _field_error(where, key, f"got {raw[key]!r}", "hex digits")
    arch = parse_arch(raw.get("arch"), where)
    if not arch.model.startswith("resnet") and not isinstance(arch.kwargs.get("num_heads"), int):
        raise _field_error(where, "arch.kwargs.num_heads", f"got {arch.kwargs.get('num_heads')!r}",
                           "an int: heads cannot be read from tensor shapes, so every ViT entry states them")
    return Entry(
        name=name, format=fmt, method=raw["method"], arch=arch,
        transform=parse_transform(raw.get("transform"), where), file=raw["file"], urls=tuple(urls),
        gdrive_id=raw.get("gdrive_id"), gdrive_folder=raw.get("gdrive_folder"),
        sha256=sha256.lower() if sha256 else None,
        sha256_prefix=str(raw["sha256_prefix"]).lower() if raw.get("sha256_prefix") else None,
        md5_prefix=str(raw["md5_prefix"]).lower() if raw.get("md5_prefix") else None,
        projection=raw.get("projection"), aliases=tuple(raw.get("aliases") or ()),
        meta={k: raw[k] for k in _META_KEYS if k in raw},
    )


def _is_hex(value: Any, length: int | None = None) -> bool:
    text = str(value)
    ok = bool(text) and all(c in "0123456789abcdefABCDEF" for c in text)
    return ok and (length is None or len(text) == length)


class Registry:
    def __init__(self, entries: dict[str, Entry], path: Path):
        self.entries = entries
        self.path = path
        self.aliases: dict[str, str] = {}
        files: dict[str, str] = {}
        for entry in entries.values():
            for alias in entry.aliases:
                if alias in entries or alias in self.aliases:
                    raise RegistryError(f"{path}, entry {entry.name!r}: alias {alias!r} is already taken")
                self.aliases[alias] = entry.name
            if entry.file:
                if entry.file in files:
                    raise RegistryError(f"{path}, entry {entry.name!r}, field 'file': {entry.file!r} is also "
                                        f"the file of {files[entry.file]!r} (expected a unique cache file name)")
                files[entry.file] = entry.name

    def get(self, name: str) -> Entry:
        key = self.aliases.get(name, name)
        if key not in self.entries:
            raise RegistryError(
                f"unknown model {name!r}: not in {self.path} (names: {', '.join(sorted(self.entries))}; "
                f"aliases: {', '.join(sorted(self.aliases))}); use 'timm:<model>' for timm weights "
                "or a path to a checkpoint file with format=..."
            )
        return self.entries[key]

    def __iter__(self):
        return iter(self.entries.values())


_CACHE: dict[tuple[str, int], Registry] = {}


def load_registry(path: str | os.PathLike | None = None) -> Registry:
    path = Path(path) if path is not None else REGISTRY_PATH
    if not path.is_file():
        raise RegistryError(f"{path}: checkpoint registry not found (it ships at the repository root)")
    key = (str(path), path.stat().st_mtime_ns)
    if key not in _CACHE:
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as err:
            raise RegistryError(f"{path}: not valid YAML: {err}") from None
        if not isinstance(raw, Mapping) or not isinstance(raw.get("models"), Mapping):
            raise RegistryError(f"{path}: expected a top-level 'models' mapping")
        entries = {name: parse_entry(name, value, str(path)) for name, value in raw["models"].items()}
        _CACHE[key] = Registry(entries, path)
    return _CACHE[key]


def get_entry(name: str) -> Entry:
    return load_registry().get(name)


def local_entry(path: str | os.PathLike, format: str, arch: Arch | None = None) -> Entry:
    """An entry for a user's own file. The transform defaults to the format's method."""
    if format not in FORMATS:
        raise RegistryError(f"{path}: unknown format {format!r} (expected one of {sorted(FORMATS)})")
    spec = FORMATS[format]
    path = Path(path).expanduser().resolve()
    return Entry(name=path.name, format=format, method=spec.method, arch=arch, transform=spec.transform,
                 file=path.name, local_path=path)
