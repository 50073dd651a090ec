"""Figures: each writes a real PNG from the records it needs, picks the right data, and skips without them."""
from __future__ import annotations

from pathlib import Path

import matplotlib.image
import pytest

from analysis import figures
from probes.results import make_record
from conftest import write_record

SHA = "cd" * 32


def write(folder, model, probe, dataset, metrics, feature="patch_mean", block=None, protocol=None):
    info = {"name": model, "method": model, "arch": "vit_base_patch16_224", "checkpoint_sha256": SHA}
    record = make_record(probe=probe, dataset=dataset, split="all", encoder_info=info, feature=feature, block=block,
                         protocol=protocol if protocol is not None else {"include_self": True, "crop": "official-code"},
                         metrics=metrics, seed=None, wall_time_s=1.0, device="cpu")
    write_record(record, folder, config={})


def assert_real_png(path: Path) -> None:
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    pixels = matplotlib.image.imread(path)
    assert pixels.shape[0] > 100 and pixels.shape[1] > 100 and pixels.std() > 0.01, "blank image"


def test_object_vs_part_prefers_the_figure6_segmentation_pairs(tmp_path):
    for i, model in enumerate(("deit", "dino", "ibot")):
        write(tmp_path, model, "linear_segmentation", "ade20k_object59", {"mIoU": 40.0 - i}, protocol={})
        write(tmp_path, model, "linear_segmentation", "ade20k_part209", {"mIoU": 27.0 + i}, protocol={})
        write(tmp_path, model, "linear_segmentation", "pascal_object16", {"mIoU": 60.0 - i}, protocol={})
        write(tmp_path, model, "linear_segmentation", "pascal_part193", {"mIoU": 27.0 + i}, protocol={})
        write(tmp_path, model, "part_retrieval", "cub", {"AP": 40.0 + i})
        write(tmp_path, model, "object_retrieval", "coco", {"AP": 50.0 + i})
    result = figures.object_vs_part(tmp_path, tmp_path / "ovp.png")
    assert_real_png(result.path)
    assert "ade20k_object59_linear_segmentation vs ade20k_part209_linear_segmentation" in result.message
    assert "pascal_object16_linear_segmentation vs pascal_part193_linear_segmentation" in result.message
    assert "coco_object_retrieval" not in result.message


def test_object_vs_part_pairs_object_and_part_tasks(tmp_path):
    for i, model in enumerate(("dino", "mae")):
        write(tmp_path, model, "part_retrieval", "cub", {"AP": 40.0 + i, "mAP": 1.0})
        write(tmp_path, model, "linear_probe", "cifar10", {"top1_best": 90.0 - i}, feature="cls", protocol={})
        write(tmp_path, model, "linear_probe", "cub", {"top1_best": 90.0 - i}, feature="cls", protocol={})
    result = figures.object_vs_part(tmp_path, tmp_path / "ovp.png")
    assert_real_png(result.path)
    # CUB linear probe classifies part crops (part level); CIFAR10 is object level
    assert result.message.startswith("2 object/part pair(s)")
    assert "cifar10_linear_probe vs cub_part_retrieval" in result.message
    assert "cifar10_linear_probe vs cub_linear_probe" in result.message


def test_object_vs_part_without_object_records_says_so(tmp_path):
    write(tmp_path, "colorstats", "part_retrieval", "cub", {"AP": 90.0, "mAP": 88.0})
    write(tmp_path, "colorstats", "part_retrieval", "cub", {"AP": 80.0, "mAP": 78.0}, feature="cls")
    result = figures.object_vs_part(tmp_path, tmp_path / "ovp.png")
    assert_real_png(result.path)
    assert result.message.startswith("no object-level records")


def test_per_block_curves_and_skip_message(tmp_path):
    protocol = {"include_self": True, "feature_source": "final norm"}
    write(tmp_path, "dino", "part_retrieval", "cub", {"AP": 60.0}, protocol=protocol)
    write(tmp_path, "dino", "part_retrieval", "cub", {"AP": 70.0}, protocol={**protocol, "include_self": False})
    for block in range(4):
        for model in ("dino", "mae"):
            write(tmp_path, model, "part_retrieval", "cub", {"AP": 10.0 * block, "mAP": 1.0}, block=block,
                  protocol={**protocol, "feature_source": f"block {block} output"})
    result = figures.per_block(tmp_path, tmp_path / "blocks.png")
    assert_real_png(result.path)
    assert result.message == "1 panel(s), 8 per-block values"  # AP shown, mAP left to the CSV
    # the dotted final-output line: same model, feature and protocol (but the block's own description)
    cells = figures.build_cells(figures.current_records(tmp_path))
    series = [c for c in cells if c.row.model == "dino" and c.column.block is not None and c.column.metric.endswith("/AP")]
    assert len(series) == 4 and figures._final_value(cells, series, series[0].column.metric) == 60.0
    mae = [c for c in cells if c.row.model == "mae" and c.column.block is not None and c.column.metric.endswith("/AP")]
    assert figures._final_value(cells, mae, mae[0].column.metric) is None

    empty = tmp_path / "no_blocks"
    write(empty, "dino", "part_retrieval", "cub", {"AP": 60.0})
    skipped = figures.per_block(empty, empty / "blocks.png")
    assert skipped.path is None and "no record has `block` set" in skipped.message
    assert not (empty / "blocks.png").exists()


def test_published_vs_reproduced_pairs_and_baselines(tmp_path):
    write(tmp_path, "dino", "part_retrieval", "cub", {"AP": 47.0})                      # paper protocol: a pair
    write(tmp_path, "dino", "part_retrieval", "cub", {"AP": 45.0},
          protocol={"include_self": False, "crop": "official-code"})                    # other protocol: a line
    write(tmp_path, "colorstats", "part_retrieval", "cub", {"AP": 20.0})                # baseline: a line
    result = figures.published_vs_reproduced(tmp_path, tmp_path / "pub.png")
    assert_real_png(result.path)
    assert result.message == "1 panel(s): 1 published/reproduced pair(s), 2 value(s) without a published counterpart"

    elsewhere = tmp_path / "unpublished"
    write(elsewhere, "colorstats", "object_retrieval", "cifar10", {"AP": 20.0})
    skipped = figures.published_vs_reproduced(elsewhere, elsewhere / "pub.png")
    assert skipped.path is None and "no record measures a task" in skipped.message


def test_build_all_and_the_cli(tmp_path, capsys):
    results = tmp_path / "results"
    write(results, "dino", "part_retrieval", "cub", {"AP": 47.0})
    write(results, "dino", "part_retrieval", "cub", {"AP": 40.0}, block=5)
    assert figures.main(["--results", str(results), "--out", str(tmp_path / "figs")]) == 0
    printed = capsys.readouterr().out
    for name in ("object_vs_part", "per_block", "published_vs_reproduced"):
        assert_real_png(tmp_path / "figs" / f"{name}.png")
        assert f"{name}: {tmp_path / 'figs' / name}.png" in printed
    assert "retrieval_grid:" in printed
