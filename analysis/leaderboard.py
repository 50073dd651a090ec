"""Merge result folders into one leaderboard: one row per model, one column per measured cell.

    python -m analysis.leaderboard --results DIR [DIR ...] --out leaderboard.csv [--format csv|md] [--long]
                                   [--skip-invalid] [--probe P ...] [--dataset D ...] [--feature F ...]
                                   [--metric M ...]

This wide CSV is for machines (one column per measured cell); the paper's tables, compact, with published
values, deltas and protocol footnotes, are ``python -m analysis.tables``.

**Rows.** One per model: (``model``, ``checkpoint_sha256``). Two different files registered under one
name are two rows, never averaged or overwritten.

**Columns.** A column key is (task, metric, feature, block, variant) and its name reads
``<task>/<metric> [<feature> block=<k> <option>=<value> ...]``, e.g.
``cub_part_retrieval/AP [patch_mean include_self=false]``. The variant lists exactly the settings that
differ between the records of one (task, feature, block) group: the split, the seed and every protocol
option (except ``DERIVED_OPTIONS``, e.g. ``normalize_mean``, which follow from another option and the
model, and ``OUTCOMES``, e.g. a segmentation run's ``absent_classes``, which the run found rather than was
told), ``MODEL_OPTIONS`` (``weights_branch``) unless one model has two values of it, and the data
(``data=<digest>``, only when two records of a group were measured on different data). So two protocols (self-match included or not, crop paper or official-code, ...) never share a
column, and a setting common to all records of the group is left out of the name (it is listed in
``<out>.columns.csv``, which describes every column: task, metric, feature, block, variant and the
group's full protocol). Next to a column with at least one published value come ``... published`` and
``... delta`` (reproduced minus published) columns; ``probes/published.py`` says when a value applies.

**Merging.** Records are read from every folder given. The same run (same ``run_id``) found twice is
kept once when both files are identical, and is an error when they differ. Reruns of one configuration
(same ``config_hash``) are resolved by one rule, printed and written with the output: the latest
``created`` wins (ties: the larger ``run_id``); every superseded record is listed, with its path and the
run that replaced it, in ``<out>.superseded.csv``. A cell therefore holds exactly one record's value. A
superseded rerun whose metrics differ from the kept run's by more than ``TOLERANCE`` (0.01 percentage
points) on any shared metric is a warning, printed and marked in that file (``beyond_tolerance``): the same
configuration should give the same numbers, so one of the two runs is not what it claims.

**Filters** (``--probe``, ``--dataset``, ``--feature``: records; ``--metric``: metric names, unprefixed,
shell-style patterns such as ``'IoU[*'``) keep only the matching records and metrics; the rerun rule is
applied before filtering.

**Long form** (``--long``): one row per record, superseded ones included and marked, with every field,
the flattened protocol (``protocol.<key>``) and one column per metric (plus published and delta).

An invalid record file (bad schema, or a stored digest that does not match its content: a record changed
after it was written) stops the export: every such file is listed with the field and what was expected,
and nothing is written. ``--skip-invalid`` lists the same files and exports the rest.
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import datetime as _dt
import fnmatch
import io
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from probes.errors import UserError
from probes.fileio import write_bytes_atomic
from probes.published import PAPER_MODELS, paper_alias
from probes.results import RecordError, RunRecord, config_path_for, iter_record_paths, read_record_json

# Protocol values that follow from another recorded option and the model (normalize: "model" gives each
# model its own mean/std). They never split a column: the option they follow from does.
DERIVED_OPTIONS = ("normalize_mean", "normalize_std", "num_tokens")
# Protocol values a run found rather than was given (which classes were absent, the iteration reported, how many
# training patches fit the memory): they differ between models of one protocol and never split a column.
OUTCOMES = ("absent_classes", "reported_iter", "dense_memory_patches", "dense_patches_per_image")
# Settings of the model itself (which branch of a checkpoint file ran): they tell rows apart, not protocols.
MODEL_OPTIONS = ("weights_branch",)
# A superseded rerun of one configuration that differs from the kept run by more than this on a shared metric
# (percentage points) is reported: one configuration, two answers.
TOLERANCE = 0.01
RULE = ("reruns of one configuration (same config_hash): the latest `created` wins (ties: the larger run_id); "
        "superseded runs are listed in {superseded}, and a rerun whose metrics differ from the kept run's by more "
        "than {tolerance} percentage points is a warning")
UNSET = "(unset)"


class LeaderboardError(UserError, ValueError):
    """Input the leaderboard cannot merge without losing or inventing a number."""


class InvalidRecords(LeaderboardError):
    """Record files the schema refuses (each named with its field); nothing is exported."""

    def __init__(self, invalid: Sequence[tuple[Path, str]]):
        self.invalid = list(invalid)
        lines = [f"  {message}" for _, message in self.invalid]
        super().__init__(f"{len(self.invalid)} invalid record file(s), nothing exported (--skip-invalid exports "
                         f"the rest):\n" + "\n".join(lines))


@dataclass
class LoadedRecord:
    record: RunRecord
    path: Path
    config_path: Path | None  # None when the configuration file is missing


@dataclass
class Superseded:
    loaded: LoadedRecord
    kept: LoadedRecord
    reason: str  # "rerun" or "identical copy"


@dataclass
class RecordSet:
    records: list[LoadedRecord]            # one per run_id
    current: list[LoadedRecord]            # one per config_hash, after the rerun rule
    superseded: list[Superseded]           # reruns that lost, and identical copies merged away
    invalid: list[tuple[Path, str]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def superseded_by(self) -> dict[str, str]:
        return {s.loaded.record.run_id: s.kept.record.run_id for s in self.superseded if s.reason == "rerun"}


# ---------------------------------------------------------------------------------------------------
# Loading and merging
# ---------------------------------------------------------------------------------------------------

def load_records(results_dirs: Iterable[str | Path], skip_invalid: bool = False) -> RecordSet:
    """Read every record under the folders, merge identical copies, resolve reruns by the stated rule."""
    by_run_id: dict[str, LoadedRecord] = {}
    raw_by_run_id: dict[str, Any] = {}
    copies: list[Superseded] = []
    invalid: list[tuple[Path, str]] = []
    warnings: list[str] = []
    for folder in results_dirs:
        folder = Path(folder)
        if not folder.is_dir():
            raise LeaderboardError(f"{folder}: results folder does not exist")
        for path in iter_record_paths(folder):
            try:
                raw = read_record_json(path)
                record = RunRecord.from_dict(raw, source=str(path))
            except RecordError as err:
                invalid.append((path, str(err)))
                continue
            config = config_path_for(path)
            if not config.is_file():
                warnings.append(f"{path}: no configuration file {config.name} beside it")
            loaded = LoadedRecord(record, path, config if config.is_file() else None)
            previous = by_run_id.get(record.run_id)
            if previous is None:
                by_run_id[record.run_id] = loaded
                raw_by_run_id[record.run_id] = raw
            elif raw == raw_by_run_id[record.run_id]:
                copies.append(Superseded(loaded, previous, "identical copy"))
            else:
                raise LeaderboardError(
                    f"{path}: run_id {record.run_id} is also in {previous.path} with different content; "
                    "one run cannot have two results (remove the wrong copy)")
    if invalid and not skip_invalid:
        raise InvalidRecords(invalid)
    records = sorted(by_run_id.values(), key=lambda r: (r.record.task, r.record.model, r.record.run_id))
    current, reruns = resolve_reruns(records)
    return RecordSet(records, current, reruns + copies, invalid, warnings)


def select(record_set: RecordSet, probes: Sequence[str] = (), datasets: Sequence[str] = (),
           features: Sequence[str] = (), metrics: Sequence[str] = ()) -> RecordSet:
    """The records of the given probes, datasets and features (empty: all), with only the metrics whose
    unprefixed name matches one of ``metrics`` (shell-style patterns; empty: all)."""
    def keep(loaded: LoadedRecord) -> bool:
        r = loaded.record
        return ((not probes or r.probe in probes) and (not datasets or r.dataset in datasets)
                and (not features or r.feature in features))

    def trim(loaded: LoadedRecord) -> LoadedRecord:
        if not metrics:
            return loaded
        r = loaded.record
        names = {k for k in r.metrics if any(fnmatch.fnmatchcase(k.split("/", 1)[1], p) for p in metrics)}
        record = dataclasses.replace(r, metrics={k: v for k, v in r.metrics.items() if k in names},
                                     published={k: v for k, v in r.published.items() if k in names},
                                     delta={k: v for k, v in r.delta.items() if k in names})
        return LoadedRecord(record, loaded.path, loaded.config_path)

    def kept(items: Sequence[LoadedRecord]) -> list[LoadedRecord]:
        out = [trim(loaded) for loaded in items if keep(loaded)]
        return [loaded for loaded in out if loaded.record.metrics]

    superseded = [Superseded(trim(s.loaded), trim(s.kept), s.reason) for s in record_set.superseded if keep(s.loaded)]
    return RecordSet(kept(record_set.records), kept(record_set.current), superseded, record_set.invalid,
                     record_set.warnings)


@dataclass
class Difference:
    """How far a superseded rerun's metrics are from the kept run's."""
    max_abs: float | None        # over the metrics both have; None when they share none
    metric: str                  # the metric of the largest difference
    only_one: list[str]          # metrics only one of the two runs has

    @property
    def beyond_tolerance(self) -> bool:
        return bool(self.only_one) or (self.max_abs is not None and self.max_abs > TOLERANCE)


def difference(old: RunRecord, new: RunRecord) -> Difference:
    shared = sorted(set(old.metrics) & set(new.metrics))
    gaps = {k: abs(old.metrics[k] - new.metrics[k]) for k in shared}
    metric = max(gaps, key=lambda k: (gaps[k], k)) if gaps else ""
    return Difference(gaps[metric] if gaps else None, metric, sorted(set(old.metrics) ^ set(new.metrics)))


def rerun_warnings(record_set: RecordSet) -> list[str]:
    """One line per superseded rerun whose numbers differ from the kept run's beyond TOLERANCE."""
    lines = []
    for s in sorted(record_set.superseded, key=lambda s: str(s.loaded.path)):
        if s.reason != "rerun":
            continue
        gap = difference(s.loaded.record, s.kept.record)
        if not gap.beyond_tolerance:
            continue
        what = (f"by {gap.max_abs:.4g} points in {gap.metric}" if gap.max_abs is not None and gap.max_abs > TOLERANCE
                else f"in which metrics it has ({', '.join(gap.only_one)})")
        lines.append(f"superseded rerun {s.loaded.path} differs from the kept run {s.kept.path} {what} (tolerance "
                     f"{TOLERANCE} points; same config_hash {s.kept.record.config_hash}: find out which one is right)")
    return lines


