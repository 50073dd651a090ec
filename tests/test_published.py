"""Published values: the tables equal spec/protocols.md §9, and a value applies only to the paper's protocol."""
from __future__ import annotations

import re

import pytest

from probes.published import (PAPER_MODELS, PUBLISHED, TABLE3_COLUMNS, TABLE4_DATASETS, lookup, paper_alias,
                              published_values, reference_values)

OFFICIAL = {"include_self": True, "crop": "official-code", "keypoints": "paper"}
ROW_NAMES = {v: k for k, v in PAPER_MODELS.items()}  # "MoCo v3" -> "mocov3"


def values(task, model, feature, protocol=OFFICIAL, **kw):
    return published_values(task=task, model=model, feature=feature, protocol=protocol, **kw)


@pytest.mark.parametrize("task,model,feature,protocol,metric,expected", [
    ("cub_part_retrieval", "dino", "patch_mean", OFFICIAL, "AP", 48.9),
    ("coco_part_retrieval", "ibot", "projection", OFFICIAL, "AP", 41.5),
    ("cub_part_retrieval", "cae", "patch_mean", OFFICIAL, "AP", 58.0),
    ("coco_part_retrieval", "deit", "patch_mean", OFFICIAL, "AP", 44.1),
    ("cub_linear_probe", "beit", "cls", {"crop": "official-code", "head": "linear"}, "top1_best", 55.4),
    ("coco_attentive_probe", "mae", "tokens", {"crop": "official-code", "attentive_variant": "partaware",
                                               "mae_token_shuffle": True}, "top1_best", 93.9),
    ("imagenet_linear_probe", "mocov3", "cls", {"head": "linear-bn"}, "top1_best", 76.2),
    ("imagenet_attentive_probe", "beit", "tokens", {"attentive_variant": "cae"}, "top1_best", 51.9),
    ("ade20k_part209_linear_segmentation", "cae", "blocks", {}, "mIoU", 28.4),
    ("ade20k_linear_segmentation", "ibot", "blocks", {}, "aAcc", 78.1),
    ("pascal_part193_linear_segmentation", "dino", "blocks", {}, "mAcc", 36.5),
    ("lip19_linear_segmentation", "cae", "blocks", {"seg_layers": [3, 5, 7, 11]}, "mIoU", 43.7),
])
def test_spot_values_from_protocols_section_9(task, model, feature, protocol, metric, expected):
    assert values(task, model, feature, protocol)[metric] == expected


def _markdown_table(text: str, caption_start: str) -> list[list[str]]:
    """Rows (cells) of the markdown table that follows the caption starting with ``caption_start``."""
    start = text.index(caption_start)
    rows = []
    for line in text[start:].splitlines()[1:]:
        if not line.startswith("|"):
            if rows:
                break  # the table ended
            continue  # the caption's continuation or a blank line before the table
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if set(line) <= set("|- ") or cells[0].startswith("*"):
            continue  # separator and row-group lines
        rows.append(cells)
    return rows[1:]  # drop the header


def test_every_published_value_equals_the_spec_tables(shared):
    """Parse the four tables of protocols.md §9 independently and compare every cell with probes.published."""
    text = (shared / "spec" / "protocols.md").read_text(encoding="utf-8")
    expected: dict[tuple[str, str, str, str], float] = {}  # (table, column, model, metric) -> value

    for cells in _markdown_table(text, "**Table 1:**"):
        model = ROW_NAMES[cells[0]]
        expected[("Table 1", "Linear", model, "top1_best")] = float(cells[1])
        expected[("Table 1", "Attentive", model, "top1_best")] = float(cells[2])
    for cells in _markdown_table(text, "**Table 2:**"):
        for metric, cell in zip(("mIoU", "mAcc", "aAcc"), cells[1:]):
            expected[("Table 2", f"ADE20K {metric}", ROW_NAMES[cells[0]], metric)] = float(cell)
    for cells in _markdown_table(text, "**Table 3:**"):
        for column, cell in zip(TABLE3_COLUMNS, cells[1:]):
            metric = "AP" if column.startswith("Retrieval") else "top1_best"
            if cell != "-":
                expected[("Table 3", column, ROW_NAMES[cells[0]], metric)] = float(cell)
    for cells in _markdown_table(text, "**Table 4:**"):
        for i, dataset in enumerate(TABLE4_DATASETS):
            for j, metric in enumerate(("mIoU", "mAcc", "aAcc")):
                expected[("Table 4", f"{dataset} {metric}", ROW_NAMES[cells[0]], metric)] = float(cells[1 + 3 * i + j])

    ours = {(e.table, e.column, e.model, e.metrics[0]): e.value for e in PUBLISHED}
    assert len(expected) == 7 * 2 + 7 * 3 + (7 * 8 - 8) + 7 * 9
    assert ours == expected


