"""The paper's tables from result records, as a reader reads the paper: one row per model in the paper's order,
the paper's columns, the reproduced value beside the published one and the delta.

    python -m analysis.tables --results DIR [DIR ...] [--table 3 1 4 2] [--out DIR] [--per-class]
    partprobe tables --results DIR ...

Tables (``probes/published.py`` maps each paper column to the suite's task, feature and metric, and says when a
published value applies):

* **Table 3** part retrieval AP (CUB, COCO; Encoded = ``patch_mean``, Projected = ``projection``) and part
  classification top-1 (best epoch; Linear = ``<dataset>_linear_probe`` on CLS, Attentive =
  ``<dataset>_attentive_probe``): 8 value columns.
* **Table 1** ImageNet linear (BN + Linear) and attentive (CAE) top-1.
* **Table 4** part segmentation mIoU, mAcc, aAcc on ADE20K-Part-209, Pascal-Part-193, LIP-19 (linear protocol;
  a fine-tuned or dense record fills a cell only when no linear one exists, with a footnote).
* **Table 2** ADE20K-150 object segmentation mIoU, mAcc, aAcc.

**A cell** holds one record's value: of the current records (the leaderboard's rerun rule) of the column's task,
feature and metric at the final block, the paper's measurement (a published value applies) first, else the one
with the fewest differences from the paper's protocol, then the latest. Every difference between that record
and the paper's protocol (the requirements ``probes/published.py`` checks, generated data, another split or
protocol) is a numbered footnote, never a column name. Cells print ``reproduced / published (delta)``; a
paper model's ``-`` (no projection head) prints as in the paper; a missing run leaves the cell empty, and the
command that would fill it is listed under the table (model, data root and results folder taken from the
configurations of the records that exist).

**Files** (``--out DIR``; without it the Markdown goes to stdout): ``table<N>.csv`` (compact, for machines:
per paper column the value, ``published`` and ``delta``), ``table<N>.md``, ``table<N>.tex`` (booktabs:
``\\usepackage{booktabs}``, ``graphicx``), ``table<N>.sources.csv`` (one row per filled cell: the record file it came from,
its value and its footnotes), ``table<N>.commands.sh`` (the runs that fill the empty cells, one a line). ``--per-class`` adds ``per_class.<task>.csv`` / ``.md``: classes as rows, one
column per record, from each record's ``per_class`` artifact (classification accuracy, segmentation IoU) or
its ``<metric>[<class>]`` metrics (part retrieval AP).

The wide leaderboard (``python -m analysis.leaderboard``) keeps every measured cell for machines.
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from analysis.leaderboard import LeaderboardError, LoadedRecord, RecordSet, Table, load_records, to_csv
from analysis.names import PROBES as PROBE_NAMES, model_labels, paper_order
from probes import published as paper
from probes.artifacts import read_table
from probes.fileio import write_bytes_atomic
from probes.results import RecordError

TABLE_ORDER = ("3", "1", "4", "2")
SCRIPTS = {"part_retrieval": "probes.part_retrieval", "linear_probe": "probes.linear_probe",
           "attentive_probe": "probes.attentive_probe", "linear_segmentation": "probes.part_segmentation",
           "finetune_segmentation": "probes.part_segmentation", "dense_segmentation": "probes.part_segmentation"}
SEG_TITLES = {"ade20k": "ADE20K (150 classes)", "ade20k_part209": "ADE20K-Part (209)",
              "pascal_part193": "Pascal-Part (193)", "lip19": "LIP (19)"}
CAPTIONS = {
    "3": "Part retrieval (AP, %) and part classification (top-1, %) on the keypoint-centred part patches of "
         "CUB-200-2011 and COCO",
    "1": "ImageNet-1k top-1 (%), linear probing (BN + Linear) and attentive probing (CAE protocol)",
    "4": "Part-level linear semantic segmentation (mIoU, mAcc, aAcc, %)",
    "2": "ADE20K object-level linear semantic segmentation, 150 classes (mIoU, mAcc, aAcc, %)",
}
CELL_FORMAT = "reproduced / published (delta)"


# ---------------------------------------------------------------------------------------------------
# The tables' shape, from probes.published
# ---------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Column:
    group: str                         # e.g. "Retrieval CUB"
    name: str                          # e.g. "Encoded"
    paper_column: str                  # the column as probes.published names it
    tasks: tuple[str, ...]             # the paper's task first, then tasks that may fill it with a footnote
    metric: str                        # unprefixed
    features: tuple[str, ...] | None   # None: any feature (segmentation)
    args: tuple[str, ...] = ()         # what the command that fills it adds to the script's defaults

    @property
    def label(self) -> str:
        return f"{self.group} {self.name}".strip()

    @property
    def dataset(self) -> str:
        return _dataset_of(self.tasks[0])


@dataclass(frozen=True)
class TableSpec:
    key: str
    title: str                         # "Table 3"
    caption: str
    columns: tuple[Column, ...]


def _dataset_of(task: str) -> str:
    probe = next(p for p in SCRIPTS if task.endswith(f"_{p}"))
    return task[: -len(probe) - 1]


def _probe_of(task: str) -> str:
    return next(p for p in SCRIPTS if task.endswith(f"_{p}"))


def _column(table: str, entry: paper.PublishedValue) -> Column:
    words = entry.column.split()
    if table == "Table 1":
        group, name = "ImageNet top-1", entry.column
    elif table in ("Table 2", "Table 4"):
        dataset = _dataset_of(entry.task)
        group, name = SEG_TITLES.get(dataset, dataset), words[-1]
    else:
        group, name = " ".join(words[:-1]), words[-1]
    tasks = (entry.task,)
    args: tuple[str, ...] = ()
    probe = _probe_of(entry.task)
    if probe == "linear_segmentation":
        dataset = _dataset_of(entry.task)
        tasks += (f"{dataset}_finetune_segmentation", f"{dataset}_dense_segmentation")
        args = ("--protocol", "linear")
    elif probe == "part_retrieval":
        args = ("--feature", entry.features[0])
    elif table == "Table 1":
        args = ("--preset", "cae-linear" if probe == "linear_probe" else "cae-attentive")
    return Column(group, name, entry.column, tasks, entry.metrics[0], entry.features, args)


def table_specs() -> dict[str, TableSpec]:
    """Tables 3, 1, 4, 2 with the paper's columns in the paper's order."""
    specs = {}
    for key in TABLE_ORDER:
        title = f"Table {key}"
        columns: dict[str, Column] = {}
        for entry in paper.PUBLISHED:
            if entry.table == title and entry.column not in columns:
                columns[entry.column] = _column(title, entry)
        if key == "3":      # the paper's order (PUBLISHED lists a model's columns; DeiT has no Projected ones)
            columns = {name: columns[name] for name in paper.TABLE3_COLUMNS}
        specs[key] = TableSpec(key, title, CAPTIONS[key], tuple(columns.values()))
    return specs


def _entries(table: str, column: str) -> list[paper.PublishedValue]:
    return [e for e in paper.PUBLISHED if e.table == table and e.column == column]


# ---------------------------------------------------------------------------------------------------
# Cells
# ---------------------------------------------------------------------------------------------------

@dataclass
class Cell:
    value: float
    published: float | None
    delta: float | None
    loaded: LoadedRecord
    metric_key: str                    # the record's prefixed metric name
    notes: list[str]                   # the record's differences from the paper's protocol (footnote texts)
    others: list["Cell"] = field(default_factory=list)   # other current records that could have filled the cell

    @property
    def alternatives(self) -> int:
        return len(self.others)


@dataclass
class Row:
    model: str
    checkpoint_sha256: str
    label: str
    cells: dict[str, Cell] = field(default_factory=dict)   # by Column.paper_column
    no_value: set[str] = field(default_factory=set)        # columns the paper leaves '-' for this model


@dataclass
class Missing:
    template: str                      # the command, MODEL standing for a row's model options
    rows: list[str]                    # the rows (labels) whose cells it fills
    columns: list[str]                 # the columns (labels) it fills

    def commands(self, model_options: dict[str, str]) -> list[str]:
        return [self.template.replace(MODEL, model_options[row]) for row in self.rows]


@dataclass
class PaperTable:
    spec: TableSpec
    rows: list[Row]
    footnotes: list[str]               # footnote n is footnotes[n - 1]
    marks: dict[tuple[str, str], list[int]]  # (row label, paper column) -> footnote numbers
    missing: list[Missing]
    model_options: dict[str, str]      # row label -> its model options on a command line


def differences(record, spec: TableSpec, column: Column) -> list[str]:
    """How the record's measurement differs from the paper's for this column, one sentence each."""
    notes = []
    if record.task != column.tasks[0]:
        notes.append(f"{PROBE_NAMES.get(record.probe, record.probe)} protocol, not the paper's "
                     f"{PROBE_NAMES.get(_probe_of(column.tasks[0]))} one")
    entries = _entries(spec.title, column.paper_column)
    alias = paper.paper_alias(record.model)
    # the record's own model's requirements, else those of a paper model without model-specific ones
    reference = next((e for e in entries if e.model == alias), None) or \
        next((e for e in entries if e.model != "mae"), entries[0])
    if reference.split is not None and record.split != reference.split:
        notes.append(f"split {record.split!r} (the paper's: {reference.split!r})")
    generated = record.is_generated
    if generated:
        notes.append("generated data (probes.data synth): never compared with the paper")
    for requirement in reference.requirements:
        if generated and requirement.option == "data_source":
            continue
        failure, _ = paper._check(requirement, record.protocol)
        if failure:
            notes.append(failure)
    return notes


def _candidates(current: Sequence[LoadedRecord], column: Column) -> list[tuple[LoadedRecord, str]]:
    out = []
    for loaded in current:
        r = loaded.record
        key = f"{r.task}/{column.metric}"
        if (r.task in column.tasks and r.block is None and key in r.metrics
                and (column.features is None or r.feature in column.features)):
            out.append((loaded, key))
    return out


def build_table(spec: TableSpec, record_set: RecordSet | Sequence[LoadedRecord],
                results_dirs: Sequence[str | Path] = ()) -> PaperTable:
    """One paper table from the current records (see the module docstring for which record fills a cell)."""
    current = list(record_set.current if isinstance(record_set, RecordSet) else record_set)
    labels = model_labels((r.record.model, r.record.checkpoint_sha256) for r in current)
    rows: dict[tuple[str, str], Row] = {}
    for column in spec.columns:
        by_row: dict[tuple[str, str], list[Cell]] = {}
        for loaded, key in _candidates(current, column):
            r = loaded.record
            cell = Cell(r.metrics[key], r.published.get(key), r.delta.get(key), loaded, key,
                        differences(r, spec, column))
            by_row.setdefault((r.model, r.checkpoint_sha256), []).append(cell)
        for row_key, cells in by_row.items():
            cells.sort(key=lambda c: (c.published is None, column.tasks.index(c.loaded.record.task), len(c.notes),
                                      _newest_first(c.loaded)))
            best = cells[0]
            best.others = cells[1:]
            if best.others:    # the table shows one of several runs: say so in the cell, not only in sources.csv
                best.notes = [*best.notes, _others_note(best)]
            row = rows.setdefault(row_key, Row(*row_key, labels[row_key]))
            row.cells[column.paper_column] = best
    ordered = sorted(rows.values(), key=lambda row: (paper_order(row.model), row.checkpoint_sha256))
    for row in ordered:
        alias = paper.paper_alias(row.model)
        if alias is not None:
            row.no_value = {c.paper_column for c in spec.columns
                            if c.paper_column not in row.cells
                            and not any(e.model == alias for e in _entries(spec.title, c.paper_column))}
    for row in ordered:
        if _has_no_projection(row, current):
            row.no_value |= {c.paper_column for c in spec.columns
                             if c.features == ("projection",) and c.paper_column not in row.cells}
    footnotes: list[str] = []
    marks: dict[tuple[str, str], list[int]] = {}
    for row in ordered:
        for column in spec.columns:
            cell = row.cells.get(column.paper_column)
            if cell is None:
                continue
            numbers = []
            for note in cell.notes:
                if note not in footnotes:
                    footnotes.append(note)
                numbers.append(footnotes.index(note) + 1)
            marks[(row.label, column.paper_column)] = sorted(numbers)
    model_options = {row.label: shlex.join(_model_args(row, current)) for row in ordered}
    missing = fill_commands(spec, ordered, current, results_dirs)
    return PaperTable(spec, ordered, footnotes, marks, missing, model_options)


def _others_note(shown: Cell) -> str:
    """What the other runs of a cell differ in from the one shown (data, seed, protocol options, ...)."""
    fields = ("data_sha256", "seed", "split", "feature", "task", "format", "arch")
    differ = set()
    for other in shown.others:
        a, b = shown.loaded.record, other.loaded.record
        differ |= {name.replace("_sha256", "") for name in fields if getattr(a, name) != getattr(b, name)}
        differ |= {key for key in set(a.protocol) | set(b.protocol) if a.protocol.get(key) != b.protocol.get(key)}
    count = len(shown.others)
    return (f"{count} other run{'s' if count > 1 else ''} of this model fill{'' if count > 1 else 's'} this cell "
            f"({', '.join(sorted(differ)) or 'the same configuration'} differ{'s' if len(differ) == 1 else ''}); "
            "shown: the one nearest the paper's protocol, then the newest; all are in the sources file")


def _has_no_projection(row: Row, current: Sequence[LoadedRecord]) -> bool:
    """A run of the row that measured every default feature wrote no projection record: the checkpoint has none."""
    for loaded in current:
        r = loaded.record
        if (r.model, r.checkpoint_sha256) != (row.model, row.checkpoint_sha256) or r.probe != "part_retrieval":
            continue
        protocol = _config(loaded).get("protocol") or {}
        if "features" in protocol and protocol["features"] is None and r.feature != "dense_patch":
            run = [o.record for o in current if o.path.parent == loaded.path.parent]   # one run folder
            return not any(o.feature == "projection" for o in run)
    return False


def _newest_first(loaded: LoadedRecord) -> tuple:
    import datetime as dt
    return (-dt.datetime.fromisoformat(loaded.record.created).timestamp(), loaded.record.run_id)


# ---------------------------------------------------------------------------------------------------
# The commands that fill the empty cells
# ---------------------------------------------------------------------------------------------------

def _config(loaded: LoadedRecord) -> dict:
    if loaded.config_path is None:
        return {}
    try:
        return json.loads(loaded.config_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}


def _model_args(row: Row, current: Sequence[LoadedRecord]) -> list[str]:
    """The model options of the row's runs, from the configuration beside a record the row shows (else any of
    the row's records)."""
    shown = [cell.loaded for cell in row.cells.values()]
    for loaded in [*shown, *current]:
        r = loaded.record
        if (r.model, r.checkpoint_sha256) != (row.model, row.checkpoint_sha256):
            continue
        model = _config(loaded).get("model")
        if not model:
            continue
        args = ["--model", str(model["model"])]
        for option in ("format", "arch", "arch_kwargs", "input_size"):
            value = model.get(option)
            if value not in (None, ""):
                text = value if isinstance(value, str) else json.dumps(value)
                args += [f"--{option.replace('_', '-')}", text]
        if model.get("branch") not in (None, "teacher"):
            args += ["--branch", str(model["branch"])]
        return args
    return ["--model", paper.paper_alias(row.model) or row.model]


