"""The linear probe (+ kNN) end to end on generated data with planted parts, its shuffled-label control, the
image-classification tasks, the CLI, resumption, and a golden checkpoint through run()."""
from __future__ import annotations

import pytest
import torch

from probes.data.synth import synth
from probes.encoders import load_encoder
from probes.heads import build_head
from probes.linear_probe import build_task, main, parse_arch, run, vector_features
from probes.results import RunRecord
from probes.train import TensorSource, resolve_recipe, train_probe

pytestmark = pytest.mark.usefixtures("one_thread")     # the fixture is in conftest.py


def test_planted_parts_are_classified_and_recorded(cub_root, colorstats, tmp_path):
    out = run("colorstats", "cub", cub_root, encoder=colorstats, epochs=30, batch_size=32, results=tmp_path,
              data_source="synthetic", progress=False)
    assert out["linear"]["top1_best"] >= 95.0 and out["linear"]["top1_last"] >= 95.0
    assert out["knn"]["top1"] >= 90.0
    assert len(out["history"]) == 30
    linear, knn = (RunRecord.load(p) for p in out["records"])
    assert (linear.task, knn.task, linear.split, linear.feature) == ("cub_linear_probe", "cub_knn", "test", "cls")
    assert linear.metrics["cub_linear_probe/top1_best"] == pytest.approx(out["linear"]["top1_best"])
    assert {"cub_linear_probe/top1_last", "cub_linear_probe/best_epoch"} <= set(linear.metrics)
    p = linear.protocol
    assert (p["head"], p["preset"], p["optimizer"], p["schedule"], p["epochs"], p["batch_size"]) == (
        "linear", "partaware", "sgd", "cosine-epoch", 30, 32)
    assert p["lr"] == pytest.approx(0.1 * 32 / 256) and p["momentum"] == 0.9 and p["weight_decay"] == 0.0
    assert p["crop"] == "official-code" and p["normalize"] == "imagenet" and "best" in p["model_selection"]
    assert p["train_transform"].startswith("PIL bicubic Resize(73) + CenterCrop(64)")
    assert p["eval_transform"].startswith("PIL bicubic resize to 64x64")
    full_size = build_task("cub", cub_root, load_encoder("colorstats"))      # a 224-px model: the paper's sizes
    assert full_size.protocol["train_transform"].startswith("PIL bicubic Resize(256) + CenterCrop(224)")
    assert full_size.eval[0][0].shape == (3, 224, 224) and full_size.train[0][0].shape == (3, 224, 224)
    assert knn.protocol["k"] == 20 and knn.protocol["temperature"] == 0.07
    assert knn.metrics["cub_knn/top1"] == pytest.approx(knn.metrics["cub_knn/top1_k20"])


def test_coco_parts_train2017_to_val2017(colorstats, tmp_path):
    root = synth("coco", tmp_path / "coco", seed=0)
    out = run("colorstats", "coco", root, encoder=colorstats, epochs=20, batch_size=32, results=tmp_path,
              data_source="synthetic", knn=False, progress=False)
    assert out["linear"]["top1_best"] >= 95.0
    record = RunRecord.load(out["records"][0])
    assert (record.task, record.split) == ("coco_linear_probe", "val2017")
    p = record.protocol
    assert (p["train_split"], p["eval_split"], p["coco_dist_scope"], p["keypoint_ids"]) == (
        "train2017", "val2017", "code_exact", [1, 11, 16])
    assert sum(p["eval_counts"].values()) == p["num_eval"] > 0


def test_shuffled_labels_stay_at_chance(cub_root, colorstats):
    """Control: with the training labels permuted the held-out accuracy must fall to chance.

    All 15 CUB parts are used: with features that separate the true classes, a shuffled-label probe maps each
    true class to the most frequent shuffled label of that class, which is right for a class with probability
    about 1/C; over 15 classes the per-seed accuracy has a standard deviation of about sqrt(p(1-p)/15) = 6.4
    points, 2.9 over 5 seeds, so 8 points around 1/C is a 2.8-sigma bound. The last epoch is used: picking
    the best epoch on the evaluation split is optimistic (the record reports both for that reason).
    """
    task = build_task("cub", cub_root, colorstats, keypoints="all")
    train_x, eval_x = vector_features(colorstats, task, "cls", None, 64, 0, False)
    recipe = resolve_recipe("partaware", "linear", epochs=15, batch_size=32)
    C = task.num_classes
    assert C == 15

    def last_top1(labels, seed):
        torch.manual_seed(seed)
        result = train_probe(build_head("linear", train_x.shape[1], C), TensorSource(train_x, labels),
                             TensorSource(eval_x, task.eval_labels), recipe, num_classes=C, seed=seed, progress=False)
        return result.selection()["top1_last"]

    assert last_top1(task.train_labels, 0) >= 95.0
    shuffled = []
    for seed in range(5):
        permutation = torch.randperm(len(task.train_labels), generator=torch.Generator().manual_seed(100 + seed))
        shuffled.append(last_top1(task.train_labels[permutation], seed))
    mean = sum(shuffled) / len(shuffled)
    assert abs(mean - 100.0 / C) <= 8.0, shuffled
    assert max(shuffled) < 40.0, shuffled


