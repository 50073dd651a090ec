"""What the linear and the attentive probe share: the task, the training options and recipes, the presets,
and the protocol their records carry (docs/protocols.md#part-classification).

Tasks (``--dataset``): ``cub`` / ``coco`` part classification on the keypoint crops (4 / 3 classes),
``cifar10``, and ImageNet-style folders (``imagenet``, ``folder``); see probes/views/classification.py.
Heads are trained by probes.train with a named recipe, evaluated after every epoch; records carry both the
best epoch's top-1 (``top1_best``, what the paper reports) and the last epoch's (``top1_last``).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Literal

from probes import experiment
from probes.experiment import Experiment
from probes.options import ConfigError, ImageDataOptions, Preset, option, section
from probes.train import Recipe, precision_name, resolve_recipe
from probes.views.classification import DATASETS, PART_DATASETS, Task, build_task
from probes.views.parts import PartCropOptions

IMAGE_DATASETS = tuple(d for d in DATASETS if d not in PART_DATASETS)
MODEL_SELECTION = "both: top1_best (best epoch, the official script's best_acc1) and top1_last (final epoch)"


@dataclass
class ClassificationData(ImageDataOptions):
    dataset: Literal["cub", "coco", "cifar10", "imagenet", "folder"] = option(
        "cub", help="cub / coco: part classification on the keypoint crops; cifar10; imagenet or folder: "
                    "ImageNet-style train/<class>/ and val/<class>/ folders.", recorded=False)


@dataclass
class TrainingOptions:
    """The head's training recipe (probes/train.py) and its overrides."""

    recipe: Literal["partaware", "mae-linear", "cae-linear", "cae-attentive", "vjepa"] | None = option(
        None, help="Training recipe (optimiser, lr, schedule, epochs, batch). Default: the preset's.")
    epochs: int | None = option(None, help="Override the recipe's epochs.")
    train_batch_size: int | None = option(None, help="Override the recipe's training batch.")
    eval_batch_size: int | None = option(None, help="Override the recipe's evaluation batch (it matters for "
                                                    "heads that normalise with batch statistics).")
    lr: float | None = option(None, help="Absolute learning rate (turns the recipe's batch/256 scaling off).")
    base_lr: float | None = option(None, help="Base learning rate (x batch/256 when the recipe scales).")
    warmup_epochs: float | None = option(None, help="Override the recipe's warm-up epochs.")
    stop_after_epochs: int | None = option(None, recorded=False,
                                           help="End this call after N more epochs (training state is kept; rerun "
                                                "the same command to resume).")

    def check(self) -> None:
        for flag, value, low, what in (("--epochs", self.epochs, 1, "an integer >= 1"),
                                       ("--train-batch-size", self.train_batch_size, 1, "an integer >= 1"),
                                       ("--eval-batch-size", self.eval_batch_size, 1, "an integer >= 1"),
                                       ("--stop-after-epochs", self.stop_after_epochs, 1, "an integer >= 1"),
                                       ("--warmup-epochs", self.warmup_epochs, 0, "a number >= 0")):
            if value is not None and value < low:
                raise ConfigError(f"{flag} {value}: expected {what}")
        for flag, value in (("--lr", self.lr), ("--base-lr", self.base_lr)):
            if value is not None and not value > 0:
                raise ConfigError(f"{flag} {value}: expected a learning rate > 0")

    def resolve(self, head_family: str) -> Recipe:
        if self.lr is not None and self.base_lr is not None:
            raise ConfigError("give --lr (absolute) or --base-lr (scaled by batch/256), not both")
        overrides = dict(epochs=self.epochs, batch_size=self.train_batch_size, eval_batch_size=self.eval_batch_size,
                         base_lr=self.base_lr, warmup_epochs=self.warmup_epochs)
        if self.lr is not None:
            overrides.update(base_lr=self.lr, lr_scaling="none")
        try:
            return resolve_recipe(self.recipe, head_family, **overrides)
        except ValueError as err:
            raise ConfigError(str(err)) from None


def presets(heads: dict[str, str]) -> dict[str, Preset]:
    """One preset per recipe: the recipe, its head, and the data defaults (part crops: the official code's
    ImageNet statistics and, for MAE, its token shuffle; whole images: each model's own statistics and eval
    transform)."""
    out = {}
    for recipe, head in heads.items():
        official = recipe == "partaware"
        images = {"data.normalize": "model", "model.mae_token_shuffle": False}
        out[recipe] = Preset(
            {"training.recipe": recipe, "protocol.head": head, "data.normalize": "imagenet",
             "data.image_transform": "eval", "crops.crop": "official-code", "crops.coco_dist_scope": "code_exact",
             "model.mae_token_shuffle": official, "model.precision": "bf16"},
            per_dataset={d: images for d in IMAGE_DATASETS}, about=f"the {recipe} recipe with the {head} head")
    return out