def _data_args(dataset: str, current: Sequence[LoadedRecord], rows: Sequence[Row] = ()) -> list[str]:
    """--data-root (and --data-source) of a run on the same dataset (a record the table shows first), else a
    placeholder."""
    shown = [cell.loaded for row in rows for cell in row.cells.values()]
    for loaded in [*shown, *current]:
        if loaded.record.dataset != dataset:
            continue
        data = _config(loaded).get("data") or {}
        if data.get("data_root"):
            args = ["--data-root", str(data["data_root"])]
            if data.get("data_source") == "synthetic":
                args += ["--data-source", "synthetic"]
            return args
    return ["--data-root", f"/path/to/{dataset}"]


MODEL = "MODEL"


def fill_commands(spec: TableSpec, rows: Sequence[Row], current: Sequence[LoadedRecord],
                  results_dirs: Sequence[str | Path]) -> list[Missing]:
    """The runs that would fill the empty cells: per command (``MODEL`` for the model options), the rows that
    lack it and the columns it fills (one segmentation run fills mIoU, mAcc and aAcc of a dataset)."""
    results = ["--results", str(results_dirs[0])] if results_dirs else []
    by_command: dict[str, Missing] = {}
    for column in spec.columns:
        lacking = [row.label for row in rows
                   if column.paper_column not in row.cells and column.paper_column not in row.no_value]
        if rows and not lacking:
            continue
        probe = _probe_of(column.tasks[0])
        command = shlex.join(["python", "-m", SCRIPTS[probe], MODEL, "--dataset", column.dataset,
                              *_data_args(column.dataset, current, rows), *column.args, *results])
        missing = by_command.setdefault(command, Missing(command, [], []))
        missing.columns.append(column.label)
        missing.rows = sorted(set(missing.rows) | set(lacking), key=[r.label for r in rows].index)
    return list(by_command.values())