def _created(loaded: LoadedRecord) -> tuple[_dt.datetime, str]:
    return _dt.datetime.fromisoformat(loaded.record.created), loaded.record.run_id


def resolve_reruns(records: Sequence[LoadedRecord]) -> tuple[list[LoadedRecord], list[Superseded]]:
    """One record per config_hash: the latest `created` (ties: larger run_id); the rest superseded."""
    groups: dict[str, list[LoadedRecord]] = {}
    for loaded in records:
        groups.setdefault(loaded.record.config_hash, []).append(loaded)
    current, superseded = [], []
    for group in groups.values():
        ordered = sorted(group, key=_created)
        winner = ordered[-1]
        current.append(winner)
        superseded.extend(Superseded(loser, winner, "rerun") for loser in ordered[:-1])
    current.sort(key=lambda r: (r.record.task, r.record.model, r.record.run_id))
    return current, superseded


# ---------------------------------------------------------------------------------------------------
# Cells: (row, column) -> one record's value
# ---------------------------------------------------------------------------------------------------

@dataclass(frozen=True, order=True)
class RowKey:
    model: str
    checkpoint_sha256: str


@dataclass(frozen=True)
class ColumnKey:
    task: str
    metric: str                              # prefixed, "<task>/<metric>"
    feature: str
    block: int | None
    variant: tuple[tuple[str, str], ...]     # the settings that tell this column from its group's others

    def descriptor(self) -> str:
        """``[<feature> block=<k> <option>=<value> ...]``: everything but the metric."""
        parts = [self.feature] + ([f"block={self.block}"] if self.block is not None else [])
        parts += [f"{k}={v}" for k, v in self.variant]
        return f"[{' '.join(parts)}]"

    def name(self) -> str:
        return f"{self.metric} {self.descriptor()}"

    def sort_key(self) -> tuple:
        return (self.task, -1 if self.block is None else self.block, self.feature, self.variant, self.metric)


