"""``timm:<model>``: timm's own pretrained weights, from the local caches first, the network only when reachable.

timm fetches weights from the Hugging Face hub, whose client retries an unreachable host for about a
minute before giving up. Here the caches are looked up first (the Hugging Face cache through
``huggingface_hub.try_to_load_from_cache``, then torch.hub's ``checkpoints/`` folder for URL-only
weights) and a cached file is loaded directly, with no network call. When nothing is cached, downloads
must be allowed (not ``PARTPROBE_OFFLINE=1``, ``HF_HUB_OFFLINE=1`` or ``offline=True``) and the hub must
answer a TCP connect within a few seconds; otherwise an :class:`OfflineError` says what to fetch where.
"""
from __future__ import annotations

import math
import os
import socket
import threading
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from probes.zoo.download import file_hashes, is_offline
from probes.zoo.errors import OfflineError, RegistryError
from probes.zoo.registry import Arch, Transform, fit_transform

CONNECT_TIMEOUT = 3.0  # seconds for the name lookup and for the TCP connect, each


def pretrained_cfg(model_name: str):
    import timm

    try:
        cfg = timm.models.get_pretrained_cfg(model_name)
    except RuntimeError:  # a known architecture with an unknown tag
        cfg = None
    if cfg is None:
        raise RegistryError(f"timm:{model_name}: timm has no pretrained weights under that name "
                            f"(see timm.list_models(pretrained=True))")
    return cfg


def timm_transform(model_name: str) -> Transform:
    """Eval transform from timm's pretrained cfg of a tagged model (``vit_small_patch16_224.dino``)."""
    cfg = pretrained_cfg(model_name)
    crop = int(cfg.input_size[-1])
    interpolation = cfg.interpolation if cfg.interpolation in ("bicubic", "bilinear") else "bicubic"
    return Transform(tuple(cfg.mean), tuple(cfg.std), interpolation, math.floor(crop / cfg.crop_pct), crop)  # as timm


def weights_source(cfg) -> str:
    return f"hf://{cfg.hf_hub_id}" if getattr(cfg, "hf_hub_id", None) else str(cfg.url)


def cached_weights(cfg) -> Path | None:
    """The cached weights file of a pretrained cfg, found without any network call."""
    if getattr(cfg, "hf_hub_id", None):
        try:
            from huggingface_hub import try_to_load_from_cache
        except ImportError:
            try_to_load_from_cache = None
        if try_to_load_from_cache is not None:
            repo, _, revision = cfg.hf_hub_id.partition("@")
            for filename in (getattr(cfg, "hf_hub_filename", None), "model.safetensors", "pytorch_model.bin"):
                if filename:
                    found = try_to_load_from_cache(repo, filename, revision=revision or None)
                    if isinstance(found, str):
                        return Path(found)
    if getattr(cfg, "url", None):
        import torch.hub

        path = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(cfg.url).path)
        if path.is_file():
            return path
    return None


def hub_offline(offline: bool | None) -> bool:
    if is_offline(offline):
        return True
    return offline is None and os.environ.get("HF_HUB_OFFLINE", "").strip().lower() not in ("", "0", "false", "no")


def hub_endpoint(cfg) -> str:
    if getattr(cfg, "hf_hub_id", None):
        try:
            from huggingface_hub import constants
            return constants.ENDPOINT
        except ImportError:
            pass
        return "https://huggingface.co"
    return str(cfg.url)


def connect_error(url: str, timeout: float = CONNECT_TIMEOUT) -> str | None:
    """Why ``url``'s host cannot be reached within ``timeout`` seconds (None when a TCP connect succeeds)."""
    parsed = urlparse(url)
    host, port = parsed.hostname, parsed.port or (443 if parsed.scheme == "https" else 80)
    if not host:
        return f"no host in {url!r}"
    found: list = []

    def lookup():  # getaddrinfo has no timeout of its own
        try:
            found.append(socket.getaddrinfo(host, port, type=socket.SOCK_STREAM))
        except OSError as err:
            found.append(err)

    thread = threading.Thread(target=lookup, daemon=True)
    thread.start()
    thread.join(timeout)
    if not found:
        return f"no answer from the name lookup of {host} in {timeout:g} s"
    if isinstance(found[0], OSError):
        return f"cannot resolve {host} ({found[0]})"
    last = None
    for family, kind, proto, _, address in found[0]:
        try:
            with socket.socket(family, kind, proto) as sock:
                sock.settimeout(timeout)
                sock.connect(address)
                return None
        except OSError as err:
            last = err
    return f"cannot connect to {host}:{port} ({last})"


