"""Checkpoints are untrusted input: a pickle that would run code is refused before it runs."""
from __future__ import annotations

import argparse
import os
import pickle

import pytest
import torch

from probes.encoders import load_encoder
from probes.zoo.checkpoint import load_checkpoint
from probes.zoo.errors import UnsafeCheckpointError


class Payload:
    """Unpickling this calls os.system, which writes the marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"echo pwned > '{self.marker}'",)


def test_the_payload_really_runs_code_when_unpickled_naively(tmp_path):
    marker = tmp_path / "naive"
    pickle.loads(pickle.dumps(Payload(marker)))
    assert marker.exists()  # so the test below can fail if the loader unpickled it


def test_code_carrying_checkpoint_is_refused_and_nothing_runs(tmp_path):
    marker = tmp_path / "marker"
    path = tmp_path / "evil.pth"
    torch.save({"model": {"cls_token": torch.zeros(1, 1, 8)}, "extra": Payload(marker)}, path)
    with pytest.raises(UnsafeCheckpointError) as err:
        load_checkpoint(path)
    assert "evil.pth" in str(err.value) and "system" in str(err.value)
    with pytest.raises(UnsafeCheckpointError):
        load_encoder(path, format="deit", arch="vit_small_patch16_224", device="cpu")
    assert not marker.exists()


def test_argparse_namespace_is_the_only_extra_allowed_object(tmp_path):
    path = tmp_path / "with_args.pth"
    torch.save({"teacher": {"w": torch.ones(2)}, "args": argparse.Namespace(arch="vit_small", epochs=800)}, path)
    obj = load_checkpoint(path)
    assert obj["args"].arch == "vit_small" and torch.equal(obj["teacher"]["w"], torch.ones(2))


def test_truncated_file_is_a_clear_error(tmp_path):
    path = tmp_path / "cut.pth"
    torch.save({"model": {"w": torch.ones(1000)}}, path)
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(Exception, match="cut.pth: not a readable torch checkpoint"):
        load_checkpoint(path)
