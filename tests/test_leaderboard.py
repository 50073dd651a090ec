"""Leaderboard export: the CSV equals the records, merging never loses, duplicates or overwrites."""
from __future__ import annotations

import csv
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from analysis import leaderboard
from probes.results import RunRecord, make_record, seal
from conftest import write_record

SHA = "ab" * 32
REPO = Path(__file__).resolve().parents[1]


def write(folder, model, probe="part_retrieval", dataset="cub", feature="patch_mean", block=None, protocol=None,
          metrics=None, seed=None, sha=None):
    info = {"name": model, "method": model.upper(), "arch": "vit_base_patch16_224",
            "checkpoint_sha256": SHA if sha is None and model == "dino" else (sha or "")}
    record = make_record(probe=probe, dataset=dataset, split="all", encoder_info=info, feature=feature, block=block,
                         protocol=protocol if protocol is not None else {"include_self": True, "crop": "official-code"},
                         metrics=metrics or {"AP": 40.0, "mAP": 39.0}, seed=seed, wall_time_s=1.0, device="cpu")
    return write_record(record, folder, config={"model": model})


@pytest.fixture
def results(tmp_path):
    """Two folders of records: two models, two features, both self-match modes, per-block runs, an object-level
    task, and one configuration run twice (the rerun)."""
    a, b = tmp_path / "a", tmp_path / "b"
    for i, model in enumerate(("dino", "colorstats")):
        for feature in ("patch_mean", "cls"):
            for include_self in (True, False):
                write(a, model, feature=feature, protocol={"include_self": include_self, "crop": "official-code"},
                      metrics={"AP": 30.0 + i + include_self + (feature == "cls") / 4, "mAP": 20.0 + i})
        write(b, model, probe="object_retrieval", dataset="coco", feature="cls", protocol={"k": 20},
              metrics={"AP": 60.0 + i, "P@10": 70.5 + i, "AP[traffic light]": 50.0 + i})
    for block in range(3):
        write(b, "dino", block=block, metrics={"AP": 10.0 + block})
    rerun = write(b, "colorstats", probe="object_retrieval", dataset="coco", feature="cls", protocol={"k": 20},
                  metrics={"AP": 99.0, "P@10": 98.0, "AP[traffic light]": 97.0})
    return [a, b], rerun


def read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames), list(reader)


def raw_records(folders) -> list[dict]:
    """Every record JSON under the folders, parsed directly (not through the suite's loader)."""
    return [json.loads(p.read_text()) for folder in folders for p in sorted(Path(folder).rglob("*.json"))
            if not p.name.endswith("config.json")]


def expected_column(rec: dict, metric: str) -> str:
    """The column name each fixture record must land in, written out by hand for this fixture: only the
    final-block part-retrieval groups mix two protocols (include_self), so only they carry a variant."""
    parts = [rec["feature"]]
    if rec["block"] is not None:
        parts.append(f"block={rec['block']}")
    elif rec["task"] == "cub_part_retrieval":
        parts.append(f"include_self={str(rec['protocol']['include_self']).lower()}")
    return f"{metric} [{' '.join(parts)}]"


def test_csv_equals_the_records(results, tmp_path):
    folders, _ = results
    out = tmp_path / "board.csv"
    assert leaderboard.main(["--results", *map(str, folders), "--out", str(out)]) == 0
    header, rows = read_csv(out)
    by_model = {row["model"]: row for row in rows}
    assert len(rows) == 2 and set(by_model) == {"dino", "colorstats"}

    # latest `created` per config_hash, decided from the raw JSON
    latest: dict[str, dict] = {}
    for rec in raw_records(folders):
        if rec["config_hash"] not in latest or rec["created"] > latest[rec["config_hash"]]["created"]:
            latest[rec["config_hash"]] = rec
    expected_cells = {}
    for rec in latest.values():
        for metric, value in rec["metrics"].items():
            column = expected_column(rec, metric)
            expected_cells[(rec["model"], column)] = value
            if metric in rec["published"]:
                expected_cells[(rec["model"], f"{column} published")] = rec["published"][metric]
                expected_cells[(rec["model"], f"{column} delta")] = rec["delta"][metric]

    for (model, column), value in expected_cells.items():
        assert float(by_model[model][column]) == value, (model, column)
    filled = {(row["model"], h) for row in rows for h in header[4:] if row[h] != ""}
    assert filled == set(expected_cells), "a cell without a record, or a record without a cell"
    assert set(header[4:]) == {c for _, c in expected_cells}
    assert by_model["colorstats"]["coco_object_retrieval/AP [cls]"] == "99.0"  # the rerun won
    assert by_model["dino"]["cub_part_retrieval/AP [patch_mean include_self=true] published"] == "48.9"
    assert by_model["dino"]["checkpoint_sha256"] == SHA and by_model["colorstats"]["checkpoint_sha256"] == ""


