"""The Encoder interface (docs/CONTRACTS.md): feature definitions, eval transform, info, resolution
changes with each method's own position-embedding rule, format detection."""
from __future__ import annotations

import hashlib
import json
import sys
import types

import pytest
import torch
from PIL import Image
from timm.layers import build_sincos2d_pos_embed, resample_abs_pos_embed

from probes.encoders import load_encoder
from probes.zoo.timm_hub import timm_transform
from probes.zoo.checkpoint import load_checkpoint
from probes.zoo.formats import detect_format
from probes.zoo.errors import CheckpointError, OfflineError, RegistryError
from probes.zoo.posembed import mae_sincos_pos_embed, mocov3_sincos_pos_embed
from probes.zoo.registry import Transform

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def golden(shared, case, **kwargs):
    folder = shared / "golden" / case
    target = json.loads((folder / "meta.json").read_text())["timm_target"]["this_golden"]
    arch = {"model": target["create_model"], "kwargs": {**target["kwargs"], **kwargs}}
    return folder / "checkpoint.pth", arch, torch.load(folder / "input.pt", weights_only=True)


def test_features_are_views_of_one_forward_pass(shared):
    path, arch, x = golden(shared, "ibot_vit_teacher")
    enc = load_encoder(path, format="ibot", arch=arch, device="cpu")
    assert (enc.kind, enc.embed_dim, enc.num_blocks, enc.patch_size, enc.device.type) == ("vit", 64, 4, 16, "cpu")
    names = ["cls", "patch_mean", "tokens", "patch_map", "block", "projection", "projection_patch"]
    out = enc.extract(x, names, block=2)
    for name in names:  # one pass for all == one pass each
        assert torch.equal(out[name], enc.features(x, name, block=2)), name
        assert out[name].dtype == torch.float32 and out[name].device.type == "cpu"
    tokens = out["tokens"]
    assert tokens.shape == (2, 17, 64)
    assert torch.equal(out["cls"], tokens[:, 0])
    assert torch.allclose(out["patch_mean"], tokens[:, 1:].mean(1))
    assert out["patch_map"].shape == (2, 64, 4, 4)
    assert torch.equal(out["patch_map"][:, :, 1, 2], tokens[:, 1 + 1 * 4 + 2])  # row-major patch order
    assert out["block"].shape == (2, 17, 64) and not torch.allclose(out["block"], tokens)  # before the final norm
    assert out["projection"].shape == (2, 256) and out["projection_patch"].shape == (2, 16, 256)


def test_bad_feature_requests_are_refused(shared):
    path, arch, x = golden(shared, "deit_vit")
    enc = load_encoder(path, format="deit", arch=arch, device="cpu")
    assert not enc.has_projection
    with pytest.raises(ValueError, match="no projection head"):
        enc.features(x, "projection")
    with pytest.raises(ValueError, match=r"block in 0\.\.3, got 4"):
        enc.features(x, "block", block=4)
    with pytest.raises(ValueError, match="unknown feature"):
        enc.features(x, "logits")
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        enc.features(x[0], "cls")


@pytest.mark.parametrize("case,fmt,mean,std,interpolation", [
    ("mocov3_vit", "mocov3", IMAGENET_MEAN, IMAGENET_STD, "bilinear"),
    ("dino_vit_full", "dino_full", IMAGENET_MEAN, IMAGENET_STD, "bicubic"),
    ("beit_pt", "beit", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), "bicubic"),
])
def test_eval_transform_is_the_methods_own(shared, case, fmt, mean, std, interpolation):
    path, arch, _ = golden(shared, case)
    enc = load_encoder(path, format=fmt, arch=arch, device="cpu")
    # the golden ViTs are built at 64 px, so the method's Resize(256)/CenterCrop(224) is scaled to 73/64
    assert (enc.mean, enc.std, enc.interpolation, enc.resize, enc.crop_size) == (mean, std, interpolation, 73, 64)
    colour = (200, 100, 50)
    tensor = enc.eval_transform()(Image.new("RGB", (320, 240), colour))
    assert tensor.shape == (3, 64, 64)
    for c in range(3):
        assert torch.allclose(tensor[c], torch.full((64, 64), (colour[c] / 255 - mean[c]) / std[c]), atol=1e-5)
    grey = enc.eval_transform()(Image.new("L", (100, 300), 128))  # converted to RGB, short side to 73
    assert grey.shape == (3, 64, 64)
    full_size = load_encoder(path, format=fmt, arch=arch, device="cpu",
                             transform=Transform(mean, std, interpolation, 256, 224))
    assert (full_size.resize, full_size.crop_size) == (256, 224)   # an explicit transform is kept as given


