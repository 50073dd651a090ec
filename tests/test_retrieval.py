"""Part and object retrieval end to end: planted data, shifted crops, records, presets, a golden DINO file."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from conftest import configs, golden_model_args, run_cli
from probes import object_retrieval, part_retrieval
from probes.data.synth import synth
from probes.metrics import retrieval_metrics
from probes.options import ConfigError
from probes.parts import build_part_database
from probes.results import RunRecord, iter_record_paths
from probes.views.objects import object_crop
from probes.views.parts import PartCropDataset
from probes.views.transforms import SquareResize


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


SYNTH = ["--data-source", "synthetic", "--quiet"]


# --- planted parts: the crop geometry end to end ----------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("dataset", ["cub", "coco"])
def test_planted_parts_are_retrieved_and_shifted_crops_are_not(dataset, cub_root, coco_root, tmp_path):
    root = cub_root if dataset == "cub" else coco_root
    common = ["--model", "colorstats", "--dataset", dataset, "--data-root", root, "--preset", "partaware",
              "--self-match", "both", "--results", tmp_path, *SYNTH]
    centred = by_feature(run_cli(part_retrieval, *common))
    # The same crops moved by half their side in a random direction each: the disk sits at the crop's edge.
    shifted = by_feature(run_cli(part_retrieval, *common, "--crop-shift", "0.5", "--crop-shift-seed", "1"))
    for include_self in (True, False):
        good, bad = metric(centred[("cls", include_self)], "AP"), metric(shifted[("cls", include_self)], "AP")
        assert good >= 95.0, f"{dataset}: planted parts give AP {good:.2f} < 95 with centred crops"
        assert bad <= good - 25.0, f"{dataset}: shifted crops give AP {bad:.2f}, not clearly below {good:.2f}"
    # patch_mean averages all patch tokens (position lost) but still finds the parts far above chance.
    assert metric(centred[("patch_mean", True)], "AP") > 75.0
    assert len(list(iter_record_paths(tmp_path))) == 8


@pytest.mark.slow
def test_records_carry_the_protocol(cub_root, tmp_path):
    records = run_cli(part_retrieval, "--model", "colorstats", "--data-root", cub_root, "--preset", "clean",
                      "--results", tmp_path / "results", "--boxes", tmp_path / "audit" / "boxes.json", *SYNTH)
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
    assert "crop_side" not in protocol and record.protocol_notes["crop_side"].startswith("2*round(d/4)")


@pytest.mark.slow
def test_paper_text_preset_is_recorded(coco_root):
    records = run_cli(part_retrieval, "--model", "colorstats", "--dataset", "coco", "--data-root", coco_root,
                      "--preset", "paper-text", "--feature", "cls", "--no-write", *SYNTH)
    protocol = records[0].protocol
    assert protocol["crop"] == "paper" and protocol["coco_dist_scope"] == "image"
    assert protocol["dist_filter"] == "none" and protocol["include_self"] is True
    assert records[0].protocol_notes["crop_side"].startswith("round(d)")


def test_presets_and_explicit_overrides(cub_root):
    def resolved(*args):
        cfg, = configs(part_retrieval, "--data-root", cub_root, *args)
        return {"crop": cfg.crops.crop, "self_match": cfg.protocol.self_match, "normalize": cfg.data.normalize,
                "coco_dist_scope": cfg.crops.coco_dist_scope, "mae_token_shuffle": cfg.model.mae_token_shuffle,
                "precision": cfg.model.precision}
    assert resolved() == {"crop": "official-code", "self_match": "included", "normalize": "imagenet",
                          "coco_dist_scope": "code_exact", "mae_token_shuffle": True, "precision": "fp32"}
    clean = resolved("--preset", "clean")
    assert clean["self_match"] == "excluded" and clean["coco_dist_scope"] == "person"
    assert clean["mae_token_shuffle"] is False and clean["precision"] == "bf16"    # bf16 on a GPU; a CPU runs fp32
    assert resolved("--preset", "paper-text", "--coco-dist-scope", "person", "--self-match", "excluded") == {
        "crop": "paper", "self_match": "excluded", "normalize": "imagenet", "coco_dist_scope": "person",
        "mae_token_shuffle": True, "precision": "fp32"}
    assert resolved("--mae-token-shuffle", "off")["mae_token_shuffle"] is False
    with pytest.raises(SystemExit):
        configs(part_retrieval, "--data-root", cub_root, "--precision", "fp16")
    with pytest.raises(SystemExit):
        configs(part_retrieval, "--data-root", cub_root, "--crop", "d/4")
    with pytest.raises(ConfigError, match="--preset: expected one of"):
        configs(part_retrieval, "--data-root", cub_root, "--preset", "official")


@pytest.mark.slow
def test_dense_protocol_runs_under_its_own_name(cub_root):
    records = run_cli(part_retrieval, "--model", "colorstats", "--data-root", cub_root, "--crop", "dense",
                      "--no-write", *SYNTH)
    assert [r.feature for r in records] == ["dense_patch"]
    assert records[0].protocol["crop"] == "dense" and "grid_sample" in records[0].protocol_notes["dense"]
    assert metric(records[0], "AP") > 90.0       # the token under each planted disk carries the disk's colour
    with pytest.raises(ConfigError, match="dense has one feature"):
        configs(part_retrieval, "--data-root", cub_root, "--crop", "dense", "--feature", "cls")


def test_every_cli_option_has_a_help_line(capsys):
    from probes.experiment import Experiment
    from probes.options import build_parser

    for cls in (part_retrieval.PartRetrievalConfig, object_retrieval.ObjectRetrievalConfig):
        parser = build_parser(cls)
        for action in parser._actions:
            if action.dest != "help":
                assert action.help and len(action.help) > 15, f"{action.option_strings} has no help"
    with pytest.raises(SystemExit) as exit_info:
        part_retrieval.main(["--help"])
    assert exit_info.value.code == 0
    assert "--self-match {included,excluded,both}" in capsys.readouterr().out


def test_missing_data_root_and_an_option_given_twice_are_named(tmp_path, capsys):
    with pytest.raises(ConfigError, match="does not exist; pass the folder holding CUB_200_2011"):
        configs(part_retrieval, "--data-root", tmp_path / "nowhere")
    with pytest.raises(ConfigError, match="does not exist; pass the folder holding cifar-10-batches-py"):
        configs(object_retrieval, "--data-root", tmp_path / "nowhere")
    with pytest.raises(SystemExit):
        configs(part_retrieval, "--crop", "paper", "--crop", "official-code")
    assert "--crop given twice" in capsys.readouterr().err


# --- a golden DINO full checkpoint (tiny ViT, 64 px) through run() --------------------------------------------
@pytest.mark.slow
def test_golden_dino_checkpoint_through_run(shared, cub_root, tmp_path):
    from probes.encoders import load_encoder

    golden = shared / "golden" / "dino_vit_full"
    args = golden_model_args(golden)
    records = run_cli(part_retrieval, *args, "--data-root", cub_root, "--results", tmp_path, "--self-match", "both",
                      *SYNTH)
    encoder = load_encoder(golden / "checkpoint.pth", format="dino_full", device="cpu",
                           arch={"model": args[5], "kwargs": json.loads(args[7])})
    assert encoder.crop_size == 64
    features = {r.feature for r in records}
    assert features == {"patch_mean", "cls", "projection"}                   # DINO's head is evaluated too
    assert all(r.protocol["input_size"] == 64 and r.checkpoint_sha256 == encoder.info()["checkpoint_sha256"]
               for r in records)
    # The AP in the record equals an independent pipeline: crops -> PIL bicubic 64 -> encoder -> metrics.
    db = build_part_database("cub", cub_root)
    dataset = PartCropDataset(db, SquareResize(64))
    import torch
    images = torch.stack([dataset[i][0] for i in range(len(dataset))])
    direct = encoder.extract(images, ["patch_mean"])["patch_mean"]
    expected = retrieval_metrics(direct, db.labels(), include_self=True)["AP"] * 100
    record = next(r for r in records if r.feature == "patch_mean" and r.protocol["include_self"])
    assert metric(record, "AP") == pytest.approx(expected, abs=1e-4)


@pytest.mark.slow
def test_mae_token_shuffle_follows_the_preset_and_is_recorded(shared, cub_root, tmp_path):
    """partaware reproduces the official MAE forward (tokens shuffled before the position embedding); clean
    does not; both say so in the record, and the two never share cached features."""
    common = [*golden_model_args(shared / "golden" / "mae_encoder"), "--data-root", cub_root, "--feature",
              "patch_mean", "--self-match", "included", *SYNTH]
    runs = {preset: run_cli(part_retrieval, *common, "--preset", preset, "--results", tmp_path)[0]
            for preset in ("partaware", "clean")}
    assert runs["partaware"].protocol["mae_token_shuffle"] is True
    assert runs["clean"].protocol["mae_token_shuffle"] is False
    assert metric(runs["partaware"], "AP") != metric(runs["clean"], "AP")
    again = run_cli(part_retrieval, *common, "--preset", "clean", "--mae-token-shuffle", "on", "--no-write")[0]
    assert metric(again, "AP") == metric(runs["partaware"], "AP")           # same seed, same permutations
    baseline = run_cli(part_retrieval, "--model", "colorstats", "--data-root", cub_root, "--feature", "cls",
                       "--no-write", *SYNTH)[0]
    assert "mae_token_shuffle" not in baseline.protocol                     # the option exists for MAE only


@pytest.mark.slow
def test_teacher_and_student_of_one_file_are_two_configurations(shared, cub_root, tmp_path):
    """docs/protocols.md#dino-student-or-teacher: the official retrieval code loaded DINO's student, its README
    says teacher."""
    common = [*golden_model_args(shared / "golden" / "dino_vit_full"), "--data-root", cub_root, "--feature",
              "patch_mean", "--self-match", "included", "--results", tmp_path, *SYNTH]
    runs = {branch: run_cli(part_retrieval, *common, "--branch", branch)[0] for branch in ("teacher", "student")}
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
    bare = np.asarray(object_crop(image, box, "box"))
    assert bare.shape == (10, 40, 3) and (bare == 200).all()
    square = np.asarray(object_crop(image, box, "square"))
    assert square.shape == (40, 40, 3)
    assert (square[15:25] == 200).all() and (square[:15] == 0).all() and (square[25:] == 0).all()
    context = np.asarray(object_crop(image, box, "context"))
    assert context.shape == (40, 40, 3)                         # (5, -5, 45, 35): 5 rows above the image are black
    assert (context[:5] == 0).all() and (context[15:25] == 200).all()


@pytest.mark.slow
def test_object_retrieval_cifar_and_coco(coco_root, tmp_path):
    cifar_root = synth("cifar10", tmp_path / "cifar", seed=0)
    records = run_cli(object_retrieval, "--model", "colorstats", "--data-root", cifar_root, "--results",
                      tmp_path / "results", *SYNTH)
    retrieval = [r for r in records if r.probe == "object_retrieval"]
    knn = [r for r in records if r.probe == "knn"]
    assert {r.feature for r in retrieval} == {"patch_mean", "cls"} and len(knn) == 2
    assert all(r.protocol["include_self"] is None for r in retrieval)    # queries (test) and gallery (train) differ
    assert all(any("protocol not published" in note for note in r.notes) for r in records)
    assert min(metric(r, "AP") for r in retrieval) > 80.0         # class colours make the planted task easy
    assert knn[0].task == "cifar10_knn" and metric(knn[0], "top1_k10") > 80.0
    assert metric(knn[0], "top1") == metric(knn[0], "top1_k20") and knn[0].protocol["knn_k"] == 20
    coco = run_cli(object_retrieval, "--model", "colorstats", "--dataset", "coco", "--data-root", coco_root,
                   "--feature", "cls", "--no-write", *SYNTH)
    modes = sorted(str(r.protocol.get("include_self")) for r in coco if r.probe == "object_retrieval")
    assert modes == ["False", "True"]
    assert coco[0].protocol["object_crop"] == "square" and coco[0].task == "coco_object_retrieval"


@pytest.mark.slow
@pytest.mark.parametrize("dataset, value", [("cub", 48.9), ("coco", 51.8)])
def test_partaware_protocol_meets_the_published_comparison_rules(dataset, value, cub_root, coco_root):
    """The protocol this script records for the official pipeline is what probes.published calls the paper's."""
    from probes.published import lookup

    root = cub_root if dataset == "cub" else coco_root

    def protocol(preset):
        record = run_cli(part_retrieval, "--model", "colorstats", "--dataset", dataset, "--data-root", root,
                         "--preset", preset, "--feature", "patch_mean", "--no-write", "--quiet")[0]
        # The data is generated (so recorded, and never compared): the rest of the protocol is what is tested.
        assert record.protocol["data_source"] == "synthetic" and not record.published
        kept = {k: v for k, v in record.protocol.items() if k not in ("precision", "data_source", "synthetic")}
        return record, kept | {"precision": "fp32"}
    record, official = protocol("partaware")
    paper = lookup(task=record.task, model="dino", feature="patch_mean", protocol=official, split=record.split)
    assert paper.values == {"AP": value}
    record, clean = protocol("clean")
    clean_match = lookup(task=record.task, model="dino", feature="patch_mean", protocol=clean, split=record.split)
    assert clean_match.values == {} and any("include_self" in reason for reason in clean_match.reasons)
