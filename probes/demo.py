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
    from probes.data.synth import synth
    from probes.part_retrieval import run as part_retrieval

    out = Path(out).resolve()  # absolute, so that records let the figures re-open the data
    results = Path(results).resolve() if results else out / "results"
    root = synth("cub", out / "cub", seed=seed, images=images)
    print(f"generated CUB-format data with planted parts under {root}")
    records = part_retrieval("colorstats", "cub", root, preset="partaware", self_match="both", results=results,
                             grid=out / "retrieval_grid.png", data_source="synthetic", seed=seed,
                             progress=progress)
    records += _object_level(out, results, seed, progress)
    records += _per_block(out, root, results, seed, progress)
    from analysis.leaderboard import export
    print(f"leaderboard of {results} written to {export([results], out / 'leaderboard.md').out}")
    print()
    print("The same probe on the real CUB-200-2011 with DINO ViT-B/16 (downloads the checkpoint):")
    print(f"    {REAL_COMMAND}")
    return records


def _object_level(out: Path, results: Path, seed: int, progress: bool) -> list:
    from probes.data.synth import synth
    from probes.object_retrieval import run as object_retrieval

    cifar = synth("cifar10", out / "cifar10", seed=seed)
    print(f"generated CIFAR-10-format data under {cifar}")
    return object_retrieval("colorstats", "cifar10", cifar, features=["patch_mean"], knn=False, results=results,
                            data_source="synthetic", seed=seed, progress=progress)


UNTRAINED_VIT = {"model": "vit_small_patch16_224",
                 "kwargs": dict(img_size=224, embed_dim=32, depth=3, num_heads=2, num_classes=0, global_pool="token")}


def _per_block(out: Path, cub: Path, results: Path, seed: int, progress: bool) -> list:
    import timm
    import torch

    from probes.fileio import atomic_path
    from probes.part_retrieval import run as part_retrieval

    checkpoint = out / "untrained_vit.pth"
    if not checkpoint.exists():
        torch.manual_seed(seed)
        model = timm.create_model(UNTRAINED_VIT["model"], pretrained=False, **UNTRAINED_VIT["kwargs"])
        with atomic_path(checkpoint) as tmp:
            torch.save(model.state_dict(), tmp)
    print(f"part retrieval block by block with an untrained tiny ViT ({checkpoint})")
    records = []
    for block in (0, 1, 2, None):
        records += part_retrieval(str(checkpoint), "cub", cub, format="timm", arch=UNTRAINED_VIT, block=block,
                                  features=["patch_mean"], self_match="included", results=results,
                                  data_source="synthetic", seed=seed, progress=progress)
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
