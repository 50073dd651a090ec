"""The one place that runs an encoder over a dataset: batched extraction with an on-disk, resumable cache.

    feats = extract(encoder, view, ["patch_mean", "cls"], run=cfg.run)
    feats["patch_mean"]   # float32 [N, D], row i = item i of the view

``extract`` builds the cache key itself, from ``encoder.identity()`` (weights, architecture, forward options,
load options) and ``view.identity()`` (data, crops, transform); no caller assembles one.

Features per item (``feature`` x ``block``):
- block None: the encoder's own features (``cls``, ``patch_mean``, ``projection``, ``tokens`` ...).
- block k: from the output of block k (0-based) before the final norm. ViT: ``cls`` = its first token,
  ``patch_mean`` = the mean of its patch tokens (prefix tokens excluded), ``tokens`` = all its tokens;
  ResNet stage maps: ``patch_mean`` = the spatial mean (a ResNet stage has no CLS token).

The dense protocol (``extract_dense``) encodes each *full image* once and samples the patch-token map at
every keypoint of that image (bilinear ``grid_sample``; see ``sample_at_keypoints``). ``stream`` runs the
encoder batch by batch for training loops whose inputs do not fit the cache.

Cache layout, under ``probes.paths.features_dir()``::

    <hash16>/key.json                       the full cache key (what the features depend on)
    <hash16>/<feature>[@block<k>]/00000.pt  {"start", "stop", "values"} for items [start, stop)

Every shard is written atomically when complete, so an interrupted extraction resumes at the first
missing shard and a repeated run loads everything without one forward pass.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from probes.fileio import atomic_path, write_json_atomic
from probes.paths import features_dir

DEFAULT_SHARD_SIZE = 2048
POOLED_FROM_BLOCK = ("cls", "patch_mean")


# --- one batch -----------------------------------------------------------------------------------------------
def _num_patches(encoder, images: torch.Tensor) -> int | None:
    patch = getattr(encoder, "patch_size", None)
    if not patch:
        return None
    return (images.shape[-2] // patch) * (images.shape[-1] // patch)


def encode_batch(encoder, images: torch.Tensor, features: Sequence[str], block: int | None = None) -> dict:
    """Features of one normalised batch, as float32 CPU tensors: vectors [B, D], or ``tokens`` [B, T, D]."""
    features = list(features)
    if block is None:
        out = encoder.extract(images, features)
        for name, value in out.items():
            if value.ndim != (3 if name == "tokens" else 2):
                raise ValueError(f"feature {name!r} of {type(encoder).__name__} has shape {tuple(value.shape)}; "
                                 f"a feature is one vector per image ([B, D]), or tokens [B, T, D]")
        return {name: value.float().cpu() for name, value in out.items()}
    unknown = [f for f in features if f not in POOLED_FROM_BLOCK + ("tokens",)]
    if unknown:
        raise ValueError(f"with block={block} the features come from that block's output: "
                         f"{list(POOLED_FROM_BLOCK) + ['tokens']} are possible, not {unknown}")
    output = encoder.extract(images, ["block"], block=block)["block"].float().cpu()
    out = {}
    for name in features:
        if name == "tokens":
            if output.ndim != 3:
                raise ValueError(f"block {block} of {type(encoder).__name__} gives shape {tuple(output.shape)}, "
                                 f"not tokens [B, T, D]")
            out[name] = output
        else:
            out[name] = pool_block(output, name, _num_patches(encoder, images))
    return out


def pool_block(output: torch.Tensor, feature: str, num_patches: int | None) -> torch.Tensor:
    """``cls`` / ``patch_mean`` of a block output: ViT tokens [B, T, D] or a ResNet stage map [B, C, h, w]."""
    if output.ndim == 4:
        if feature == "cls":
            raise ValueError("a ResNet stage map has no CLS token; use feature patch_mean with --block")
        return output.mean(dim=(2, 3))
    if output.ndim != 3:
        raise ValueError(f"block output of shape {tuple(output.shape)} is neither tokens [B, T, D] nor a map")
    prefix = output.shape[1] - num_patches if num_patches else 1
    if prefix < 1 and feature == "cls":
        raise ValueError(f"block output has {output.shape[1]} tokens for {num_patches} patches: no CLS token")
    if feature == "cls":
        return output[:, 0]
    return output[:, prefix:].mean(dim=1)


# --- the cache -----------------------------------------------------------------------------------------------
def _canonical(key) -> str:
    return json.dumps(key, sort_keys=True, separators=(",", ":"), default=str)


def cache_dir(cache_key: dict) -> Path:
    """The cache folder of a key (under features_dir(), named by the key's SHA-256)."""
    digest = hashlib.sha256(_canonical(cache_key).encode("utf-8")).hexdigest()[:16]
    return features_dir() / digest


def _column_name(feature: str, block: int | None) -> str:
    return feature if block is None else f"{feature}@block{block}"


def _shard_path(folder: Path, column: str, shard: int) -> Path:
    return folder / column / f"{shard:05d}.pt"


def _load_shard(path: Path, start: int, stop: int) -> torch.Tensor | None:
    """A complete shard's values, or None if absent or not what it should be (then it is recomputed)."""
    if not path.is_file():
        return None
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # a damaged file: recompute it (shards are written atomically, so this is rare)
        return None
    if not isinstance(data, dict) or data.get("start") != start or data.get("stop") != stop:
        return None
    values = data.get("values")
    if not isinstance(values, torch.Tensor) or values.shape[0] != stop - start:
        return None
    return values


def _save_shard(path: Path, start: int, stop: int, values: torch.Tensor) -> None:
    with atomic_path(path) as tmp:
        torch.save({"start": start, "stop": stop, "values": values.contiguous().clone()}, tmp)


def cached_extraction(num_items: int, columns: Sequence[str],
                      compute: Callable[[range, list[str]], dict[str, torch.Tensor]], *,
                      cache_key: dict | None, shard_size: int = DEFAULT_SHARD_SIZE, progress: bool = True,
                      description: str = "features") -> dict[str, torch.Tensor]:
    """Values of ``columns`` for items 0..num_items-1, from the cache where present, else from ``compute``.

    ``compute(items, missing_columns)`` returns {column: tensor [len(items), ...]} for a contiguous range.
    Shards are saved as soon as they are complete.
    """
    from tqdm.auto import tqdm

    columns = list(dict.fromkeys(columns))
    shards = [range(start, min(start + shard_size, num_items)) for start in range(0, num_items, shard_size)]
    folder = None
    if cache_key is not None:
        full_key = {"key": cache_key, "num_items": num_items, "shard_size": shard_size}
        folder = cache_dir(full_key)
        if not (folder / "key.json").is_file():
            write_json_atomic(folder / "key.json", full_key)
    parts: dict[str, list] = {column: [None] * len(shards) for column in columns}
    todo = []
    for index, items in enumerate(shards):
        missing = []
        for column in columns:
            values = _load_shard(_shard_path(folder, column, index), items.start, items.stop) if folder else None
            if values is None:
                missing.append(column)
            else:
                parts[column][index] = values
        if missing:
            todo.append((index, items, missing))
    with tqdm(total=sum(len(items) for _, items, _ in todo), desc=description, unit="item",
              disable=not progress or not todo) as bar:
        for index, items, missing in todo:
            computed = compute(items, missing)
            for column in missing:
                values = computed[column]
                if values.shape[0] != len(items):
                    raise RuntimeError(f"computed {values.shape[0]} rows of {column!r} for {len(items)} items")
                if folder is not None:
                    _save_shard(_shard_path(folder, column, index), items.start, items.stop, values)
                parts[column][index] = values
            bar.update(len(items))
    if num_items == 0:
        return {column: torch.empty(0) for column in columns}
    return {column: torch.cat(parts[column]) for column in columns}


# --- one image per item ---------------------------------------------------------------------------------------
def _images_only(batch):
    return batch[0] if isinstance(batch, (list, tuple)) else batch


def _loader(encoder, dataset, items, batch_size: int, num_workers: int):
    return torch.utils.data.DataLoader(torch.utils.data.Subset(dataset, list(items)), batch_size=batch_size,
                                       shuffle=False, num_workers=num_workers,
                                       pin_memory=getattr(encoder, "device", torch.device("cpu")).type == "cuda")


def cache_key(encoder, view, block: int | None, protocol: str = "crops") -> dict:
    """What the features of ``view`` through ``encoder`` depend on."""
    return {"encoder": encoder.identity(), "view": view.identity(), "block": block, "protocol": protocol}


def extract(encoder, view, features: Iterable[str] = ("cls", "patch_mean"), block: int | None = None, run=None, *,
            shard_size: int = DEFAULT_SHARD_SIZE, description: str | None = None) -> dict[str, torch.Tensor]:
    """Encode every item of ``view``; returns {feature: float32 tensor [N, ...]} in view order.

    ``run`` (``probes.options.RunOptions``, or None for its defaults) gives the batch size, the workers, and
    whether the on-disk cache is used.
    """
    from probes.options import RunOptions

    run = run or RunOptions()
    features = list(dict.fromkeys(features))
    if not features:
        raise ValueError("no feature requested")
    column_of = {feature: _column_name(feature, block) for feature in features}
    feature_of = {column: feature for feature, column in column_of.items()}
    dataset = view.dataset

    def compute(items: range, missing_columns: list[str]) -> dict[str, torch.Tensor]:
        wanted = [feature_of[column] for column in missing_columns]
        chunks: dict[str, list] = {feature: [] for feature in wanted}
        for batch in _loader(encoder, dataset, items, run.batch_size, run.num_workers):
            out = encode_batch(encoder, _images_only(batch), wanted, block)
            for feature in wanted:
                chunks[feature].append(out[feature])
        return {column_of[feature]: torch.cat(chunks[feature]) for feature in wanted}

    key = cache_key(encoder, view, block) if run.cache else None
    out = cached_extraction(len(dataset), list(column_of.values()), compute, cache_key=key, shard_size=shard_size,
                            progress=not run.quiet, description=description or f"{view.split} features")
    return {feature: out[column_of[feature]] for feature in features}


def stream(encoder, view, feature: str, block: int | None, batches, num_workers: int = 0):
    """Encoder outputs of ``view`` for each batch of item indices, computed on the fly (never cached)."""
    loader = torch.utils.data.DataLoader(view.dataset, batch_sampler=[list(b) for b in batches],
                                         num_workers=num_workers)
    for batch in loader:
        yield encode_batch(encoder, _images_only(batch), [feature], block)[feature]


# --- dense: one full image per image, sampled at keypoints -----------------------------------------------------
def keypoint_grid(points_xy: np.ndarray, width: int, height: int) -> torch.Tensor:
    """``grid_sample`` coordinates (align_corners=False) of keypoints given as pixel indices.

    A keypoint at pixel index (x, y) has its centre at continuous position (x + 0.5, y + 0.5) of the image,
    whose edges are at 0 and W (H). Resizing the whole image to S x S maps that to ((x + 0.5) S / W, ...),
    and with align_corners=False grid_sample's -1 and +1 are the outer edges of the token map, whose
    token (r, c) covers pixels [c p, (c + 1) p) of the resized image. So the normalised coordinate is
    2 (x + 0.5) / W - 1, independent of S and of the patch size.
    """
    points = torch.as_tensor(np.asarray(points_xy, dtype=np.float64)).reshape(-1, 2)
    gx = 2 * (points[:, 0] + 0.5) / width - 1
    gy = 2 * (points[:, 1] + 0.5) / height - 1
    return torch.stack([gx, gy], dim=-1).float()


def sample_at_keypoints(feature_map: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """Bilinear samples [K, D] of a map [D, h, w] at normalised points [K, 2] (x, y in [-1, 1]).

    Points beyond the outermost token centres take the border tokens' values (padding_mode="border").
    """
    sampled = F.grid_sample(feature_map[None].float(), grid[None, None].float(), mode="bilinear",
                            padding_mode="border", align_corners=False)      # [1, D, 1, K]
    return sampled[0, :, 0].T.contiguous()


def dense_map(encoder, images: torch.Tensor, block: int | None) -> torch.Tensor:
    """Patch-token map [B, D, h, w]: after the final norm (block None) or block k's output before it."""
    if block is None:
        return encoder.extract(images, ["patch_map"])["patch_map"].float()
    output = encoder.extract(images, ["block"], block=block)["block"].float()
    if output.ndim == 4:
        return output
    patch = encoder.patch_size
    h, w = images.shape[-2] // patch, images.shape[-1] // patch
    patches = output[:, output.shape[1] - h * w:]
    return patches.transpose(1, 2).reshape(output.shape[0], -1, h, w)


def extract_dense(encoder, view, block: int | None = None, run=None, *,
                  shard_size: int = DEFAULT_SHARD_SIZE) -> torch.Tensor:
    """Dense protocol: float32 [N, D], row i = the patch-token map of item i's full image at its keypoint.

    ``view`` is a ``probes.views.parts.PartKeypointView`` (items with ``image_path`` and ``keypoint`` in
    pixel indices; full images resized to the encoder's input size S x S). Each distinct image of a shard
    is encoded once.
    """
    from probes.options import RunOptions

    run = run or RunOptions()
    items = view.items
    column = _column_name("dense_patch", block)

    def compute(rows: range, missing_columns: list[str]) -> dict[str, torch.Tensor]:
        chunk = [items[i] for i in rows]
        rows_of: dict[str, list[int]] = {}
        for row, item in enumerate(chunk):
            rows_of.setdefault(item.image_path, []).append(row)
        paths = list(rows_of)
        loader = torch.utils.data.DataLoader(view.images(paths), batch_size=run.batch_size, shuffle=False,
                                             num_workers=run.num_workers)
        out: list = [None] * len(chunk)
        done = 0
        for images, image_sizes in loader:
            # Sample each map right away: a shard's maps together would not fit in memory for real models.
            for feature_map, (width, height) in zip(dense_map(encoder, images, block), image_sizes.tolist()):
                rows_here = rows_of[paths[done]]
                grid = keypoint_grid(np.array([chunk[r].keypoint for r in rows_here]), width, height)
                for r, vector in zip(rows_here, sample_at_keypoints(feature_map, grid)):
                    out[r] = vector
                done += 1
        return {column: torch.stack(out)}

    key = cache_key(encoder, view, block, protocol="dense") if run.cache else None
    return cached_extraction(len(items), [column], compute, cache_key=key, shard_size=shard_size,
                             progress=not run.quiet, description="dense features")[column]
