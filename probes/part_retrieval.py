"""Part retrieval on keypoint-centred patches of CUB-200-2011 and COCO (Zhu et al., Table 3 left; protocols.md §4).

    python probes/part_retrieval.py --model dino --dataset cub --data-root /data/CUB

Every patch is a query against the whole patch database; relevant = same keypoint type (right eye of any
bird, nose of any person). Similarity is cosine, AP is sklearn's average precision over the full ranking
of each query; ``AP`` = mean over queries, ``mAP`` = mean over part classes of the class-mean AP.

Presets (protocols.md §7); any explicit option overrides its preset value:

- ``partaware`` (default): the official code. official-code crop (half = round(d/4), 40 < d < 2000),
  self-match included, ImageNet normalisation for every model, patch_mean and cls (plus projection when
  the checkpoint has a head), COCO distances as the code computes them (``code_exact``), and for MAE
  checkpoints the code's token shuffle before the position embedding (``mae_token_shuffle``, §8.4).
- ``paper-text``: the paper's wording where it differs: d x d crops, no distance filter, COCO distances
  within the image (``image``).
- ``clean``: ``partaware`` with its pitfalls fixed: self-matches excluded, COCO distances per person, no
  MAE token shuffle.

Crops ``official-code`` and ``paper`` encode each patch as its own image, resized to the encoder's input
size. ``dense`` (not in the paper) encodes each full image once, resized to the encoder's input size
(aspect not kept), and samples the final patch-token map bilinearly at each keypoint; its keypoints are
those of the official-code database, and it is recorded under ``crop: dense``, feature ``dense_patch``.

One result record per (feature x self-match mode), with every option above in its ``protocol``.
"""
if __name__ == "__main__" and not __package__:  # run as a file from a checkout
    import pathlib, sys
    sys.path[0] = str(pathlib.Path(__file__).resolve().parents[1])

import argparse
import time
from pathlib import Path

from probes import parts
from probes.cli import add_model_options, add_run_options, parse_arch
from probes.encoders import float32_forward, forward_identity, mae_shuffle_protocol, shuffled_mae_tokens
from probes.features import extract_dense_features, extract_features
from probes.metrics import retrieval_metrics
from probes.paths import results_dir
from probes.results import make_record, write_record

PRESETS = {
    "partaware": {"crop": "official-code", "self_match": "included", "normalize": "imagenet",
                  "coco_dist_scope": "code_exact", "mae_token_shuffle": True, "precision": "fp32"},
    "paper-text": {"crop": "paper", "self_match": "included", "normalize": "imagenet", "coco_dist_scope": "image",
                   "mae_token_shuffle": True, "precision": "fp32"},
    "clean": {"crop": "official-code", "self_match": "excluded", "normalize": "imagenet",
              "coco_dist_scope": "person", "mae_token_shuffle": False, "precision": "bf16"},
}
CROPS = ("official-code", "paper", "dense")
SELF_MATCH = ("included", "excluded", "both")
KS = (1, 5, 10)
VISIBILITY = {"cub": "visible == 1", "coco": "v == 2, persons with >= 2 target keypoints"}


def resolve_options(preset: str, **explicit) -> dict:
    """The preset's values, overridden by every option given explicitly (not None)."""
    if preset not in PRESETS:
        raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {preset!r}")
    options = dict(PRESETS[preset])
    options.update({name: value for name, value in explicit.items() if value is not None})
    if options["crop"] not in CROPS:
        raise ValueError(f"crop must be one of {CROPS}, got {options['crop']!r}")
    if options["self_match"] not in SELF_MATCH:
        raise ValueError(f"self_match must be one of {SELF_MATCH}, got {options['self_match']!r}")
    if options["precision"] not in ("fp32", "bf16"):
        raise ValueError(f"precision must be 'fp32' or 'bf16', got {options['precision']!r}")
    return options


def load_model(model: str, *, format=None, arch=None, device=None, branch: str = "teacher"):
    """An encoder by registry name, ``timm:<name>`` or checkpoint path (probes.encoders.load_encoder)."""
    from probes.encoders import load_encoder
    return load_encoder(model, format=format, arch=arch, device=device, branch=branch)


def default_features(encoder, crop: str, block) -> list[str]:
    if crop == "dense":
        return ["dense_patch"]
    features = ["patch_mean", "cls"]
    if getattr(encoder, "has_projection", False) and block is None:
        features.append("projection")
    return features


