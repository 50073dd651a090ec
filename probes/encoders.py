"""One interface for every encoder: registry names, ``timm:<model>``, a user's file, or a baseline.

    enc = load_encoder("dino")                                   # registry name or alias (checkpoints.yaml)
    enc = load_encoder("timm:vit_small_patch16_224.dino")         # timm's pretrained weights
    enc = load_encoder("ckpt.pth", format="dino_full", arch="vit_base_patch16_224")
    enc = load_encoder("ckpt.pth", format="mocov3",
                       arch={"model": "vit_small_patch16_224", "kwargs": {"img_size": 64, "num_heads": 8}})
    feats = enc.extract(images, ["cls", "patch_mean", "block"], block=7)

Features are float32 on the CPU whatever the device. Images are normalised ``[B, 3, H, W]`` batches,
e.g. from ``enc.eval_transform()`` (the method's own transform from the registry, not timm's default).
"""
from __future__ import annotations

import contextlib
import os
from typing import Callable, Iterable, Mapping

import torch
from torch import nn

from probes.zoo.build import VIT_CLASSES
from probes.zoo.errors import ZooError
from probes.zoo.registry import Arch, Transform

FEATURES = ("cls", "patch_mean", "tokens", "patch_map", "block", "projection", "projection_patch")


def _to_rgb(image):
    return image.convert("RGB")


