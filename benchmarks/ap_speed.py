"""Exact AP over full rankings: partprobe's chunked implementation vs the official code's per-query loop.

    python benchmarks/ap_speed.py                      # 50,000 random 768-d items, 4 classes (as CUB's parts)
    python benchmarks/ap_speed.py --items 5000 --sklearn-queries 100

Both sides answer the same question: the AP of every item's ranking of all 50,000 items (self included,
as the official code), relevant = same class. Reported in one run, as ratios:

- ``ours``: probes.metrics.average_precision_per_query on the features -- cosine similarities in query
  chunks, one sort per query row, no N x N matrix -- timed over all queries;
- ``sklearn loop``: what pr_patch_retrieval.py does per query once its similarity rows exist:
  ``average_precision_score(mask, similarity)``, timed on --sklearn-queries queries and extrapolated;
- ``official loop``: the same plus the official similarity step, ``F.cosine_similarity(x[:, None],
  feats[None], 2)`` on the CPU (the code uses batches of 16; 4 here keep its [B, N, D] temporary
  small), timed on one batch and extrapolated.

The AP values of the sampled queries are checked against sklearn's (to 1e-6) before any time is reported.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from sklearn.metrics import average_precision_score  # noqa: E402

from probes.metrics import average_precision_per_query  # noqa: E402


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--items", type=int, default=50_000, help="Number of items (queries = gallery).")
    parser.add_argument("--dim", type=int, default=768, help="Feature dimension.")
    parser.add_argument("--classes", type=int, default=4, help="Number of classes (CUB part retrieval has 4).")
    parser.add_argument("--sklearn-queries", type=int, default=200, help="Queries timed for the sklearn loop.")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the random features and labels.")
    args = parser.parse_args(argv)

    generator = torch.Generator().manual_seed(args.seed)
    features = torch.randn(args.items, args.dim, generator=generator)
    labels = torch.randint(0, args.classes, (args.items,), generator=generator)
    print(f"{args.items} items x {args.dim} dims, {args.classes} classes, {torch.get_num_threads()} torch threads, "
          f"{os.cpu_count()} CPUs")

    start = time.perf_counter()
    ours = average_precision_per_query(features, labels, include_self=True)
    ours_s = time.perf_counter() - start

    # The official per-query loop on a sample of queries, with the same similarity values.
    normalized = torch.nn.functional.normalize(features, dim=1)
    sample = torch.randperm(args.items, generator=generator)[:args.sklearn_queries]
    rows = (normalized[sample] @ normalized.T).numpy()
    masks = {c: (labels == c).int().numpy() for c in range(args.classes)}
    start = time.perf_counter()
    reference = [average_precision_score(masks[int(labels[q])], rows[i]) for i, q in enumerate(sample.tolist())]
    sklearn_per_query = (time.perf_counter() - start) / len(sample)
    error = float(np.abs(np.array(reference) - ours[sample.numpy()]).max())
    if error > 1e-6:
        raise SystemExit(f"AP differs from sklearn by {error:.2e}: timings not reported")

    batch = normalized[sample[:4]]        # the official code uses 16 per batch; 4 keep the [B, N, D] temporary small
    start = time.perf_counter()
    torch.nn.functional.cosine_similarity(batch[:, None], normalized[None], 2)
    cosine_per_query = (time.perf_counter() - start) / len(batch)

    sklearn_s = sklearn_per_query * args.items
    official_s = (sklearn_per_query + cosine_per_query) * args.items
    result = {"items": args.items, "ours_s": ours_s, "ours_ms_per_query": 1e3 * ours_s / args.items,
              "sklearn_ms_per_query": 1e3 * sklearn_per_query, "sklearn_loop_s": sklearn_s,
              "official_cosine_ms_per_query": 1e3 * cosine_per_query, "official_loop_s": official_s,
              "speedup_vs_sklearn_loop": sklearn_s / ours_s, "speedup_vs_official_loop": official_s / ours_s,
              "max_abs_ap_difference": error}
    print(f"ours (all {args.items} queries, similarities included): {ours_s:8.1f} s "
          f"({result['ours_ms_per_query']:.3f} ms/query)")
    print(f"sklearn loop ({len(sample)} queries timed, extrapolated): {sklearn_s:8.1f} s "
          f"({result['sklearn_ms_per_query']:.3f} ms/query)")
    print(f"official loop (+ F.cosine_similarity on the CPU):       {official_s:8.1f} s "
          f"({result['official_cosine_ms_per_query']:.1f} ms/query for the similarities)")
    print(f"speed-up vs the sklearn loop:   {result['speedup_vs_sklearn_loop']:.1f}x")
    print(f"speed-up vs the official loop:  {result['speedup_vs_official_loop']:.1f}x")
    print(f"AP agreement with sklearn on the sampled queries: max |diff| = {error:.1e}")
    return result


if __name__ == "__main__":
    main()
