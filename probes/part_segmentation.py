"""Part and object segmentation (Zhu et al., Table 4 and Figure 6; docs/protocols.md#linear-segmentation).

    python probes/part_segmentation.py --model dino --dataset lip --data-root data/lip [--protocol linear] [--iters N]
    torchrun --nproc_per_node 8 probes/part_segmentation.py --model dino --dataset ade20k-part-209 --data-root ...

Protocols (probes/segmentation.py says what each does), chosen by ``--protocol`` or by a preset:

- ``linear`` (preset ``partaware``: the official code; ``paper-text``: 4x upsampling, last block): the frozen
  encoder and a 1x1 conv, trained through mmsegmentation. The published Table 2/4 value is attached only
  when every recorded setting is the paper's (probes/published.py).
- ``finetune`` (preset ``mae-upernet``): UperNet, the encoder trained with layer-wise lr decay.
- ``dense`` (preset ``hummingbird``): no training, soft kNN label transfer from sampled training patches.

Running the same command again resumes an interrupted training from its last checkpoint (kept under
$PARTPROBE_HOME/train_state/segmentation/). One record per run: mIoU, mAcc, aAcc and IoU[<class>].
"""
if __name__ == "__main__" and not __package__:  # run as a file from a checkout
    import pathlib, sys
    sys.path[0] = str(pathlib.Path(__file__).resolve().parents[1])

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from probes import experiment
from probes import segmentation as seg
from probes.experiment import Experiment
from probes.options import ConfigError, DataOptions, Preset, option, recorded_values, section
from probes.results import data_digest, make_record
from probes.train import default_device


@dataclass
class SegmentationData(DataOptions):
    dataset: str = option("lip", help=f"Class set: {', '.join(seg.DATASETS)} (lip = lip19; the data CLI's names "
                                      f"work too).", recorded=False)


@dataclass
class SegmentationProtocol:
    """Overrides of the protocol's preset (probes.segmentation.SegProtocol); unset = the preset's or the dataset's."""

    protocol: Literal["linear", "finetune", "dense"] | None = option(
        None, help="Frozen linear head, fine-tuned UperNet, or training-free dense kNN. Default: the preset's.")
    layers: str | None = option(None, help="Blocks (ResNet stages), comma-separated, 0-based, or 'last' (default "
                                           "3,5,7,11; dense: last).")
    upsample: Literal["none", "4x"] | None = option(None, help="Linear head: 1x1 conv at stride 16 (official code) "
                                                               "or after 4x bilinear upsampling (paper text).")
    final_norm: bool | None = option(None, help="Apply the encoder's final norm to each block's output (official: off).")
    aux_head: bool | None = option(None, help="The auxiliary FCN head on the third selected block, weight 0.4 "
                                              "(official: on).")
    checkpoint: Literal["last", "best"] | None = option(None, help="Report the last evaluation or the best val mIoU "
                                                                   "(not published which).")
    iters: int | None = option(None, help="Training iterations (official 160,000); warm-up scales with it unless "
                                          "--warmup-iters.")
    train_batch_size: int | None = option(None, help="Images per iteration over all processes (official 16).")
    lr: float | None = option(None, help="AdamW learning rate (linear 4e-4, finetune 1e-4).")
    weight_decay: float | None = option(None, help="AdamW weight decay (0.05).")
    layer_decay: float | None = option(None, help="Layer-wise lr decay (finetune 0.65).")
    warmup_iters: int | None = option(None, help="Linear warm-up iterations (default 1,500 x iters / 160k).")
    checkpoint_interval: int | None = option(None, help="Iterations between checkpoints (default min(8,000, iters)).")
    eval_interval: int | None = option(None, help="Iterations between evaluations (default min(16,000, iters)); the "
                                                  "last is always evaluated.")
    augmentation: Literal["partaware", "none"] | None = option(
        None, help="Official random resize/crop/flip/photometric, or none (images resized to the crop).")
    crop_size: int | None = option(None, help="Training crop and slide window (default: the dataset's, 512/480/320).")
    train_scale: str | None = option(None, help="Train resize scale W,H before the 0.5-2 ratio (default: the dataset's).")
    test_scale: str | None = option(None, help="Test resize scale W,H, keep ratio (default: the dataset's).")
    slide_stride: int | None = option(None, help="Slide-inference stride (default: the dataset's, 341/161/161).")
    dense_k: int | None = option(None, help="Dense: neighbours per patch (30).")
    dense_temperature: float | None = option(None, help="Dense: softmax temperature over cosine similarity (0.02).")
    dense_memory: int | None = option(None, help="Dense: training patches kept, sampled evenly over images (102,400).")
    dense_input_size: int | None = option(None, help="Dense: images resized to this square (default: the crop size).")

    def overrides(self) -> dict:
        """The explicit settings under SegProtocol's names."""
        def pair(text):
            try:
                return tuple(int(v) for v in text.split(","))
            except ValueError:
                raise ConfigError(f"expected W,H (two integers), got {text!r}") from None

        out = {name: getattr(self, name) for name in (
            "iters", "lr", "weight_decay", "layer_decay", "warmup_iters", "checkpoint_interval", "eval_interval",
            "augmentation", "crop_size", "slide_stride", "dense_k", "dense_temperature", "dense_memory",
            "dense_input_size")}
        out.update(batch_size=self.train_batch_size, seg_upsample=self.upsample, seg_final_norm=self.final_norm,
                   seg_aux_head=self.aux_head, seg_checkpoint=self.checkpoint,
                   train_scale=pair(self.train_scale) if self.train_scale else None,
                   test_scale=pair(self.test_scale) if self.test_scale else None,
                   seg_layers=None if self.layers is None else
                   tuple(v if v == "last" else int(v) for v in self.layers.split(",")))
        return out


