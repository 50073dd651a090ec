"""Fetch and unpack official dataset archives: md5-checked downloads, atomic renames, resumable extraction."""
from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import tempfile
import zipfile
from pathlib import Path

from probes.data.errors import DatasetFormatError

CHUNK = 1 << 20


def md5_of(path: str | os.PathLike) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def download_file(url: str, dest: str | os.PathLike, md5: str | None = None, log=print) -> Path:
    """Download `url` to `dest` unless a file with the right md5 is already there.

    The bytes go to `<dest>.part` through the checkpoint zoo's resumable downloader (an interrupted
    run continues with an HTTP Range request) and are renamed to `dest` only after the md5 matched, so
    an unfinished or corrupted download never looks like a finished one.
    """
    from probes.zoo.download import http_download

    dest = Path(dest)
    if dest.is_file() and (md5 is None or md5_of(dest) == md5):
        log(f"{dest} already present")
        return dest
    part = dest.with_name(dest.name + ".part")
    log(f"downloading {url} -> {dest}")
    http_download(url, part)
    actual = md5_of(part)
    if md5 is not None and actual != md5:
        part.unlink()
        raise DatasetFormatError(url, f"md5 {actual} does not match", expected=f"md5 {md5}")
    os.replace(part, dest)
    return dest


def extract_archive(archive: str | os.PathLike, into: str | os.PathLike, log=print) -> list[Path]:
    """Unpack a .tar(.gz)/.tgz/.zip archive under `into`; returns the top-level entries it provides.

    The archive is unpacked into a temporary folder beside the destination, then each top-level entry
    is renamed into place. An entry that already exists is kept (a finished earlier run), so running
    again after an interruption completes the job without unpacking twice what is already there.
    """
    archive, into = Path(archive), Path(into)
    if not archive.is_file():
        raise DatasetFormatError(archive, "archive not found", expected="the downloaded archive (see `download`)")
    into.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{archive.name}.", suffix=".partial", dir=into))
    try:
        log(f"unpacking {archive} into {into}")
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zipped:
                zipped.extractall(staging)   # zipfile drops absolute paths and '..' components itself
        elif tarfile.is_tarfile(archive):
            with tarfile.open(archive) as tarred:
                tarred.extractall(staging, filter="data")   # refuses links and paths leaving the folder
        else:
            raise DatasetFormatError(archive, "not a zip or tar archive", expected=".zip, .tar, .tar.gz or .tgz")
        provided = []
        for entry in sorted(staging.iterdir()):
            target = into / entry.name
            if not target.exists():
                os.replace(entry, target)
            provided.append(target)
        return provided
    finally:
        shutil.rmtree(staging, ignore_errors=True)
