"""Downloads against a local HTTP server (127.0.0.1): Range resume after a cut connection, hash checks,
the lock file, offline messages and Google Drive's confirm page."""
from __future__ import annotations

import hashlib
import http.server
import json
import threading
import urllib.parse

import pytest

from probes.paths import checkpoints_dir
from probes.zoo import download
from probes.zoo.errors import ChecksumError, DownloadError, OfflineError
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
        self.requests: list[dict] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                parsed = urllib.parse.urlparse(self.path)
                query = dict(urllib.parse.parse_qsl(parsed.query))
                server.requests.append({"path": parsed.path, "query": query, "range": self.headers.get("Range")})
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