def run(model: str = "dino", dataset: str = "cub", data_root=None, *, preset: str = "partaware", crop=None,
        features=None, block=None, self_match=None, keypoints="paper", normalize=None, coco_dist_scope=None,
        dist_filter=None, split=None, format=None, arch=None, encoder=None, batch_size: int = 64,
        num_workers: int = 0, device=None, results=None, write: bool = True, grid=None, grid_queries: int = 6,
        grid_k: int = 8, boxes=None, crop_shift: float = 0.0, crop_shift_seed: int = 0, cache: bool = True,
        data_source: str = "official", progress: bool = True, seed: int = 0, ks=KS, input_size=None,
        mae_token_shuffle=None, branch: str = "teacher", precision=None) -> list:
    """Run part retrieval and return the result records (written to ``results`` unless write=False)."""
    started = time.time()
    data_root = Path(data_root) if data_root is not None else Path("data") / dataset   # the data CLI's default
    data_root = data_root.resolve()          # the config beside each record must work from any directory
    if not data_root.exists():
        raise ValueError(f"data root {data_root} does not exist: pass --data-root, the folder holding "
                         f"CUB_200_2011/ (CUB) or annotations/ and train2017/ (COCO); to fetch it: "
                         f"python -m probes.data download {dataset} --root {data_root} && "
                         f"python -m probes.data prepare {dataset} --root {data_root}")
    options = resolve_options(preset, crop=crop, self_match=self_match, normalize=normalize,
                              coco_dist_scope=coco_dist_scope, mae_token_shuffle=mae_token_shuffle,
                              precision=precision)

    # 1. The encoder, and the input transform of the crops: its input size, the chosen normalisation.
    if encoder is None:
        encoder = load_model(model, format=format, arch=arch, device=device, branch=branch)
    else:
        model = encoder.info()["name"]          # the config beside each record names what really ran
    input_size = int(input_size or encoder.crop_size)       # 224 for real models; a tiny test ViT says 64
    mean, std = parts.normalization(options["normalize"], encoder)
    transform = parts.CropTransform(input_size, mean, std)
    features = list(features or default_features(encoder, options["crop"], block))

    # 2. The part database (dense uses the keypoints of the official-code database, boxes unused).
    database_crop = "official-code" if options["crop"] == "dense" else options["crop"]
    db = parts.build_part_database(dataset, data_root, crop=database_crop, keypoints=keypoints, split=split,
                                   dist_filter=dist_filter, coco_dist_scope=options["coco_dist_scope"],
                                   crop_shift=crop_shift, crop_shift_seed=crop_shift_seed)
    if len(db) == 0:
        raise ValueError(f"{dataset} at {data_root}: no part patch survived the protocol ({db.options})")
    print(f"{dataset}: {len(db)} part patches ({parts.part_counts_table(db)})")
    if boxes:
        print(f"crop boxes written to {db.write_boxes(boxes)}")

    # 3. Features, cached on disk by everything they depend on.
    # bf16 autocast only where asked for and possible: the official pipeline ran in float32.
    on_cuda = getattr(encoder, "device", None) is not None and encoder.device.type == "cuda"
    precision = "bf16-autocast" if on_cuda and options["precision"] == "bf16" else "fp32"
    with shuffled_mae_tokens(encoder, options["mae_token_shuffle"], seed=seed) as shuffle, \
            float32_forward(encoder, precision == "fp32"):
        cache_key = None if not cache else {
            "encoder": encoder.info(), "input_size": input_size, "transform": transform.describe(),
            "data": db.identity(), "crop": options["crop"], "precision": precision, **forward_identity(encoder),
        }
        if options["crop"] == "dense":
            unknown = [f for f in features if f != "dense_patch"]
            if unknown:
                raise ValueError(f"the dense protocol has one feature, dense_patch (the patch-token map at the "
                                 f"keypoint), not {unknown}")
            vectors = {"dense_patch": extract_dense_features(
                encoder, db.items, transform, block=block, batch_size=batch_size, cache_key=cache_key,
                num_workers=num_workers, progress=progress)}
        else:
            vectors = extract_features(encoder, parts.PartCropDataset(db, transform), features, block=block,
                                       batch_size=batch_size, cache_key=cache_key, num_workers=num_workers,
                                       progress=progress, description=f"{dataset} part features")

    # 4. Retrieval metrics per feature and self-match mode; one record each.
    modes = ["included", "excluded"] if options["self_match"] == "both" else [options["self_match"]]
    labels = db.labels()
    metric_device = encoder.device if on_cuda else None
    results_folder = Path(results) if results else results_dir()
    records = []
    rows = []
    for feature in features:
        for mode in modes:
            scores = retrieval_metrics(vectors[feature], labels, include_self=(mode == "included"), ks=ks,
                                       num_classes=len(db.class_names), device=metric_device)
            metrics = {"AP": 100 * scores["AP"], "mAP": 100 * scores["mAP"]}
            metrics.update({f"P@{k}": 100 * scores[f"P@{k}"] for k in ks})
            metrics.update({f"AP[{db.class_names[c]}]": 100 * v for c, v in scores["per_class_AP"].items()})
            protocol = _protocol(preset, options, db, dataset, mode, input_size, mean, std, precision, data_source,
                                 block)
            protocol.update(mae_shuffle_protocol(encoder, shuffle, seed))
            notes = ["part-retrieval on generated data: not comparable with the paper"] \
                if data_source == "synthetic" else []
            if scores["num_queries_without_positives"]:
                notes.append(f"{scores['num_queries_without_positives']} queries have no positive (a class with "
                             f"one patch, self excluded): left out of AP, mAP and P@k")
            record = make_record(probe="part_retrieval", dataset=dataset, split=db.split,
                                 encoder_info=encoder.info(), feature=feature, block=block, protocol=protocol,
                                 metrics=metrics, seed=seed, wall_time_s=time.time() - started,
                                 device=str(getattr(encoder, "device", "cpu")), notes=notes)
            if write:
                write_record(record, results_folder, config=_config(locals()))
            records.append(record)
            rows.append((feature, mode, metrics))

    print_table(encoder.info()["name"], dataset, rows, ks)
    if write:
        print(f"records written under {results_folder}")
    if grid:
        from analysis.retrieval_grid import plot_part_retrieval_grid
        path = plot_part_retrieval_grid(db, vectors[features[0]], grid, queries=grid_queries, k=grid_k,
                                        exclude_self=(modes[-1] == "excluded"), seed=seed,
                                        title=f"{encoder.info()['name']} / {dataset} / {features[0]}")
        print(f"retrieval grid written to {path}")
    return records