# ---------------------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------------------

def _number(value: float) -> str:
    return f"{value:.1f}"


def cell_text(cell: Cell | None, no_value: bool, marks: Sequence[int], latex: bool = False) -> str:
    if cell is None:
        return ("--" if latex else "–") if no_value else ""
    text = _number(cell.value)
    if cell.published is not None:
        delta = f"{cell.delta:+.1f}"
        if latex:
            delta = f"${delta}$"
        text += f" / {_number(cell.published)} ({delta})"
    if marks:
        joined = ",".join(map(str, marks))
        text += f"\\textsuperscript{{{joined}}}" if latex else f" [{joined}]"
    return text


def to_compact_csv(table: PaperTable) -> str:
    """One row per model; per paper column its value, ``published`` and ``delta`` (full precision)."""
    header = ["model", "checkpoint_sha256"]
    for column in table.spec.columns:
        header += [column.label, f"{column.label} published", f"{column.label} delta"]
    rows = []
    for row in table.rows:
        values: list[Any] = [row.label, row.checkpoint_sha256]
        for column in table.spec.columns:
            cell = row.cells.get(column.paper_column)
            values += ["", "", ""] if cell is None else [
                cell.value, "" if cell.published is None else cell.published, "" if cell.delta is None else cell.delta]
        rows.append(values)
    return to_csv(Table(header, rows))