def test_retrieval_value_needs_the_official_code_protocol():
    assert values("cub_part_retrieval", "dino", "patch_mean") == {"AP": 48.9}
    # self-match excluded, the paper-text crop, all keypoints, the dense protocol: other measurements
    for change in ({"include_self": False}, {"crop": "paper"}, {"keypoints": "all"}, {"crop": "dense"},
                   {"normalize": "model"}, {"data_source": "synthetic"}, {"synthetic": True}):
        match = lookup(task="cub_part_retrieval", model="dino", feature="patch_mean", protocol={**OFFICIAL, **change})
        assert match.values == {}, change
        assert match.reasons and any(str(list(change)[0]) in r for r in match.reasons), match.reasons
    # an unrecorded self-match mode is not assumed...
    match = lookup(task="cub_part_retrieval", model="dino", feature="patch_mean", protocol={"crop": "official-code"})
    assert match.values == {} and "include_self not recorded" in match.reasons[0]
    # ...unless the run names the official-code preset, which the provenance then says
    match = lookup(task="cub_part_retrieval", model="dino", feature="patch_mean", protocol={"preset": "partaware"})
    assert match.values == {"AP": 48.9} and "implied by preset 'partaware'" in match.sources["AP"]


def test_cls_block_split_and_other_models_get_no_value():
    assert values("cub_part_retrieval", "dino", "cls") == {}
    assert "cls is not compared" in lookup(task="cub_part_retrieval", model="dino", feature="cls",
                                           protocol=OFFICIAL).reasons[0]
    assert values("cub_part_retrieval", "dino", "patch_mean", block=11) == {}
    assert values("cub_part_retrieval", "dino", "patch_mean", split="test") == {}
    assert values("cub_part_retrieval", "dino", "patch_mean", split="all") == {"AP": 48.9}
    assert values("cub_part_retrieval", "deit", "projection") == {}  # "-" in the paper: no head
    for other in ("colorstats", "mec", "carp", "dino_vit_small16", "checkpoint.pth", "timm:vit_base_patch16_224"):
        assert values("cub_part_retrieval", other, "patch_mean") == {}
    assert values("cub_object_retrieval", "dino", "patch_mean") == {}  # not in the paper


def test_registry_names_of_the_paper_checkpoints_match():
    # encoder.info()["name"] is the registry entry; the entry carrying the alias is the paper's model
    assert paper_alias("dino") == "dino"
    assert paper_alias("colorstats") is None
    names = {paper_alias(name) for name in ("dino_vit_base16_full", "ibot_vit_base16_randmask")}
    if names != {None}:  # the registry is present: its paper entries resolve
        assert names == {"dino", "ibot"}
        assert values("cub_part_retrieval", "dino_vit_base16_full", "patch_mean") == {"AP": 48.9}
        assert paper_alias("dino_vit_base16") is None  # the backbone-only file is not the alias' checkpoint


