"""Lower-bound "encoders" without learned weights: colour statistics and downsampled pixels.

They duck-type the Encoder API of ``probes.encoders`` (docs/CONTRACTS.md), so every probe runs on them
without a download; the zoo's registry entries ``colorstats`` and ``pixels`` (``format: baseline``) build
them through ``build_baseline(name)``. A pretrained encoder that does not beat them on a probe has learnt
nothing the probe can see beyond colour and layout.

Both behave like a ViT with 16 x 16 patches and no layers: every patch token describes its own 16 x 16
region and the CLS token describes the whole image with the same function, so ``cls``, ``patch_mean``,
``tokens``, ``patch_map`` and ``block`` (block 0 = the tokens) all exist and have the same width.

- ``colorstats``: a centre-weighted spatial pyramid of mean colours: the mean of each channel over the
  cells of a 1 x 1, 2 x 2 and 4 x 4 grid of the region, plus the mean over the region's central square
  (a third of its side) with weight 8 -- about twice the norm of the 21 grid cells together -- because
  a keypoint crop is centred on its part (3 x 22 = 66 values).
- ``pixels``: the region downsampled to 4 x 4 pixels by area averaging (48 values).

Both undo the input normalisation with their own mean/std (ImageNet's, which is also what
``retrieval_normalize`` uses for every model) and centre the pixels at mid-grey (value - 0.5), so that
cosine similarity compares colours rather than a shared grey offset.
"""
from __future__ import annotations

import hashlib

import torch
import torch.nn.functional as F

from probes.encoders import ForwardOptions

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PATCH = 16

# The definition strings are hashed into ``checkpoint_sha256``: change a definition, change its identity
# (and with it every feature cache key and result record of that baseline).
DEFINITIONS = {
    "colorstats": "colorstats v2: pixels un-normalised (ImageNet mean/std) minus 0.5; per-region mean colour "
                  "over 1x1, 2x2, 4x4 grids (adaptive average pooling) plus the central square of a third of the "
                  "side (margins round(side/3) each) x 8; CLS = whole image, tokens = 16x16 patches; 66-d; no weights",
    "pixels": "pixels v2: pixels un-normalised (ImageNet mean/std) minus 0.5; region area-downsampled to 4x4 "
              "(adaptive average pooling), flattened channel-major; CLS = whole image, tokens = 16x16 patches; "
              "48-d; no weights",
}
PYRAMID_LEVELS = (1, 2, 4)
CENTRE_WEIGHT = 8.0
PIXEL_GRID = 4


def _pyramid(regions: torch.Tensor) -> torch.Tensor:
    """[M, 3, h, w] -> [M, 3 * 22]: mean colours of the 1x1, 2x2, 4x4 grid cells and the weighted centre."""
    height, width = regions.shape[-2:]
    top, left = round(height / 3), round(width / 3)
    centre = regions[..., top: height - top, left: width - left]
    cells = [F.adaptive_avg_pool2d(regions, level).flatten(1) for level in PYRAMID_LEVELS]
    return torch.cat(cells + [CENTRE_WEIGHT * centre.mean(dim=(-2, -1))], dim=1)


def _downsample(regions: torch.Tensor) -> torch.Tensor:
    """[M, 3, h, w] -> [M, 3 * 4 * 4] area-averaged 4x4 thumbnail."""
    return F.adaptive_avg_pool2d(regions, PIXEL_GRID).flatten(1)


