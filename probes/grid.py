"""Retrieval-grid figures: each row a query patch (red frame) and its top-k retrieved patches.

The drawing only: the patches and neighbours come from a run (``probes/part_retrieval.py --grid``, or its
saved artifacts through ``analysis.retrieval_grid``), or from ``probes/patch_grid.py`` (the paper's
Figures 2 and 4 on a folder of images). Frames: query red; a retrieved patch green when it is the query's
part, orange when it is another, grey when the patches have no labels. Each row names the query's part.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

PATCH, STRIDE, SPLIT_RATIO = 224, 112, 4   # the official figure script's settings (docs/protocols.md#figures)
FRAME = {True: "green", False: "orange", None: "grey"}
PAGE_WIDTH = 6.8   # inches: a figure across both columns of a paper page


def _frame(axis, colour: str, width: float = 4) -> None:
    for spine in axis.spines.values():
        spine.set_edgecolor(colour)
        spine.set_linewidth(width)
    axis.set_xticks([])
    axis.set_yticks([])


def draw_grid(rows: list[tuple], path, title: str = "", thumb: int = 96, formats=("png",)) -> Path:
    """rows: [(query image, [(image, is_relevant | None, score), ...], row label), ...] as PIL images.

    Writes ``path`` (PNG) and, for every other entry of ``formats`` ("pdf", "svg"), the same figure beside it.
    """
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    from probes.fileio import atomic_path

    k = max(len(hits) for _, hits, _ in rows)
    natural = (1.1 * (k + 1) + 0.6, 1.2 * len(rows) + 0.8)
    scale = min(1.0, PAGE_WIDTH / natural[0])          # never wider than two page columns
    fig = Figure(figsize=(natural[0] * scale, natural[1] * scale))
    axes = fig.subplots(len(rows), k + 1, squeeze=False)
    labelled = False
    for r, (query, hits, label) in enumerate(rows):
        axes[r, 0].imshow(query.resize((thumb, thumb)))
        _frame(axes[r, 0], "red", 3)
        axes[r, 0].set_ylabel(label, fontsize=7, rotation=0, ha="right", va="center")
        for c in range(k):
            axis = axes[r, c + 1]
            if c >= len(hits):
                axis.axis("off")
                continue
            image, relevant, score = hits[c]
            labelled = labelled or relevant is not None
            axis.imshow(image.resize((thumb, thumb)))
            _frame(axis, FRAME[relevant], 2)
            axis.set_title(f"{score:.2f}", fontsize=5, pad=1)
    axes[0, 0].set_title("query", fontsize=7, pad=2)
    handles = [Patch(facecolor="none", edgecolor="red", label="query")]
    if labelled:
        handles += [Patch(facecolor="none", edgecolor="green", label="same part"),
                    Patch(facecolor="none", edgecolor="orange", label="other part")]
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=7, frameon=False)
    if title:
        fig.suptitle(title, fontsize=8)
    fig.tight_layout(rect=(0, 0.05, 1, 0.95))
    path = Path(path)
    for fmt in dict.fromkeys(("png",) + tuple(formats)):
        target = path if fmt == "png" else path.with_suffix(f".{fmt}")
        with atomic_path(target, suffix=f".{fmt}") as tmp:
            fig.savefig(tmp, dpi=150, format=fmt)
    return path


def choose_queries(labels: np.ndarray, count: int, seed: int = 0) -> list[int]:
    """``count`` query indices, round-robin over the classes so every part shows up."""
    rng = np.random.default_rng(seed)
    classes = sorted(set(np.asarray(labels).tolist()))
    chosen: list[int] = []
    for i in range(count):
        members = np.flatnonzero(np.asarray(labels) == classes[i % len(classes)])
        remaining = [int(m) for m in members if int(m) not in chosen]
        if remaining:
            chosen.append(int(rng.choice(remaining)))
    return chosen


def part_grid(crop, labels, class_names, queries, neighbour_ids, neighbour_sims, path, k: int = 8,
              title: str = "", formats=("png",)) -> Path:
    """A grid of part patches: ``crop(i)`` gives patch i; neighbours are gallery indices [Q, >= k]."""
    rows = []
    for q in queries:
        hits = [(crop(int(j)), bool(labels[int(j)] == labels[q]), float(s))
                for j, s in list(zip(neighbour_ids[q], neighbour_sims[q]))[:k]]
        rows.append((crop(q), hits, class_names[int(labels[q])]))
    return draw_grid(rows, path, title=title, formats=formats)


def image_patches(path) -> tuple[list, list]:
    """The 49 overlapping 224 x 224 patches of one image and their (top, left) positions, as the official
    figure script cuts them: Resize 256 -> CenterCrop 224 -> 4x resize to 896, stride 112."""
    from PIL import Image
    from torchvision import transforms

    with Image.open(path) as image:
        image = image.convert("RGB")
    image = transforms.CenterCrop(PATCH)(transforms.Resize(256, interpolation=transforms.InterpolationMode.BICUBIC)(image))
    total = PATCH * SPLIT_RATIO
    image = image.resize((total, total), Image.BICUBIC)
    patches, positions = [], []
    for top in range(0, total - PATCH + 1, STRIDE):
        for left in range(0, total - PATCH + 1, STRIDE):
            patches.append(image.crop((left, top, left + PATCH, top + PATCH)))
            positions.append((top, left))
    return patches, positions


PER_SIDE = (PATCH * SPLIT_RATIO - PATCH) // STRIDE + 1
