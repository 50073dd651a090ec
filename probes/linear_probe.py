"""Linear probe and kNN classification on frozen features.

Tasks (``--dataset``):
- ``cub``: 4-way part classification (right eye / right leg / left wing / tail) on the keypoint-centred
  crops of the part-retrieval database; train = ``is_train=1`` images, evaluation = ``is_train=0``.
- ``coco``: 3-way part classification (nose / right wrist / left ankle); train2017 -> val2017.
- ``cifar10``: 10-way image classification; train -> test.
- ``imagenet`` / ``folder``: any ImageNet-style folder (``DATA_ROOT/train/<class>/``, ``DATA_ROOT/val/<class>/``);
  ``imagenet`` additionally requires the 1000 classes and names the records ``imagenet_*`` (Table 1).

Transforms (spec §4.3, the official ``PatchLoaderCUB200``/``PatchLoaderCOCO``): part crops are resized
with PIL bicubic to ``resize`` (256 for a 224 model) and centre-cropped to ``crop`` (224) for training,
and resized to ``crop`` x ``crop`` for evaluation; sizes follow the encoder's ``crop_size`` (resize =
round(crop x 256 / 224)), so tiny test models get tiny inputs. Whole images (CIFAR-10, folders) take the
encoder's own eval transform (Resize + CenterCrop) for both splits. There is no random augmentation:
features are computed once and cached (probes.features), so an epoch of a linear head takes seconds.

The head is trained by probes.train with a named recipe (default ``partaware``: SGD, lr 0.1 x B/256,
per-epoch cosine, 90 epochs, batch 1024) and evaluated after every epoch; the record carries both the
best epoch's top-1 (``top1_best``, what the paper reports) and the last epoch's (``top1_last``).
kNN classification (DINO protocol: cosine, k = 20 reported of {10, 20, 100, 200}, T = 0.07) on the
same features is written as a separate record (probe ``knn``).

    python probes/linear_probe.py --model dino --dataset cub --data-root data/cub
    python probes/linear_probe.py --model mae --dataset imagenet --data-root /data/imagenet \
        --head linear-bn --preset mae-linear
"""
if __name__ == "__main__" and not __package__:  # run as a file from a checkout
    import pathlib, sys
    sys.path[0] = str(pathlib.Path(__file__).resolve().parents[1])

import argparse
import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from PIL import Image

from probes import paths
from probes.encoders import forward_identity, mae_shuffle_protocol, shuffled_mae_tokens
from probes.features import extract_features
from probes.heads import LINEAR_HEADS, build_head
from probes.results import make_record, write_record
from probes.train import (PRESETS, Recipe, TensorSource, default_device, precision_name, resolve_recipe,
                          train_probe)

DATASETS = ("cub", "coco", "cifar10", "imagenet", "folder")
PART_DATASETS = ("cub", "coco")
LINEAR_FEATURES = ("cls", "patch_mean", "projection")
KNN_KS = (10, 20, 100, 200)
MODEL_SELECTION = "both: top1_best (best epoch, the official script's best_acc1) and top1_last (final epoch)"


# ------------------------------------------------------------------------------------------- the task
@dataclass
class Task:
    """The two splits of a classification task, as (normalised image tensor, label) datasets."""
    dataset: str                       # record name: cub, coco, cifar10, imagenet, folder
    train: torch.utils.data.Dataset
    eval: torch.utils.data.Dataset
    train_labels: torch.Tensor
    eval_labels: torch.Tensor
    class_names: list[str]
    eval_split: str                    # the evaluated split, e.g. "test", "val2017"
    protocol: dict[str, Any]           # data-side options, copied into every record
    identity: dict[str, Any] = field(default_factory=dict)   # what the inputs depend on (feature cache keys)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


class ArrayImages(torch.utils.data.Dataset):
    """(transform(PIL image), label) for uint8 HWC arrays (CIFAR-10)."""

    def __init__(self, data, labels, transform: Callable):
        self.data, self.labels, self.transform = data, labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        return self.transform(Image.fromarray(self.data[index])), int(self.labels[index])


