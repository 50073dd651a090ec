"""Part-retrieval features by the dense protocol vs the crop protocol, on the same keypoints and model.

    python benchmarks/dense_vs_crop.py                     # ViT-S/16 random weights, generated CUB
    python benchmarks/dense_vs_crop.py --images 200

The crop protocol (the paper's) encodes every keypoint's crop as its own 224 px image; the dense protocol
encodes each full image once (224 px) and samples its patch-token map at the image's keypoints. Both run
``probes.features`` (``extract`` and ``extract_dense``) over the official-code database of one generated
CUB, cache off, in this process: the time of each and the ratio, with the forward passes and images
each one encoded.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=60, help="Generated CUB images (about 3.5 keypoints each).")
    parser.add_argument("--batch-size", type=int, default=16, help="Images per forward pass.")
    args = parser.parse_args(argv)

    import torch

    from benchmarks.gpu_throughput import random_encoder
    from probes.data.synth import synth
    from probes.features import extract, extract_dense
    from probes.options import RunOptions
    from probes.views.parts import PartCropOptions, crop_transform, part_crops

    root = synth("cub", Path(tempfile.mkdtemp(prefix="partprobe-dense-")) / "cub", seed=0, images=args.images)
    encoder = random_encoder("vit_small_patch16_224", "cpu", "fp32")
    transform = crop_transform(encoder, encoder.mean, encoder.std)
    crops = part_crops("cub", root, PartCropOptions(crop="official-code"), transform)
    dense = part_crops("cub", root, PartCropOptions(crop="dense"), transform)
    run = RunOptions(batch_size=args.batch_size, cache=False, quiet=True)
    images_seen = []
    original = encoder.extract

    def counted(images, features, block=None):
        images_seen.append(images.shape[0])
        return original(images, features, block)

    encoder.extract = counted
    start = time.perf_counter()
    extract(encoder, crops, ["patch_mean"], run=run)
    crop_s, crop_images = time.perf_counter() - start, sum(images_seen)
    images_seen.clear()
    start = time.perf_counter()
    extract_dense(encoder, dense, run=run)
    dense_s, dense_images = time.perf_counter() - start, sum(images_seen)
    distinct = len({item.image_path for item in dense.items})
    print(f"{len(crops)} keypoints on {distinct} images, ViT-S/16 random weights, 224 px, batch {args.batch_size}, "
          f"{torch.get_num_threads()} torch threads, {os.cpu_count()} CPUs")
    print(f"  crops (one image per keypoint): {crop_s:7.1f} s  ({crop_images} images encoded)")
    print(f"  dense (one pass per image):     {dense_s:7.1f} s  ({dense_images} images encoded)")
    print(f"  dense vs crops: {crop_s / dense_s:.2f}x faster")
    return {"crop_s": crop_s, "dense_s": dense_s, "crop_images": crop_images, "dense_images": dense_images}


if __name__ == "__main__":
    main()
