"""Downloads against a local HTTP server (127.0.0.1): Range resume after a cut connection, validated resume
(ETag / Last-Modified via If-Range, or the size), hash checks, first-use trust and the lock file, offline
messages and Google Drive's confirm page."""
from __future__ import annotations

import hashlib
import http.server
import json
import threading
import urllib.parse

import pytest

from probes.paths import checkpoints_dir
from probes.zoo import download
from probes.zoo.errors import CheckpointError, ChecksumError, DownloadError, OfflineError
from probes.zoo.registry import IMAGENET, Arch, Entry

PAYLOAD = bytes(range(256)) * 4096  # 1 MiB
SHA = hashlib.sha256(PAYLOAD).hexdigest()


def accept_any_layout(entry, path):
    """These payloads are bytes, not checkpoints: the download mechanics are under test, not the layout."""


def fetch(entry, **kwargs):
    return download.fetch(entry, layout_check=accept_any_layout, **kwargs)


class Server:
    """A file server with Range support that can cut connections and serve Drive's warning page."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.cut_after: dict[str, list[int]] = {}  # path -> bytes to send on successive requests before closing
        self.ignore_range = False
        self.validators = False  # send ETag + Last-Modified and honour If-Range
        self.ignore_if_range = False  # a broken server: 206 whatever If-Range says
        self.requests: list[dict] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                parsed = urllib.parse.urlparse(self.path)
                query = dict(urllib.parse.parse_qsl(parsed.query))
                server.requests.append({"path": parsed.path, "query": query, "range": self.headers.get("Range"),
                                        "if_range": self.headers.get("If-Range")})
                if parsed.path == "/drive/download":
                    return self.drive(query)
                data = server.files.get(parsed.path)
                if data is None:
                    self.send_error(404)
                    return
                self.send_file(parsed.path, data)

            def drive(self, query):
                if "uuid" not in query:  # first visit: the "can't scan for viruses" page
                    page = ('<html><body><form id="download-form" action="/drive/download" method="get">'
                            '<input type="submit" value="Download anyway"/>'
                            f'<input type="hidden" name="id" value="{query.get("id")}">'
                            '<input type="hidden" name="export" value="download">'
                            '<input type="hidden" name="confirm" value="t">'
                            '<input type="hidden" name="uuid" value="1234-abcd"></form></body></html>').encode()
                    self.send_response(200)
                    self.send_header("Content-Type", "text/html; charset=utf-8")
                    self.send_header("Content-Length", str(len(page)))
                    self.end_headers()
                    self.wfile.write(page)
                    return
                self.send_file("/drive/" + query["id"], server.files["/drive/" + query["id"]])

            def send_file(self, path, data):
                start = 0
                rng = self.headers.get("Range")
                etag = f'"{hashlib.sha256(data).hexdigest()[:16]}"'
                if_range = self.headers.get("If-Range")
                if rng and server.validators and if_range and if_range != etag and not server.ignore_if_range:
                    rng = None  # RFC 9110: a changed file is sent whole
                if rng and not server.ignore_range:
                    start = int(rng.split("=")[1].split("-")[0])
                    if start >= len(data):
                        self.send_error(416)
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(data) - start))
                if server.validators:
                    self.send_header("ETag", etag)
                    self.send_header("Last-Modified", "Tue, 15 Nov 1994 12:45:26 GMT")
                self.end_headers()
                cuts = server.cut_after.get(path)
                if cuts:
                    self.wfile.write(data[start:start + cuts.pop(0)])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(data[start:])

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = Server()
    yield s
    s.close()


def make_entry(url=None, **kw) -> Entry:
    fields = dict(name="toy", format="timm", method="toy", arch=Arch("resnet50"), transform=IMAGENET, file="toy.pth",
                  urls=(url,) if url else ())
    fields.update(kw)
    return Entry(**fields)


def test_resume_after_a_cut_connection_uses_range_and_verifies(server):
    server.files["/toy.pth"] = PAYLOAD
    server.cut_after["/toy.pth"] = [300_000]
    path, sha = fetch(make_entry(server.url + "/toy.pth", sha256=SHA), progress=False)
    assert path == checkpoints_dir() / "toy.pth" and path.read_bytes() == PAYLOAD and sha == SHA
    assert [r["range"] for r in server.requests] == [None, "bytes=300000-"]
    assert not (checkpoints_dir() / "toy.pth.part").exists()


def test_interrupted_download_leaves_only_the_part_file_and_the_next_run_resumes(server, monkeypatch):
    server.files["/toy.pth"] = PAYLOAD
    server.cut_after["/toy.pth"] = [100_000, 200_000]
    monkeypatch.setattr(download, "ATTEMPTS", 2)
    entry = make_entry(server.url + "/toy.pth", sha256=SHA)
    with pytest.raises(DownloadError, match="next run resumes"):
        fetch(entry, progress=False)
    assert not (checkpoints_dir() / "toy.pth").exists()  # never a partial file at the final path
    assert (checkpoints_dir() / "toy.pth.part").stat().st_size == 300_000
    path, _ = fetch(entry, progress=False)
    assert path.read_bytes() == PAYLOAD
    assert server.requests[-1]["range"] == "bytes=300000-"


def test_server_ignoring_range_restarts_the_file(server):
    server.files["/toy.pth"] = PAYLOAD
    server.cut_after["/toy.pth"] = [50_000]
    server.ignore_range = True
    path, _ = fetch(make_entry(server.url + "/toy.pth", sha256=SHA), progress=False)
    assert path.read_bytes() == PAYLOAD


def test_sha256_mismatch_is_rejected_and_the_download_removed(server):
    server.files["/toy.pth"] = PAYLOAD
    with pytest.raises(ChecksumError, match=f"sha256 {SHA} != published {'0' * 64}"):
        fetch(make_entry(server.url + "/toy.pth", sha256="0" * 64), progress=False)
    assert list(checkpoints_dir().glob("toy.pth*")) == []


def test_published_prefixes_are_checked(server):
    server.files["/deit.pth"] = PAYLOAD
    md5 = hashlib.md5(PAYLOAD).hexdigest()
    entry = make_entry(server.url + "/deit.pth", file="deit.pth", sha256_prefix=SHA[:8], md5_prefix=md5[:6])
    assert fetch(entry, progress=False)[1] == SHA
    (checkpoints_dir() / "deit.pth").unlink()
    with pytest.raises(ChecksumError, match="does not start with the published prefix 8cad7c"):
        fetch(make_entry(server.url + "/deit.pth", file="deit.pth", md5_prefix="8cad7c"), progress=False)


def test_unpublished_hash_is_recorded_then_enforced(server, capsys):
    server.files["/toy.pth"] = PAYLOAD
    entry = make_entry(server.url + "/toy.pth")
    path, sha = fetch(entry, progress=False)
    lock = json.loads((checkpoints_dir() / "hashes.lock.json").read_text())
    assert lock["toy.pth"]["sha256"] == SHA == sha
    assert f"recorded sha256 {SHA} of toy.pth" in capsys.readouterr().err
    # the upstream file changes: a new download must not silently replace the pinned one
    path.unlink()
    server.files["/toy.pth"] = PAYLOAD[::-1]
    with pytest.raises(ChecksumError, match="recorded in"):
        fetch(entry, progress=False)
    assert list(checkpoints_dir().glob("toy.pth*")) == []
    # and a cached file that was altered in place is caught on the next load
    server.files["/toy.pth"] = PAYLOAD
    path, _ = fetch(entry, progress=False)
    path.write_bytes(PAYLOAD[:-1] + b"\x00")
    with pytest.raises(ChecksumError):
        fetch(entry, progress=False)


def test_html_page_instead_of_the_file_is_not_saved(server):
    entry = make_entry(server.url + "/drive/download?id=x")  # HTML answer from a non-Drive URL
    with pytest.raises(DownloadError, match="HTML page"):
        fetch(entry, progress=False)
    assert list(checkpoints_dir().glob("toy.pth*")) == []


def test_offline_message_says_which_file_goes_where(monkeypatch):
    monkeypatch.setenv("PARTPROBE_OFFLINE", "1")
    entry = make_entry("https://example.org/models/toy.pth", sha256=SHA)
    with pytest.raises(OfflineError) as err:
        fetch(entry)
    message = str(err.value)
    for needle in ("toy.pth", str(checkpoints_dir() / "toy.pth"), "https://example.org/models/toy.pth", SHA,
                   "python -m probes.zoo verify toy"):
        assert needle in message


def test_no_network_is_an_offline_error_with_the_same_help(server):
    url = server.url + "/toy.pth"
    server.close()  # nothing listens any more: connection refused
    with pytest.raises(OfflineError) as err:
        fetch(make_entry(url), progress=False)
    assert str(checkpoints_dir() / "toy.pth") in str(err.value) and url in str(err.value)


def test_google_drive_confirm_page_flow(server, monkeypatch):
    monkeypatch.setenv("PARTPROBE_GDRIVE_URL", server.url + "/drive/download")
    server.files["/drive/FILEID123"] = PAYLOAD
    path, sha = fetch(make_entry(gdrive_id="FILEID123", sha256=SHA), progress=False)
    assert path.read_bytes() == PAYLOAD and sha == SHA
    first, second = server.requests
    assert first["query"] == {"id": "FILEID123", "export": "download", "confirm": "t"}
    assert second["query"] == {"id": "FILEID123", "export": "download", "confirm": "t", "uuid": "1234-abcd"}


def test_google_drive_folder_only_entry_explains_the_manual_step():
    entry = make_entry(gdrive_folder="FOLDER42", file="checkpoint0399.pth")
    with pytest.raises(OfflineError) as err:
        fetch(entry, offline=False)
    message = str(err.value)
    assert "https://drive.google.com/drive/folders/FOLDER42" in message
    assert str(checkpoints_dir() / "checkpoint0399.pth") in message


# ----------------------------------------------------------------------------- validated resume, first-use trust
def lock():
    path = checkpoints_dir() / "hashes.lock.json"
    return json.loads(path.read_text()) if path.exists() else {}


def leave_a_part_file(server, monkeypatch, entry, at=300_000):
    """An interrupted earlier run: the first `at` bytes in toy.pth.part, the server's validator beside it."""
    server.cut_after["/toy.pth"] = [at]
    monkeypatch.setattr(download, "ATTEMPTS", 1)
    with pytest.raises(DownloadError, match="next run resumes"):
        fetch(entry, progress=False)
    monkeypatch.setattr(download, "ATTEMPTS", 4)
    part = checkpoints_dir() / "toy.pth.part"
    assert part.stat().st_size == at and (checkpoints_dir() / "toy.pth.part.json").is_file()
    return part


