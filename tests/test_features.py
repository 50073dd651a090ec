"""Feature extraction: cache reuse, resumption after an interruption, block pooling, dense keypoint sampling."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from probes.baselines import build_baseline
from probes.features import cache_dir, cache_key, extract, extract_dense, keypoint_grid, pool_block, sample_at_keypoints
from probes.options import RunOptions
from probes.views.transforms import SquareResize


class ImageSet(torch.utils.data.Dataset):
    def __init__(self, images):
        self.images = images

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.images[i], i % 3


class Images:
    """A view of deterministic random 32 x 32 images (the view interface of probes.views)."""

    def __init__(self, n: int, seed: int = 0, name: str | None = None):
        self.dataset = ImageSet(torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed)))
        self.labels = np.arange(n) % 3
        self.split, self.class_names = "all", ["a", "b", "c"]
        self._name = name or f"Images({n}, seed {seed})"

    def __len__(self):
        return len(self.dataset)

    def identity(self):
        return {"view": self._name}


RUN = RunOptions(batch_size=8, quiet=True)


def folder_of(encoder, view, block=None, shard_size=16):
    return cache_dir({"key": cache_key(encoder, view, block), "num_items": len(view), "shard_size": shard_size})


class Counting:
    """Wraps an encoder; counts forward calls and optionally fails after ``fail_after`` of them."""

    def __init__(self, encoder, fail_after: int | None = None):
        self.encoder, self.calls, self.fail_after = encoder, 0, fail_after

    def __getattr__(self, name):
        return getattr(self.encoder, name)

    def extract(self, images, features, block=None):
        if self.fail_after is not None and self.calls >= self.fail_after:
            raise RuntimeError("simulated interruption")
        self.calls += 1
        return self.encoder.extract(images, features, block=block)


def test_second_run_reads_the_cache_without_a_forward_pass():
    data = Images(40)
    first = Counting(build_baseline("colorstats"))
    a = extract(first, data, ["cls", "patch_mean"], run=RUN, shard_size=16)
    assert first.calls == 5                                  # 40 items / batch 8
    again = Counting(build_baseline("colorstats"))
    b = extract(again, data, ["cls", "patch_mean"], run=RUN, shard_size=16)
    assert again.calls == 0
    for name in ("cls", "patch_mean"):
        assert torch.equal(a[name], b[name])
    # A subset of the features is served from the same cache; a new feature is computed on its own.
    subset = Counting(build_baseline("colorstats"))
    assert torch.equal(extract(subset, data, ["cls"], run=RUN, shard_size=16)["cls"], a["cls"])
    assert subset.calls == 0
    assert (folder_of(first, data) / "key.json").is_file()


def test_interrupted_extraction_resumes_at_the_first_batch_not_written():
    data = Images(40, seed=1)
    reference = extract(build_baseline("colorstats"), data, ["cls", "patch_mean"],
                        run=RunOptions(batch_size=8, cache=False, quiet=True))
    # Shards of 16 items = 2 batches of 8: the run dies at its fourth batch (the second of shard 1).
    broken = Counting(build_baseline("colorstats"), fail_after=3)
    with pytest.raises(RuntimeError, match="simulated interruption"):
        extract(broken, data, ["cls", "patch_mean"], run=RUN, shard_size=16)
    folder = folder_of(broken, data)
    # Every finished batch is on disk, nothing else (no temporary file, no partial batch).
    assert sorted(p.name for p in (folder / "cls").iterdir()) == [
        "00000-part-000000000-000000008.pt", "00000-part-000000008-000000016.pt",
        "00001-part-000000016-000000024.pt"]
    resumed = Counting(build_baseline("colorstats"))
    out = extract(resumed, data, ["cls", "patch_mean"], run=RUN, shard_size=16)
    assert resumed.calls == 2                                   # items 24-31 and 32-39 only
    for name in ("cls", "patch_mean"):
        assert torch.equal(out[name], reference[name])
    # The finished extraction is merged into one file per shard, the parts removed.
    assert sorted(p.name for p in (folder / "cls").iterdir()) == ["00000.pt", "00001.pt", "00002.pt"]
    again = Counting(build_baseline("colorstats"))
    extract(again, data, ["cls", "patch_mean"], run=RUN, shard_size=16)
    assert again.calls == 0


def overwrite_rows(path, rows, value=7.0):
    """Overwrite ``rows`` of the tensor stored in a cache file in place, on disk: the file stays a valid
    torch file with the same layout (what a bad sector or a stray write does), only the numbers change."""
    import zipfile

    with zipfile.ZipFile(path) as archive:
        info = next(i for i in archive.infolist() if i.filename.endswith("/data/0"))
        width = torch.load(path, weights_only=True)["values"].shape[1]
    with open(path, "r+b") as f:
        f.seek(info.header_offset + 26)
        name_len, extra_len = np.frombuffer(f.read(4), dtype="<u2")
        start = info.header_offset + 30 + int(name_len) + int(extra_len)
        for row in rows:
            f.seek(start + row * width * 4)
            f.write(np.full(width, value, dtype="<f4").tobytes())


def test_a_shard_changed_on_disk_is_reported_and_recomputed(capfd):
    data = Images(40, seed=3)
    reference = extract(build_baseline("colorstats"), data, ["cls"], run=RUN, shard_size=16)
    shard = folder_of(build_baseline("colorstats"), data) / "cls" / "00001.pt"
    overwrite_rows(shard, [0, 3, 5, 6, 9])
    assert not torch.equal(torch.load(shard, weights_only=True)["values"], reference["cls"][16:32])
    capfd.readouterr()
    again = Counting(build_baseline("colorstats"))
    out = extract(again, data, ["cls"], run=RUN, shard_size=16)
    assert f"{shard} does not match the digest written with it" in capfd.readouterr().err
    assert again.calls == 2                                     # shard 1 only (2 batches of 8)
    assert torch.equal(out["cls"], reference["cls"])
    assert torch.equal(torch.load(shard, weights_only=True)["values"], reference["cls"][16:32])   # rewritten


def test_a_truncated_batch_file_is_reported_and_recomputed(capfd):
    data = Images(40, seed=4)
    reference = extract(build_baseline("colorstats"), data, ["cls"], run=RunOptions(cache=False, quiet=True))
    with pytest.raises(RuntimeError):
        extract(Counting(build_baseline("colorstats"), fail_after=3), data, ["cls"], run=RUN, shard_size=16)
    part = folder_of(build_baseline("colorstats"), data) / "cls" / "00000-part-000000008-000000016.pt"
    part.write_bytes(part.read_bytes()[:100])
    capfd.readouterr()
    again = Counting(build_baseline("colorstats"))
    out = extract(again, data, ["cls"], run=RUN, shard_size=16)
    assert f"{part} cannot be read" in capfd.readouterr().err
    assert again.calls == 3                                     # items 8-15, 24-31, 32-39
    assert torch.equal(out["cls"], reference["cls"])


def test_a_full_disk_keeps_the_batches_written_and_the_run_goes_on(monkeypatch, capfd):
    import errno

    import probes.features as features

    data = Images(40, seed=5)
    reference = extract(build_baseline("colorstats"), data, ["cls"], run=RunOptions(cache=False, quiet=True))
    real_write, writes = features.write_bytes_atomic, []

    def full_after_two(path, payload):
        if len(writes) == 2:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        writes.append(path)
        return real_write(path, payload)

    monkeypatch.setattr(features, "write_bytes_atomic", full_after_two)
    out = extract(build_baseline("colorstats"), data, ["cls"], run=RUN, shard_size=16)
    assert torch.equal(out["cls"], reference["cls"])            # the run's numbers do not depend on the cache
    err = capfd.readouterr().err
    assert "cannot write" in err and "No space left on device" in err and err.count("cannot write") == 1
    folder = folder_of(build_baseline("colorstats"), data)
    assert sorted(p.name for p in (folder / "cls").iterdir()) == [
        "00000-part-000000000-000000008.pt", "00000-part-000000008-000000016.pt"]
    monkeypatch.setattr(features, "write_bytes_atomic", real_write)
    again = Counting(build_baseline("colorstats"))
    assert torch.equal(extract(again, data, ["cls"], run=RUN, shard_size=16)["cls"], reference["cls"])
    assert again.calls == 3                                     # the two batches written are reused
    assert "feature cache" not in capfd.readouterr().err


def test_another_batch_size_reuses_what_is_cached():
    data = Images(40, seed=6)
    with pytest.raises(RuntimeError):
        extract(Counting(build_baseline("colorstats"), fail_after=2), data, ["cls"], run=RUN, shard_size=16)
    wider = Counting(build_baseline("colorstats"))
    out = extract(wider, data, ["cls"], run=RunOptions(batch_size=32, quiet=True), shard_size=16)
    assert wider.calls == 2                                     # shard 0 cached; shards 1 and 2 in one batch each
    reference = extract(build_baseline("colorstats"), data, ["cls"], run=RunOptions(cache=False, quiet=True))
    assert torch.equal(out["cls"], reference["cls"])


class OutOfMemoryAbove(Counting):
    """Raises CUDA's out-of-memory error for batches larger than ``limit`` images."""

    def __init__(self, encoder, limit):
        super().__init__(encoder)
        self.limit, self.sizes = limit, []

    def extract(self, images, features, block=None):
        self.sizes.append(images.shape[0])
        if images.shape[0] > self.limit:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return super().extract(images, features, block=block)


