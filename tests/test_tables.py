"""The paper's tables from records: real probe runs on generated data with the golden checkpoints, read back
against the record files themselves; per-query and per-class artifacts against their records; LaTeX and
Markdown that a compiler and a renderer take."""
from __future__ import annotations

import csv
import hashlib
import json
import re
from pathlib import Path

import pytest

from analysis import tables
from conftest import golden_model_args, run_cli, write_record
from probes import attentive_probe, linear_probe, object_retrieval, part_retrieval, part_segmentation
from probes.artifacts import read_table
from probes.data.synth import synth
from probes.results import iter_record_paths, make_record

pytestmark = pytest.mark.usefixtures("one_thread")

# The paper's Table 3 columns as the suite names them (docs/protocols.md#published-values, probes/published.py
# docstring), written out by hand: (task, feature, metric) -> column.
TABLE3 = {("cub_part_retrieval", "patch_mean", "AP"): "Retrieval CUB Encoded",
          ("cub_part_retrieval", "projection", "AP"): "Retrieval CUB Projected",
          ("coco_part_retrieval", "patch_mean", "AP"): "Retrieval COCO Encoded",
          ("coco_part_retrieval", "projection", "AP"): "Retrieval COCO Projected",
          ("cub_linear_probe", "cls", "top1_best"): "Classification CUB Linear",
          ("cub_attentive_probe", "tokens", "top1_best"): "Classification CUB Attentive",
          ("coco_linear_probe", "cls", "top1_best"): "Classification COCO Linear",
          ("coco_attentive_probe", "tokens", "top1_best"): "Classification COCO Attentive"}
GOLDENS = ("dino_vit_full", "mocov3_vit", "deit_vit")


@pytest.fixture(scope="module")
def golden_results(tmp_path_factory, shared):
    """Real runs on generated CUB / COCO / CIFAR-10 with three golden checkpoints (random weights, 64 px): part
    retrieval (Encoded, and Projected for the two with a projection head), linear (+ kNN) and attentive probes,
    object retrieval, and one per-block run."""
    root = tmp_path_factory.mktemp("golden_tables")
    cub = synth("cub", root / "cub", seed=0, images=12)
    coco = synth("coco", root / "coco", seed=0, train_images=6, val_images=4)
    cifar = synth("cifar10", root / "cifar", seed=0, train_per_class=3, test_per_class=2)
    results = root / "results"
    common = ["--results", results, "--data-source", "synthetic", "--quiet"]
    for case in GOLDENS:
        model = golden_model_args(shared / "golden" / case)
        features = ["--feature", "patch_mean"] + (["--feature", "projection"] if case != "deit_vit" else [])
        run_cli(part_retrieval, *model, "--data-root", cub, *features, *common)
        run_cli(linear_probe, *model, "--data-root", cub, "--epochs", "2", "--train-batch-size", "8", *common)
        if case != "mocov3_vit":
            run_cli(attentive_probe, *model, "--data-root", cub, "--epochs", "1", "--train-batch-size", "8", *common)
    dino = golden_model_args(shared / "golden" / "dino_vit_full")
    run_cli(part_retrieval, *dino, "--dataset", "coco", "--data-root", coco, "--feature", "patch_mean",
            "--self-match", "both", *common)
    run_cli(part_retrieval, *dino, "--data-root", cub, "--feature", "patch_mean", "--block", "1", *common)
    run_cli(object_retrieval, *dino, "--dataset", "cifar10", "--data-root", cifar, "--feature", "patch_mean",
            "--self-match", "both", "--no-knn", *common)
    return results


