"""kill -9 in the middle of the work, through the command line: during feature extraction, during a training
epoch and during a download. The rerun of the same command resumes (what was finished is not redone) and ends
with what an uninterrupted run gives."""
from __future__ import annotations

import hashlib
import http.server
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from probes.data.synth import synth
from probes.results import RunRecord, iter_record_paths

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cifar(tmp_path_factory):
    """4,000 training images: the gallery spans two feature-cache shards (2,048 items each)."""
    return synth("cifar10", tmp_path_factory.mktemp("cifar"), seed=3, train_per_class=400, test_per_class=5)


def env(home: Path, **extra) -> dict:
    return {**os.environ, "PARTPROBE_HOME": str(home), "PYTHONPATH": "", "OMP_NUM_THREADS": "1", **extra}


def script(name: str, *args) -> list[str]:
    return [sys.executable, f"probes/{name}.py", *map(str, args)]


def run(command: list[str], home: Path, **extra) -> str:
    done = subprocess.run(command, cwd=REPO, env=env(home, **extra), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


def kill_when(command: list[str], home: Path, ready, timeout: float = 300, **extra) -> None:
    """Start ``command``, kill -9 it (by pid) as soon as ``ready()`` is true, and check that it was killed."""
    process = subprocess.Popen(command, cwd=REPO, env=env(home, **extra), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline = time.time() + timeout
    while not ready() and process.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    os.kill(process.pid, signal.SIGKILL)
    assert process.wait(timeout=30) == -signal.SIGKILL, "the command ended before it could be killed"


def records(folder: Path) -> dict:
    """What a run measured, by (probe, feature, self-match): metrics and the configuration's identity."""
    out = {}
    for path in iter_record_paths(folder):
        record = RunRecord.load(path)
        out[record.probe, record.feature, record.protocol.get("include_self")] = (
            record.metrics, record.config_hash, record.data_sha256)
    return out


def test_kill_during_extraction_then_the_rerun_resumes_at_the_next_shard(cifar, tmp_path):
    command = script("object_retrieval", "--model", "colorstats", "--input-size", 224, "--batch-size", 4,
                     "--dataset", "cifar10", "--data-root", cifar, "--feature", "cls", "--quiet")
    features = tmp_path / "home" / "features"

    def first_gallery_shard() -> list[Path]:
        return [key.parent / "cls" / "00000.pt" for key in features.glob("*/key.json")
                if json.loads(key.read_text())["num_items"] == 4000 and (key.parent / "cls" / "00000.pt").is_file()]

    kill_when([*command, "--results", tmp_path / "cut"], tmp_path / "home", lambda: bool(first_gallery_shard()))
    assert not records(tmp_path / "cut")
    shard, = first_gallery_shard()
    assert not (shard.parent / "00001.pt").exists()
    stamp = shard.stat().st_mtime_ns
    run([*command, "--results", tmp_path / "cut"], tmp_path / "home")
    assert shard.stat().st_mtime_ns == stamp and (shard.parent / "00001.pt").is_file()   # resumed, not redone
    run([*command, "--results", tmp_path / "whole"], tmp_path / "fresh")
    assert records(tmp_path / "cut") == records(tmp_path / "whole") and len(records(tmp_path / "whole")) == 2


def test_kill_during_a_training_epoch_then_the_rerun_resumes_after_the_last_epoch(cifar, tmp_path):
    import torch

    command = script("linear_probe", "--model", "colorstats", "--input-size", 32, "--dataset", "cifar10",
                     "--data-root", cifar, "--epochs", 60, "--train-batch-size", 16, "--quiet")
    states = tmp_path / "home" / "train_state"
    kill_when([*command, "--results", tmp_path / "cut"], tmp_path / "home", lambda: any(states.glob("*.pt")))
    assert not records(tmp_path / "cut")
    state, = states.glob("*.pt")
    done = torch.load(state, weights_only=True)["epoch"]
    assert 1 <= done < 60
    printed = run([*command, "--results", tmp_path / "cut"], tmp_path / "home")
    resumed = int(printed.split("resumed after epoch ")[1].split()[0])
    assert resumed >= done
    run([*command, "--results", tmp_path / "whole"], tmp_path / "fresh")
    assert records(tmp_path / "cut") == records(tmp_path / "whole")

    def history(folder):
        path = next(p for p in iter_record_paths(folder) if RunRecord.load(p).probe == "linear_probe")
        return (path.parent / "history.csv").read_text()
    assert history(tmp_path / "cut") == history(tmp_path / "whole")        # every epoch, loss and accuracy


class SlowServer:
    """Serves one file over HTTP on 127.0.0.1, slowly (so that a download can be killed midway), with Range."""

    def __init__(self, data: bytes, chunk: int = 16384, pause: float = 0.02):
        self.ranges: list[str | None] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                wanted = self.headers.get("Range")
                server.ranges.append(wanted)
                start = int(wanted.split("=")[1].split("-")[0]) if wanted else 0
                self.send_response(206 if wanted else 200)
                if wanted:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(data) - start))
                self.end_headers()
                try:
                    for offset in range(start, len(data), chunk):
                        self.wfile.write(data[offset:offset + chunk])
                        self.wfile.flush()
                        time.sleep(pause)
                except (BrokenPipeError, ConnectionResetError):   # the client was killed
                    pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def test_kill_during_a_download_then_the_rerun_resumes_with_a_range_request(shared, tmp_path):
    golden = shared / "golden" / "dino_vit_full"
    payload = (golden / "checkpoint.pth").read_bytes()
    arch = json.loads((golden / "meta.json").read_text())["timm_target"]["this_golden"]
    server = SlowServer(payload)
    try:
        registry = tmp_path / "mine.yaml"
        registry.write_text(yaml.safe_dump({"models": {"slow_dino": {
            "method": "DINO", "file": "slow_dino_full.pth", "urls": [f"{server.url}/slow_dino_full.pth"],
            "sha256": hashlib.sha256(payload).hexdigest(), "format": "dino_full",
            "arch": {"model": arch["create_model"], "kwargs": arch["kwargs"]},
            "transform": {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "interpolation": "bicubic",
                          "resize": 73, "crop": 64}}}}))
        command = [sys.executable, "-m", "probes.zoo", "download", "slow_dino"]
        extra = {"PARTPROBE_REGISTRY": str(registry), "NO_PROXY": "127.0.0.1", "no_proxy": "127.0.0.1"}
        part = tmp_path / "home" / "checkpoints" / "slow_dino_full.pth.part"
        kill_when(command, tmp_path / "home", lambda: part.is_file() and part.stat().st_size > len(payload) // 4,
                  **extra)
        assert not (tmp_path / "home" / "checkpoints" / "slow_dino_full.pth").exists()
        cut_at = part.stat().st_size
        assert 0 < cut_at < len(payload)
        run(command, tmp_path / "home", **extra)
        assert server.ranges[-1] is not None and int(server.ranges[-1].split("=")[1].split("-")[0]) > 0
        run(command, tmp_path / "fresh", **extra)
        for home in ("home", "fresh"):
            assert (tmp_path / home / "checkpoints" / "slow_dino_full.pth").read_bytes() == payload
            assert not (tmp_path / home / "checkpoints" / "slow_dino_full.pth.part").exists()
        locks = [json.loads((tmp_path / home / "checkpoints" / "hashes.lock.json").read_text())["slow_dino_full.pth"]
                 for home in ("home", "fresh")]
        assert locks[0]["sha256"] == locks[1]["sha256"] == hashlib.sha256(payload).hexdigest()
    finally:
        server.close()


