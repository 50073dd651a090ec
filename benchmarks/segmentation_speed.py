"""Seconds per iteration of the linear segmentation protocol vs the dense protocol's total time, one run.

    python benchmarks/segmentation_speed.py                        # ViT-S/16 random weights, 224 px, LIP-format data
    python benchmarks/segmentation_speed.py --model colorstats     # the weight-free baseline (head cost only)

Both protocols run on the same generated LIP data (``synth("lip")``) with the same encoder at the same input
size. Linear: a real mmengine Runner (``probes.adapters.mmseg.train``), the paper's head and auxiliary head
and batch, ``--iters`` iterations; reported is the median iteration time after the first five (the history
hook's own timings, evaluation excluded). Dense: ``probes.segmentation.dense_knn`` end to end (training
patches, faiss index, every validation image), encoder loading excluded. Ratios: the dense protocol's total
in linear iterations, and the paper's 160k linear iterations against one dense run.

``vit-s-random`` stands in for a real checkpoint without a download: timm's ``vit_small_patch16_224`` with
its random initialisation, saved as a plain timm state dict and loaded back through the zoo.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="vit-s-random", help="vit-s-random, colorstats, or a registry name.")
    parser.add_argument("--crop-size", type=int, default=224, help="Training crop, slide window and dense input size.")
    parser.add_argument("--iters", type=int, default=30, help="Linear iterations timed.")
    parser.add_argument("--train-batch-size", type=int, default=16, help="Linear batch (the paper's: 16).")
    parser.add_argument("--train-images", type=int, default=64)
    parser.add_argument("--val-images", type=int, default=16)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice).")
    args = parser.parse_args()

    import torch
    from probes import segmentation as seg
    from probes.adapters import mmseg as adapter
    from probes.data.synth import synth

    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        root = synth("lip", tmp / "lip", seed=0, train_images=args.train_images, val_images=args.val_images)
        model, fmt, arch = args.model, None, None
        if model == "vit-s-random":
            import timm
            from safetensors.torch import save_file
            arch = {"model": "vit_small_patch16_224", "kwargs": {"num_classes": 0}}
            net = timm.create_model(arch["model"], pretrained=False, **arch["kwargs"])
            model, fmt = str(tmp / "vit_s_random.safetensors"), "timm"
            save_file(net.state_dict(), model)
        spec = seg.describe_encoder(model, fmt, arch)
        size = args.crop_size
        scales = dict(crop_size=size, train_scale=(4 * size, size), test_scale=(4 * size, size),
                      slide_stride=size // 2)
        layers = None if spec.kind != "vit" or spec.depth >= 12 else tuple(range(spec.depth))

        linear = seg.resolve_protocol("linear", "lip", spec, iters=args.iters, batch_size=args.batch_size,
                                      seg_layers=layers, **scales)
        config = seg.runner_config(linear, "lip", root, spec, work_dir=tmp / "work", num_workers=0)
        result = adapter.train(config)
        seconds = result["timing"]["seconds"][5:] or result["timing"]["seconds"]
        per_iter = statistics.median(seconds)
        linear_miou = adapter.select(result["history"], "last")["summary"]["mIoU"]

        dense = seg.resolve_protocol("dense", "lip", spec, dense_input_size=size)
        backbone = seg.build_backbone(spec.model, spec.format, seg.backbone_arch(spec, size), layers=dense.seg_layers)
        train, val = seg.load_split("lip", root, "train"), seg.load_split("lip", root, "val")
        started = time.perf_counter()
        out = seg.dense_knn(backbone, train, val, dense)
        dense_total = time.perf_counter() - started

    print(f"encoder {args.model} ({spec.kind}, {spec.depth} blocks), {size} px, threads {torch.get_num_threads()}, "
          f"LIP data {args.train_images} train / {args.val_images} val images")
    print(f"linear protocol: {per_iter:.3f} s/iteration (median of {len(seconds)}, batch {args.batch_size}); "
          f"mIoU after {args.iters} iterations {linear_miou:.1f}")
    print(f"dense protocol:  {dense_total:.2f} s in all ({out['memory_patches']} memory patches, k {out['k']}); "
          f"mIoU {out['summary']['mIoU']:.1f}")
    print(f"ratio: the dense protocol costs {dense_total / per_iter:.1f} linear iterations; the paper's 160k "
          f"iterations cost {160_000 * per_iter / dense_total:,.0f}x one dense run on this data")


if __name__ == "__main__":
    main()