@dataclass
class TrainingStateOptions:
    """Where the trainer keeps its state and how loudly it logs; nothing here changes a number."""
    RECORDED = False

    work_dir: Path | None = option(None, help="Training state folder (default: keyed by the configuration under "
                                              "$PARTPROBE_HOME/train_state).")
    log_level: str = option("WARNING", help="mmengine log level (INFO prints every log interval).")


@dataclass
class PartSegmentationConfig(Experiment):
    NAME = "part_segmentation"
    PRESETS = {name: Preset({"seg.protocol": protocol, "model.mae_token_shuffle": False},
                            about=f"{protocol}: {name}")
               for (protocol, name) in seg.PRESETS}

    data: SegmentationData = section(SegmentationData)
    seg: SegmentationProtocol = section(SegmentationProtocol)
    state: TrainingStateOptions = section(TrainingStateOptions)

    def validate(self) -> None:
        try:
            self.data.dataset = seg.seg_dataset(self.data.dataset).name
        except ValueError as err:
            raise ConfigError(f"--dataset: {err}") from None
        self.data.resolve_root(self.data.dataset, "the dataset's folder as its probes.data reader takes it")
        if (self.seg.protocol, self.preset) not in seg.PRESETS:
            if self.preset != "partaware":
                raise ConfigError(f"--preset {self.preset} is a preset of another protocol than "
                                  f"--protocol {self.seg.protocol}")
            self.preset = seg.DEFAULT_PRESET[self.seg.protocol]
        if self.model.input_size is not None:
            raise ConfigError("--input-size: segmentation builds the encoder at its crop size; use --crop-size")
        if self.model.mae_token_shuffle:
            raise ConfigError("--mae-token-shuffle on: the official segmentation code has no token shuffle")
        if self.data.skip_bad_items:
            raise ConfigError("--skip-bad-items: segmentation reads its files through its framework's own lists, so "
                              "items cannot be left out; fix the files the data check names (python -m probes.data "
                              "check)")


