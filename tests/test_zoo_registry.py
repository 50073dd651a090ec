"""The registry and the CLI: a model added with one YAML entry loads from the cache, validation names
the broken field, and `python -m probes.zoo list | info | download | verify | detect | convert` work."""
from __future__ import annotations

import hashlib
import json
import shutil

import pytest
import torch
import yaml

from probes.encoders import load_encoder
from probes.paths import checkpoints_dir
from probes.zoo import registry
from probes.zoo.__main__ import main
from probes.zoo.errors import OfflineError, RegistryError
from probes.zoo.registry import load_registry, parse_entry

TOL = 1e-5


@pytest.fixture
def tiny_registry(shared, tmp_path, monkeypatch):
    """A registry with one entry for the tiny DINO golden, its file already in the cache."""
    golden = shared / "golden/dino_vit_full"
    meta = json.loads((golden / "meta.json").read_text())["timm_target"]["this_golden"]
    data = {"models": {"tiny_dino": {
        "aliases": ["tiny"], "method": "DINO", "epochs": 1, "file": "tiny_dino_full.pth",
        "urls": ["https://example.org/tiny_dino_full.pth"],
        "sha256": hashlib.sha256((golden / "checkpoint.pth").read_bytes()).hexdigest(),
        "format": "dino_full", "arch": {"model": meta["create_model"], "kwargs": meta["kwargs"]},
        "transform": {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "interpolation": "bicubic",
                      "resize": 256, "crop": 224},
        "projection": {"kind": "dino_head", "out_dim": 256},
    }}}
    path = tmp_path / "checkpoints.yaml"
    path.write_text(yaml.safe_dump(data))
    monkeypatch.setattr(registry, "REGISTRY_PATH", path)
    checkpoints_dir().mkdir(parents=True, exist_ok=True)
    shutil.copy(golden / "checkpoint.pth", checkpoints_dir() / "tiny_dino_full.pth")
    return golden


def test_one_yaml_entry_is_enough_to_load_a_model(tiny_registry, monkeypatch):
    monkeypatch.setenv("PARTPROBE_OFFLINE", "1")  # the cached file must be used as is
    enc = load_encoder("tiny", device="cpu")
    x = torch.load(tiny_registry / "input.pt", weights_only=True)
    expected = torch.load(tiny_registry / "expected.pt", weights_only=True)
    assert (enc.features(x, "tokens") - expected["tokens"]).abs().max() <= TOL
    assert (enc.features(x, "projection") - expected["projection"]).abs().max() <= TOL
    info = enc.info()
    assert (info["name"], info["format"]) == ("tiny_dino", "dino_full")
    assert info["source"] == "https://example.org/tiny_dino_full.pth"
    assert info["checkpoint_sha256"] == load_registry().get("tiny").sha256
    # registry kwargs can be overridden per call (here: another resolution)
    big = load_encoder("tiny", arch={"kwargs": {"img_size": 96}}, device="cpu")
    assert big.features(torch.randn(1, 3, 96, 96), "tokens").shape == (1, 37, 64)


def test_registry_entry_that_is_not_cached_says_where_to_put_it(monkeypatch):
    monkeypatch.setenv("PARTPROBE_OFFLINE", "1")
    with pytest.raises(OfflineError) as err:
        load_encoder("dino")
    message = str(err.value)
    assert "dino_vitbase16_pretrain_full_checkpoint.pth" in message
    assert str(checkpoints_dir() / "dino_vitbase16_pretrain_full_checkpoint.pth") in message
    assert "https://dl.fbaipublicfiles.com/dino/dino_vitbase16_pretrain/" in message


def test_unknown_name_lists_what_exists():
    with pytest.raises(RegistryError, match="unknown model 'dinov2'.*aliases: .*carp"):
        load_encoder("dinov2")


