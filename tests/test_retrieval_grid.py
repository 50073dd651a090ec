"""Retrieval grids: the paper's patch cut (Figures 2 and 4, `pr_patch_retrieval_imagenet_vis.py`: Resize 256 ->
CenterCrop 224 -> resized 4x to 896, 7 x 7 overlapping 224-px patches, stride 112) through probes/patch_grid.py,
and a part-retrieval grid drawn from a run's artifacts alone."""
from __future__ import annotations

import matplotlib.image
import numpy as np
from PIL import Image

from conftest import run_cli
from probes import part_retrieval, patch_grid
from probes.grid import image_patches
from probes.results import iter_record_paths


def test_image_is_cut_into_49_overlapping_patches_at_stride_112(tmp_path):
    # 224 x 224 already: Resize(256) + CenterCrop(224) give back the same picture up to resampling, so a
    # red square at [0, 56) x [0, 56) lands, after the 4x resize, in [0, 224) x [0, 224) of the 896 image.
    pixels = np.full((224, 224, 3), 128, np.uint8)
    pixels[:56, :56] = (255, 0, 0)
    Image.fromarray(pixels).save(tmp_path / "a.png")
    patches, positions = image_patches(tmp_path / "a.png")
    assert positions == [(top, left) for top in range(0, 673, 112) for left in range(0, 673, 112)]
    assert len(patches) == 49 and all(p.size == (224, 224) for p in patches)
    first = np.asarray(patches[0]).astype(int)
    assert (np.abs(first[40:180, 40:180] - (255, 0, 0)).max()) < 40       # the red square fills the first patch
    assert np.abs(np.asarray(patches[48]).astype(int) - 128).max() < 10    # the last patch is all grey


def test_grid_command_writes_a_figure_of_queries_and_their_hits(tmp_path):
    rng = np.random.default_rng(0)
    images = tmp_path / "images"
    images.mkdir()
    for name, colour in (("a.png", (255, 0, 0)), ("b.png", (0, 0, 255))):
        pixels = rng.integers(100, 156, (224, 224, 3)).astype(np.uint8)
        pixels[80:140, 80:140] = colour
        Image.fromarray(pixels).save(images / name)
    out = tmp_path / "grid.png"
    run_cli(patch_grid, "--model", "colorstats", "--images", images, "--query", "a.png:3,3", "--query", "b.png:0,0",
            "--k", "6", "--out", out, "--device", "cpu", "--quiet")
    figure = matplotlib.image.imread(out)
    assert figure.shape[0] > 100 and figure.std() > 0.01
    assert out.with_suffix(".pdf").read_bytes()[:4] == b"%PDF" and b"<svg" in out.with_suffix(".svg").read_bytes()


def test_part_grid_from_the_artifacts_only(cub_root, tmp_path, monkeypatch):
    """The figure needs no encoder: it reads items.csv and the queries file the run wrote beside its record."""
    from analysis import retrieval_grid

    run_cli(part_retrieval, "--model", "colorstats", "--input-size", "64", "--data-root", cub_root,
            "--self-match", "excluded", "--feature", "cls", "--results", tmp_path / "results",
            "--data-source", "synthetic", "--quiet")
    path, = iter_record_paths(tmp_path / "results")
    import probes.encoders
    monkeypatch.setattr(probes.encoders, "load_encoder", lambda *a, **k: (_ for _ in ()).throw(AssertionError))
    out = retrieval_grid.grid_from_record(path, tmp_path / "grid.png", queries=4, k=5)
    figure = matplotlib.image.imread(out)
    assert figure.shape[0] > 200 and figure.std() > 0.01
    assert retrieval_grid.main(["--record", str(path.parent / "config.json"), "--out", str(tmp_path / "x.png")]) == 2
