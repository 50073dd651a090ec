"""Object-level retrieval and kNN classification on CIFAR-10 and COCO object crops (protocols.md §3.3).

    python probes/object_retrieval.py --model dino --dataset cifar10 --data-root /data/cifar
    python probes/object_retrieval.py --model dino --dataset coco --data-root /data/coco --split val2017

The TMLR version of the paper evaluates object-level retrieval on CIFAR10 and COCO, but its protocol and
numbers were not available: every record here carries the note "protocol not published", and every
choice below is an option recorded in the record.

- CIFAR-10: queries = the 10,000 test images, gallery = the 50,000 training images (disjoint, so no
  self-match), each 32 x 32 image resized to the encoder's input size with PIL bicubic.
- COCO: one item per instance annotation of a split (default val2017) that is not a crowd and whose box
  is at least ``--min-box-size`` px on both sides. The crop rule (``--object-crop``): ``square`` = the
  box pasted centred on a black square of side max(w, h) (aspect kept, no context; default), ``box`` =
  the box alone (aspect not kept when resized), ``context`` = the square of side max(w, h) centred on the
  box cut from the image (zero outside it). Box edges are rounded outwards to whole pixels. Queries are
  the gallery; the self-match is included, excluded or both (default both).

Relevant = same class / category. Metrics as part retrieval: cosine similarity, sklearn AP over the full
ranking, ``AP`` (query mean), ``mAP`` (class mean), precision@k. kNN classification follows DINO
(k in 10, 20, 100, 200; T = 0.07; L2-normalised features; weights exp(sim / T)): CIFAR-10 train -> test;
COCO leave-one-out over the split (each item's own entry excluded). kNN results are separate records of
probe ``knn``: ``top1``/``top5`` at k = 20 (DINO's reported k), and ``top1_k<k>``/``top5_k<k>`` for every k.
"""
if __name__ == "__main__" and not __package__:  # run as a file from a checkout
    import pathlib, sys
    sys.path[0] = str(pathlib.Path(__file__).resolve().parents[1])

import argparse
import hashlib
import math
import os
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from probes import parts
from probes.cli import add_model_options, add_run_options, parse_arch
from probes.features import extract_features
from probes.metrics import knn_classify, retrieval_metrics
from probes.paths import results_dir
from probes.results import make_record, write_record

DATASETS = ("cifar10", "coco")
OBJECT_CROPS = ("square", "box", "context")
SELF_MATCH = ("included", "excluded", "both")
KNN_KS = (10, 20, 100, 200)
KNN_TEMPERATURE = 0.07
KNN_REPORTED_K = 20
KS = (1, 5, 10)
NOT_PUBLISHED = "protocol not published (protocols.md §3.3): object-level retrieval of the TMLR version"