def sources_csv(table: PaperTable) -> str:
    """One row per filled cell: where its number comes from and how its protocol differs from the paper's."""
    header = ["table", "model", "checkpoint_sha256", "column", "metric", "value", "published", "delta", "footnotes",
              "differences", "other_records", "run_id", "config_hash", "path"]
    rows = []
    for row in table.rows:
        for column in table.spec.columns:
            cell = row.cells.get(column.paper_column)
            if cell is None:
                continue
            r = cell.loaded.record
            rows.append([table.spec.title, row.label, row.checkpoint_sha256, column.label, cell.metric_key,
                         cell.value, "" if cell.published is None else cell.published,
                         "" if cell.delta is None else cell.delta,
                         " ".join(map(str, table.marks[(row.label, column.paper_column)])), " | ".join(cell.notes),
                         cell.alternatives, r.run_id, r.config_hash, str(cell.loaded.path)])
    return to_csv(Table(header, rows))


def _md(text: str) -> str:
    return text.replace("|", "\\|")


def to_markdown(table: PaperTable) -> str:
    spec = table.spec
    lines = [f"**{spec.title}.** {spec.caption}. Cells: {CELL_FORMAT}.", ""]
    if not table.rows:
        lines.append("(no record of this table's tasks)")
    else:
        lines.append("| Model | " + " | ".join(_md(c.label) for c in spec.columns) + " |")
        lines.append("|---|" + "|".join("---:" for _ in spec.columns) + "|")
        for row in table.rows:
            cells = [cell_text(row.cells.get(c.paper_column), c.paper_column in row.no_value,
                               table.marks.get((row.label, c.paper_column), ())) for c in spec.columns]
            lines.append(f"| {_md(row.label)} | " + " | ".join(_md(c) for c in cells) + " |")
    if table.footnotes:
        lines.append("")
        lines += [f"[{i}] {_md(note)}  " for i, note in enumerate(table.footnotes, 1)]
    if table.missing:
        lines += ["", f"Empty cells and the runs that fill them ({MODEL}: the model options listed below):", ""]
        for missing in table.missing:
            rows = ", ".join(missing.rows) if missing.rows else "any model"
            lines.append(f"- {_md(', '.join(missing.columns))} for {_md(rows)}: `{missing.template}`")
        lacking = {row for missing in table.missing for row in missing.rows}
        needed = [row.label for row in table.rows if row.label in lacking]
        if needed:
            lines += ["", f"{MODEL}:", ""]
            lines += [f"- {_md(row)}: `{table.model_options[row]}`" for row in needed]
    return "\n".join(lines) + "\n"


