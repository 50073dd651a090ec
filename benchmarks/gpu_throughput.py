"""Extraction throughput and model FLOP utilisation, and exact-AP time of the three AP implementations.

    python benchmarks/gpu_throughput.py                   # on a GPU: ViT-S/16, ViT-B/16, ResNet-50; AP over 150,000
    python benchmarks/gpu_throughput.py --small           # the small case (what a CPU runs anyway)

Extraction, per model (timm architectures with random weights: the cost of the real checkpoints, no
download), at 224 px:

- ``end to end``: ``probes.features.extract`` over JPEG files written first (500 x 375, CUB's typical
  size): decoding, the model's eval transform (resize, centre crop, normalise) in DataLoader workers,
  pinned batches, non-blocking copies, the forward pass, features back on the CPU. Cache off.
- ``model only``: the same forward passes on a batch already on the device.
- FLOPs per image from ``torch.utils.flop_counter`` (a multiply-add = 2 FLOPs) and the model FLOP
  utilisation (MFU) = achieved FLOP/s / the device's peak (dense bf16 or fp32 tensor-core figures of the
  card, from its datasheet; ``--peak-tflops`` for another). No MFU on a CPU (no peak figure).
  The ratio end to end / model only says how much of the model's speed the input pipeline keeps.

Exact AP of every query's full ranking (random 768-d features, 4 classes, self included), each checked
against scikit-learn on sampled queries before any time is printed:

- the torch engine (``engine="torch"``) on the device (the GPU path), over every query;
- the numpy engine (the CPU path), over every query up to 20,000 items, else timed over ``--sample-queries``
  queries against the whole gallery and extrapolated (150,000 items would take many minutes);
- the official per-query loop (``F.cosine_similarity`` + ``sklearn.metrics.average_precision_score``),
  timed the same way.

Ratios are of timings taken in the same run. On a machine without CUDA it runs the small case and says so.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

# Dense tensor-core peaks, FLOP/s, of the cards a run is likely to meet (NVIDIA datasheets, SXM parts).
PEAKS = {"H200": {"bf16": 989e12, "fp32": 67e12}, "H100": {"bf16": 989e12, "fp32": 67e12},
         "A100": {"bf16": 312e12, "fp32": 19.5e12}, "L40S": {"bf16": 362e12, "fp32": 91.6e12}}
MODELS = {"ViT-S/16": "vit_small_patch16_224", "ViT-B/16": "vit_base_patch16_224", "ResNet-50": "resnet50"}


class ImageFiles(torch.utils.data.Dataset):
    def __init__(self, paths, transform):
        self.paths, self.transform = paths, transform

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, index):
        from PIL import Image
        with Image.open(self.paths[index]) as image:
            return self.transform(image), 0


class FileView:
    """The view interface of probes.views over image files."""

    def __init__(self, paths, transform):
        self.dataset, self.split = ImageFiles(paths, transform), "benchmark"

    def __len__(self):
        return len(self.dataset)

    def identity(self):
        return {"view": "benchmark images"}


def write_images(folder: Path, count: int) -> list[str]:
    from PIL import Image

    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:375, 0:500]
    paths = []
    for i in range(count):
        base = (np.stack([x * (i % 7 + 1), y * (i % 5 + 1), x + y], -1) / 4) % 256
        pixels = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
        path = folder / f"{i:05d}.jpg"
        Image.fromarray(pixels).save(path, quality=90)
        paths.append(str(path))
    return paths


def random_encoder(arch: str, device: str, precision: str):
    import timm

    from probes.encoders import Encoder
    from probes.zoo.registry import IMAGENET, Arch

    torch.manual_seed(0)
    model = timm.create_model(arch, pretrained=False, num_classes=0)
    encoder = Encoder(model, name=f"{arch}-random", method="random-init", arch=Arch(arch), format="timm",
                      source="timm random initialisation", checkpoint_sha256="0" * 64,
                      transform=IMAGENET, device=device)       # resize 256, centre crop 224
    return encoder.configure(precision=precision)


def flops_per_image(encoder) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.randn(1, 3, encoder.crop_size, encoder.crop_size)
    with FlopCounterMode(display=False) as counter:
        encoder.extract(x, ["cls"])
    return float(counter.get_total_flops())


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def extraction(name: str, arch: str, paths, args, device: str, precision: str) -> dict:
    from probes.features import extract
    from probes.options import RunOptions

    encoder = random_encoder(arch, device, precision)
    view = FileView(paths, encoder.eval_transform())
    run = RunOptions(batch_size=args.batch_size, num_workers=args.workers, cache=False, quiet=True)
    extract(encoder, FileView(paths[:args.batch_size], encoder.eval_transform()), ["cls"], run=run)   # warm-up
    synchronize(device)
    start = time.perf_counter()
    extract(encoder, view, ["cls"], run=run)
    synchronize(device)
    end_to_end = len(paths) / (time.perf_counter() - start)

    batch = torch.randn(args.batch_size, 3, 224, 224).to(device)
    encoder.extract(batch, ["cls"])
    steps = max(1, len(paths) // args.batch_size)
    synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        encoder.extract(batch, ["cls"])
    synchronize(device)
    model_only = steps * args.batch_size / (time.perf_counter() - start)
    flops = flops_per_image(encoder)
    return {"model": name, "end_to_end_img_s": end_to_end, "model_only_img_s": model_only, "gflops_per_img": flops / 1e9,
            "achieved_tflops": model_only * flops / 1e12, "pipeline_keeps": end_to_end / model_only}


def ap_timings(args, device: str) -> dict:
    from sklearn.metrics import average_precision_score

    from probes.metrics import average_precision_per_query

    generator = torch.Generator().manual_seed(0)
    features = torch.randn(args.ap_items, 768, generator=generator)
    labels = torch.randint(0, 4, (args.ap_items,), generator=generator)
    sample = torch.randperm(args.ap_items, generator=generator)[:args.sample_queries]

    synchronize(device)
    start = time.perf_counter()
    torch_ap = average_precision_per_query(features, labels, include_self=True, device=device, engine="torch")
    synchronize(device)
    torch_s = time.perf_counter() - start

    # The numpy engine over every query where that takes seconds (the small case), else over the sample.
    timed = torch.arange(args.ap_items) if args.ap_items <= 20_000 else sample
    start = time.perf_counter()
    numpy_ap = average_precision_per_query(features[timed], labels[timed], features, labels, include_self=True,
                                           engine="numpy")
    numpy_s = (time.perf_counter() - start) / len(timed) * args.ap_items
    numpy_ap = numpy_ap[sample.numpy()] if len(timed) == args.ap_items else numpy_ap

    start = time.perf_counter()
    official = []
    for q in sample.tolist():                 # the official code: cosine_similarity then sklearn, per query
        sims = torch.nn.functional.cosine_similarity(features[q][None], features, dim=1).numpy()
        official.append(average_precision_score((labels == labels[q]).numpy(), sims))
    official_s = (time.perf_counter() - start) / len(sample) * args.ap_items
    error = max(float(np.abs(np.array(official) - torch_ap[sample.numpy()]).max()),
                float(np.abs(np.array(official) - numpy_ap).max()))
    if error > 1e-6:
        raise SystemExit(f"AP differs from sklearn by {error:.2e}: timings not reported")
    return {"items": args.ap_items, "torch_s": torch_s, "numpy_s": numpy_s, "official_s": official_s,
            "numpy_over_torch": numpy_s / torch_s, "official_over_torch": official_s / torch_s,
            "official_over_numpy": official_s / numpy_s, "max_abs_difference": error}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--small", action="store_true", help="The small case (always on a CPU).")
    parser.add_argument("--images", type=int, default=None, help="Image files per model (GPU 4096, small 32).")
    parser.add_argument("--batch-size", type=int, default=None, help="Extraction batch (GPU 256, small 16).")
    parser.add_argument("--workers", type=int, default=None, help="DataLoader workers (GPU: the CPUs, small 1).")
    parser.add_argument("--precision", choices=("bf16", "fp32"), default="bf16", help="On a GPU (a CPU: fp32).")
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    parser.add_argument("--ap-items", type=int, default=None, help="Items of the AP case (GPU 150,000, small 5,000).")
    parser.add_argument("--sample-queries", type=int, default=None, help="Queries timed for the numpy engine and "
                                                                          "the official loop (GPU 200, small 100).")
    parser.add_argument("--peak-tflops", type=float, default=None, help="The device's peak, if not in the table.")
    args = parser.parse_args(argv)

    on_gpu = torch.cuda.is_available()
    small = args.small or not on_gpu
    device = "cuda" if on_gpu else "cpu"
    precision = args.precision if on_gpu else "fp32"
    args.images = args.images or (32 if small else 4096)
    args.batch_size = args.batch_size or (16 if small else 256)
    args.workers = args.workers if args.workers is not None else (1 if small else min(16, os.cpu_count() or 1))
    args.ap_items = args.ap_items or (5_000 if small else 150_000)
    args.sample_queries = args.sample_queries or (100 if small else 200)
    card = torch.cuda.get_device_name(0) if on_gpu else f"CPU ({os.cpu_count()} cores, {torch.get_num_threads()} " \
                                                         f"torch threads)"
    peak = args.peak_tflops * 1e12 if args.peak_tflops else next(
        (p[precision] for key, p in PEAKS.items() if on_gpu and key in card), None)
    print(f"device: {card}; precision {precision}; {'SMALL CASE' if small else 'full case'}"
          + ("" if on_gpu else " (no CUDA: the small case, on the CPU)"))
    print(f"extraction: {args.images} JPEG files (500 x 375) per model, batch {args.batch_size}, "
          f"{args.workers} DataLoader workers, 224 px")

    results = {"device": card, "precision": precision, "small": small, "extraction": [], "ap": None}
    with tempfile.TemporaryDirectory(prefix="partprobe-throughput-") as folder:
        paths = write_images(Path(folder), args.images)
        for name in args.models:
            row = extraction(name, MODELS[name], paths, args, device, precision)
            row["mfu"] = row["achieved_tflops"] * 1e12 / peak if peak else None
            results["extraction"].append(row)
            mfu = f"{100 * row['mfu']:.1f}%" if row["mfu"] is not None else "n/a"
            print(f"  {name:<10} end to end {row['end_to_end_img_s']:9.1f} img/s   model only "
                  f"{row['model_only_img_s']:9.1f} img/s   pipeline keeps {100 * row['pipeline_keeps']:5.1f}%   "
                  f"{row['gflops_per_img']:.2f} GFLOP/img   {row['achieved_tflops']:.2f} TFLOP/s   MFU {mfu}")
    ap = ap_timings(args, device)
    results["ap"] = ap
    sampled = "the official loop" if ap["items"] <= 20_000 else "the numpy engine and the official loop"
    print(f"exact AP over {ap['items']} items (768-d, 4 classes, self included); "
          f"{args.sample_queries} queries timed for {sampled}:")
    print(f"  torch engine ({device}):{' ' * (10 - len(device))}{ap['torch_s']:9.2f} s (all queries)")
    numpy_how = "all queries" if ap["items"] <= 20_000 else "extrapolated"
    print(f"  numpy engine (CPU):       {ap['numpy_s']:9.2f} s ({numpy_how})   = {ap['numpy_over_torch']:.1f}x torch")
    print(f"  official per-query loop:  {ap['official_s']:9.2f} s (extrapolated)   = {ap['official_over_torch']:.1f}x "
          f"torch, {ap['official_over_numpy']:.1f}x numpy")
    print(f"  max |AP - sklearn| on the sampled queries: {ap['max_abs_difference']:.1e}")
    return results


if __name__ == "__main__":
    main()
