"""Every checkpoints.yaml entry against the manifest of the real released file (golden/manifests):
a fake file with the full-size layout (meta tensors: shapes only, no memory) is read back through the
safe loader, converts and loads
strictly into the declared architecture, and the registry agrees with the manifest on URL, eval
transform and projection head."""
from __future__ import annotations

import pytest
import torch

from probes.zoo.build import heads_of, load_model
from probes.zoo.checkpoint import load_checkpoint
from probes.zoo.formats import detect_format
from probes.zoo.errors import CheckpointError
from probes.zoo.manifest import fake_checkpoint, fake_state_dict, read_manifest
from probes.zoo.registry import Arch, load_registry

# registry entry -> manifest of its released file
MANIFESTS = {
    "deit_small_patch16_224": "deit_small_patch16_224-cd65a155.pth",
    "deit_base_patch16_224": "deit_base_patch16_224-b5f2ef4d.pth",
    "mocov3_vit_small_300ep": "vit-s-300ep.pth.tar",
    "mocov3_vit_base_300ep": "vit-b-300ep.pth.tar",
    "mocov3_resnet50_100ep": "r-50-100ep.pth.tar",
    "mocov3_resnet50_300ep": "r-50-300ep.pth.tar",
    "mocov3_resnet50_1000ep": "r-50-1000ep.pth.tar",
    "dino_vit_small16": "dino_deitsmall16_pretrain.pth",
    "dino_vit_small16_full": "dino_deitsmall16_pretrain_full_checkpoint.pth",
    "dino_vit_base16": "dino_vitbase16_pretrain.pth",
    "dino_vit_base16_full": "dino_vitbase16_pretrain_full_checkpoint.pth",
    "dino_resnet50": "dino_resnet50_pretrain.pth",
    "dino_resnet50_full": "dino_resnet50_pretrain_full_checkpoint.pth",
    "ibot_vit_small16": "ibot_vits_16_checkpoint_teacher.pth",
    "ibot_vit_small16_full": "ibot_vits_16_checkpoint.pth",
    "ibot_vit_base16": "ibot_vitb_16_checkpoint_teacher.pth",
    "ibot_vit_base16_full": "ibot_vitb_16_checkpoint.pth",
    "ibot_vit_base16_randmask": "ibot_vitb_16_rand_mask_checkpoint_teacher.pth",
    "ibot_vit_base16_pt22k": "ibot_vitb_16_pt22k_checkpoint_student.pth",
    "beit_base16_pt22k": "beit_base_patch16_224_pt22k.pth",
    "beit_base16_pt1k_800ep": "beit_base_patch16_224_pt1k_800ep.pth",
    # No manifest exists for the paper authors' own BEiT IN-1k run (not an official release). Its layout is
    # inferred to be BEiT's default pretraining save (shared relative position bias, layer scale 0.1,
    # mask_token, lm_head), which is exactly the pt22k manifest; the registry declares the same arch.
    "beit_base16_in1k_800ep_authors": "beit_base_patch16_224_pt22k.pth",
    "mae_vit_base16": "mae_pretrain_vit_base.pth",
    "mae_vit_base16_full": "mae_pretrain_vit_base_full.pth",
    # One manifest for the three CAE ViT-B files: it states that "the same structure applies to the 300-
    # and 800-epoch ViT-B files in the official Google Drive folder".
    "cae_vit_base16_300ep": "cae_base_1600ep.pth",
    "cae_vit_base16_800ep": "cae_base_1600ep.pth",
    "cae_vit_base16_1600ep": "cae_base_1600ep.pth",
    "mec_resnet50_100ep": "mec_resnet50_100ep_pretrain.pth.tar",
    "carp_resnet50_100ep_mc": "carp_carp-100ep-mc_checkpoint0099.pth",
    "carp_resnet50_200ep_mc": "carp_carp-200ep-mc_checkpoint0199.pth",
    "carp_resnet50_200ep": "carp_carp-200ep_checkpoint0199.pth",
    "carp_resnet50_400ep": "carp_carp-400ep_checkpoint0399.pth",
    "carp_resnet50_400ep_mc": "carp_carp-400ep-mc_checkpoint0399.pth",
}
# Registry entries whose manifest only stands in for theirs (see the comments above): skip the URL check.
STAND_IN = {"beit_base16_in1k_800ep_authors", "cae_vit_base16_300ep", "cae_vit_base16_800ep"}
PROTOCOL_ALIASES = {  # docs/protocols.md#suite-aliases
    "deit": "deit_base_patch16_224", "mocov3": "mocov3_vit_base_300ep", "dino": "dino_vit_base16_full",
    "ibot": "ibot_vit_base16_randmask", "beit": "beit_base16_in1k_800ep_authors", "mae": "mae_vit_base16",
    "cae": "cae_vit_base16_1600ep", "mec": "mec_resnet50_100ep", "carp": "carp_resnet50_400ep_mc",
}

REGISTRY = load_registry()
WEIGHT_ENTRIES = [e.name for e in REGISTRY if e.format != "baseline"]


def manifest(shared, entry_name):
    return read_manifest(shared / "golden/manifests" / f"{MANIFESTS[entry_name]}.json")


def test_every_weight_entry_has_a_manifest():
    assert sorted(WEIGHT_ENTRIES) == sorted(MANIFESTS)


def test_protocol_aliases_name_the_papers_checkpoints():
    for alias, name in PROTOCOL_ALIASES.items():
        assert REGISTRY.get(alias).name == name
    assert REGISTRY.get("dino").format == "dino_full"  # teacher of the full file: its head is the projection
    assert {e.name for e in REGISTRY if e.format == "baseline"} == {"colorstats", "pixels"}


