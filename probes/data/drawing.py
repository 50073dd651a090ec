"""Pixel helpers shared by the small-dataset generators (planted parts, coloured regions, atomic image writes).

The planted-part convention (docs/CONTRACTS.md) in one place: background is per-pixel uniform noise in
[80, 176] per channel; each visible keypoint of part class p is a filled disk of the class colour with
radius 0.2 x (distance to the nearest other visible keypoint of the same image). Every colour used here
has at least one channel at 0, so no part colour can be confused with the noise background.
"""
from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
from PIL import Image

from probes.fileio import write_bytes_atomic

BACKGROUND_LOW, BACKGROUND_HIGH = 80, 176   # inclusive range of the noise background, per channel
DISK_RADIUS_FACTOR = 0.2                    # radius = 0.2 x nearest-neighbour distance: disks never touch
LONE_KEYPOINT_DISTANCE = 48.0               # stands in for the nearest-neighbour distance of a lone keypoint
MIN_KEYPOINT_SPACING = 48                   # keypoints of one image are at least this far apart
JPEG_QUALITY = 95                           # high enough that a disk centre keeps its colour within a few levels

# 18 saturated colours from the channel levels {0, 128, 255}: any two differ by >= 127 in some channel and
# each has a 0 channel (so it is >= 80 away from the noise background in that channel).
SATURATED = (
    (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (255, 0, 255), (0, 255, 255),
    (255, 128, 0), (128, 0, 255), (0, 128, 255), (128, 255, 0), (255, 0, 128), (0, 255, 128),
    (128, 0, 0), (0, 128, 0), (0, 0, 128), (128, 128, 0), (128, 0, 128), (0, 128, 128),
)


def noise_background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """uint8 [H, W, 3] with every channel of every pixel uniform in [80, 176]."""
    return rng.integers(BACKGROUND_LOW, BACKGROUND_HIGH + 1, size=(height, width, 3), dtype=np.uint8)


def nearest_distances(points: np.ndarray) -> np.ndarray:
    """Distance from each point [K, 2] to its nearest other point; LONE_KEYPOINT_DISTANCE when K == 1."""
    points = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    if len(points) == 0:
        return np.zeros(0)
    if len(points) == 1:
        return np.array([LONE_KEYPOINT_DISTANCE])
    diff = points[:, None, :] - points[None, :, :]
    dist = np.sqrt((diff ** 2).sum(-1))
    np.fill_diagonal(dist, np.inf)
    return dist.min(axis=1)


def draw_disk(image: np.ndarray, x: float, y: float, radius: float, colour) -> None:
    """Fill the pixels whose centres lie within `radius` of (x, y), in place."""
    height, width = image.shape[:2]
    x0, x1 = max(0, int(np.floor(x - radius))), min(width, int(np.ceil(x + radius)) + 1)
    y0, y1 = max(0, int(np.floor(y - radius))), min(height, int(np.ceil(y + radius)) + 1)
    yy, xx = np.mgrid[y0:y1, x0:x1]
    inside = (xx - x) ** 2 + (yy - y) ** 2 <= radius ** 2
    image[y0:y1, x0:x1][inside] = colour


def plant_disks(image: np.ndarray, points: np.ndarray, part_indices, palette) -> np.ndarray:
    """Draw one disk per visible keypoint (points [K, 2] as x, y); returns the radii used."""
    radii = DISK_RADIUS_FACTOR * nearest_distances(points)
    for (x, y), part, radius in zip(np.asarray(points).reshape(-1, 2), part_indices, radii):
        draw_disk(image, x, y, radius, palette[part])
    return radii


def jittered_grid(rng: np.random.Generator, cols: int, rows: int, cell: int = 56, margin: int = 8,
                  jitter: float = 4.0, half_pixels: bool = False) -> np.ndarray:
    """Candidate keypoint positions [rows, cols, 2]: cell centres moved by at most `jitter` per axis.

    Neighbouring centres are `cell` apart, so any two positions are >= cell - 2 * jitter apart
    (56 - 8 = 48 px by default: the official-code distance filter keeps d > 40 px).
    """
    steps = np.arange(-jitter, jitter + 0.25, 0.5 if half_pixels else 1.0)
    cx = margin + cell / 2 + cell * np.arange(cols)
    cy = margin + cell / 2 + cell * np.arange(rows)
    grid = np.stack(np.meshgrid(cx, cy), axis=-1)
    return grid + rng.choice(steps, size=grid.shape)


def region_colour_fill(rng: np.random.Generator, image: np.ndarray, mask: np.ndarray, colour,
                       noise: int = 24) -> None:
    """Paint the masked pixels with `colour` plus uniform noise of +-`noise` per channel, in place."""
    count = int(mask.sum())
    jitter = rng.integers(-noise, noise + 1, size=(count, 3))
    image[mask] = np.clip(np.asarray(colour, dtype=np.int64) + jitter, 0, 255).astype(np.uint8)


def class_palette(count: int) -> list[tuple[int, int, int]]:
    """`count` distinct colours for label regions: the saturated set first, then evenly spaced hues.

    Used where a label map's classes must be learnable from colour (LIP, mmseg layouts).
    """
    colours = list(SATURATED[:count])
    extra = count - len(colours)
    for i in range(extra):
        hue = (i * 0.618033988749895) % 1.0          # golden-ratio steps spread hues evenly
        value = (1.0, 0.75, 0.5)[i % 3]
        colours.append(_hsv_to_rgb(hue, 1.0, value))
    return colours


def _hsv_to_rgb(h: float, s: float, v: float) -> tuple[int, int, int]:
    import colorsys
    r, g, b = colorsys.hsv_to_rgb(h, s, v)
    return int(round(r * 255)), int(round(g * 255)), int(round(b * 255))


def save_jpeg(path: str | os.PathLike, image: np.ndarray) -> Path:
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8)).save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return write_bytes_atomic(path, buffer.getvalue())


def save_png(path: str | os.PathLike, array: np.ndarray) -> Path:
    """uint8 [H, W] -> 8-bit grayscale (mode L); uint8 [H, W, 3] -> RGB."""
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array, dtype=np.uint8)).save(buffer, format="PNG")
    return write_bytes_atomic(path, buffer.getvalue())
