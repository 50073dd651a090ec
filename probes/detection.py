"""COCO object detection and instance segmentation: Mask R-CNN through detectron2 on a suite encoder.

    python probes/detection.py --model mae --data-root /data/coco [--frozen] [--iters N] [--gpus N]

The encoder becomes a detectron2 backbone (probes/adapters/detectron2.py): a ViT through ViTDet's simple
feature pyramid at 1024 px, a ResNet-50 through detectron2's FPN or C4. Recipes (probes/adapters/d2_config.py):
``vitdet`` for ViTs, ``fpn_1x`` / ``fpn_3x`` / ``c4_1x`` for ResNets, each fine-tuned or, with ``--frozen``,
with every pretrained weight fixed. ``--iters``, ``--train-batch-size``, ``--lr``, ``--image-size`` and
``--set name=value`` change a recipe; every change is recorded (``recipe_overrides``) and rules out published
values.

MEC's published box AP75 43.2 / mask AP75 36.8 attach only to ``--model mec --recipe c4_1x`` run as the recipe
stands, fine-tuned, on the official COCO (probes/published.py).

Training runs in a work folder named by everything that defines the run (or ``--work-dir``); the same
command after a kill resumes from its last checkpoint. The record holds COCOEvaluator's box and mask AP,
AP50, AP75, APs, APm, APl on val2017 (percent). Data: the official layout (annotations/instances_*2017.json,
train2017/, val2017/), or generated: ``python -m probes.data synth coco-instances --out DIR``.
"""
if __name__ == "__main__" and not __package__:  # run as a file from a checkout
    import pathlib, sys
    sys.path[0] = str(pathlib.Path(__file__).resolve().parents[1])

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from probes import experiment
from probes.adapters.d2_config import (DEFAULT_RECIPE, RECIPE_SOURCES, detectron2_missing, encoder_facts,
                                       flat_metrics, load_backbone_encoder, mask_rcnn_config, resolve_settings)
from probes.experiment import Experiment
from probes.options import ConfigError, DataOptions, Preset, option, recorded_values, section
from probes.paths import home
from probes.results import config_hash, data_digest, make_record

SPLITS = {"train": "train2017", "test": "val2017"}


@dataclass
class DetectionData(DataOptions):
    """COCO 2017 instances: annotations/instances_{train,val}2017.json, train2017/, val2017/."""


@dataclass
class DetectionProtocol:
    recipe: Literal["vitdet", "fpn_1x", "fpn_3x", "c4_1x"] | None = option(
        None, help="Detectron2 recipe. Default: vitdet for ViTs, fpn_1x for ResNets.")
    frozen: bool = option(False, help="Keep every pretrained weight fixed; train the neck and heads only.")
    iters: int | None = option(None, help="Training iterations (lr steps and warm-up scale with them); 0 evaluates "
                                          "the untrained detector.")
    train_batch_size: int | None = option(None, help="Images per iteration over all processes.")
    lr: float | None = option(None, help="Base learning rate.")
    image_size: int | None = option(None, help="Test size (ViTs: the padded square); anchors and training sizes "
                                               "follow.")
    set: list[str] | None = option(None, flag="--set", metavar="NAME=VALUE",
                                   help="Any other recipe setting, e.g. channels=64 score_thresh=0.0 "
                                        "checkpoint_period=100.")

    def overrides(self) -> dict:
        out = {k: v for k, v in {"max_iter": self.iters, "batch_size": self.train_batch_size, "base_lr": self.lr,
                                 "image_size": self.image_size}.items() if v is not None}
        for text in self.set or []:
            name, sep, value = text.partition("=")
            if not sep:
                raise ConfigError(f"--set expects name=value, got {text!r}")
            try:
                out[name] = json.loads(value)
            except json.JSONDecodeError:
                out[name] = value
        return out


@dataclass
class DetectionRunOptions:
    """Processes and the training folder; nothing here changes a number."""
    RECORDED = False

    gpus: int = option(1, help="Processes, one per GPU (detectron2.engine.launch; gloo processes on a CPU).")
    work_dir: Path | None = option(None, help="Checkpoints and logs (default: $PARTPROBE_HOME/detection/<run hash>); "
                                              "rerun to resume.")


@dataclass
class DetectionConfig(Experiment):
    NAME = "detection"
    PRESETS = {"default": Preset({"model.mae_token_shuffle": False}, about="the recipes as published")}

    preset: str = option("default", help="Protocol preset.", cli=False)
    data: DetectionData = section(DetectionData)
    protocol: DetectionProtocol = section(DetectionProtocol)
    training: DetectionRunOptions = section(DetectionRunOptions)

    def validate(self) -> None:
        missing = detectron2_missing()
        if missing:                            # the first thing to fix, before any data or option
            raise ConfigError(missing)
        root = self.data.resolve_root("coco", "annotations/, train2017/ and val2017/")
        for split in SPLITS.values():
            if not (root / "annotations" / f"instances_{split}.json").is_file() or not (root / split).is_dir():
                raise ConfigError(f"{root}: expected COCO's layout, annotations/instances_{split}.json and {split}/ "
                                  f"(fetch: python -m probes.data download coco --root {root})")
        if self.model.input_size is not None:
            raise ConfigError("--input-size: a detector pads its inputs to --image-size; use --image-size")
        if self.model.mae_token_shuffle:
            raise ConfigError("--mae-token-shuffle on: the detection recipes have no token shuffle")
        self.protocol.overrides()