def test_timm_tagged_models_take_their_pretrained_cfg():
    dino = timm_transform("vit_small_patch16_224.dino")
    assert (dino.mean, dino.std, dino.interpolation) == (IMAGENET_MEAN, IMAGENET_STD, "bicubic")
    assert (dino.resize, dino.crop) == (248, 224)  # timm: floor(224 / crop_pct 0.9)
    assert timm_transform("vit_small_patch16_224.augreg_in21k").mean == (0.5, 0.5, 0.5)
    with pytest.raises(RegistryError, match="no pretrained weights"):
        timm_transform("vit_small_patch16_224.no_such_tag")


def test_timm_weights_offline_and_not_cached_is_a_clear_error(monkeypatch):
    import probes.zoo.timm_hub as timm_hub

    monkeypatch.setattr(timm_hub, "cached_weights", lambda cfg: None)
    monkeypatch.setenv("PARTPROBE_OFFLINE", "1")
    with pytest.raises(OfflineError, match="timm/vit_small_patch16_224.dino"):
        load_encoder("timm:vit_small_patch16_224.dino")


def test_info_names_the_checkpoint(shared):
    path, arch, _ = golden(shared, "mae_full")
    info = load_encoder(path, format="mae", arch=arch, device="cpu").info()
    assert set(info) == {"name", "method", "arch", "checkpoint_sha256", "format", "source"}
    assert info["checkpoint_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert (info["method"], info["format"], info["source"]) == ("MAE", "mae", str(path.resolve()))
    assert info["arch"].startswith("vit_base_patch16_224(") and "num_heads=4" in info["arch"]


@pytest.mark.parametrize("case,fmt", [
    ("deit_vit", "deit"), ("mocov3_vit", "mocov3"), ("dino_vit_backbone", "dino"), ("dino_vit_full", "dino_full"),
    ("ibot_vit_teacher", "ibot"), ("beit_pt", "beit"), ("mae_encoder", "mae"), ("mae_full", "mae"), ("cae_full", "cae"),
])
def test_format_detection_on_the_goldens(shared, case, fmt):
    assert detect_format(load_checkpoint(shared / "golden" / case / "checkpoint.pth")) == fmt


def test_auto_detected_format_loads_and_tiny_arch_must_be_given(shared):
    path, arch, x = golden(shared, "cae_full")
    enc = load_encoder(path, arch=arch, device="cpu")
    assert enc.format == "cae"
    with pytest.raises(CheckpointError, match="cannot infer the architecture"):
        load_encoder(path, device="cpu")


# ------------------------------------------------------------------------- position embeddings
@pytest.mark.parametrize("case,key,formula", [
    ("mocov3_vit", ("state_dict", "module.base_encoder.pos_embed"), mocov3_sincos_pos_embed),
    ("mae_encoder", ("model", "pos_embed"), mae_sincos_pos_embed),
    ("cae_full", ("model", "encoder.pos_embed"), mocov3_sincos_pos_embed),
])
def test_sincos_formulas_equal_the_tables_the_original_code_stored(shared, case, key, formula):
    stored = load_checkpoint(shared / "golden" / case / "checkpoint.pth")[key[0]][key[1]]
    assert torch.equal(formula((4, 4), 64), stored)
    assert not torch.allclose(build_sincos2d_pos_embed([4, 4], 64), stored[0, 1:], atol=0.1)  # timm's differs


@pytest.mark.parametrize("case,fmt,formula", [
    ("mocov3_vit", "mocov3", mocov3_sincos_pos_embed),
    ("mae_encoder", "mae", mae_sincos_pos_embed),
    ("cae_full", "cae", mocov3_sincos_pos_embed),
    ("deit_vit", "deit", None),
])
def test_other_resolution_rebuilds_or_resamples_the_position_table(shared, case, fmt, formula):
    path, arch, _ = golden(shared, case, img_size=96)
    enc = load_encoder(path, format=fmt, arch=arch, device="cpu")
    if formula is not None:  # fixed sin-cos: regenerated with the method's own channel order
        assert torch.equal(enc.model.pos_embed, formula((6, 6), 64))
    else:  # learned: resampled like timm does
        stored = load_checkpoint(path)["model"]["pos_embed"]
        assert torch.allclose(enc.model.pos_embed, resample_abs_pos_embed(stored, [6, 6], num_prefix_tokens=1))
    x = torch.randn(1, 3, 96, 96)
    assert enc.features(x, "patch_map").shape == (1, 64, 6, 6)


# ------------------------------------------------------------------------------------ baselines
def test_baseline_names_build_through_probes_baselines(monkeypatch):
    calls = []
    fake = types.ModuleType("probes.baselines")
    fake.build_baseline = lambda name: calls.append(name) or f"<{name} encoder>"
    monkeypatch.setitem(sys.modules, "probes.baselines", fake)
    assert load_encoder("colorstats") == "<colorstats encoder>"
    assert load_encoder("pixels") == "<pixels encoder>"
    assert calls == ["colorstats", "pixels"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_bf16_autocast_stays_close_to_cpu_fp32(shared):
    path, arch, x = golden(shared, "dino_vit_full")
    cpu = load_encoder(path, format="dino_full", arch=arch, device="cpu").features(x, "tokens")
    gpu = load_encoder(path, format="dino_full", arch=arch)
    assert gpu.device.type == "cuda"
    out = gpu.features(x, "tokens")
    assert out.dtype == torch.float32 and out.device.type == "cpu"
    assert (out - cpu).abs().max() < 0.1


def test_mae_token_shuffle_reproduces_the_official_bug_and_switches_off(shared):
    """docs/protocols.md#mae-token-shuffle: patch tokens permuted per image before the position embedding,
    nothing else."""
    path, arch, x = golden(shared, "mae_encoder")
    expected = torch.load(path.parent / "expected.pt", weights_only=True)["tokens"]
    enc = load_encoder(path, format="mae", arch=arch, device="cpu")
    shuffled = enc.shuffle_patch_tokens(True, seed=3).features(x, "tokens")
    enc.shuffle_patch_tokens(False)
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():  # the reference, written out: permute, then timm's own pos-embed and blocks
        m = enc.model
        patches = m.patch_embed(x)
        order = torch.rand(patches.shape[:2], generator=generator).argsort(dim=1)
        patches = patches.gather(1, order[..., None].expand_as(patches))
        reference = m.norm(m.blocks(m.norm_pre(m._pos_embed(patches))))
    assert torch.allclose(shuffled, reference, atol=1e-6)
    assert (shuffled - expected).abs().max() > 0.1                  # it changes the features ...
    assert (enc.features(x, "tokens") - expected).abs().max() <= 1e-5  # ... and off restores the original


def test_student_branch_of_a_full_checkpoint_reproduces_the_original_student(shared):
    """docs/protocols.md#dino-student-or-teacher: the official retrieval code loaded DINO's student;
    branch='student' gives exactly it."""
    path, arch, x = golden(shared, "dino_vit_full")
    expected = torch.load(path.parent / "expected.pt", weights_only=True)["student"]
    student = load_encoder(path, format="dino_full", arch=arch, device="cpu", branch="student")
    out = student.extract(x, ["tokens", "cls", "patch_mean", "projection"])
    for name in ("tokens", "cls", "patch_mean", "projection"):
        assert (out[name] - expected[name]).abs().max() <= 1e-5, name
    for index, block in expected["blocks"].items():
        assert (student.features(x, "block", block=index) - block).abs().max() <= 1e-5, index
    teacher = load_encoder(path, format="dino_full", arch=arch, device="cpu")
    assert (teacher.info()["branch"], student.info()["branch"]) == ("teacher", "student")  # caches tell them apart
    assert (teacher.features(x, "tokens") - expected["tokens"]).abs().max() > 0.1
    with pytest.raises(CheckpointError, match="holds one network"):
        load_encoder(path.parent.parent / "mae_encoder" / "checkpoint.pth", format="mae", device="cpu",
                     arch=golden(shared, "mae_encoder")[1], branch="student")


def test_forward_options_are_held_by_the_encoder_and_part_of_its_identity(shared):
    """Feature caches are keyed on the identity: a shuffle seed, a precision or a load option never reuses
    another's; the MAE shuffle exists for MAE checkpoints only."""
    path, arch, _ = golden(shared, "mae_encoder")
    enc = load_encoder(path, format="mae", arch=arch, device="cpu")
    plain = enc.identity()
    assert plain["forward"] == {"precision": "fp32", "mae_token_shuffle": False, "mae_token_shuffle_seed": None}
    seeded = [enc.configure(mae_token_shuffle=True, seed=s).identity() for s in (0, 1)]
    assert seeded[0]["forward"]["mae_token_shuffle"] is True and seeded[0] != seeded[1] != plain
    assert enc.configure().identity() == plain                           # switched off: the plain forward again
    assert enc.configure(precision="bf16").identity()["forward"]["precision"] == "fp32"   # a CPU runs float32
    assert enc.configure(load_options={"x": 1}).identity()["load_options"] == {"x": 1}
    dino_path, dino_arch, _ = golden(shared, "dino_vit_backbone")
    dino = load_encoder(dino_path, format="dino", arch=dino_arch, device="cpu").configure(mae_token_shuffle=True)
    assert dino.token_shuffle is False and "mae_token_shuffle" not in dino.forward_protocol()
    with pytest.raises(ValueError, match="precision must be"):
        dino.configure(precision="fp16")


# ------------------------------------------------------------------------------------------ input_size
@pytest.mark.parametrize("case,fmt,formula", [
    ("mocov3_vit", "mocov3", mocov3_sincos_pos_embed),
    ("mae_encoder", "mae", mae_sincos_pos_embed),
    ("cae_full", "cae", mocov3_sincos_pos_embed),
    ("deit_vit", "deit", None),
])
def test_input_size_rebuilds_or_resamples_the_position_table_and_fits_the_crop(shared, case, fmt, formula):
    path, arch, _ = golden(shared, case)
    enc = load_encoder(path, format=fmt, arch=arch, device="cpu", input_size=96)
    assert enc.model.patch_embed.img_size == (96, 96)
    if formula is not None:  # fixed sin-cos: regenerated with the method's own channel order
        assert torch.equal(enc.model.pos_embed, formula((6, 6), 64))
    else:  # learned: resampled like timm does
        stored = load_checkpoint(path)["model"]["pos_embed"]
        assert torch.allclose(enc.model.pos_embed, resample_abs_pos_embed(stored, [6, 6], num_prefix_tokens=1))
    assert (enc.crop_size, enc.resize) == (96, round(96 * 256 / 224))  # the method's 256/224 ratio kept
    assert enc.eval_transform()(Image.new("RGB", (300, 200))).shape == (3, 96, 96)
    assert enc.features(torch.randn(1, 3, 96, 96), "patch_map").shape == (1, 64, 6, 6)


def test_input_size_resizes_beits_relative_position_table(shared):
    from timm.layers import resize_rel_pos_bias_table

    path, arch, _ = golden(shared, "beit_pt")
    enc = load_encoder(path, format="beit", arch=arch, device="cpu", input_size=96)
    stored = load_checkpoint(path)["model"]["rel_pos_bias.relative_position_bias_table"]  # [(2*4-1)^2+3, 4]
    table = enc.model.rel_pos_bias.relative_position_bias_table
    assert tuple(table.shape) == ((2 * 6 - 1) ** 2 + 3, 4)
    assert torch.equal(table, resize_rel_pos_bias_table(stored, new_window_size=(6, 6), new_bias_shape=tuple(table.shape)))
    assert enc.features(torch.randn(1, 3, 96, 96), "tokens").shape == (1, 37, 64)


def test_input_size_not_a_multiple_of_the_patch_is_refused_naming_valid_sizes(shared):
    path, arch, _ = golden(shared, "mae_encoder")
    with pytest.raises(CheckpointError, match=r"input_size 100 is not a multiple of the patch size 16; valid sizes: "
                                              r"multiples of 16 \(nearest: 96 or 112\)"):
        load_encoder(path, format="mae", arch=arch, device="cpu", input_size=100)
    # the arch describes the file (built at 64); input_size is the size to run at
    assert load_encoder(path, format="mae", arch=arch, device="cpu", input_size=80).model.patch_embed.img_size == (80, 80)


def test_input_size_and_an_explicit_transform_must_agree(shared):
    path, arch, _ = golden(shared, "deit_vit")
    t = Transform(IMAGENET_MEAN, IMAGENET_STD, "bicubic", 110, 96)
    assert load_encoder(path, format="deit", arch=arch, device="cpu", input_size=96, transform=t).resize == 110
    with pytest.raises(CheckpointError, match="transform crop 96 contradicts input_size=128"):
        load_encoder(path, format="deit", arch=arch, device="cpu", input_size=128, transform=t)


def test_baseline_input_size_sets_its_crop():
    enc = load_encoder("colorstats", input_size=64)
    assert (enc.crop_size, enc.resize) == (64, 73)
    assert enc.eval_transform()(Image.new("RGB", (200, 100))).shape == (3, 64, 64)
    with pytest.raises(CheckpointError, match=r"input_size 70 is not a multiple of the patch size 16.*64 or 80"):
        load_encoder("pixels", input_size=70)


# ------------------------------------------------------------------------------------------ timm: cache first
TIMM_TINY = "test_vit.r160_in1k"  # timm's own test ViT (0.4 M parameters)


@pytest.fixture
def hf_cache(tmp_path, monkeypatch):
    """An empty Hugging Face cache of our own."""
    from huggingface_hub import constants

    cache = tmp_path / "hf"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    return cache


@pytest.fixture
def no_network(monkeypatch):
    """Any name lookup or connection fails the test."""
    import socket

    def refuse(*args, **kwargs):
        raise AssertionError("the network was used")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def put_in_hf_cache(cache, repo, state):
    """The layout huggingface_hub writes: refs/main -> snapshots/<revision>/model.safetensors."""
    from safetensors.torch import save_file

    folder = cache / f"models--{repo.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text("0123abcd")
    (folder / "snapshots" / "0123abcd").mkdir(parents=True)
    path = folder / "snapshots" / "0123abcd" / "model.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return path


def test_timm_weights_in_the_cache_load_without_any_network_call(hf_cache, no_network, capsys):
    import timm

    from probes.zoo.__main__ import main

    torch.manual_seed(0)
    state = timm.create_model(TIMM_TINY.split(".")[0], pretrained=False).state_dict()
    path = put_in_hf_cache(hf_cache, f"timm/{TIMM_TINY}", state)
    enc = load_encoder(f"timm:{TIMM_TINY}", device="cpu")   # online by default: the cache still comes first
    assert torch.equal(enc.model.cls_token, state["cls_token"])
    assert enc.checkpoint_sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert (enc.crop_size, enc.resize) == (160, 168)  # timm's cfg: crop_pct 0.95
    small = load_encoder(f"timm:{TIMM_TINY}", device="cpu", input_size=96)
    assert small.model.patch_embed.img_size == (96, 96) and (small.crop_size, small.resize) == (96, 101)
    assert small.features(torch.randn(1, 3, 96, 96), "patch_map").shape[-2:] == (6, 6)
    with pytest.raises(CheckpointError, match="not a multiple of the patch size 16"):
        load_encoder(f"timm:{TIMM_TINY}", device="cpu", input_size=100)
    assert main(["info", f"timm:{TIMM_TINY}", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert (info["cached"], info["cache_path"], info["source"]) == (True, str(path), f"hf://timm/{TIMM_TINY}")
    assert main(["download", f"timm:{TIMM_TINY}", "--offline"]) == 0
    assert hashlib.sha256(path.read_bytes()).hexdigest() in capsys.readouterr().out


def test_timm_weights_not_cached_and_hub_unreachable_fail_fast_without_timm(hf_cache, monkeypatch, capsys):
    import socket

    import timm
    from huggingface_hub import constants

    from probes.zoo.__main__ import main

    closed = socket.socket()  # a closed local port stands in for an unreachable hub
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.setattr(timm, "create_model", lambda *a, **k: pytest.fail("timm would retry the hub for a minute"))
    with pytest.raises(OfflineError, match=f"network is unreachable \\(cannot connect to 127.0.0.1:{port}"):
        load_encoder("timm:vit_small_patch16_224.dino")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(OfflineError, match="not in the cache and downloads are off"):
        load_encoder("timm:vit_small_patch16_224.dino")
    assert main(["info", "timm:vit_small_patch16_224.dino"]) == 0
    out = capsys.readouterr().out
    assert "hf://timm/vit_small_patch16_224.dino" in out and "dino_deitsmall16_pretrain.pth" in out
    assert main(["download", "timm:vit_small_patch16_224.dino"]) == 2
    assert "python -m probes.zoo download timm:vit_small_patch16_224.dino" in capsys.readouterr().err