@dataclass
class Cell:
    row: RowKey
    column: ColumnKey
    value: float
    published: float | None
    delta: float | None
    loaded: LoadedRecord


def format_option(value: Any) -> str:
    """A setting as it appears in a column name: plain strings bare, everything else as compact JSON."""
    if isinstance(value, str) and value and not any(c in value for c in " =[]\"") and value != UNSET:
        return value
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def _settings(record: RunRecord) -> dict[str, str]:
    settings = {"split": format_option(record.split), "seed": format_option(record.seed),
                "data": record.data_sha256[:12] or UNSET}
    for key, value in record.protocol.items():
        if key not in DERIVED_OPTIONS and key not in OUTCOMES:
            settings[f"protocol.{key}" if key in ("split", "seed") else key] = format_option(value)
    return settings


def variant_keys(records: Sequence[RunRecord]) -> list[str]:
    """Settings whose value differs between the records of one (task, feature, block) group. A setting of the
    model itself (``MODEL_OPTIONS``) splits a column only when one row has two values of it (a file's teacher
    and its student): the row already tells one model's setting from another's."""
    all_settings = [_settings(r) for r in records]
    keys = sorted({k for s in all_settings for k in s})
    differing = [k for k in keys if len({s.get(k, UNSET) for s in all_settings}) > 1]
    per_row: dict[tuple[str, str, str], set[str]] = {}
    for r, settings in zip(records, all_settings):
        for k in MODEL_OPTIONS:
            per_row.setdefault((r.model, r.checkpoint_sha256, k), set()).add(settings.get(k, UNSET))
    differing = [k for k in differing if k not in MODEL_OPTIONS
                 or any(len(values) > 1 for (_, _, key), values in per_row.items() if key == k)]
    # split and seed first: they read as the coarsest distinction
    return sorted(differing, key=lambda k: (k not in ("split", "seed"), k))