def flip(path, start, count):
    data = bytearray(path.read_bytes())
    for i in range(start, start + count):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def test_first_use_lock_records_trust_and_origin(server):
    server.validators = True
    server.files["/toy.pth"] = PAYLOAD
    fetch(make_entry(server.url + "/toy.pth"), progress=False)
    record = lock()["toy.pth"]
    assert (record["sha256"], record["trust"]) == (SHA, "first-use")
    assert record["origin"] == "downloaded from byte 0 in one validated session"
    (checkpoints_dir() / "toy.pth").unlink()
    fetch(make_entry(server.url + "/toy.pth", sha256=SHA), progress=False)
    assert lock()["toy.pth"]["trust"] == "published"


@pytest.mark.parametrize("validators", [True, False], ids=["etag", "size-only"])
def test_flipped_bytes_in_a_part_then_resume_are_detected_and_never_recorded(server, monkeypatch, validators):
    server.validators = validators
    server.files["/toy.pth"] = PAYLOAD
    entry = make_entry(server.url + "/toy.pth")  # no published hash: trust on first use
    part = leave_a_part_file(server, monkeypatch, entry)
    flip(part, 100_000, 2000)
    with pytest.raises(ChecksumError, match="differs from a complete new download"):
        fetch(entry, progress=False)
    assert "toy.pth" not in lock()
    assert list(checkpoints_dir().glob("toy.pth*")) == []
    ranges = [r["range"] for r in server.requests]
    assert ranges == [None, "bytes=300000-", None]  # resumed, then confirmed by a download from byte 0
    assert (server.requests[1]["if_range"] is not None) == validators  # If-Range when the server gave an ETag
    # the next run starts clean and records the right file
    path, sha = fetch(entry, progress=False)
    assert path.read_bytes() == PAYLOAD and lock()["toy.pth"]["sha256"] == SHA


