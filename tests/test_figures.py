"""Figures: each writes PNG, PDF and SVG at a page column's width from the records it needs, pairs only the paper's
object/part tasks, names models as the paper does, and skips (saying why) without its records."""
from __future__ import annotations

import re
from pathlib import Path

import matplotlib.image

from analysis import figures
from probes.results import make_record
from conftest import write_record

SHA = "cd" * 32
DPI = figures.STYLE["savefig.dpi"]


def write(folder, model, probe, dataset, metrics, feature="patch_mean", block=None, protocol=None, sha=SHA):
    info = {"name": model, "method": model, "arch": "vit_base_patch16_224", "checkpoint_sha256": sha}
    record = make_record(probe=probe, dataset=dataset, split="all", encoder_info=info, feature=feature, block=block,
                         protocol=protocol if protocol is not None else {"include_self": True, "crop": "official-code"},
                         metrics=metrics, seed=None, wall_time_s=1.0, device="cpu")
    return write_record(record, folder, config={})


def assert_real_png(path: Path) -> None:
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    pixels = matplotlib.image.imread(path)
    assert pixels.shape[0] > 100 and pixels.shape[1] > 100 and pixels.std() > 0.01, "blank image"


def assert_paper_sized(path: Path, panels: int) -> None:
    """PNG, PDF and SVG side by side; one panel: a page column (3.3 in), more: two columns (6.8 in)."""
    assert_real_png(path)
    assert path.with_suffix(".pdf").read_bytes()[:5] == b"%PDF-"
    assert path.with_suffix(".svg").read_text().lstrip().startswith("<?xml")
    width = matplotlib.image.imread(path).shape[1]
    assert width == round((figures.SINGLE if panels == 1 else figures.DOUBLE) * DPI)


def svg_texts(path: Path) -> list[str]:
    return re.findall(r"<text[^>]*>([^<]*)</text>", path.with_suffix(".svg").read_text())


def x_tick_labels(path: Path) -> list[str]:
    """The x-axis tick labels of a figure's SVG (matplotlib writes each tick as <g id="xtick_N">)."""
    parts = re.split(r'<g id="(xtick|ytick)_\d+">', path.with_suffix(".svg").read_text())
    return [re.search(r"<text[^>]*>([^<]*)</text>", body).group(1)
            for kind, body in zip(parts[1::2], parts[2::2]) if kind == "xtick"]


def test_object_vs_part_draws_the_figure6_segmentation_pairs_from_leaderboard_rows(tmp_path):
    for probe in ("linear_segmentation", "dense_segmentation"):
        for i, model in enumerate(("deit", "dino", "ibot")):
            for dataset, value in (("ade20k_object59", 40.0 - i), ("ade20k_part209", 27.0 + i),
                                   ("pascal_object16", 60.0 - i), ("pascal_part193", 26.0 + i)):
                write(tmp_path, model, probe, dataset, {"mIoU": value, "mAcc": 50.0}, feature="blocks",
                      protocol={"seg_layers": [3, 5, 7, 11]})
    write(tmp_path, "dino", "part_retrieval", "cub", {"AP": 40.0})
    write(tmp_path, "dino", "object_retrieval", "coco", {"AP": 50.0})        # COCO objects pair with COCO parts only
    result = figures.object_vs_part(tmp_path, tmp_path / "ovp.png")
    assert result.message == (
        "4 object/part pair(s): ade20k_object59_linear_segmentation vs ade20k_part209_linear_segmentation, "
        "pascal_object16_linear_segmentation vs pascal_part193_linear_segmentation, "
        "ade20k_object59_dense_segmentation vs ade20k_part209_dense_segmentation, "
        "pascal_object16_dense_segmentation vs pascal_part193_dense_segmentation")
    assert_paper_sized(result.path, panels=4)
    texts = svg_texts(result.path)
    assert {"DeiT", "DINO", "iBOT"} <= set(texts) and "deit" not in texts           # the paper's names
    assert "ADE20K-Object-59 vs ADE20K-Part-209 linear seg.: A vs B" in texts
    legend = result.path.with_suffix(".legend.txt").read_text()
    assert "A: ade20k_object59_linear_segmentation/mIoU [blocks]" in legend
    assert "B: ade20k_part209_linear_segmentation/mIoU [blocks]" in legend
    assert '"seg_layers": [3, 5, 7, 11]' in legend and "   DINO: 39.0  " in legend


