"""The attentive probe end to end: planted parts, cached vs streamed token maps, every head variant and
preset, the recorded protocol, and a golden checkpoint through run()."""
from __future__ import annotations

import pytest

from conftest import configs, golden_model_args, history, run_cli
from probes import attentive_probe
from probes.attentive_probe import resolve_num_heads
from probes.data.synth import synth
from probes.encoders import load_encoder

pytestmark = pytest.mark.usefixtures("one_thread")     # the fixture is in conftest.py
SMALL = ["--model", "colorstats", "--input-size", "64", "--data-source", "synthetic", "--quiet"]


def test_planted_parts_with_the_partaware_head(cub_root, tmp_path):
    record, = run_cli(attentive_probe, *SMALL, "--data-root", cub_root, "--epochs", "15", "--train-batch-size", "32",
                      "--base-lr", "0.1", "--results", tmp_path)
    assert record.protocol_notes["token_source"] == "cache"
    assert record.metrics["cub_attentive_probe/top1_best"] >= 95.0
    assert record.metrics["cub_attentive_probe/top1_last"] >= 90.0
    assert (record.task, record.feature, record.split) == ("cub_attentive_probe", "tokens", "test")
    p = record.protocol
    assert (p["attentive_variant"], p["attentive_bn_eval"], p["preset"], p["optimizer"]) == (
        "partaware", "batch", "partaware", "sgd")
    assert p["lr"] == pytest.approx(0.1 * 32 / 256) and p["eval_batch_size"] == 256
    assert (p["tokens"], p["num_tokens"], p["num_heads"]) == ("all", 17, 1)   # 63-d baseline: one head
    assert "best" in record.protocol_notes["model_selection"] and p["epochs"] == 15
    assert len(history(tmp_path, record)) == 15


def test_streamed_tokens_train_exactly_like_cached_ones(cub_root, tmp_path):
    common = [*SMALL, "--data-root", cub_root, "--epochs", "2", "--train-batch-size", "32", "--base-lr", "0.1"]
    cached, = run_cli(attentive_probe, *common, "--results", tmp_path / "a")
    streamed, = run_cli(attentive_probe, *common, "--results", tmp_path / "b", "--token-cache-gb", "0")  # stream
    assert (cached.protocol_notes["token_source"], streamed.protocol_notes["token_source"]) == ("cache", "stream")
    a, b = history(tmp_path / "a", cached), history(tmp_path / "b", streamed)
    assert [h["top1"] for h in a] == [h["top1"] for h in b]
    assert [h["train_loss"] for h in b] == pytest.approx([h["train_loss"] for h in a], rel=1e-5)
    assert cached.config_hash == streamed.config_hash          # where the tokens come from changes no number


@pytest.mark.parametrize("head,preset,extra", [
    ("cae", "cae-attentive", ["--warmup-epochs", "1", "--train-batch-size", "32"]),
    ("vjepa", "vjepa", ["--train-batch-size", "32"]),
    ("capi", "partaware", ["--num-heads", "3", "--train-batch-size", "32"]),      # 63 = 3 x 21
    ("partaware", "partaware", ["--bn-eval", "running", "--tokens", "patch", "--train-batch-size", "32"]),
])
def test_every_head_and_preset_trains_and_is_recorded(cub_root, tmp_path, head, preset, extra):
    record, = run_cli(attentive_probe, *SMALL, "--data-root", cub_root, "--head", head, "--preset", preset,
                      "--epochs", "3", "--results", tmp_path, *extra)
    assert len(history(tmp_path, record)) == 3 and 0.0 <= record.metrics["cub_attentive_probe/top1_last"] <= 100.0
    p = record.protocol
    assert p["attentive_variant"] == head and p["preset"] == preset
    if head == "cae":
        assert (p["optimizer"], p["lr"], p["lr_scaling"], p["warmup_epochs"]) == ("sgd-nesterov", 0.4, "none", 1)
    if head == "vjepa":
        assert (p["optimizer"], p["weight_decay"], p["weight_decay_end"], p["grad_clip"]) == ("adamw", 1e-3, 1e-6, 1.0)
        assert p["attentive_bn_eval"].startswith("n/a")
    if head == "capi":
        assert (p["tokens"], p["num_tokens"], p["num_heads"]) == ("patch", 16, 3)
    if head == "partaware":
        assert (p["attentive_bn_eval"], p["tokens"], p["num_tokens"]) == ("running", "patch", 16)


def test_presets_pick_their_head(cub_root):
    heads = {preset: configs(attentive_probe, "--data-root", cub_root, "--preset", preset)[0].protocol.head
             for preset in ("partaware", "cae-attentive", "vjepa")}
    assert heads == {"partaware": "partaware", "cae-attentive": "cae", "vjepa": "vjepa"}


def test_bad_options_are_rejected(cub_root, tmp_path, capsys):
    with pytest.raises(SystemExit):
        configs(attentive_probe, "--data-root", cub_root, "--head", "linear")       # a linear head
    with pytest.raises(SystemExit):
        configs(attentive_probe, "--data-root", cub_root, "--tokens", "cls")
    capsys.readouterr()
    for args, message in ((["--preset", "cae-attentive", "--epochs", "3"], "warmup_epochs 10 must be in"),
                          (["--head", "capi", "--epochs", "1"], "divisible by 64")):
        with pytest.raises(SystemExit) as exit_info:
            run_cli(attentive_probe, *SMALL, "--data-root", cub_root, "--no-write", *args)
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and message in err and "Traceback" not in err
    with pytest.raises(SystemExit):
        configs(attentive_probe, "--data-root", cub_root, "--bn-eval", "frozen")
    assert resolve_num_heads("partaware", load_encoder("colorstats"), 63, None) == (
        1, "1 (encoder without attention heads; D not divisible by 64)")


def test_golden_checkpoint_runs_through_run(shared, tmp_path):
    """The tiny DINO golden (random weights, 4 heads, 64-px input) through the attentive probe."""
    import json

    case = shared / "golden" / "dino_vit_full"
    meta = json.loads((case / "meta.json").read_text())
    img = meta["architecture"]["img_size"]
    root = synth("cub", tmp_path / "cub", seed=1, images=12)
    record, = run_cli(attentive_probe, *golden_model_args(case), "--data-root", root, "--epochs", "2",
                      "--train-batch-size", "8", "--results", tmp_path, "--data-source", "synthetic", "--quiet")
    assert len(history(tmp_path, record)) == 2 and 0.0 <= record.metrics["cub_attentive_probe/top1_last"] <= 100.0
    p = record.protocol
    assert (p["num_heads"], record.protocol_notes["num_heads_source"]) == (meta["architecture"]["num_heads"], "encoder")
    assert p["num_tokens"] == 1 + (img // meta["architecture"]["patch_size"]) ** 2
