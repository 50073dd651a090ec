"""Part retrieval on keypoint-centred patches of CUB-200-2011 and COCO (Zhu et al., Table 3 left).

    python probes/part_retrieval.py --model dino --dataset cub --data-root /data/CUB

Every patch is a query against the whole patch database; relevant = the same keypoint type (right eye of
any bird, nose of any person). Similarity is cosine, AP is scikit-learn's average precision over the full
ranking of each query; ``AP`` = mean over queries, ``mAP`` = mean over part classes of the class-mean AP.
The protocol is in docs/protocols.md#part-retrieval.

Presets (any explicit option overrides its preset value):

- ``partaware`` (default): the official code: official-code crop (half = round(d/4), 40 < d < 2000),
  self-match included, ImageNet normalisation for every model, COCO distances as the code computes them
  (``code_exact``), float32, and for MAE checkpoints the code's token shuffle before the position embedding.
- ``paper-text``: the paper's wording where it differs: d x d crops, no distance filter, COCO distances
  within the image.
- ``clean``: ``partaware`` with its pitfalls fixed: self-matches excluded, COCO distances per person, no
  MAE token shuffle, bf16 on a GPU.

Crops ``official-code`` and ``paper`` encode each patch as its own image, resized to the encoder's input
size. ``dense`` (not in the paper) encodes each full image once and samples the final patch-token map at
each keypoint of the official-code database (feature ``dense_patch``).

One record per (feature x self-match mode). Beside them: ``items.csv`` (every patch: image, part, keypoint,
crop box) and per record ``queries.<feature>.<mode>.csv`` (each query's AP, P@k and top-10 neighbours).
"""
if __name__ == "__main__" and not __package__:  # run as a file from a checkout
    import pathlib, sys
    sys.path[0] = str(pathlib.Path(__file__).resolve().parents[1])

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from probes import artifacts, experiment
from probes.experiment import Experiment
from probes.features import extract, extract_dense
from probes.metrics import retrieval_metrics, retrieval_record_metrics, topk_neighbours
from probes.options import ConfigError, InputDataOptions, Preset, RetrievalOptions, option, recorded_values, section
from probes.results import data_digest, make_record
from probes.views.checks import left_out_notes, left_out_protocol
from probes.views.parts import PartCropOptions, crop_transform, part_crops
from probes.views.transforms import normalization

KS = (1, 5, 10)


@dataclass
class PartRetrievalData(InputDataOptions):
    dataset: Literal["cub", "coco"] = option("cub", help="Part database: CUB-200-2011 or COCO person keypoints.",
                                             recorded=False)
    split: str | None = option(None, help="CUB train/test or a COCO split; default: the whole retrieval "
                                          "database (CUB: all images; COCO: train2017).", recorded=False)


@dataclass
class AuditOptions:
    """Files for looking at a run; nothing here changes a number."""
    RECORDED = False

    boxes: Path | None = option(None, help="Also write every crop box, keypoint and distance to this JSON file.")
    grid: Path | None = option(None, help="Write a retrieval-grid figure (queries and their top-k patches) here "
                                          "(PNG, with PDF and SVG beside it).")
    grid_queries: int = option(6, help="Queries shown in the grid figure.")
    grid_k: int = option(8, help="Retrieved patches shown per query (at most 10).")


@dataclass
class PartRetrievalConfig(Experiment):
    NAME = "part_retrieval"
    PRESETS = {
        "partaware": Preset({"crops.crop": "official-code", "protocol.self_match": "included",
                             "data.normalize": "imagenet", "crops.coco_dist_scope": "code_exact",
                             "model.mae_token_shuffle": True, "model.precision": "fp32"}, about="the official code"),
        "paper-text": Preset({"crops.crop": "paper", "protocol.self_match": "included", "data.normalize": "imagenet",
                              "crops.coco_dist_scope": "image", "model.mae_token_shuffle": True,
                              "model.precision": "fp32"}, about="the paper's wording where it differs"),
        "clean": Preset({"crops.crop": "official-code", "protocol.self_match": "excluded", "data.normalize": "imagenet",
                         "crops.coco_dist_scope": "person", "model.mae_token_shuffle": False,
                         "model.precision": "bf16"}, about="the official code with its pitfalls fixed"),
    }

    data: PartRetrievalData = section(PartRetrievalData)
    crops: PartCropOptions = section(PartCropOptions)
    protocol: RetrievalOptions = section(RetrievalOptions)
    audit: AuditOptions = section(AuditOptions)

    def validate(self) -> None:
        layout = "CUB_200_2011/ (CUB)" if self.data.dataset == "cub" else "annotations/ and train2017/ (COCO)"
        self.data.resolve_root(self.data.dataset, layout)
        features = self.protocol.features or []
        if self.crops.crop == "dense" and any(f != "dense_patch" for f in features):
            raise ConfigError(f"--crop dense has one feature, dense_patch (the patch-token map at the keypoint), "
                              f"not {[f for f in features if f != 'dense_patch']}")
        if self.crops.crop != "dense" and "dense_patch" in features:
            raise ConfigError("--feature dense_patch is the dense protocol's feature; give it with --crop dense")
        splits = ("all", "train", "test") if self.data.dataset == "cub" else ("all", "train", "test", "train2017",
                                                                               "val2017")
        if self.data.split is not None and self.data.split not in splits:
            raise ConfigError(f"--split {self.data.split}: {self.data.dataset} part databases are "
                              f"{', '.join(splits)} (default: all, the retrieval database)")
        if not 1 <= self.audit.grid_k <= artifacts.TOPK:
            raise ConfigError(f"--grid-k {self.audit.grid_k}: expected 1..{artifacts.TOPK}")