def commands_text(table: PaperTable) -> str:
    """Every run that would fill an empty cell, one full command a line (a shell script)."""
    lines = [f"# {table.spec.title}: the runs that fill its empty cells (python -m analysis.tables)"]
    for missing in table.missing:
        lines.append(f"# {', '.join(missing.columns)}")
        lines += missing.commands(table.model_options) if missing.rows else [missing.template]
    return "\n".join(lines) + "\n"


LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                 "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
                 "§": r"\S{}", "×": r"$\times$", "–": "--", "—": "---", "≈": r"$\approx$", "<": r"$<$", ">": r"$>$"}


def latex_escape(text: str) -> str:
    return "".join(LATEX_SPECIAL.get(ch, ch) for ch in text)


def to_latex(table: PaperTable) -> str:
    """A booktabs table float (``\\usepackage{booktabs}``, ``graphicx``): two header rows (the paper's column
    groups and names), one row per model, the footnotes under the tabular; a tabular wider than the line is
    shrunk to it."""
    spec = table.spec
    n = len(spec.columns)
    groups: list[tuple[str, int]] = []
    for column in spec.columns:
        if groups and groups[-1][0] == column.group:
            groups[-1] = (column.group, groups[-1][1] + 1)
        else:
            groups.append((column.group, 1))
    lines = [f"% {spec.title} from partprobe records (python -m analysis.tables); needs \\usepackage{{booktabs}} "
             "and \\usepackage{graphicx}",
             "\\begin{table}[t]", "\\centering", "\\small",
             f"\\caption{{{latex_escape(spec.caption)}. Cells: {latex_escape(CELL_FORMAT)}.}}",
             f"\\label{{tab:partprobe-table{spec.key}}}",
             "\\resizebox{\\ifdim\\width>\\linewidth\\linewidth\\else\\width\\fi}{!}{%",   # shrink to the line, never grow
             f"\\begin{{tabular}}{{l{'r' * n}}}", "\\toprule"]
    header = ["Model"] + [f"\\multicolumn{{{span}}}{{c}}{{{latex_escape(group)}}}" for group, span in groups]
    lines.append(" & ".join(header) + " \\\\")
    start, rules = 2, []
    for _, span in groups:
        rules.append(f"\\cmidrule(lr){{{start}-{start + span - 1}}}")
        start += span
    lines.append(" ".join(rules))
    lines.append(" & ".join([""] + [latex_escape(c.name) for c in spec.columns]) + " \\\\")
    lines.append("\\midrule")
    previous_paper = None
    for row in table.rows:
        is_paper = paper.paper_alias(row.model) is not None
        if previous_paper is True and not is_paper:
            lines.append("\\midrule")              # the paper's models, then every other one
        previous_paper = is_paper
        cells = [cell_text(row.cells.get(c.paper_column), c.paper_column in row.no_value,
                           table.marks.get((row.label, c.paper_column), ()), latex=True) for c in spec.columns]
        cells = [c if "$" in c or "\\textsuperscript" in c else latex_escape(c) for c in cells]
        lines.append(" & ".join([latex_escape(row.label)] + cells) + " \\\\")
    lines += ["\\bottomrule", "\\end{tabular}}"]
    if table.footnotes:
        lines.append("\\par\\smallskip\\raggedright\\footnotesize")
        lines += [f"\\textsuperscript{{{i}}}{latex_escape(note)}\\par" for i, note in enumerate(table.footnotes, 1)]
    lines.append("\\end{table}")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------------