def _protocol(preset, options, db, dataset, mode, input_size, mean, std, precision, data_source, block) -> dict:
    """Every option that changes a number, under the names the leaderboard reads (protocols.md §7)."""
    protocol = {
        "preset": preset,
        "crop": options["crop"],
        "crop_side": "n/a (full image, sampled at the keypoint)" if options["crop"] == "dense" else db.options["crop_side"],
        "dist_filter": db.options["dist_filter"],
        "crop_pad": "zero",
        "crop_resize": "PIL bicubic (antialiased)",
        "input_size": input_size,
        "keypoints": db.options["keypoints"],
        "keypoint_ids": db.options["keypoint_ids"],
        "part_visibility": VISIBILITY[dataset],
        "include_self": mode == "included",
        "normalize": options["normalize"],
        "normalize_mean": list(mean),
        "normalize_std": list(std),
        "similarity": "cosine",
        "ap": "sklearn average_precision_score over the full ranking (ties grouped); AP = query mean, "
              "mAP = class mean",
        "feature_source": "final norm" if block is None else f"block {block} output, before the final norm",
        "crop_shift": db.options["crop_shift"],
        "crop_shift_seed": db.options["crop_shift_seed"],
        "num_items": len(db),
        "part_counts": db.counts(),
        "precision": precision,
        "data_source": data_source,
    }
    if dataset == "coco":
        protocol["coco_dist_scope"] = db.options["coco_dist_scope"]
    if options["crop"] == "dense":
        protocol["dense"] = ("full image resized to input_size x input_size (aspect not kept, PIL bicubic); "
                             "token map sampled bilinearly at the keypoint, pixel centre (x + 0.5, y + 0.5), "
                             "grid_sample align_corners=False, border padding")
    if data_source == "synthetic":
        protocol["synthetic"] = True
    return protocol


def _config(scope: dict) -> dict:
    """The resolved call (JSON-plain) stored beside each record."""
    names = ("model", "dataset", "data_root", "preset", "options", "features", "block", "keypoints", "split",
             "dist_filter", "format", "arch", "batch_size", "num_workers", "device", "crop_shift", "crop_shift_seed",
             "data_source", "seed", "ks", "input_size")
    return {name: _json_plain(scope.get(name)) for name in names}


def _json_plain(value):
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    if isinstance(value, (list, tuple)):
        return [_json_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _json_plain(v) for k, v in value.items()}
    return str(value)             # paths, Arch objects, devices


