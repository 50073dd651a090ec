"""The linear probe (+ kNN) end to end on generated data with planted parts, its shuffled-label control, the
image-classification tasks, the CLI, resumption, and a golden checkpoint through run()."""
from __future__ import annotations

import pytest
import torch

from conftest import configs, golden_model_args, history, run_cli
from probes import linear_probe
from probes.data.synth import synth
from probes.encoders import load_encoder
from probes.features import extract
from probes.heads import build_head
from probes.options import ConfigError
from probes.train import TensorSource, resolve_recipe, train_probe
from probes.views.classification import build_task
from probes.views.parts import PartCropOptions

pytestmark = pytest.mark.usefixtures("one_thread")     # the fixture is in conftest.py
SMALL = ["--model", "colorstats", "--input-size", "64", "--data-source", "synthetic", "--quiet"]


def by_probe(records):
    return {r.probe: r for r in records}


def test_planted_parts_are_classified_and_recorded(cub_root, tmp_path):
    records = by_probe(run_cli(linear_probe, *SMALL, "--data-root", cub_root, "--epochs", "30", "--train-batch-size",
                               "32", "--results", tmp_path))
    linear, knn = records["linear_probe"], records["knn"]
    assert linear.metrics["cub_linear_probe/top1_best"] >= 95.0 and linear.metrics["cub_linear_probe/top1_last"] >= 95.0
    assert knn.metrics["cub_knn/top1"] >= 90.0
    assert len(history(tmp_path, linear)) == 30
    assert (linear.task, knn.task, linear.split, linear.feature) == ("cub_linear_probe", "cub_knn", "test", "cls")
    assert {"cub_linear_probe/top1_last", "cub_linear_probe/best_epoch"} <= set(linear.metrics)
    p = linear.protocol
    assert (p["head"], p["preset"], p["recipe"], p["optimizer"], p["schedule"], p["epochs"], p["batch_size"]) == (
        "linear", "partaware", "partaware", "sgd", "cosine-epoch", 30, 32)
    assert p["lr"] == pytest.approx(0.1 * 32 / 256) and p["momentum"] == 0.9 and p["weight_decay"] == 0.0
    assert p["crop"] == "official-code" and p["normalize"] == "imagenet" and p["input_size"] == 64
    notes = linear.protocol_notes
    assert "best" in notes["model_selection"]
    assert notes["train_transform"].startswith("Resize(73, bicubic) + CenterCrop(64)")
    assert notes["eval_transform"].startswith("PIL bicubic resize to 64x64")
    crops = PartCropOptions(crop="official-code")
    full_size = build_task("cub", cub_root, load_encoder("colorstats"), "imagenet", crops)   # the paper's sizes
    assert full_size.train.transform.describe().startswith("Resize(256, bicubic) + CenterCrop(224)")
    assert full_size.eval.dataset[0][0].shape == (3, 224, 224) and full_size.train.dataset[0][0].shape == (3, 224, 224)
    assert (knn.protocol["knn_k"], knn.protocol["knn_temperature"]) == (20, 0.07)
    assert knn.metrics["cub_knn/top1"] == pytest.approx(knn.metrics["cub_knn/top1_k20"])


def test_coco_parts_train2017_to_val2017(tmp_path):
    root = synth("coco", tmp_path / "coco", seed=0)
    record, = run_cli(linear_probe, *SMALL, "--dataset", "coco", "--data-root", root, "--epochs", "20",
                      "--train-batch-size", "32", "--no-knn", "--results", tmp_path)
    assert record.metrics["coco_linear_probe/top1_best"] >= 95.0
    assert (record.task, record.split) == ("coco_linear_probe", "val2017")
    p = record.protocol
    assert (p["train_split"], p["eval_split"], p["coco_dist_scope"], p["keypoint_ids"]) == (
        "train2017", "val2017", "code_exact", [1, 11, 16])
    assert sum(p["eval_counts"].values()) == p["num_eval"] > 0


