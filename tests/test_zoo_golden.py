"""Every golden case of ../shared/golden goes through the public loading path and reproduces the
ORIGINAL model's outputs (expected.pt, computed by each method's own code) to 1e-5."""
from __future__ import annotations

import json

import pytest
import torch

from probes.encoders import load_encoder
from probes.zoo.checkpoint import load_checkpoint
from probes.zoo.errors import CheckpointError

TOL = 1e-5

# golden case -> container format of the released file it imitates
CASES = {
    "deit_vit": "deit",
    "mocov3_vit": "mocov3",
    "dino_vit_backbone": "dino",
    "dino_vit_full": "dino_full",
    "ibot_vit_teacher": "ibot",
    "beit_pt": "beit",
    "mae_encoder": "mae",
    "mae_full": "mae",
    "cae_full": "cae",
}


def golden(shared, case):
    folder = shared / "golden" / case
    meta = json.loads((folder / "meta.json").read_text())
    target = meta["timm_target"]["this_golden"]
    arch = {"model": target["create_model"], "kwargs": target["kwargs"]}
    x = torch.load(folder / "input.pt", weights_only=True)
    expected = torch.load(folder / "expected.pt", weights_only=True)
    return folder, meta, arch, x, expected


def max_diff(a, b):
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a - b).abs().max().item()


def all_outputs(enc, x, expected):
    names = ["tokens", "cls", "patch_mean"] + [k for k in ("projection", "projection_patch") if k in expected]
    out = enc.extract(x, names)
    for k in range(enc.num_blocks):
        out[f"block{k}"] = enc.features(x, "block", block=k)
    return out


@pytest.mark.parametrize("case", CASES)
def test_golden_reproduces_original_model(shared, case):
    folder, meta, arch, x, expected = golden(shared, case)
    enc = load_encoder(folder / "checkpoint.pth", format=CASES[case], arch=arch, device="cpu")
    assert enc.num_blocks == meta["architecture"]["depth"]
    assert enc.has_projection == ("projection" in expected)
    out = all_outputs(enc, x, expected)
    diffs = {name: max_diff(out[name], expected[name]) for name in ("tokens", "cls", "patch_mean")}
    diffs.update({f"block{k}": max_diff(out[f"block{k}"], expected["blocks"][k]) for k in expected["blocks"]})
    for name in ("projection", "projection_patch"):
        if name in expected:
            diffs[name] = max_diff(out[name], expected[name])
    assert len(diffs) >= 3 + meta["architecture"]["depth"]
    assert max(diffs.values()) <= TOL, diffs


def test_cae_golden_also_loads_into_timm_beit(shared):
    folder, meta, _, x, expected = golden(shared, "cae_full")
    target = meta["timm_target"]["this_golden"]
    arch = {"model": target["alternative_create_model"], "kwargs": target["alternative_kwargs"]}
    enc = load_encoder(folder / "checkpoint.pth", format="cae", arch=arch, device="cpu")
    assert type(enc.model).__name__ == "Beit"
    assert max_diff(enc.features(x, "tokens"), expected["tokens"]) <= TOL


# -------------------------------------------------------------- the wrong branch is not what we load
def test_mocov3_loads_base_encoder_not_momentum_encoder(shared, tmp_path):
    folder, _, arch, x, expected = golden(shared, "mocov3_vit")
    enc = load_encoder(folder / "checkpoint.pth", format="mocov3", arch=arch, device="cpu")
    out = enc.extract(x, ["tokens", "projection"])
    wrong = expected["momentum_encoder"]
    assert max_diff(out["tokens"], wrong["tokens"]) > 0.1
    assert max_diff(out["projection"], wrong["projection"]) > 0.1
    # The same loader reproduces the momentum branch once it sits under the base_encoder prefix:
    # the branch choice, not luck, decides what is loaded.
    obj = load_checkpoint(folder / "checkpoint.pth")
    swapped = {k.replace("module.momentum_encoder.", "module.base_encoder."): v
               for k, v in obj["state_dict"].items() if not k.startswith("module.base_encoder.")}
    torch.save({"state_dict": swapped}, tmp_path / "momentum.pth")
    swapped_enc = load_encoder(tmp_path / "momentum.pth", format="mocov3", arch=arch, device="cpu")
    assert max_diff(swapped_enc.features(x, "tokens"), wrong["tokens"]) <= TOL
    assert max_diff(swapped_enc.features(x, "projection"), wrong["projection"]) <= TOL


