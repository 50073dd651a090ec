"""Getting a registry file into the cache: resumable HTTP, Google Drive, hash verification, offline use.

The cache is ``probes.paths.checkpoints_dir()``. A download goes to ``<file>.part``; an interrupted one
resumes from there with an HTTP Range request. The file is renamed to its final name only after its
hash is verified, so the final path never holds a partial or unverified file. Files without a published
SHA-256 get one recorded in ``hashes.lock.json`` on first download; later downloads must match it.
"""
from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import os
import re
import socket
import sys
import time
from html.parser import HTMLParser
from pathlib import Path
from typing import Iterator
from urllib.error import HTTPError, URLError
from urllib.parse import urlencode, urljoin
from urllib.request import Request, urlopen

from probes.fileio import write_json_atomic
from probes.paths import checkpoints_dir
from probes.zoo.errors import ChecksumError, DownloadError, OfflineError
from probes.zoo.registry import Entry, gdrive_file_url, gdrive_folder_url

LOCK_NAME = "hashes.lock.json"
CHUNK = 1 << 20
ATTEMPTS = 4  # connections per URL; each retry resumes where the last one stopped
TIMEOUT = 60
USER_AGENT = "partprobe (https://github.com/; checkpoint downloader)"
GDRIVE_DOWNLOAD_URL = "https://drive.usercontent.google.com/download"


def gdrive_download_url() -> str:
    """Google Drive's direct-download endpoint; PARTPROBE_GDRIVE_URL points it elsewhere (tests, proxies)."""
    return os.environ.get("PARTPROBE_GDRIVE_URL", GDRIVE_DOWNLOAD_URL)


def is_offline(offline: bool | None = None) -> bool:
    if offline is not None:
        return offline
    return os.environ.get("PARTPROBE_OFFLINE", "").strip().lower() not in ("", "0", "false", "no")


def cache_path(entry: Entry) -> Path:
    return checkpoints_dir() / entry.file


def lock_path() -> Path:
    return checkpoints_dir() / LOCK_NAME


# ------------------------------------------------------------------------------------------ hashing
def file_hashes(path: Path, md5: bool = False) -> tuple[str, str | None]:
    sha = hashlib.sha256()
    md = hashlib.md5(usedforsecurity=False) if md5 else None
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            sha.update(block)
            if md is not None:
                md.update(block)
    return sha.hexdigest(), (md.hexdigest() if md is not None else None)


def read_lock() -> dict:
    path = lock_path()
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise DownloadError(f"{path}: not valid JSON ({err}); fix or delete it (it only holds recorded hashes)") from None
    if not isinstance(data, dict):
        raise DownloadError(f"{path}: expected a JSON object of file name -> record")
    return data