def test_object_vs_part_pairs_only_the_papers_tasks_and_the_same_models(tmp_path):
    for i, model in enumerate(("dino", "mae")):
        write(tmp_path, model, "part_retrieval", "cub", {"AP": 40.0 + i, "mAP": 1.0})
        write(tmp_path, model, "linear_probe", "cifar10", {"top1_best": 90.0 - i}, feature="cls", protocol={})
        write(tmp_path, model, "linear_probe", "cub", {"top1_best": 80.0 - i}, feature="cls", protocol={})
    write(tmp_path, "ibot", "linear_probe", "cub", {"top1_best": 70.0}, feature="cls", protocol={})   # part side only
    write(tmp_path, "mocov3", "linear_probe", "cifar10", {"top1_best": 70.0}, feature="cls", protocol={"head": "linear"})
    write(tmp_path, "mocov3", "linear_probe", "cub", {"top1_best": 70.0}, feature="cls", protocol={"head": "linear-bn"})
    result = figures.object_vs_part(tmp_path, tmp_path / "ovp.png")
    # the CUB linear probe classifies part crops: CIFAR-10 classification vs part classification is the pair;
    # CIFAR-10 classification vs CUB part retrieval is not (another probe)
    assert result.message == "1 object/part pair(s): cifar10_linear_probe vs cub_linear_probe"
    assert_paper_sized(result.path, panels=1)
    # iBOT has no object side, MoCo v3's two sides used different heads: neither is drawn
    assert x_tick_labels(result.path) == ["DINO", "MAE"]
    legend = result.path.with_suffix(".legend.txt").read_text()
    assert "iBOT" not in legend and "MoCo v3" not in legend


def test_object_vs_part_without_a_paper_pair_is_skipped(tmp_path):
    """Changed on purpose: without an object/part pair of the paper the figure is not drawn (it used to show the
    part-level scores per feature instead)."""
    write(tmp_path, "colorstats", "part_retrieval", "cub", {"AP": 90.0, "mAP": 88.0})
    write(tmp_path, "colorstats", "object_retrieval", "coco", {"AP": 80.0}, feature="patch_mean")
    result = figures.object_vs_part(tmp_path, tmp_path / "ovp.png")
    assert result.path is None and result.message.startswith("skipped: no object/part pair of the paper")
    assert not (tmp_path / "ovp.png").exists()


def test_per_block_curves_integer_ticks_and_skip_message(tmp_path):
    protocol = {"include_self": True, "feature_source": "final norm"}
    write(tmp_path, "dino", "part_retrieval", "cub", {"AP": 60.0}, protocol=protocol)
    write(tmp_path, "dino", "part_retrieval", "cub", {"AP": 70.0}, protocol={**protocol, "include_self": False})
    for block in range(4):
        for model in ("dino", "mae"):
            write(tmp_path, model, "part_retrieval", "cub", {"AP": 10.0 * block, "mAP": 1.0}, block=block,
                  protocol={**protocol, "feature_source": f"block {block} output"})
    result = figures.per_block(tmp_path, tmp_path / "blocks.png")
    assert result.message == "1 panel(s), 8 per-block values"  # AP shown, mAP left to the CSV
    assert_paper_sized(result.path, panels=1)
    assert x_tick_labels(result.path) == ["0", "1", "2", "3"]            # one tick per block, no fractions
    assert {"DINO", "MAE", "final output"} <= set(svg_texts(result.path))
    legend = result.path.with_suffix(".legend.txt").read_text()
    assert "A: cub_part_retrieval/AP [patch_mean] at every block" in legend and "DINO block 3: 30.0" in legend
    # the dotted final-output line: same model, feature and protocol (but the block's own description)
    cells = figures.build_cells(figures.current_records(tmp_path))
    series = [c for c in cells if c.row.model == "dino" and c.column.block is not None and c.column.metric.endswith("/AP")]
    assert len(series) == 4 and figures._final_value(cells, series, series[0].column.metric) == 60.0
    mae = [c for c in cells if c.row.model == "mae" and c.column.block is not None and c.column.metric.endswith("/AP")]
    assert figures._final_value(cells, mae, mae[0].column.metric) is None

    single = tmp_path / "one_block"
    write(single, "dino", "part_retrieval", "cub", {"AP": 3.0}, block=3)
    assert x_tick_labels(figures.per_block(single, single / "b.png").path) == ["3"]

    empty = tmp_path / "no_blocks"
    write(empty, "dino", "part_retrieval", "cub", {"AP": 60.0})
    skipped = figures.per_block(empty, empty / "blocks.png")
    assert skipped.path is None and "no record has `block` set" in skipped.message
    assert not (empty / "blocks.png").exists()