def test_flipped_bytes_with_a_published_hash_are_a_mismatch(server, monkeypatch):
    server.validators = True
    server.files["/toy.pth"] = PAYLOAD
    entry = make_entry(server.url + "/toy.pth", sha256=SHA)
    flip(leave_a_part_file(server, monkeypatch, entry), 10, 2000)
    with pytest.raises(ChecksumError, match="!= published"):
        fetch(entry, progress=False)
    assert "toy.pth" not in lock() and list(checkpoints_dir().glob("toy.pth*")) == []


def test_an_intact_resumed_first_use_download_is_confirmed_then_recorded(server, monkeypatch):
    server.validators = True
    server.files["/toy.pth"] = PAYLOAD
    entry = make_entry(server.url + "/toy.pth")
    leave_a_part_file(server, monkeypatch, entry)
    path, sha = fetch(entry, progress=False)
    assert sha == SHA and path.read_bytes() == PAYLOAD
    assert lock()["toy.pth"]["origin"] == "resumed download, confirmed by a complete new download"
    assert server.requests[1]["if_range"] is not None  # the resume carried the validator


@pytest.mark.parametrize("with_state", [True, False], ids=["validator-recorded", "no-validator"])
def test_stale_part_larger_than_the_remote_file_restarts(server, with_state):
    server.files["/toy.pth"] = PAYLOAD
    part = checkpoints_dir() / "toy.pth.part"
    part.parent.mkdir(parents=True, exist_ok=True)
    part.write_bytes(PAYLOAD[::-1] + b"x" * 5000)  # an older, longer file
    if with_state:  # a validator the server does not check: only its 416 tells
        (checkpoints_dir() / "toy.pth.part.json").write_text(json.dumps(
            {"url": server.url + "/toy.pth", "etag": '"older"', "last_modified": None, "size": None}))
    path, sha = fetch(make_entry(server.url + "/toy.pth"), progress=False)
    assert path.read_bytes() == PAYLOAD and sha == SHA == lock()["toy.pth"]["sha256"]
    ranges = [r["range"] for r in server.requests]
    assert ranges == ([f"bytes={len(PAYLOAD) + 5000}-", None] if with_state else [None])  # 416, then from zero


