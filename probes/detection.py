"""COCO object detection and instance segmentation: Mask R-CNN through detectron2 on a suite encoder.

    python probes/detection.py --model mae --data-root /data/coco [--frozen] [--iters N] [--gpus N]

The encoder becomes a detectron2 backbone (probes/adapters/detectron2.py): a ViT through ViTDet's simple
feature pyramid at 1024 px, a ResNet-50 through detectron2's FPN or C4. Recipes (probes/adapters/d2_config.py):
``vitdet`` for ViTs, ``fpn_1x`` / ``fpn_3x`` / ``c4_1x`` for ResNets, each fine-tuned or, with ``--frozen``,
with every pretrained weight fixed. ``--iters``, ``--batch-size``, ``--lr``, ``--image-size`` and ``--set
name=value`` change a recipe; every change is recorded (``recipe_overrides``) and rules out published values.

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

import argparse
import json
import sys
import time
from pathlib import Path

from probes.adapters.d2_config import (DEFAULT_RECIPE, RECIPE_SOURCES, RECIPES, detectron2_missing, encoder_facts,
                                       flat_metrics, load_backbone_encoder, mask_rcnn_config, resolve_settings)
from probes.cli import add_model_options, parse_arch
from probes.paths import home, results_dir
from probes.results import config_hash, make_record, write_record

SPLITS = {"train": "train2017", "test": "val2017"}


def run(model: str = "mae", data_root=None, *, recipe=None, frozen: bool = False, iters=None, gpus: int = 1,
        batch_size=None, lr=None, image_size=None, settings=None, format=None, arch=None, branch: str = "teacher",
        device=None, num_workers: int = 4, seed: int = 0, work_dir=None, results=None,
        data_source: str = "official", write: bool = True):
    """Train and evaluate one Mask R-CNN; returns the result record (written to ``results`` unless write=False)."""
    missing = detectron2_missing()
    if missing:
        raise RuntimeError(missing)
    import torch

    started = time.time()
    root = Path(data_root if data_root is not None else Path("data") / "coco").resolve()
    datasets = {}
    for role, split in SPLITS.items():
        json_file, images = root / "annotations" / f"instances_{split}.json", root / split
        if not json_file.is_file() or not images.is_dir():
            raise ValueError(f"{root}: expected COCO's layout, annotations/instances_{split}.json and {split}/ "
                             f"(fetch: python -m probes.data download coco --root {root})")
        datasets[f"partprobe_coco_{split}"] = (str(json_file), str(images))
    num_classes = len(json.loads((root / "annotations" / "instances_train2017.json").read_text())["categories"])
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")

    # 1. The recipe's variant for this encoder, with every explicit change.
    encoder = load_backbone_encoder(model, format=format, arch=arch, branch=branch)
    recipe = recipe or DEFAULT_RECIPE.get(encoder.kind, "")
    explicit = {"max_iter": iters, "batch_size": batch_size, "base_lr": lr, "image_size": image_size}
    overrides = {**{k: v for k, v in explicit.items() if v is not None}, **dict(settings or {})}
    options, overridden = resolve_settings(recipe, encoder.kind, frozen=frozen, overrides=overrides, device=device)
    facts = encoder_facts(encoder, model=model, format=format, arch=arch, branch=branch, frozen=frozen)

    # 2. Train (or resume) in a folder named by the run's identity, then evaluate.
    identity = {"encoder": encoder.info(), "recipe": recipe, "frozen": frozen, "settings": options, "data": str(root),
                "seed": seed, "gpus": gpus, "device": device}
    work = Path(work_dir) if work_dir else home() / "detection" / config_hash(identity)
    keys = mask_rcnn_config(options, facts, train="partprobe_coco_train2017", test="partprobe_coco_val2017",
                            num_classes=num_classes, output_dir=str(work), device=device, num_workers=num_workers,
                            seed=seed)
    from probes.adapters.detectron2 import train_and_evaluate
    out = train_and_evaluate(keys, datasets, num_gpus=gpus, results_file=work / "evaluation.json")

    # 3. One record: box and mask AP with everything that made them.
    metrics, absent = flat_metrics(out["results"])
    protocol = {**options, "recipe": recipe, "recipe_source": RECIPE_SOURCES[recipe],
                "backbone_training": "frozen" if frozen else "fine-tune", "recipe_overrides": overridden,
                "detector": "Mask R-CNN (detectron2 GeneralizedRCNN)", "evaluator": "detectron2 COCOEvaluator",
                "feature_source": "last block output, before the final norm" if encoder.kind == "vit" else "res2-res5",
                "num_classes": num_classes, "world_size": out["world_size"], "data_source": data_source}
    if data_source == "synthetic":
        protocol["synthetic"] = True
    notes = [f"{name}: COCOeval has no value (no ground truth in that range)" for name in absent]
    if out["start_iter"] > 0:
        notes.append(f"resumed at iteration {out['start_iter']} from the last checkpoint in {work}")
    if data_source == "synthetic":
        notes.append("detection on generated data: not comparable with any paper")
    record = make_record(probe="detection", dataset="coco", split=SPLITS["test"], encoder_info=encoder.info(),
                         feature=options["neck"], block=None, protocol=protocol, metrics=metrics, seed=seed,
                         wall_time_s=time.time() - started, device=device, notes=notes)
    if write:
        config = {"model": model, "data_root": str(root), "recipe": recipe, "frozen": frozen, "overrides": overrides,
                  "format": format, "arch": arch, "branch": branch, "gpus": gpus, "device": device,
                  "num_workers": num_workers, "seed": seed, "work_dir": str(work), "detectron2_config": keys}
        path = write_record(record, Path(results) if results else results_dir(), config=config)
        print(f"record written to {path}")
    print_table(record)
    return record


def print_table(record) -> None:
    names = ("AP", "AP50", "AP75", "APs", "APm", "APl")
    print(f"{'':<6}" + "".join(f"{n:>7}" for n in names) + f"   {record.model} / {record.protocol['recipe']}")
    for kind in ("box", "mask"):
        values = [record.metrics.get(f"{record.task}/{kind}_{n}") for n in names]
        print(f"{kind:<6}" + "".join(f"{'-' if v is None else format(v, '.1f'):>7}" for v in values))
    for key, value in record.published.items():
        print(f"published {key.split('/')[-1]}: {value} (delta {record.delta[key]:+.1f})")


def _setting(text: str):
    name, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"--set expects name=value, got {text!r}")
    try:
        return name, json.loads(value)
    except json.JSONDecodeError:
        return name, value


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_model_options(parser)
    parser.set_defaults(model="mae")
    parser.add_argument("--data-root", default=None, help="COCO folder: annotations/, train2017/, val2017/ (default data/coco).")
    parser.add_argument("--recipe", choices=sorted(RECIPES), default=None, help="Default: vitdet for ViTs, fpn_1x for ResNets.")
    parser.add_argument("--frozen", action="store_true", help="Keep every pretrained weight fixed; train neck and heads only.")
    parser.add_argument("--iters", type=int, default=None, help="Training iterations (lr steps and warm-up scale with them); 0 evaluates the untrained detector.")
    parser.add_argument("--gpus", type=int, default=1, help="Processes, one per GPU (detectron2.engine.launch; gloo processes on a CPU).")
    parser.add_argument("--batch-size", type=int, default=None, help="Images per iteration over all processes.")
    parser.add_argument("--lr", type=float, default=None, help="Base learning rate.")
    parser.add_argument("--image-size", type=int, default=None, help="Test size (ViTs: the padded square); anchors and training sizes follow.")
    parser.add_argument("--set", type=_setting, nargs="+", action="extend", default=[], metavar="NAME=VALUE", help="Any other recipe setting, e.g. channels=64 score_thresh=0.0 checkpoint_period=100.")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available).")
    parser.add_argument("--num-workers", type=int, default=4, help="Data-loading processes per training process.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work-dir", default=None, help="Checkpoints and logs (default: $PARTPROBE_HOME/detection/<run hash>); rerun to resume.")
    parser.add_argument("--results", default=None, help="Folder for result records (default: $PARTPROBE_RESULTS or ~/.cache/partprobe/results).")
    parser.add_argument("--data-source", choices=("official", "synthetic"), default="official")
    args = parser.parse_args(argv)
    missing = detectron2_missing()
    if missing:
        print(missing, file=sys.stderr)
        raise SystemExit(2)
    run(args.model, args.data_root, recipe=args.recipe, frozen=args.frozen, iters=args.iters, gpus=args.gpus,
        batch_size=args.batch_size, lr=args.lr, image_size=args.image_size, settings=dict(args.set),
        format=args.format, arch=parse_arch(args.arch, args.arch_kwargs), branch=args.branch, device=args.device,
        num_workers=args.num_workers, seed=args.seed, work_dir=args.work_dir, results=args.results,
        data_source=args.data_source)


if __name__ == "__main__":
    main()