class Encoder:
    """A frozen encoder in eval mode with its eval transform. See the module docstring and docs/CONTRACTS.md."""

    def __init__(self, model: nn.Module, *, name: str, method: str, arch: Arch, format: str, source: str,
                 checkpoint_sha256: str, transform: Transform, projection: nn.Module | None = None,
                 device: torch.device | str = "cpu", branch: str | None = None):
        self.model = model.eval().requires_grad_(False)  # frozen: probes train heads, never the encoder
        self.projection = projection.eval().requires_grad_(False) if projection is not None else None
        self.name, self.method, self.arch, self.format = name, method, arch, format
        self.source, self.checkpoint_sha256 = source, checkpoint_sha256
        self.branch = branch  # teacher or student of a full training checkpoint; None for single-network files
        self.device = torch.device(device)
        self.kind = "vit" if isinstance(model, VIT_CLASSES) else "resnet"
        if self.kind == "vit":
            self.embed_dim = int(model.embed_dim)
            self.num_blocks = len(model.blocks)
            self.patch_size = int(model.patch_embed.patch_size[0])
        else:
            self.embed_dim = int(model.num_features)
            self.num_blocks = 4  # stages layer1..layer4
            self.patch_size = None
        self.mean, self.std = tuple(transform.mean), tuple(transform.std)
        self.interpolation, self.resize, self.crop_size = transform.interpolation, transform.resize, transform.crop
        self.has_projection = projection is not None
        self.has_projection_patch = hasattr(projection, "forward_patches")
        self.token_shuffle = False
        self.token_shuffle_seed = None
        self._shuffle_hook = None
        self.autocast = True  # bf16 autocast on CUDA; False keeps float32 (see float32_forward)

    def shuffle_patch_tokens(self, enabled: bool = True, seed: int = 0) -> "Encoder":
        """Permute each image's patch tokens at random before the position embedding is added.

        This reproduces a bug of the official part-aware code's MAE path (protocols.md §8.4):
        ``random_masking(x, 0.)`` keeps every token but shuffles them, so the sin-cos position embeddings
        land on scrambled patches. The published MAE numbers of Table 3 were computed that way; the option
        exists to reproduce them (``mae_token_shuffle``) and is off unless asked for. The permutations come
        from a generator seeded here, so a run is repeatable.
        """
        if self._shuffle_hook is not None:
            self._shuffle_hook.remove()
            self._shuffle_hook = None
        self.token_shuffle = bool(enabled)
        self.token_shuffle_seed = seed if enabled else None
        if not enabled:
            return self
        if self.kind != "vit":
            raise ValueError(f"{self.name}: patch-token shuffling applies to ViTs, not to a {self.kind}")
        generator = torch.Generator().manual_seed(seed)

        def shuffle(module, inputs, tokens):
            if tokens.dim() != 3:
                raise ValueError(f"{self.name}: expected [B, N, D] patch tokens to shuffle, got {tuple(tokens.shape)}")
            order = torch.rand(tokens.shape[:2], generator=generator).argsort(dim=1).to(tokens.device)
            return tokens.gather(1, order[..., None].expand_as(tokens))

        self._shuffle_hook = self.model.patch_embed.register_forward_hook(shuffle)
        return self

    def __repr__(self) -> str:
        return f"Encoder({self.name!r}, {self.arch.describe()}, format={self.format!r}, device={self.device})"

    def info(self) -> dict[str, str]:
        info = {"name": self.name, "method": self.method, "arch": self.arch.describe(),
                "checkpoint_sha256": self.checkpoint_sha256, "format": self.format, "source": self.source}
        if self.branch is not None:  # one file, two networks: what ran must be named (and keyed in caches)
            info["branch"] = self.branch
        return info

    def eval_transform(self) -> Callable:
        from torchvision import transforms as T

        mode = {"bicubic": T.InterpolationMode.BICUBIC, "bilinear": T.InterpolationMode.BILINEAR}[self.interpolation]
        return T.Compose([T.Lambda(_to_rgb), T.Resize(self.resize, interpolation=mode), T.CenterCrop(self.crop_size),
                          T.ToTensor(), T.Normalize(self.mean, self.std)])

    def to(self, device: torch.device | str) -> "Encoder":
        self.device = torch.device(device)
        self.model.to(self.device)
        if self.projection is not None:
            self.projection.to(self.device)
        return self

    # -------------------------------------------------------------------------------- features
    def features(self, images: torch.Tensor, feature: str, block: int | None = None) -> torch.Tensor:
        return self.extract(images, [feature], block=block)[feature]

    @torch.no_grad()
    def extract(self, images: torch.Tensor, features: Iterable[str], block: int | None = None) -> dict[str, torch.Tensor]:
        features = list(features)
        unknown = [f for f in features if f not in FEATURES]
        if unknown:
            raise ValueError(f"unknown feature(s) {unknown} (expected some of {list(FEATURES)})")
        if ("projection" in features and not self.has_projection) or (
                "projection_patch" in features and not self.has_projection_patch):
            raise ValueError(f"{self.name}: this checkpoint carries no projection head for "
                             f"{[f for f in features if f.startswith('projection')]}")
        if "block" in features and (not isinstance(block, int) or not 0 <= block < self.num_blocks):
            raise ValueError(f"{self.name}: feature 'block' needs block in 0..{self.num_blocks - 1}, got {block!r}")
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be a normalised [B, 3, H, W] batch, got shape {tuple(images.shape)}")
        images = images.to(self.device, non_blocking=True)
        autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if self.device.type == "cuda" and self.autocast
                    else contextlib.nullcontext())
        with autocast:
            out = self._vit(images, features, block) if self.kind == "vit" else self._resnet(images, features, block)
        return {k: v.float().cpu() for k, v in out.items()}

    def _vit(self, images, features, block):
        final_needed = any(f != "block" for f in features)
        out: dict[str, torch.Tensor] = {}
        if "block" in features:
            result = self.model.forward_intermediates(
                images, indices=[block], norm=False, output_fmt="NLC", return_prefix_tokens=True,
                stop_early=not final_needed, intermediates_only=not final_needed)
            tokens, inter = result if final_needed else (None, result)
            patches, prefix = inter[0]
            out["block"] = torch.cat([prefix, patches], dim=1)
        else:
            tokens = self.model.forward_features(images)
        if not final_needed:
            return out
        n_prefix = self.model.num_prefix_tokens
        patches = tokens[:, n_prefix:]
        for name in features:
            if name == "tokens":
                out[name] = tokens
            elif name == "cls":
                out[name] = tokens[:, 0]
            elif name == "patch_mean":
                out[name] = patches.mean(dim=1)
            elif name == "patch_map":
                h, w = images.shape[-2] // self.patch_size, images.shape[-1] // self.patch_size
                out[name] = patches.transpose(1, 2).reshape(tokens.shape[0], -1, h, w)
            elif name == "projection":
                out[name] = self.projection(tokens[:, 0])
            elif name == "projection_patch":
                out[name] = self.projection.forward_patches(patches)
        return out

    def _resnet(self, images, features, block):
        indices = [block + 1] if "block" in features else [4]  # index 0 is the stem
        last, inter = self.model.forward_intermediates(images, indices=indices)
        pooled = last.mean(dim=(2, 3))
        out: dict[str, torch.Tensor] = {}
        for name in features:
            if name == "block":
                out[name] = inter[0]
            elif name in ("cls", "patch_mean"):
                out[name] = pooled
            elif name == "patch_map":
                out[name] = last
            elif name == "tokens":  # pooled feature first, like a CLS token, then the last-stage cells
                out[name] = torch.cat([pooled[:, None], last.flatten(2).transpose(1, 2)], dim=1)
            elif name == "projection":
                out[name] = self.projection(pooled)
        return out