def test_out_of_memory_halves_the_batch_and_notes_it():
    import probes.features as features

    data = Images(40, seed=7)
    reference = extract(build_baseline("colorstats"), data, ["cls"], run=RunOptions(cache=False, quiet=True))
    before = len(features.BACKOFFS)
    encoder = OutOfMemoryAbove(build_baseline("colorstats"), limit=5)
    out = extract(encoder, data, ["cls"], run=RunOptions(batch_size=16, quiet=True), description="test features")
    assert torch.equal(out["cls"], reference["cls"])
    assert encoder.sizes[:3] == [16, 8, 4] and max(encoder.sizes[3:]) == 4   # halved, then kept
    assert features.BACKOFFS[before:] == [
        "test features: CUDA out of memory at a forward batch of 16; extraction went on with batches of 8",
        "test features: CUDA out of memory at a forward batch of 8; extraction went on with batches of 4"]


def test_the_key_is_the_encoder_and_the_view():
    """Other data, other forward options, another block: recomputed; no caller builds a key."""
    extract(build_baseline("colorstats"), Images(16, seed=2), ["cls"], run=RUN)
    other_view = Counting(build_baseline("colorstats"))
    extract(other_view, Images(16, seed=2, name="another view"), ["cls"], run=RUN)
    assert other_view.calls == 2
    other_forward = Counting(build_baseline("colorstats").configure(load_options={"an_option": 1}))
    extract(other_forward, Images(16, seed=2), ["cls"], run=RUN)
    assert other_forward.calls == 2
    fresh = Counting(build_baseline("colorstats"))
    extract(fresh, Images(16, seed=2), ["cls"], block=0, run=RUN)    # block is in the key
    assert fresh.calls == 2
    same = Counting(build_baseline("colorstats"))
    extract(same, Images(16, seed=2), ["cls"], run=RUN)
    assert same.calls == 0