def _offline_help(model_name: str, cfg) -> str:
    cache = os.environ.get("HF_HUB_CACHE") or os.path.join(os.environ.get("HF_HOME", "~/.cache/huggingface"), "hub")
    return (f"Run `python -m probes.zoo download timm:{model_name}` once online, or fetch {weights_source(cfg)} "
            f"into the Hugging Face cache ({cache})")


@dataclass
class TimmWeights:
    model: object
    arch: Arch
    transform: Transform
    source: str
    checkpoint_sha256: str
    path: Path | None  # the cached file


def load_timm(model_name: str, offline: bool | None = None, input_size: int | None = None) -> TimmWeights:
    """timm's pretrained model ``model_name`` (on the CPU), from the cache when it is there."""
    import timm
    import torch
    from timm.models.resnet import ResNet

    from probes.zoo.build import VIT_CLASSES, check_input_size

    cfg = pretrained_cfg(model_name)
    transform = timm_transform(model_name)
    kwargs = {"num_classes": 0}
    if input_size is not None:
        with torch.device("meta"):  # only to read the patch size: allocates nothing
            shape_only = timm.create_model(model_name.split(".")[0], pretrained=False, num_classes=0)
        if isinstance(shape_only, VIT_CLASSES):
            check_input_size(input_size, int(shape_only.patch_embed.patch_size[0]), f"timm:{model_name}")
            kwargs["img_size"] = input_size
        transform = fit_transform(transform, input_size)
    cached = cached_weights(cfg)
    if cached is None:
        if hub_offline(offline):
            raise OfflineError(f"timm:{model_name}: weights are not in the cache and downloads are off "
                               f"(PARTPROBE_OFFLINE / HF_HUB_OFFLINE / offline=True). {_offline_help(model_name, cfg)}")
        problem = connect_error(hub_endpoint(cfg))
        if problem is not None:
            raise OfflineError(f"timm:{model_name}: weights are not in the cache and the network is unreachable "
                               f"({problem}). {_offline_help(model_name, cfg)}")
    overlay = {"file": str(cached)} if cached is not None else None
    try:
        model = timm.create_model(model_name, pretrained=True, pretrained_cfg_overlay=overlay, **kwargs)
    except Exception as err:  # network and hub errors come in many types
        raise OfflineError(f"timm:{model_name}: could not get timm's pretrained weights "
                           f"({weights_source(cfg)}): {err}") from None
    if not isinstance(model, VIT_CLASSES + (ResNet,)):
        raise RegistryError(f"timm:{model_name}: {type(model).__name__} is not supported (ViT, BEiT or ResNet expected)")
    cached = cached or cached_weights(cfg)
    sha256 = file_hashes(cached)[0] if cached else "unknown"
    return TimmWeights(model, Arch(model_name.split(".")[0], kwargs), transform,
                       f"timm:{model_name} ({weights_source(cfg)})", sha256, cached)


def timm_info(model_name: str) -> dict:
    """What ``python -m probes.zoo info timm:<name>`` prints: source, transform, cache state."""
    cfg = pretrained_cfg(model_name)
    t = timm_transform(model_name)
    cached = cached_weights(cfg)
    return {"name": f"timm:{model_name}", "method": "timm", "format": "timm", "arch": model_name.split(".")[0],
            "source": weights_source(cfg), "url": cfg.url or None, "hf_hub_id": cfg.hf_hub_id or None,
            "license": getattr(cfg, "license", None),
            "transform": {"mean": list(t.mean), "std": list(t.std), "interpolation": t.interpolation,
                          "resize": t.resize, "crop": t.crop},
            "cache_path": str(cached) if cached else None, "cached": cached is not None}
