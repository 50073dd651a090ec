"""A repeated part-retrieval run with a warm feature cache vs the first run, measured in one process.

    python benchmarks/cache_speedup.py                          # colorstats baseline, generated CUB (~1k patches)
    python benchmarks/cache_speedup.py --model vit-s-random     # a ViT-S/16 at 224 px with random weights

Both runs are ``probes.part_retrieval.run`` on the same generated CUB-format data with the encoder
already loaded (model loading is not part of either); the first starts from an empty feature cache
(a fresh PARTPROBE_FEATURES folder), the second finds every shard. Reported: both wall times, their
ratio, and the encoder forward calls of the second run (must be 0).

``vit-s-random`` stands in for a real checkpoint without a download: timm's ``vit_small_patch16_224``
with its random initialisation, wrapped in ``probes.encoders.Encoder``; it costs what a ViT-S costs.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


class CountingEncoder:
    """Forwards everything to an encoder and counts its forward passes."""

    def __init__(self, encoder):
        self.encoder, self.calls = encoder, 0

    def __getattr__(self, name):
        return getattr(self.encoder, name)

    def extract(self, images, features, block=None):
        self.calls += 1
        return self.encoder.extract(images, features, block=block)


def random_vit_small():
    import hashlib

    import timm
    import torch

    from probes.encoders import Encoder
    from probes.zoo.registry import IMAGENET, Arch

    torch.manual_seed(0)
    model = timm.create_model("vit_small_patch16_224", pretrained=False, num_classes=0)
    digest = hashlib.sha256(b"vit_small_patch16_224 timm random init, torch.manual_seed(0)").hexdigest()
    return Encoder(model, name="vit-s-random", method="random-init", arch=Arch("vit_small_patch16_224"),
                   format="timm", source="timm random initialisation", checkpoint_sha256=digest,
                   transform=IMAGENET, device="cpu")


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=("colorstats", "vit-s-random"), default="colorstats",
                        help="Encoder of both runs.")
    parser.add_argument("--images", type=int, default=300, help="Generated CUB images (about 3.5 patches each).")
    parser.add_argument("--batch-size", type=int, default=64, help="Images per forward pass.")
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="partprobe-bench-"))
    os.environ["PARTPROBE_FEATURES"] = str(work / "features")      # an empty cache for the first run
    from probes import experiment
    from probes.baselines import build_baseline
    from probes.data.synth import synth
    from probes.part_retrieval import PartRetrievalConfig, run

    root = synth("cub", work / "cub", seed=0, images=args.images)
    encoder = CountingEncoder(build_baseline("colorstats") if args.model == "colorstats" else random_vit_small())
    experiment.load_encoder = lambda cfg: encoder          # loaded once, outside both timings
    (cfg,) = experiment.parse(PartRetrievalConfig, [
        "--model", "colorstats", "--dataset", "cub", "--data-root", str(root), "--data-source", "synthetic",
        "--no-write", "--quiet", "--batch-size", str(args.batch_size), "--self-match", "both"])

    start = time.perf_counter()
    first = run(cfg)
    first_s, first_calls = time.perf_counter() - start, encoder.calls
    encoder.calls = 0
    start = time.perf_counter()
    second = run(cfg)
    second_s, second_calls = time.perf_counter() - start, encoder.calls

    same = all(a.metrics == b.metrics for a, b in zip(first, second))
    result = {"model": args.model, "patches": first[0].protocol["num_items"], "first_s": first_s,
              "second_s": second_s, "speedup": first_s / second_s, "first_forward_calls": first_calls,
              "second_forward_calls": second_calls, "identical_metrics": same}
    print(f"{args.model}: {result['patches']} patches")
    print(f"first run (empty cache):  {first_s:7.2f} s, {first_calls} forward passes")
    print(f"second run (warm cache):  {second_s:7.2f} s, {second_calls} forward passes")
    print(f"speed-up: {result['speedup']:.1f}x; identical metrics: {same}")
    return result


if __name__ == "__main__":
    main()