class BaselineEncoder(ForwardOptions):
    """A fixed function of the pixels that answers the Encoder API (features, extract, info, transform)."""

    kind = "baseline"
    format = "baseline"
    num_blocks = 1
    patch_size = PATCH
    has_projection = False
    interpolation = "bicubic"
    resize = 256
    crop_size = 224

    def __init__(self, name: str, device=None):
        if name not in DEFINITIONS:
            raise ValueError(f"unknown baseline {name!r}; known: {', '.join(sorted(DEFINITIONS))}")
        self.name = name
        self.definition = DEFINITIONS[name]
        self.describe = _pyramid if name == "colorstats" else _downsample
        self.embed_dim = 3 * (sum(level * level for level in PYRAMID_LEVELS) + 1) if name == "colorstats" \
            else 3 * PIXEL_GRID * PIXEL_GRID
        self.mean, self.std = IMAGENET_MEAN, IMAGENET_STD
        # Nothing to compute on a GPU worth the transfer; CPU unless asked.
        self.device = torch.device(device) if device is not None else torch.device("cpu")

    def info(self) -> dict:
        return {
            "name": self.name, "method": "baseline", "arch": f"{self.name}-p{PATCH}",
            "checkpoint_sha256": hashlib.sha256(self.definition.encode("utf-8")).hexdigest(),
            "format": "baseline", "source": "probes.baselines",
        }

    def eval_transform(self):
        from torchvision import transforms
        return transforms.Compose([
            transforms.Resize(self.resize, interpolation=transforms.InterpolationMode.BICUBIC),
            transforms.CenterCrop(self.crop_size),
            transforms.ToTensor(),
            transforms.Normalize(self.mean, self.std),
        ])

    # --- features ------------------------------------------------------------------------------------------
    def _tokens(self, images: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        """[B, 1 + N, D] tokens (CLS first) and the patch grid (h, w)."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be a [B, 3, H, W] batch, got shape {tuple(images.shape)}")
        batch, _, height, width = images.shape
        if height % PATCH or width % PATCH:
            raise ValueError(f"image size {height}x{width} is not a multiple of the {PATCH}-pixel patch")
        mean = torch.tensor(self.mean, device=images.device)[:, None, None]
        std = torch.tensor(self.std, device=images.device)[:, None, None]
        images = images.float() * std + mean - 0.5          # pixels in [-0.5, 0.5], mid-grey = 0
        grid_h, grid_w = height // PATCH, width // PATCH
        patches = images.unfold(2, PATCH, PATCH).unfold(3, PATCH, PATCH)          # [B, 3, h, w, P, P]
        patches = patches.permute(0, 2, 3, 1, 4, 5).reshape(-1, 3, PATCH, PATCH)
        patch_tokens = self.describe(patches).reshape(batch, grid_h * grid_w, -1)
        cls = self.describe(images)[:, None]
        return torch.cat([cls, patch_tokens], dim=1), grid_h, grid_w

    def extract(self, images: torch.Tensor, features: list[str], block: int | None = None) -> dict[str, torch.Tensor]:
        unknown = set(features) - {"cls", "patch_mean", "tokens", "patch_map", "block"}
        if unknown:
            raise ValueError(f"baseline {self.name!r} has no feature(s) {sorted(unknown)}; it offers cls, patch_mean, "
                             f"tokens, patch_map and block (block 0); no projection head")
        if "block" in features and block not in (0, -1):
            raise ValueError(f"baseline {self.name!r} has one block (block=0), got block={block!r}")
        with torch.no_grad():
            tokens, grid_h, grid_w = self._tokens(images.to(self.device))
        out = {}
        for feature in features:
            if feature == "cls":
                out[feature] = tokens[:, 0]
            elif feature == "patch_mean":
                out[feature] = tokens[:, 1:].mean(1)
            elif feature in ("tokens", "block"):
                out[feature] = tokens
            elif feature == "patch_map":
                out[feature] = tokens[:, 1:].transpose(1, 2).reshape(tokens.shape[0], -1, grid_h, grid_w)
        return {name: value.float().cpu().contiguous() for name, value in out.items()}

    def features(self, images: torch.Tensor, feature: str, block: int | None = None) -> torch.Tensor:
        return self.extract(images, [feature], block=block)[feature]

    def __repr__(self) -> str:
        return f"BaselineEncoder({self.name!r}, embed_dim={self.embed_dim})"


def build_baseline(name: str, device=None, **_ignored) -> BaselineEncoder:
    """The baseline encoder called ``name`` ("colorstats" or "pixels")."""
    return BaselineEncoder(name, device=device)
