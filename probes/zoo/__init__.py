"""partprobe's checkpoint zoo: registry (checkpoints.yaml), downloads, safe loading, converters.

Most code wants :func:`probes.encoders.load_encoder`; this package is the machinery under it:

    from probes.zoo import get_entry, fetch, load_checkpoint, convert, detect_format, load_model
    entry = get_entry("dino")                 # registry entry (aliases resolve)
    path, sha256 = fetch(entry)               # cached, verified download
    obj = load_checkpoint(path)               # torch.load(weights_only=True) + explicit allow-list
    state_dict, projection = convert(obj, entry.format)
    loaded = load_model(obj, entry.format, entry.arch)   # strict load into timm

CLI: ``python -m probes.zoo list | info NAME | download NAME | verify NAME | detect FILE | convert FILE``.
"""
from probes.zoo.build import LoadedModel, load_model
from probes.zoo.checkpoint import load_checkpoint
from probes.zoo.convert import CONVERTERS, convert, detect_format
from probes.zoo.download import cache_path, fetch, verify_file
from probes.zoo.errors import (
    CheckpointError, ChecksumError, DownloadError, OfflineError, RegistryError, UnsafeCheckpointError, ZooError,
)
from probes.zoo.registry import FORMATS, Arch, Entry, Transform, get_entry, load_registry

__all__ = [
    "Arch", "CONVERTERS", "CheckpointError", "ChecksumError", "DownloadError", "Entry", "FORMATS", "LoadedModel",
    "OfflineError", "RegistryError", "Transform", "UnsafeCheckpointError", "ZooError", "cache_path", "convert",
    "detect_format", "fetch", "get_entry", "load_checkpoint", "load_model", "load_registry", "verify_file",
]
