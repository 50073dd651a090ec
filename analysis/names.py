"""Short names for tables and figures: models as the paper names them, datasets and tasks as a reader knows them.

A paper model (suite alias ``deit mocov3 dino beit mae cae ibot``, or the registry entry behind one) is shown
by its paper name (``MoCo v3``); every other model by its record name. Two different checkpoints filed under
one name (the same ``model``, another ``checkpoint_sha256``) get the first 6 hex digits of their hash, so they
never read as one model.
"""
from __future__ import annotations

from typing import Iterable

from probes.published import PAPER_MODELS, paper_alias

DATASETS = {
    "cub": "CUB", "coco": "COCO", "cifar10": "CIFAR-10", "imagenet": "ImageNet", "folder": "image folder",
    "ade20k": "ADE20K-150", "ade20k_object59": "ADE20K-Object-59", "ade20k_part209": "ADE20K-Part-209",
    "ade20k_object44": "ADE20K-Object-44", "ade20k_part234": "ADE20K-Part-234",
    "pascal_object16": "Pascal-Object-16", "pascal_part193": "Pascal-Part-193", "pascal_object20": "Pascal-Object-20",
    "pascal_part58": "Pascal-Part-58", "pascal_part108": "Pascal-Part-108", "pascal_part116": "Pascal-Part-116",
    "lip19": "LIP-19", "lip20": "LIP-20",
}
PROBES = {
    "part_retrieval": "part retrieval", "object_retrieval": "object retrieval", "knn": "kNN",
    "linear_probe": "linear probe", "attentive_probe": "attentive probe",
    "linear_segmentation": "linear seg.", "finetune_segmentation": "fine-tuned seg.",
    "dense_segmentation": "dense kNN seg.",
}


def paper_name(model: str) -> str:
    """``MoCo v3`` for the paper's models (alias or registry name), the record's name otherwise."""
    alias = paper_alias(model)
    return PAPER_MODELS[alias] if alias else model


def paper_order(model: str) -> tuple:
    """Sort key: the paper's models in the paper's row order, then every other model by name."""
    alias = paper_alias(model)
    return (0, list(PAPER_MODELS).index(alias), model) if alias else (1, 0, model)


def model_labels(rows: Iterable[tuple[str, str]]) -> dict[tuple[str, str], str]:
    """(model, checkpoint_sha256) -> its label; a name shared by two checkpoints gets a short hash."""
    rows = sorted(set(rows))
    by_label: dict[str, list[tuple[str, str]]] = {}
    for row in rows:
        by_label.setdefault(paper_name(row[0]), []).append(row)
    labels = {}
    for label, members in by_label.items():
        for model, sha in members:
            labels[(model, sha)] = label if len(members) == 1 else f"{label} {(sha or 'no-file')[:6]}"
    return labels


def dataset_name(dataset: str) -> str:
    return DATASETS.get(dataset, dataset)


def task_name(probe: str, dataset: str) -> str:
    """``CUB part retrieval``, ``ADE20K-Part-209 linear seg.``."""
    return f"{dataset_name(dataset)} {PROBES.get(probe, probe)}"
