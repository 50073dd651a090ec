"""The trained segmentation protocols on mmsegmentation (the onedl fork; no compiled mmcv ops needed).

``register()`` puts the suite's pieces into mmseg's registries; ``train(config)`` runs a configuration made
by ``probes.segmentation.runner_config`` with mmengine's Runner, resuming from the work folder's own last
checkpoint when there is one, and returns every evaluation it (or an interrupted earlier run) made.

Registered names:

* ``PartprobeBackbone`` (MODELS): ``probes.segmentation.build_backbone``, a plain nn.Module, so the Runner's
  ``init_weights`` never re-initialises the pretrained encoder.
* ``PartprobeUpsampledFCNHead`` (MODELS): the paper text's head, 4x bilinear upsampling then the 1x1 conv.
* ``PartprobeSegDataset`` (DATASETS) and ``PartprobeLoadLabels`` (TRANSFORMS): a split read by
  ``probes.segmentation.load_split`` (the probes.data readers), labels mapped to classes 0..N-1 / 255.
* ``PartprobeIoUMetric`` (METRICS): mmseg's IoUMetric on exact int64 pixel counts, keeping per-class values.
* ``PartprobeHistoryHook`` (HOOKS): writes each evaluation to ``<work_dir>/val_history.json`` atomically,
  keyed by iteration, so a resumed run keeps the evaluations made before the interruption.
* ``PartprobeLayerDecayConstructor`` (OPTIM_WRAPPER_CONSTRUCTORS): BEiT's layer-wise lr decay for the suite's
  parameter names (patch embedding and position tables at layer 0, block i at i + 1, the rest at L + 1).
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import torch

INSTALL = "MMCV_WITH_OPS=0 pip install -e '.[seg]'"

try:
    import mmengine  # noqa: F401
    import mmseg  # noqa: F401
    from mmcv.transforms import BaseTransform
    from mmengine.dist import is_main_process
    from mmengine.hooks import Hook
    from mmengine.optim import DefaultOptimWrapperConstructor
    from mmseg.datasets import BaseSegDataset
    from mmseg.evaluation import IoUMetric
    from mmseg.models.decode_heads import FCNHead
    from mmseg.models.utils import resize
except ImportError as error:  # the seg extra is optional: say how to get it
    raise ImportError(f"the linear and fine-tuned segmentation protocols need mmsegmentation, which is not "
                      f"installed ({error}). Install the seg extra: {INSTALL}") from error

from probes import segmentation
from probes.fileio import write_json_atomic

HISTORY = "val_history.json"
TIMING = "timing.json"


class PartprobeUpsampledFCNHead(FCNHead):
    """The paper's wording (docs/protocols.md#linear-segmentation): 4x bilinear interpolation of the
    concatenated maps, then the 1x1 conv."""

    def _forward_feature(self, inputs):
        x = self._transform_inputs(inputs)
        x = resize(x, scale_factor=4, mode="bilinear", align_corners=self.align_corners)
        return self.convs(x)


class PartprobeSegDataset(BaseSegDataset):
    """A split of any of ``probes.segmentation.DATASETS``, read through the suite's readers."""

    def __init__(self, dataset: str, data_root: str, split: str, **kwargs):
        self.split_data = segmentation.load_split(dataset, data_root, split)
        kwargs.setdefault("metainfo", dict(classes=self.split_data.class_names))
        super().__init__(data_root=None, img_suffix=".jpg", seg_map_suffix=".png", reduce_zero_label=False,
                         ignore_index=segmentation.IGNORE, **kwargs)

    def load_data_list(self) -> list[dict]:
        return [dict(img_path=str(image), seg_map_path=str(label), label_map=None, reduce_zero_label=False,
                     seg_fields=[]) for image, label in self.split_data.items]


class PartprobeLoadLabels(BaseTransform):
    """Read the label map with its dataset's reader: classes 0..N-1, 255 = ignore (replaces LoadAnnotations)."""

    def __init__(self, dataset: str):
        self.dataset = segmentation.seg_dataset(dataset).name

    def transform(self, results: dict) -> dict:
        results["gt_seg_map"] = segmentation.read_labels(self.dataset, results["seg_map_path"])
        results.setdefault("seg_fields", []).append("gt_seg_map")
        return results


class PartprobeIoUMetric(IoUMetric):
    """IoUMetric whose per-image counts are exact integers; ``summary`` keeps the unrounded per-class values."""

    summary: dict | None = None

    def process(self, data_batch, data_samples) -> None:
        num_classes = len(self.dataset_meta["classes"])
        for sample in data_samples:
            pred = sample["pred_sem_seg"]["data"].squeeze().cpu().numpy()
            label = sample["gt_sem_seg"]["data"].squeeze().cpu().numpy()
            areas = segmentation.intersect_and_union(pred, label, num_classes, self.ignore_index)
            self.results.append(tuple(torch.from_numpy(row) for row in areas))

    def compute_metrics(self, results: list) -> dict:
        metrics = super().compute_metrics(results)
        areas = np.stack([sum(r[i] for r in results).numpy() for i in range(4)])
        self.summary = segmentation.summarize(areas, self.dataset_meta["classes"])
        return metrics


