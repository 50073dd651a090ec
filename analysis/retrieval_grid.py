"""Retrieval grids from the files a part-retrieval run wrote beside its records (no encoder runs here).

    python -m analysis.retrieval_grid --record RESULTS/.../<run_id>.json --out grid.png [--queries 6] [--k 8]

A part-retrieval record lists its artifacts: ``items.csv`` (every patch: image path and the crop box PIL
cuts) and ``queries.<feature>.<mode>.csv`` (each query's top-10 gallery items). The grid crops the patches
from the images again (zero outside the image, as the run did) and draws them with ``probes.grid``.
"""
from __future__ import annotations

import argparse
import sys
from functools import lru_cache
from pathlib import Path

import numpy as np

from analysis.names import dataset_name, paper_name
from probes.artifacts import read_table
from probes.errors import UserError
from probes.results import RecordError, RunRecord


CHECKPOINT_SUFFIXES = (".pth", ".pt", ".tar", ".ckpt", ".bin", ".safetensors", ".pdparams")


class GridError(UserError, ValueError):
    """A record cannot be drawn as a grid (no artifacts, images moved); the message says what is missing."""


def load_neighbours(record_path: Path, record: RunRecord):
    """(items rows, labels [N], class names, neighbour ids [N, k], similarities [N, k]) of a record."""
    names = record.artifacts
    if "items" not in names or "queries" not in names:
        raise GridError(f"{record_path}: the record lists no items/queries artifacts (written by partprobe "
                        f"schema 2.0 part retrieval); rerun the experiment to get them")
    folder = record_path.parent
    items = read_table(folder / names["items"])
    queries = read_table(folder / names["queries"])
    if len(items) != len(queries):
        raise GridError(f"{folder}: {len(items)} items but {len(queries)} queries")
    labels = np.array([int(row["label"]) for row in queries])
    classes: dict[int, str] = {int(row["label"]): row["class"] for row in queries}
    class_names = [classes.get(i, str(i)) for i in range(max(classes) + 1)]
    ids = [[int(v) for v in row["topk"].split()] for row in queries]
    sims = [[float(v) for v in row["topk_similarity"].split()] for row in queries]
    return items, labels, class_names, ids, sims


def grid_from_record(record_path, out, queries: int = 6, k: int = 8, formats=("png", "pdf", "svg")) -> Path:
    """Draw the grid of one part-retrieval record from its artifacts."""
    from PIL import Image

    from probes.grid import choose_queries, part_grid

    record_path = Path(record_path)
    record = RunRecord.load(record_path)
    items, labels, class_names, ids, sims = load_neighbours(record_path, record)

    @lru_cache(maxsize=16)
    def image(path: str):
        if not Path(path).is_file():
            raise GridError(f"{record_path}: image {path} of the run is not on this machine")
        with Image.open(path) as img:
            return img.convert("RGB")

    def crop(i: int):
        row = items[i]
        box = tuple(float(row[f"box_{c}"]) for c in ("x0", "y0", "x1", "y1"))
        return image(row["image_path"]).crop(box)

    mode = "self excluded" if record.protocol.get("include_self") is False else "self included"
    model = paper_name(record.model)
    if Path(record.model).suffix in CHECKPOINT_SUFFIXES and record.checkpoint_sha256:   # a file: say which one
        model += f" {record.checkpoint_sha256[:6]}"
    generated = " / generated data" if record.is_generated else ""
    return part_grid(crop, labels, class_names, choose_queries(labels, queries, record.seed or 0), ids, sims, out,
                     k=k, title=f"{model} / {dataset_name(record.dataset)} / {record.feature} / {mode}{generated}",
                     formats=formats)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m analysis.retrieval_grid", description=__doc__.split("\n")[0])
    parser.add_argument("--record", required=True, help="A part-retrieval record file (<run_id>.json).")
    parser.add_argument("--out", required=True, help="PNG to write (PDF and SVG beside it).")
    parser.add_argument("--queries", type=int, default=6, help="Query rows.")
    parser.add_argument("--k", type=int, default=8, help="Retrieved patches per row (at most 10).")
    args = parser.parse_args(argv)
    try:
        print(grid_from_record(args.record, args.out, args.queries, args.k))
    except (GridError, RecordError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    from probes.errors import run_main
    sys.exit(run_main(main, prog="python -m analysis.retrieval_grid"))
