"""partprobe's checkpoint zoo: registry (checkpoints.yaml), downloads, safe loading, converters.

Most code wants :func:`probes.encoders.load_encoder`; this package is the machinery under it:

    from probes.zoo import load, get_entry, fetch, load_checkpoint, convert, detect_format, load_model
    loaded = load("dino")                     # the one loading path: name, timm:<model> or file -> LoadedEncoder
    entry = get_entry("dino")                 # registry entry (aliases resolve)
    path, sha256 = fetch(entry)               # cached, verified download
    obj = load_checkpoint(path)               # torch.load(weights_only=True) + explicit allow-list
    state_dict, projection = convert(obj, entry.format)
    loaded = load_model(obj, entry.format, entry.arch)   # strict load into timm

Per-format knowledge (method, transform, heads, converter, projection, branches, sin-cos, detection):
``probes.zoo.formats.FORMATS``.

CLI: ``python -m probes.zoo [--registry FILE] list | info NAME | download NAME | verify NAME|FILE |
detect FILE | convert FILE``.
"""
import importlib

# Imported on first use, so that ``probes.zoo.download`` (used by the dataset downloads) does not pull
# in torch and timm.
_EXPORTS = {
    "LoadedModel": "build", "load_model": "build", "infer_arch": "build",
    "load_checkpoint": "checkpoint",
    "FORMATS": "formats", "FormatSpec": "formats", "convert": "formats", "detect_format": "formats",
    "LoadedEncoder": "loader", "load": "loader",
    "cache_path": "download", "fetch": "download", "verify_file": "download",
    "CheckpointError": "errors", "ChecksumError": "errors", "DownloadError": "errors", "OfflineError": "errors",
    "RegistryError": "errors", "UnsafeCheckpointError": "errors", "ZooError": "errors",
    "Arch": "registry", "Entry": "registry", "Transform": "registry",
    "get_entry": "registry", "load_registry": "registry",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'probes.zoo' has no attribute {name!r}")
    return getattr(importlib.import_module(f"probes.zoo.{_EXPORTS[name]}"), name)