@pytest.mark.parametrize("dataset", ["cifar10", "folder"])
def test_image_classification_tasks(dataset, colorstats, tmp_path):
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
    out = run("colorstats", dataset, root, encoder=colorstats, epochs=20, batch_size=16, base_lr=2.0,
              results=tmp_path / "res", data_source="synthetic", progress=False)
    assert out["linear"]["top1_last"] >= 90.0, out["history"][-1]
    record = RunRecord.load(out["records"][0])
    assert record.split == ("test" if dataset == "cifar10" else "val")
    assert record.protocol["normalize"] == "model" and "CenterCrop(64)" in record.protocol["eval_transform"]
    assert record.protocol["lr"] == pytest.approx(2.0 * 16 / 256)


def test_cli_interrupted_run_resumes_and_then_records(cub_root, tmp_path, capsys):
    args = ["--model", "pixels", "--dataset", "cub", "--data-root", str(cub_root), "--epochs", "6",
            "--batch-size", "32", "--results", str(tmp_path), "--quiet", "--no-knn", "--data-source", "synthetic"]
    first = main(args + ["--stop-after-epochs", "4"])
    assert first["records"] == [] and len(first["history"]) == 4
    assert "rerun the same command to resume" in capsys.readouterr().out
    second = main(args)
    assert second["resumed_from_epoch"] == 4 and len(second["history"]) == 6
    assert second["history"][:4] == first["history"]
    assert "top1_best" in capsys.readouterr().out          # the printed results table
    assert len(second["records"]) == 1


def test_bad_options_are_rejected(cub_root, colorstats, tmp_path):
    with pytest.raises(ValueError, match="attentive_probe"):
        run("colorstats", "cub", cub_root, encoder=colorstats, head="partaware")
    with pytest.raises(ValueError, match="one vector per image"):
        run("colorstats", "cub", cub_root, encoder=colorstats, feature="tokens")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        run("colorstats", "cub", tmp_path / "missing", encoder=colorstats)
    with pytest.raises(ValueError, match="unknown dataset"):
        build_task("svhn", tmp_path, colorstats)
    with pytest.raises(SystemExit):
        main(["--model", "colorstats", "--dataset", "cub", "--data-root", str(cub_root), "--lr", "1", "--base-lr", "1"])
    assert parse_arch("vit_small_patch16_224", '{"img_size": 64}') == {"model": "vit_small_patch16_224",
                                                                       "kwargs": {"img_size": 64}}
    assert parse_arch('{"model": "m", "kwargs": {"a": 1}}', '{"b": 2}') == {"model": "m", "kwargs": {"a": 1, "b": 2}}
    with pytest.raises(SystemExit, match="not valid JSON"):
        parse_arch("{oops")


def test_golden_checkpoint_runs_through_run(dino_golden, tmp_path):
    """The tiny DINO golden (random weights) through the whole linear probe: sizes follow its 64-px input."""
    case, meta, encoder = dino_golden
    root = synth("cub", tmp_path / "cub", seed=1, images=12)
    out = run(str(case / "checkpoint.pth"), "cub", root, encoder=encoder, epochs=2, batch_size=8, results=tmp_path,
              data_source="synthetic", progress=False)
    assert len(out["history"]) == 2 and 0.0 <= out["linear"]["top1_last"] <= 100.0
    record = RunRecord.load(out["records"][0])
    assert record.checkpoint_sha256 == encoder.info()["checkpoint_sha256"] and record.method
    assert record.protocol["train_transform"].startswith("PIL bicubic Resize(73) + CenterCrop(64)")


def test_mae_token_shuffle_defaults_to_the_official_part_classification_only():
    from types import SimpleNamespace

    from probes.linear_probe import mae_shuffle_applies, mae_shuffle_protocol

    mae, dino = SimpleNamespace(format="mae"), SimpleNamespace(format="dino_full")
    assert mae_shuffle_applies(None, "partaware", "cub", mae) is True        # Table 3, as the official code ran
    assert mae_shuffle_applies(None, "partaware", "cifar10", mae) is False   # not part classification
    assert mae_shuffle_applies(None, "cae-linear", "cub", mae) is False      # not the official recipe
    assert mae_shuffle_applies(False, "partaware", "cub", mae) is False      # explicit off wins
    assert mae_shuffle_applies(True, "partaware", "cub", dino) is False      # MAE checkpoints only
    assert mae_shuffle_protocol(mae, True, 7) == {"mae_token_shuffle": True, "mae_token_shuffle_seed": 7}
    assert mae_shuffle_protocol(mae, False, 7) == {"mae_token_shuffle": False, "mae_token_shuffle_seed": None}
    assert mae_shuffle_protocol(dino, False, 7) == {}
