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
    sized = load_encoder("tiny", input_size=96, device="cpu")  # the same through input_size, transform included
    assert (sized.crop_size, sized.resize) == (96, 110)
    x96 = torch.randn(1, 3, 96, 96)
    assert torch.equal(sized.features(x96, "tokens"), big.features(x96, "tokens"))


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
    assert main(["download", "carp"]) == 2
    err = capsys.readouterr().err
    assert "carp-400ep-mc_checkpoint0399.pth" in err and "drive/folders/1xlDsn0JsD_tB11HA1qjdDJxVVy85pV2z" in err


def test_cli_verify_rehashes_and_checks_the_layout(tiny_registry, capsys):
    assert main(["verify", "tiny"]) == 0
    out = capsys.readouterr().out
    assert "matches" in out and "loads strictly" in out and "with projection head" in out
    (checkpoints_dir() / "tiny_dino_full.pth").write_bytes(b"not the file")
    assert main(["verify", "tiny"]) == 2
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


# ------------------------------------------------------------------------------------- the user's registry
def _user_file(tmp_path, models, name="mine.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump({"models": models}))
    return path


def test_user_registry_adds_entries_through_the_environment_and_the_option(tmp_path, monkeypatch, capsys):
    mine = _user_file(tmp_path, {"my_dino": {**GOOD, "file": "my_dino.pth", "aliases": ["mine"]}})
    monkeypatch.setenv("PARTPROBE_REGISTRY", str(mine))
    reg = load_registry()
    assert reg.get("mine").name == "my_dino" and reg.origins["my_dino"] == mine.resolve()
    assert reg.get("dino").name == "dino_vit_base16_full"  # the shipped entries stay
    monkeypatch.delenv("PARTPROBE_REGISTRY")
    with pytest.raises(RegistryError, match="unknown model 'mine'"):
        load_registry().get("mine")
    assert main(["--registry", str(mine), "info", "mine", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["name"] == "my_dino" and info["registry"] == str(mine.resolve())
    assert "PARTPROBE_REGISTRY" not in __import__("os").environ  # the option lasts for its command only
    assert main(["--registry", str(mine), "list"]) == 0
    assert f"+ {mine.resolve()}" in capsys.readouterr().out


@pytest.mark.parametrize("models,needle", [
    ({"dino_vit_base16_full": GOOD}, "entry 'dino_vit_base16_full': also defined in"),
    ({"x": {**GOOD, "aliases": ["dino"]}}, "alias 'dino' is already taken by 'dino_vit_base16_full' in"),
    ({"x": {**GOOD, "file": "vit-b-300ep.pth.tar"}}, "'vit-b-300ep.pth.tar' is also the file of 'mocov3_vit_base_300ep' in"),
])
def test_a_clash_with_the_shipped_registry_names_both_files(tmp_path, monkeypatch, models, needle):
    mine = _user_file(tmp_path, models)
    monkeypatch.setenv("PARTPROBE_REGISTRY", str(mine))
    with pytest.raises(RegistryError) as err:
        load_registry()
    message = str(err.value)
    assert needle in message and str(mine.resolve()) in message and str(registry.REGISTRY_PATH.resolve()) in message


def test_a_missing_user_registry_is_an_error(tmp_path, monkeypatch):
    monkeypatch.setenv("PARTPROBE_REGISTRY", str(tmp_path / "nope.yaml"))
    with pytest.raises(RegistryError, match="nope.yaml: user registry not found"):
        load_registry()


def test_the_shipped_registry_is_package_data_pointing_at_the_root_file():
    assert registry.REGISTRY_PATH.parent.name == "zoo"
    assert registry.REGISTRY_PATH.read_text() == (registry.REGISTRY_PATH.parents[2] / "checkpoints.yaml").read_text()
    assert load_registry().path == (registry.REGISTRY_PATH.parents[2] / "checkpoints.yaml").resolve()  # the file to edit


# ------------------------------------------------------------------------------------------- verify
@pytest.fixture
def unpublished_registry(tiny_registry, tmp_path, monkeypatch):
    """The tiny DINO entry without a published hash: its hash is trusted on first use."""
    data = yaml.safe_load(registry.REGISTRY_PATH.read_text())
    del data["models"]["tiny_dino"]["sha256"]
    path = tmp_path / "unpublished.yaml"
    path.write_text(yaml.safe_dump(data))
    monkeypatch.setattr(registry, "REGISTRY_PATH", path)
    return tiny_registry


def _lock():
    path = checkpoints_dir() / "hashes.lock.json"
    return json.loads(path.read_text()) if path.exists() else {}


def test_verify_records_a_hash_only_after_the_layout_check(unpublished_registry, shared, capsys):
    cached = checkpoints_dir() / "tiny_dino_full.pth"
    shutil.copy(shared / "golden/deit_vit/checkpoint.pth", cached)  # a real checkpoint, the wrong file
    assert main(["verify", "tiny"]) == 2
    assert "format 'dino_full' expects a dict with a 'teacher' entry" in capsys.readouterr().err
    assert "tiny_dino_full.pth" not in _lock()
    shutil.copy(unpublished_registry / "checkpoint.pth", cached)  # the right file is then accepted
    assert main(["verify", "tiny"]) == 0
    assert "loads strictly" in capsys.readouterr().out
    assert _lock()["tiny_dino_full.pth"]["trust"] == "first-use"


def test_verify_says_how_to_replace_a_wrong_lock_entry_and_reset_lock_does(unpublished_registry, shared, capsys):
    cached = checkpoints_dir() / "tiny_dino_full.pth"
    assert main(["verify", "tiny"]) == 0
    good = _lock()["tiny_dino_full.pth"]["sha256"]
    # a user replaces the file by a retrained one: the recorded hash now refuses it, and says what to do
    obj = torch.load(cached, weights_only=False)
    obj["teacher"]["backbone.cls_token"] = obj["teacher"]["backbone.cls_token"] + 1
    torch.save(obj, cached)
    assert main(["verify", "tiny"]) == 2
    err = capsys.readouterr().err
    assert "recorded in" in err and "python -m probes.zoo verify tiny_dino --reset-lock" in err
    assert "delete the key 'tiny_dino_full.pth' from" in err
    assert main(["verify", "tiny", "--reset-lock"]) == 0
    out = capsys.readouterr().out
    assert f"forgot sha256 {good}" in out and "loads strictly" in out
    assert _lock()["tiny_dino_full.pth"]["sha256"] == hashlib.sha256(cached.read_bytes()).hexdigest() != good


def test_verify_refetch_compares_with_a_new_download(unpublished_registry, monkeypatch, capsys):
    from probes.zoo import download

    sha = hashlib.sha256((checkpoints_dir() / "tiny_dino_full.pth").read_bytes()).hexdigest()
    monkeypatch.setattr(download, "fresh_sha256", lambda entry, progress=True: (sha, entry.urls[0]))
    assert main(["verify", "tiny", "--refetch"]) == 0
    assert "a complete new download of https://example.org/tiny_dino_full.pth has the same sha256" in capsys.readouterr().out
    monkeypatch.setattr(download, "fresh_sha256", lambda entry, progress=True: ("0" * 64, entry.urls[0]))
    assert main(["verify", "tiny", "--refetch"]) == 2
    assert f"the cached file (sha256 {sha}) differs from a new download" in capsys.readouterr().err


def test_verify_takes_a_file_with_format_and_arch(shared, capsys):
    golden = shared / "golden/mocov3_vit"
    target = json.loads((golden / "meta.json").read_text())["timm_target"]["this_golden"]
    path = str(golden / "checkpoint.pth")
    assert main(["verify", path, "--arch", json.dumps({"model": target["create_model"], "kwargs": target["kwargs"]})]) == 0
    out = capsys.readouterr().out
    assert hashlib.sha256((golden / "checkpoint.pth").read_bytes()).hexdigest() in out
    assert "'mocov3' converts and loads strictly" in out and "num_heads=8" in out and "with projection head" in out
    assert main(["verify", path, "--format", "mocov3", "--arch-kwargs", '{"num_heads": 8}']) == 0
    assert "img_size=64" in capsys.readouterr().out  # the rest inferred from the tensors
    assert main(["verify", path, "--format", "deit"]) == 2
    assert "expects a dict with a 'model' entry" in capsys.readouterr().err
    assert not (checkpoints_dir() / "hashes.lock.json").exists()  # a user's file is never recorded


# ------------------------------------------------------------------------------------------- convert
def test_convert_writes_files_with_the_umasks_permissions(shared, tmp_path):
    import os

    golden = shared / "golden/dino_vit_full"
    target = json.loads((golden / "meta.json").read_text())["timm_target"]["this_golden"]
    arch = json.dumps({"model": target["create_model"], "kwargs": target["kwargs"]})
    for umask, mode in ((0o022, 0o644), (0o077, 0o600), (0o002, 0o664)):
        previous = os.umask(umask)
        try:
            out = tmp_path / f"u{umask:o}.safetensors"
            assert main(["convert", str(golden / "checkpoint.pth"), "--arch", arch, "--out", str(out)]) == 0
        finally:
            os.umask(previous)
        assert out.stat().st_mode & 0o777 == mode
        assert (tmp_path / f"u{umask:o}.projection.safetensors").stat().st_mode & 0o777 == mode


@pytest.mark.parametrize("case", ["mocov3_vit", "dino_vit_full"])
def test_converted_file_loads_back_with_its_projection_sidecar(shared, tmp_path, case):
    golden = shared / "golden" / case
    target = json.loads((golden / "meta.json").read_text())["timm_target"]["this_golden"]
    out = tmp_path / "model.safetensors"
    assert main(["convert", str(golden / "checkpoint.pth"), "--arch-kwargs",
                 json.dumps({"num_heads": target["kwargs"]["num_heads"]}), "--out", str(out)]) == 0
    enc = load_encoder(out, format="timm", device="cpu")  # no arch: the file says what it was converted to
    assert enc.has_projection and enc.method == {"mocov3_vit": "MoCo v3", "dino_vit_full": "DINO"}[case]
    x = torch.load(golden / "input.pt", weights_only=True)
    expected = torch.load(golden / "expected.pt", weights_only=True)
    out_feats = enc.extract(x, ["tokens", "projection"])
    assert (out_feats["tokens"] - expected["tokens"]).abs().max() <= TOL
    assert (out_feats["projection"] - expected["projection"]).abs().max() <= TOL
    (tmp_path / "model.projection.safetensors").unlink()
    assert not load_encoder(out, format="timm", device="cpu").has_projection
