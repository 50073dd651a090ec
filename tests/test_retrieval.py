"""Part and object retrieval end to end: planted data, shifted crops, records, presets, a golden DINO file."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from probes import object_retrieval, part_retrieval
from probes.data.synth import synth
from probes.metrics import retrieval_metrics
from probes.parts import CropTransform, PartCropDataset, build_part_database
from probes.results import RunRecord, iter_record_paths


def metric(record, name):
    return record.metrics[f"{record.task}/{name}"]


@pytest.fixture(scope="module")
def cub_root(tmp_path_factory):
    return synth("cub", tmp_path_factory.mktemp("synth_cub"), seed=0)


@pytest.fixture(scope="module")
def coco_root(tmp_path_factory):
    return synth("coco", tmp_path_factory.mktemp("synth_coco"), seed=0)


def by_feature(records) -> dict:
    return {(r.feature, r.protocol["include_self"]): r for r in records}


# --- planted parts: the crop geometry end to end ----------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("dataset", ["cub", "coco"])
def test_planted_parts_are_retrieved_and_shifted_crops_are_not(dataset, cub_root, coco_root, tmp_path):
    root = cub_root if dataset == "cub" else coco_root
    common = dict(preset="partaware", self_match="both", results=tmp_path, data_source="synthetic", progress=False)
    centred = by_feature(part_retrieval.run("colorstats", dataset, root, **common))
    # The same crops moved by half their side in a random direction each: the disk sits at the crop's edge.
    shifted = by_feature(part_retrieval.run("colorstats", dataset, root, crop_shift=0.5, crop_shift_seed=1, **common))
    for include_self in (True, False):
        good, bad = metric(centred[("cls", include_self)], "AP"), metric(shifted[("cls", include_self)], "AP")
        assert good >= 95.0, f"{dataset}: planted parts give AP {good:.2f} < 95 with centred crops"
        assert bad <= good - 25.0, f"{dataset}: shifted crops give AP {bad:.2f}, not clearly below {good:.2f}"
    # patch_mean averages all patch tokens (position lost) but still finds the parts far above chance.
    assert metric(centred[("patch_mean", True)], "AP") > 75.0
    assert len(list(iter_record_paths(tmp_path))) == 8


@pytest.mark.slow
def test_records_carry_the_protocol(cub_root, tmp_path):
    records = part_retrieval.run("colorstats", "cub", cub_root, preset="clean", results=tmp_path / "results",
                                 data_source="synthetic", progress=False, boxes=tmp_path / "audit" / "boxes.json")
    assert {r.feature for r in records} == {"patch_mean", "cls"}          # colorstats has no projection head
    record = records[0]
    protocol = record.protocol
    assert protocol["preset"] == "clean" and protocol["include_self"] is False
    assert protocol["crop"] == "official-code" and protocol["dist_filter"] == "official"
    assert protocol["normalize"] == "imagenet" and protocol["input_size"] == 224
    assert protocol["keypoint_ids"] == [11, 12, 9, 14] and protocol["synthetic"] is True
    db = build_part_database("cub", cub_root)
    assert protocol["part_counts"] == db.counts() and protocol["num_items"] == len(db)
    assert record.task == "cub_part_retrieval" and record.split == "all"
    assert set(record.metrics) >= {f"cub_part_retrieval/{m}" for m in ("AP", "mAP", "P@1", "P@5", "P@10")}
    assert "cub_part_retrieval/AP[right eye]" in record.metrics
    assert record.published == {}                                           # generated data never compares
    saved = {RunRecord.load(p).run_id: RunRecord.load(p) for p in iter_record_paths(tmp_path / "results")}
    assert saved[record.run_id].protocol == protocol and saved[record.run_id].metrics == record.metrics
    assert json.loads((tmp_path / "audit" / "boxes.json").read_text())["counts"] == db.counts()


@pytest.mark.slow
def test_paper_text_preset_is_recorded(coco_root):
    records = part_retrieval.run("colorstats", "coco", coco_root, preset="paper-text", features=["cls"],
                                 write=False, progress=False)
    protocol = records[0].protocol
    assert protocol["crop"] == "paper" and protocol["coco_dist_scope"] == "image"
    assert protocol["dist_filter"] == "none" and protocol["include_self"] is True
    assert protocol["crop_side"].startswith("round(d)")


def test_presets_and_explicit_overrides():
    assert part_retrieval.resolve_options("partaware") == {
        "crop": "official-code", "self_match": "included", "normalize": "imagenet", "coco_dist_scope": "code_exact",
        "mae_token_shuffle": True, "precision": "fp32"}
    assert part_retrieval.resolve_options("clean")["self_match"] == "excluded"
    assert part_retrieval.resolve_options("clean")["coco_dist_scope"] == "person"
    assert part_retrieval.resolve_options("clean")["mae_token_shuffle"] is False
    assert part_retrieval.resolve_options("clean")["precision"] == "bf16"      # on a GPU; a CPU runs float32
    options = part_retrieval.resolve_options("paper-text", coco_dist_scope="person", self_match="excluded", crop=None)
    assert options == {"crop": "paper", "self_match": "excluded", "normalize": "imagenet", "coco_dist_scope": "person",
                       "mae_token_shuffle": True, "precision": "fp32"}
    with pytest.raises(ValueError, match="precision must be"):
        part_retrieval.resolve_options("clean", precision="fp16")
    with pytest.raises(ValueError, match="crop must be one of"):
        part_retrieval.resolve_options("clean", crop="d/4")


@pytest.mark.slow
def test_dense_protocol_runs_under_its_own_name(cub_root):
    records = part_retrieval.run("colorstats", "cub", cub_root, crop="dense", write=False, progress=False)
    assert [r.feature for r in records] == ["dense_patch"]
    assert records[0].protocol["crop"] == "dense" and "grid_sample" in records[0].protocol["dense"]
    assert metric(records[0], "AP") > 90.0       # the token under each planted disk carries the disk's colour
    with pytest.raises(ValueError, match="dense protocol has one feature"):
        part_retrieval.run("colorstats", "cub", cub_root, crop="dense", features=["cls"], write=False,
                           progress=False)


def test_every_cli_option_has_a_help_line():
    for parser in (part_retrieval.build_parser(), object_retrieval.build_parser()):
        for action in parser._actions:
            if action.dest != "help":
                assert action.help and len(action.help) > 15, f"{action.option_strings} has no help"
    with pytest.raises(SystemExit) as exit_info:
        part_retrieval.main(["--help"])
    assert exit_info.value.code == 0


def test_missing_data_root_and_unknown_preset_are_named(tmp_path):
    with pytest.raises(ValueError, match="does not exist: pass --data-root"):
        part_retrieval.run("colorstats", "cub", tmp_path / "nowhere")
    with pytest.raises(ValueError, match="does not exist: pass --data-root"):
        object_retrieval.run("colorstats", "cifar10", tmp_path / "nowhere")
    with pytest.raises(ValueError, match="preset must be one of"):
        part_retrieval.resolve_options("official")


# --- a golden DINO full checkpoint (tiny ViT, 64 px) through run() --------------------------------------------
@pytest.mark.slow
def test_golden_dino_checkpoint_through_run(shared, cub_root, tmp_path):
    from probes.encoders import load_encoder
    from probes.zoo.registry import Transform

    golden = shared / "golden" / "dino_vit_full"
    target = json.loads((golden / "meta.json").read_text())["timm_target"]["this_golden"]
    size = json.loads((golden / "meta.json").read_text())["architecture"]["img_size"]
    encoder = load_encoder(golden / "checkpoint.pth", format="dino_full", device="cpu",
                           arch={"model": target["create_model"], "kwargs": target["kwargs"]},
                           transform=Transform((0.485, 0.456, 0.406), (0.229, 0.224, 0.225), "bicubic", size, size))
    assert encoder.crop_size == size == 64
    records = part_retrieval.run(encoder=encoder, dataset="cub", data_root=cub_root, results=tmp_path,
                                 data_source="synthetic", progress=False, self_match="both")
    features = {r.feature for r in records}
    assert features == {"patch_mean", "cls", "projection"}                   # DINO's head is evaluated too
    assert all(r.protocol["input_size"] == 64 and r.checkpoint_sha256 == encoder.info()["checkpoint_sha256"]
               for r in records)
    # The AP in the record equals an independent pipeline: crops -> PIL bicubic 64 -> encoder -> metrics.
    db = build_part_database("cub", cub_root)
    dataset = PartCropDataset(db, CropTransform(64))
    images = torch.stack([dataset[i][0] for i in range(len(dataset))])
    direct = encoder.extract(images, ["patch_mean"])["patch_mean"]
    expected = retrieval_metrics(direct, db.labels(), include_self=True)["AP"] * 100
    record = next(r for r in records if r.feature == "patch_mean" and r.protocol["include_self"])
    assert metric(record, "AP") == pytest.approx(expected, abs=1e-4)


@pytest.mark.slow
def test_mae_token_shuffle_follows_the_preset_and_is_recorded(shared, cub_root, tmp_path):
    """partaware reproduces the official MAE forward (tokens shuffled before the position embedding, §8.4);
    clean does not; both say so in the record, and the two never share cached features."""
    from probes.encoders import load_encoder

    golden = shared / "golden" / "mae_encoder"
    target = json.loads((golden / "meta.json").read_text())["timm_target"]["this_golden"]
    encoder = load_encoder(golden / "checkpoint.pth", format="mae", device="cpu",
                           arch={"model": target["create_model"], "kwargs": target["kwargs"]})
    runs = {preset: part_retrieval.run(encoder=encoder, dataset="cub", data_root=cub_root, preset=preset,
                                       features=["patch_mean"], self_match="included", results=tmp_path,
                                       data_source="synthetic", progress=False)[0]
            for preset in ("partaware", "clean")}
    assert runs["partaware"].protocol["mae_token_shuffle"] is True
    assert runs["clean"].protocol["mae_token_shuffle"] is False
    assert metric(runs["partaware"], "AP") != metric(runs["clean"], "AP")
    assert encoder.token_shuffle is False                                   # the encoder is given back as it was
    again = part_retrieval.run(encoder=encoder, dataset="cub", data_root=cub_root, preset="clean",
                               mae_token_shuffle=True, features=["patch_mean"], self_match="included",
                               write=False, progress=False)[0]
    assert metric(again, "AP") == metric(runs["partaware"], "AP")           # same seed, same permutations
    baseline = part_retrieval.run("colorstats", "cub", cub_root, features=["cls"], self_match="included",
                                  write=False, progress=False)[0]
    assert "mae_token_shuffle" not in baseline.protocol                     # the option exists for MAE only


@pytest.mark.slow
def test_teacher_and_student_of_one_file_are_two_configurations(shared, cub_root, tmp_path):
    """protocols.md §8.5: the official retrieval code loaded DINO's student, its README says teacher."""
    golden = shared / "golden" / "dino_vit_full"
    target = json.loads((golden / "meta.json").read_text())["timm_target"]["this_golden"]
    runs = {branch: part_retrieval.run(str(golden / "checkpoint.pth"), "cub", cub_root, format="dino_full",
                                       arch={"model": target["create_model"], "kwargs": target["kwargs"]},
                                       branch=branch, features=["patch_mean"], self_match="included",
                                       results=tmp_path, data_source="synthetic", progress=False)[0]
            for branch in ("teacher", "student")}
    assert {b: r.protocol["weights_branch"] for b, r in runs.items()} == {"teacher": "teacher", "student": "student"}
    assert runs["teacher"].config_hash != runs["student"].config_hash   # never resolved as reruns of each other
    assert runs["teacher"].checkpoint_sha256 == runs["student"].checkpoint_sha256
    assert metric(runs["teacher"], "AP") != metric(runs["student"], "AP")


