"""The checkpoint registry (``checkpoints.yaml``) and name resolution.

A name resolves to an :class:`Entry`: a registry name or alias, ``timm:<model>`` (timm's own pretrained
weights), or a path to a local file (then ``format`` and optionally ``arch`` come from the caller).

The registry a user reads and edits is ``checkpoints.yaml`` at the repository root. It ships inside the
package as ``probes/zoo/checkpoints.yaml`` (package data; in a checkout that path is a symlink to the
root file), so an installed copy finds it from any working directory. A user's own file adds entries:
``PARTPROBE_REGISTRY=path/to/mine.yaml`` (or ``python -m probes.zoo --registry FILE``), with the same
``models:`` layout; a name, alias or cache file name defined in both files is an error naming both.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

from probes.zoo.errors import RegistryError

REGISTRY_PATH = Path(__file__).with_name("checkpoints.yaml")
REGISTRY_ENV = "PARTPROBE_REGISTRY"

INTERPOLATIONS = ("bicubic", "bilinear")


@dataclass(frozen=True)
class Transform:
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bicubic"
    resize: int = 256
    crop: int = 224


IMAGENET = Transform((0.485, 0.456, 0.406), (0.229, 0.224, 0.225), "bicubic")


def fit_transform(transform: Transform, size: int | None) -> Transform:
    """The method's transform at another input size, keeping its resize/crop ratio (256/224 -> 73/64).

    A ViT built at another resolution takes only that size, so the crop follows it.
    """
    if size is None or size == transform.crop:
        return transform
    return dataclasses.replace(transform, crop=size, resize=round(size * transform.resize / transform.crop))


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
    from probes.zoo.formats import FORMATS  # torch is imported only once a registry is read

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
    """Entries of the shipped registry and of the user's file, each remembered with the file it came from."""

    def __init__(self, entries: dict[str, Entry], origins: dict[str, Path]):
        self.entries = entries
        self.origins = origins
        self.paths = tuple(dict.fromkeys(origins.values()))
        self.aliases: dict[str, str] = {}
        files: dict[str, str] = {}
        for entry in entries.values():
            where = f"{origins[entry.name]}, entry {entry.name!r}"
            for alias in entry.aliases:
                owner = alias if alias in entries else self.aliases.get(alias)
                if owner is not None:
                    raise RegistryError(f"{where}: alias {alias!r} is already taken by {owner!r}"
                                        f"{self._also(owner, entry.name)}")
                self.aliases[alias] = entry.name
            if entry.file:
                if entry.file in files:
                    owner = files[entry.file]
                    raise RegistryError(f"{where}, field 'file': {entry.file!r} is also the file of {owner!r}"
                                        f"{self._also(owner, entry.name)} (expected a unique cache file name)")
                files[entry.file] = entry.name

    def _also(self, owner: str, name: str) -> str:
        return f" in {self.origins[owner]}" if self.origins[owner] != self.origins[name] else ""

    @property
    def path(self) -> Path:
        """The shipped registry file."""
        return self.paths[0]

    def describe_paths(self) -> str:
        return " + ".join(str(p) for p in self.paths)

    def get(self, name: str) -> Entry:
        key = self.aliases.get(name, name)
        if key not in self.entries:
            raise RegistryError(
                f"unknown model {name!r}: not in {self.describe_paths()} (names: {', '.join(sorted(self.entries))}; "
                f"aliases: {', '.join(sorted(self.aliases))}); use 'timm:<model>' for timm weights "
                "or a path to a checkpoint file with format=..."
            )
        return self.entries[key]

    def __iter__(self):
        return iter(self.entries.values())


_CACHE: dict[tuple[str, int], dict[str, Entry]] = {}


def _read_entries(path: Path) -> dict[str, Entry]:
    key = (str(path), path.stat().st_mtime_ns)
    if key not in _CACHE:
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (yaml.YAMLError, UnicodeDecodeError) as err:
            raise RegistryError(f"{path}: not valid YAML: {err}") from None
        if not isinstance(raw, Mapping) or not isinstance(raw.get("models"), Mapping):
            raise RegistryError(f"{path}: expected a top-level 'models' mapping")
        _CACHE[key] = {str(name): parse_entry(str(name), value, str(path)) for name, value in raw["models"].items()}
    return _CACHE[key]


def user_registry_path() -> Path | None:
    value = os.environ.get(REGISTRY_ENV, "").strip()
    return Path(value).expanduser() if value else None


def load_registry(path: str | os.PathLike | None = None, user: str | os.PathLike | None = None) -> Registry:
    """The shipped registry (or ``path``) plus the user's file (``user``, default ``$PARTPROBE_REGISTRY``)."""
    base = Path(path) if path is not None else REGISTRY_PATH
    if not base.is_file():
        raise RegistryError(f"{base}: checkpoint registry not found (it ships inside the package, probes/zoo/)")
    base = base.resolve()  # in a checkout: the root checkpoints.yaml, the file to edit
    entries, origins = dict(_read_entries(base)), dict.fromkeys(_read_entries(base), base)
    user_path = Path(user).expanduser() if user is not None else user_registry_path()
    if user_path is not None:
        if not user_path.is_file():
            raise RegistryError(f"{user_path}: user registry not found (set by {REGISTRY_ENV} or --registry; "
                                "expected a YAML file with a top-level 'models' mapping)")
        user_path = user_path.resolve()
        if user_path != base:
            for name, entry in _read_entries(user_path).items():
                if name in entries:
                    raise RegistryError(f"{user_path}, entry {name!r}: also defined in {base} (a user's registry "
                                        "adds entries and never replaces shipped ones: rename yours)")
                entries[name], origins[name] = entry, user_path
    return Registry(entries, origins)


def get_entry(name: str) -> Entry:
    return load_registry().get(name)


def local_entry(path: str | os.PathLike, format: str, arch: Arch | None = None) -> Entry:
    """An entry for a user's own file. The transform defaults to the format's method."""
    from probes.zoo.formats import FORMATS

    if format not in FORMATS:
        raise RegistryError(f"{path}: unknown format {format!r} (expected one of {sorted(FORMATS)})")
    spec = FORMATS[format]
    path = Path(path).expanduser().resolve()
    return Entry(name=path.name, format=format, method=spec.method, arch=arch, transform=spec.transform,
                 file=path.name, local_path=path)