def run(cfg: DetectionConfig) -> list:
    """Train and evaluate one Mask R-CNN; returns its record."""
    import torch

    cfg = experiment.prepare(cfg)
    this = experiment.Run(cfg, "detection")
    root, p = cfg.data.data_root, cfg.protocol
    datasets = {f"partprobe_coco_{split}": (str(root / "annotations" / f"instances_{split}.json"), str(root / split))
                for split in SPLITS.values()}
    num_classes = len(json.loads((root / "annotations" / "instances_train2017.json").read_text())["categories"])
    device = cfg.run.device or ("cuda" if torch.cuda.is_available() else "cpu")

    # 1. The recipe's variant for this encoder, with every explicit change.
    model = cfg.model
    encoder = load_backbone_encoder(model.model, format=model.format, arch=model.arch_spec(), branch=model.branch)
    recipe = p.recipe or DEFAULT_RECIPE.get(encoder.kind, "")
    try:
        settings, overridden = resolve_settings(recipe, encoder.kind, frozen=p.frozen, overrides=p.overrides(),
                                                device=device)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    facts = encoder_facts(encoder, model=model.model, format=model.format, arch=model.arch_spec(),
                          branch=model.branch, frozen=p.frozen)

    # 2. Train (or resume) in a folder named by the run's identity, then evaluate.
    files = [Path(f) for pair in datasets.values() for f in pair[:1]]
    data_sha256 = data_digest({"root": str(root), "annotations": [f"{f}|{f.stat().st_size}|{f.stat().st_mtime_ns}"
                                                                  for f in files]})
    identity = {"encoder": encoder.info(), "recipe": recipe, "frozen": p.frozen, "settings": settings,
                "data": data_sha256, "seed": cfg.seed, "gpus": cfg.training.gpus, "device": device}
    work = Path(cfg.training.work_dir) if cfg.training.work_dir else home() / "detection" / config_hash(identity)
    keys = mask_rcnn_config(settings, facts, train="partprobe_coco_train2017", test="partprobe_coco_val2017",
                            num_classes=num_classes, output_dir=str(work), device=device,
                            num_workers=cfg.run.num_workers, seed=cfg.seed)
    from probes.adapters.detectron2 import train_and_evaluate
    out = train_and_evaluate(keys, datasets, num_gpus=cfg.training.gpus, results_file=work / "evaluation.json")

    # 3. One record: box and mask AP with everything that made them.
    metrics, absent = flat_metrics(out["results"])
    load_options = {k: v for k, v in recorded_values(cfg, ("model",)).items()
                    if k not in ("precision", "mae_token_shuffle", "input_size")}
    protocol = {**settings, **load_options, "recipe": recipe, "backbone_training": "frozen" if p.frozen else "fine-tune",
                "recipe_overrides": overridden, "num_classes": num_classes, "world_size": out["world_size"],
                "data_source": cfg.data.data_source}
    if cfg.data.data_source == "synthetic":
        protocol["synthetic"] = True
    notes = [f"{name}: COCOeval has no value (no ground truth in that range)" for name in absent]
    if out["start_iter"] > 0:
        notes.append(f"resumed at iteration {out['start_iter']} from the last checkpoint in {work}")
    if cfg.data.data_source == "synthetic":
        notes.append("detection on generated data: not comparable with any paper")
    prose = {"recipe_source": RECIPE_SOURCES[recipe], "detector": "Mask R-CNN (detectron2 GeneralizedRCNN)",
             "evaluator": "detectron2 COCOEvaluator", "work_dir": str(work),
             "feature_source": "last block output, before the final norm" if encoder.kind == "vit" else "res2-res5"}
    this.add(make_record(probe="detection", dataset="coco", split=SPLITS["test"], encoder_info=encoder.info(),
                         feature=settings["neck"], block=None, protocol=protocol, metrics=metrics, seed=cfg.seed,
                         wall_time_s=this.elapsed(), device=device, notes=notes, protocol_notes=prose,
                         data_sha256=data_sha256, model=experiment.model_label(cfg, encoder)))
    return this.finish(headline=lambda r: ["box_AP", "box_AP75", "mask_AP", "mask_AP75"])


main = experiment.entry_point(DetectionConfig, run, __doc__)

if __name__ == "__main__":
    main()
