"""Part and object segmentation (Zhu et al., Table 4 and Figure 6; protocols.md §5).

    python probes/part_segmentation.py --model dino --dataset lip --data-root data/lip [--protocol linear] [--iters N]
    torchrun --nproc_per_node 8 probes/part_segmentation.py --model dino --dataset ade20k-part-209 --data-root ...

Protocols (probes/segmentation.py says what each does):

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

import argparse
import dataclasses
import os
import time
from pathlib import Path

from probes import segmentation as seg
from probes.cli import add_model_options, parse_arch
from probes.encoders import default_device
from probes.paths import results_dir
from probes.results import make_record, write_record


def _pair(text):
    return tuple(int(v) for v in text.split(","))


def _layers(text):
    return tuple(v if v == "last" else int(v) for v in text.split(","))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_options(parser)
    parser.add_argument("--dataset", default="lip", help=f"Class set: {', '.join(seg.DATASETS)} (lip = lip19; the data CLI's names work too).")
    parser.add_argument("--data-root", default=None, help="The dataset's folder as its probes.data reader takes it (default data/<dataset>).")
    parser.add_argument("--protocol", choices=seg.PROTOCOLS, default="linear", help="Frozen linear head, fine-tuned UperNet, or training-free dense kNN.")
    parser.add_argument("--preset", default=None, help="linear: partaware (default) or paper-text; finetune: mae-upernet; dense: hummingbird.")
    parser.add_argument("--layers", type=_layers, default=None, help="Blocks (ResNet stages), comma-separated, 0-based, or 'last' (default 3,5,7,11; dense: last).")
    parser.add_argument("--upsample", dest="seg_upsample", choices=("none", "4x"), default=None, help="Linear head: 1x1 conv at stride 16 (official code) or after 4x bilinear upsampling (paper text).")
    parser.add_argument("--final-norm", dest="seg_final_norm", action="store_const", const=True, default=None, help="Apply the encoder's final norm to each block's output (official: off).")
    parser.add_argument("--aux-head", dest="seg_aux_head", choices=("on", "off"), default=None, help="The auxiliary FCN head on the third selected block, weight 0.4 (official: on).")
    parser.add_argument("--checkpoint", dest="seg_checkpoint", choices=("last", "best"), default=None, help="Report the last evaluation or the best val mIoU (not published which).")
    parser.add_argument("--iters", type=int, default=None, help="Training iterations (official 160,000); warm-up scales with it unless --warmup-iters.")
    parser.add_argument("--batch-size", type=int, default=None, help="Images per iteration over all processes (official 16).")
    parser.add_argument("--lr", type=float, default=None, help="AdamW learning rate (linear 4e-4, finetune 1e-4).")
    parser.add_argument("--weight-decay", type=float, default=None, help="AdamW weight decay (0.05).")
    parser.add_argument("--layer-decay", type=float, default=None, help="Layer-wise lr decay (finetune 0.65).")
    parser.add_argument("--warmup-iters", type=int, default=None, help="Linear warm-up iterations (default 1,500 x iters / 160k).")
    parser.add_argument("--checkpoint-interval", type=int, default=None, help="Iterations between checkpoints (default min(8,000, iters)).")
    parser.add_argument("--eval-interval", type=int, default=None, help="Iterations between evaluations (default min(16,000, iters)); the last is always evaluated.")
    parser.add_argument("--augmentation", choices=("partaware", "none"), default=None, help="Official random resize/crop/flip/photometric, or none (images resized to the crop).")
    parser.add_argument("--crop-size", type=int, default=None, help="Training crop and slide window (default: the dataset's, 512/480/320).")
    parser.add_argument("--train-scale", type=_pair, default=None, help="Train resize scale W,H before the 0.5-2 ratio (default: the dataset's).")
    parser.add_argument("--test-scale", type=_pair, default=None, help="Test resize scale W,H, keep ratio (default: the dataset's).")
    parser.add_argument("--slide-stride", type=int, default=None, help="Slide-inference stride (default: the dataset's, 341/161/161).")
    parser.add_argument("--dense-k", type=int, default=None, help="Dense: neighbours per patch (30).")
    parser.add_argument("--dense-temperature", type=float, default=None, help="Dense: softmax temperature over cosine similarity (0.02).")
    parser.add_argument("--dense-memory", type=int, default=None, help="Dense: training patches kept, sampled evenly over images (102,400).")
    parser.add_argument("--dense-input-size", type=int, default=None, help="Dense: images resized to this square (default: the crop size).")
    parser.add_argument("--seed", type=int, default=None, help="Seed of the runner (data order, initialisation) or of the dense sample (0).")
    parser.add_argument("--num-workers", type=int, default=2, help="DataLoader worker processes.")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available).")
    parser.add_argument("--results", default=None, help="Folder for result records (default: $PARTPROBE_RESULTS or ~/.cache/partprobe/results).")
    parser.add_argument("--work-dir", default=None, help="Training state folder (default: keyed by the configuration under $PARTPROBE_HOME/train_state).")
    parser.add_argument("--data-source", choices=("official", "synthetic"), default="official", help="Mark records of generated data (never compared with the paper).")
    parser.add_argument("--log-level", default="WARNING", help="mmengine log level (INFO prints every log interval).")
    return parser


def run(args) -> list:
    started = time.time()
    dataset = seg.seg_dataset(args.dataset).name
    data_root = Path(args.data_root or Path("data") / args.dataset).resolve()
    device = str(default_device(args.device))
    spec = seg.describe_encoder(args.model, args.format, parse_arch(args.arch, args.arch_kwargs), args.branch)
    options = {name: getattr(args, name) for name in (
        "seg_upsample", "seg_final_norm", "seg_checkpoint", "iters", "batch_size", "lr", "weight_decay", "layer_decay",
        "warmup_iters", "checkpoint_interval", "eval_interval", "augmentation", "crop_size", "train_scale",
        "test_scale", "slide_stride", "dense_k", "dense_temperature", "dense_memory", "dense_input_size", "seed")}
    options["seg_layers"] = args.layers
    options["seg_aux_head"] = None if args.seg_aux_head is None else args.seg_aux_head == "on"
    protocol = seg.resolve_protocol(args.protocol, dataset, spec, args.preset, **options)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    extra, notes = {}, []
    if protocol.protocol == "dense":
        backbone = seg.build_backbone(spec.model, spec.format, seg.backbone_arch(spec, protocol.dense_input_size),
                                      spec.branch, protocol.seg_layers, device=device)
        train, val = seg.load_split(dataset, data_root, "train"), seg.load_split(dataset, data_root, "val")
        result = seg.dense_knn(backbone, train, val, protocol, device=device, progress=True)
        summary, encoder_info, rank = result["summary"], backbone.encoder.info(), 0
        extra.update(dense_memory_patches=result["memory_patches"], dense_patches_per_image=result["patches_per_image"],
                     num_train_images=len(train), num_val_images=len(val))
        config = {"protocol": dataclasses.asdict(protocol), "data_root": str(data_root)}
    else:
        from probes.adapters import mmseg as adapter    # needs the seg extra
        config = seg.runner_config(protocol, dataset, data_root, spec, work_dir="", world_size=world_size,
                                   device=device, num_workers=args.num_workers)
        config["work_dir"] = str(args.work_dir or seg.work_dir_for(dataset, spec, config))
        result = adapter.train(config, log_level=args.log_level)
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
                                          data_source=args.data_source)
    record_protocol.update(extra, absent_classes=summary["absent"])
    if summary["absent"]:
        notes.append(f"{len(summary['absent'])} classes neither labelled nor predicted in val: IoU undefined "
                     f"(NaN in mmseg), left out of mIoU and of the per-class IoU")
    if args.data_source == "synthetic":
        notes.append("segmentation on generated data: not comparable with the paper")
    record = make_record(probe=seg.PROBE_NAMES[protocol.protocol], dataset=dataset, split="val",
                         encoder_info=encoder_info, feature="blocks", block=None, protocol=record_protocol,
                         metrics=seg.record_metrics(summary), seed=protocol.seed, wall_time_s=time.time() - started,
                         device=device, notes=notes)
    path = write_record(record, args.results or results_dir(), config={"args": vars(args), "config": config})
    print(f"{encoder_info['name']} {record.task}: mIoU {summary['mIoU']:.2f}  mAcc {summary['mAcc']:.2f}  "
          f"aAcc {summary['aAcc']:.2f}" + "".join(f"  (paper {k.split('/')[-1]} {v})" for k, v in record.published.items()))
    print(f"record written to {path}")
    return [record]


def main(argv=None) -> list:
    records = run(build_parser().parse_args(argv))
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
    return records


if __name__ == "__main__":
    main()