GOOD = {"method": "X", "file": "x.pth", "urls": ["https://e.org/x.pth"], "format": "dino",
        "arch": {"model": "vit_small_patch16_224", "kwargs": {"num_heads": 6}},
        "transform": {"mean": [0.5] * 3, "std": [0.5] * 3, "interpolation": "bicubic", "resize": 256, "crop": 224}}


@pytest.mark.parametrize("change,field", [
    ({"arch": {"model": "vit_small_patch16_224", "kwargs": {}}}, "arch.kwargs.num_heads"),
    ({"transform": {**GOOD["transform"], "interpolation": "nearest"}}, "transform.interpolation"),
    ({"transform": {**GOOD["transform"], "mean": [0.5, 0.5]}}, "transform.mean"),
    ({"format": "dinov2"}, "format"),
    ({"sha256": "abc"}, "sha256"),
    ({"urls": []}, "urls"),
    ({"urls": ["ftp://e.org/x.pth"]}, "urls"),
])
def test_registry_validation_names_entry_and_field(change, field):
    with pytest.raises(RegistryError) as err:
        parse_entry("x", {**GOOD, **change}, "checkpoints.yaml")
    assert f"checkpoints.yaml, entry 'x', field '{field}'" in str(err.value)


def test_shipped_registry_is_valid_and_names_are_unique():
    reg = load_registry()
    files = [e.file for e in reg if e.file]
    assert len(files) == len(set(files)) and len(reg.entries) >= 33


# ------------------------------------------------------------------------------------------------ CLI
def test_cli_list_and_info(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for alias in ("deit", "mocov3", "dino", "ibot", "beit", "mae", "cae", "mec", "carp", "colorstats", "pixels"):
        assert f" {alias} " in out or out.startswith(alias) or f"\n{alias} " in out
    assert main(["info", "mocov3", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["name"] == "mocov3_vit_base_300ep" and info["arch"]["kwargs"]["num_heads"] == 12
    assert info["transform"]["interpolation"] == "bilinear" and info["cache_path"].startswith(str(checkpoints_dir()))


def test_cli_download_of_a_drive_folder_file_explains_the_manual_step(capsys):
    assert main(["download", "carp"]) == 1
    err = capsys.readouterr().err
    assert "carp-400ep-mc_checkpoint0399.pth" in err and "drive/folders/1xlDsn0JsD_tB11HA1qjdDJxVVy85pV2z" in err


def test_cli_verify_rehashes_and_checks_the_layout(tiny_registry, capsys):
    assert main(["verify", "tiny"]) == 0
    out = capsys.readouterr().out
    assert "matches" in out and "loads strictly" in out and "with projection head" in out
    (checkpoints_dir() / "tiny_dino_full.pth").write_bytes(b"not the file")
    assert main(["verify", "tiny"]) == 1
    assert "!= published" in capsys.readouterr().err


def test_cli_detect_and_convert_roundtrip(shared, tmp_path, capsys):
    golden = shared / "golden/dino_vit_full"
    assert main(["detect", str(golden / "checkpoint.pth")]) == 0
    assert capsys.readouterr().out.strip() == "dino_full"
    target = json.loads((golden / "meta.json").read_text())["timm_target"]["this_golden"]
    arch = {"model": target["create_model"], "kwargs": target["kwargs"]}
    out = tmp_path / "model.safetensors"
    assert main(["convert", str(golden / "checkpoint.pth"), "--format", "auto", "--arch", json.dumps(arch),
                 "--out", str(out)]) == 0
    from safetensors.torch import load_file

    head = load_file(str(tmp_path / "model.projection.safetensors"))
    assert "last_layer.weight" in head and "last_layer.weight_g" not in head  # weight norm folded
    enc = load_encoder(out, format="timm", arch=arch, device="cpu")
    x = torch.load(golden / "input.pt", weights_only=True)
    expected = torch.load(golden / "expected.pt", weights_only=True)
    assert (enc.features(x, "tokens") - expected["tokens"]).abs().max() <= TOL
