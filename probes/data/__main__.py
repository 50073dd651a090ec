"""Command line for datasets: list, download, prepare, check, synth.

    python -m probes.data list
    python -m probes.data download cub --root data/cub
    python -m probes.data prepare cub --root data/cub
    python -m probes.data check cub --root data/cub [--json]
    python -m probes.data synth cub --out /tmp/cub [--seed 0] [--size images=40 --size classes=4]
    python -m probes.data prepare lip-19 --root data/lip19 --source data/lip     # a converter with a source

Exit status: 0 on success, 1 when `check` found problems, 2 on bad input (one `error:` line naming the file or
option; `--debug` or PARTPROBE_DEBUG=1 shows the traceback). Every generated dataset holds a marker file
(probes/data/generated.py): records of runs on it say `data_source: synthetic` and are never compared with the paper.
"""
from __future__ import annotations

import argparse
import sys

from pathlib import Path

from probes.data import DATASETS, dataset_module
from probes.data.generated import carry_marker, find_marker
from probes.data.report import format_report, report_json
from probes.data.synth import GENERATORS, resolve_name, synth
from probes.errors import run_main


def _size(text: str) -> tuple[str, int]:
    key, sep, value = text.partition("=")
    if not sep or not key or not value.lstrip("-").isdigit():
        raise argparse.ArgumentTypeError(f"{text!r}: expected KEY=INTEGER, e.g. images=40")
    return key, int(value)


def _dataset_name(text: str) -> str:
    """Names use hyphens (``ade20k-part-234``); spellings with underscores or without hyphens match too."""
    return resolve_name(text, set(DATASETS) | set(GENERATORS))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m probes.data", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("list", help="datasets and generators this command knows")
    for command, text in (("download", "fetch the official archives (or print how to get them)"),
                          ("prepare", "unpack / convert downloaded archives into the layout the reader takes"),
                          ("check", "read a dataset and report counts, class histogram and problems")):
        sub = commands.add_parser(command, help=text)
        sub.add_argument("name", type=_dataset_name, choices=sorted(DATASETS))
        sub.add_argument("--root", required=True, help="dataset folder")
        if command == "prepare":
            sub.add_argument("--source", help="where the archives or the source dataset are (default: --root)")
        if command == "check":
            sub.add_argument("--json", action="store_true", help="print the report as JSON")
    sub = commands.add_parser("synth", help="write a small dataset in the exact official layout")
    sub.add_argument("name", type=_dataset_name, choices=sorted(GENERATORS))
    sub.add_argument("--out", required=True, help="folder to write into")
    sub.add_argument("--seed", type=int, default=0)
    sub.add_argument("--size", type=_size, action="append", default=[], metavar="KEY=N",
                     help="generator size option, e.g. images=40 (repeatable)")
    return parser


def main(argv=None) -> int:
    """Exit status (see the module docstring); a suite error prints one ``error:`` line (``--debug``: the
    traceback)."""
    return run_main(_main, argv, prog="python -m probes.data")


def _main(argv) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "list":
        print("datasets (download / prepare / check):", ", ".join(sorted(DATASETS)))
        print("generators (synth):", ", ".join(sorted(GENERATORS)))
        return 0
    if args.command == "synth":
        root = synth(args.name, args.out, seed=args.seed, **dict(args.size))
        print(root)
        return 0
    module = dataset_module(args.name)
    if args.command == "download":
        module.download(args.root, name=args.name)
        return 0
    if args.command == "prepare":
        root = module.prepare(args.root, name=args.name, source=args.source)
        carry_marker(Path(args.source or args.root), Path(root))
        print(f"prepared {args.name} in {root}; now run: python -m probes.data check {args.name} --root {root}")
        return 0
    report = module.check(args.root, name=args.name)
    marker = find_marker(args.root)
    if marker is not None:
        report["generated"] = str(marker)
    print(report_json(report) if args.json else format_report(report))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
