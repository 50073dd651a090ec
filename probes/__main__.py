"""``partprobe``: one command for every experiment and tool (``python -m probes`` is the same).

    partprobe part-retrieval --model dino --dataset cub --data-root /data/CUB
    partprobe zoo list
    partprobe leaderboard --results results --out leaderboard.csv

``partprobe COMMAND --help`` explains a command's options; each is also runnable as its own file
(``python probes/part_retrieval.py ...``) or module (``python -m probes.zoo ...``).
"""
from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "part-retrieval": ("probes.part_retrieval", "part retrieval on keypoint crops (Table 3, retrieval)"),
    "object-retrieval": ("probes.object_retrieval", "object retrieval and kNN on CIFAR-10 / COCO objects"),
    "linear-probe": ("probes.linear_probe", "linear probe + kNN (Table 3 linear, Table 1)"),
    "attentive-probe": ("probes.attentive_probe", "attentive probe (Table 3 attentive, Table 1)"),
    "part-segmentation": ("probes.part_segmentation", "part / object segmentation: linear, fine-tuned UperNet, "
                                                      "dense kNN (Table 4)"),
    "detection": ("probes.detection", "COCO detection and instance segmentation through detectron2"),
    "patch-grid": ("probes.patch_grid", "patch-retrieval grid over a folder of images (Figures 2, 4)"),
    "published": ("probes.published", "the paper's published values and the conditions each needs"),
    "zoo": ("probes.zoo.__main__", "checkpoints: list, info, download, verify, detect, convert"),
    "data": ("probes.data.__main__", "datasets: list, download, prepare, check, synth"),
    "demo": ("probes.demo", "the main job on generated data, no download"),
    "sweep": ("probes.sweep", "models x experiments x datasets x presets, resumable, local or Slurm"),
    "leaderboard": ("analysis.leaderboard", "merge result folders into a leaderboard"),
    "tables": ("analysis.tables", "the paper's tables (3, 1, 4, 2) from result folders: CSV, Markdown, LaTeX"),
    "figures": ("analysis.figures", "figures from result folders"),
    "retrieval-grid": ("analysis.retrieval_grid", "retrieval grid of one part-retrieval record"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: partprobe COMMAND [options]   (partprobe COMMAND --help for its options)", "", "commands:"]
    lines += [f"  {name:<{width}}  {about}" for name, (_, about) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"partprobe: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    sys.argv = [f"partprobe {name}", *rest]
    from probes.errors import run_main

    return run_main(module.main, rest, prog=f"partprobe {name}")


if __name__ == "__main__":
    sys.exit(main())