# Per-class tables
# ---------------------------------------------------------------------------------------------------

PER_CLASS_VALUES = ("accuracy", "IoU")      # the value column of a per_class artifact
PER_CLASS_METRICS = ("AP", "IoU")           # else: <metric>[<class>] metrics of the record


def per_class_values(loaded: LoadedRecord) -> tuple[str, dict[str, float]] | None:
    """(what the values are, class -> value) of one record: its per_class artifact, else its per-class metrics."""
    r = loaded.record
    name = r.artifacts.get("per_class")
    if name:
        rows = read_table(loaded.path.parent / name)
        value = next((c for c in PER_CLASS_VALUES if rows and c in rows[0]), None)
        if value is not None:
            return value, {row["class"]: float(row[value]) for row in rows if row[value] != ""}
    for metric in PER_CLASS_METRICS:
        prefix = f"{r.task}/{metric}["
        values = {k[len(prefix):-1]: v for k, v in r.metrics.items() if k.startswith(prefix) and k.endswith("]")}
        if values:
            return metric, values
    return None


def per_class_tables(current: Sequence[LoadedRecord]) -> dict[str, Table]:
    """Per task: classes as rows (in the first record's order), one column per final-block record."""
    labels = model_labels((r.record.model, r.record.checkpoint_sha256) for r in current)
    by_task: dict[str, list[tuple[str, str, dict[str, float]]]] = {}
    for loaded in sorted(current, key=lambda l: (paper_order(l.record.model), l.record.feature, l.record.run_id)):
        r = loaded.record
        if r.block is not None:
            continue
        found = per_class_values(loaded)
        if found is None:
            continue
        by_task.setdefault(r.task, []).append((labels[(r.model, r.checkpoint_sha256)], r, *found))
    tables = {}
    for task, entries in sorted(by_task.items()):
        names = [label for label, *_ in entries]
        headers = []
        for label, r, what, _ in entries:
            header = label
            if names.count(label) > 1:
                header = f"{label} [{r.feature} {r.run_id[-8:]}]"
            headers.append(f"{header} {what}")
        classes = list(dict.fromkeys(c for *_, values in entries for c in values))
        rows = [[c] + [values.get(c, "") for *_, values in entries] for c in classes]
        tables[task] = Table(["class"] + headers, rows)
    return tables