def test_block_features_pool_tokens_and_maps():
    tokens = torch.arange(2 * 5 * 3, dtype=torch.float32).reshape(2, 5, 3)    # 1 CLS + 4 patches
    torch.testing.assert_close(pool_block(tokens, "cls", 4), tokens[:, 0])
    torch.testing.assert_close(pool_block(tokens, "patch_mean", 4), tokens[:, 1:].mean(1))
    with_registers = torch.randn(2, 1 + 4 + 4, 3)                             # CLS + 4 registers + 4 patches
    torch.testing.assert_close(pool_block(with_registers, "patch_mean", 4), with_registers[:, 5:].mean(1))
    stage = torch.randn(2, 8, 3, 3)
    torch.testing.assert_close(pool_block(stage, "patch_mean", None), stage.mean(dim=(2, 3)))
    with pytest.raises(ValueError, match="no CLS token"):
        pool_block(stage, "cls", None)


# --- dense sampling ----------------------------------------------------------------------------------------------
def coordinate_map(h: int, w: int) -> torch.Tensor:
    """[2, h, w]: channel 0 = column index, channel 1 = row index of each token."""
    rows, cols = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32),
                                indexing="ij")
    return torch.stack([cols, rows])


def test_sampling_a_hand_made_map_hits_token_centres_and_interpolates():
    # A 4 x 4 token map over a 64 x 64 image (16 px tokens). Token c covers pixels [16c, 16c + 16): its centre
    # is the boundary between pixel indices 16c + 7 and 16c + 8, i.e. pixel index x = 16c + 7.5.
    feature_map = coordinate_map(4, 4)
    points = np.array([[7.5, 7.5],      # centre of token (0, 0)
                       [23.5, 55.5],    # centre of token (row 3, col 1)
                       [15.5, 7.5],     # half-way between columns 0 and 1
                       [11.5, 35.5],    # column (11.5 + 0.5) / 16 - 0.5 = 0.25, row 36 / 16 - 0.5 = 1.75
                       [0.0, 63.0]])    # beyond the outer centres: clamped to the border tokens
    values = sample_at_keypoints(feature_map, keypoint_grid(points, 64, 64))
    expected = torch.tensor([[0.0, 0.0], [1.0, 3.0], [0.5, 0.0], [0.25, 1.75], [0.0, 3.0]])
    torch.testing.assert_close(values, expected, atol=1e-5, rtol=0)


