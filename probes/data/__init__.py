"""Dataset readers, converters and small-dataset generators in the official on-disk formats.

DATASETS names the module that serves each dataset on the command line (python -m probes.data ...).
Each such module provides

    download(root, name)               fetch the official archives into root (or print how to get them)
    prepare(root, name, source=None)   unpack / convert what download fetched into the layout its reader takes
    check(root, name) -> dict          counts, class histogram and the first problems (probes.data.report)

One module may serve several names (the mmseg presets); `name` tells it which. Generators are listed
separately in probes.data.synth.GENERATORS. Modules are imported only when used.
"""
from __future__ import annotations

import importlib

from probes.data.errors import DatasetFormatError

DATASETS: dict[str, str] = {
    "cifar10": "probes.data.cifar",
    "coco": "probes.data.coco",
    "cub": "probes.data.cub",
    "lip": "probes.data.lip",
    "ade20k-part-209": "probes.data.mmseg_layout",
    "ade20k-object-59": "probes.data.mmseg_layout",
    "pascal-part-193": "probes.data.mmseg_layout",
    "pascal-object-16": "probes.data.mmseg_layout",
    "lip-19": "probes.data.mmseg_layout",
    "ade20k": "probes.data.ade20k",
    "ade20k-full": "probes.data.ade20k",
    "ade20k-part-234": "probes.data.ade20k_part234",
    "pascal-part": "probes.data.pascal_part",
    "pascal-part-58": "probes.data.pascal_part",
    "pascal-part-108": "probes.data.pascal_part",
    "pascal-part-116": "probes.data.pascal_part",
}


def dataset_module(name: str):
    try:
        return importlib.import_module(DATASETS[name])
    except KeyError:
        raise KeyError(f"unknown dataset {name!r}; known: {', '.join(sorted(DATASETS))}") from None


__all__ = ["DATASETS", "DatasetFormatError", "dataset_module"]
