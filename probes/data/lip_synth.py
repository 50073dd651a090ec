"""A small LIP in the layout of the unpacked official zips (TrainVal_images/, TrainVal_parsing_annotations/).

Label maps are mode-L PNGs with values 0..19 (0 = Background border and gaps); the pixels of label v are
LABEL_COLOURS[v - 1] plus noise, the rest is noise in [80, 176] (see mmseg_synth).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from probes.data import lip
from probes.data.drawing import save_jpeg, save_png
from probes.data.generated import generator
from probes.data.mmseg_synth import _stem, class_schedule, image_size, paint, random_label_map, region_colours
from probes.fileio import write_bytes_atomic

LABEL_COLOURS = region_colours(lip.NUM_LABELS - 1)     # index v - 1 for label v = 1..19


@generator
def synth_lip(out_dir: str | os.PathLike, seed: int = 0, train_images: int = 8, val_images: int = 4,
              regions: int = 5) -> Path:
    """Write out_dir/TrainVal_images/ and out_dir/TrainVal_parsing_annotations/; returns out_dir."""
    rng = np.random.default_rng(seed)
    out_dir = Path(out_dir)
    images_root, labels_root = out_dir / "TrainVal_images", out_dir / "TrainVal_parsing_annotations"
    train, val = class_schedule(rng, lip.NUM_LABELS - 1, train_images, val_images, regions)
    used: set[str] = set()
    for split, schedule in (("train", train), ("val", val)):
        stems = []
        for number, values in enumerate(schedule, start=1):
            stem = _stem(rng, "lip", split, number, used)
            labels = random_label_map(rng, *image_size(rng), values)
            save_jpeg(images_root / f"{split}_images" / f"{stem}.jpg", paint(rng, labels, LABEL_COLOURS))
            save_png(labels_root / f"{split}_segmentations" / f"{stem}.png", labels)
            stems.append(stem)
        write_bytes_atomic(images_root / f"{split}_id.txt", ("\n".join(stems) + "\n").encode("utf-8"))
    return out_dir
