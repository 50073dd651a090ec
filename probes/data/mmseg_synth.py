"""Small datasets in the authors' mmseg layouts (img/ann, or ADEChallengeData2016 folders for ADE-59).

Each label map has a background border (raw 0) and a few rectangles/ellipses of class values 1..N; the
image is noise in [80, 176] with every labelled region painted region_colours(N)[v - 1] (+-24 noise), so
a correct pipeline can learn the classes from colour. Training images cycle through all classes when
there are enough regions; validation images use only classes that occur in training.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from probes.data.drawing import class_palette, noise_background, region_colour_fill, save_jpeg, save_png
from probes.data.generated import generator
from probes.data.mmseg_layout import preset

BORDER = 8   # px of background (raw 0) around every label map


def region_colours(num_classes: int) -> list[tuple[int, int, int]]:
    """Colour of raw label v (1..num_classes) is region_colours(num_classes)[v - 1]."""
    return class_palette(num_classes)


def random_label_map(rng: np.random.Generator, height: int, width: int, values) -> np.ndarray:
    """uint8 [H, W]: 0 with one rectangle or ellipse per value; every value keeps some visible pixels.

    Larger shapes are drawn first so that smaller ones stay on top; a draw that still hides a value
    completely is redrawn.
    """
    yy, xx = np.mgrid[0:height, 0:width]
    inner_w, inner_h = width - 2 * BORDER, height - 2 * BORDER
    for _ in range(100):
        shapes = []
        for value in values:
            w = int(rng.integers(inner_w // 4, inner_w // 2 + 1))
            h = int(rng.integers(inner_h // 4, inner_h // 2 + 1))
            x0 = BORDER + int(rng.integers(0, inner_w - w + 1))
            y0 = BORDER + int(rng.integers(0, inner_h - h + 1))
            if rng.random() < 0.5:
                shape = (xx >= x0) & (xx < x0 + w) & (yy >= y0) & (yy < y0 + h)
            else:
                cx, cy = x0 + w / 2, y0 + h / 2
                shape = ((xx + 0.5 - cx) / (w / 2)) ** 2 + ((yy + 0.5 - cy) / (h / 2)) ** 2 <= 1
            shapes.append((int(shape.sum()), value, shape))
        labels = np.zeros((height, width), dtype=np.uint8)
        for _, value, shape in sorted(shapes, key=lambda item: -item[0]):
            labels[shape] = value
        if all((labels == value).sum() >= 64 for value in values):
            return labels
    raise RuntimeError("could not place the regions; use fewer regions per image")


def paint(rng: np.random.Generator, labels: np.ndarray, colours) -> np.ndarray:
    image = noise_background(rng, *labels.shape)
    for value in np.unique(labels[labels > 0]):
        region_colour_fill(rng, image, labels == value, colours[int(value) - 1])
    return image


def class_schedule(rng: np.random.Generator, num_classes: int, train_images: int, val_images: int,
                   regions: int) -> tuple[list, list]:
    """Per image, the class values of its regions: training cycles a permutation of 1..N."""
    order = rng.permutation(np.arange(1, num_classes + 1))
    per = min(regions, num_classes)
    train = [[int(order[(i * per + j) % num_classes]) for j in range(per)] for i in range(train_images)]
    seen = sorted({v for values in train for v in values})
    val = [[int(v) for v in rng.choice(seen, size=min(per, len(seen)), replace=False)] for _ in range(val_images)]
    return train, val


def image_size(rng: np.random.Generator) -> tuple[int, int]:
    return int(rng.integers(128, 193)), int(rng.integers(128, 193))     # height, width


def synth_layout(name: str, out_dir: str | os.PathLike, seed: int = 0, train_images: int = 8,
                 val_images: int = 4, regions: int = 4) -> Path:
    """Write preset `name` under out_dir (the root MMSegLayout takes) and return out_dir."""
    layout = preset(name)
    rng = np.random.default_rng(seed)
    out_dir = Path(out_dir)
    colours = region_colours(layout.num_classes)
    train, val = class_schedule(rng, layout.num_classes, train_images, val_images, regions)
    used_stems: set[str] = set()
    for split, schedule in (("train", train), ("val", val)):
        for number, values in enumerate(schedule, start=1):
            stem = _stem(rng, layout.stem_style, split, number, used_stems)
            labels = random_label_map(rng, *image_size(rng), values)
            save_jpeg(out_dir / layout.image_dirs[split] / f"{stem}.jpg", paint(rng, labels, colours))
            save_png(out_dir / layout.label_dirs[split] / f"{stem}.png", labels)
    return out_dir


def _stem(rng, style: str, split: str, number: int, used: set) -> str:
    while True:
        if style == "ade":
            stem = f"ADE_{'train' if split == 'train' else 'val'}_{number:08d}"
        elif style == "voc":
            stem = f"{2008 + number % 3}_{int(rng.integers(0, 1_000_000)):06d}"
        else:   # LIP: <int>_<int>
            stem = f"{int(rng.integers(1, 200_000))}_{int(rng.integers(100_000, 2_000_000))}"
        if stem not in used:
            used.add(stem)
            return stem


@generator
def synth_ade20k_part_209(out_dir, seed: int = 0, train_images: int = 8, val_images: int = 4, regions: int = 4) -> Path:
    return synth_layout("ade20k-part-209", out_dir, seed, train_images, val_images, regions)


@generator
def synth_ade20k_object_59(out_dir, seed: int = 0, train_images: int = 8, val_images: int = 4, regions: int = 4) -> Path:
    return synth_layout("ade20k-object-59", out_dir, seed, train_images, val_images, regions)


@generator
def synth_pascal_part_193(out_dir, seed: int = 0, train_images: int = 8, val_images: int = 4, regions: int = 4) -> Path:
    return synth_layout("pascal-part-193", out_dir, seed, train_images, val_images, regions)


@generator
def synth_pascal_object_16(out_dir, seed: int = 0, train_images: int = 8, val_images: int = 4, regions: int = 4) -> Path:
    return synth_layout("pascal-object-16", out_dir, seed, train_images, val_images, regions)


@generator
def synth_lip_19(out_dir, seed: int = 0, train_images: int = 8, val_images: int = 4, regions: int = 4) -> Path:
    return synth_layout("lip-19", out_dir, seed, train_images, val_images, regions)