def test_sampling_does_not_depend_on_the_image_aspect():
    # 80 x 40 image on a 5 x 5 map (the image is resized to a square first): token (r, c) centre sits at pixel
    # index ((c + 0.5) * 80 / 5 - 0.5, (r + 0.5) * 40 / 5 - 0.5).
    feature_map = coordinate_map(5, 5)
    points = np.array([[(c + 0.5) * 16 - 0.5, (r + 0.5) * 8 - 0.5] for r in range(5) for c in range(5)])
    values = sample_at_keypoints(feature_map, keypoint_grid(points, 80, 40))
    expected = torch.tensor([[c, r] for r in range(5) for c in range(5)], dtype=torch.float32)
    torch.testing.assert_close(values, expected, atol=1e-5, rtol=0)


class CoordinateEncoder:
    """A fake ViT whose patch_map is the token coordinate map: dense features = sampled coordinates."""
    kind, patch_size, crop_size, device = "vit", 16, 64, torch.device("cpu")

    def __init__(self):
        self.calls = 0

    def identity(self):
        return {"encoder": "coordinates"}

    def extract(self, images, features, block=None):
        self.calls += 1
        h, w = images.shape[-2] // 16, images.shape[-1] // 16
        return {"patch_map": coordinate_map(h, w)[None].expand(images.shape[0], -1, -1, -1).clone()}


def test_dense_extraction_samples_each_image_once_at_its_keypoints(tmp_path):
    from PIL import Image
    from probes.parts import PartDatabase, PartItem
    from probes.views.parts import PartKeypointView

    paths = []
    for i, size in enumerate([(128, 64), (96, 96)]):
        path = tmp_path / f"{i}.png"
        Image.new("RGB", size).save(path)
        paths.append(str(path))
    keypoints = [(paths[0], (15.5, 7.5)), (paths[0], (71.5, 35.5)), (paths[1], (47.5, 47.5)), (paths[1], (0.0, 95.0))]
    items = [PartItem(p, (0, 0, 1, 1), 0, "x", 0, "all", kp) for p, kp in keypoints]
    options = {"crop": "official-code", "dist_filter": "official", "crop_pad": "zero", "keypoints": "paper",
               "keypoint_ids": [1], "crop_shift": 0.0, "crop_shift_seed": 0, "crop_side": "", "coco_dist_scope": ""}
    view = PartKeypointView(PartDatabase("cub", tmp_path, "all", items, ["x"], options), SquareResize(64))
    encoder = CoordinateEncoder()
    values = extract_dense(encoder, view, run=RunOptions(batch_size=1, quiet=True))
    # Image 0 (128 x 64) -> 4 x 4 tokens of 32 x 16 original px: (15.5, 7.5) = centre of token (0, 0);
    # (71.5, 35.5) is column 72 / 32 - 0.5 = 1.75, row 36 / 16 - 0.5 = 1.75. Image 1 (96 x 96, 24 px tokens):
    # (47.5, 47.5) -> (1.5, 1.5); (0, 95) -> column -0.48, row 3.48: clamped to the border tokens (0, 3).
    expected = torch.tensor([[0.0, 0.0], [1.75, 1.75], [1.5, 1.5], [0.0, 3.0]])
    torch.testing.assert_close(values, expected, atol=1e-5, rtol=0)
    assert encoder.calls == 2                                   # one forward per distinct image


def test_a_batch_size_reduced_for_memory_is_in_the_records(cub_root, tmp_path, monkeypatch, colorstats):
    from probes import experiment, part_retrieval
    from conftest import run_cli

    monkeypatch.setattr(experiment, "load_encoder", lambda cfg: OutOfMemoryAbove(colorstats, limit=20))
    records = run_cli(part_retrieval, "--model", "colorstats", "--dataset", "cub", "--data-root", cub_root,
                      "--data-source", "synthetic", "--batch-size", "64", "--results", tmp_path, "--quiet")
    note = "cub part features: CUDA out of memory at a forward batch of 64; extraction went on with batches of 32"
    assert records and all(note in record.notes for record in records)
    assert all(any("batches of 16" in n for n in record.notes) for record in records)
    # Written with their digests recomputed: the leaderboard takes them.
    from probes.results import RunRecord, iter_record_paths
    assert sorted(RunRecord.load(p).notes == records[0].notes for p in iter_record_paths(tmp_path)) == [True, True]
