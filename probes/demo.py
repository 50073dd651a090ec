"""The suite's main job in half a minute, without a download: part retrieval on generated CUB data.

    python -m probes.demo --out demo_data

1. writes a small CUB-200-2011 in the official layout with planted parts (``probes.data.synth``): every
   visible part is a coloured disk on a noise background;
2. runs the part-retrieval probe end to end (official-code crops, self-match included and excluded) with
   the ``colorstats`` baseline, a fixed colour-statistics "encoder" that needs no weights;
   then, so that every figure of ``analysis.figures`` has something to show, object retrieval on generated
   CIFAR-10 with the same baseline (object- versus part-level), and part retrieval block by block with an
   *untrained* tiny ViT (random weights, seed 0: it exercises the per-block machinery, its numbers mean
   nothing);
3. prints the results table, writes one result record per feature and self-match mode (default
   ``<out>/results``), the retrieval-grid figure ``<out>/retrieval_grid.png`` and the leaderboard of
   those records ``<out>/leaderboard.md`` (``analysis.leaderboard``);
4. prints the command that runs the same probe on the real dataset with a real model.

On this data colour identifies the part, so the baseline's AP is near 100 with the CLS (whole-crop)
feature; on real birds it is a lower bound that every pretrained encoder should beat.
"""
from __future__ import annotations

import argparse
from pathlib import Path

REAL_COMMAND = "python probes/part_retrieval.py --model dino --dataset cub --data-root /path/to/CUB"


def run(out, results=None, seed: int = 0, images: int = 40, progress: bool = True) -> list:
    from probes import part_retrieval
    from probes.data.synth import synth

    out = Path(out).resolve()  # absolute, so that records name where the data is
    results = Path(results).resolve() if results else out / "results"
    root = synth("cub", out / "cub", seed=seed, images=images)
    print(f"generated CUB-format data with planted parts under {root}")
    common = ["--results", str(results), "--data-source", "synthetic", "--seed", str(seed)] + \
        ([] if progress else ["--quiet"])
    records = part_retrieval.main(["--model", "colorstats", "--data-root", str(root), "--preset", "partaware",
                                   "--self-match", "both", "--grid", str(out / "retrieval_grid.png"), *common])
    records += _object_level(out, common, seed)
    records += _per_block(out, root, common, seed)
    from analysis.leaderboard import export
    print(f"leaderboard of {results} written to {export([results], out / 'leaderboard.md').out}")
    print()
    print("The same probe on the real CUB-200-2011 with DINO ViT-B/16 (downloads the checkpoint):")
    print(f"    {REAL_COMMAND}")
    return records


def _object_level(out: Path, common: list, seed: int) -> list:
    from probes import object_retrieval
    from probes.data.synth import synth

    cifar = synth("cifar10", out / "cifar10", seed=seed)
    print(f"generated CIFAR-10-format data under {cifar}")
    return object_retrieval.main(["--model", "colorstats", "--dataset", "cifar10", "--data-root", str(cifar),
                                  "--feature", "patch_mean", "--no-knn", *common])


UNTRAINED_VIT = {"model": "vit_small_patch16_224",
                 "kwargs": dict(img_size=224, embed_dim=32, depth=3, num_heads=2, num_classes=0, global_pool="token")}


def _per_block(out: Path, cub: Path, common: list, seed: int) -> list:
    import json

    import timm
    import torch

    from probes import part_retrieval
    from probes.fileio import atomic_path

    checkpoint = out / "untrained_vit.pth"
    if not checkpoint.exists():
        torch.manual_seed(seed)
        model = timm.create_model(UNTRAINED_VIT["model"], pretrained=False, **UNTRAINED_VIT["kwargs"])
        with atomic_path(checkpoint) as tmp:
            torch.save(model.state_dict(), tmp)
    print(f"part retrieval block by block with an untrained tiny ViT ({checkpoint})")
    records = []
    for block in (0, 1, 2, None):
        records += part_retrieval.main(
            ["--model", str(checkpoint), "--format", "timm", "--arch", json.dumps(UNTRAINED_VIT),
             "--data-root", str(cub), "--feature", "patch_mean", "--self-match", "included", *common]
            + ([] if block is None else ["--block", str(block)]))
    return records


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="Part retrieval end to end on generated data with the colorstats baseline.")
    parser.add_argument("--out", required=True, help="Folder for the generated data, the records and the figure.")
    parser.add_argument("--results", default=None, help="Folder for result records (default: <out>/results).")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the generated dataset.")
    args = parser.parse_args(argv)
    run(args.out, args.results, seed=args.seed)


if __name__ == "__main__":
    main()