class PartprobeHistoryHook(Hook):
    priority = "LOW"

    def before_train(self, runner) -> None:
        self._started_at_iter, self._durations, self._tick = runner.iter, [], None

    def before_train_iter(self, runner, batch_idx, data_batch=None) -> None:
        self._tick = time.perf_counter()

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None) -> None:
        self._durations.append(time.perf_counter() - self._tick)

    def after_val_epoch(self, runner, metrics=None) -> None:
        if not is_main_process():
            return
        summary = runner.val_loop.evaluator.metrics[0].summary
        path = Path(runner.work_dir) / HISTORY
        history = read_history(path.parent)
        history[str(runner.iter)] = {"iter": runner.iter, "summary": summary}
        write_json_atomic(path, history)

    def after_train(self, runner) -> None:
        if is_main_process() and self._durations:
            write_json_atomic(Path(runner.work_dir) / TIMING, {
                "first_iter": self._started_at_iter, "iterations": len(self._durations),
                "seconds": self._durations})


class PartprobeLayerDecayConstructor(DefaultOptimWrapperConstructor):
    """lr x decay ** (L + 1 - layer) with layer 0 for the patch embedding and position/class tokens, i + 1 for
    block i, L + 1 for everything else; no weight decay on biases, norms and the position/class tokens."""

    NO_DECAY = ("pos_embed", "cls_token", "reg_token", "mask_token")

    def add_params(self, params: list, module, **kwargs) -> None:
        layers = int(self.paramwise_cfg["num_layers"])
        decay = float(self.paramwise_cfg["layer_decay_rate"])
        for name, param in module.named_parameters():
            if not param.requires_grad:
                continue
            name = name.removeprefix("module.")
            layer = layer_id(name, layers)
            no_decay = param.ndim == 1 or name.endswith(".bias") or name.split(".")[-1] in self.NO_DECAY
            params.append({"params": [param], "param_name": name, "layer_id": layer,
                           "lr": self.base_lr * decay ** (layers + 1 - layer),
                           "weight_decay": 0.0 if no_decay else self.base_wd})


def layer_id(name: str, num_layers: int) -> int:
    parts = name.split(".")
    if parts[:2] != ["backbone", "model"]:
        return num_layers + 1
    if parts[2] in ("patch_embed", "pos_embed", "cls_token", "reg_token", "mask_token", "conv1", "bn1"):
        return 0
    if parts[2] == "blocks":
        return int(parts[3]) + 1
    return num_layers + 1


_registered = False


def register() -> None:
    """Put the suite's modules into mmseg's registries (once per process)."""
    global _registered
    if _registered:
        return
    from mmseg.registry import DATASETS, HOOKS, METRICS, MODELS, OPTIM_WRAPPER_CONSTRUCTORS, TRANSFORMS
    from mmseg.utils import register_all_modules
    register_all_modules(init_default_scope=False)
    MODELS.register_module("PartprobeBackbone", module=segmentation.build_backbone, force=True)
    MODELS.register_module("PartprobeUpsampledFCNHead", module=PartprobeUpsampledFCNHead, force=True)
    DATASETS.register_module("PartprobeSegDataset", module=PartprobeSegDataset, force=True)
    TRANSFORMS.register_module("PartprobeLoadLabels", module=PartprobeLoadLabels, force=True)
    METRICS.register_module("PartprobeIoUMetric", module=PartprobeIoUMetric, force=True)
    HOOKS.register_module("PartprobeHistoryHook", module=PartprobeHistoryHook, force=True)
    OPTIM_WRAPPER_CONSTRUCTORS.register_module("PartprobeLayerDecayConstructor",
                                               module=PartprobeLayerDecayConstructor, force=True)
    _registered = True


def read_history(work_dir: str | os.PathLike) -> dict:
    path = Path(work_dir) / HISTORY
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON ({error}); delete it to re-evaluate") from None


def select(history: dict, checkpoint: str) -> dict:
    """The evaluation a record reports: the last one, or the best val mIoU (the earliest on ties, as
    mmengine's CheckpointHook keeps its first best)."""
    if not history:
        raise ValueError("no evaluation was made")
    entries = sorted(history.values(), key=lambda e: e["iter"])
    if checkpoint == "last":
        return entries[-1]
    return max(entries, key=lambda e: (e["summary"]["mIoU"], -e["iter"]))


def build_runner(config: dict, log_level: str = "WARNING"):
    """An mmengine Runner for ``config``; resumes when its work folder holds a checkpoint."""
    register()
    from mmengine.config import Config
    from mmengine.runner import Runner
    if config.get("launcher") == "pytorch" and not torch.distributed.is_initialized() \
            and not torch.cuda.is_available():
        # mmengine's own launcher calls torch.cuda.set_device; CPU processes join a gloo group first.
        torch.distributed.init_process_group("gloo")
    resume = (Path(config["work_dir"]) / "last_checkpoint").is_file()
    # A name of its own: runners named alike share mmengine's logger, message hub and scope instances.
    name = f"partprobe-{Path(config['work_dir']).name}-{time.time_ns()}"
    cfg = Config(dict(config, resume=resume, load_from=None, log_level=log_level, experiment_name=name))
    return Runner.from_cfg(cfg), resume


def train(config: dict, log_level: str = "WARNING") -> dict:
    """Train and evaluate; returns the history of evaluations, the encoder's info and how the run started."""
    runner, resumed = build_runner(config, log_level)
    runner.train()
    model = runner.model.module if hasattr(runner.model, "module") else runner.model
    work_dir = Path(config["work_dir"])
    timing = json.loads((work_dir / TIMING).read_text()) if (work_dir / TIMING).is_file() else None
    return {"history": read_history(work_dir), "encoder_info": model.backbone.encoder.info(), "resumed": resumed,
            "rank": runner.rank, "world_size": runner.world_size, "timing": timing, "work_dir": str(work_dir)}