def test_stale_part_with_a_recorded_size_restarts_without_asking(server):
    server.files["/toy.pth"] = PAYLOAD
    part = checkpoints_dir() / "toy.pth.part"
    part.parent.mkdir(parents=True, exist_ok=True)
    part.write_bytes(b"y" * (len(PAYLOAD) + 10))
    (checkpoints_dir() / "toy.pth.part.json").write_text(json.dumps(
        {"url": server.url + "/toy.pth", "etag": None, "last_modified": None, "size": len(PAYLOAD)}))
    path, _ = fetch(make_entry(server.url + "/toy.pth", sha256=SHA), progress=False)
    assert path.read_bytes() == PAYLOAD and [r["range"] for r in server.requests] == [None]


@pytest.mark.parametrize("broken_server", [False, True], ids=["if-range", "server-ignores-if-range"])
def test_changed_file_behind_the_url_restarts_from_zero(server, monkeypatch, broken_server):
    server.validators = True
    server.files["/toy.pth"] = PAYLOAD
    new = PAYLOAD[::-1]
    entry = make_entry(server.url + "/toy.pth", sha256=hashlib.sha256(new).hexdigest())
    leave_a_part_file(server, monkeypatch, entry)
    server.files["/toy.pth"] = new  # the file changed between the runs (same size, same Last-Modified)
    server.ignore_if_range = broken_server
    path, _ = fetch(entry, progress=False)
    assert path.read_bytes() == new  # never the old head with the new tail


def test_a_file_that_fails_its_layout_check_is_deleted_and_never_recorded(server):
    server.files["/toy.pth"] = PAYLOAD  # bytes, not a checkpoint
    with pytest.raises(CheckpointError, match="was deleted and no hash was recorded"):
        download.fetch(make_entry(server.url + "/toy.pth"), progress=False)  # the real layout check
    assert "toy.pth" not in lock() and list(checkpoints_dir().glob("toy.pth*")) == []


def test_refetch_compares_the_cached_file_with_a_new_download(server):
    server.files["/toy.pth"] = PAYLOAD
    entry = make_entry(server.url + "/toy.pth")
    fetch(entry, progress=False)
    assert download.refetch(entry)[:2] == (SHA, SHA)
    server.files["/toy.pth"] = PAYLOAD[::-1]
    cached, fresh, _ = download.refetch(entry)
    assert cached == SHA != fresh
    assert not list(checkpoints_dir().glob(".toy.pth.refetch*"))  # the new download is not kept