def test_two_files_under_one_name_are_two_labelled_models(tmp_path):
    for sha, shift in (("11" * 32, 0.0), ("22" * 32, 5.0)):
        for block in range(2):
            write(tmp_path, "checkpoint.pth", "part_retrieval", "cub", {"AP": 10.0 + block + shift}, block=block,
                  sha=sha)
    result = figures.per_block(tmp_path, tmp_path / "blocks.png")
    assert result.message == "1 panel(s), 4 per-block values"
    assert {"checkpoint.pth 111111", "checkpoint.pth 222222"} <= set(svg_texts(result.path))


def test_published_vs_reproduced_pairs_and_baselines(tmp_path):
    write(tmp_path, "dino", "part_retrieval", "cub", {"AP": 47.0})                      # paper protocol: a pair
    write(tmp_path, "dino", "part_retrieval", "cub", {"AP": 45.0},
          protocol={"include_self": False, "crop": "official-code"})                    # other protocol: a line
    write(tmp_path, "colorstats", "part_retrieval", "cub", {"AP": 20.0})                # baseline: a line
    result = figures.published_vs_reproduced(tmp_path, tmp_path / "pub.png")
    assert result.message == "1 panel(s): 1 published/reproduced pair(s), 2 value(s) without a published counterpart"
    assert_paper_sized(result.path, panels=1)
    texts = svg_texts(result.path)
    # every paper model's published value is named in the strip under the panel, DINO and iBOT (48.9, 49.3) too
    assert {"DeiT", "MoCo v3", "DINO", "BEiT", "MAE", "CAE", "iBOT"} <= set(texts)
    assert {"DINO (A): 47.0 vs 48.9", "DINO (B): 45.0, no published value",
            "colorstats (A): 20.0, no published value"} <= set(texts)
    legend = result.path.with_suffix(".legend.txt").read_text()
    assert "A: cub_part_retrieval/AP [patch_mean include_self=true]" in legend
    assert "B: cub_part_retrieval/AP [patch_mean include_self=false]" in legend

    elsewhere = tmp_path / "unpublished"
    write(elsewhere, "colorstats", "object_retrieval", "cifar10", {"AP": 20.0})
    skipped = figures.published_vs_reproduced(elsewhere, elsewhere / "pub.png")
    assert skipped.path is None and "no record measures a task" in skipped.message


def test_build_all_and_the_cli(tmp_path, capsys):
    results = tmp_path / "results"
    write(results, "dino", "part_retrieval", "cub", {"AP": 47.0})
    write(results, "dino", "part_retrieval", "cub", {"AP": 40.0}, block=5)
    write(results, "dino", "object_retrieval", "cifar10", {"AP": 60.0}, protocol={"include_self": None})
    assert figures.main(["--results", str(results), "--out", str(tmp_path / "figs")]) == 0
    printed = capsys.readouterr().out
    for name in ("object_vs_part", "per_block", "published_vs_reproduced"):
        png = tmp_path / "figs" / f"{name}.png"
        assert_paper_sized(png, panels=1)
        assert png.with_suffix(".legend.txt").is_file()
        assert f"{name}: {png}" in printed
    assert "(1 object/part pair(s): cifar10_object_retrieval vs cub_part_retrieval)" in printed
    assert "retrieval_grid:" in printed


def test_a_pair_skipped_for_disagreeing_settings_names_them(tmp_path):
    write(tmp_path, "colorstats", "part_retrieval", "cub", {"AP": 90.0, "mAP": 88.0}, protocol={"input_size": 224})
    write(tmp_path, "colorstats", "object_retrieval", "cifar10", {"AP": 80.0}, protocol={"input_size": 32})
    result = figures.object_vs_part(tmp_path, tmp_path / "ovp.png")
    assert result.path is None
    assert "cifar10_object_retrieval vs cub_part_retrieval: colorstats is on both sides, but input_size 32 vs 224" \
        in result.message
