"""Object-level retrieval and kNN classification on CIFAR-10 and COCO object crops.

    python probes/object_retrieval.py --model dino --dataset cifar10 --data-root /data/cifar
    python probes/object_retrieval.py --model dino --dataset coco --data-root /data/coco --split val2017

The TMLR version of the paper evaluates object-level retrieval on CIFAR10 and COCO, but its protocol and
numbers were not available (docs/protocols.md#object-retrieval): every record carries the note
"protocol not published", and every choice is an option recorded in the record.

- CIFAR-10: queries = the 10,000 test images, gallery = the 50,000 training images (disjoint, so no
  self-match); each 32 x 32 image resized to the encoder's input size (``--image-transform resize``, PIL
  bicubic) or through the encoder's own eval transform (``eval``).
- COCO: one item per non-crowd instance of a split (default val2017) whose box is at least
  ``--min-box-size`` px on both sides, cut by ``--object-crop`` (square, box or context; see
  probes/views/objects.py). Queries are the gallery; the self-match is included, excluded or both.

Relevant = same class. Metrics as part retrieval: cosine similarity, sklearn AP over the full ranking, ``AP``
(query mean), ``mAP`` (class mean), precision@k. kNN classification follows DINO (probes.options.KnnOptions):
CIFAR-10 train -> test; COCO leave-one-out over the split. kNN results are separate records (probe ``knn``).
"""
if __name__ == "__main__" and not __package__:  # run as a file from a checkout
    import pathlib, sys
    sys.path[0] = str(pathlib.Path(__file__).resolve().parents[1])

from dataclasses import dataclass
from typing import Literal

from probes import artifacts, experiment
from probes.experiment import Experiment
from probes.features import extract
from probes.metrics import knn_metrics, knn_protocol, retrieval_metrics, retrieval_record_metrics, topk_neighbours
from probes.options import ConfigError, ImageDataOptions, KnnOptions, Preset, RetrievalOptions, option, section
from probes.results import data_digest, make_record
from probes.views.checks import left_out_notes
from probes.views.classification import Task, build_task
from probes.views.objects import coco_objects
from probes.views.transforms import normalization

KS = (1, 5, 10)
NOT_PUBLISHED = "protocol not published (docs/protocols.md#object-retrieval): object-level retrieval of the TMLR version"


@dataclass
class ObjectData(ImageDataOptions):
    dataset: Literal["cifar10", "coco"] = option("cifar10", help="CIFAR-10 (test vs train) or COCO object crops.",
                                                 recorded=False)
    split: str = option("val2017", help="COCO split whose objects are the queries (and the gallery).",
                        recorded=False)
    object_crop: Literal["square", "box", "context"] = option(
        "square", help="COCO crop: the box on a black square, the bare box, or a square with image context.",
        recorded=False)
    min_box_size: float = option(32.0, help="COCO: skip boxes narrower or shorter than this many pixels.",
                                 recorded=False)
    max_per_class: int | None = option(None, help="Keep only the first N items of each class (quick runs; "
                                                  "recorded).", recorded=False)


@dataclass
class ObjectRetrievalConfig(Experiment):
    NAME = "object_retrieval"
    PRESETS = {"default": Preset({"data.normalize": "imagenet", "data.image_transform": "resize",
                                  "protocol.self_match": "both",
                                  "model.precision": "bf16", "model.mae_token_shuffle": False},
                                 about="ImageNet statistics, whole images resized, bf16 on a GPU")}

    preset: str = option("default", help="Protocol preset.", cli=False)
    data: ObjectData = section(ObjectData)
    protocol: RetrievalOptions = section(RetrievalOptions)
    knn: KnnOptions = section(KnnOptions)

    def validate(self) -> None:
        layout = "cifar-10-batches-py/ (CIFAR-10)" if self.data.dataset == "cifar10" else \
            "annotations/ and the split folders (COCO)"
        root = self.data.resolve_root(self.data.dataset, layout)
        if self.data.dataset == "coco" and not (root / "annotations" / f"instances_{self.data.split}.json").is_file():
            found = sorted(p.name[len("instances_"):-len(".json")] for p in (root / "annotations").glob("instances_*.json"))
            raise ConfigError(f"--split {self.data.split}: no {root / 'annotations'}/instances_{self.data.split}.json; "
                              f"the splits there: {', '.join(found) or 'none'}")
        if "dense_patch" in (self.protocol.features or []):
            raise ConfigError("--feature dense_patch is part retrieval's dense protocol (--crop dense); object "
                              "retrieval offers patch_mean, cls and projection")
        if self.data.min_box_size < 0:
            raise ConfigError(f"--min-box-size {self.data.min_box_size}: expected a number of pixels >= 0")
        if self.data.max_per_class is not None and self.data.max_per_class < 1:
            raise ConfigError(f"--max-per-class {self.data.max_per_class}: expected an integer >= 1")


