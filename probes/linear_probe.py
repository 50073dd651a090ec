"""Linear probe and kNN classification on frozen features (Zhu et al., Table 3 "Linear"; Table 1).

    python probes/linear_probe.py --model dino --dataset cub --data-root data/cub
    python probes/linear_probe.py --model mae --dataset imagenet --data-root /data/imagenet --preset mae-linear

Tasks, transforms and recipes: probes/classification.py and docs/protocols.md#part-classification. The head
(``linear``: Linear on the feature, the paper's; ``linear-bn``: BatchNorm + Linear, MAE/CAE) is trained on
features computed once and cached, so an epoch takes seconds. The record carries the best epoch's top-1
(``top1_best``, what the paper reports) and the last epoch's (``top1_last``). kNN classification (DINO
protocol) on the same features is a separate record (probe ``knn``).

Presets (one per recipe): ``partaware`` (the official patch_lincls.py: SGD, lr 0.1 x B/256, per-epoch
cosine, 90 epochs, batch 1024, Linear on CLS; MAE token shuffle on part crops), ``mae-linear`` and
``cae-linear`` (LARS, BatchNorm + Linear).
"""
if __name__ == "__main__" and not __package__:  # run as a file from a checkout
    import pathlib, sys
    sys.path[0] = str(pathlib.Path(__file__).resolve().parents[1])

from dataclasses import dataclass
from typing import Literal

import torch

from probes import classification, experiment
from probes.features import extract
from probes.heads import build_head
from probes.metrics import knn_metrics, knn_protocol
from probes.options import KnnOptions, option, section
from probes.results import data_digest, make_record
from probes.train import TensorSource, default_device, train_probe


@dataclass
class LinearProtocol:
    head: Literal["linear", "linear-bn"] | None = option(
        None, help="linear (the paper's: Linear on the feature) or linear-bn (MAE/CAE: BatchNorm + Linear). "
                   "Default: the preset's.")
    feature: Literal["cls", "patch_mean", "projection"] = option("cls", help="The feature the head reads.",
                                                                 recorded=False)
    block: int | None = option(None, help="Read the feature from block K's output (0-based) instead of the final "
                                          "one.", recorded=False)

    def check(self) -> None:
        experiment.check_block(self.block)


@dataclass
class LinearProbeConfig(classification.ClassificationExperiment):
    NAME = "linear_probe"
    PRESETS = classification.presets({"partaware": "linear", "mae-linear": "linear-bn", "cae-linear": "linear-bn"})

    protocol: LinearProtocol = section(LinearProtocol)
    knn: KnnOptions = section(KnnOptions)


def run(cfg: LinearProbeConfig) -> list:
    """Linear probe (+ kNN) records of one encoder on one task; none while training is unfinished."""
    cfg = experiment.prepare(cfg)
    this = experiment.Run(cfg, "linear_probe")
    device = default_device(cfg.run.device)
    recipe = cfg.training.resolve("linear")
    encoder, task = classification.setup(cfg)
    feature, block = cfg.protocol.feature, cfg.protocol.block
    train_x, eval_x = (extract(encoder, view, [feature], block, cfg.run,
                               description=f"{task.dataset} {which} {feature}")[feature]
                       for which, view in (("train", task.train), ("eval", task.eval)))
    data = experiment.task_protocol(cfg, encoder, task)
    protocol = {**data, **classification.recipe_protocol(cfg, recipe, cfg.protocol.head, device)}
    notes = classification.recipe_notes(recipe, task)
    data_sha256 = data_digest(task.train.identity(), task.eval.identity())
    common = dict(dataset=task.dataset, split=task.eval.split, encoder_info=encoder.info(), block=block,
                  feature=feature, device=str(device), data_sha256=data_sha256,
                  model=experiment.model_label(cfg, encoder))

    torch.manual_seed(cfg.seed)                       # the head's initialisation
    head = build_head(cfg.protocol.head, train_x.shape[1], task.num_classes)
    fingerprint = {"probe": "linear_probe", "encoder": encoder.identity(), "data": data_sha256, "feature": feature,
                   "block": block, "protocol": protocol, "seed": cfg.seed}
    evaluation = TensorSource(eval_x, torch.as_tensor(task.eval.labels))
    result = train_probe(head, TensorSource(train_x, torch.as_tensor(task.train.labels)), evaluation, recipe,
                         num_classes=task.num_classes, seed=cfg.seed, device=device, fingerprint=fingerprint,
                         stop_after_epochs=cfg.training.stop_after_epochs, progress=not cfg.run.quiet)
    if classification.unfinished(result, recipe):
        return []
    this.add(make_record(probe="linear_probe", protocol=protocol, metrics=result.selection(), seed=cfg.seed,
                         wall_time_s=this.elapsed(), notes=[classification.epochs_note(result.history)],
                         protocol_notes=notes, artifacts={"history": "history.csv", "per_class": "per_class.csv"},
                         **common),
             {"history.csv": classification.history_csv(result.history),
              "per_class.csv": classification.per_class_csv(head, evaluation, recipe, device, task.class_names)})
    if cfg.knn.knn:
        metrics, knn_notes = knn_metrics(train_x, task.train.labels, eval_x, task.eval.labels, cfg.knn,
                                         task.num_classes)
        this.add(make_record(probe="knn", protocol={**data, **knn_protocol(cfg.knn)}, metrics=metrics, seed=None,
                             wall_time_s=this.elapsed(), notes=knn_notes, protocol_notes=task.notes(), **common))
    return this.finish(headline=classification.selection_headline)


main = experiment.entry_point(LinearProbeConfig, run, __doc__)

if __name__ == "__main__":
    main()
