"""The paper's patch-retrieval figure (Figures 2 and 4, `pr_patch_retrieval_imagenet_vis.py`): every image is
Resize 256 -> CenterCrop 224 -> resized 4x to 896 and cut into 7 x 7 overlapping 224-px patches, stride 112."""
from __future__ import annotations

import matplotlib.image
import numpy as np
from PIL import Image

from analysis.retrieval_grid import image_patches, main


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
    for name, colour in (("a.png", (255, 0, 0)), ("b.png", (0, 0, 255))):
        pixels = rng.integers(100, 156, (224, 224, 3)).astype(np.uint8)
        pixels[80:140, 80:140] = colour
        Image.fromarray(pixels).save(tmp_path / name)
    out = tmp_path / "grid.png"
    main(["--model", "colorstats", "--images", str(tmp_path), "--query", "a.png:3,3", "--query", "b.png:0,0",
          "--k", "6", "--out", str(out), "--device", "cpu"])
    figure = matplotlib.image.imread(out)
    assert figure.shape[0] > 100 and figure.std() > 0.01