def build_cells(current: Sequence[LoadedRecord]) -> list[Cell]:
    groups: dict[tuple, list[LoadedRecord]] = {}
    for loaded in current:
        r = loaded.record
        groups.setdefault((r.task, r.feature, r.block), []).append(loaded)
    cells: list[Cell] = []
    seen: dict[tuple[RowKey, ColumnKey], LoadedRecord] = {}
    for (task, feature, block), members in groups.items():
        keys = variant_keys([m.record for m in members])
        for loaded in members:
            r = loaded.record
            settings = _settings(r)
            variant = tuple((k, settings.get(k, UNSET)) for k in keys)
            row = RowKey(r.model, r.checkpoint_sha256)
            for metric, value in r.metrics.items():
                column = ColumnKey(task, metric, feature, block, variant)
                other = seen.get((row, column))
                if other is not None:  # cannot happen when config_hash covers the settings; never overwrite
                    raise LeaderboardError(f"{loaded.path} and {other.path} land in one cell {column.name()}")
                seen[(row, column)] = loaded
                cells.append(Cell(row, column, value, r.published.get(metric), r.delta.get(metric), loaded))
    return cells


def _row_order(row: RowKey) -> tuple:
    """The paper's models in the paper's row order first, then every other model by name."""
    alias = paper_alias(row.model)
    if alias is not None:
        return (0, list(PAPER_MODELS).index(alias), row.model, row.checkpoint_sha256)
    return (1, 0, row.model, row.checkpoint_sha256)