def test_shuffled_labels_stay_at_chance(cub_root):
    """Control: with the training labels permuted the held-out accuracy must fall to chance.

    All 15 CUB parts are used: with features that separate the true classes, a shuffled-label probe maps each
    true class to the most frequent shuffled label of that class, which is right for a class with probability
    about 1/C; over 15 classes the per-seed accuracy has a standard deviation of about sqrt(p(1-p)/15) = 6.4
    points, 2.9 over 5 seeds, so 8 points around 1/C is a 2.8-sigma bound. The last epoch is used: picking
    the best epoch on the evaluation split is optimistic (the record reports both for that reason).
    """
    encoder = load_encoder("colorstats", input_size=64)
    task = build_task("cub", cub_root, encoder, "imagenet", PartCropOptions(crop="official-code", keypoints="all"))
    train_x, eval_x = (extract(encoder, view, ["cls"])["cls"] for view in (task.train, task.eval))
    train_labels, eval_labels = torch.as_tensor(task.train.labels), torch.as_tensor(task.eval.labels)
    recipe = resolve_recipe("partaware", "linear", epochs=15, batch_size=32)
    C = task.num_classes
    assert C == 15

    def last_top1(labels, seed):
        torch.manual_seed(seed)
        result = train_probe(build_head("linear", train_x.shape[1], C), TensorSource(train_x, labels),
                             TensorSource(eval_x, eval_labels), recipe, num_classes=C, seed=seed, progress=False)
        return result.selection()["top1_last"]

    assert last_top1(train_labels, 0) >= 95.0
    shuffled = []
    for seed in range(5):
        permutation = torch.randperm(len(train_labels), generator=torch.Generator().manual_seed(100 + seed))
        shuffled.append(last_top1(train_labels[permutation], seed))
    mean = sum(shuffled) / len(shuffled)
    assert abs(mean - 100.0 / C) <= 8.0, shuffled
    assert max(shuffled) < 40.0, shuffled


@pytest.mark.parametrize("dataset", ["cifar10", "folder"])
def test_image_classification_tasks(dataset, tmp_path):
    if dataset == "cifar10":
        root = synth("cifar10", tmp_path / "cifar", seed=0, train_per_class=6, test_per_class=3)
    else:   # two colour classes, and a val/ that lacks the middle class (indices must not shift)
        from PIL import Image
        root = tmp_path / "folder"
        g = torch.Generator().manual_seed(0)
        for split, names in (("train", ("blue", "grey", "red")), ("val", ("blue", "red"))):
            for name in names:
                (root / split / name).mkdir(parents=True)
                colour = {"blue": (0, 0, 200), "grey": (128, 128, 128), "red": (200, 0, 0)}[name]
                for i in range(6):
                    noise = (torch.rand(40, 40, 3, generator=g) * 60).to(torch.uint8)
                    pixels = torch.tensor(colour).clamp(0, 195).to(torch.uint8) + noise
                    Image.fromarray(pixels.numpy()).save(root / split / name / f"{i}.png")
    records = by_probe(run_cli(linear_probe, *SMALL, "--dataset", dataset, "--data-root", root, "--epochs", "20",
                               "--train-batch-size", "16", "--base-lr", "2.0", "--results", tmp_path / "res"))
    record = records["linear_probe"]
    assert record.metrics[f"{dataset}_linear_probe/top1_last"] >= 90.0
    assert record.split == ("test" if dataset == "cifar10" else "val")
    assert record.protocol["normalize"] == "model" and record.protocol["image_transform"] == "eval"
    assert "CenterCrop(64)" in record.protocol_notes["eval_transform"]
    assert record.protocol["lr"] == pytest.approx(2.0 * 16 / 256)