def _record_hash(entry: Entry, sha256: str, path: Path, source: str) -> None:
    with _locked(lock_path().with_suffix(".json.lock")):
        lock = read_lock()
        lock[entry.file] = {"sha256": sha256, "size": path.stat().st_size, "mtime_ns": path.stat().st_mtime_ns,
                            "entry": entry.name, "source": source, "recorded": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        write_json_atomic(lock_path(), dict(sorted(lock.items())))


def expected_hash_text(entry: Entry) -> str:
    if entry.sha256:
        return f"sha256 {entry.sha256}"
    known = []
    if entry.sha256_prefix:
        known.append(f"sha256 starts with {entry.sha256_prefix}")
    if entry.md5_prefix:
        known.append(f"md5 starts with {entry.md5_prefix}")
    recorded = read_lock().get(entry.file, {}).get("sha256")
    if recorded:
        known.append(f"sha256 {recorded} (recorded in {lock_path()})")
    elif not known:
        known.append(f"no published hash; its sha256 is recorded in {lock_path()} on first use")
    return "; ".join(known)


def check_hashes(entry: Entry, path: Path, sha256: str, md5: str | None) -> None:
    """Raise ChecksumError if ``path`` (hashed as given) differs from the published or recorded hash."""
    problems = []
    if entry.sha256 and sha256 != entry.sha256:
        problems.append(f"sha256 {sha256} != published {entry.sha256}")
    if entry.sha256_prefix and not sha256.startswith(entry.sha256_prefix):
        problems.append(f"sha256 {sha256} does not start with the published prefix {entry.sha256_prefix}")
    if entry.md5_prefix and md5 is not None and not md5.startswith(entry.md5_prefix):
        problems.append(f"md5 {md5} does not start with the published prefix {entry.md5_prefix}")
    recorded = read_lock().get(entry.file, {}).get("sha256")
    if not entry.sha256 and recorded and sha256 != recorded:
        problems.append(f"sha256 {sha256} != {recorded} recorded in {lock_path()}")
    if problems:
        raise ChecksumError(f"{path} ({entry.name}): " + "; ".join(problems))


def verify_file(entry: Entry, path: Path, rehash: bool = False) -> str:
    """SHA-256 of a cached file, checked against the registry and the lock file (recorded if new).

    A lock record whose size and mtime still match stands for the file's hash unless ``rehash``.
    """
    record = read_lock().get(entry.file)
    stat = path.stat()
    if (not rehash and record and record.get("size") == stat.st_size and record.get("mtime_ns") == stat.st_mtime_ns
            and (not entry.sha256 or record.get("sha256") == entry.sha256)):
        return record["sha256"]
    sha256, md5 = file_hashes(path, md5=bool(entry.md5_prefix))
    check_hashes(entry, path, sha256, md5)
    if not record or record.get("sha256") != sha256 or record.get("mtime_ns") != stat.st_mtime_ns:
        new = not record
        _record_hash(entry, sha256, path, source=str(path))
        if new and not entry.sha256:
            print(f"partprobe: recorded sha256 {sha256} of {entry.file} in {lock_path()}", file=sys.stderr)
    return sha256


# ------------------------------------------------------------------------------------------ locking
@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Advisory inter-process lock (two runs never write the same .part file at once)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks; downloads stay atomic, just not deduplicated
        yield
        return
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# ------------------------------------------------------------------------------------------ messages
def placement_help(entry: Entry) -> str:
    path = cache_path(entry)
    lines = [f"  name:   {entry.file}", f"  path:   {path}"]
    sources = list(entry.urls)
    if entry.gdrive_id:
        sources.append(f"{gdrive_file_url(entry.gdrive_id)} (Google Drive file)")
    if entry.gdrive_folder:
        sources.append(f"{gdrive_folder_url(entry.gdrive_folder)} (Google Drive folder: download the file, "
                       f"save it as {entry.file})")
    for i, src in enumerate(sources):
        lines.append(("  from:   " if i == 0 else "          ") + src)
    lines.append(f"  check:  {expected_hash_text(entry)}")
    lines.append(f"then run: python -m probes.zoo verify {entry.name}")
    if entry.meta.get("notes"):
        lines.append(f"note: {entry.meta['notes']}")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------ HTTP
class _HtmlPage(DownloadError):
    """The server answered with a web page (an error page, or Google Drive's confirm page)."""

    def __init__(self, html: str, url: str):
        super().__init__(f"{url}: the server sent an HTML page instead of the file")
        self.html, self.url = html, url


def _progress(total: int | None, initial: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, unit="B", unit_scale=True, unit_divisor=1024, desc=desc,
                disable=None if enabled else True, leave=False, file=sys.stderr)


def http_download(url: str, part: Path, progress: bool = True, attempts: int | None = None) -> None:
    """Fetch ``url`` into ``part``, resuming what ``part`` already holds (HTTP Range).

    A dropped connection is retried (resuming) up to ``attempts`` times; the .part file stays for the
    next run otherwise. A server that ignores Range (200 instead of 206) restarts the file.
    """
    part.parent.mkdir(parents=True, exist_ok=True)
    last_error: Exception | None = None
    for _ in range(attempts or ATTEMPTS):
        have = part.stat().st_size if part.exists() else 0
        headers = {"User-Agent": USER_AGENT}
        if have:
            headers["Range"] = f"bytes={have}-"
        try:
            response = urlopen(Request(url, headers=headers), timeout=TIMEOUT)
        except HTTPError as err:
            if err.code == 416 and have:  # nothing left to send: the .part file is complete
                return
            raise DownloadError(f"{url}: HTTP {err.code} {err.reason}") from None
        with response:
            if (response.headers.get("Content-Type") or "").startswith("text/html"):
                raise _HtmlPage(response.read(4 << 20).decode("utf-8", "replace"), response.geturl())
            length = response.headers.get("Content-Length")
            if have and response.status == 206:
                match = re.match(r"bytes (\d+)-", response.headers.get("Content-Range") or "")
                if not match or int(match.group(1)) != have:
                    raise DownloadError(f"{url}: asked for bytes {have}- but got Content-Range "
                                        f"{response.headers.get('Content-Range')!r}")
                mode, start = "ab", have
            else:
                mode, start = "wb", 0
            total = start + int(length) if length is not None else None
            try:
                with open(part, mode) as out, _progress(total, start, part.name[: -len(".part")], progress) as bar:
                    while block := response.read(CHUNK):
                        out.write(block)
                        bar.update(len(block))
            except (http.client.IncompleteRead, ConnectionError, socket.timeout, TimeoutError) as err:
                last_error = err
                continue
        size = part.stat().st_size
        if total is not None and size < total:
            last_error = DownloadError(f"connection closed at byte {size} of {total}")
            continue
        return
    raise DownloadError(f"{url}: the connection kept dropping ({last_error}); {part} holds "
                        f"{part.stat().st_size if part.exists() else 0} bytes and the next run resumes from there")


class _FormParser(HTMLParser):
    """Collects the download form (action + hidden inputs) and confirm links of a Drive warning page."""

    def __init__(self):
        super().__init__()
        self.forms: list[tuple[str, dict[str, str]]] = []
        self.links: list[str] = []
        self._form: tuple[str, dict[str, str]] | None = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "form":
            self._form = (attrs.get("action") or "", {})
            self.forms.append(self._form)
        elif tag == "input" and self._form is not None and attrs.get("name"):
            self._form[1][attrs["name"]] = attrs.get("value") or ""
        elif tag == "a" and "confirm=" in (attrs.get("href") or ""):
            self.links.append(attrs["href"])

    def handle_endtag(self, tag):
        if tag == "form":
            self._form = None


def gdrive_confirm_url(html: str, page_url: str, file_id: str) -> str:
    """The URL behind Drive's "can't scan this file for viruses" page (form or legacy confirm link)."""
    parser = _FormParser()
    parser.feed(html)
    for action, fields in parser.forms:
        if fields.get("id") == file_id or "confirm" in fields:
            return f"{urljoin(page_url, action)}?{urlencode(fields)}"
    for href in parser.links:
        return urljoin(page_url, href.replace("&amp;", "&"))
    match = re.search(r"confirm=([0-9A-Za-z_-]+)", html)
    if match:
        return f"{gdrive_download_url()}?{urlencode({'id': file_id, 'export': 'download', 'confirm': match.group(1)})}"
    raise DownloadError(f"Google Drive did not serve file {file_id} (daily quota exceeded, or not shared publicly): "
                        f"open {gdrive_file_url(file_id)} in a browser instead")


def gdrive_download(file_id: str, part: Path, progress: bool = True) -> None:
    url = f"{gdrive_download_url()}?{urlencode({'id': file_id, 'export': 'download', 'confirm': 't'})}"
    for _ in range(3):
        try:
            http_download(url, part, progress)
            return
        except _HtmlPage as page:
            url = gdrive_confirm_url(page.html, page.url, file_id)
    raise DownloadError(f"Google Drive kept answering file {file_id} with a web page instead of the file")


# ------------------------------------------------------------------------------------------ fetching
def fetch(entry: Entry, offline: bool | None = None, progress: bool = True) -> tuple[Path, str]:
    """Path of ``entry``'s file in the cache (downloaded if needed) and its verified SHA-256."""
    if entry.local_path is not None:
        raise DownloadError(f"{entry.local_path}: a local file is not fetched")
    path = cache_path(entry)
    with _locked(path.with_name(f".{path.name}.lock")):
        if path.is_file():
            return path, verify_file(entry, path)
        if is_offline(offline):
            raise OfflineError(f"checkpoint {entry.name!r} is not in the cache and downloads are off "
                               f"(PARTPROBE_OFFLINE=1 or offline=True). Put the file here:\n{placement_help(entry)}")
        if not entry.downloadable:
            raise OfflineError(f"checkpoint {entry.name!r} has no scriptable download (Google Drive folder only). "
                               f"Put the file here:\n{placement_help(entry)}")
        part = path.with_name(path.name + ".part")
        errors, network_down = [], True
        sources = [(url, http_download) for url in entry.urls]
        if entry.gdrive_id:
            sources.append((entry.gdrive_id, gdrive_download))
        for source, download in sources:
            try:
                download(source, part, progress)
                break
            except _HtmlPage as page:
                errors.append(f"{page.url}: the server sent an HTML page, not the checkpoint")
                network_down = False
            except DownloadError as err:
                errors.append(str(err))
                network_down = False
            except (URLError, OSError) as err:
                errors.append(f"{source}: {getattr(err, 'reason', err)}")
        else:
            kind = OfflineError if network_down else DownloadError
            raise kind(f"could not download {entry.name!r}:\n  " + "\n  ".join(errors) +
                       f"\nDownload it yourself and put it here:\n{placement_help(entry)}")
        sha256, md5 = file_hashes(part, md5=bool(entry.md5_prefix))
        try:
            check_hashes(entry, part, sha256, md5)
        except ChecksumError as err:
            part.unlink(missing_ok=True)
            raise ChecksumError(f"{err}. The download was deleted; try again, or report a changed file.") from None
        os.replace(part, path)
        recorded = read_lock().get(entry.file)
        _record_hash(entry, sha256, path, source=source)
        if not entry.sha256 and not recorded:
            print(f"partprobe: recorded sha256 {sha256} of {entry.file} in {lock_path()} "
                  "(no published hash; later downloads must match it)", file=sys.stderr)
        return path, sha256