def print_table(model: str, dataset: str, rows: list, ks=KS) -> None:
    header = f"{'model':<22}{'dataset':<8}{'feature':<13}{'self':<10}{'AP':>7}{'mAP':>7}" + \
        "".join(f"{'P@' + str(k):>7}" for k in ks)
    print(header)
    print("-" * len(header))
    for feature, mode, metrics in rows:
        print(f"{model:<22}{dataset:<8}{feature:<13}{mode:<10}{metrics['AP']:>7.2f}{metrics['mAP']:>7.2f}"
              + "".join(f"{metrics[f'P@{k}']:>7.2f}" for k in ks))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_options(parser)
    parser.add_argument("--dataset", choices=parts.DATASETS, default="cub", help="Part database: CUB-200-2011 or COCO person keypoints.")
    parser.add_argument("--data-root", default=None, help="Folder holding CUB_200_2011/ (CUB) or annotations/ and train2017/ (COCO); default data/<dataset>.")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="partaware", help="Protocol preset: official code, paper text, or official code with its pitfalls fixed.")
    parser.add_argument("--crop", choices=CROPS, default=None, help="Crop rule: official code (~d/2 square), paper (d x d), or dense (token map sampled at the keypoint).")
    parser.add_argument("--feature", action="append", default=None, help="Feature(s) to evaluate (repeatable): patch_mean, cls, projection; default patch_mean and cls (+projection).")
    parser.add_argument("--block", type=int, default=None, help="Pool features from block K's output (0-based, before the final norm) instead of the final output.")
    selfs = parser.add_mutually_exclusive_group()
    selfs.add_argument("--self-match", choices=SELF_MATCH, default=None, help="Whether each query's own patch is in its ranking (official code: included).")
    selfs.add_argument("--include-self", dest="self_match", action="store_const", const="included", help="Same as --self-match included.")
    selfs.add_argument("--exclude-self", dest="self_match", action="store_const", const="excluded", help="Same as --self-match excluded.")
    parser.add_argument("--keypoints", choices=("paper", "all"), default="paper", help="The paper's 4 CUB / 3 COCO keypoints, or all 15 / 17.")
    parser.add_argument("--normalize", choices=("imagenet", "model"), default=None, help="Input normalisation: ImageNet mean/std for every model (paper) or each model's own.")
    parser.add_argument("--coco-dist-scope", choices=parts.COCO_DIST_SCOPES, default=None, help="COCO distance pool: the official code's (ann id as 3rd coordinate), the whole image, or each person.")
    parser.add_argument("--mae-token-shuffle", choices=("on", "off"), default=None, help="MAE checkpoints only: shuffle patch tokens before the position embedding, as the official code did (partaware/paper-text: on, clean: off).")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default=None, help="Encoder arithmetic on a GPU: float32 as the official code (partaware, paper-text) or bf16 autocast (clean); always float32 on a CPU.")
    parser.add_argument("--dist-filter", choices=parts.DIST_FILTERS, default=None, help="Keep only 40 < d < 2000 px (official) or every keypoint with a neighbour (none).")
    parser.add_argument("--split", default=None, help="CUB train/test or COCO split; default: the whole retrieval database.")
    parser.add_argument("--input-size", type=int, default=None, help="Side the crops are resized to (default: the encoder's input size, 224 for real models).")
    add_run_options(parser)
    parser.add_argument("--boxes", default=None, help="Write every crop box, keypoint and distance to this JSON file for audit.")
    parser.add_argument("--grid", default=None, help="Write a retrieval-grid figure (queries and their top-k patches) to this PNG.")
    parser.add_argument("--grid-queries", type=int, default=6, help="Queries shown in the grid figure.")
    parser.add_argument("--grid-k", type=int, default=8, help="Retrieved patches shown per query in the grid figure.")
    parser.add_argument("--crop-shift", type=float, default=0.0, help="Audit only: move every crop by this fraction of its side in a random direction.")
    parser.add_argument("--crop-shift-seed", type=int, default=0, help="Seed of the crop-shift directions.")
    parser.add_argument("--data-source", choices=("official", "synthetic"), default="official", help="Mark records of generated data (never compared with the paper).")
    parser.add_argument("--seed", type=int, default=0, help="Seed recorded with the run (and used to pick the grid's queries).")
    return parser


def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    run(args.model, args.dataset, args.data_root, preset=args.preset, crop=args.crop, features=args.feature,
        block=args.block, self_match=args.self_match, keypoints=args.keypoints, normalize=args.normalize,
        coco_dist_scope=args.coco_dist_scope, dist_filter=args.dist_filter, split=args.split, format=args.format,
        arch=parse_arch(args.arch, args.arch_kwargs), batch_size=args.batch_size, num_workers=args.num_workers,
        device=args.device, results=args.results, grid=args.grid, grid_queries=args.grid_queries, grid_k=args.grid_k,
        boxes=args.boxes, crop_shift=args.crop_shift, crop_shift_seed=args.crop_shift_seed, cache=not args.no_cache,
        data_source=args.data_source, seed=args.seed, input_size=args.input_size,
        mae_token_shuffle=None if args.mae_token_shuffle is None else args.mae_token_shuffle == "on",
        branch=args.branch, precision=args.precision)


if __name__ == "__main__":
    main()
