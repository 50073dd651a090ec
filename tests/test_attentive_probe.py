"""The attentive probe end to end: planted parts, cached vs streamed token maps, every head variant and
preset, the recorded protocol, and a golden checkpoint through run()."""
from __future__ import annotations

import pytest

from probes.attentive_probe import main, resolve_num_heads, run
from probes.data.synth import synth
from probes.results import RunRecord

pytestmark = pytest.mark.usefixtures("one_thread")     # the fixture is in conftest.py


def test_planted_parts_with_the_partaware_head(cub_root, colorstats, tmp_path):
    out = run("colorstats", "cub", cub_root, encoder=colorstats, epochs=15, batch_size=32, base_lr=0.1,
              results=tmp_path, data_source="synthetic", progress=False)
    assert out["token_source"] == "cache"
    assert out["attentive"]["top1_best"] >= 95.0 and out["attentive"]["top1_last"] >= 90.0
    record = RunRecord.load(out["records"][0])
    assert (record.task, record.feature, record.split) == ("cub_attentive_probe", "tokens", "test")
    p = record.protocol
    assert (p["attentive_variant"], p["attentive_bn_eval"], p["preset"], p["optimizer"]) == (
        "partaware", "batch", "partaware", "sgd")
    assert p["lr"] == pytest.approx(0.1 * 32 / 256) and p["eval_batch_size"] == 256
    assert (p["tokens"], p["num_tokens"], p["num_heads"]) == ("all", 17, 1)   # 63-d baseline: one head
    assert "best" in p["model_selection"] and p["epochs"] == 15
    assert record.metrics["cub_attentive_probe/top1_best"] == pytest.approx(out["attentive"]["top1_best"])


def test_streamed_tokens_train_exactly_like_cached_ones(cub_root, colorstats, tmp_path):
    common = dict(encoder=colorstats, epochs=2, batch_size=32, base_lr=0.1, results=tmp_path, progress=False,
                  data_source="synthetic")
    cached = run("colorstats", "cub", cub_root, **common)
    streamed = run("colorstats", "cub", cub_root, token_cache_gb=0.0, **common)   # over budget: stream
    assert (cached["token_source"], streamed["token_source"]) == ("cache", "stream")
    assert [h["top1"] for h in streamed["history"]] == [h["top1"] for h in cached["history"]]
    assert [h["train_loss"] for h in streamed["history"]] == pytest.approx([h["train_loss"] for h in cached["history"]],
                                                                            rel=1e-5)


@pytest.mark.parametrize("head,preset,extra", [
    ("cae", "cae-attentive", {"warmup_epochs": 1, "batch_size": 32}),
    ("vjepa", "vjepa", {"batch_size": 32}),
    ("capi", "partaware", {"num_heads": 3, "batch_size": 32}),      # 63 = 3 x 21
    ("partaware", "partaware", {"bn_eval": "running", "tokens": "patch", "batch_size": 32}),
])
def test_every_head_and_preset_trains_and_is_recorded(cub_root, colorstats, tmp_path, head, preset, extra):
    out = run("colorstats", "cub", cub_root, encoder=colorstats, head=head, preset=preset, epochs=3,
              results=tmp_path, data_source="synthetic", progress=False, **extra)
    assert len(out["history"]) == 3 and 0.0 <= out["attentive"]["top1_last"] <= 100.0
    p = RunRecord.load(out["records"][0]).protocol
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


def test_bad_options_are_rejected(cub_root, colorstats):
    with pytest.raises(ValueError, match="linear_probe"):
        run("colorstats", "cub", cub_root, encoder=colorstats, head="linear")
    with pytest.raises(ValueError, match="tokens must be"):
        run("colorstats", "cub", cub_root, encoder=colorstats, tokens="cls")
    with pytest.raises(ValueError, match="warmup_epochs 10 must be in"):
        run("colorstats", "cub", cub_root, encoder=colorstats, preset="cae-attentive", epochs=3)
    with pytest.raises(ValueError, match="divisible by 64"):
        run("colorstats", "cub", cub_root, encoder=colorstats, head="capi", epochs=1)
    with pytest.raises(SystemExit):
        main(["--model", "colorstats", "--dataset", "cub", "--data-root", str(cub_root), "--bn-eval", "frozen"])
    assert resolve_num_heads("partaware", colorstats, 63, None) == (1, "1 (encoder without attention heads; "
                                                                     "D not divisible by 64)")


def test_golden_checkpoint_runs_through_run(dino_golden, tmp_path):
    """The tiny DINO golden (random weights, 4 heads, 64-px input) through the attentive probe."""
    case, meta, encoder = dino_golden
    img = meta["architecture"]["img_size"]
    root = synth("cub", tmp_path / "cub", seed=1, images=12)
    out = run(str(case / "checkpoint.pth"), "cub", root, encoder=encoder, epochs=2, batch_size=8, results=tmp_path,
              data_source="synthetic", progress=False)
    assert len(out["history"]) == 2 and 0.0 <= out["attentive"]["top1_last"] <= 100.0
    p = RunRecord.load(out["records"][0]).protocol
    assert (p["num_heads"], p["num_heads_source"]) == (meta["architecture"]["num_heads"], "encoder")
    assert p["num_tokens"] == 1 + (img // meta["architecture"]["patch_size"]) ** 2