def views(cfg: ObjectRetrievalConfig, encoder) -> Task:
    """Gallery (``train``) and queries (``eval``); for COCO both are the one split's crops."""
    data = cfg.data
    if data.dataset == "cifar10":
        return experiment.checked_task(cfg, build_task("cifar10", data.data_root, encoder, data.normalize,
                                                       image_transform=data.image_transform,
                                                       max_per_class=data.max_per_class))
    from probes.views.parts import crop_transform

    mean, std = normalization(data.normalize, encoder)
    crops = coco_objects(data.data_root, data.split, data.object_crop, data.min_box_size,
                         crop_transform(encoder, mean, std), data.max_per_class)
    return experiment.checked_task(cfg, Task("coco", crops, crops, crops.class_names))


def run(cfg: ObjectRetrievalConfig) -> list:
    """Object retrieval (and kNN) records of one encoder on CIFAR-10 or COCO objects."""
    cfg = experiment.prepare(cfg)
    this = experiment.Run(cfg, "object_retrieval")
    encoder = experiment.load_encoder(cfg)
    task = views(cfg, encoder)
    gallery, query = task.train, task.eval
    same = gallery is query
    if len(query) == 0 or len(gallery) == 0:
        raise ConfigError(f"{cfg.data.dataset} at {cfg.data.data_root}: no items (check --split, --min-box-size)")
    print(f"{cfg.data.dataset}: {len(query)} queries, {len(gallery)} gallery items, {task.num_classes} classes")
    features = list(cfg.protocol.features or ["patch_mean", "cls"])
    block = cfg.protocol.block
    query_x = extract(encoder, query, features, block, cfg.run, description=f"{cfg.data.dataset} query features")
    gallery_x = query_x if same else extract(encoder, gallery, features, block, cfg.run,
                                             description=f"{cfg.data.dataset} gallery features")

    mean, std = normalization(cfg.data.normalize, encoder)
    base = experiment.task_protocol(cfg, encoder, task)
    notes = [NOT_PUBLISHED] + (["generated data: not comparable with any published number"]
                               if cfg.data.data_source == "synthetic" else [])
    protocol_notes = {"transform": query.transform.describe(),
                      "feature_source": "final norm" if block is None else f"block {block} output, before the final norm",
                      **left_out_notes(gallery, query)}
    common = dict(dataset=cfg.data.dataset, split=query.split, encoder_info=encoder.info(), block=block,
                  device=str(encoder.device), data_sha256=data_digest(gallery.identity(), query.identity()),
                  model=experiment.model_label(cfg, encoder))
    device = encoder.device if encoder.device.type == "cuda" else None
    for feature in features:
        for mode in cfg.protocol.modes(same):
            include_self = mode != "excluded"
            scores = retrieval_metrics(query_x[feature], query.labels, None if same else gallery_x[feature],
                                       None if same else gallery.labels, include_self=include_self, ks=KS,
                                       num_classes=task.num_classes, device=device)
            sims, ids = topk_neighbours(query_x[feature], None if same else gallery_x[feature],
                                        min(artifacts.TOPK, len(gallery) - 1), exclude_self=(mode == "excluded"))
            metrics = retrieval_record_metrics(scores, KS)
            extra = [f"{scores['num_queries_without_positives']} queries have no positive: left out of the means"] \
                if scores["num_queries_without_positives"] else []
            queries = f"queries.{feature}.{mode}.csv"
            this.artifacts[queries] = artifacts.queries_csv(scores, query.labels, task.class_names, sims, ids, KS,
                                                            gallery.labels)
            this.add(make_record(probe="object_retrieval", feature=feature, metrics=metrics, seed=cfg.seed,
                                 protocol={**base, "normalize_mean": list(mean), "normalize_std": list(std),
                                           "similarity": "cosine", "include_self": include_self if same else None},
                                 wall_time_s=this.elapsed(), notes=notes + extra, protocol_notes=protocol_notes,
                                 artifacts={"queries": queries}, **common))
        if cfg.knn.knn:
            metrics, extra = knn_metrics(gallery_x[feature], gallery.labels, None if same else query_x[feature],
                                         None if same else query.labels, cfg.knn, task.num_classes, device)
            this.add(make_record(probe="knn", feature=feature, metrics=metrics, seed=None,
                                 protocol={**base, **knn_protocol(cfg.knn)},
                                 wall_time_s=this.elapsed(), notes=notes + extra, protocol_notes=protocol_notes,
                                 **common))
    return this.finish(headline=lambda r: ["AP", "mAP", "top1", "top5"])


main = experiment.entry_point(ObjectRetrievalConfig, run, __doc__)

if __name__ == "__main__":
    main()