def per_class_markdown(task: str, table: Table) -> str:
    lines = [f"**{task}** per class (%)", "", "| " + " | ".join(_md(h) for h in table.header) + " |",
             "|---|" + "|".join("---:" for _ in table.header[1:]) + "|"]
    for row in table.rows:
        lines.append("| " + " | ".join(_md(f"{v:.1f}" if isinstance(v, float) else str(v)) for v in row) + " |")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------------
# The command line
# ---------------------------------------------------------------------------------------------------

def write_tables(results_dirs: Sequence[str | Path], out: str | Path | None, keys: Sequence[str] = TABLE_ORDER,
                 per_class: bool = False, skip_invalid: bool = False, stream=None) -> list[Path]:
    stream = stream or sys.stdout
    record_set = load_records(results_dirs, skip_invalid=skip_invalid)
    if not record_set.records:
        raise LeaderboardError(f"no result records under {', '.join(str(d) for d in results_dirs)}")
    for _, error in record_set.invalid:
        print(f"skipped invalid record: {error}", file=stream)
    specs = table_specs()
    written: list[Path] = []
    out = Path(out) if out is not None else None

    def write(name: str, text: str) -> None:
        path = out / name
        write_bytes_atomic(path, text.encode("utf-8"))
        written.append(path)

    for key in keys:
        table = build_table(specs[key], record_set, results_dirs)
        markdown = to_markdown(table)
        if out is None:
            print(markdown, file=stream)
            continue
        write(f"table{key}.md", markdown)
        write(f"table{key}.tex", to_latex(table))
        write(f"table{key}.csv", to_compact_csv(table))
        write(f"table{key}.sources.csv", sources_csv(table))
        write(f"table{key}.commands.sh", commands_text(table))
        print(f"{table.spec.title}: {len(table.rows)} model(s), {sum(len(r.cells) for r in table.rows)} cell(s), "
              f"{len(table.footnotes)} footnote(s), {sum(len(m.rows) or 1 for m in table.missing)} run(s) missing "
              f"-> {out}/table{key}.*",
              file=stream)
    if per_class:
        for task, table in per_class_tables(record_set.current).items():
            if out is None:
                print(per_class_markdown(task, table), file=stream)
                continue
            write(f"per_class.{task}.csv", to_csv(table))
            write(f"per_class.{task}.md", per_class_markdown(task, table))
            print(f"per class: {task}: {len(table.rows)} classes x {len(table.header) - 1} record(s)", file=stream)
    reruns = [s for s in record_set.superseded if s.reason == "rerun"]
    if reruns:
        print(f"{len(reruns)} superseded rerun(s) left out by the leaderboard's rule (python -m analysis.leaderboard "
              f"lists them)", file=stream)
    return written


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m analysis.tables",
                                     description="The paper's tables (3, 1, 4, 2) from result folders: models as "
                                                 "rows, the paper's columns, reproduced / published (delta), "
                                                 "protocol differences as footnotes.")
    parser.add_argument("--results", nargs="+", required=True, metavar="DIR", help="result folders to merge")
    parser.add_argument("--table", nargs="+", choices=TABLE_ORDER, default=list(TABLE_ORDER), metavar="N",
                        help="which tables (3 1 4 2; default: all, in that order)")
    parser.add_argument("--out", default=None, metavar="DIR",
                        help="write table<N>.{csv,md,tex,sources.csv} there (default: Markdown on stdout)")
    parser.add_argument("--per-class", action="store_true",
                        help="also the per-class tables (classification accuracy, segmentation IoU, retrieval AP)")
    parser.add_argument("--skip-invalid", action="store_true",
                        help="list invalid record files and use the rest, instead of stopping")
    args = parser.parse_args(argv)
    try:
        write_tables(args.results, args.out, args.table, per_class=args.per_class, skip_invalid=args.skip_invalid)
    except (LeaderboardError, RecordError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
