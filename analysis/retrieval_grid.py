"""Retrieval-grid figures: each row a query patch (red frame) and its top-k retrieved patches.

Two sources of patches:

- a part database (``plot_part_retrieval_grid``; ``probes/part_retrieval.py --grid PATH`` calls it):
  retrieved patches framed green when they are the query's part, orange otherwise;
- a folder of images, cut as the paper's Figures 2 and 4 were (``pr_patch_retrieval_imagenet_vis.py``):
  Resize 256 -> CenterCrop 224 -> resize to 896 (4x), 7 x 7 = 49 overlapping 224 x 224 patches with
  stride 112, every patch encoded on its own, cosine retrieval over all patches of all images::

      python analysis/retrieval_grid.py --model dino --images /data/imagenet/val_subset --out grid.png \\
          --query ILSVRC2012_val_00000001.JPEG:3,3

Figures use matplotlib's Agg backend (no display needed).
"""
if __name__ == "__main__" and not __package__:  # run as a file from a checkout
    import pathlib, sys
    sys.path[0] = str(pathlib.Path(__file__).resolve().parents[1])

import argparse
from pathlib import Path

import numpy as np

PATCH, STRIDE, SPLIT_RATIO = 224, 112, 4   # the official figure script's settings


def _matplotlib():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _frame(axis, colour: str, width: float = 4) -> None:
    for spine in axis.spines.values():
        spine.set_edgecolor(colour)
        spine.set_linewidth(width)
    axis.set_xticks([])
    axis.set_yticks([])


def draw_grid(rows: list[tuple], path, title: str = "", thumb: int = 96):
    """rows: [(query image, [(image, is_relevant, score), ...]), ...] as PIL images; writes a PNG.

    Frames: query red; a hit green when relevant, orange when not, grey when unknown (None).
    """
    plt = _matplotlib()
    k = max(len(hits) for _, hits in rows)
    fig, axes = plt.subplots(len(rows), k + 1, figsize=(1.3 * (k + 1), 1.4 * len(rows)), squeeze=False)
    for r, (query, hits) in enumerate(rows):
        axes[r, 0].imshow(query.resize((thumb, thumb)))
        _frame(axes[r, 0], "red")
        axes[r, 0].set_title("query", fontsize=7)
        for c in range(k):
            axis = axes[r, c + 1]
            if c >= len(hits):
                axis.axis("off")
                continue
            image, relevant, score = hits[c]
            axis.imshow(image.resize((thumb, thumb)))
            _frame(axis, {True: "green", False: "orange"}.get(relevant, "grey"), 3)
            axis.set_title(f"{score:.2f}", fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    from probes.fileio import atomic_path
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    return path


def plot_part_retrieval_grid(db, features, path, *, queries: int = 6, k: int = 8, exclude_self: bool = True,
                             seed: int = 0, title: str = ""):
    """Grid of ``queries`` patches of a part database (spread over its classes) and their top-k patches."""
    from probes.metrics import topk_neighbours

    labels = db.labels()
    rng = np.random.default_rng(seed)
    classes = sorted(set(labels.tolist()))
    chosen = []
    for i in range(queries):   # round-robin over classes so every part shows up
        members = np.flatnonzero(labels == classes[i % len(classes)])
        remaining = [m for m in members if m not in chosen]
        if remaining:
            chosen.append(int(rng.choice(remaining)))
    sims, idx = topk_neighbours(features, None, min(k, len(db) - 1), exclude_self=exclude_self)
    rows = []
    for q in chosen:
        hits = [(db.crop(int(j)), labels[int(j)] == labels[q], float(s)) for s, j in zip(sims[q], idx[q])]
        rows.append((db.crop(q), hits))
    return draw_grid(rows, path, title=title or f"part retrieval ({db.dataset})")


# --- the paper's ImageNet figure -------------------------------------------------------------------------------
def image_patches(path) -> tuple[list, list]:
    """The 49 overlapping 224 x 224 patches of one image and their (top, left) positions, as the official script."""
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


def plot_image_folder_grid(encoder, image_paths, queries: list[tuple[str, int, int]], path, *, k: int = 24,
                           feature: str = "patch_mean", batch_size: int = 49, title: str = ""):
    """Top-k patches over all patches of ``image_paths`` for each query (image path, row, col in the 7x7 grid)."""
    import torch

    from probes.metrics import topk_neighbours
    from probes.parts import CropTransform, normalization

    mean, std = normalization("imagenet", encoder)
    transform = CropTransform(encoder.crop_size, mean, std)
    vectors, owners, crops = [], [], []
    for image_path in image_paths:
        patches, _ = image_patches(image_path)
        for start in range(0, len(patches), batch_size):
            batch = torch.stack([transform(p) for p in patches[start:start + batch_size]])
            vectors.append(encoder.extract(batch, [feature])[feature])
        owners.extend([str(image_path)] * len(patches))
        crops.extend(patches)
    vectors = torch.cat(vectors)
    per_side = (PATCH * SPLIT_RATIO - PATCH) // STRIDE + 1
    rows = []
    for image_path, row, col in queries:
        starts = [i for i, owner in enumerate(owners) if owner == str(image_path)]
        if not starts:
            raise ValueError(f"query image {image_path} is not among the images")
        q = starts[0] + row * per_side + col
        sims, idx = topk_neighbours(vectors[q:q + 1], vectors, k + 1)
        hits = [(crops[int(j)], None, float(s))           # no labels here: grey frames
                for s, j in zip(sims[0], idx[0]) if int(j) != q][:k]
        rows.append((crops[q], hits))
    return draw_grid(rows, path, title=title or f"patch retrieval ({feature})")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="Patch-retrieval grid over a folder of images (paper Figures 2, 4).")
    parser.add_argument("--model", required=True, help="Encoder: registry name or alias, timm:<name>, or a checkpoint file.")
    parser.add_argument("--images", required=True, help="Folder of images; every image is cut into 49 overlapping patches.")
    parser.add_argument("--query", action="append", required=True,
                        help="Query patch as FILE:ROW,COL (0-based in the 7x7 grid), repeatable.")
    parser.add_argument("--out", required=True, help="PNG file to write.")
    parser.add_argument("--k", type=int, default=24, help="Retrieved patches per query (the paper shows 24).")
    parser.add_argument("--feature", default="patch_mean", help="Feature to compare: patch_mean, cls or projection.")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available).")
    args = parser.parse_args(argv)
    from probes.encoders import load_encoder

    folder = Path(args.images)
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if not paths:
        raise SystemExit(f"{folder}: no .jpg/.jpeg/.png images")
    queries = []
    for text in args.query:
        name, _, cell = text.rpartition(":")
        try:
            row, col = (int(v) for v in cell.split(","))
        except ValueError:
            raise SystemExit(f"--query {text!r}: expected FILE:ROW,COL, e.g. img.jpg:3,3") from None
        queries.append((str(folder / name), row, col))
    encoder = load_encoder(args.model, device=args.device)
    print(plot_image_folder_grid(encoder, paths, queries, args.out, k=args.k, feature=args.feature))


if __name__ == "__main__":
    main()