# ---------------------------------------------------------------------------------------------------
# Tables
# ---------------------------------------------------------------------------------------------------

ID_COLUMNS = ["model", "method", "arch", "checkpoint_sha256"]


@dataclass
class Table:
    header: list[str]
    rows: list[list[Any]]


def wide_table(current: Sequence[LoadedRecord]) -> tuple[Table, list[dict[str, Any]]]:
    """The leaderboard (one row per model) and the description of each of its columns."""
    cells = build_cells(current)
    columns = sorted({c.column for c in cells}, key=ColumnKey.sort_key)
    with_published = {c.column for c in cells if c.published is not None}
    header = list(ID_COLUMNS)
    described: list[dict[str, Any]] = []
    by_column: dict[ColumnKey, list[Cell]] = {}
    for cell in cells:
        by_column.setdefault(cell.column, []).append(cell)
    for column in columns:
        first = by_column[column][0].loaded.record
        kinds = ["value"] + (["published", "delta"] if column in with_published else [])
        for kind in kinds:
            name = column.name() if kind == "value" else f"{column.name()} {kind}"
            header.append(name)
            described.append({
                "column": name, "kind": kind, "task": column.task, "metric": column.metric,
                "feature": column.feature, "block": "" if column.block is None else column.block,
                "variant": " ".join(f"{k}={v}" for k, v in column.variant),
                "split": first.split, "seed": "" if first.seed is None else first.seed,
                "protocol": json.dumps({k: v for k, v in first.protocol.items()
                                        if k not in DERIVED_OPTIONS and k not in OUTCOMES}, sort_keys=True),
                "n_models": len(by_column[column]),
            })
    rows: dict[RowKey, dict[str, Any]] = {}
    for cell in cells:
        r = cell.loaded.record
        row = rows.setdefault(cell.row, {"model": r.model, "method": set(), "arch": set(),
                                          "checkpoint_sha256": r.checkpoint_sha256})
        row["method"].add(r.method)
        row["arch"].add(r.arch)
        name = cell.column.name()
        row[name] = cell.value
        if cell.published is not None:
            row[f"{name} published"] = cell.published
            row[f"{name} delta"] = cell.delta
    table_rows = []
    for key in sorted(rows, key=_row_order):
        row = rows[key]
        row["method"] = "|".join(sorted(m for m in row["method"] if m))
        row["arch"] = "|".join(sorted(a for a in row["arch"] if a))
        table_rows.append([row.get(h, "") for h in header])
    return Table(header, table_rows), described


LONG_FIELDS = ["status", "superseded_by", "run_id", "config_hash", "created", "probe", "task", "dataset", "split",
               "model", "method", "arch", "checkpoint_sha256", "feature", "block", "seed", "package_version",
               "git_commit", "wall_time_s", "device"]


def long_table(record_set: RecordSet) -> Table:
    """One row per record (superseded reruns included and marked)."""
    replaced = record_set.superseded_by()
    protocol_keys = sorted({k for r in record_set.records for k in r.record.protocol})
    metric_keys = sorted({k for r in record_set.records for k in r.record.metrics})
    published_keys = {k for r in record_set.records for k in r.record.published}
    metric_columns = []  # (column name, record table, metric key); metric names may contain spaces
    for key in metric_keys:
        metric_columns.append((key, "metrics", key))
        if key in published_keys:
            metric_columns += [(f"{key} published", "published", key), (f"{key} delta", "delta", key)]
    header = (LONG_FIELDS + ["protocol"] + [f"protocol.{k}" for k in protocol_keys]
              + [name for name, _, _ in metric_columns] + ["published_source", "notes", "path", "config_path"])
    rows = []
    for loaded in record_set.records:
        r = loaded.record
        data = r.to_dict()
        data["status"] = "superseded" if r.run_id in replaced else "current"
        data["superseded_by"] = replaced.get(r.run_id, "")
        row = [("" if data[f] is None else data[f]) for f in LONG_FIELDS]
        row.append(json.dumps(r.protocol, sort_keys=True))
        for key in protocol_keys:
            value = r.protocol.get(key, "")
            row.append(json.dumps(value) if isinstance(value, (list, dict)) else value)
        for _, table, key in metric_columns:
            row.append(getattr(r, table).get(key, ""))
        row.append(json.dumps(r.published_source, sort_keys=True) if r.published_source else "")
        row.append(" | ".join(r.notes))
        row.append(str(loaded.path))
        row.append("" if loaded.config_path is None else str(loaded.config_path))
        rows.append(row)
    return Table(header, rows)