def run(cfg: PartSegmentationConfig) -> list:
    cfg = experiment.prepare(cfg)
    this = experiment.Run(cfg, "part_segmentation")
    dataset, data_root = cfg.data.dataset, cfg.data.data_root
    device = str(default_device(cfg.run.device))
    try:
        spec = seg.describe_encoder(cfg.model.model, cfg.model.format, cfg.model.arch_spec(), cfg.model.branch)
    except ValueError as err:       # what this encoder cannot do here (timm: models, a file without --format)
        raise ConfigError(str(err)) from None
    try:
        protocol = seg.resolve_protocol(cfg.seg.protocol, dataset, spec, cfg.preset, seed=cfg.seed,
                                        **cfg.seg.overrides())
    except ValueError as err:
        raise ConfigError(str(err)) from None
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    splits = experiment.checked(cfg, skippable=False,
                                **{split: seg.load_split(dataset, data_root, split) for split in ("train", "val")})
    data_sha256 = data_digest(*(split.identity() for split in splits.values()))
    extra, notes = {}, []
    if protocol.protocol == "dense":
        backbone = seg.build_backbone(spec.model, spec.format, seg.backbone_arch(spec, protocol.dense_input_size),
                                      spec.branch, protocol.seg_layers, device=device)
        train, val = splits["train"], splits["val"]
        result = seg.dense_knn(backbone, train, val, protocol, device=device, progress=not cfg.run.quiet)
        summary, encoder_info, rank = result["summary"], backbone.encoder.info(), 0
        extra.update(dense_memory_patches=result["memory_patches"], dense_patches_per_image=result["patches_per_image"],
                     num_train_images=len(train), num_val_images=len(val))
    else:
        from probes.adapters import mmseg as adapter    # needs the seg extra
        config = seg.runner_config(protocol, dataset, data_root, spec, work_dir="", world_size=world_size,
                                   device=device, num_workers=cfg.run.num_workers)
        config["work_dir"] = str(cfg.state.work_dir or seg.work_dir_for(dataset, spec, config))
        result = adapter.train(config, log_level=cfg.state.log_level)
        rank, encoder_info = result["rank"], result["encoder_info"]
        if rank == 0:
            entry = adapter.select(result["history"], protocol.seg_checkpoint)
            summary = entry["summary"]
            extra["reported_iter"] = entry["iter"]
            notes.append(f"training state in {result['work_dir']}" + (" (resumed from its last checkpoint)"
                                                                       if result["resumed"] else ""))
    if rank != 0:
        return []
    record_protocol = seg.protocol_record(protocol, dataset, spec, world_size=world_size, device=device,
                                          data_source=cfg.data.data_source)
    load_options = {k: v for k, v in recorded_values(cfg, ("model",)).items()
                    if k not in ("precision", "mae_token_shuffle", "input_size")}
    record_protocol.update(extra, **load_options, absent_classes=summary["absent"])
    if summary["absent"]:
        notes.append(f"{len(summary['absent'])} classes neither labelled nor predicted in val: IoU undefined "
                     f"(NaN in mmseg), left out of mIoU and of the per-class IoU")
    if cfg.data.data_source == "synthetic":
        notes.append("segmentation on generated data: not comparable with the paper")
    prose = {k: record_protocol.pop(k) for k in ("feature_source", "train_flip", "inference", "pos_embed")
             if k in record_protocol}
    this.add(make_record(probe=seg.PROBE_NAMES[protocol.protocol], dataset=dataset, split="val",
                         encoder_info=encoder_info, feature="blocks", block=None, protocol=record_protocol,
                         metrics=seg.record_metrics(summary), seed=protocol.seed, wall_time_s=this.elapsed(),
                         device=device, notes=notes, protocol_notes=prose, model=experiment.model_label(cfg, encoder_info),
                         data_sha256=data_sha256, artifacts={"per_class": "per_class.csv"}),
             {"per_class.csv": per_class_csv(summary)})
    return this.finish(headline=lambda r: ["mIoU", "mAcc", "aAcc"])


def per_class_csv(summary: dict) -> bytes:
    """IoU and pixel accuracy per class (artifact ``per_class``; empty where undefined: the class is neither
    labelled nor predicted in val, as the record's ``absent_classes`` says)."""
    from probes.artifacts import per_class_csv as table

    rows = [[i, name, "" if iou is None else iou, "" if summary["Acc"][name] is None else summary["Acc"][name]]
            for i, (name, iou) in enumerate(summary["IoU"].items())]
    return table(["class_index", "class", "IoU", "Acc"], rows)


def main(argv=None) -> list:
    records = experiment.entry_point(PartSegmentationConfig, run, __doc__)(argv)
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
    return records


if __name__ == "__main__":
    main()
