"""Getting a registry file into the cache: resumable HTTP, Google Drive, hash verification, offline use.

The cache is ``probes.paths.checkpoints_dir()``. A download goes to ``<file>.part``; beside it,
``<file>.part.json`` keeps the server's validator (ETag, Last-Modified, size). An interrupted download
resumes with an HTTP Range request only with that validator (``If-Range``, and the size the server
reports); a ``.part`` larger than the remote file, an HTTP 416 or a changed validator restarts from
byte 0. The file is renamed to its final name only after its hash is verified and its layout loads,
so the final path never holds a partial or unverified file.

Trust: files without a published SHA-256 get one recorded in ``hashes.lock.json`` on first use, and
later downloads must match it. A first-use hash is recorded only from a download that ran from byte 0
to the end in one validated session (a resumed one is confirmed by a full re-download) and only after
the file passed its layout check. Each record says ``"trust": "published"`` (the registry's full
SHA-256) or ``"first-use"``; ``python -m probes.zoo verify --refetch NAME`` downloads again and compares,
``verify --reset-lock NAME`` forgets a wrong record.
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
from dataclasses import asdict, dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import Callable, Iterator
from urllib.error import HTTPError, URLError
from urllib.parse import urlencode, urljoin
from urllib.request import Request, urlopen

from probes.fileio import write_json_atomic
from probes.paths import checkpoints_dir
from probes.zoo.errors import ChecksumError, DownloadError, OfflineError, ZooError
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


def lock_record(entry: Entry) -> dict | None:
    record = read_lock().get(entry.file)
    return record if isinstance(record, dict) else None


def record_hash(entry: Entry, sha256: str, path: Path, source: str, origin: str) -> None:
    """Write ``entry``'s lock record. Callers have checked the hash and the layout first."""
    with _locked(lock_path().with_suffix(".json.lock")):
        lock = read_lock()
        stat = path.stat()
        lock[entry.file] = {"sha256": sha256, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns,
                            "trust": "published" if entry.sha256 else "first-use", "origin": origin,
                            "entry": entry.name, "source": source, "recorded": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        write_json_atomic(lock_path(), dict(sorted(lock.items())))


def reset_lock(entry: Entry) -> dict | None:
    """Forget ``entry``'s recorded hash (returns the record removed, or None)."""
    with _locked(lock_path().with_suffix(".json.lock")):
        lock = read_lock()
        removed = lock.pop(entry.file, None)
        if removed is not None:
            write_json_atomic(lock_path(), dict(sorted(lock.items())))
    return removed


def reset_help(entry: Entry) -> str:
    return (f"if the recorded hash is the wrong one (it came from a bad file), replace it: "
            f"`python -m probes.zoo verify {entry.name} --reset-lock` (or delete the key {entry.file!r} from "
            f"{lock_path()})")


def expected_hash_text(entry: Entry) -> str:
    if entry.sha256:
        return f"sha256 {entry.sha256}"
    known = []
    if entry.sha256_prefix:
        known.append(f"sha256 starts with {entry.sha256_prefix}")
    if entry.md5_prefix:
        known.append(f"md5 starts with {entry.md5_prefix}")
    record = lock_record(entry)
    if record and record.get("sha256"):
        known.append(f"sha256 {record['sha256']} (recorded in {lock_path()}, trust: {record.get('trust', 'first-use')})")
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
    record = lock_record(entry) or {}
    recorded = record.get("sha256")
    if not entry.sha256 and recorded and sha256 != recorded:
        problems.append(f"sha256 {sha256} != {recorded} recorded in {lock_path()} (trust: "
                        f"{record.get('trust', 'first-use')}, recorded {record.get('recorded', '?')} from "
                        f"{record.get('source', '?')}); {reset_help(entry)}")
    if problems:
        raise ChecksumError(f"{path} ({entry.name}): " + "; ".join(problems))


LayoutCheck = Callable[[Entry, Path], object]


def default_layout_check(entry: Entry, path: Path) -> object:
    """Meta-device load of the file into its registry architecture (imports torch and timm)."""
    from probes.zoo.loader import check_layout

    return check_layout(entry, path)


def verify_file(entry: Entry, path: Path, rehash: bool = False, layout_check: LayoutCheck | None = None) -> str:
    """SHA-256 of a cached file, checked against the registry and the lock file.

    A lock record whose size and mtime still match stands for the file's hash unless ``rehash``. A file
    without a record (put in the cache by hand) is recorded only after it passes ``layout_check``.
    """
    record = lock_record(entry)
    stat = path.stat()
    if (not rehash and record and record.get("size") == stat.st_size and record.get("mtime_ns") == stat.st_mtime_ns
            and (not entry.sha256 or record.get("sha256") == entry.sha256)):
        return record["sha256"]
    sha256, md5 = file_hashes(path, md5=bool(entry.md5_prefix))
    check_hashes(entry, path, sha256, md5)
    if record and record.get("sha256") == sha256:
        if record.get("mtime_ns") != stat.st_mtime_ns or record.get("size") != stat.st_size:
            record_hash(entry, sha256, path, source=record.get("source", str(path)), origin=record.get("origin", "cache"))
        return sha256
    (layout_check or default_layout_check)(entry, path)
    record_hash(entry, sha256, path, source=str(path), origin="found in the cache (not downloaded by partprobe)")
    if not entry.sha256:
        print(f"partprobe: recorded sha256 {sha256} of {entry.file} in {lock_path()} (trust: first-use)",
              file=sys.stderr)
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


@dataclass
class Validator:
    """What the server said about the file, kept beside a .part so that a resume can be validated."""
    url: str
    etag: str | None = None
    last_modified: str | None = None
    size: int | None = None

    @classmethod
    def of(cls, url: str, response) -> "Validator":
        size = None
        match = re.match(r"bytes \d+-\d+/(\d+)", response.headers.get("Content-Range") or "")
        if match:
            size = int(match.group(1))
        elif response.status == 200 and response.headers.get("Content-Length") is not None:
            size = int(response.headers["Content-Length"])
        return cls(url, response.headers.get("ETag"), response.headers.get("Last-Modified"), size)

    @property
    def usable(self) -> bool:
        return bool(self.etag or self.last_modified or self.size is not None)

    def if_range(self) -> str | None:
        """The ``If-Range`` value: a strong ETag, else the Last-Modified date (RFC 9110 section 13.1.5)."""
        if self.etag and not self.etag.startswith("W/"):
            return self.etag
        return self.last_modified

    def matches(self, other: "Validator") -> bool:
        return all(mine is None or theirs is None or mine == theirs
                   for mine, theirs in ((self.etag, other.etag), (self.last_modified, other.last_modified),
                                        (self.size, other.size)))


def _state_path(part: Path) -> Path:
    return part.with_name(part.name + ".json")


def _read_state(part: Path, url: str) -> Validator | None:
    try:
        data = json.loads(_state_path(part).read_text(encoding="utf-8"))
        state = Validator(**data)
    except (OSError, ValueError, TypeError):
        return None
    return state if state.url == url and state.usable else None


def _restart(part: Path) -> None:
    part.unlink(missing_ok=True)
    _state_path(part).unlink(missing_ok=True)


def http_download(url: str, part: Path, progress: bool = True, attempts: int | None = None) -> bool:
    """Fetch ``url`` into ``part``, resuming what ``part`` already holds when a validator allows it.

    Returns True when the file was written from byte 0 to the end within this call (every reconnection
    validated), False when it continued a ``.part`` left by an earlier run. A dropped connection is
    retried (resuming) up to ``attempts`` times; the .part file and its validator stay for the next run
    otherwise. A resume without a validator, a .part larger than the remote file, an HTTP 416, a server
    that ignores Range (200 instead of 206) or a changed ETag / Last-Modified / size restart from byte 0.
    """
    part.parent.mkdir(parents=True, exist_ok=True)
    state = _read_state(part, url)
    if part.exists() and (state is None or (state.size is not None and part.stat().st_size > state.size)):
        _restart(part)  # nothing to validate a resume against, or more bytes than the file has
        state = None
    from_zero = not part.exists() or part.stat().st_size == 0
    last_error: Exception | None = None
    for _ in range(attempts or ATTEMPTS):
        have = part.stat().st_size if part.exists() else 0
        headers = {"User-Agent": USER_AGENT}
        if have:
            headers["Range"] = f"bytes={have}-"
            if state.if_range():
                headers["If-Range"] = state.if_range()
        try:
            response = urlopen(Request(url, headers=headers), timeout=TIMEOUT)
        except HTTPError as err:
            if err.code == 416 and have:  # the .part is not a prefix of this file: start again
                _restart(part)
                state, from_zero = None, True
                last_error = DownloadError(f"{url}: HTTP 416 for a resume at byte {have}")
                continue
            raise DownloadError(f"{url}: HTTP {err.code} {err.reason}") from None
        with response:
            if (response.headers.get("Content-Type") or "").startswith("text/html"):
                raise _HtmlPage(response.read(4 << 20).decode("utf-8", "replace"), response.geturl())
            now = Validator.of(url, response)
            if have and response.status == 206:
                match = re.match(r"bytes (\d+)-", response.headers.get("Content-Range") or "")
                if not match or int(match.group(1)) != have or not state.matches(now):
                    _restart(part)  # another range, or another file behind the same URL
                    state, from_zero = None, True
                    last_error = DownloadError(f"{url}: the resumed response does not continue the .part file")
                    continue
                mode, start = "ab", have
            else:  # 200: the whole file (Range ignored, or If-Range said the file changed)
                mode, start, from_zero = "wb", 0, True
            state = now
            if state.usable:
                write_json_atomic(_state_path(part), asdict(state))
            else:
                _state_path(part).unlink(missing_ok=True)
            total = state.size
            try:
                with open(part, mode) as out, _progress(total, start, part.name[: -len(".part")], progress) as bar:
                    while block := response.read(CHUNK):
                        out.write(block)
                        bar.update(len(block))
            except (http.client.IncompleteRead, ConnectionError, socket.timeout, TimeoutError) as err:
                last_error = err
                if not state.usable:
                    _restart(part)  # no validator: a resume could not be checked
                    from_zero = True
                continue
        size = part.stat().st_size
        if total is not None and size < total:
            last_error = DownloadError(f"connection closed at byte {size} of {total}")
            if not state.usable:
                _restart(part)
            continue
        if total is not None and size > total:
            _restart(part)
            state, from_zero = None, True
            last_error = DownloadError(f"{part} grew past the {total} bytes the server announced")
            continue
        _state_path(part).unlink(missing_ok=True)
        return from_zero
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


def gdrive_download(file_id: str, part: Path, progress: bool = True) -> bool:
    url = f"{gdrive_download_url()}?{urlencode({'id': file_id, 'export': 'download', 'confirm': 't'})}"
    for _ in range(3):
        try:
            return http_download(url, part, progress)
        except _HtmlPage as page:
            url = gdrive_confirm_url(page.html, page.url, file_id)
    raise DownloadError(f"Google Drive kept answering file {file_id} with a web page instead of the file")


# ------------------------------------------------------------------------------------------ fetching
def _download(entry: Entry, part: Path, progress: bool) -> tuple[bool, str]:
    """Download ``entry`` into ``part`` from its first working source: (written from byte 0?, source)."""
    errors, network_down = [], True
    sources = [(url, http_download) for url in entry.urls]
    if entry.gdrive_id:
        sources.append((entry.gdrive_id, gdrive_download))
    for source, download in sources:
        try:
            return download(source, part, progress), source
        except _HtmlPage as page:
            errors.append(f"{page.url}: the server sent an HTML page, not the checkpoint")
            network_down = False
        except DownloadError as err:
            errors.append(str(err))
            network_down = False
        except (URLError, OSError) as err:
            errors.append(f"{source}: {getattr(err, 'reason', err)}")
    kind = OfflineError if network_down else DownloadError
    raise kind(f"could not download {entry.name!r}:\n  " + "\n  ".join(errors) +
               f"\nDownload it yourself and put it here:\n{placement_help(entry)}")


def fresh_sha256(entry: Entry, progress: bool = True) -> tuple[str, str]:
    """SHA-256 of a complete new download of ``entry`` from byte 0 (the file is not kept), and its source."""
    scratch = cache_path(entry).with_name(f".{entry.file}.refetch.part")
    _restart(scratch)
    try:
        _, source = _download(entry, scratch, progress)
        return file_hashes(scratch)[0], source
    finally:
        _restart(scratch)


def fetch(entry: Entry, offline: bool | None = None, progress: bool = True,
          layout_check: LayoutCheck | None = None) -> tuple[Path, str]:
    """Path of ``entry``'s file in the cache (downloaded if needed) and its verified SHA-256.

    ``layout_check(entry, path)`` (default: a meta-device load into the registry architecture) must pass
    before a downloaded file takes its final name and before a first-use hash is recorded.
    """
    if entry.local_path is not None:
        raise DownloadError(f"{entry.local_path}: a local file is not fetched")
    check = layout_check or default_layout_check
    path = cache_path(entry)
    with _locked(path.with_name(f".{path.name}.lock")):
        if path.is_file():
            return path, verify_file(entry, path, layout_check=check)
        if is_offline(offline):
            raise OfflineError(f"checkpoint {entry.name!r} is not in the cache and downloads are off "
                               f"(PARTPROBE_OFFLINE=1 or offline=True). Put the file here:\n{placement_help(entry)}")
        if not entry.downloadable:
            raise OfflineError(f"checkpoint {entry.name!r} has no scriptable download (Google Drive folder only). "
                               f"Put the file here:\n{placement_help(entry)}")
        part = path.with_name(path.name + ".part")
        from_zero, source = _download(entry, part, progress)
        sha256, md5 = file_hashes(part, md5=bool(entry.md5_prefix))
        try:
            check_hashes(entry, part, sha256, md5)
        except ChecksumError as err:
            _restart(part)
            raise ChecksumError(f"{err}. The download was deleted; try again, or report a changed file.") from None
        origin = "downloaded from byte 0 in one validated session"
        if not from_zero and not entry.sha256:
            # Continued from an earlier run's .part: the bytes before the resume were never checked against
            # anything, so a first-use hash needs a complete download that agrees with it.
            again, _ = fresh_sha256(entry, progress)
            if again != sha256:
                _restart(part)
                raise ChecksumError(f"{path} ({entry.name}): the resumed download (sha256 {sha256}) differs from a "
                                    f"complete new download (sha256 {again}): the earlier .part was damaged. "
                                    "Both were deleted and nothing was recorded; run again.")
            origin = "resumed download, confirmed by a complete new download"
        try:
            check(entry, part)
        except ZooError as err:
            _restart(part)  # never keep, nor trust, a file whose layout is not the entry's
            raise type(err)(f"{err}\nThe download of {entry.name!r} from {source} was deleted and no hash was "
                            "recorded.") from None
        os.replace(part, path)
        recorded = lock_record(entry)
        record_hash(entry, sha256, path, source=source, origin=origin)
        if not entry.sha256 and not recorded:
            print(f"partprobe: recorded sha256 {sha256} of {entry.file} in {lock_path()} "
                  "(trust: first-use; no published hash, later downloads must match it)", file=sys.stderr)
        return path, sha256


def refetch(entry: Entry, progress: bool = True) -> tuple[str, str, str]:
    """Download ``entry`` again and compare with the cached file: (cached sha256, fresh sha256, source)."""
    path = cache_path(entry)
    if not path.is_file():
        raise DownloadError(f"{entry.name}: not downloaded yet, nothing to compare; run "
                            f"`python -m probes.zoo download {entry.name}`")
    if not entry.downloadable:
        raise DownloadError(f"{entry.name}: no scriptable download to compare with (Google Drive folder only)")
    cached = file_hashes(path)[0]
    fresh, source = fresh_sha256(entry, progress)
    return cached, fresh, source