def raw_records(folder) -> list[tuple[Path, dict]]:
    return [(p, json.loads(p.read_text())) for p in iter_record_paths(folder)]


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_table3_of_golden_runs_has_one_row_per_model_and_every_cell_is_its_record(golden_results, tmp_path):
    out = tmp_path / "tables"
    assert tables.main(["--results", str(golden_results), "--out", str(out), "--table", "3"]) == 0
    view = tables.build_table(tables.table_specs()["3"], tables.load_records([golden_results]))
    assert len(view.spec.columns) <= 10 and [c.label for c in view.spec.columns] == list(TABLE3.values())

    records = raw_records(golden_results)
    models = {r["checkpoint_sha256"] for _, r in records}
    rows = read_csv(out / "table3.csv")
    assert len(rows) == len(models) == len(GOLDENS) and len({row["checkpoint_sha256"] for row in rows}) == len(rows)
    # the cells a reader expects, decided from the raw JSON: one record per (model, column), final block only, the
    # paper's self-match (included) where a run has both
    expected = {}
    for _, r in sorted(records, key=lambda pr: pr[1]["protocol"].get("include_self") is not False):
        for (task, feature, metric), column in TABLE3.items():
            if r["task"] == task and r["feature"] == feature and r["block"] is None:
                expected[(r["checkpoint_sha256"], column)] = r["metrics"][f"{task}/{metric}"]
    by_sha = {row["checkpoint_sha256"]: row for row in rows}
    filled = {(sha, column) for sha, row in by_sha.items() for column in TABLE3.values() if row[column] != ""}
    assert filled == set(expected)
    for (sha, column), value in expected.items():
        assert float(by_sha[sha][column]) == value
        assert by_sha[sha][f"{column} published"] == "" and by_sha[sha][f"{column} delta"] == ""  # generated data
    # every cell names the record file it came from, and that file holds the number
    sources = read_csv(out / "table3.sources.csv")
    assert len(sources) == len(expected)
    for source in sources:
        record = json.loads(Path(source["path"]).read_text())
        assert record["metrics"][source["metric"]] == float(source["value"])
        assert float(by_sha[source["checkpoint_sha256"]][source["column"]]) == float(source["value"])
        assert "generated data" in source["differences"] and "input_size=64" in source["differences"]
    # golden files are all called checkpoint.pth: each record's model name says which file it is
    assert sorted(row["model"][:len("checkpoint-") + 8] for row in rows) == sorted(f"checkpoint-{sha[:8]}" for sha in models)


def test_every_retrieval_record_has_per_query_rows_whose_mean_is_its_ap(golden_results):
    retrieval = [(p, r) for p, r in raw_records(golden_results) if r["probe"] in ("part_retrieval", "object_retrieval")]
    assert {r["probe"] for _, r in retrieval} == {"part_retrieval", "object_retrieval"}
    assert len(retrieval) == 9
    for path, record in retrieval:
        queries = read_table(path.parent / record["artifacts"]["queries"])
        aps = [float(q["AP"]) for q in queries if q["AP"] != ""]       # queries without a positive have no AP
        assert aps and len(queries) >= len(aps)
        assert sum(aps) / len(aps) == pytest.approx(record["metrics"][f"{record['task']}/AP"], abs=1e-9), path
        assert all(len(q["topk"].split()) == len(q["topk_similarity"].split()) > 0 for q in queries)


def test_classification_records_have_a_per_class_table_summing_to_the_last_epoch(golden_results, tmp_path):
    probes = [(p, r) for p, r in raw_records(golden_results) if r["probe"] in ("linear_probe", "attentive_probe")]
    assert len(probes) == 5
    for path, record in probes:
        rows = read_table(path.parent / record["artifacts"]["per_class"])
        assert [row["class"] for row in rows] == ["right eye", "right leg", "left wing", "tail"]  # the CUB parts
        n, correct = sum(int(r["n"]) for r in rows), sum(int(r["correct"]) for r in rows)
        assert {r["class"]: int(r["n"]) for r in rows} == record["protocol"]["eval_counts"]   # the eval split
        assert n == record["protocol"]["num_eval"]
        assert 100.0 * correct / n == pytest.approx(record["metrics"][f"{record['task']}/top1_last"], abs=1e-9)
        for row in rows:
            assert float(row["accuracy"]) == pytest.approx(100.0 * int(row["correct"]) / int(row["n"]))
    out = tmp_path / "per_class"
    assert tables.main(["--results", str(golden_results), "--out", str(out), "--table", "3", "--per-class"]) == 0
    table = read_csv(out / "per_class.cub_linear_probe.csv")
    assert [row["class"] for row in table] == ["right eye", "right leg", "left wing", "tail"]
    assert len(table[0]) == 1 + 3                                      # one column per golden model's record