# --- items -------------------------------------------------------------------------------------------------------
class ArrayImages(torch.utils.data.Dataset):
    """uint8 [N, H, W, 3] images (CIFAR) -> (transform(PIL image), label)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform):
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        return self.transform(Image.fromarray(self.images[index])), int(self.labels[index])


def object_crop(image: Image.Image, bbox, rule: str) -> Image.Image:
    """The crop of a COCO box (x, y, w, h) under ``rule`` (see the module docstring)."""
    x, y, w, h = bbox
    x0, y0, x1, y1 = math.floor(x), math.floor(y), math.ceil(x + w), math.ceil(y + h)
    if rule == "box":
        return image.crop((x0, y0, x1, y1))
    side = max(x1 - x0, y1 - y0)
    if rule == "square":
        canvas = Image.new("RGB", (side, side))
        canvas.paste(image.crop((x0, y0, x1, y1)), ((side - (x1 - x0)) // 2, (side - (y1 - y0)) // 2))
        return canvas
    if rule == "context":
        left, top = (x0 + x1 - side) // 2, (y0 + y1 - side) // 2
        return image.crop((left, top, left + side, top + side))
    raise ValueError(f"object crop rule must be one of {OBJECT_CROPS}, got {rule!r}")


class ObjectCrops(torch.utils.data.Dataset):
    def __init__(self, items: list, rule: str, transform):
        self.items, self.rule, self.transform = items, rule, transform

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int):
        path, bbox, label = self.items[index]
        with Image.open(path) as image:
            crop = object_crop(image.convert("RGB"), bbox, self.rule)
        return self.transform(crop), int(label)


def _limit_per_class(labels: np.ndarray, max_per_class: int | None) -> np.ndarray:
    """Indices kept: all, or the first ``max_per_class`` of each class in dataset order."""
    if not max_per_class:
        return np.arange(len(labels))
    keep, seen = [], {}
    for index, label in enumerate(labels.tolist()):
        if seen.get(label, 0) < max_per_class:
            keep.append(index)
            seen[label] = seen.get(label, 0) + 1
    return np.array(keep, dtype=np.int64)


def _stat_fingerprint(paths) -> str:
    digest = hashlib.sha256()
    for path in paths:
        stat = os.stat(path)
        digest.update(f"{path}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def cifar_sets(root, transform, max_per_class=None) -> dict:
    from probes.data.cifar import CIFAR10
    out = {}
    for name, train in (("gallery", True), ("query", False)):
        data = CIFAR10(root, train=train)
        keep = _limit_per_class(np.asarray(data.labels), max_per_class)
        files = sorted(Path(data.root).glob("*_batch*"))
        out[name] = {"dataset": ArrayImages(data.data[keep], np.asarray(data.labels)[keep], transform),
                     "labels": np.asarray(data.labels)[keep], "split": "train" if train else "test",
                     "identity": {"root": str(data.root), "train": train, "count": len(keep),
                                  "max_per_class": max_per_class, "files": _stat_fingerprint(files)}}
    out["classes"] = list(data.classes)
    return out


def coco_objects(root, split: str, min_box_size: float, max_per_class=None):
    """(items [(path, bbox, label)], class names, identity) of one COCO instances split."""
    from probes.data.coco import COCOInstances
    inst = COCOInstances(root, split=split)
    category_ids = sorted(inst.categories)
    label_of = {category_id: i for i, category_id in enumerate(category_ids)}
    items = [(str(inst.images[a.image_id].path), a.bbox, label_of[a.category_id]) for a in inst.annotations
             if not a.iscrowd and a.bbox[2] >= min_box_size and a.bbox[3] >= min_box_size]
    keep = _limit_per_class(np.array([label for _, _, label in items], dtype=np.int64), max_per_class)
    items = [items[i] for i in keep]
    digest = hashlib.sha256(repr([(p, tuple(b), l) for p, b, l in items]).encode()).hexdigest()
    identity = {"root": str(root), "split": split, "min_box_size": min_box_size, "max_per_class": max_per_class,
                "items_sha256": digest, "files": _stat_fingerprint([inst.annotation_file])}
    return items, [inst.categories[c] for c in category_ids], identity


# --- the run -------------------------------------------------------------------------------------------------------
def run(model: str = "dino", dataset: str = "cifar10", data_root=None, *, features=None, block=None,
        self_match: str = "both", normalize: str = "imagenet", split: str = "val2017", gallery_split=None,
        object_crop_rule: str = "square", min_box_size: float = 32.0, max_per_class=None, format=None, arch=None,
        encoder=None, batch_size: int = 64, num_workers: int = 0, device=None, results=None, write: bool = True,
        knn: bool = True, knn_ks=KNN_KS, cache: bool = True, data_source: str = "official", progress: bool = True,
        seed: int = 0, ks=KS, input_size=None, branch: str = "teacher") -> list:
    """Object retrieval (and kNN) records for one encoder on CIFAR-10 or COCO objects."""
    started = time.time()
    if dataset not in DATASETS:
        raise ValueError(f"dataset must be one of {DATASETS}, got {dataset!r}")
    data_root = Path(data_root) if data_root is not None else Path("data") / dataset   # the data CLI's default
    data_root = data_root.resolve()          # the config beside each record must work from any directory
    if not data_root.exists():
        raise ValueError(f"data root {data_root} does not exist: pass --data-root, the folder holding "
                         f"cifar-10-batches-py/ (CIFAR-10) or annotations/ and the split folders (COCO); to fetch "
                         f"it: python -m probes.data download {dataset} --root {data_root} && "
                         f"python -m probes.data prepare {dataset} --root {data_root}")
    if self_match not in SELF_MATCH:
        raise ValueError(f"self_match must be one of {SELF_MATCH}, got {self_match!r}")

    # 1. Encoder and input transform (PIL bicubic to the encoder's input size, chosen normalisation).
    if encoder is None:
        from probes.encoders import load_encoder
        encoder = load_encoder(model, format=format, arch=arch, device=device, branch=branch)
    else:
        model = encoder.info()["name"]          # the config beside each record names what really ran
    input_size = int(input_size or encoder.crop_size)
    mean, std = parts.normalization(normalize, encoder)
    transform = parts.CropTransform(input_size, mean, std)
    features = list(features or ["patch_mean", "cls"])
    precision = "bf16-autocast" if encoder.device.type == "cuda" else "fp32"

    # 2. Query and gallery sets.
    if dataset == "cifar10":
        sets = cifar_sets(data_root, transform, max_per_class)
        query, gallery, class_names = sets["query"], sets["gallery"], sets["classes"]
        same = False
        split_name = "test"
        crop_description = f"whole 32x32 image, PIL bicubic to {input_size}x{input_size}"
    else:
        items, class_names, identity = coco_objects(data_root, split, min_box_size, max_per_class)
        labels = np.array([label for _, _, label in items], dtype=np.int64)
        query = {"dataset": ObjectCrops(items, object_crop_rule, transform), "labels": labels, "split": split,
                 "identity": identity}
        same = gallery_split in (None, split)
        if same:
            gallery = query
        else:
            g_items, _, g_identity = coco_objects(data_root, gallery_split, min_box_size, max_per_class)
            gallery = {"dataset": ObjectCrops(g_items, object_crop_rule, transform),
                       "labels": np.array([l for _, _, l in g_items], dtype=np.int64), "split": gallery_split,
                       "identity": g_identity}
        split_name = split
        crop_description = f"object crop rule {object_crop_rule!r}, PIL bicubic to {input_size}x{input_size}"
    if len(query["labels"]) == 0 or len(gallery["labels"]) == 0:
        raise ValueError(f"{dataset} at {data_root}: no items (check --split, --min-box-size)")
    print(f"{dataset}: {len(query['labels'])} queries, {len(gallery['labels'])} gallery items, "
          f"{len(class_names)} classes")

    # 3. Features (cached).
    def encode(which: dict, name: str) -> dict:
        key = None if not cache else {"encoder": encoder.info(), "input_size": input_size,
                                      "transform": transform.describe(), "data": which["identity"],
                                      "crop": crop_description, "precision": precision}
        return extract_features(encoder, which["dataset"], features, block=block, batch_size=batch_size,
                                cache_key=key, num_workers=num_workers, progress=progress,
                                description=f"{dataset} {name} features")
    query_vectors = encode(query, "query")
    gallery_vectors = query_vectors if gallery is query else encode(gallery, "gallery")

    # 4. Retrieval per feature and self-match mode, then kNN per feature.
    if same:
        modes = ["included", "excluded"] if self_match == "both" else [self_match]
    else:
        modes = ["n/a"]
    protocol_base = {
        "object_dataset": dataset, "crop": crop_description, "input_size": input_size,
        "normalize": normalize, "normalize_mean": list(mean), "normalize_std": list(std),
        "similarity": "cosine", "query_split": query["split"], "gallery_split": gallery["split"],
        "max_per_class": max_per_class, "precision": precision, "data_source": data_source,
        "feature_source": "final norm" if block is None else f"block {block} output, before the final norm",
        "num_queries": int(len(query["labels"])), "num_gallery": int(len(gallery["labels"])),
    }
    if dataset == "coco":
        protocol_base.update({"object_crop": object_crop_rule, "min_box_size": min_box_size, "iscrowd": "excluded"})
    if data_source == "synthetic":
        protocol_base["synthetic"] = True
    notes = [NOT_PUBLISHED] + (["generated data: not comparable with any published number"]
                               if data_source == "synthetic" else [])
    folder = Path(results) if results else results_dir()
    metric_device = encoder.device if precision != "fp32" else None
    config = {"model": model, "dataset": dataset, "data_root": str(data_root), "features": features, "block": block,
              "self_match": self_match, "normalize": normalize, "split": split, "gallery_split": gallery_split,
              "object_crop": object_crop_rule, "min_box_size": min_box_size, "max_per_class": max_per_class,
              "batch_size": batch_size, "device": str(encoder.device), "knn_ks": list(knn_ks), "seed": seed}
    records, rows = [], []

    def emit(probe: str, feature: str, protocol: dict, metrics: dict, extra_notes=()):
        record = make_record(probe=probe, dataset=dataset, split=split_name, encoder_info=encoder.info(),
                             feature=feature, block=block, protocol=protocol, metrics=metrics, seed=seed,
                             wall_time_s=time.time() - started, device=str(encoder.device),
                             notes=notes + list(extra_notes))
        if write:
            write_record(record, folder, config=config)
        records.append(record)

    for feature in features:
        for mode in modes:
            include_self = mode != "excluded"
            scores = retrieval_metrics(query_vectors[feature], query["labels"],
                                       None if same else gallery_vectors[feature],
                                       None if same else gallery["labels"], include_self=include_self, ks=ks,
                                       num_classes=len(class_names), device=metric_device)
            metrics = {"AP": 100 * scores["AP"], "mAP": 100 * scores["mAP"]}
            metrics.update({f"P@{k}": 100 * scores[f"P@{k}"] for k in ks})
            protocol = dict(protocol_base, include_self=(mode == "included") if same else None)
            extra = [f"{scores['num_queries_without_positives']} queries have no positive: left out of the means"] \
                if scores["num_queries_without_positives"] else []
            emit("object_retrieval", feature, protocol, metrics, extra)
            rows.append((feature, mode, metrics))
        if knn:
            ks_here = [k for k in knn_ks if k <= len(gallery["labels"]) - (1 if same else 0)]
            result = knn_classify(gallery_vectors[feature], gallery["labels"],
                                  None if same else query_vectors[feature], None if same else query["labels"],
                                  ks=ks_here, temperature=KNN_TEMPERATURE, num_classes=len(class_names),
                                  device=metric_device)
            # DINO reports k = 20 (protocols.md §6.1): that is top1/top5; every k is kept as top1_k<k>.
            reported = KNN_REPORTED_K if KNN_REPORTED_K in ks_here else ks_here[-1]
            metrics = {"top1": 100 * result[reported]["top1"], "top5": 100 * result[reported]["top5"]}
            for k in ks_here:
                metrics[f"top1_k{k}"] = 100 * result[k]["top1"]
                metrics[f"top5_k{k}"] = 100 * result[k]["top5"]
            protocol = dict(protocol_base, k=reported, knn_temperature=KNN_TEMPERATURE, knn_ks=ks_here,
                            knn_protocol="DINO eval_knn: L2-normalised, weights exp(sim/T), "
                                         + ("leave-one-out over the split" if same else "train -> test"))
            emit("knn", feature, protocol, metrics)
            rows.append((feature, "kNN", metrics))

    print_table(encoder.info()["name"], dataset, rows, ks)
    if write:
        print(f"records written under {folder}")
    return records


def print_table(model: str, dataset: str, rows: list, ks=KS) -> None:
    print(f"{'model':<22}{'dataset':<9}{'feature':<12}{'self':<10}metrics")
    print("-" * 96)
    for feature, mode, metrics in rows:
        if mode == "kNN":
            text = "  ".join(f"k={key.split('_k')[1]}: {metrics[key]:.2f}" for key in metrics
                             if key.startswith("top1_k"))
            text = "kNN top-1  " + text
        else:
            text = f"AP {metrics['AP']:.2f}  mAP {metrics['mAP']:.2f}  " + \
                "  ".join(f"P@{k} {metrics[f'P@{k}']:.2f}" for k in ks)
        print(f"{model:<22}{dataset:<9}{feature:<12}{mode:<10}{text}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_options(parser)
    parser.add_argument("--dataset", choices=DATASETS, default="cifar10", help="CIFAR-10 (test vs train) or COCO object crops.")
    parser.add_argument("--data-root", default=None, help="Folder holding cifar-10-batches-py/ (CIFAR-10) or annotations/ and the split folders (COCO); default data/<dataset>.")
    parser.add_argument("--feature", action="append", default=None, help="Feature(s) to evaluate (repeatable): patch_mean, cls, projection; default patch_mean and cls.")
    parser.add_argument("--block", type=int, default=None, help="Pool features from block K's output (0-based, before the final norm).")
    parser.add_argument("--self-match", choices=SELF_MATCH, default="both", help="COCO: whether each query's own crop is in its ranking (queries are the gallery).")
    parser.add_argument("--normalize", choices=("imagenet", "model"), default="imagenet", help="Input normalisation: ImageNet mean/std for every model or each model's own.")
    parser.add_argument("--split", default="val2017", help="COCO split whose objects are the queries.")
    parser.add_argument("--gallery-split", default=None, help="COCO split of the gallery (default: the query split, queries = gallery).")
    parser.add_argument("--object-crop", choices=OBJECT_CROPS, default="square", help="COCO crop: box on a black square, the bare box, or a square with image context.")
    parser.add_argument("--min-box-size", type=float, default=32.0, help="COCO: skip boxes narrower or shorter than this many pixels.")
    parser.add_argument("--max-per-class", type=int, default=None, help="Keep only the first N items of each class (quick runs; recorded).")
    parser.add_argument("--input-size", type=int, default=None, help="Side the crops are resized to (default: the encoder's input size, 224 for real models).")
    parser.add_argument("--no-knn", action="store_true", help="Skip the kNN classification records.")
    add_run_options(parser)
    parser.add_argument("--data-source", choices=("official", "synthetic"), default="official", help="Mark records of generated data.")
    parser.add_argument("--seed", type=int, default=0, help="Seed recorded with the run.")
    return parser


def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    run(args.model, args.dataset, args.data_root, features=args.feature, block=args.block, self_match=args.self_match,
        normalize=args.normalize, split=args.split, gallery_split=args.gallery_split, object_crop_rule=args.object_crop,
        min_box_size=args.min_box_size, max_per_class=args.max_per_class, format=args.format,
        arch=parse_arch(args.arch, args.arch_kwargs), batch_size=args.batch_size, num_workers=args.num_workers,
        device=args.device, results=args.results, knn=not args.no_knn, cache=not args.no_cache,
        data_source=args.data_source, seed=args.seed, input_size=args.input_size, branch=args.branch)


if __name__ == "__main__":
    main()
