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

    <hash16>/key.json                                   the full cache key (what the features depend on)
    <hash16>/<feature>[@block<k>]/00000.pt              shard 0: {"start", "stop", "values", "sha256"}
    <hash16>/<feature>[@block<k>]/00000-part-A-B.pt     one finished batch [A, B) of a shard not yet merged

Every batch is written atomically as soon as it is encoded, with the SHA-256 of its values; when every
batch of a shard is there, the shard is merged into one file and its parts removed. So an interrupted run
resumes at the first batch not written, and the progress bar moves per batch. Every file is checked
against its digest on reading: a damaged one is reported on stderr (file named) and recomputed, never
used. A failed write (a full disk) is reported, the files written before stay valid for the next run, and
the run goes on without writing the cache. Two processes filling the same cache at once each compute what
they found missing and write the same bytes under the same names; a reader sees whole files only.

Under ``torchrun`` (``probes.distributed``) the missing batches are shared out over the ranks in turn;
each rank writes its own batches to the cache, the features are exchanged so that every rank returns all
of them, and rank 0 merges the shards. Batches start at the same items as in a single process, so the
features are the same bits (float32).

A CUDA out-of-memory error halves the forward batch and retries (down to one image); every reduction is
kept in ``BACKOFFS`` and added to the notes of the run's records (``probes.experiment.Run.finish``).
"""
from __future__ import annotations

import hashlib
import io
import json
import re
import sys
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from probes import distributed
from probes.fileio import write_bytes_atomic, write_json_atomic
from probes.paths import features_dir

DEFAULT_SHARD_SIZE = 2048
POOLED_FROM_BLOCK = ("cls", "patch_mean")
PART_NAME = re.compile(r"^(\d{5})-part-(\d{9})-(\d{9})\.pt$")
BACKOFFS: list[str] = []     # "batch size reduced" notes of this process, in order


# --- one batch -----------------------------------------------------------------------------------------------

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


class Backoff:
    """Runs a forward function over a batch in pieces of at most ``size`` images; a CUDA out-of-memory
    error halves ``size`` (for the rest of the extraction) and retries the piece (timm's ``--retry`` idea)."""

    def __init__(self, size: int, description: str):
        self.size, self.description = max(1, int(size)), description

    def __call__(self, forward: Callable[[torch.Tensor], dict], images: torch.Tensor) -> dict:
        outputs, start = [], 0
        while start < images.shape[0]:
            piece = images[start:start + self.size]
            try:
                outputs.append(forward(piece))
            except torch.cuda.OutOfMemoryError:
                if self.size == 1:
                    raise
                reduced = self.size // 2
                BACKOFFS.append(f"{self.description}: CUDA out of memory at a forward batch of {self.size}; "
                                f"extraction went on with batches of {reduced}")
                print(f"partprobe: {BACKOFFS[-1]}", file=sys.stderr)
                self.size = reduced
                torch.cuda.empty_cache()
                continue
            start += piece.shape[0]
        if len(outputs) == 1:
            return outputs[0]
        return {name: torch.cat([out[name] for out in outputs]) for name in outputs[0]}


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


def _part_path(folder: Path, column: str, shard: int, rows: range) -> Path:
    return folder / column / f"{shard:05d}-part-{rows.start:09d}-{rows.stop:09d}.pt"


def _parts_of(folder: Path, column: str, shard: int) -> list[tuple[range, Path]]:
    out = []
    for path in sorted((folder / column).glob(f"{shard:05d}-part-*.pt")):
        match = PART_NAME.match(path.name)
        if match:
            out.append((range(int(match.group(2)), int(match.group(3))), path))
    return out


def values_digest(start: int, stop: int, values: torch.Tensor) -> str:
    """SHA-256 of a shard's content: its item range, dtype, shape and raw bytes."""
    digest = hashlib.sha256(f"{start}:{stop}:{values.dtype}:{tuple(values.shape)}".encode("utf-8"))
    digest.update(values.contiguous().reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def report_damaged(path: Path, problem: str) -> None:
    print(f"partprobe: feature cache: {path} {problem}; recomputing it", file=sys.stderr)


def _read(path: Path, rows: range) -> torch.Tensor | None:
    """The values of a shard or part file holding ``rows``; None if absent, or if it is not exactly what was
    written (then reported and recomputed)."""
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        return None
    except Exception as err:  # noqa: BLE001 - any unreadable file is recomputed, never trusted
        report_damaged(path, f"cannot be read ({type(err).__name__}: {err})")
        return None
    values = data.get("values") if isinstance(data, dict) else None
    if not isinstance(values, torch.Tensor) or data.get("start") != rows.start or data.get("stop") != rows.stop \
            or values.ndim == 0 or values.shape[0] != len(rows):
        report_damaged(path, f"does not hold items [{rows.start}, {rows.stop})")
        return None
    if "sha256" not in data:
        report_damaged(path, "has no content digest (written by an older version)")
        return None
    if values_digest(rows.start, rows.stop, values) != data["sha256"]:
        report_damaged(path, "does not match the digest written with it (changed on disk)")
        return None
    return values


class CacheWriter:
    """Writes shard and part files; after the first failed write (a full disk) it reports once and writes
    nothing more, leaving every file written before valid."""

    def __init__(self, folder: Path | None):
        self.folder, self.failed = folder, False

    def write(self, path: Path, rows: range, values: torch.Tensor) -> bool:
        if self.folder is None or self.failed:
            return False
        values = values.contiguous().clone()            # a view would save its whole storage
        buffer = io.BytesIO()
        # Saved to memory first: the file is then written by Python, so a full disk is an OSError naming
        # the file (torch's own writer reports it as "unexpected pos") and the partial file is removed.
        torch.save({"start": rows.start, "stop": rows.stop, "values": values,
                    "sha256": values_digest(rows.start, rows.stop, values)}, buffer)
        try:
            write_bytes_atomic(path, buffer.getvalue())
        except OSError as err:
            self.failed = True
            print(f"partprobe: feature cache: cannot write {path} ({err.strerror or err}); the features cached "
                  f"before stay valid and the next run reuses them; this run goes on without writing the cache",
                  file=sys.stderr)
            return False
        return True


def _scan(folder: Path, column: str, shard: int, items: range) -> tuple[bool, list[tuple[range, torch.Tensor]]]:
    """(whole shard file found, the cached pieces of shard ``shard`` in order, without overlaps)."""
    pieces: list[tuple[range, torch.Tensor]] = []
    for _ in range(2):   # a second look when a part vanished: another process merged the shard meanwhile
        whole = _read(_shard_path(folder, column, shard), items)
        if whole is not None:
            return True, [(items, whole)]
        pieces, vanished = [], False
        for rows, path in _parts_of(folder, column, shard):
            if rows.start < items.start or rows.stop > items.stop or len(rows) == 0 or \
                    (pieces and rows.start < pieces[-1][0].stop):
                continue     # another shard size, or overlapping parts of another batch size: keep the first
            values = _read(path, rows)
            if values is None:
                vanished = vanished or not path.exists()
                continue
            pieces.append((rows, values))
        if not vanished:
            break
    return False, pieces


def fixed_batches(batch_size: int) -> Callable[[range], list[range]]:
    """Cut a range of items into batches of ``batch_size`` from its start."""
    return lambda gap: [range(s, min(s + batch_size, gap.stop)) for s in range(gap.start, gap.stop, batch_size)]


def _gaps(items: range, pieces: Sequence[tuple[range, torch.Tensor]], cut: Callable) -> list[range]:
    """The batches that cover what ``pieces`` leave out of ``items``, each gap cut from its start."""
    out, position = [], items.start
    for rows in [rows for rows, _ in pieces] + [range(items.stop, items.stop)]:
        if position < rows.start:
            out += cut(range(position, rows.start))
        position = max(position, rows.stop)
    return out


def _plan(folder: Path | None, shards: list[range], columns: list[str], cut: Callable):
    """What the cache holds ({column: [(rows, values)]}, {column: shards found whole}) and what is missing:
    [(rows, columns)] in item order."""
    have: dict[str, list] = {column: [] for column in columns}
    whole: dict[str, set] = {column: set() for column in columns}
    missing: dict[range, list[str]] = {}
    for index, items in enumerate(shards):
        for column in columns:
            found, pieces = _scan(folder, column, index, items) if folder is not None else (False, [])
            if found:
                whole[column].add(index)
            have[column] += pieces
            for rows in _gaps(items, pieces, cut):
                missing.setdefault(rows, []).append(column)
    todo = sorted(missing.items(), key=lambda entry: (entry[0].start, entry[0].stop))
    return have, whole, todo


def _exchange(mine: dict[str, list]) -> dict[str, list]:
    """Every rank's pieces on every rank: per source rank and column, one broadcast of its rows."""
    meta = distributed.gather_objects({column: ([(r.start, r.stop) for r, _ in pieces],
                                                tuple(pieces[0][1].shape[1:]) if pieces else None,
                                                str(pieces[0][1].dtype) if pieces else None)
                                       for column, pieces in mine.items()})
    rank = distributed.world()[0]
    out: dict[str, list] = {column: [] for column in mine}
    for src, theirs in enumerate(meta):
        for column, (ranges, trailing, dtype) in theirs.items():
            if not ranges:
                continue
            if src == rank:
                buffer = torch.cat([values for _, values in mine[column]])
            else:
                rows = sum(stop - start for start, stop in ranges)
                buffer = torch.empty((rows, *trailing), dtype=getattr(torch, dtype.removeprefix("torch.")))
            buffer = distributed.broadcast(buffer, src)
            offset = 0
            for start, stop in ranges:
                out[column].append((range(start, stop), buffer[offset:offset + stop - start]))
                offset += stop - start
    return out


def _merge_shards(writer: CacheWriter, shards: list[range], whole: dict[str, set], out: dict[str, torch.Tensor]):
    """One file per shard, from the whole features, and the shard's part files removed (after the write)."""
    for column, values in out.items():
        for index, items in enumerate(shards):
            if index in whole[column]:
                continue
            if not writer.write(_shard_path(writer.folder, column, index), items, values[items.start:items.stop]):
                return
            for _, path in _parts_of(writer.folder, column, index):
                path.unlink(missing_ok=True)


def cached_extraction(num_items: int, columns: Sequence[str],
                      compute: Callable[[list[range], list[str]], Iterator[dict[str, torch.Tensor]]], *,
                      cache_key: dict | None, shard_size: int = DEFAULT_SHARD_SIZE, batch_size: int = 64,
                      cut: Callable[[range], list[range]] | None = None, progress: bool = True,
                      description: str = "features") -> dict[str, torch.Tensor]:
    """Values of ``columns`` for items 0..num_items-1, from the cache where present, else from ``compute``.

    ``compute(batches, columns)`` yields {column: tensor [len(rows), ...]} for each range of ``batches`` in
    turn: ``batch_size`` items each from the start of every range left to compute, or the ranges ``cut``
    makes of it. Each batch is saved as soon as it is computed. Under torchrun the batches are shared out
    over the ranks and every rank returns every row.
    """
    from tqdm.auto import tqdm

    columns = list(dict.fromkeys(columns))
    if num_items == 0:
        return {column: torch.empty(0) for column in columns}
    rank, size = distributed.world()
    shards = [range(start, min(start + shard_size, num_items)) for start in range(0, num_items, shard_size)]
    folder = None
    if cache_key is not None:
        full_key = {"key": cache_key, "num_items": num_items, "shard_size": shard_size}
        folder = cache_dir(full_key)
        if rank == 0 and not (folder / "key.json").is_file():
            write_json_atomic(folder / "key.json", full_key)
    writer = CacheWriter(folder)
    if rank == 0:   # one reading of the cache decides for every rank
        have, whole, todo = _plan(folder, shards, columns, cut or fixed_batches(batch_size))
    else:
        have, whole, todo = {column: [] for column in columns}, None, None
    if size > 1:
        whole, todo = distributed.broadcast_object((whole, todo))
    mine = todo[rank::size]
    groups: dict[tuple, list[range]] = {}
    for rows, missing in mine:
        groups.setdefault(tuple(missing), []).append(rows)
    with tqdm(total=sum(len(rows) for rows, _ in mine), desc=description, unit="item",
              disable=not progress or not mine or rank != 0) as bar:
        for missing, batches in groups.items():
            for rows, computed in zip(batches, compute(batches, list(missing))):
                index = rows.start // shard_size
                for column in missing:
                    values = computed[column]
                    if values.shape[0] != len(rows):
                        raise RuntimeError(f"computed {values.shape[0]} rows of {column!r} for {len(rows)} items")
                    if folder is not None:
                        writer.write(_part_path(folder, column, index, rows), rows, values)
                    have[column].append((rows, values))
                bar.update(len(rows))
    if size > 1:
        have = _exchange(have)
    out = {}
    for column in columns:
        pieces = sorted(have[column], key=lambda piece: piece[0].start)
        covered = [rows for rows, _ in pieces]
        if [r.start for r in covered] != [0] + [r.stop for r in covered[:-1]] or covered[-1].stop != num_items:
            raise RuntimeError(f"{column!r}: the extracted pieces do not cover items 0..{num_items - 1} once")
        out[column] = torch.cat([values for _, values in pieces])
    if folder is not None and rank == 0:
        _merge_shards(writer, shards, whole, out)
    return out


# --- one image per item ---------------------------------------------------------------------------------------
def _images_only(batch):
    return batch[0] if isinstance(batch, (list, tuple)) else batch


def _on_gpu(encoder) -> bool:
    return getattr(encoder, "device", torch.device("cpu")).type == "cuda"


def cache_key(encoder, view, block: int | None, protocol: str = "crops") -> dict:
    """What the features of ``view`` through ``encoder`` depend on."""
    return {"encoder": encoder.identity(), "view": view.identity(), "block": block, "protocol": protocol}


def extract(encoder, view, features: Iterable[str] = ("cls", "patch_mean"), block: int | None = None, run=None, *,
            shard_size: int = DEFAULT_SHARD_SIZE, description: str | None = None) -> dict[str, torch.Tensor]:
    """Encode every item of ``view``; returns {feature: float32 tensor [N, ...]} in view order.

    ``run`` (``probes.options.RunOptions``, or None for its defaults) gives the batch size, the workers, and
    whether the on-disk cache is used. The images are decoded, cropped and resized in the DataLoader's
    worker processes (``run.num_workers``), one loader over every missing batch, pinned for a GPU.
    """
    from probes.options import RunOptions

    run = run or RunOptions()
    features = list(dict.fromkeys(features))
    if not features:
        raise ValueError("no feature requested")
    column_of = {feature: _column_name(feature, block) for feature in features}
    feature_of = {column: feature for feature, column in column_of.items()}
    dataset = view.dataset
    description = description or f"{view.split} features"
    backoff = Backoff(run.batch_size, description)

    def compute(batches: list[range], missing_columns: list[str]) -> Iterator[dict[str, torch.Tensor]]:
        wanted = [feature_of[column] for column in missing_columns]
        loader = torch.utils.data.DataLoader(dataset, batch_sampler=[list(rows) for rows in batches],
                                             num_workers=run.num_workers, pin_memory=_on_gpu(encoder))
        for batch in loader:
            out = backoff(lambda images: encode_batch(encoder, images, wanted, block), _images_only(batch))
            yield {column_of[feature]: out[feature] for feature in wanted}

    key = cache_key(encoder, view, block) if run.cache else None
    out = cached_extraction(len(dataset), list(column_of.values()), compute, cache_key=key, shard_size=shard_size,
                            batch_size=run.batch_size, progress=not run.quiet, description=description)
    return {feature: out[column_of[feature]] for feature in features}


def stream(encoder, view, feature: str, block: int | None, batches, num_workers: int = 0):
    """Encoder outputs of ``view`` for each batch of item indices, computed on the fly (never cached)."""
    loader = torch.utils.data.DataLoader(view.dataset, batch_sampler=[list(b) for b in batches],
                                         num_workers=num_workers, pin_memory=_on_gpu(encoder))
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

class _DenseBatches(torch.utils.data.Dataset):
    """One entry per batch of keypoint rows: the distinct full images of those rows (loaded in a worker),
    their original sizes, and the rows of each image (offsets in the batch)."""

    def __init__(self, view, batches: list[range]):
        self.view, self.batches = view, batches

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, index: int):
        rows_of: dict[str, list[int]] = {}
        for offset, row in enumerate(self.batches[index]):
            rows_of.setdefault(self.view.items[row].image_path, []).append(offset)
        images = self.view.images(list(rows_of))
        tensors, sizes = zip(*(images[i] for i in range(len(images))))
        return torch.stack(tensors), torch.stack(sizes), list(rows_of.values())


def extract_dense(encoder, view, block: int | None = None, run=None, *,
                  shard_size: int = DEFAULT_SHARD_SIZE) -> torch.Tensor:
    """Dense protocol: float32 [N, D], row i = the patch-token map of item i's full image at its keypoint.

    ``view`` is a ``probes.views.parts.PartKeypointView`` (items with ``image_path`` and ``keypoint`` in
    pixel indices; full images resized to the encoder's input size S x S). A batch is a run of keypoints
    of at most ``run.batch_size`` images; each image of a batch is encoded once.
    """
    from probes.options import RunOptions

    run = run or RunOptions()
    items = view.items
    column = _column_name("dense_patch", block)
    backoff = Backoff(run.batch_size, "dense features")

    def cut(gap: range) -> list[range]:
        starts, images, previous = [], 0, None
        for row in gap:
            path = items[row].image_path
            if path != previous:
                images, previous = images + 1, path
                if images > run.batch_size or not starts:
                    starts.append(row)
                    images = 1
        return [range(a, b) for a, b in zip(starts, starts[1:] + [gap.stop])]

    def compute(batches: list[range], missing_columns: list[str]) -> Iterator[dict[str, torch.Tensor]]:
        loader = torch.utils.data.DataLoader(_DenseBatches(view, batches), batch_size=None, shuffle=False,
                                             num_workers=run.num_workers, pin_memory=_on_gpu(encoder))
        for rows, (images, image_sizes, rows_of) in zip(batches, loader):
            maps = backoff(lambda chunk: {"map": dense_map(encoder, chunk, block)}, images)["map"]
            out: list = [None] * len(rows)
            for feature_map, (width, height), offsets in zip(maps, image_sizes.tolist(), rows_of):
                grid = keypoint_grid(np.array([items[rows[o]].keypoint for o in offsets]), width, height)
                for offset, vector in zip(offsets, sample_at_keypoints(feature_map, grid)):
                    out[offset] = vector
            yield {column: torch.stack(out)}

    key = cache_key(encoder, view, block, protocol="dense") if run.cache else None
    return cached_extraction(len(items), [column], compute, cache_key=key, shard_size=shard_size,
                             cut=cut, progress=not run.quiet, description="dense features")[column]
