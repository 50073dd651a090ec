"""Errors of the checkpoint zoo. Every message names the file (or registry entry), what was found and
what was expected, so that a user can act without reading the code."""
from __future__ import annotations

from probes.errors import UserError


class ZooError(UserError):
    """Base class: anything the zoo refuses to do."""


class RegistryError(ZooError, ValueError):
    """checkpoints.yaml (or an arch/format given by the caller) is malformed or names something unknown."""


class CheckpointError(ZooError, ValueError):
    """A checkpoint's content does not match its declared format or architecture."""


class UnsafeCheckpointError(CheckpointError):
    """A checkpoint pickle refers to objects outside the allow-list; loading it could run code."""


class DownloadError(ZooError, OSError):
    """A download failed (network, HTTP status, Google Drive refusal)."""


class ChecksumError(DownloadError):
    """A file's hash differs from the published or recorded one. The file has been removed."""


class OfflineError(DownloadError):
    """A file is needed but downloads are off (PARTPROBE_OFFLINE=1, offline=True) or impossible.
    The message says which file to put where."""