@dataclass
class ClassificationExperiment(Experiment):
    data: ClassificationData = section(ClassificationData)
    crops: PartCropOptions = section(PartCropOptions)
    training: TrainingOptions = section(TrainingOptions)

    def validate(self) -> None:
        layouts = {"cub": "CUB_200_2011/", "coco": "annotations/ with train2017/ and val2017/",
                   "cifar10": "cifar-10-batches-py/", "imagenet": "train/<class>/ and val/<class>/",
                   "folder": "train/<class>/ and val/<class>/"}
        self.data.resolve_root(self.data.dataset, layouts[self.data.dataset])


def setup(cfg: ClassificationExperiment):
    """(encoder, task) of a classification run."""
    encoder = experiment.load_encoder(cfg)
    task = build_task(cfg.data.dataset, cfg.data.data_root, encoder, cfg.data.normalize, cfg.crops,
                      image_transform=cfg.data.image_transform)
    return encoder, experiment.checked_task(cfg, task)


def recipe_protocol(cfg, recipe: Recipe, head: str, device) -> dict:
    """Every training hyper-parameter, under the names the records use."""
    return {"preset": cfg.preset, "recipe": recipe.name, "head": head, "optimizer": recipe.optimizer,
            "lr": recipe.lr, "base_lr": recipe.base_lr, "lr_scaling": recipe.lr_scaling,
            "batch_size": recipe.batch_size, "eval_batch_size": recipe.eval_batch_size, "epochs": recipe.epochs,
            "schedule": recipe.schedule, "warmup_epochs": recipe.warmup_epochs, "min_lr": recipe.min_lr,
            "momentum": recipe.momentum, "weight_decay": recipe.weight_decay,
            "weight_decay_end": recipe.weight_decay_end, "betas": list(recipe.betas), "grad_clip": recipe.grad_clip,
            "drop_last": recipe.drop_last, "loss": "cross-entropy", "train_precision": precision_name(device)}


def recipe_notes(recipe: Recipe, task: Task) -> dict:
    return {**task.notes(), "recipe_source": recipe.source,
            "train_augmentation": "none (inputs computed once with the fixed transforms)",
            "model_selection": MODEL_SELECTION}


def epochs_note(history) -> str:
    return "top1 per epoch: " + json.dumps([round(h["top1"], 4) for h in history])


def history_csv(history) -> bytes:
    """The per-epoch evaluation and training loss of a run (artifact ``history``)."""
    from probes.artifacts import per_class_csv

    columns = ["epoch", "top1", "top5", "train_loss", "lr"]
    return per_class_csv(columns, [[h.get(c, "") for c in columns] for h in history])


def per_class_csv(head, evaluation, recipe: Recipe, device, class_names) -> bytes:
    """Per-class top-1 of the trained head (its last epoch) on the evaluation split, in the evaluation batches the
    run used (artifact ``per_class``): summed ``correct`` / summed ``n`` is the record's ``top1_last``."""
    import torch

    from probes.artifacts import per_class_csv as table
    from probes.train import autocast, make_batches

    head.eval()
    batches = make_batches(range(len(evaluation)), recipe.eval_batch_size, drop_last=False,
                           merge_singleton=getattr(head, "uses_batch_stats", False))
    n = len(class_names)
    counts, correct = torch.zeros(n, dtype=torch.long), torch.zeros(n, dtype=torch.long)
    with torch.no_grad():
        for x, y in evaluation.iterate(batches, device):
            with autocast(device):
                predicted = head(x).float().argmax(1)
            y = y.cpu()
            counts += torch.bincount(y, minlength=n)
            correct += torch.bincount(y[predicted.cpu() == y], minlength=n)
    rows = [[i, name, int(counts[i]), int(correct[i]), 100.0 * int(correct[i]) / int(counts[i]) if counts[i] else ""]
            for i, name in enumerate(class_names)]
    return table(["class_index", "class", "n", "correct", "accuracy"], rows)


def unfinished(result, recipe: Recipe) -> bool:
    if result.resumed_from_epoch:
        print(f"resumed after epoch {result.resumed_from_epoch} of {recipe.epochs} (training state on disk)")
    if result.epochs_done < recipe.epochs:
        print(f"stopped after {result.epochs_done}/{recipe.epochs} epochs; rerun the same command to resume "
              f"(no record is written for an unfinished run)")
        return True
    return False


def selection_headline(record) -> list[str]:
    return ["top1_best", "top1_last", "top1", "top5"]