def to_rgb(image: Image.Image) -> Image.Image:
    return image.convert("RGB")


def part_train_transform(resize: int, crop: int, mean, std) -> Callable:
    """The official train transform on a square crop: Resize(resize, bicubic), CenterCrop(crop), normalise."""
    from torchvision import transforms as T
    return T.Compose([T.Lambda(to_rgb), T.Resize(resize, interpolation=T.InterpolationMode.BICUBIC),
                      T.CenterCrop(crop), T.ToTensor(), T.Normalize(mean, std)])


def image_transform(encoder, mean, std) -> Callable:
    """The encoder's eval transform (Resize + CenterCrop with its interpolation) with the chosen statistics."""
    from torchvision import transforms as T
    mode = {"bicubic": T.InterpolationMode.BICUBIC, "bilinear": T.InterpolationMode.BILINEAR}[encoder.interpolation]
    return T.Compose([T.Lambda(to_rgb), T.Resize(encoder.resize, interpolation=mode),
                      T.CenterCrop(encoder.crop_size), T.ToTensor(), T.Normalize(mean, std)])


def statistics(normalize: str, encoder) -> tuple[tuple, tuple]:
    from probes.parts import normalization
    return normalization(normalize, encoder)


def _files_digest(paths_and_labels) -> str:
    digest = hashlib.sha256()
    for path, label in paths_and_labels:
        stat = os.stat(path)
        digest.update(f"{path}|{label}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def build_task(dataset: str, data_root, encoder, *, crop: str = "official-code", normalize: str | None = None,
               coco_dist_scope: str = "code_exact", keypoints: str = "paper") -> Task:
    """The train/eval datasets of ``dataset`` with the protocol's transforms, sized for ``encoder``."""
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; choose one of {DATASETS}")
    if data_root is None or not Path(data_root).exists():
        raise FileNotFoundError(f"--data-root {data_root!r} does not exist (the {dataset} dataset folder)")
    size = int(encoder.crop_size)
    if dataset in PART_DATASETS:
        from probes.parts import CropTransform, PartCropDataset, build_part_database

        normalize = normalize or "imagenet"        # the official code normalises every model with ImageNet statistics
        mean, std = statistics(normalize, encoder)
        resize = round(size * 256 / 224)
        options = dict(crop=crop, keypoints=keypoints)
        if dataset == "coco":
            options["coco_dist_scope"] = coco_dist_scope
        train_db = build_part_database(dataset, data_root, split="train", **options)
        eval_db = build_part_database(dataset, data_root, split="test", **options)
        for db in (train_db, eval_db):
            if len(db) == 0:
                raise ValueError(f"{dataset} {db.split}: no part crop survives the {crop} protocol in {data_root}")
        train_tf = part_train_transform(resize, size, mean, std)
        eval_tf = CropTransform(size, mean, std)
        train_desc = f"PIL bicubic Resize({resize}) + CenterCrop({size}); Normalize({list(mean)}, {list(std)})"
        protocol = {**train_db.options, "normalize": normalize, "train_transform": train_desc,
                    "eval_transform": eval_tf.describe(), "train_split": train_db.split, "eval_split": eval_db.split,
                    "num_train": len(train_db), "num_eval": len(eval_db),
                    "train_counts": train_db.counts(), "eval_counts": eval_db.counts()}
        return Task(dataset, PartCropDataset(train_db, train_tf), PartCropDataset(eval_db, eval_tf),
                    torch.as_tensor(train_db.labels()), torch.as_tensor(eval_db.labels()), list(train_db.class_names),
                    eval_db.split, protocol,
                    {"train": {**train_db.identity(), "transform": train_desc},
                     "eval": {**eval_db.identity(), "transform": eval_tf.describe()}})

    normalize = normalize or "model"
    mean, std = statistics(normalize, encoder)
    transform = image_transform(encoder, mean, std)
    desc = (f"Resize({encoder.resize}, {encoder.interpolation}) + CenterCrop({encoder.crop_size}); "
            f"Normalize({list(mean)}, {list(std)})")
    if dataset == "cifar10":
        from probes.data.cifar import CIFAR10

        train, test = CIFAR10(data_root, train=True), CIFAR10(data_root, train=False)
        protocol = {"normalize": normalize, "train_transform": desc, "eval_transform": desc, "train_split": "train",
                    "eval_split": "test", "num_train": len(train), "num_eval": len(test)}
        identity = {"train": {"root": str(train.root), "split": "train", "n": len(train), "transform": desc,
                              "digest": hashlib.sha256(train.data.tobytes() + train.labels.tobytes()).hexdigest()},
                    "eval": {"root": str(test.root), "split": "test", "n": len(test), "transform": desc,
                             "digest": hashlib.sha256(test.data.tobytes() + test.labels.tobytes()).hexdigest()}}
        return Task("cifar10", ArrayImages(train.data, train.labels, transform),
                    ArrayImages(test.data, test.labels, transform), torch.as_tensor(train.labels),
                    torch.as_tensor(test.labels), list(train.classes), "test", protocol, identity)

    from probes.data.folder import image_folder_splits

    train, val = image_folder_splits(data_root, transform, transform)
    if dataset == "imagenet" and len(train.classes) != 1000:
        raise ValueError(f"{data_root}/train has {len(train.classes)} class folders, ImageNet-1k has 1000; "
                         f"use --dataset folder for other image folders")
    protocol = {"normalize": normalize, "train_transform": desc, "eval_transform": desc, "train_split": "train",
                "eval_split": "val", "num_train": len(train), "num_eval": len(val)}
    identity = {"train": {"root": str(Path(data_root).resolve()), "split": "train", "transform": desc,
                          "digest": _files_digest(train.samples)},
                "eval": {"root": str(Path(data_root).resolve()), "split": "val", "transform": desc,
                         "digest": _files_digest(val.samples)}}
    return Task(dataset, train, val, torch.as_tensor(train.targets), torch.as_tensor(val.targets),
                list(train.classes), "val", protocol, identity)