def superseded_table(record_set: RecordSet, rule: str) -> Table:
    header = ["run_id", "reason", "path", "config_hash", "created", "kept_run_id", "kept_path",
              "max_abs_metric_difference", "metric_of_max_difference", "metrics_in_one_run_only",
              "beyond_tolerance", "tolerance", "rule"]
    rows = []
    for s in sorted(record_set.superseded, key=lambda s: (str(s.loaded.path))):
        old, new = s.loaded.record, s.kept.record
        gap = difference(old, new)
        rows.append([old.run_id, s.reason, str(s.loaded.path), old.config_hash, old.created, new.run_id,
                     str(s.kept.path), "" if gap.max_abs is None else gap.max_abs, gap.metric, " ".join(gap.only_one),
                     gap.beyond_tolerance, TOLERANCE,
                     rule if s.reason == "rerun" else "same run_id, same content: kept once"])
    return Table(header, rows)


# ---------------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------------

def _cell_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)  # shortest text that reads back to the same float
    return str(value)


def to_csv(table: Table) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(table.header)
    for row in table.rows:
        writer.writerow([_cell_text(v) for v in row])
    return out.getvalue()


def to_markdown(table: Table, footer: Sequence[str] = ()) -> str:
    def text(value: Any) -> str:
        shown = f"{value:.2f}" if isinstance(value, float) else _cell_text(value)
        return shown.replace("|", "\\|")
    lines = ["| " + " | ".join(text(h) for h in table.header) + " |",
             "|" + "|".join("---" for _ in table.header) + "|"]
    lines += ["| " + " | ".join(text(v) for v in row) + " |" for row in table.rows]
    if footer:
        lines.append("")
        lines += [f"{line}  " for line in footer]
    return "\n".join(lines) + "\n"


def sidecar(out: Path, name: str) -> Path:
    """``leaderboard.csv`` -> ``leaderboard.<name>.csv`` (same for ``.md``)."""
    return out.with_name(f"{out.stem}.{name}.csv")


@dataclass
class ExportSummary:
    out: Path
    columns_path: Path | None
    superseded_path: Path
    n_records: int
    n_current: int
    n_rows: int
    n_columns: int
    messages: list[str]


