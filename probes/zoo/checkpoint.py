"""Reading checkpoint files without trusting them.

A ``.pth`` file is a pickle, and unpickling an arbitrary pickle runs arbitrary code. Every file goes
through ``torch.load(weights_only=True)``, which only rebuilds tensors, plain containers and numbers,
plus the explicit allow-list below. Anything else is refused before any of it is constructed.
"""
from __future__ import annotations

import argparse
import pickle
from pathlib import Path
from typing import Any

import torch

from probes.zoo.errors import CheckpointError, UnsafeCheckpointError

# DINO/iBOT/CARP/CAE/BEiT training saves carry their command line as an argparse.Namespace.
ALLOWED_GLOBALS = (argparse.Namespace,)


def load_checkpoint(path: str | Path) -> Any:
    """Load a checkpoint file (``.pth``/``.pth.tar``/``.safetensors``) on the CPU, refusing pickled code."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    if path.name.endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(str(path), device="cpu")
    try:
        with torch.serialization.safe_globals(list(ALLOWED_GLOBALS)):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        # torch's message explains its own defaults at length; keep the line naming the refused object.
        lines = [line for line in str(err).splitlines() if "GLOBAL" in line or "global" in line]
        first = lines[0].strip().rstrip(".") if lines else type(err).__name__
        allowed = ", ".join(f"{c.__module__}.{c.__qualname__}" for c in ALLOWED_GLOBALS)
        raise UnsafeCheckpointError(
            f"{path}: refused to unpickle: {first}. Checkpoints may hold only tensors, containers, numbers, "
            f"strings and {allowed}; an object outside that list can run code while it is loaded. "
            "If you trust this file, load it yourself and save its state_dict (tensors only)."
        ) from None
    except (RuntimeError, EOFError, OSError) as err:
        raise CheckpointError(
            f"{path}: not a readable torch checkpoint (truncated or corrupt?): {err}"
        ) from None