def test_cli_interrupted_run_resumes_and_then_records(cub_root, tmp_path, capsys, monkeypatch):
    common = ["--model", "pixels", "--dataset", "cub", "--data-root", cub_root, "--epochs", "6",
              "--train-batch-size", "32", "--quiet", "--no-knn", "--data-source", "synthetic"]
    args = [*common, "--results", tmp_path]
    assert run_cli(linear_probe, *args, "--stop-after-epochs", "4") == []
    assert "rerun the same command to resume" in capsys.readouterr().out
    record, = run_cli(linear_probe, *args)
    assert "resumed after epoch 4 of 6" in capsys.readouterr().out
    assert [h["epoch"] for h in history(tmp_path, record)] == [1, 2, 3, 4, 5, 6]
    monkeypatch.setenv("PARTPROBE_HOME", str(tmp_path / "fresh_home"))     # no training state to resume from
    uninterrupted, = run_cli(linear_probe, *common, "--results", tmp_path / "other")
    assert "resumed" not in capsys.readouterr().out
    assert history(tmp_path, record) == history(tmp_path / "other", uninterrupted)
    assert record.metrics == uninterrupted.metrics


def test_bad_options_are_rejected(cub_root, tmp_path):
    with pytest.raises(SystemExit):
        configs(linear_probe, "--data-root", cub_root, "--head", "partaware")      # an attentive head
    with pytest.raises(SystemExit):
        configs(linear_probe, "--data-root", cub_root, "--feature", "tokens")
    with pytest.raises(ConfigError, match="does not exist"):
        configs(linear_probe, "--data-root", tmp_path / "missing")
    with pytest.raises(SystemExit):
        configs(linear_probe, "--dataset", "svhn", "--data-root", tmp_path)
    cfg, = configs(linear_probe, "--model", "colorstats", "--data-root", cub_root, "--lr", "1", "--base-lr", "1")
    with pytest.raises(ConfigError, match="not both"):
        cfg.training.resolve("linear")
    cfg, = configs(linear_probe, "--data-root", cub_root, "--arch", "vit_small_patch16_224",
                   "--arch-kwargs", '{"img_size": 64}')
    assert cfg.model.arch_spec() == {"model": "vit_small_patch16_224", "kwargs": {"img_size": 64}}
    cfg, = configs(linear_probe, "--data-root", cub_root, "--arch", '{"model": "m", "kwargs": {"a": 1}}',
                   "--arch-kwargs", '{"b": 2}')
    assert cfg.model.arch_spec() == {"model": "m", "kwargs": {"a": 1, "b": 2}}
    with pytest.raises(SystemExit):
        configs(linear_probe, "--data-root", cub_root, "--arch-kwargs", "{oops")


def test_golden_checkpoint_runs_through_run(shared, tmp_path):
    """The tiny DINO golden (random weights) through the whole linear probe: sizes follow its 64-px input."""
    case = shared / "golden" / "dino_vit_full"
    root = synth("cub", tmp_path / "cub", seed=1, images=12)
    records = by_probe(run_cli(linear_probe, *golden_model_args(case), "--data-root", root, "--epochs", "2",
                               "--train-batch-size", "8", "--results", tmp_path, "--data-source", "synthetic",
                               "--quiet"))
    record = records["linear_probe"]
    assert len(history(tmp_path, record)) == 2 and 0.0 <= record.metrics["cub_linear_probe/top1_last"] <= 100.0
    import hashlib
    assert record.checkpoint_sha256 == hashlib.sha256((case / "checkpoint.pth").read_bytes()).hexdigest()
    assert record.method and record.protocol_notes["train_transform"].startswith("Resize(73, bicubic) + CenterCrop(64)")


def test_mae_token_shuffle_defaults_to_the_official_part_classification_only(cub_root, tmp_path):
    synth("cifar10", tmp_path / "cifar", seed=0, train_per_class=2, test_per_class=1)

    def shuffle(*args):
        cfg, = configs(linear_probe, *args)
        return cfg.model.mae_token_shuffle
    assert shuffle("--data-root", cub_root) is True                                   # Table 3, as the official code ran
    assert shuffle("--dataset", "cifar10", "--data-root", tmp_path / "cifar") is False  # not part classification
    assert shuffle("--data-root", cub_root, "--preset", "cae-linear") is False         # not the official recipe
    assert shuffle("--data-root", cub_root, "--mae-token-shuffle", "off") is False     # explicit off wins