def test_columns_sidecar_describes_every_column(results, tmp_path):
    folders, _ = results
    out = tmp_path / "board.csv"
    summary = leaderboard.export(folders, out)
    header, _ = read_csv(out)
    _, described = read_csv(summary.columns_path)
    assert [d["column"] for d in described] == header[4:]
    column = next(d for d in described if d["column"] == "cub_part_retrieval/AP [cls include_self=false]")
    assert json.loads(column["protocol"]) == {"crop": "official-code", "include_self": False}
    assert (column["task"], column["feature"], column["variant"]) == ("cub_part_retrieval", "cls", "include_self=false")


def test_rerun_rule_is_stated_and_superseded_runs_are_listed(results, tmp_path, capsys):
    folders, rerun_path = results
    out = tmp_path / "board.csv"
    assert leaderboard.main(["--results", *map(str, folders), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "latest `created` wins" in printed and "board.superseded.csv" in printed
    _, superseded = read_csv(tmp_path / "board.superseded.csv")
    assert len(superseded) == 1
    loser = superseded[0]
    assert loser["reason"] == "rerun" and loser["kept_path"] == str(rerun_path)
    assert json.loads(Path(loser["path"]).read_text())["metrics"]["coco_object_retrieval/AP"] == 61.0
    assert "latest `created` wins" in loser["rule"]


def test_long_form_has_one_row_per_record(results, tmp_path):
    folders, rerun_path = results
    out = tmp_path / "long.csv"
    assert leaderboard.main(["--results", *map(str, folders), "--out", str(out), "--long"]) == 0
    _, rows = read_csv(out)
    raw = {rec["run_id"]: rec for rec in raw_records(folders)}
    assert sorted(row["run_id"] for row in rows) == sorted(raw)
    for row in rows:
        rec = raw[row["run_id"]]
        for field in ("config_hash", "created", "task", "model", "feature", "checkpoint_sha256", "git_commit"):
            assert row[field] == rec[field]
        assert row["block"] == ("" if rec["block"] is None else str(rec["block"]))
        assert json.loads(row["protocol"]) == rec["protocol"]
        for metric, value in rec["metrics"].items():
            assert float(row[metric]) == value
        assert all(row[m] == "" for m in rec_metric_columns(rows) if m not in rec["metrics"])
    statuses = {row["run_id"]: (row["status"], row["superseded_by"]) for row in rows}
    winner = json.loads(Path(rerun_path).read_text())["run_id"]
    assert sorted(s for s, _ in statuses.values()).count("superseded") == 1
    assert [by for s, by in statuses.values() if s == "superseded"] == [winner]


def rec_metric_columns(rows) -> list[str]:
    return [c for c in rows[0] if "/" in c and not c.endswith(("published", "delta")) and not c.startswith("protocol")]


def test_identical_copies_in_two_folders_are_kept_once(results, tmp_path):
    folders, _ = results
    copy = tmp_path / "copy_of_b"
    shutil.copytree(folders[1], copy)
    single, merged = tmp_path / "single.csv", tmp_path / "merged.csv"
    leaderboard.export(folders, single)
    summary = leaderboard.export([*folders, copy], merged)
    assert merged.read_text() == single.read_text()
    n_copies = len([p for p in copy.rglob("*.json") if not p.name.endswith("config.json")])
    _, superseded = read_csv(tmp_path / "merged.superseded.csv")
    assert sum(r["reason"] == "identical copy" for r in superseded) == n_copies
    assert summary.n_records == len(raw_records(folders))


def test_same_run_with_different_content_is_an_error_naming_both_files(results, tmp_path, capsys):
    folders, _ = results
    copy = tmp_path / "edited"
    shutil.copytree(folders[1], copy)
    edited = next(p for p in sorted(copy.rglob("*.json")) if not p.name.endswith("config.json"))
    data = json.loads(edited.read_text())
    data["wall_time_s"] += 1               # a valid record (digest recomputed) that says something else
    edited.write_text(json.dumps(seal(RunRecord(**data)).to_dict()))
    with pytest.raises(leaderboard.LeaderboardError, match="different content") as err:
        leaderboard.export([folders[1], copy], tmp_path / "x.csv")
    original = folders[1] / edited.relative_to(copy)
    assert str(edited) in str(err.value) and str(original) in str(err.value)
    assert leaderboard.main(["--results", str(folders[1]), str(copy), "--out", str(tmp_path / "y.csv")]) == 2
    assert not (tmp_path / "y.csv").exists()


def test_malformed_record_file_stops_the_export_naming_file_and_field(results, tmp_path, capsys):
    folders, _ = results
    bad = next(p for p in sorted(folders[0].rglob("*.json")) if not p.name.endswith("config.json"))
    data = json.loads(bad.read_text())
    data["block"] = "last"
    bad.write_text(json.dumps(data))
    out = tmp_path / "board.csv"
    assert leaderboard.main(["--results", *map(str, folders), "--out", str(out)]) == 2
    error = capsys.readouterr().err
    assert str(bad) in error and "'block'" in error and "expected a non-negative integer or null" in error
    assert not out.exists()
    # --skip-invalid reports the file and exports the rest
    assert leaderboard.main(["--results", *map(str, folders), "--out", str(out), "--skip-invalid"]) == 0
    printed = capsys.readouterr().out
    assert f"skipped invalid record: {bad}" in printed
    summary = leaderboard.export(folders, tmp_path / "long.csv", long=True, skip_invalid=True)
    assert summary.n_records == len(raw_records(folders)) - 1


def test_missing_folder_and_empty_folder_are_errors(tmp_path):
    with pytest.raises(leaderboard.LeaderboardError, match="does not exist"):
        leaderboard.export([tmp_path / "nope"], tmp_path / "x.csv")
    (tmp_path / "empty").mkdir()
    with pytest.raises(leaderboard.LeaderboardError, match="no result records"):
        leaderboard.export([tmp_path / "empty"], tmp_path / "x.csv")


def test_markdown_states_the_rule(results, tmp_path):
    folders, _ = results
    out = tmp_path / "board.md"
    assert leaderboard.main(["--results", *map(str, folders), "--out", str(out)]) == 0
    text = out.read_text()
    assert text.startswith("| model | method | arch | checkpoint_sha256 |")
    assert "| dino |" in text and "48.90" in text
    assert "latest `created` wins" in text and "superseded reruns: 1" in text


def test_two_checkpoints_under_one_name_are_two_rows(tmp_path):
    write(tmp_path, "mine", sha="11" * 32, metrics={"AP": 1.0})
    write(tmp_path, "mine", sha="22" * 32, metrics={"AP": 2.0})
    leaderboard.export([tmp_path], tmp_path / "b.csv")
    _, rows = read_csv(tmp_path / "b.csv")
    assert sorted((r["checkpoint_sha256"][:2], r["cub_part_retrieval/AP [patch_mean]"]) for r in rows) == \
        [("11", "1.0"), ("22", "2.0")]


def test_seeds_and_list_options_stay_apart(tmp_path):
    for seed in (0, 1):
        write(tmp_path, "m", probe="linear_probe", feature="cls", protocol={"layers": [3, 5]}, seed=seed,
              metrics={"top1_best": 50.0 + seed})
    write(tmp_path, "m", probe="linear_probe", feature="cls", protocol={"layers": [11]}, seed=0,
          metrics={"top1_best": 70.0})
    leaderboard.export([tmp_path], tmp_path / "b.csv")
    header, rows = read_csv(tmp_path / "b.csv")
    assert header[4:] == ["cub_linear_probe/top1_best [cls seed=0 layers=[11]]",
                          "cub_linear_probe/top1_best [cls seed=0 layers=[3,5]]",
                          "cub_linear_probe/top1_best [cls seed=1 layers=[3,5]]"]
    assert [rows[0][h] for h in header[4:]] == ["70.0", "50.0", "51.0"]


def test_different_protocols_of_different_models_never_share_a_column(tmp_path):
    write(tmp_path, "a", protocol={"crop": "paper", "normalize": "model", "normalize_mean": [0.5, 0.5, 0.5]})
    write(tmp_path, "b", protocol={"crop": "official-code", "normalize": "model", "normalize_mean": [0.4, 0.4, 0.4]})
    write(tmp_path, "c", protocol={"crop": "official-code", "normalize": "model", "normalize_mean": [0.3, 0.3, 0.3]})
    leaderboard.export([tmp_path], tmp_path / "b.csv")
    header, rows = read_csv(tmp_path / "b.csv")
    # crop splits the columns; each model's own mean (derived from normalize=model) does not
    assert header[4:] == ["cub_part_retrieval/AP [patch_mean crop=official-code]",
                          "cub_part_retrieval/mAP [patch_mean crop=official-code]",
                          "cub_part_retrieval/AP [patch_mean crop=paper]",
                          "cub_part_retrieval/mAP [patch_mean crop=paper]"]
    filled = {row["model"]: [h for h in header[4:] if row[h]] for row in rows}
    assert filled == {"a": header[6:8], "b": header[4:6], "c": header[4:6]}


def test_filters_keep_only_the_matching_records_and_metrics(results, tmp_path):
    folders, _ = results
    out = tmp_path / "board.csv"
    assert leaderboard.main(["--results", *map(str, folders), "--out", str(out), "--probe", "part_retrieval",
                             "--feature", "cls", "--metric", "AP"]) == 0
    header, rows = read_csv(out)
    assert header[4:] == ["cub_part_retrieval/AP [cls include_self=false]", "cub_part_retrieval/AP [cls include_self=true]"]
    assert {r["model"] for r in rows} == {"dino", "colorstats"}
    assert leaderboard.main(["--results", *map(str, folders), "--out", str(out), "--dataset", "coco",
                             "--metric", "AP*"]) == 0
    header, _ = read_csv(out)
    assert header[4:] == ["coco_object_retrieval/AP [cls]", "coco_object_retrieval/AP[traffic light] [cls]"]
    assert leaderboard.main(["--results", *map(str, folders), "--out", str(out), "--dataset", "lip19"]) == 2


def test_a_superseded_rerun_that_differs_beyond_the_tolerance_is_a_warning(tmp_path, capsys):
    same = dict(model="dino", probe="object_retrieval", dataset="coco", feature="cls", protocol={"k": 20})
    first = write(tmp_path, **same, metrics={"AP": 60.0, "P@10": 70.0})
    kept = write(tmp_path, **same, metrics={"AP": 60.0, "P@10": 70.5})              # 0.5 points apart: a warning
    quiet = dict(same, dataset="cifar10")
    write(tmp_path, **quiet, metrics={"AP": 50.0})
    write(tmp_path, **quiet, metrics={"AP": 50.005})                                # within 0.01 points: none
    out = tmp_path / "board.csv"
    assert leaderboard.main(["--results", str(tmp_path), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    warnings = [line for line in printed.splitlines() if line.startswith("warning: superseded rerun")]
    assert warnings == [f"warning: superseded rerun {first} differs from the kept run {kept} by 0.5 points in "
                        f"coco_object_retrieval/P@10 (tolerance 0.01 points; same config_hash "
                        f"{json.loads(kept.read_text())['config_hash']}: find out which one is right)"]
    assert "more than 0.01 percentage points is a warning" in printed            # the rule says so
    _, superseded = read_csv(tmp_path / "board.superseded.csv")
    by_path = {row["path"]: row for row in superseded}
    assert by_path[str(first)]["beyond_tolerance"] == "true" and float(by_path[str(first)]["max_abs_metric_difference"]) == 0.5
    assert by_path[str(first)]["metric_of_max_difference"] == "coco_object_retrieval/P@10"
    assert [row["beyond_tolerance"] for p, row in by_path.items() if p != str(first)] == ["false"]
    assert all(row["tolerance"] == "0.01" for row in superseded)


def test_records_whose_digest_does_not_match_are_refused_and_each_is_named(results, tmp_path, capsys):
    folders, _ = results
    paths = [p for p in sorted(folders[0].rglob("*.json")) if not p.name.endswith("config.json")][:2]
    for path in paths:                                   # a hand edit: the number changes, the digest does not
        data = json.loads(path.read_text())
        key = next(iter(data["metrics"]))
        data["metrics"][key] += 10.0
        path.write_text(json.dumps(data))
    out = tmp_path / "board.csv"
    done = subprocess.run([sys.executable, "-m", "analysis.leaderboard", "--results", *map(str, folders),
                           "--out", str(out)], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    error = done.stderr
    assert error.startswith("error: 2 invalid record file(s), nothing exported (--skip-invalid exports the rest)")
    for path in paths:
        assert re.search(rf"{re.escape(str(path))}: field 'content_sha256': expected [0-9a-f]{{64}} \(the digest of "
                         r"the record's metrics, protocol and identity; the record was changed after it was written\)",
                         error)
    assert not out.exists()
    assert leaderboard.main(["--results", *map(str, folders), "--out", str(out), "--skip-invalid"]) == 0
    printed = capsys.readouterr().out
    for path in paths:
        assert f"skipped invalid record: {path}: field 'content_sha256'" in printed
    edited_runs = {json.loads(p.read_text())["run_id"] for p in paths}
    summary = leaderboard.export(folders, tmp_path / "long.csv", long=True, skip_invalid=True)
    _, long_rows = read_csv(summary.out)
    assert not edited_runs & {row["run_id"] for row in long_rows}


def seg_record(folder, model, probe, dataset, miou, absent, reported_iter=None, sha=None):
    protocol = {"seg_layers": [3, 5, 7, 11], "seg_upsample": "none", "crop_size": 512, "absent_classes": absent}
    if reported_iter is not None:
        protocol["reported_iter"] = reported_iter
    return write(folder, model, probe=probe, dataset=dataset, feature="blocks", protocol=protocol,
                 metrics={"mIoU": miou, "mAcc": miou + 10, "aAcc": 70.0, "IoU[wheel]": miou - 1}, sha=sha)


def test_segmentation_columns_one_per_probe_dataset_and_metric(tmp_path):
    """What a run found (absent classes, the reported iteration) never splits a column; the probe and the dataset
    do; a paper model's linear ADE20K-Part-209 record carries Table 4's value."""
    for i, model in enumerate(("dino", "mine")):
        for dataset in ("ade20k_object59", "ade20k_part209", "pascal_object16", "pascal_part193"):
            for probe in ("linear_segmentation", "finetune_segmentation", "dense_segmentation"):
                seg_record(tmp_path, model, probe, dataset, 30.0 + i, absent=["tail"] if i else [],
                           reported_iter=None if probe == "dense_segmentation" else 1000 * (i + 1),
                           sha="" if model == "mine" else None)
    out = tmp_path / "board.csv"
    assert leaderboard.main(["--results", str(tmp_path), "--out", str(out), "--metric", "mIoU"]) == 0
    header, rows = read_csv(out)
    expected = [f"{d}_{p}/mIoU [blocks]" for d in ("ade20k_object59", "ade20k_part209", "pascal_object16",
                                                    "pascal_part193")
                for p in ("dense_segmentation", "finetune_segmentation", "linear_segmentation")]
    published = "ade20k_part209_linear_segmentation/mIoU [blocks]"
    assert [h for h in header[4:] if not h.endswith(("published", "delta"))] == expected
    by_model = {row["model"]: row for row in rows}
    assert all(by_model["mine"][c] == "31.0" and by_model["dino"][c] == "30.0" for c in expected)
    assert by_model["dino"][f"{published} published"] == "28.9" and by_model["mine"][f"{published} published"] == ""
    assert leaderboard.main(["--results", str(tmp_path), "--out", str(out), "--probe", "dense_segmentation",
                             "--metric", "IoU[*"]) == 0
    header, _ = read_csv(out)
    assert header[4:] == [f"{d}_dense_segmentation/IoU[wheel] [blocks]" for d in
                          ("ade20k_object59", "ade20k_part209", "pascal_object16", "pascal_part193")]
