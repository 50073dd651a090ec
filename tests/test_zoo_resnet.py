"""ResNet-50 releases (MoCo v3, DINO backbone and full, MEC, CARP) by the manifest recipe of
golden/README.md section 7: fake file -> converter -> timm resnet50, against torchvision's resnet50
loaded with the README's own prefix rule."""
from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from probes.encoders import load_encoder
from probes.zoo.build import load_model
from probes.zoo.manifest import fake_checkpoint, read_manifest

TOL = 1e-5

# manifest, format, (container key, prefix kept, prefix dropped) of the right branch, and of a wrong one
CASES = {
    "mocov3_r50": ("r-50-100ep.pth.tar", "mocov3", ("state_dict", "module.base_encoder.", "fc."),
                   ("state_dict", "module.momentum_encoder.", "fc.")),
    "dino_r50_backbone": ("dino_resnet50_pretrain.pth", "dino", (None, "", None), None),
    "dino_r50_full": ("dino_resnet50_pretrain_full_checkpoint.pth", "dino_full",
                      ("teacher", "module.backbone.", None), ("student", "module.backbone.", None)),
    "mec_r50": ("mec_resnet50_100ep_pretrain.pth.tar", "mec", ("state_dict", "module.encoder.", "fc."),
                ("state_dict", "module.teacher.", "fc.")),
    "carp_r50": ("carp_carp-400ep-mc_checkpoint0399.pth", "carp",
                 ("teacher", "module.backbone.", None), ("student", "module.backbone.", None)),
}


def reference_features(obj, branch, x):
    """torchvision resnet50 with fc=Identity, loaded strictly with the README's rule (step 4)."""
    key, keep, drop = branch
    sd = obj if key is None else obj[key]
    sd = {k[len(keep):]: v for k, v in sd.items() if k.startswith(keep)}
    if drop:
        sd = {k: v for k, v in sd.items() if not k.startswith(drop)}
    assert len(sd) == 318
    with torch.device("meta"):  # no random init: every tensor comes from the state dict
        model = torchvision.models.resnet50()
    model.fc = nn.Identity()
    model.load_state_dict(sd, strict=True, assign=True)
    with torch.no_grad():
        return model.eval()(x)


@pytest.fixture(scope="module")
def x():
    return torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(7))


@pytest.mark.parametrize("case", CASES)
def test_resnet_release_matches_torchvision_reference(shared, case, x):
    manifest_name, fmt, right, wrong = CASES[case]
    # Recipe values for the branch under test (projector included); zeros elsewhere keep the test fast.
    obj = fake_checkpoint(read_manifest(shared / "golden/manifests" / f"{manifest_name}.json"), fill="recipe",
                          recipe_only=lambda group, key: group == (right[0] or "<file>") and key.startswith(right[1])
                          and not key.startswith(right[1] + "head."))
    expected = reference_features(obj, right, x)
    loaded = load_model(obj, fmt, None, where=case)  # arch inferred from the tensors: resnet50
    assert loaded.arch.model == "resnet50"
    with torch.no_grad():
        ours = loaded.model(x)
    assert ours.shape == (2, 2048)
    assert expected.abs().mean() > 0.5  # non-trivial features
    assert (ours - expected).abs().max().item() <= TOL
    if wrong is not None:  # the other branch (EMA / student) holds different tensors, and we did not load them
        key, keep, _ = wrong
        assert not torch.equal(loaded.model.conv1.weight, obj[key][keep + "conv1.weight"])
        assert torch.equal(loaded.model.conv1.weight, obj[right[0]][right[1] + "conv1.weight"])
    if fmt == "mocov3":
        check_mocov3_projector(obj, loaded, ours)


def test_resnet_release_through_a_file_and_the_encoder(shared, tmp_path, x):
    """One ResNet case end to end: saved file -> load_encoder (format auto-detected) -> features."""
    obj = fake_checkpoint(read_manifest(shared / "golden/manifests/dino_resnet50_pretrain.pth.json"), fill="recipe")
    torch.save(obj, tmp_path / "dino_resnet50_pretrain.pth")
    enc = load_encoder(tmp_path / "dino_resnet50_pretrain.pth", device="cpu")
    assert (enc.format, enc.kind, enc.embed_dim, enc.num_blocks) == ("dino", "resnet", 2048, 4)
    out = enc.extract(x, ["cls", "patch_mean", "patch_map", "tokens", "block"], block=1)
    expected = reference_features(obj, CASES["dino_r50_backbone"][2], x)
    assert (out["cls"] - expected).abs().max().item() <= TOL
    assert torch.equal(out["cls"], out["patch_mean"])
    assert out["patch_map"].shape == (2, 2048, 2, 2)
    assert torch.allclose(out["patch_map"].mean(dim=(2, 3)), out["cls"], atol=1e-6)
    assert out["tokens"].shape == (2, 1 + 4, 2048) and torch.equal(out["tokens"][:, 0], out["cls"])
    assert out["block"].shape == (2, 512, 8, 8)  # layer2 at stride 8


def check_mocov3_projector(obj, loaded, pooled):
    """The 2-layer projector (fc.*) on the pooled feature, BatchNorm in eval mode with its stored statistics,
    against the formula written out by hand."""
    sd = obj["state_dict"]
    p = "module.base_encoder.fc."
    with torch.no_grad():
        h = pooled @ sd[p + "0.weight"].T
        h = (h - sd[p + "1.running_mean"]) / torch.sqrt(sd[p + "1.running_var"] + 1e-5)
        h = h * sd[p + "1.weight"] + sd[p + "1.bias"]
        h = torch.relu(h) @ sd[p + "3.weight"].T
        h = (h - sd[p + "4.running_mean"]) / torch.sqrt(sd[p + "4.running_var"] + 1e-5)  # affine=False
        assert (loaded.projection(pooled) - h).abs().max().item() <= TOL
    assert loaded.projection(pooled).shape == (2, 256)