def test_classification_metric_mapping_and_protocols():
    linear = {"crop": "official-code", "head": "linear"}
    assert values("cub_linear_probe", "dino", "cls", linear) == {"top1_best": 93.2}
    assert values("cub_linear_probe", "dino", "cls", {**linear, "model_selection": "best"}) == \
        {"top1_best": 93.2, "top1": 93.2}
    assert values("cub_linear_probe", "dino", "cls", {**linear, "model_selection": "last"}) == {"top1_best": 93.2}
    assert values("cub_linear_probe", "dino", "cls", {**linear, "head": "linear-bn"}) == {}
    assert values("cub_attentive_probe", "dino", "tokens", {"crop": "official-code", "attentive_variant": "cae"}) == {}
    assert values("imagenet_linear_probe", "dino", "cls", {"head": "linear"}) == {}  # Table 1 is the CAE protocol
    # the official recipe as the probes record it; a shortened or changed schedule is another measurement
    recipe = {**linear, "preset": "partaware", "optimizer": "sgd", "base_lr": 0.1, "epochs": 90, "batch_size": 1024,
              "weight_decay": 0.0}
    assert values("coco_linear_probe", "cae", "cls", recipe) == {"top1_best": 91.1}
    for change in ({"epochs": 5}, {"batch_size": 256}, {"base_lr": 0.01}, {"optimizer": "lars"}):
        assert values("coco_linear_probe", "cae", "cls", {**recipe, **change}) == {}, change
    attentive = {**recipe, "attentive_variant": "partaware", "base_lr": 0.01}
    assert values("coco_attentive_probe", "cae", "tokens", attentive) == {"top1_best": 95.5}
    assert values("coco_attentive_probe", "cae", "tokens", {**attentive, "base_lr": 0.1}) == {}


def test_mae_compares_only_with_the_official_token_shuffle():
    """docs/protocols.md#mae-token-shuffle: Table 3's MAE numbers come from a forward pass with shuffled
    patch tokens."""
    assert values("cub_part_retrieval", "mae", "patch_mean", {**OFFICIAL, "mae_token_shuffle": True}) == {"AP": 28.5}
    assert values("cub_part_retrieval", "mae", "patch_mean", {**OFFICIAL, "mae_token_shuffle": False}) == {}
    assert values("cub_part_retrieval", "mae", "patch_mean", OFFICIAL) == {}        # not recorded: no claim
    assert values("cub_part_retrieval", "dino", "patch_mean", OFFICIAL) == {"AP": 48.9}  # other models unaffected


def test_reference_values_list_every_paper_model():
    refs = reference_values("cub_part_retrieval", "AP", "patch_mean")
    assert {k: v.value for k, v in refs.items()} == {
        "deit": 35.0, "mocov3": 50.8, "dino": 48.9, "beit": 27.9, "mae": 28.5, "cae": 58.0, "ibot": 49.3}
    assert set(reference_values("coco_part_retrieval", "AP", "projection")) == {"mocov3", "dino", "ibot"}
    assert reference_values("cub_part_retrieval", "AP", "cls") == {}


def test_provenance_names_paper_table_and_assumptions():
    match = lookup(task="coco_part_retrieval", model="ibot", feature="projection", protocol=OFFICIAL)
    source = match.sources["AP"]
    assert re.search(r"ICLR 2023.*Table 3, iBOT, Retrieval COCO Projected = 41.5", source)
    assert "self-match included" in source and "coco_dist_scope not recorded" in source


def test_every_recorded_crop_and_probe_setting_must_be_the_papers():
    """A number is compared only with the measurement it reproduces: any recorded deviation removes it."""
    assert values("cub_part_retrieval", "dino", "patch_mean", {**OFFICIAL, "dist_filter": "official",
                  "crop_shift": 0.0, "input_size": 224, "precision": "fp32"}) == {"AP": 48.9}
    for change in ({"dist_filter": "none"}, {"crop_shift": 0.5}, {"input_size": 112},
                   {"precision": "bf16-autocast"}):
        assert values("cub_part_retrieval", "dino", "patch_mean", {**OFFICIAL, **change}) == {}, change
    assert values("coco_part_retrieval", "dino", "patch_mean", {**OFFICIAL, "coco_dist_scope": "person"}) == {}
    attentive = {"crop": "official-code", "attentive_variant": "partaware", "attentive_bn_eval": "batch",
                 "eval_batch_size": 256, "tokens": "all", "num_heads": 12}
    assert values("cub_attentive_probe", "dino", "tokens", attentive) == {"top1_best": 95.2}
    for change in ({"attentive_bn_eval": "running"}, {"eval_batch_size": 16}, {"tokens": "patch"},
                   {"num_heads": 1}, {"crop_shift": 0.25}):
        assert values("cub_attentive_probe", "dino", "tokens", {**attentive, **change}) == {}, change


def test_dino_values_say_which_branch_is_assumed():
    match = lookup(task="cub_part_retrieval", model="dino", feature="patch_mean",
                   protocol={**OFFICIAL, "weights_branch": "student"})
    assert match.values == {"AP": 48.9} and "teacher or student" in match.sources["AP"]
