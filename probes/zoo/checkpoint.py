"""Reading checkpoint files without trusting them.

A ``.pth`` file is a pickle, and unpickling an arbitrary pickle runs arbitrary code. Every file goes
through ``torch.load(weights_only=True)``, which only rebuilds tensors, plain containers and numbers,
plus the explicit allow-list below. Anything else is refused before any of it is constructed.

The container is recognised from the file's first bytes, not its name (a torch zip, a legacy torch
pickle, safetensors), so a download that saved an HTML error page, a text file or a zip of something
else is named as such. Every failure is a :class:`CheckpointError` naming the file.
"""
from __future__ import annotations

import argparse
import json
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import torch

from probes.zoo.errors import CheckpointError, UnsafeCheckpointError

# DINO/iBOT/CARP/CAE/BEiT training saves carry their command line as an argparse.Namespace.
ALLOWED_GLOBALS = (argparse.Namespace,)

ZIP_MAGIC = b"PK\x03\x04"
PICKLE_MAGIC = b"\x80"  # pickle protocol >= 2, what legacy torch.save writes


def sniff(path: Path) -> str:
    """``"torch-zip"``, ``"pickle"``, ``"safetensors"``, or a description of what the file is instead."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(4096)
    if not head:
        return "an empty file"
    if head.startswith(ZIP_MAGIC):
        try:
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
        except (zipfile.BadZipFile, OSError):
            return "torch-zip"  # a truncated zip: torch names the damage
        if any(name.endswith("/data.pkl") or name == "data.pkl" for name in names):
            return "torch-zip"
        shown = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
        return f"a zip archive of something else (no data.pkl; it holds {shown or 'nothing'})"
    if head.startswith(PICKLE_MAGIC):
        return "pickle"
    if len(head) >= 9 and head[8:9] == b"{":
        header = int.from_bytes(head[:8], "little")
        if 0 < header <= size - 8:
            return "safetensors"
        return f"a truncated safetensors file (header of {header} bytes, file of {size})"
    text = head.lstrip().lower()
    if text.startswith((b"<!doctype html", b"<html", b"<?xml", b"<head", b"<body")):
        return "an HTML page (a download that saved the server's error or login page?)"
    try:
        head.decode("utf-8")
        return "a text file"
    except UnicodeDecodeError:
        return "not a torch or safetensors file (unknown binary content)"


def load_checkpoint(path: str | Path) -> Any:
    """Load a checkpoint file (``.pth``/``.pth.tar``/``.safetensors``) on the CPU, refusing pickled code."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        kind = sniff(path)
    except OSError as err:
        raise CheckpointError(f"{path}: cannot read the file ({err.strerror or err})") from None
    if kind == "safetensors":
        return _load_safetensors(path)
    if kind not in ("torch-zip", "pickle"):
        raise CheckpointError(f"{path}: expected a torch checkpoint (.pth zip or pickle) or a .safetensors file; "
                              f"found {kind}")
    try:
        # A file object, not the path: torch picks its reader from the name, and the content decides here.
        with torch.serialization.safe_globals(list(ALLOWED_GLOBALS)), open(path, "rb") as handle:
            return torch.load(handle, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        refused = _refused_global(str(err))
        if refused is None:
            raise CheckpointError(f"{path}: not a readable torch checkpoint (truncated or corrupt pickle)") from None
        allowed = ", ".join(f"{c.__module__}.{c.__qualname__}" for c in ALLOWED_GLOBALS)
        raise UnsafeCheckpointError(
            f"{path}: refused to unpickle: {refused}. Checkpoints may hold only tensors, containers, numbers, "
            f"strings and {allowed}; an object outside that list can run code while it is loaded. "
            "If you trust this file, load it yourself and save its state_dict (tensors only)."
        ) from None
    except Exception as err:  # torch reports damage as RuntimeError, EOFError, KeyError, UnicodeDecodeError, ...
        first = str(err).splitlines()[0][:200] if str(err) else type(err).__name__
        raise CheckpointError(f"{path}: not a readable torch checkpoint (truncated or corrupt?): {first}") from None


def _refused_global(message: str) -> str | None:
    """The object a weights-only load refused, or None when the pickle is merely damaged.

    torch's message explains its own defaults at length; keep the line naming the refused object. A
    truncated pickle can stop inside a GLOBAL opcode (``GLOBAL collect.``): a name without its attribute
    is damage, not an object.
    """
    lines = [line.strip() for line in message.splitlines() if "GLOBAL" in line]
    for line in lines:
        match = re.search(r"GLOBAL\s+([\w.]+)", line)
        if match and re.fullmatch(r"[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)+", match.group(1)):
            return line.rstrip(".")
    return None


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise CheckpointError(f"{path}: not a readable safetensors file (truncated or corrupt?): {err}") from None


def safetensors_metadata(path: str | Path) -> dict[str, str]:
    """The string metadata of a .safetensors file (``convert`` records format, arch and source there)."""
    path = Path(path)
    if not path.is_file() or sniff(path) != "safetensors":
        return {}
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{path}: not a readable safetensors file (truncated or corrupt?): {err}") from None


def metadata_json(meta: dict[str, str], key: str, path: Path) -> Any:
    """A JSON value stored under ``key`` in safetensors metadata (None when absent)."""
    if key not in meta:
        return None
    try:
        return json.loads(meta[key])
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{path}: metadata field {key!r} is not valid JSON ({err})") from None