def test_segmentation_records_have_a_per_class_iou_table(tmp_path):
    lip = synth("lip", tmp_path / "lip", seed=0)
    record, = run_cli(part_segmentation, "--model", "colorstats", "--dataset", "lip", "--data-root", lip,
                      "--protocol", "dense", "--dense-input-size", "64", "--results", tmp_path / "results",
                      "--data-source", "synthetic", "--quiet")
    path, = iter_record_paths(tmp_path / "results")
    rows = read_table(path.parent / record.artifacts["per_class"])
    assert len(rows) == record.protocol["num_classes"] == 19
    for row in rows:
        key = f"{record.task}/IoU[{row['class']}]"
        if row["IoU"] == "":
            assert row["class"] in record.protocol["absent_classes"] and key not in record.metrics
        else:
            assert float(row["IoU"]) == pytest.approx(record.metrics[key], abs=1e-9)
    # and through the tables command: classes as rows, the record's IoU as the column
    table = tables.per_class_tables(tables.load_records([tmp_path / "results"]).current)[record.task]
    assert table.header == ["class", "colorstats IoU"]
    assert {row[0]: row[1] for row in table.rows} == {r["class"]: float(r["IoU"]) for r in rows if r["IoU"] != ""}


# ---------------------------------------------------------------------------------------------------
# Published values, footnotes, missing cells: records written with make_record for the paper's aliases
# ---------------------------------------------------------------------------------------------------

OFFICIAL = {"include_self": True, "crop": "official-code", "precision": "fp32", "preset": "partaware"}


def paper_record(folder, model, probe, dataset, metrics, feature, protocol, split="all"):
    info = {"name": model, "method": model, "arch": "vit_base_patch16_224",
            "checkpoint_sha256": hashlib.sha256(model.encode()).hexdigest()}
    record = make_record(probe=probe, dataset=dataset, split=split, encoder_info=info, feature=feature, block=None,
                         protocol=protocol, metrics=metrics, seed=0, wall_time_s=1.0, device="cpu")
    return write_record(record, folder, config={"model": {"model": model}, "data": {"data_root": f"/data/{dataset}"}})


@pytest.fixture
def paper_results(tmp_path):
    folder = tmp_path / "results"
    paper_record(folder, "dino", "part_retrieval", "cub", {"AP": 47.5}, "patch_mean", OFFICIAL)
    paper_record(folder, "dino", "part_retrieval", "cub", {"AP": 40.0}, "patch_mean", {**OFFICIAL, "include_self": False})
    paper_record(folder, "mocov3", "part_retrieval", "cub", {"AP": 45.0}, "patch_mean", {**OFFICIAL, "include_self": False})
    paper_record(folder, "deit", "part_retrieval", "cub", {"AP": 36.0}, "patch_mean", OFFICIAL)
    paper_record(folder, "dino", "linear_segmentation", "lip19", {"mIoU": 40.0, "mAcc": 50.0, "aAcc": 70.0}, "blocks",
                 {"seg_layers": [3, 5, 7, 11], "seg_upsample": "none"}, split="val")
    paper_record(folder, "deit", "dense_segmentation", "lip19", {"mIoU": 20.0, "mAcc": 30.0, "aAcc": 60.0}, "blocks",
                 {"seg_layers": [11]}, split="val")
    return folder


def test_published_values_deltas_footnotes_and_the_runs_that_fill_empty_cells(paper_results, tmp_path):
    out = tmp_path / "tables"
    assert tables.main(["--results", str(paper_results), "--out", str(out)]) == 0
    rows = {row["model"]: row for row in read_csv(out / "table3.csv")}
    assert list(rows) == ["DeiT", "MoCo v3", "DINO"]                          # the paper's row order
    dino = rows["DINO"]
    # the paper's protocol wins the cell over the self-excluded rerun, and carries the published value
    assert (float(dino["Retrieval CUB Encoded"]), float(dino["Retrieval CUB Encoded published"]),
            float(dino["Retrieval CUB Encoded delta"])) == (47.5, 48.9, pytest.approx(47.5 - 48.9))
    assert rows["MoCo v3"]["Retrieval CUB Encoded published"] == ""           # another protocol: no published value
    markdown = (out / "table3.md").read_text()
    shown = re.search(r"^\| DINO \| 47\.5 / 48\.9 \(-1\.4\) \[(\d+)\] \|", markdown, re.M)
    assert shown, markdown                          # the self-excluded rerun is named in the cell's footnote
    assert re.search(rf"^\[{shown.group(1)}\] 1 other run of this model fills this cell \(include_self differs\)",
                     markdown, re.M)
    assert "| MoCo v3 | 45.0 [1] |" in markdown
    footnote = re.search(r"^\[1\] (.*)$", markdown, re.M).group(1)
    assert footnote.startswith("include_self=False but the paper's protocol has True")
    assert "| DeiT | 36.0 / 35.0 (+1.0) | – |" in markdown                    # the paper's '-': no projection head
    # the runs that fill the empty cells, with each row's model options
    commands = (out / "table3.commands.sh").read_text().splitlines()
    assert "python -m probes.linear_probe --model dino --dataset cub --data-root /data/cub " \
           f"--results {paper_results}" in commands
    assert not any("--model deit" in c and "--feature projection" in c for c in commands)
    assert "Retrieval CUB Projected for MoCo v3, DINO:" in markdown
    # Table 4: the linear record is the paper's; a dense one fills its cells with a footnote saying so
    table4 = (out / "table4.md").read_text()
    assert "| DINO |" in table4 and "40.0 / 41.0 (-1.0)" in table4
    assert re.search(r"^\| DeiT \| +\|.*\| 20\.0 \[1,2\] \|", table4, re.M)
    assert "[1] dense kNN seg. protocol, not the paper's linear seg. one" in table4
    # Tables 1 and 2: no record, a template command per column
    assert "(no record of this table's tasks)" in (out / "table1.md").read_text()
    assert "--preset cae-linear" in (out / "table1.commands.sh").read_text()