# --- object retrieval --------------------------------------------------------------------------------------------
def test_object_crop_rules_hand_computed():
    pixels = np.zeros((40, 60, 3), dtype=np.uint8)
    pixels[10:20, 5:45] = 200                                   # the object: x 5..44, y 10..19
    image = Image.fromarray(pixels)
    box = (5.2, 10.0, 39.5, 9.8)                                 # -> whole pixels (5, 10, 45, 20): 40 x 10
    bare = np.asarray(object_retrieval.object_crop(image, box, "box"))
    assert bare.shape == (10, 40, 3) and (bare == 200).all()
    square = np.asarray(object_retrieval.object_crop(image, box, "square"))
    assert square.shape == (40, 40, 3)
    assert (square[15:25] == 200).all() and (square[:15] == 0).all() and (square[25:] == 0).all()
    context = np.asarray(object_retrieval.object_crop(image, box, "context"))
    assert context.shape == (40, 40, 3)                         # (5, -5, 45, 35): 5 rows above the image are black
    assert (context[:5] == 0).all() and (context[15:25] == 200).all()


@pytest.mark.slow
def test_object_retrieval_cifar_and_coco(coco_root, tmp_path):
    cifar_root = synth("cifar10", tmp_path / "cifar", seed=0)
    records = object_retrieval.run("colorstats", "cifar10", cifar_root, results=tmp_path / "results",
                                   data_source="synthetic", progress=False)
    retrieval = [r for r in records if r.probe == "object_retrieval"]
    knn = [r for r in records if r.probe == "knn"]
    assert {r.feature for r in retrieval} == {"patch_mean", "cls"} and len(knn) == 2
    assert all(r.protocol["include_self"] is None for r in retrieval)    # queries (test) and gallery (train) differ
    assert all(any("protocol not published" in note for note in r.notes) for r in records)
    assert min(metric(r, "AP") for r in retrieval) > 80.0         # class colours make the planted task easy
    assert knn[0].task == "cifar10_knn" and metric(knn[0], "top1_k10") > 80.0
    assert metric(knn[0], "top1") == metric(knn[0], "top1_k20") and knn[0].protocol["k"] == 20
    coco = object_retrieval.run("colorstats", "coco", coco_root, features=["cls"], write=False,
                                data_source="synthetic", progress=False)
    modes = sorted(str(r.protocol.get("include_self")) for r in coco if r.probe == "object_retrieval")
    assert modes == ["False", "True"]
    assert coco[0].protocol["object_crop"] == "square" and coco[0].task == "coco_object_retrieval"


@pytest.mark.parametrize("dataset, value", [("cub", 48.9), ("coco", 51.8)])
def test_partaware_protocol_meets_the_published_comparison_rules(dataset, value, cub_root, coco_root):
    """The protocol this script records for the official pipeline is what probes.published calls the paper's."""
    from probes.published import lookup

    db = build_part_database(dataset, cub_root if dataset == "cub" else coco_root)
    def protocol(preset, mode):
        options = part_retrieval.resolve_options(preset)
        return part_retrieval._protocol(preset, options, db, dataset, mode, 224, (0.485, 0.456, 0.406),
                                        (0.229, 0.224, 0.225), "fp32", "official", None)
    task = f"{dataset}_part_retrieval"
    paper = lookup(task=task, model="dino", feature="patch_mean", protocol=protocol("partaware", "included"),
                   split=db.split)
    assert paper.values == {"AP": value}
    clean = lookup(task=task, model="dino", feature="patch_mean", protocol=protocol("clean", "excluded"),
                   split=db.split)
    assert clean.values == {} and any("include_self" in reason for reason in clean.reasons)