def load_encoder_and_task(model: str, dataset: str, data_root, encoder=None, *, format: str | None = None, arch=None,
                          device: str | None = None, crop: str = "official-code", normalize: str | None = None,
                          coco_dist_scope: str = "code_exact", keypoints: str = "paper",
                          branch: str = "teacher") -> tuple[torch.device, Any, Task]:
    """(torch device, encoder, task) of a probe run; ``encoder``, when given, is used instead of loading ``model``."""
    run_device = default_device(device)
    if encoder is None:
        from probes.encoders import load_encoder
        encoder = load_encoder(model, format=format, arch=arch, device=str(run_device), branch=branch)
    task = build_task(dataset, data_root, encoder, crop=crop, normalize=normalize, coco_dist_scope=coco_dist_scope,
                      keypoints=keypoints)
    return run_device, encoder, task


def mae_shuffle_applies(requested: bool | None, preset: str, dataset: str, encoder) -> bool:
    """Whether this run shuffles MAE patch tokens as the official part-aware code did (protocols.md §8.4).

    Default (``requested`` None): on for the official part classification (preset ``partaware`` on the part
    crops), off otherwise; it only ever applies to MAE checkpoints.
    """
    wanted = (preset == "partaware" and dataset in PART_DATASETS) if requested is None else bool(requested)
    return wanted and getattr(encoder, "format", None) == "mae"