def latex_rows(text: str) -> list[str]:
    body = text[text.index("\\toprule"):text.index("\\bottomrule")]
    return [line for line in body.splitlines() if line.rstrip().endswith("\\\\")]


def latex_width(row: str) -> int:
    """Columns a tabular row spans: cells split on unescaped &, a \\multicolumn{n} counting n."""
    cells = re.split(r"(?<!\\)&", row.rstrip().removesuffix("\\\\"))
    return sum(int(m.group(1)) if (m := re.match(r"\s*\\multicolumn\{(\d+)\}", cell)) else 1 for cell in cells)


def test_latex_is_booktabs_with_balanced_rows_and_escaped_text(paper_results, golden_results, tmp_path):
    out = tmp_path / "tables"
    assert tables.main(["--results", str(paper_results), str(golden_results), "--out", str(out)]) == 0
    for key, n_columns in (("3", 8), ("1", 2), ("4", 9), ("2", 3)):
        text = (out / f"table{key}.tex").read_text()
        assert re.search(rf"\\begin{{tabular}}{{l{'r' * n_columns}}}", text)
        order = [text.index(rule) for rule in ("\\begin{tabular}", "\\toprule", "\\midrule", "\\bottomrule",
                                                 "\\end{tabular}")]
        assert order == sorted(order) and text.count("\\toprule") == text.count("\\bottomrule") == 1
        rows = latex_rows(text)
        assert rows and all(latex_width(row) == 1 + n_columns for row in rows), key
        assert not re.search(r"(?<!\\)_", text.replace("\\_", "")), "an unescaped underscore"
        body = text.split("\n", 1)[1]                          # after the comment line naming the packages
        assert not re.search(r"(?<!\\)(#|%(?!$))", body, re.M), "an unescaped % or # (a % may end a line)"
        assert "\\resizebox{" in body and "\\end{tabular}}" in body
        assert text.count("{") == text.count("}")
    table3 = (out / "table3.tex").read_text()
    assert "checkpoint-" in table3 and "input\\_size=64" in table3 and "47.5 / 48.9 ($-1.4$)" in table3


def test_markdown_renders_as_a_table(paper_results, tmp_path):
    out = tmp_path / "tables"
    assert tables.main(["--results", str(paper_results), "--out", str(out), "--table", "3"]) == 0
    text = (out / "table3.md").read_text()
    table_lines = [line for line in text.splitlines() if line.startswith("|")]
    pipes = {len(re.findall(r"(?<!\\)\|", line)) for line in table_lines}
    assert pipes == {1 + 1 + 8} and re.fullmatch(r"\|---\|(---:\|){8}", table_lines[1])
    markdown_it = pytest.importorskip("markdown_it")
    html = markdown_it.MarkdownIt("commonmark").enable("table").render(text)
    assert html.count("<table>") == 1 and len(re.findall(r"<th[ >]", html)) == 9
    assert html.count("<tr>") == 1 + 3 and re.search(r"<td>47.5 / 48.9 \(-1.4\) \[\d+\]</td>", html.replace(' style="text-align:right"', ""))