@pytest.mark.parametrize("name", WEIGHT_ENTRIES)
def test_entry_full_size_layout_loads_strictly(shared, name, tmp_path):
    entry = REGISTRY.get(name)
    m = manifest(shared, name)
    # a file on disk in the released container (meta tensors keep it a few KB), read back the safe way
    path = tmp_path / MANIFESTS[name]
    torch.save(fake_checkpoint(m), path)
    obj = load_checkpoint(path)
    assert detect_format(obj) == entry.format  # docs/checkpoints.md#format-detection recognises the real layout
    loaded = load_model(obj, entry.format, entry.arch, where=name, device="meta")
    assert loaded.arch.model == entry.arch.model
    if heads_of(loaded.model) is not None:  # head_dim 64, except MoCo v3 / CAE ViT-S (12 heads of 32)
        twelve = entry.format in ("mocov3", "cae") and loaded.model.embed_dim == 384
        assert heads_of(loaded.model) == entry.arch.kwargs["num_heads"] == (12 if twelve else loaded.model.embed_dim // 64)
    # the registry says which head the file carries; the layout must provide exactly that
    projection = entry.projection or {}
    if projection and not projection.get("optional"):
        assert loaded.projection is not None
        last = [mod for mod in loaded.projection.modules() if isinstance(mod, torch.nn.Linear)][-1]
        assert last.out_features == projection["out_dim"]
    elif not projection:
        assert loaded.projection is None
    # registry and manifest agree on the eval transform (the authors' BEiT run follows BEiT's IN-1k
    # recipe, --imagenet_default_mean_and_std [inferred], unlike the pt22k file standing in for its layout) ...
    norm = m["normalization"]
    t = entry.transform
    if name == "beit_base16_in1k_800ep_authors":
        norm = manifest(shared, "beit_base16_pt1k_800ep")["normalization"]
    assert (list(t.mean), list(t.std), t.resize, t.crop) == (norm["mean"], norm["std"], norm["resize"], norm["crop"])
    assert norm["interpolation"].startswith(t.interpolation)
    # ... and on where the file comes from
    if name not in STAND_IN:
        if entry.urls:
            assert entry.urls[0] == m["url"]
        elif entry.gdrive_id:
            assert entry.gdrive_id in m["url"] or entry.gdrive_folder in m["url"]
        else:
            assert entry.gdrive_folder in m["url"]
    if "checksum" in m:
        published = (m["checksum"].get("sha256_prefix"), m["checksum"].get("md5_prefix"))
        assert (entry.sha256_prefix, entry.md5_prefix) == published


@pytest.mark.parametrize("name", ["ibot_vit_small16", "ibot_vit_base16", "ibot_vit_base16_randmask",
                                  "ibot_vit_base16_pt22k"])
def test_ibot_backbone_files_extracted_with_their_head(shared, name):
    """extract_backbone_weights.py --with_head true adds the head: the projection appears (8192-d)."""
    entry = REGISTRY.get(name)
    m = manifest(shared, name)
    obj = fake_checkpoint(m)
    heads = m["head_keys_if_extracted_with_head"]["keys"]
    obj["state_dict"].update(fake_state_dict({"shapes": heads}))
    loaded = load_model(obj, entry.format, entry.arch, where=name, device="meta")
    assert loaded.projection.last_layer.out_features == 8192
    assert loaded.projection.last_layer2.out_features == 8192


def test_cae_encoder_only_layout_reported_by_third_parties(shared):
    """Released CAE files are reported to hold only 'encoder.*' (+ mask_token); both layouts load."""
    entry = REGISTRY.get("cae")
    obj = fake_checkpoint(manifest(shared, "cae_vit_base16_1600ep"))
    encoder_only = {k: v for k, v in obj["model"].items() if k.startswith("encoder.") or k == "mask_token"}
    assert len(encoder_only) == 186 + 1
    loaded = load_model({"model": encoder_only}, entry.format, entry.arch, where="cae", device="meta")
    assert type(loaded.model).__name__ == "VisionTransformer"


def test_mocov3_vit_small_has_12_heads_and_6_is_refused(shared):
    entry = REGISTRY.get("mocov3_vit_small_300ep")
    assert entry.arch.kwargs["num_heads"] == 12
    obj = fake_checkpoint(manifest(shared, "mocov3_vit_small_300ep"))
    assert heads_of(load_model(obj, "mocov3", entry.arch, device="meta").model) == 12
    # a user's file given only timm's name gets the method's head count, not timm's default of 6
    plain = load_model(obj, "mocov3", Arch("vit_small_patch16_224"), device="meta")
    assert heads_of(plain.model) == 12
    six = Arch("vit_small_patch16_224", {**entry.arch.kwargs, "num_heads": 6})
    with pytest.raises(CheckpointError, match="num_heads=6 disagrees with MoCo v3"):
        load_model(obj, "mocov3", six, where="vit-s-300ep.pth.tar", device="meta")
    # DeiT ViT-S really has 6: the rule is per method, not per size
    deit = fake_checkpoint(manifest(shared, "deit_small_patch16_224"))
    assert heads_of(load_model(deit, "deit", Arch("vit_small_patch16_224"), device="meta").model) == 6


def test_wrong_container_is_refused_naming_what_was_found(shared):
    obj = fake_checkpoint(manifest(shared, "dino_vit_base16_full"))
    with pytest.raises(CheckpointError, match=r"format 'mocov3' expects a dict with a 'state_dict' entry; found a dict"):
        load_model(obj, "mocov3", None, where="dino_vitbase16_pretrain_full_checkpoint.pth", device="meta")
    with pytest.raises(CheckpointError, match="use format 'dino_full'"):
        load_model(obj, "dino", None, device="meta")
