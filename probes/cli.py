"""Command-line options that the retrieval probes (probes/part_retrieval.py, probes/object_retrieval.py) share.

One definition keeps their names, defaults and help texts the same in both scripts' ``--help``.
The classification probes have their own wording (probes/linear_probe.py ``add_common_arguments``).
"""
from __future__ import annotations

import argparse
import json


def add_model_options(parser: argparse.ArgumentParser) -> None:
    """Which encoder to load: ``--model --format --arch --arch-kwargs``."""
    parser.add_argument("--model", default="dino", help="Encoder: registry name or alias, timm:<name>, or a checkpoint file.")
    parser.add_argument("--format", default=None, help="Container format of a checkpoint file (e.g. dino_full); detected when omitted.")
    parser.add_argument("--arch", default=None, help="timm architecture of a checkpoint file (e.g. vit_base_patch16_224).")
    parser.add_argument("--arch-kwargs", default=None, help="JSON kwargs for the architecture, e.g. '{\"img_size\": 448}'.")
    parser.add_argument("--branch", choices=("teacher", "student"), default="teacher", help="Full DINO/iBOT/CARP checkpoints: the teacher (official README) or the student (the official retrieval script's default).")


def add_run_options(parser: argparse.ArgumentParser) -> None:
    """Where and how the features are computed and the records go:
    ``--batch-size --num-workers --device --results --no-cache``."""
    parser.add_argument("--batch-size", type=int, default=64, help="Images per encoder forward pass.")
    parser.add_argument("--num-workers", type=int, default=0, help="DataLoader worker processes for decoding and cropping.")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available).")
    parser.add_argument("--results", default=None, help="Folder for result records (default: $PARTPROBE_RESULTS or ~/.cache/partprobe/results).")
    parser.add_argument("--no-cache", action="store_true", help="Do not read or write the on-disk feature cache.")


def parse_arch(arch: str | None, arch_kwargs: str | None):
    """``--arch`` (a timm name, passed on as given) with ``--arch-kwargs`` (JSON) attached.

    probes/linear_probe.py has its own ``parse_arch`` that also reads ``--arch`` as JSON and merges the two;
    the retrieval scripts keep this narrower rule (and its error message) as they always had.
    """
    if arch_kwargs is None:
        return arch
    try:
        kwargs = json.loads(arch_kwargs)
    except json.JSONDecodeError as err:
        raise SystemExit(f"--arch-kwargs: not valid JSON ({err}); expected e.g. '{{\"img_size\": 448}}'")
    return {"model": arch, "kwargs": kwargs} if arch else {"kwargs": kwargs}