def test_dino_full_loads_teacher_not_student(shared, tmp_path):
    folder, _, arch, x, expected = golden(shared, "dino_vit_full")
    enc = load_encoder(folder / "checkpoint.pth", format="dino_full", arch=arch, device="cpu")
    out = enc.extract(x, ["tokens", "cls", "projection"])
    student = expected["student"]
    for name in ("tokens", "cls", "projection"):
        assert max_diff(out[name], student[name]) > 0.01, name
    obj = load_checkpoint(folder / "checkpoint.pth")
    torch.save({"teacher": obj["student"], "student": obj["teacher"]}, tmp_path / "swapped.pth")
    swapped = load_encoder(tmp_path / "swapped.pth", format="dino_full", arch=arch, device="cpu")
    assert max_diff(swapped.features(x, "tokens"), student["tokens"]) <= TOL
    assert max_diff(swapped.features(x, "projection"), student["projection"]) <= TOL


def test_dino_backbone_file_is_the_full_checkpoints_teacher(shared):
    _, _, arch, x, _ = golden(shared, "dino_vit_backbone")
    backbone = load_encoder(shared / "golden/dino_vit_backbone/checkpoint.pth", format="dino", arch=arch, device="cpu")
    full = load_encoder(shared / "golden/dino_vit_full/checkpoint.pth", format="dino_full", arch=arch, device="cpu")
    assert torch.equal(backbone.features(x, "tokens"), full.features(x, "tokens"))


def test_cae_loads_encoder_not_alignment_encoder(shared, tmp_path):
    folder, _, arch, x, expected = golden(shared, "cae_full")
    enc = load_encoder(folder / "checkpoint.pth", format="cae", arch=arch, device="cpu")
    assert max_diff(enc.features(x, "tokens"), expected["alignment_encoder"]["tokens"]) > 0.1
    obj = load_checkpoint(folder / "checkpoint.pth")
    # Only the alignment encoder, under the encoder prefix: a substring-matching converter would have
    # mixed the two ('alignment_encoder.' contains 'encoder.').
    moved = {k[len("alignment_"):]: v for k, v in obj["model"].items() if k.startswith("alignment_encoder.")}
    torch.save({"model": moved}, tmp_path / "alignment.pth")
    swapped = load_encoder(tmp_path / "alignment.pth", format="cae", arch=arch, device="cpu")
    assert max_diff(swapped.features(x, "tokens"), expected["alignment_encoder"]["tokens"]) <= TOL


def test_mocov3_wrong_head_count_loads_strictly_but_gives_wrong_features(shared):
    """Why heads come from the registry: shapes are identical for 4 and 8 heads."""
    folder, _, arch, x, expected = golden(shared, "mocov3_vit")
    wrong = {"model": arch["model"], "kwargs": {**arch["kwargs"], "num_heads": 4}}
    enc = load_encoder(folder / "checkpoint.pth", format="mocov3", arch=wrong, device="cpu")
    assert max_diff(enc.features(x, "tokens"), expected["tokens"]) > 0.1


def test_golden_with_a_missing_tensor_is_refused_naming_the_key(shared, tmp_path):
    folder, _, arch, _, _ = golden(shared, "deit_vit")
    obj = load_checkpoint(folder / "checkpoint.pth")
    del obj["model"]["blocks.2.mlp.fc1.bias"]
    obj["model"]["blocks.0.attn.qkv.weight"] = obj["model"]["blocks.0.attn.qkv.weight"][:-1]
    obj["model"]["extra.weight"] = torch.zeros(3)
    torch.save(obj, tmp_path / "broken.pth")
    with pytest.raises(CheckpointError) as err:
        load_encoder(tmp_path / "broken.pth", format="deit", arch=arch, device="cpu")
    message = str(err.value)
    assert "broken.pth" in message
    assert "missing: blocks.2.mlp.fc1.bias" in message
    assert "unexpected: extra.weight" in message
    assert "blocks.0.attn.qkv.weight: file (191, 64) vs model (192, 64)" in message


def test_mocov3_file_of_unknown_size_without_num_heads_is_refused(shared):
    folder, _, arch, _, _ = golden(shared, "mocov3_vit")
    no_heads = {"model": arch["model"], "kwargs": {k: v for k, v in arch["kwargs"].items() if k != "num_heads"}}
    with pytest.raises(CheckpointError, match="no known head count"):
        load_encoder(folder / "checkpoint.pth", format="mocov3", arch=no_heads, device="cpu")