def test_the_partprobe_tables_command_prints_markdown(paper_results, capsys):
    from probes.__main__ import main as partprobe
    assert partprobe(["tables", "--results", str(paper_results), "--table", "4"]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("**Table 4.** Part-level linear semantic segmentation")
    assert "| Model | ADE20K-Part (209) mIoU |" in printed


def test_a_run_ends_with_its_summary_files_and_next_step(cub_root, tmp_path, capsys):
    run_cli(part_retrieval, "--model", "colorstats", "--input-size", "32", "--data-root", cub_root, "--feature", "cls",
            "--self-match", "both", "--results", tmp_path / "results", "--data-source", "synthetic", "--quiet")
    printed = capsys.readouterr().out
    assert "part_retrieval   cls            self=in   AP" in printed
    assert re.search(r"records written to .*: 2 record file\(s\), config.json, artifacts items.csv, "
                     r"queries.cls.excluded.csv, queries.cls.included.csv", printed)
    assert f"tables and leaderboard: python -m analysis.tables --results {tmp_path / 'results'}" in printed
    assert "generated data: these numbers are never compared with the paper" in printed


def test_latex_compiles_where_a_tex_installation_exists(paper_results, golden_results, tmp_path):
    import shutil
    import subprocess

    pdflatex = shutil.which("pdflatex")
    if pdflatex is None:
        pytest.skip("no pdflatex on this machine (the structural test above still runs)")
    out = tmp_path / "tables"
    assert tables.main(["--results", str(paper_results), str(golden_results), "--out", str(out)]) == 0
    inputs = "\n".join(f"\\input{{{out / f'table{key}.tex'}}}" for key in tables.TABLE_ORDER)
    (tmp_path / "doc.tex").write_text("\\documentclass[twocolumn]{article}\n\\usepackage[T1]{fontenc}\n"
                                      "\\usepackage{booktabs}\n\\usepackage{graphicx}\n\\begin{document}\n"
                                      f"{inputs}\n\\end{{document}}\n")
    done = subprocess.run([pdflatex, "-interaction=nonstopmode", "-halt-on-error", "doc.tex"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-3000:]
    assert (tmp_path / "doc.pdf").stat().st_size > 1000


def test_a_cell_with_several_runs_says_so_and_the_table_asks_for_no_impossible_run(tmp_path):
    """Two runs of one model on two CUB folders fill one cell: the cell carries a footnote naming what differs
    (not only sources.csv); a model whose default run wrote no projection record gets the paper's '-' under
    Projected instead of a command that would fail; the MODEL line is the shown record's."""
    results = tmp_path / "results"
    for seed, size in ((0, "48"), (1, "32")):
        cub = synth("cub", tmp_path / f"cub{seed}", seed=seed, images=8)
        run_cli(part_retrieval, "--model", "colorstats", "--data-root", cub, "--input-size", size,
                "--results", results, "--data-source", "synthetic", "--quiet")
    out = tmp_path / "tables"
    assert tables.main(["--results", str(results), "--out", str(out), "--table", "3"]) == 0
    (row,) = read_csv(out / "table3.csv")
    sources = {s["column"]: s for s in read_csv(out / "table3.sources.csv")}
    shown = json.loads(Path(sources["Retrieval CUB Encoded"]["path"]).read_text())
    assert float(row["Retrieval CUB Encoded"]) == shown["metrics"]["cub_part_retrieval/AP"]
    assert sources["Retrieval CUB Encoded"]["other_records"] == "1"
    markdown = (out / "table3.md").read_text()
    note = next(line for line in markdown.splitlines() if "other run of this model fills this cell" in line)
    assert "data" in note and "input_size" in note and "seed" not in note.split("(")[1].split(")")[0]
    number = re.match(r"\[(\d+)\]", note).group(1)
    cell = next(line for line in markdown.splitlines() if line.startswith("| colorstats"))
    encoded = cell.split("|")[1 + [c.label for c in tables.table_specs()["3"].columns].index("Retrieval CUB Encoded") + 1]
    assert f"[{number}]" in encoded.replace(" ", "").replace(",", "],[") or number in encoded
    assert row["Retrieval CUB Projected"] == "" and "projection" not in (out / "table3.commands.sh").read_text()
    assert f"--input-size {shown['protocol']['input_size']}" in markdown     # the MODEL options of the run shown
    shown_root = json.loads((Path(sources["Retrieval CUB Encoded"]["path"]).parent / "config.json").read_text())
    assert f"--data-root {shown_root['data']['data_root']} " in (out / "table3.commands.sh").read_text()