def test_a_damaged_or_stale_part_file_never_becomes_the_trusted_checkpoint(shared, tmp_path):
    """Issue 16's download cases through `python -m probes.zoo download` as typed, for an entry without a
    published hash (trust on first use): 2,000 flipped bytes in the `.part` of a killed download, then resume ->
    one error line, nothing kept, nothing recorded; a `.part` larger than the remote file -> restart from zero.
    Each time the next run records the true file's hash."""
    golden = shared / "golden" / "dino_vit_full"
    payload = (golden / "checkpoint.pth").read_bytes()
    true_sha = hashlib.sha256(payload).hexdigest()
    arch = json.loads((golden / "meta.json").read_text())["timm_target"]["this_golden"]
    server = SlowServer(payload, pause=0.01)
    try:
        registry = tmp_path / "mine.yaml"
        registry.write_text(yaml.safe_dump({"models": {"unhashed_dino": {
            "method": "DINO", "file": "unhashed_dino_full.pth", "urls": [f"{server.url}/unhashed_dino_full.pth"],
            "format": "dino_full", "arch": {"model": arch["create_model"], "kwargs": arch["kwargs"]},
            "transform": {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "interpolation": "bicubic",
                          "resize": 73, "crop": 64}}}}))
        command = [sys.executable, "-m", "probes.zoo", "download", "unhashed_dino"]
        extra = {"PARTPROBE_REGISTRY": str(registry), "NO_PROXY": "127.0.0.1", "no_proxy": "127.0.0.1"}
        home = tmp_path / "home"
        folder = home / "checkpoints"
        part, final, lock = (folder / "unhashed_dino_full.pth.part", folder / "unhashed_dino_full.pth",
                             folder / "hashes.lock.json")
        kill_when(command, home, lambda: part.is_file() and part.stat().st_size > len(payload) // 2, **extra)
        data = bytearray(part.read_bytes())
        for i in range(1000, 3000):
            data[i] ^= 0xFF
        part.write_bytes(bytes(data))
        done = subprocess.run(command, cwd=REPO, env=env(home, **extra), capture_output=True, text=True, timeout=600)
        assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-3000:]
        assert "unhashed_dino_full.pth" in done.stderr and "differs from a complete new download" in done.stderr
        assert not final.exists() and not part.exists()
        assert "unhashed_dino_full.pth" not in (json.loads(lock.read_text()) if lock.exists() else {})
        run(command, home, **extra)
        assert final.read_bytes() == payload and json.loads(lock.read_text())["unhashed_dino_full.pth"]["sha256"] == true_sha
        checked = run([sys.executable, "-m", "probes.zoo", "verify", "--refetch"], home, **extra)   # every first-use hash
        assert "unhashed_dino:" in checked and "refetch: a complete new download" in checked

        stale = tmp_path / "stale"
        (stale / "checkpoints").mkdir(parents=True)
        (stale / "checkpoints" / "unhashed_dino_full.pth.part").write_bytes(payload + b"\0" * 4096)
        run(command, stale, **extra)
        assert (stale / "checkpoints" / "unhashed_dino_full.pth").read_bytes() == payload
        assert json.loads((stale / "checkpoints" / "hashes.lock.json").read_text())[
            "unhashed_dino_full.pth"]["sha256"] == true_sha
    finally:
        server.close()