def export(results_dirs: Sequence[str | Path], out: str | Path, fmt: str | None = None, long: bool = False,
           skip_invalid: bool = False, probes: Sequence[str] = (), datasets: Sequence[str] = (),
           features: Sequence[str] = (), metrics: Sequence[str] = ()) -> ExportSummary:
    out = Path(out)
    fmt = fmt or ("md" if out.suffix.lower() == ".md" else "csv")
    if fmt not in ("csv", "md"):
        raise LeaderboardError(f"--format {fmt!r}: expected 'csv' or 'md'")
    everything = load_records(results_dirs, skip_invalid=skip_invalid)
    if not everything.records:
        raise LeaderboardError(f"no result records under {', '.join(str(d) for d in results_dirs)}")
    record_set = select(everything, probes, datasets, features, metrics)
    filters = " ".join(f"--{name} {' '.join(values)}" for name, values in
                       (("probe", probes), ("dataset", datasets), ("feature", features), ("metric", metrics)) if values)
    if not record_set.records:
        raise LeaderboardError(f"none of the {len(everything.records)} records matches {filters}")
    superseded_path = sidecar(out, "superseded")
    rule = RULE.format(superseded=superseded_path.name, tolerance=TOLERANCE)
    n_reruns = sum(s.reason == "rerun" for s in record_set.superseded)
    n_copies = len(record_set.superseded) - n_reruns
    messages = [f"rule: {rule}",
                f"{len(everything.records)} records read from {len(results_dirs)} folder(s); "
                f"superseded reruns: {n_reruns}; identical copies merged: {n_copies}"]
    if filters:
        messages.append(f"filters {filters}: {len(record_set.records)} records kept")
    messages += [f"warning: {w}" for w in record_set.warnings]
    messages += [f"warning: {w}" for w in rerun_warnings(record_set)]
    messages += [f"skipped invalid record: {err}" for _, err in record_set.invalid]

    columns_path = None
    if long:
        table = long_table(record_set)
        n_rows = len(table.rows)
    else:
        table, described = wide_table(record_set.current)
        n_rows = len(table.rows)
        columns_path = sidecar(out, "columns")
        columns = Table(list(described[0]) if described else ["column"], [list(d.values()) for d in described])
        write_bytes_atomic(columns_path, to_csv(columns).encode("utf-8"))
        messages.append(f"every column is described in {columns_path.name}")
    text = to_csv(table) if fmt == "csv" else to_markdown(table, footer=messages)
    write_bytes_atomic(out, text.encode("utf-8"))
    write_bytes_atomic(superseded_path, to_csv(superseded_table(record_set, rule)).encode("utf-8"))
    return ExportSummary(out, columns_path, superseded_path, len(record_set.records), len(record_set.current),
                         n_rows, len(table.header), messages)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m analysis.leaderboard",
        description="Merge result folders into a leaderboard (one row per model, one column per task, "
                    "metric, feature, block and protocol variant), with published values and deltas. For the "
                    "paper's tables: python -m analysis.tables.")
    parser.add_argument("--results", nargs="+", required=True, metavar="DIR",
                        help="result folders to merge (every <run_id>.json record under them)")
    parser.add_argument("--out", required=True, help="output file, e.g. leaderboard.csv or leaderboard.md")
    parser.add_argument("--format", choices=("csv", "md"), default=None,
                        help="output format (default: from the file suffix, csv unless .md)")
    parser.add_argument("--long", action="store_true",
                        help="one row per record (superseded reruns included and marked) instead of per model")
    parser.add_argument("--skip-invalid", action="store_true",
                        help="list invalid record files and export the rest, instead of exporting nothing")
    parser.add_argument("--probe", nargs="+", default=[], metavar="P",
                        help="only records of these probes (e.g. part_retrieval linear_segmentation)")
    parser.add_argument("--dataset", nargs="+", default=[], metavar="D",
                        help="only records on these datasets (e.g. cub ade20k_part209)")
    parser.add_argument("--feature", nargs="+", default=[], metavar="F",
                        help="only records of these features (e.g. patch_mean cls tokens blocks)")
    parser.add_argument("--metric", nargs="+", default=[], metavar="M",
                        help="only these metrics, unprefixed; shell-style patterns (e.g. AP mIoU 'IoU[*')")
    args = parser.parse_args(argv)
    try:
        summary = export(args.results, args.out, fmt=args.format, long=args.long, skip_invalid=args.skip_invalid,
                         probes=args.probe, datasets=args.dataset, features=args.feature, metrics=args.metric)
    except (LeaderboardError, RecordError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"{summary.out}: {summary.n_rows} rows x {summary.n_columns} columns "
          f"from {summary.n_current} current records")
    for message in summary.messages:
        print(message)
    return 0


if __name__ == "__main__":
    from probes.errors import run_main
    sys.exit(run_main(main, prog="python -m analysis.leaderboard"))
