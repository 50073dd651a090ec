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


class ForwardOptions:
    """The forward-pass options an encoder holds (set once with ``configure``, part of its identity).

    ``precision``: ``fp32`` or ``bf16`` (bf16 autocast, CUDA only; a CPU always runs float32).
    ``mae_token_shuffle``: the official part-aware code's MAE bug (docs/protocols.md#mae-token-shuffle), which
    exists for MAE checkpoints only and is ignored for every other format; its permutations come from a
    generator seeded with ``shuffle_seed``. This class holds the one rule for both; ``Encoder`` and the
    baselines share it.
    """

    precision = "fp32"
    token_shuffle = False
    token_shuffle_seed: int | None = None
    load_options: dict = {}

    def configure(self, precision: str = "fp32", mae_token_shuffle: bool = False, seed: int = 0,
                  load_options: Mapping[str, Any] | None = None):
        """Set the forward options (returns self). ``load_options``: the recorded options this encoder was
        loaded with (``ModelOptions``), kept for its identity."""
        if precision not in ("fp32", "bf16"):
            raise ValueError(f"precision must be 'fp32' or 'bf16', got {precision!r}")
        self.precision = precision
        self.shuffle_patch_tokens(bool(mae_token_shuffle) and self.format == "mae", seed=seed)
        if load_options is not None:
            self.load_options = dict(load_options)
        return self

    def shuffle_patch_tokens(self, enabled: bool = True, seed: int = 0):
        if enabled:
            raise ValueError(f"{self.name}: patch-token shuffling applies to MAE ViTs only")
        return self

    @property
    def effective_precision(self) -> str:
        """What the arithmetic really is: bf16 autocast only where asked for and on CUDA."""
        device = getattr(self, "device", None)
        on_cuda = device is not None and torch.device(device).type == "cuda"
        return "bf16-autocast" if on_cuda and self.precision == "bf16" else "fp32"

    def forward_protocol(self) -> dict[str, Any]:
        """The forward options as records carry them; ``mae_token_shuffle`` only where it exists (MAE)."""
        out: dict[str, Any] = {"precision": self.effective_precision}
        if self.format == "mae":
            out["mae_token_shuffle"] = self.token_shuffle
            out["mae_token_shuffle_seed"] = self.token_shuffle_seed
        extra = {k: v for k, v in self.load_options.items()
                 if k not in ("precision", "mae_token_shuffle", "input_size")}
        return {**out, **extra}

    def identity(self) -> dict[str, Any]:
        """What this encoder's outputs depend on: the weights and architecture (``info``), the forward options
        and every recorded load option. Feature-cache keys are built from it (probes.features)."""
        return {"encoder": self.info(), "forward": self.forward_protocol(), "input_size": self.crop_size,
                "load_options": dict(sorted(self.load_options.items()))}


class Encoder(ForwardOptions):
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
        self.precision = "fp32"
        self.load_options = {}

    def shuffle_patch_tokens(self, enabled: bool = True, seed: int = 0) -> "Encoder":
        """Permute each image's patch tokens at random before the position embedding is added.

        This reproduces a bug of the official part-aware code's MAE path (docs/protocols.md#mae-token-shuffle):
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
        fast = self.effective_precision == "bf16-autocast"
        if fast and not getattr(self, "_channels_last", False):
            # bf16 presets allow inexact arithmetic: channels-last convolutions (the patch embedding, every ResNet
            # layer) run on the tensor cores' layout. float32 keeps the default layout and its exact kernels.
            self.model.to(memory_format=torch.channels_last)
            self._channels_last = True
        # Non-blocking from pinned memory (the DataLoader pins batches for a GPU): the copy overlaps the work.
        images = images.to(self.device, non_blocking=True,
                           memory_format=torch.channels_last if fast else torch.preserve_format)
        autocast = torch.autocast("cuda", dtype=torch.bfloat16) if fast else contextlib.nullcontext()
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


# ------------------------------------------------------------------------------------------ from options
# Recorded model options represented in an encoder's identity by their effective values, not as requested.
_EFFECTIVE = ("precision", "mae_token_shuffle", "input_size")


def load(options, device: str | torch.device | None = None, seed: int = 0):
    """The encoder a config's ``ModelOptions`` describe, with its forward options set (``configure``).

    ``seed`` seeds the MAE token shuffle. Every recorded model option is kept on the encoder
    (``load_options``), so it reaches feature-cache keys and records without further code.
    """
    from probes.options import recorded_values

    encoder = load_encoder(options.model, format=options.format, arch=options.arch_spec(), device=device,
                           branch=options.branch, input_size=options.input_size)
    extra = {k: v for k, v in recorded_values(options).items() if k not in _EFFECTIVE}
    return encoder.configure(precision=options.precision or "fp32", mae_token_shuffle=bool(options.mae_token_shuffle),
                             seed=seed, load_options=extra)
