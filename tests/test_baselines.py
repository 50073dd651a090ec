"""The lower-bound baselines: hand-computed features, Encoder API shape contract, identity hash."""
from __future__ import annotations

import hashlib

import pytest
import torch

from probes.baselines import DEFINITIONS, build_baseline

MEAN = torch.tensor((0.485, 0.456, 0.406))[:, None, None]
STD = torch.tensor((0.229, 0.224, 0.225))[:, None, None]


def normalise(raw: torch.Tensor) -> torch.Tensor:
    """Raw pixels in [0, 1] -> the normalised input an encoder receives."""
    return (raw - MEAN) / STD


def test_colorstats_hand_computed_on_a_two_colour_image():
    # 32 x 32 image: left half red (1, 0, 0), right half mid-grey 0.5. After "- 0.5": red = (.5, -.5, -.5), grey = 0.
    raw = torch.full((1, 3, 32, 32), 0.5)
    raw[:, :, :, :16] = torch.tensor([1.0, 0.0, 0.0])[:, None, None]
    enc = build_baseline("colorstats")
    cls = enc.features(normalise(raw), "cls")[0]
    red = torch.tensor([0.5, -0.5, -0.5])
    level1 = cls[0:3]
    level2 = cls[3:15].reshape(3, 2, 2)               # channel-major, cells row-major
    level4 = cls[15:63].reshape(3, 4, 4)
    centre = cls[63:66]
    torch.testing.assert_close(level1, red / 2, atol=1e-5, rtol=0)
    torch.testing.assert_close(level2[:, :, 0], red[:, None].expand(3, 2), atol=1e-5, rtol=0)
    torch.testing.assert_close(level2[:, :, 1], torch.zeros(3, 2), atol=1e-5, rtol=0)
    torch.testing.assert_close(level4[:, :, :2], red[:, None, None].expand(3, 4, 2), atol=1e-5, rtol=0)
    # Centre square: rows/cols round(32/3)=11 .. 21 (10 px wide), columns 11-15 red, 16-20 grey -> half red, x 8.
    torch.testing.assert_close(centre, 8 * red / 2, atol=1e-5, rtol=0)
    assert enc.embed_dim == cls.shape[0] == 66


def test_patch_tokens_describe_their_own_patch_and_map_layout_matches_tokens():
    raw = torch.rand(2, 3, 48, 64)
    enc = build_baseline("colorstats")
    out = enc.extract(normalise(raw), ["tokens", "patch_map", "patch_mean", "cls"])
    tokens, patch_map = out["tokens"], out["patch_map"]
    assert tokens.shape == (2, 1 + 3 * 4, 66) and patch_map.shape == (2, 66, 3, 4)
    # Token of patch (row 1, col 2) = the CLS description of that 16 x 16 region alone.
    region = normalise(raw)[:, :, 16:32, 32:48]
    torch.testing.assert_close(tokens[:, 1 + 1 * 4 + 2], enc.features(region, "cls"), atol=1e-5, rtol=0)
    torch.testing.assert_close(patch_map[:, :, 1, 2], tokens[:, 1 + 1 * 4 + 2])
    torch.testing.assert_close(out["patch_mean"], tokens[:, 1:].mean(1))
    torch.testing.assert_close(out["cls"], tokens[:, 0])


def test_pixels_is_a_4x4_area_thumbnail():
    raw = torch.rand(1, 3, 32, 32)
    cls = build_baseline("pixels").features(normalise(raw), "cls")[0].reshape(3, 4, 4)
    expected = raw[0].reshape(3, 4, 8, 4, 8).mean(dim=(2, 4)) - 0.5
    torch.testing.assert_close(cls, expected, atol=1e-5, rtol=0)


def test_info_hashes_the_definition_and_the_api_is_complete():
    for name in ("colorstats", "pixels"):
        enc = build_baseline(name)
        info = enc.info()
        assert info["checkpoint_sha256"] == hashlib.sha256(DEFINITIONS[name].encode()).hexdigest()
        assert info["format"] == "baseline" and info["name"] == name and enc.kind == "baseline"
        assert enc.crop_size == 224 and enc.patch_size == 16 and not enc.has_projection
        image = enc.eval_transform()(__import__("PIL.Image", fromlist=["Image"]).new("RGB", (300, 260)))
        assert image.shape == (3, 224, 224)
        block = enc.features(image[None], "block", block=0)
        assert block.shape == (1, 1 + 14 * 14, enc.embed_dim)
    assert build_baseline("colorstats").info()["checkpoint_sha256"] != build_baseline("pixels").info()["checkpoint_sha256"]


def test_bad_requests_are_refused_with_the_reason():
    enc = build_baseline("colorstats")
    with pytest.raises(ValueError, match="no projection head"):
        enc.features(torch.zeros(1, 3, 32, 32), "projection")
    with pytest.raises(ValueError, match="one block"):
        enc.features(torch.zeros(1, 3, 32, 32), "block", block=3)
    with pytest.raises(ValueError, match="multiple of the 16-pixel patch"):
        enc.features(torch.zeros(1, 3, 30, 32), "cls")
    with pytest.raises(ValueError, match="unknown baseline"):
        build_baseline("sift")


@pytest.mark.parametrize("name", ["colorstats", "pixels"])
def test_zoo_builds_the_baselines(name):
    from probes.encoders import load_encoder
    enc = load_encoder(name)            # registry entries with format: baseline
    assert enc.info() == build_baseline(name).info()
