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


# --------------------------------------------------------------------- damaged and wrong files: one clear error
def _golden_model(shared):
    return torch.load(shared / "golden/deit_vit/checkpoint.pth", weights_only=True)


def _deit_arch(shared):
    import json

    target = json.loads((shared / "golden/deit_vit/meta.json").read_text())["timm_target"]["this_golden"]
    return {"model": target["create_model"], "kwargs": target["kwargs"]}


def _write_bad(kind, tmp_path, shared):
    """(path, format, words the message must hold) for one kind of bad input."""
    from safetensors.torch import save_file

    obj = _golden_model(shared)
    sd = obj["model"]
    if kind == "truncated_zip":
        path = tmp_path / "cut.pth"
        torch.save(obj, path)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
        return path, "deit", ["cut.pth", "not a readable torch checkpoint"]
    if kind == "truncated_legacy_pickle":
        path = tmp_path / "cut_legacy.pth"
        torch.save(obj, path, _use_new_zipfile_serialization=False)
        path.write_bytes(path.read_bytes()[:300])
        return path, "deit", ["cut_legacy.pth", "not a readable torch checkpoint"]
    if kind == "damaged_pickle":
        path = tmp_path / "damaged.pth"
        path.write_bytes(b"\x80\x02" + b"hello world, not a pickle" * 20)  # raised a bare KeyError before
        return path, "deit", ["damaged.pth", "not a readable torch checkpoint"]
    if kind == "truncated_safetensors":
        path = tmp_path / "cut.safetensors"
        save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
        path.write_bytes(path.read_bytes()[:-1000])
        return path, "timm", ["cut.safetensors", "not a readable safetensors file"]
    if kind == "text_as_safetensors":
        path = tmp_path / "notes.safetensors"
        path.write_text("these are my notes, not weights\n" * 20)
        return path, "timm", ["notes.safetensors", "found a text file"]
    if kind == "text_as_pth":
        path = tmp_path / "notes.pth"
        path.write_text("hello\n" * 50)  # raised KeyError: 101 before
        return path, "deit", ["notes.pth", "found a text file"]
    if kind == "html_page":
        path = tmp_path / "download.pth"
        path.write_text("<!DOCTYPE html><html><head><title>404</title></head><body>Not found</body></html>")
        return path, "deit", ["download.pth", "found an HTML page"]
    if kind == "zip_of_something_else":
        import zipfile
        path = tmp_path / "archive.pth"
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("readme.txt", "hello")
        return path, "deit", ["archive.pth", "a zip archive of something else", "readme.txt"]
    if kind == "empty":
        path = tmp_path / "empty.pth"
        path.write_bytes(b"")
        return path, "deit", ["empty.pth", "found an empty file"]
    if kind == "int32_pth":
        path = tmp_path / "int32.pth"
        torch.save({"model": {k: (v * 100).to(torch.int32) for k, v in sd.items()}}, path)
        return path, "deit", ["int32.pth", "tensor 'model/", "is torch.int32 (expected a floating-point tensor"]
    if kind == "int32_safetensors":
        path = tmp_path / "int32.safetensors"
        save_file({k: (v * 100).to(torch.int32).contiguous() for k, v in sd.items() if not k.startswith("head.")},
                  str(path))
        return path, "timm", ["int32.safetensors", "is torch.int32 (expected a floating-point tensor"]
    if kind == "nan_weights":
        path = tmp_path / "nan.pth"
        sd["blocks.1.mlp.fc1.weight"][3, :5] = float("nan")
        torch.save(obj, path)
        return path, "deit", ["nan.pth", "tensor 'model/blocks.1.mlp.fc1.weight' holds 5 NaN/inf value(s)"]
    if kind == "inf_weights_safetensors":
        path = tmp_path / "inf.safetensors"
        body = {k: v.contiguous() for k, v in sd.items() if not k.startswith("head.")}
        body["norm.weight"][0] = float("inf")
        save_file(body, str(path))
        return path, "timm", ["inf.safetensors", "tensor 'norm.weight' holds 1 NaN/inf value(s)"]
    if kind == "non_string_keys":
        path = tmp_path / "int_keys.pth"
        torch.save({"model": {101: torch.zeros(3), **sd}}, path)
        return path, "deit", ["int_keys.pth", "expected a non-empty dict of tensors"]
    raise ValueError(kind)


BAD = ["truncated_zip", "truncated_legacy_pickle", "damaged_pickle", "truncated_safetensors", "text_as_safetensors",
       "text_as_pth", "html_page", "zip_of_something_else", "empty", "int32_pth", "int32_safetensors", "nan_weights",
       "inf_weights_safetensors", "non_string_keys"]


@pytest.mark.parametrize("kind", BAD)
def test_bad_checkpoint_is_a_checkpoint_error_naming_file_and_tensor(shared, tmp_path, kind, capsys):
    from probes.zoo.__main__ import main
    from probes.zoo.errors import CheckpointError

    path, fmt, words = _write_bad(kind, tmp_path, shared)
    with pytest.raises(CheckpointError) as err:
        load_encoder(path, format=fmt, arch=_deit_arch(shared), device="cpu")
    assert type(err.value) is CheckpointError  # damage, not a refused object
    for word in words:
        assert word in str(err.value), (word, str(err.value))
    # the command line says the same in one line, no traceback
    assert main(["verify", str(path), "--format", fmt, "--arch", __import__("json").dumps(_deit_arch(shared))]) == 2
    message = capsys.readouterr().err
    assert message.startswith("python -m probes.zoo: error: ") and str(path) in message and "Traceback" not in message


def test_a_torch_file_named_safetensors_is_read_by_its_content(shared, tmp_path):
    path = tmp_path / "actually_torch.safetensors"
    torch.save(_golden_model(shared), path)
    assert set(load_checkpoint(path)) == {"model"}