@contextlib.contextmanager
def shuffled_mae_tokens(encoder, enabled: bool, seed: int = 0):
    """Within the block, MAE encoders shuffle their patch tokens as the official part-aware code did.

    Yields whether the option applies: only to MAE checkpoints (``format == "mae"``), the one path of the
    official code with this bug (protocols.md §7, ``mae_token_shuffle``). The encoder is restored on exit.
    """
    applies = bool(enabled) and getattr(encoder, "format", None) == "mae"
    if applies:
        encoder.shuffle_patch_tokens(True, seed=seed)
    try:
        yield applies
    finally:
        if applies:
            encoder.shuffle_patch_tokens(False)


def mae_shuffle_protocol(encoder, shuffle: bool, seed: int) -> dict:
    """The option as records carry it: for MAE checkpoints only, where it exists."""
    if getattr(encoder, "format", None) != "mae":
        return {}
    return {"mae_token_shuffle": shuffle, "mae_token_shuffle_seed": seed if shuffle else None}


def forward_identity(encoder) -> dict:
    """The switches that change an encoder's forward pass, for feature-cache keys (empty when all are off)."""
    identity = {}
    if getattr(encoder, "token_shuffle", False):
        identity.update(mae_token_shuffle=True, shuffle_seed=encoder.token_shuffle_seed)
    device = getattr(encoder, "device", None)
    if device is not None and device.type == "cuda" and getattr(encoder, "autocast", False):
        identity["precision"] = "bf16-autocast"
    return identity


@contextlib.contextmanager
def float32_forward(encoder, enabled: bool = True):
    """Within the block the encoder runs in float32 on CUDA too (no bf16 autocast), as the official code did."""
    previous = getattr(encoder, "autocast", None)
    if enabled and previous is not None:
        encoder.autocast = False
    try:
        yield
    finally:
        if enabled and previous is not None:
            encoder.autocast = previous


# ------------------------------------------------------------------------------------------ loading
def load_encoder(name: str | os.PathLike, format: str | None = None, arch: str | Mapping | Arch | None = None,
                 device: str | torch.device | None = None, offline: bool | None = None,
                 transform: Transform | None = None, branch: str = "teacher", input_size: int | None = None) -> Encoder:
    """Load an encoder by registry name/alias, ``timm:<model>``, or checkpoint path (see module docstring).

    ``arch`` is a timm model name, ``{"model": name, "kwargs": {...}}``, or ``{"kwargs": {...}}`` laid over
    the registry's (or, for a file, the architecture inferred from its tensors). ``transform`` overrides the
    eval transform (local files default to their method's). ``offline=True`` (or PARTPROBE_OFFLINE=1) never
    touches the network. ``branch`` picks the teacher (default) or the student of a full DINO / iBOT / CARP
    training checkpoint. ``input_size`` builds the model for S x S inputs (position tables rebuilt by the
    method's rule) and sets the transform's crop to S. The loading itself is ``probes.zoo.loader.load``.
    """
    from probes.zoo.loader import fit_baseline, load

    loaded = load(name, format=format, arch=arch, offline=offline, transform=transform, branch=branch,
                  input_size=input_size)
    if loaded.is_baseline:
        try:
            from probes.baselines import build_baseline
        except ImportError as err:
            raise ZooError(f"baseline {loaded.name!r} needs probes.baselines.build_baseline ({err})") from None
        return fit_baseline(build_baseline(loaded.name), input_size)
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return Encoder(loaded.model, name=loaded.name, method=loaded.method, arch=loaded.arch, format=loaded.format,
                   source=loaded.source, checkpoint_sha256=loaded.checkpoint_sha256, transform=loaded.transform,
                   projection=loaded.projection, branch=loaded.branch).to(device)
