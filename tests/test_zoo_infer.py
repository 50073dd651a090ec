"""Architecture inference: ViTs of sizes no registry entry has, in the released containers of the goldens,
convert with `python -m probes.zoo convert` and no --arch, and reproduce a reference model built with the
known configuration. Heads come from the method's rule or BEiT's relative tables; what the tensors leave
open is asked for by name."""
from __future__ import annotations

import json
import re

import pytest
import torch
from safetensors import safe_open
from timm.models.beit import Beit
from timm.models.vision_transformer import VisionTransformer

from probes.encoders import load_encoder
from probes.zoo.__main__ import main
from probes.zoo.build import heads_of, infer_arch
from probes.zoo.checkpoint import load_checkpoint
from probes.zoo.errors import CheckpointError
from probes.zoo.formats import detect_format
from probes.zoo.posembed import mae_sincos_pos_embed, mocov3_sincos_pos_embed

TOL = 1e-5


def reference(cls, img_size, patch_size, embed_dim, depth, num_heads, seed, sincos=None, **kwargs):
    """A timm model of the given configuration with random weights (fixed sin-cos table where the method has one)."""
    torch.manual_seed(seed)
    model = cls(img_size=img_size, patch_size=patch_size, embed_dim=embed_dim, depth=depth, num_heads=num_heads,
                global_pool="token", **kwargs).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.randn_like(p) * (0.5 if name.endswith("relative_position_bias_table") else 0.05)
                    + (1.0 if name.endswith(("norm1.weight", "norm2.weight", "norm.weight")) else 0.0))
        if sincos is not None:
            model.pos_embed.copy_(sincos((img_size // patch_size,) * 2, embed_dim))
    return model


def pattern(keys):
    """Key names with block indices folded: the container layout regardless of depth."""
    return {re.sub(r"blocks\.\d+\.", "blocks.N.", k) for k in keys}


NOT_ENCODER = ("head.", "lm_head.", "mask_token", "decoder_")  # projector, tokenizer head, MIM decoder


def with_encoder(shared, case, container, prefix, encoder_sd, keep_out=NOT_ENCODER):
    """The golden's released container with its encoder replaced by ``encoder_sd`` (under ``prefix``); every
    other entry (heads, decoders, EMA copies, optimizer state) stays as the golden has it."""
    obj = load_checkpoint(shared / "golden" / case / "checkpoint.pth")
    sd = obj[container]
    old = {k for k in sd if k.startswith(prefix) and not k[len(prefix):].startswith(keep_out)}
    new = {prefix + k: v.detach().clone() for k, v in encoder_sd.items()}
    assert pattern(old) == pattern(new), pattern(old) ^ pattern(new)  # the golden's layout, another size
    obj[container] = {**{k: v for k, v in sd.items() if k not in old}, **new}
    return obj


def beit_state(model):
    """A timm Beit's tensors as BEiT's own code saves them (the relative position index is persistent there)."""
    sd = dict(model.state_dict())
    sd.update({k: b for k, b in model.named_buffers() if k.endswith("relative_position_index")})
    return sd


def convert_cli(path, out, *extra):
    return main(["convert", str(path), "--out", str(out), *extra])


def check_against(reference_model, enc, img_size, heads):
    x = torch.randn(2, 3, img_size, img_size, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = reference_model.forward_features(x)
    assert heads_of(enc.model) == heads
    assert (enc.features(x, "tokens") - expected).abs().max().item() <= TOL
    assert enc.crop_size == img_size  # the method's transform at the size the file was trained for


CASES = {
    # case: golden, container key, prefix, format, reference class, config, extra kwargs, heads expected
    "deit_tiny_p8": ("deit_vit", "model", "", "deit", VisionTransformer,
                     dict(img_size=40, patch_size=8, embed_dim=192, depth=3, num_heads=3, mlp_ratio=2.0, num_classes=1000),
                     None, 3),
    "mocov3_small": ("mocov3_vit", "state_dict", "module.base_encoder.", "mocov3", VisionTransformer,
                     dict(img_size=32, patch_size=16, embed_dim=384, depth=1, num_heads=12, num_classes=0),
                     mocov3_sincos_pos_embed, 12),
    "cae_small_ls": ("cae_full", "model", "encoder.", "cae", Beit,  # CAE's own key style, read by a timm ViT
                     dict(img_size=48, patch_size=16, embed_dim=384, depth=2, num_heads=12, num_classes=0,
                          use_abs_pos_emb=True, use_rel_pos_bias=False, init_values=0.1),
                     mocov3_sincos_pos_embed, 12),
    "beit_shared_relpos": ("beit_pt", "model", "", "beit", Beit,
                           dict(img_size=32, patch_size=8, embed_dim=96, depth=2, num_heads=3, num_classes=0,
                                use_abs_pos_emb=False, use_rel_pos_bias=False, use_shared_rel_pos_bias=True,
                                init_values=0.1), None, 3),
    "beit_per_block_relpos": ("beit_pt", "model", "", "beit", Beit,
                              dict(img_size=24, patch_size=8, embed_dim=64, depth=2, num_heads=2, num_classes=0,
                                   use_abs_pos_emb=False, use_rel_pos_bias=True, use_shared_rel_pos_bias=False,
                                   init_values=None), None, 2),
}


@pytest.mark.parametrize("name", CASES)
def test_non_registry_size_converts_without_arch_and_matches_the_reference(shared, tmp_path, name, capsys):
    case, container, prefix, fmt, cls, config, sincos, heads = CASES[name]
    model = reference(cls, seed=1, sincos=sincos, **config)
    sd = beit_state(model) if cls is Beit else dict(model.state_dict())
    keep_out = NOT_ENCODER if fmt != "deit" else ()  # DeiT's classifier head is part of the reference model
    if name == "beit_per_block_relpos":  # the golden shares one table; this layout has one per block
        obj = {"model": {**{k: v for k, v in load_checkpoint(shared / "golden/beit_pt/checkpoint.pth")["model"].items()
                             if k in ("mask_token", "lm_head.weight", "lm_head.bias")}, **sd}}
    else:
        obj = with_encoder(shared, case, container, prefix, sd, keep_out)
    path = tmp_path / f"{name}.pth"
    torch.save(obj, path)
    assert detect_format(load_checkpoint(path)) == fmt
    out = tmp_path / f"{name}.safetensors"
    assert convert_cli(path, out, "--format", fmt) == 0, capsys.readouterr().err
    with safe_open(str(out), framework="pt") as f:
        recorded = json.loads(f.metadata()["arch"])
    assert recorded["kwargs"]["num_heads"] == heads
    assert recorded["kwargs"].get("depth", 12) == config["depth"]
    check_against(model, load_encoder(out, format="timm", device="cpu"), config["img_size"], heads)
    check_against(model, load_encoder(path, device="cpu"), config["img_size"], heads)  # format detected, no arch


def test_inferred_fields_of_the_shared_relpos_beit(shared):
    model = reference(Beit, seed=0, **CASES["beit_shared_relpos"][5])
    sd = {k: v for k, v in beit_state(model).items() if not k.endswith("relative_position_index")}
    arch = infer_arch(sd, "beit", "beit.pth")
    assert arch.model == "beit_base_patch16_224"
    assert arch.kwargs == {"num_classes": 0, "global_pool": "token", "embed_dim": 96, "depth": 2, "patch_size": 8,
                           "img_size": 32, "use_abs_pos_emb": False, "use_rel_pos_bias": False,
                           "use_shared_rel_pos_bias": True, "init_values": 0.1, "num_heads": 3}


def test_head_count_left_open_by_the_rule_is_asked_for_by_name(shared, tmp_path, capsys):
    model = reference(VisionTransformer, img_size=32, patch_size=8, embed_dim=128, depth=2, num_heads=4, seed=2,
                      num_classes=0, sincos=mae_sincos_pos_embed)
    obj = with_encoder(shared, "mae_full", "model", "", model.state_dict())
    path = tmp_path / "mae_128.pth"
    torch.save(obj, path)
    out = tmp_path / "mae_128.safetensors"
    assert convert_cli(path, out, "--format", "mae") == 2
    err = capsys.readouterr().err
    assert "num_heads: embed_dim 128 has no known head count for MAE" in err
    assert """--arch-kwargs '{"num_heads": 2}'""" in err and "mae_128.pth" in err    # 64-channel heads: 128 / 64
    assert not out.exists()
    assert convert_cli(path, out, "--format", "mae", "--arch-kwargs", '{"num_heads": 4}') == 0
    check_against(model, load_encoder(out, format="timm", device="cpu"), 32, 4)
    # the Python API takes the same kwargs
    check_against(model, load_encoder(path, format="mae", arch={"kwargs": {"num_heads": 4}}, device="cpu"), 32, 4)


def test_mocov3_of_another_size_has_no_known_head_count(shared, tmp_path):
    model = reference(VisionTransformer, img_size=32, patch_size=16, embed_dim=192, depth=1, num_heads=3, seed=4,
                      num_classes=0, sincos=mocov3_sincos_pos_embed)
    path = tmp_path / "mocov3_192.pth"
    torch.save(with_encoder(shared, "mocov3_vit", "state_dict", "module.base_encoder.", model.state_dict()), path)
    with pytest.raises(CheckpointError, match="num_heads: embed_dim 192 has no known head count for MoCo v3"):
        load_encoder(path, device="cpu")


def test_wrong_head_count_is_refused_in_convert_unless_forced(shared, tmp_path, capsys):
    config = CASES["mocov3_small"][5]
    model = reference(VisionTransformer, seed=1, sincos=mocov3_sincos_pos_embed, **config)
    path = tmp_path / "vit-s.pth.tar"
    torch.save(with_encoder(shared, "mocov3_vit", "state_dict", "module.base_encoder.", model.state_dict()), path)
    out = tmp_path / "six.safetensors"
    assert convert_cli(path, out, "--arch-kwargs", '{"num_heads": 6}') == 2
    err = capsys.readouterr().err
    assert "num_heads=6 disagrees with MoCo v3 (embed_dim 384 has 12 heads)" in err
    assert "Tensor shapes are identical for any head count" in err and "--force-heads" in err
    assert not out.exists()
    assert convert_cli(path, out, "--arch-kwargs", '{"num_heads": 6}', "--force-heads") == 0
    forced = load_encoder(out, format="timm", device="cpu")  # the forced count travels with the file
    assert heads_of(forced.model) == 6
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():  # it loads, and it is not the model: what the refusal protects against
        assert (forced.features(x, "tokens") - model.forward_features(x)).abs().max() > 1e-3


def test_ambiguous_grid_is_asked_for_by_name(shared, tmp_path):
    model = reference(VisionTransformer, img_size=(32, 48), patch_size=16, embed_dim=192, depth=1, num_heads=3,
                      seed=5, num_classes=1000)
    path = tmp_path / "wide.pth"
    torch.save({"model": dict(model.state_dict())}, path)
    with pytest.raises(CheckpointError, match=r"img_size: pos_embed has 6 patch positions, not a square grid; pass "
                                              r"--arch-kwargs '\{\"img_size\": 224\}'"):
        load_encoder(path, format="deit", device="cpu")
