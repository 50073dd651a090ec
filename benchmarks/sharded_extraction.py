"""Extraction sharded over torchrun ranks vs one process, on the same data and model, measured in one run.

    python benchmarks/sharded_extraction.py                    # ViT-S/16 random weights, generated CUB parts
    python benchmarks/sharded_extraction.py --ranks 4 --images 200

Three runs of ``probes.features.extract`` over the part crops of a generated CUB (official-code crops,
224 px, cache off), each in a fresh process: one process with one thread, one process with ``--ranks``
threads (what the machine offers one process), and ``torchrun --nproc_per_node RANKS`` with one thread
per rank (gloo). Reported: the extraction time inside each (rank 0's, after the exchange that gives every
rank every row), the ratios, and whether the sharded features equal the single process's bit for bit.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def worker(root: Path, out: Path, batch_size: int) -> None:
    import torch

    from benchmarks.gpu_throughput import random_encoder
    from probes.features import extract
    from probes.options import RunOptions
    from probes.views.parts import PartCropOptions, crop_transform, part_crops

    encoder = random_encoder("vit_small_patch16_224", "cpu", "fp32")
    view = part_crops("cub", root, PartCropOptions(crop="official-code"),
                      crop_transform(encoder, encoder.mean, encoder.std))
    start = time.perf_counter()
    features = extract(encoder, view, ["cls", "patch_mean"], run=RunOptions(batch_size=batch_size, cache=False,
                                                                           quiet=True))
    seconds = time.perf_counter() - start
    if int(os.environ.get("RANK", "0")) == 0:
        torch.save(features, out.with_suffix(".pt"))
        out.write_text(json.dumps({"seconds": seconds, "items": len(view)}))


def launch(args, root: Path, out: Path, ranks: int | None, threads: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PARTPROBE_HOME": str(out.parent / "home")}
    prefix = [sys.executable] if ranks is None else [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                                     "--nproc_per_node", str(ranks)]
    start = time.perf_counter()
    subprocess.run(prefix + [__file__, "--worker", str(root), str(out), "--batch-size", str(args.batch_size)],
                   env=env, check=True)
    return {**json.loads(out.read_text()), "wall_s": time.perf_counter() - start}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ranks", type=int, default=2, help="torchrun processes (default 2, this machine's cores).")
    parser.add_argument("--images", type=int, default=60, help="Generated CUB images (about 3.5 patches each).")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--worker", nargs=2, type=Path, metavar=("ROOT", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return worker(*args.worker, args.batch_size)

    import torch

    from probes.data.synth import synth

    work = Path(tempfile.mkdtemp(prefix="partprobe-sharded-"))
    root = synth("cub", work / "cub", seed=0, images=args.images)
    one = launch(args, root, work / "one.json", None, 1)
    threads = launch(args, root, work / "threads.json", None, args.ranks)
    sharded = launch(args, root, work / "sharded.json", args.ranks, 1)
    reference, got = torch.load(work / "one.pt"), torch.load(work / "sharded.pt")
    equal = all(torch.equal(reference[k], got[k]) for k in reference)
    print(f"{one['items']} part crops, ViT-S/16 random weights, 224 px, batch {args.batch_size}, "
          f"{os.cpu_count()} CPUs")
    print(f"  1 process, 1 thread:           {one['seconds']:7.1f} s extraction ({one['wall_s']:.1f} s with start-up)")
    print(f"  1 process, {args.ranks} threads:          {threads['seconds']:7.1f} s extraction ({threads['wall_s']:.1f} s)")
    print(f"  torchrun, {args.ranks} ranks x 1 thread:  {sharded['seconds']:7.1f} s extraction ({sharded['wall_s']:.1f} s)")
    print(f"  sharded vs 1 process, 1 thread:        {one['seconds'] / sharded['seconds']:.2f}x")
    print(f"  sharded vs 1 process, {args.ranks} threads:       {threads['seconds'] / sharded['seconds']:.2f}x")
    print(f"  sharded features equal the single process's bit for bit: {equal}")
    return {"one": one, "threads": threads, "sharded": sharded, "equal": equal}


if __name__ == "__main__":
    main()
