"""Where partprobe writes: one user-configurable root, never inside the package.

``PARTPROBE_HOME`` (default ``~/.cache/partprobe``) holds ``checkpoints/`` (downloads and the
hash lock file), ``features/`` (the feature cache) and ``results/`` (result records). Each can be
moved on its own with ``PARTPROBE_CHECKPOINTS``, ``PARTPROBE_FEATURES`` and ``PARTPROBE_RESULTS``.
"""
from __future__ import annotations

import os
from pathlib import Path


def home() -> Path:
    return Path(os.environ.get("PARTPROBE_HOME", Path.home() / ".cache" / "partprobe")).expanduser()


def _sub(env: str, name: str) -> Path:
    value = os.environ.get(env)
    return Path(value).expanduser() if value else home() / name


def checkpoints_dir() -> Path:
    return _sub("PARTPROBE_CHECKPOINTS", "checkpoints")


def features_dir() -> Path:
    return _sub("PARTPROBE_FEATURES", "features")


def results_dir() -> Path:
    return _sub("PARTPROBE_RESULTS", "results")