def recipe_with_overrides(preset: str, head_family: str, *, epochs: int | None = None, batch_size: int | None = None,
                          eval_batch_size: int | None = None, lr: float | None = None, base_lr: float | None = None,
                          warmup_epochs: float | None = None) -> Recipe:
    """The preset's recipe with the command line's overrides (None keeps the preset's value). ``lr`` is an
    absolute learning rate, so it turns the preset's batch/256 scaling off; ``base_lr`` keeps the scaling."""
    overrides = dict(epochs=epochs, batch_size=batch_size, eval_batch_size=eval_batch_size, base_lr=base_lr,
                     warmup_epochs=warmup_epochs)
    if lr is not None:
        overrides.update(base_lr=lr, lr_scaling="none")
    return resolve_recipe(preset, head_family, **overrides)


def vector_features(encoder, task: Task, feature: str, block: int | None, batch_size: int, num_workers: int,
                    progress: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, eval) feature matrices [N, D] of ``task``, cached on disk by probes.features."""
    out = []
    for which, dataset in (("train", task.train), ("eval", task.eval)):
        key = {"encoder": encoder.info(), "data": task.identity[which], "purpose": "classification",
               **forward_identity(encoder)}
        out.append(extract_features(encoder, dataset, [feature], block=block, batch_size=batch_size, cache_key=key,
                                    num_workers=num_workers, progress=progress,
                                    description=f"{task.dataset} {which} {feature}")[feature])
    return out[0], out[1]


# ------------------------------------------------------------------------------------------ recording
def recipe_protocol(recipe, head: str) -> dict[str, Any]:
    """Every training hyper-parameter, under the names the records use."""
    return {"head": head, "preset": recipe.name, "optimizer": recipe.optimizer, "lr": recipe.lr,
            "base_lr": recipe.base_lr, "lr_scaling": recipe.lr_scaling, "batch_size": recipe.batch_size,
            "eval_batch_size": recipe.eval_batch_size, "epochs": recipe.epochs, "schedule": recipe.schedule,
            "warmup_epochs": recipe.warmup_epochs, "min_lr": recipe.min_lr, "momentum": recipe.momentum,
            "weight_decay": recipe.weight_decay, "weight_decay_end": recipe.weight_decay_end,
            "betas": list(recipe.betas), "grad_clip": recipe.grad_clip, "drop_last": recipe.drop_last,
            "recipe_source": recipe.source, "loss": "cross-entropy",
            "train_augmentation": "none (inputs computed once with the fixed transforms)",
            "model_selection": MODEL_SELECTION}


def print_table(rows: list[dict[str, Any]]) -> None:
    """A plain results table on stdout."""
    if not rows:
        return
    columns = list(rows[0])
    widths = {c: max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in columns}
    print("  ".join(c.ljust(widths[c]) for c in columns))
    for row in rows:
        print("  ".join(str(row.get(c, "")).ljust(widths[c]) for c in columns))


def fmt(value: float) -> str:
    return f"{value:.2f}"


# ------------------------------------------------------------------------------------------------ run
def run(model: str, dataset: str, data_root, *, head: str = "linear", preset: str = "partaware",
        feature: str = "cls", block: int | None = None, epochs: int | None = None, batch_size: int | None = None,
        eval_batch_size: int | None = None, lr: float | None = None, base_lr: float | None = None,
        warmup_epochs: float | None = None, seed: int = 0,
        device: str | None = None, results: str | os.PathLike | None = None, crop: str = "official-code",
        keypoints: str = "paper", normalize: str | None = None, coco_dist_scope: str = "code_exact",
        knn: bool = True, knn_k: int = 20, knn_ks=KNN_KS, knn_temperature: float = 0.07,
        extract_batch_size: int = 64, num_workers: int = 0, format: str | None = None, arch=None,
        encoder=None, data_source: str | None = "official", stop_after_epochs: int | None = None,
        progress: bool = True, mae_token_shuffle: bool | None = None, branch: str = "teacher") -> dict[str, Any]:
    """Linear probe (+ kNN) of ``model`` on ``dataset``; writes the records and returns
    ``{"linear": {...}, "knn": {...}, "history": [...], "records": [paths]}`` (metrics in percent).

    ``lr`` sets an absolute learning rate (no batch scaling); ``base_lr`` replaces the preset's base
    learning rate (scaled by batch/256 when the preset scales). ``encoder`` passes an already loaded
    encoder instead of ``model``/``format``/``arch``.
    """
    started = time.time()
    if head not in LINEAR_HEADS:
        raise ValueError(f"the linear probe trains {LINEAR_HEADS}; for {head!r} use probes/attentive_probe.py")
    if feature not in LINEAR_FEATURES:
        raise ValueError(f"feature must be one of {LINEAR_FEATURES} (one vector per image), got {feature!r}")
    if lr is not None and base_lr is not None:
        raise ValueError("give --lr (absolute) or --base-lr (scaled by batch/256), not both")
    if knn and knn_k not in knn_ks:
        raise ValueError(f"the reported kNN k={knn_k} must be one of the evaluated ks {list(knn_ks)}")
    recipe = recipe_with_overrides(preset, "linear", epochs=epochs, batch_size=batch_size,
                                   eval_batch_size=eval_batch_size, lr=lr, base_lr=base_lr, warmup_epochs=warmup_epochs)
    run_device, encoder, task = load_encoder_and_task(model, dataset, data_root, encoder, format=format, arch=arch,
                                                      device=device, crop=crop, normalize=normalize,
                                                      coco_dist_scope=coco_dist_scope, keypoints=keypoints,
                                                      branch=branch)
    shuffle = mae_shuffle_applies(mae_token_shuffle, preset, dataset, encoder)
    with shuffled_mae_tokens(encoder, shuffle, seed=seed):
        info = encoder.info()
        train_x, eval_x = vector_features(encoder, task, feature, block, extract_batch_size, num_workers, progress)
        data_protocol = {**task.protocol, **({"data_source": data_source} if data_source else {}),
                         **mae_shuffle_protocol(encoder, shuffle, seed)}

        torch.manual_seed(seed)                      # the head's initialisation
        probe_head = build_head(head, train_x.shape[1], task.num_classes)
        protocol = {**data_protocol, **recipe_protocol(recipe, head), "precision": precision_name(run_device)}
        fingerprint = {"probe": "linear_probe", "encoder": info, "data": task.identity, "feature": feature, "block": block,
                       "protocol": protocol, "seed": seed}
        result = train_probe(probe_head, TensorSource(train_x, task.train_labels), TensorSource(eval_x, task.eval_labels),
                             recipe, num_classes=task.num_classes, seed=seed, device=run_device, fingerprint=fingerprint,
                             stop_after_epochs=stop_after_epochs, progress=progress)
        out: dict[str, Any] = {"history": result.history, "records": [], "linear": None, "knn": None,
                               "resumed_from_epoch": result.resumed_from_epoch}
        results_dir = Path(results) if results is not None else paths.results_dir()
        config = {"script": "linear_probe", "model": model or info["name"], "dataset": dataset,
                  "data_root": str(data_root), "head": head, "preset": preset, "feature": feature, "block": block,
                  "recipe": recipe.to_dict(), "seed": seed, "device": str(run_device), "crop": crop,
                  "keypoints": keypoints, "normalize": task.protocol.get("normalize"), "coco_dist_scope": coco_dist_scope,
                  "extract_batch_size": extract_batch_size, "num_workers": num_workers, "knn": knn, "knn_k": knn_k,
                  "knn_ks": list(knn_ks), "knn_temperature": knn_temperature, "data_source": data_source}
        rows = []
        if result.epochs_done < recipe.epochs:
            print(f"stopped after {result.epochs_done}/{recipe.epochs} epochs; rerun the same command to resume "
                  f"(no record, linear or kNN, is written for an unfinished run)")
            return out
        selection = result.selection()
        out["linear"] = selection
        record = make_record(probe="linear_probe", dataset=task.dataset, split=task.eval_split, encoder_info=info,
                             feature=feature, block=block, protocol=protocol, metrics=selection, seed=seed,
                             wall_time_s=time.time() - started, device=str(run_device),
                             notes=["top1 per epoch: " + json.dumps([round(h["top1"], 4) for h in result.history])])
        out["records"].append(write_record(record, results_dir, config=config))
        rows.append({"model": info["name"], "dataset": task.dataset, "probe": f"linear ({head}, {preset})",
                     "top1_best": f"{fmt(selection['top1_best'])} (epoch {selection['best_epoch']})",
                     "top1_last": fmt(selection["top1_last"])})

        if knn:
            from probes.metrics import knn_classify

            scores = knn_classify(train_x, task.train_labels, eval_x, task.eval_labels, ks=tuple(knn_ks),
                                  temperature=knn_temperature, num_classes=task.num_classes)
            metrics = {"top1": 100 * scores[knn_k]["top1"], "top5": 100 * scores[knn_k]["top5"]}
            for k in knn_ks:
                metrics[f"top1_k{k}"] = 100 * scores[k]["top1"]
                metrics[f"top5_k{k}"] = 100 * scores[k]["top5"]
            out["knn"] = metrics
            knn_protocol = {**data_protocol, "k": knn_k, "ks": list(knn_ks), "temperature": knn_temperature,
                            "similarity": "cosine (L2-normalised features)", "weighting": "exp(similarity / T)",
                            "reference": "facebookresearch/dino eval_knn.knn_classifier",
                            "train_size": len(task.train_labels)}
            record = make_record(probe="knn", dataset=task.dataset, split=task.eval_split, encoder_info=info,
                                 feature=feature, block=block, protocol=knn_protocol, metrics=metrics, seed=None,
                                 wall_time_s=time.time() - started, device=str(run_device),
                                 notes=[f"k larger than the {len(task.train_labels)} training items uses all of them"]
                                 if max(knn_ks) > len(task.train_labels) else [])
            out["records"].append(write_record(record, results_dir, config=config))
            rows.append({"model": info["name"], "dataset": task.dataset, "probe": f"kNN (k={knn_k}, T={knn_temperature})",
                         "top1_best": fmt(metrics["top1"]), "top1_last": ""})
        print_table(rows)
        return out


# ------------------------------------------------------------------------------------------------ CLI
def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """Options shared with probes/attentive_probe.py (and named as in the retrieval probes)."""
    parser.add_argument("--model", required=True, help="registry name/alias, timm:<model>, or a checkpoint file")
    parser.add_argument("--format", default=None, help="checkpoint format of a user's file (e.g. dino_full)")
    parser.add_argument("--arch", default=None,
                        help="timm model name, or JSON {\"model\": name, \"kwargs\": {...}} for a user's file")
    parser.add_argument("--arch-kwargs", default=None, help="JSON kwargs for the architecture, e.g. '{\"img_size\": 448}'")
    parser.add_argument("--dataset", required=True, choices=DATASETS)
    parser.add_argument("--data-root", required=True, help="dataset folder")
    parser.add_argument("--block", type=int, default=None, help="use block k's output (0-based) instead of the final one")
    parser.add_argument("--preset", default="partaware", choices=sorted(PRESETS), help="training recipe (probes/train.py)")
    parser.add_argument("--epochs", type=int, default=None, help="override the preset's epochs")
    parser.add_argument("--batch-size", type=int, default=None, help="override the preset's training batch")
    parser.add_argument("--eval-batch-size", type=int, default=None, help="override the preset's evaluation batch")
    lr = parser.add_mutually_exclusive_group()
    lr.add_argument("--lr", type=float, default=None, help="absolute learning rate (no batch scaling)")
    lr.add_argument("--base-lr", type=float, default=None, help="base learning rate (x batch/256 if the preset scales)")
    parser.add_argument("--warmup-epochs", type=float, default=None, help="override the preset's warmup epochs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: CUDA when present)")
    parser.add_argument("--results", default=None, help="results folder (default: $PARTPROBE_HOME/results)")
    parser.add_argument("--crop", default="official-code", choices=("official-code", "paper"), help="part crop rule")
    parser.add_argument("--keypoints", default="paper", choices=("paper", "all"), help="part classes")
    parser.add_argument("--normalize", default=None, choices=("imagenet", "model"),
                        help="input statistics (default: imagenet for part crops as the official code, model's own for images)")
    parser.add_argument("--coco-dist-scope", default="code_exact", choices=("code_exact", "image", "person"))
    parser.add_argument("--extract-batch-size", type=int, default=64, help="batch of the feature extraction")
    parser.add_argument("--num-workers", type=int, default=0, help="data-loading worker processes")
    parser.add_argument("--data-source", default="official", choices=("official", "synthetic"),
                        help="recorded; mark generated data (never compared with the paper's numbers)")
    parser.add_argument("--branch", default="teacher", choices=("teacher", "student"),
                        help="full DINO/iBOT/CARP checkpoints: teacher (the official README) or student (the "
                             "official part-aware script's default)")
    parser.add_argument("--mae-token-shuffle", default=None, choices=("on", "off"),
                        help="MAE checkpoints only: shuffle patch tokens before the position embedding as the "
                             "official code did (default: on with --preset partaware on part crops, else off)")
    parser.add_argument("--stop-after-epochs", type=int, default=None,
                        help="end this call after N more epochs (training state is kept; rerun to resume)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def on_off(value: str | None) -> bool | None:
    return None if value is None else value == "on"


def parse_arch(value: str | None, kwargs: str | None = None):
    """``--arch`` (a timm name or a JSON object) with ``--arch-kwargs`` (JSON) laid over it."""
    try:
        arch = json.loads(value) if value is not None and value.strip().startswith("{") else value
        extra = json.loads(kwargs) if kwargs else None
    except json.JSONDecodeError as err:
        raise SystemExit(f"--arch / --arch-kwargs is not valid JSON: {err}") from None
    if extra is None:
        return arch
    if not isinstance(extra, dict):
        raise SystemExit(f"--arch-kwargs must be a JSON object, got {kwargs!r}")
    if isinstance(arch, dict):
        return {**arch, "kwargs": {**arch.get("kwargs", {}), **extra}}
    return {"model": arch, "kwargs": extra} if arch else {"kwargs": extra}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser)
    parser.add_argument("--head", default="linear", choices=LINEAR_HEADS,
                        help="linear (the paper's: Linear on CLS) or linear-bn (MAE/CAE: BatchNorm + Linear)")
    parser.add_argument("--feature", default="cls", choices=LINEAR_FEATURES)
    parser.add_argument("--no-knn", action="store_true", help="skip the kNN classification")
    parser.add_argument("--knn-k", type=int, default=20, help="reported k (of 10, 20, 100, 200)")
    parser.add_argument("--knn-temperature", type=float, default=0.07)
    args = parser.parse_args(argv)
    return run(args.model, args.dataset, args.data_root, head=args.head, preset=args.preset, feature=args.feature,
               block=args.block, epochs=args.epochs, batch_size=args.batch_size, eval_batch_size=args.eval_batch_size,
               lr=args.lr, base_lr=args.base_lr, warmup_epochs=args.warmup_epochs, seed=args.seed,
               device=args.device, results=args.results, crop=args.crop, keypoints=args.keypoints, normalize=args.normalize,
               coco_dist_scope=args.coco_dist_scope, knn=not args.no_knn, knn_k=args.knn_k,
               knn_temperature=args.knn_temperature, extract_batch_size=args.extract_batch_size,
               num_workers=args.num_workers, format=args.format, arch=parse_arch(args.arch, args.arch_kwargs),
               data_source=args.data_source, stop_after_epochs=args.stop_after_epochs, progress=not args.quiet,
               mae_token_shuffle=on_off(args.mae_token_shuffle), branch=args.branch)


if __name__ == "__main__":
    main()