def default_features(encoder, crop: str, block) -> list[str]:
    if crop == "dense":
        return ["dense_patch"]
    features = ["patch_mean", "cls"]
    if getattr(encoder, "has_projection", False) and block is None:
        features.append("projection")
    return features


def run(cfg: PartRetrievalConfig) -> list:
    """Part retrieval records of one encoder on one part database (written unless ``cfg.output.write`` is off)."""
    cfg = experiment.prepare(cfg)
    this = experiment.Run(cfg, "part_retrieval")
    data, crops, protocol = cfg.data, cfg.crops, cfg.protocol
    encoder = experiment.load_encoder(cfg)
    mean, std = normalization(data.normalize, encoder)
    view = part_crops(data.dataset, data.data_root, crops, crop_transform(encoder, mean, std), data.split)
    view = experiment.checked(cfg, parts=view)["parts"]
    db = view.db
    print(f"{data.dataset}: {len(db)} part patches ({', '.join(f'{k}: {v}' for k, v in db.counts().items())})")
    if cfg.audit.boxes:
        print(f"crop boxes written to {db.write_boxes(cfg.audit.boxes)}")

    features = list(protocol.features or default_features(encoder, crops.crop, protocol.block))
    if crops.crop == "dense":
        vectors = {"dense_patch": extract_dense(encoder, view, protocol.block, cfg.run)}
    else:
        vectors = extract(encoder, view, features, protocol.block, cfg.run,
                          description=f"{data.dataset} part features")

    base = {"preset": cfg.preset, **recorded_values(cfg, ("data",)), **view.describe(),
            **encoder.forward_protocol(), "input_size": encoder.crop_size, "normalize_mean": list(mean),
            "normalize_std": list(std), "similarity": "cosine", **left_out_protocol(view)}
    if data.data_source == "synthetic":
        base["synthetic"] = True
    notes = {**view.notes(), "ap": "sklearn average_precision_score over the full ranking (ties grouped); "
                                   "AP = query mean, mAP = class mean",
             "feature_source": "final norm" if protocol.block is None else
             f"block {protocol.block} output, before the final norm", **left_out_notes(view)}
    data_sha256 = data_digest(view.identity())
    this.artifacts["items.csv"] = artifacts.items_csv(db)
    neighbours = {}
    for feature in features:
        for mode in protocol.modes():
            scores = retrieval_metrics(vectors[feature], view.labels, include_self=(mode == "included"), ks=KS,
                                       num_classes=len(view.class_names), device=metric_device(encoder))
            sims, ids = topk_neighbours(vectors[feature], None, min(artifacts.TOPK, len(db) - 1),
                                        exclude_self=(mode == "excluded"))
            neighbours[feature, mode] = (sims, ids)
            metrics = retrieval_record_metrics(scores, KS, view.class_names)
            record_notes = ["part-retrieval on generated data: not comparable with the paper"] \
                if data.data_source == "synthetic" else []
            if scores["num_queries_without_positives"]:
                record_notes.append(f"{scores['num_queries_without_positives']} queries have no positive (a class "
                                    f"with one patch, self excluded): left out of AP, mAP and P@k")
            queries = f"queries.{feature}.{mode}.csv"
            this.artifacts[queries] = artifacts.queries_csv(scores, view.labels, view.class_names, sims, ids, KS)
            this.add(make_record(
                probe="part_retrieval", dataset=data.dataset, split=db.split, encoder_info=encoder.info(),
                feature=feature, block=protocol.block, protocol={**base, "include_self": mode == "included"},
                metrics=metrics, seed=cfg.seed, wall_time_s=this.elapsed(), device=str(encoder.device),
                notes=record_notes, protocol_notes=notes, data_sha256=data_sha256,
                model=experiment.model_label(cfg, encoder), artifacts={"items": "items.csv", "queries": queries}))
    records = this.finish(headline=lambda r: ["AP", "mAP", "P@1"])
    if cfg.audit.grid and crops.crop != "dense":
        from probes.grid import choose_queries, part_grid

        feature, mode = features[0], protocol.modes()[-1]
        sims, ids = neighbours[feature, mode]
        path = part_grid(db.crop, view.labels, view.class_names,
                         choose_queries(view.labels, cfg.audit.grid_queries, cfg.seed), ids, sims, cfg.audit.grid,
                         k=cfg.audit.grid_k, title=f"{records[0].model} / {data.dataset} / {feature} / self {mode}",
                         formats=("png", "pdf", "svg"))
        print(f"retrieval grid written to {path}")
    return records


def metric_device(encoder):
    """Similarities on the encoder's GPU when it has one (features are on the CPU otherwise)."""
    return encoder.device if getattr(encoder, "device", None) is not None and encoder.device.type == "cuda" else None


main = experiment.entry_point(PartRetrievalConfig, run, __doc__)

if __name__ == "__main__":
    main()
