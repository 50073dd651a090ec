"""Figures from result records, sized for a paper: each function takes records (or result folders) and writes
one figure as PNG, PDF and SVG.

    python -m analysis.figures --results DIR [DIR ...] --out DIR [--grids N]

**Shape.** A figure with one panel is 3.3 in wide (one page column), with more 6.8 in (two columns); fonts are
7 pt; legends sit outside the data. Models are named as the paper names them (DeiT, MoCo v3, DINO, BEiT, MAE,
CAE, iBOT), every other model by its record name (plus a short checkpoint hash when two files share a name).
A plotted series is marked by a variant letter (A, B, ...); ``<name>.legend.txt`` beside the figure gives
each letter's full column: task, metric, feature, block, split, seed, data, the whole protocol and the
records it plots. Generated data is said so in the panel.

* ``object_vs_part``: the paper's object/part pairs only, the same models on both sides, one panel per pair
  (Figure 6's shape): ADE20K-Object-59 vs ADE20K-Part-209 and Pascal-Object-16 vs Pascal-Part-193
  segmentation (docs/protocols.md#object-vs-part-segmentation; the same segmentation protocol on both sides),
  COCO object retrieval vs COCO part retrieval and CIFAR-10 object retrieval vs CUB part retrieval, ImageNet
  or CIFAR-10 classification vs CUB / COCO part classification (the same probe on both sides). The two sides
  use the same feature and agree on the settings both record (self-match, head, recipe, input size, data
  source).
* ``per_block``: metric versus block index (integer ticks) per model, one panel per task, metric, feature
  and protocol variant; a dotted line marks the model's final-output value.
* ``published_vs_reproduced``: reproduced (y) against published (x) for every record with a published value,
  on the y = x line; the paper's values for all its models are ticks along the x axis, and a record of the
  same task, metric and feature without a published value (a baseline, another protocol, generated data) is
  a dashed horizontal line, so it can be read against the paper's range.
* ``retrieval_grids``: query patches and their top-k retrieved patches, drawn by ``analysis.retrieval_grid``
  from the artifacts a part-retrieval run wrote beside its records (no encoder runs here).

Values come from the leaderboard's cells (``analysis.leaderboard``): one record per configuration after the
rerun rule. A figure whose records are absent is skipped with a message saying what it needs.
"""
from __future__ import annotations

import argparse
import functools
import json
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import matplotlib
from matplotlib.figure import Figure  # no pyplot: no global state, works under any backend
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.transforms import offset_copy

from analysis.leaderboard import (DERIVED_OPTIONS, OUTCOMES, Cell, ColumnKey, LeaderboardError, LoadedRecord,
                                  RecordSet, RowKey, build_cells, load_records)
from analysis.names import PROBES as PROBE_NAMES, dataset_name, model_labels, paper_name, paper_order, task_name
from probes.fileio import atomic_path, write_bytes_atomic
from probes.published import PAPER_MODELS, reference_values
from probes.results import RecordError

HEADLINE_METRICS = ("AP", "top1_best", "top1", "mIoU", "acc1", "mAP")
FEATURE_PREFERENCE = ("patch_mean", "cls", "tokens", "blocks", "projection")
SINGLE, DOUBLE = 3.3, 6.8          # inches: one page column, two
PANEL_HEIGHT = 2.3
FORMATS = ("png", "pdf", "svg")
STYLE = {"font.size": 7, "axes.titlesize": 7, "axes.labelsize": 7, "xtick.labelsize": 6, "ytick.labelsize": 6,
         "legend.fontsize": 6, "legend.frameon": False, "savefig.dpi": 200, "svg.fonttype": "none",
         "pdf.fonttype": 42, "axes.spines.top": False, "axes.spines.right": False}
MAX_PANELS = 6
OBJECT_COLOUR, PART_COLOUR = "#9ecae1", "#08519c"

# The paper's object/part pairs: (object-level task, part-level task). Segmentation: Figure 6
# (docs/protocols.md#object-vs-part-segmentation), for each segmentation protocol; retrieval: the TMLR object
# retrieval (CIFAR-10, COCO) against part retrieval; classification: ImageNet / CIFAR-10 against part
# classification, the same probe on both sides.
SEG_PAIRS = (("ade20k_object59", "ade20k_part209"), ("pascal_object16", "pascal_part193"))
OBJECT_PART_PAIRS = tuple(
    [(f"{o}_{probe}", f"{p}_{probe}") for probe in ("linear_segmentation", "finetune_segmentation",
                                                    "dense_segmentation") for o, p in SEG_PAIRS]
    + [("coco_object_retrieval", "coco_part_retrieval"), ("cifar10_object_retrieval", "cub_part_retrieval")]
    + [(f"{o}_{probe}", f"{p}_{probe}") for probe in ("linear_probe", "attentive_probe")
       for o in ("imagenet", "cifar10") for p in ("cub", "coco")])
# Settings the two sides of a pair must agree on when both record them.
PAIR_SETTINGS = ("include_self", "head", "attentive_variant", "recipe", "epochs", "tokens", "seg_layers",
                 "seg_upsample", "seg_final_norm", "iters", "normalize", "input_size", "precision", "data_source",
                 "synthetic", "weights_branch", "mae_token_shuffle")


@dataclass
class FigureResult:
    name: str
    path: Path | None   # the PNG; None when skipped (PDF, SVG and the legend file lie beside it)
    message: str


# ---------------------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------------------

def current_records(records) -> list[LoadedRecord]:
    """Current records (rerun rule applied) from a folder, folders, a RecordSet or LoadedRecords."""
    if isinstance(records, RecordSet):
        return list(records.current)
    if isinstance(records, (str, os.PathLike)):
        return load_records([records]).current
    records = list(records)
    if records and all(isinstance(r, LoadedRecord) for r in records):
        return records
    return load_records(records).current


def metric_name(cell_or_key: Cell | ColumnKey) -> str:
    column = cell_or_key.column if isinstance(cell_or_key, Cell) else cell_or_key
    return column.metric.split("/", 1)[1]


def _headline_metric(metrics: set[str]) -> str:
    for metric in HEADLINE_METRICS:
        if metric in metrics:
            return metric
    return sorted(metrics)[0]


def _feature_rank(feature: str) -> int:
    return FEATURE_PREFERENCE.index(feature) if feature in FEATURE_PREFERENCE else len(FEATURE_PREFERENCE)


def _labels(cells: Sequence[Cell]) -> dict[RowKey, str]:
    by_pair = model_labels((c.row.model, c.row.checkpoint_sha256) for c in cells)
    return {RowKey(*pair): label for pair, label in by_pair.items()}


def _row_order(row: RowKey) -> tuple:
    return (paper_order(row.model), row.checkpoint_sha256)


def _colours(rows) -> dict[RowKey, str]:
    """One colour per model, the same in every panel (paper order)."""
    return {row: f"C{i % 10}" for i, row in enumerate(sorted(set(rows), key=_row_order))}


def _protocol(record) -> dict:
    return {k: v for k, v in record.protocol.items() if k not in DERIVED_OPTIONS and k not in OUTCOMES}


# ---------------------------------------------------------------------------------------------------
# Output: style, sizes, files, the legend file
# ---------------------------------------------------------------------------------------------------

def _styled(function):
    """Draw and save under the figure style (rc_context: nothing leaks into the caller's matplotlib)."""
    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        with matplotlib.rc_context(STYLE):
            return function(*args, **kwargs)
    return wrapper


def _figure(n_panels: int, columns: int = 2, height: float = PANEL_HEIGHT) -> tuple[Figure, list]:
    """One panel: a page column wide; more: two columns wide, ``columns`` panels a row."""
    cols = 1 if n_panels == 1 else min(n_panels, columns)
    rows = math.ceil(n_panels / cols)
    fig = Figure(figsize=(SINGLE if cols == 1 else DOUBLE, height * rows + 0.35), layout="constrained")
    axes = list(fig.subplots(rows, cols, squeeze=False).ravel())
    for ax in axes[n_panels:]:
        ax.set_axis_off()
    return fig, axes[:n_panels]


def _save(fig: Figure, out_png: str | os.PathLike) -> Path:
    """PNG, PDF and SVG beside each other, each written atomically (a reader never sees half a file)."""
    out_png = Path(out_png)
    for fmt in FORMATS:
        target = out_png if fmt == "png" else out_png.with_suffix(f".{fmt}")
        with atomic_path(target, suffix=f".{fmt}") as tmp:
            fig.savefig(tmp, format=fmt)
    return out_png


class Legend:
    """The variant letters of one figure and the full column each stands for (``<name>.legend.txt``). A letter
    names one series: a leaderboard column, or (per-block curves) a column at every block."""

    def __init__(self, title: str):
        self.title = title
        self.letters: dict[object, str] = {}
        self.names: dict[object, str] = {}
        self.cells: dict[object, list[Cell]] = {}

    def letter(self, key, name: str, cells: Sequence[Cell]) -> str:
        if key not in self.letters:
            self.letters[key], self.names[key], self.cells[key] = _letter(len(self.letters)), name, []
        known = {id(c) for c in self.cells[key]}
        self.cells[key] += [c for c in cells if id(c) not in known]
        return self.letters[key]

    def text(self, labels: dict[RowKey, str]) -> str:
        lines = [f"{self.title}", "", "Each letter in the figure is one series of leaderboard cells "
                 "(python -m analysis.leaderboard); every value it plots is listed with its record file.", ""]
        for key, letter in self.letters.items():
            cells = sorted(self.cells[key], key=lambda c: (_row_order(c.row), -1 if c.column.block is None
                                                           else c.column.block))
            first = cells[0].loaded.record
            blocks = sorted({c.column.block for c in cells}, key=lambda b: -1 if b is None else b)
            lines.append(f"{letter}: {self.names[key]}")
            lines.append(f"   task {first.task} ({task_name(first.probe, first.dataset)}), metric "
                         f"{metric_name(cells[0])}, feature {first.feature}, block(s) "
                         f"{', '.join('final output' if b is None else str(b) for b in blocks)} (0-based), split "
                         f"{first.split}, seed {first.seed}, data {first.data_sha256[:12] or '-'}"
                         + (", GENERATED DATA (never compared with the paper)" if first.is_generated else ""))
            lines.append(f"   protocol: {json.dumps(_protocol(first), sort_keys=True)}")
            for cell in cells:
                at = "" if cell.column.block is None else f" block {cell.column.block}"
                lines.append(f"   {labels.get(cell.row, cell.row.model)}{at}: {cell.value!r}  {cell.loaded.path}")
            lines.append("")
        return "\n".join(lines)

    def write(self, out_png: Path, labels: dict[RowKey, str]) -> Path:
        path = Path(out_png).with_suffix(".legend.txt")
        write_bytes_atomic(path, self.text(labels).encode("utf-8"))
        return path


def _letter(i: int) -> str:
    return chr(ord("A") + i) if i < 26 else f"A{i - 25}"


def _legend_columns(fig: Figure, labels: Sequence[str]) -> int:
    """As many legend columns as fit the figure's width (6 pt font: ~3.2 pt a character, plus the handle)."""
    width_pt = fig.get_figwidth() * 72
    entry_pt = 3.2 * max(len(t) for t in labels) + 30
    return max(1, min(len(labels), int(width_pt // entry_pt)))


def _model_ticks(ax, labels: list[str]) -> None:
    rotate = len(labels) > 3 or max((len(t) for t in labels), default=0) > 10
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(labels, rotation=30 if rotate else 0, ha="right" if rotate else "center")


# ---------------------------------------------------------------------------------------------------
# Object versus part
# ---------------------------------------------------------------------------------------------------

def _headline_cells(cells: Sequence[Cell], task: str) -> dict[RowKey, list[Cell]]:
    """A task's final-block cells of its headline metric, by row."""
    of_task = [c for c in cells if c.column.task == task and c.column.block is None]
    if not of_task:
        return {}
    metric = _headline_metric({metric_name(c) for c in of_task})
    out: dict[RowKey, list[Cell]] = {}
    for cell in of_task:
        if metric_name(cell) == metric:
            out.setdefault(cell.row, []).append(cell)
    return out


def _disagreements(a, b) -> dict[str, tuple]:
    """The PAIR_SETTINGS keys both records set (None: not applicable, e.g. the self-match of a query set searched
    in a disjoint gallery) to different values: key -> (a's, b's)."""
    return {k: (a.protocol[k], b.protocol[k]) for k in PAIR_SETTINGS
            if a.protocol.get(k) is not None and b.protocol.get(k) is not None and a.protocol[k] != b.protocol[k]}


def _agree(a, b) -> bool:
    return not _disagreements(a, b)


def pair_cells(cells: Sequence[Cell], object_task: str, part_task: str) -> list[tuple[RowKey, Cell, Cell]]:
    """(model, object cell, part cell) for every model measured on both sides of one pair: the same feature for
    every model (the one most models have, then the preferred one), the two records of a model agreeing on the
    settings both record, self-match included first (the paper's)."""
    objects, parts = _headline_cells(cells, object_task), _headline_cells(cells, part_task)
    options: dict[str, dict[RowKey, list[tuple[Cell, Cell]]]] = {}
    for row in set(objects) & set(parts):
        for o in objects[row]:
            for p in parts[row]:
                if o.column.feature == p.column.feature and _agree(o.loaded.record, p.loaded.record):
                    options.setdefault(o.column.feature, {}).setdefault(row, []).append((o, p))
    if not options:
        return []
    feature = min(options, key=lambda f: (-len(options[f]), _feature_rank(f), f))
    chosen = []
    for row in sorted(options[feature], key=_row_order):
        o, p = min(options[feature][row], key=lambda op: (op[1].loaded.record.protocol.get("include_self") is False,
                                                          op[0].column.name(), op[1].column.name()))
        chosen.append((row, o, p))
    return chosen


def _near_pairs(cells: Sequence[Cell]) -> list[str]:
    """For a pair with a model on both sides whose records disagree: which settings differ, and how."""
    out = []
    for object_task, part_task in OBJECT_PART_PAIRS:
        objects, parts = _headline_cells(cells, object_task), _headline_cells(cells, part_task)
        for row in sorted(set(objects) & set(parts), key=_row_order):
            differ = {}
            for o in objects[row]:
                for p in parts[row]:
                    differ.update(_disagreements(o.loaded.record, p.loaded.record))
            if differ:
                settings = ", ".join(f"{k} {x} vs {y}" for k, (x, y) in sorted(differ.items()))
                out.append(f"{object_task} vs {part_task}: {row.model} is on both sides, but {settings}")
    return out


def _pair_title(obj: Cell, part: Cell) -> str:
    """``ADE20K-Object-59 vs ADE20K-Part-209 linear seg.``, ``CIFAR-10 vs CUB retrieval``."""
    o, p = obj.loaded.record, part.loaded.record
    kind = "retrieval" if p.probe == "part_retrieval" else PROBE_NAMES.get(p.probe, p.probe)
    return f"{dataset_name(o.dataset)} vs {dataset_name(p.dataset)} {kind}"


@_styled
def object_vs_part(records, out_png: str | os.PathLike) -> FigureResult:
    """Object-level beside part-level score per model, for the paper's pairs only (see the module docstring)."""
    cells = [c for c in build_cells(current_records(records)) if c.column.block is None]
    panels = [(o, p, found) for o, p in OBJECT_PART_PAIRS if (found := pair_cells(cells, o, p))]
    if not panels:
        near = _near_pairs(cells)
        return FigureResult("object_vs_part", None,
                            "skipped: no object/part pair of the paper with a model measured on both sides (pairs: "
                            "ADE20K-Object-59/ADE20K-Part-209, Pascal-Object-16/Pascal-Part-193 segmentation; COCO/"
                            "COCO and CIFAR-10/CUB retrieval; ImageNet or CIFAR-10 vs CUB/COCO linear or attentive "
                            "probe)" + (f"; {'; '.join(near)}" if near else ""))
    left_out = [f"{o} vs {p}" for o, p, _ in panels[MAX_PANELS:]]
    panels = panels[:MAX_PANELS]
    labels = _labels(cells)
    legend = Legend("object_vs_part: object-level (light) beside part-level (dark) score per model")
    fig, axes = _figure(len(panels))
    width = 0.38
    for ax, (_, _, found) in zip(axes, panels):
        pairs = [(legend.letter(o.column, o.column.name(), [o]), legend.letter(p.column, p.column.name(), [p]))
                 for _, o, p in found]
        for offset, side, colour in ((-width / 2, 1, OBJECT_COLOUR), (width / 2, 2, PART_COLOUR)):
            bars = ax.bar([x + offset for x in range(len(found))], [item[side].value for item in found], width=width,
                          color=colour)
            ax.bar_label(bars, fmt="%.1f", fontsize=5, padding=1)
        one_pair = len(set(pairs)) == 1
        generated = [o.loaded.record.is_generated or p.loaded.record.is_generated for _, o, p in found]
        mixed = any(generated) and not all(generated)
        _model_ticks(ax, [labels[row] + ("*" if mixed and g else "") + ("" if one_pair else f" ({a}/{b})")
                          for (row, _, _), (a, b), g in zip(found, pairs, generated)])
        ax.set_xlim(-0.6, max(len(found), 3) - 0.4)
        top = max(max(o.value, p.value) for _, o, p in found)
        ax.set_ylim(0, max(top * 1.15, 1.0))
        metrics = dict.fromkeys(metric_name(cell) for _, o, p in found for cell in (o, p))
        ax.set_ylabel(f"{' / '.join(metrics)} (%)")
        _, o, p = found[0]
        ax.set_title(_pair_title(o, p) + (f": {pairs[0][0]} vs {pairs[0][1]}" if one_pair else "")
                     + ("\n* generated data" if mixed else "\ngenerated data" if all(generated) else ""))
    fig.legend(handles=[Patch(color=OBJECT_COLOUR, label="object level"), Patch(color=PART_COLOUR, label="part level")],
               loc="outside upper center", ncol=2)
    path = _save(fig, out_png)
    legend.write(path, labels)
    return FigureResult("object_vs_part", path, f"{len(panels)} object/part pair(s): "
                        + ", ".join(f"{o} vs {p}" for o, p, _ in panels)
                        + (f" ({MAX_PANELS} panels at most; not drawn: {', '.join(left_out)})" if left_out else ""))


# ---------------------------------------------------------------------------------------------------
# Per-block curves
# ---------------------------------------------------------------------------------------------------

@_styled
def per_block(records, out_png: str | os.PathLike) -> FigureResult:
    """Metric versus block index, one line per model, one panel per task/metric/feature/variant."""
    current = current_records(records)
    cells = build_cells(current)
    block_cells = [c for c in cells if c.column.block is not None]
    if not block_cells:
        return FigureResult("per_block", None, "skipped: no record has `block` set (run a probe with --block k)")
    # One headline metric per task keeps the figure readable; the CSV has them all.
    shown_metric = {task: _headline_metric({metric_name(c) for c in block_cells if c.column.task == task})
                    for task in {c.column.task for c in block_cells}}
    panels: dict[tuple, list[Cell]] = {}
    for cell in block_cells:
        if metric_name(cell) == shown_metric[cell.column.task]:
            key = (cell.column.task, cell.column.metric, cell.column.feature, cell.column.variant)
            panels.setdefault(key, []).append(cell)
    keys = sorted(panels)[:MAX_PANELS]
    labels = _labels(cells)
    colours = _colours(c.row for key in keys for c in panels[key])
    legend = Legend("per_block: metric versus block (0-based) per model; dotted: the same model's final output "
                    "(after the final norm)")
    fig, axes = _figure(len(keys))
    any_final = False
    for ax, key in zip(axes, keys):
        task, metric, feature, variant = key
        by_row: dict[RowKey, list[Cell]] = {}
        for cell in panels[key]:
            by_row.setdefault(cell.row, []).append(cell)
        label = " ".join(f"{k}={v}" for k, v in variant)
        letter = legend.letter(key, f"{metric} [{feature}{' ' + label if label else ''}] at every block",
                               panels[key])
        blocks = sorted({c.column.block for c in panels[key]})
        for row in sorted(by_row, key=_row_order):
            points = sorted(by_row[row], key=lambda c: c.column.block)
            ax.plot([c.column.block for c in points], [c.value for c in points], marker="o", markersize=3,
                    linewidth=1.2, color=colours[row])
            final = _final_value(cells, points, metric)
            if final is not None:
                any_final = True
                ax.axhline(final, linestyle=":", color=colours[row], linewidth=1)
        ax.set_xticks(blocks)
        ax.set_xlim(blocks[0] - 0.5, blocks[-1] + 0.5)
        ax.set_xlabel("block (0-based)")
        ax.set_ylabel(f"{metric.split('/', 1)[1]} (%)")
        record = panels[key][0].loaded.record
        ax.set_title(f"{task_name(record.probe, record.dataset)}, {feature} ({letter})"
                     + ("\ngenerated data" if any(c.loaded.record.is_generated for c in panels[key]) else ""))
    rows = sorted(colours, key=_row_order)
    handles = [Line2D([], [], color=colours[r], marker="o", markersize=3, label=labels[r]) for r in rows]
    if any_final:
        handles.append(Line2D([], [], color="grey", linestyle=":", label="final output"))
    fig.legend(handles=handles, loc="outside lower center", ncol=_legend_columns(fig, [h.get_label() for h in handles]))
    path = _save(fig, out_png)
    legend.write(path, labels)
    n_points = sum(len(panels[key]) for key in keys)
    return FigureResult("per_block", path, f"{len(keys)} panel(s), {n_points} per-block values")


# Protocol options that describe which block was read; they differ between a block and the final output.
BLOCK_OPTIONS = ("feature_source",)


def _final_value(cells: Sequence[Cell], series: Sequence[Cell], metric: str) -> float | None:
    """The same model, task, feature and protocol at the final output (block None), if measured.

    Options that change along the block series (or name the block) are not compared.
    """
    ref = series[0].loaded.record
    varying = {k for c in series for k in c.loaded.record.protocol
               if c.loaded.record.protocol.get(k) != ref.protocol.get(k)}
    ignored = varying | set(BLOCK_OPTIONS)

    def comparable(protocol: dict) -> dict:
        return {k: v for k, v in protocol.items() if k not in ignored}

    for cell in cells:
        r = cell.loaded.record
        if (cell.column.block is None and cell.column.metric == metric and r.model == ref.model
                and r.checkpoint_sha256 == ref.checkpoint_sha256 and r.feature == ref.feature
                and comparable(r.protocol) == comparable(ref.protocol) and r.split == ref.split
                and r.seed == ref.seed):
            return cell.value
    return None


# ---------------------------------------------------------------------------------------------------
# Published versus reproduced
# ---------------------------------------------------------------------------------------------------

def _strip_levels(paper, low: float, high: float) -> list[int]:
    """The line of each paper model's name in the strip: names closer than ~11 % of the axis share no line."""
    last_on_level: list[float] = []
    levels = []
    for _, entry in paper:
        level = next((i for i, x in enumerate(last_on_level) if entry.value - x > 0.11 * (high - low)),
                     len(last_on_level))
        if level == len(last_on_level):
            last_on_level.append(entry.value)
        else:
            last_on_level[level] = entry.value
        levels.append(level)
    return levels


def _paper_strip(strip, paper, levels: Sequence[int]) -> None:
    """The paper's models at their published values, in a strip under the panel (never over data)."""
    for (alias, entry), level in zip(paper, levels):
        strip.plot([entry.value, entry.value], [level + 0.1, level + 0.4], color="black", linewidth=0.8)
        strip.text(entry.value, level + 0.45, PAPER_MODELS[alias], fontsize=5, ha="center", va="bottom")
    strip.set_ylim(0, max(levels, default=0) + 1.1)
    strip.set_yticks([])
    strip.spines["left"].set_visible(False)


def _panel_pairs(fig: Figure, strip_lines: Sequence[int], columns: int = 2) -> list[tuple]:
    """(main axes, strip axes under it sharing x) per panel, the strip as tall as its lines of names."""
    n_panels = len(strip_lines)
    cols = 1 if n_panels == 1 else min(n_panels, columns)
    rows = math.ceil(n_panels / cols)
    grid = fig.add_gridspec(rows, cols)
    out = []
    for i, lines in enumerate(strip_lines):
        sub = grid[i // cols, i % cols].subgridspec(2, 1, height_ratios=(6, 0.45 + 0.4 * max(lines, 1)), hspace=0.0)
        ax = fig.add_subplot(sub[0])
        strip = fig.add_subplot(sub[1], sharex=ax)
        ax.tick_params(labelbottom=False)
        out.append((ax, strip))
    return out


@_styled
def published_vs_reproduced(records, out_png: str | os.PathLike) -> FigureResult:
    """Reproduced against published values, with the paper's range as context (see module docstring)."""
    cells = [c for c in build_cells(current_records(records)) if c.column.block is None]
    panels: dict[tuple[str, str, str], list[Cell]] = {}
    for cell in cells:
        metric = metric_name(cell)
        if cell.published is not None or reference_values(cell.column.task, metric, cell.column.feature):
            panels.setdefault((cell.column.task, metric, cell.column.feature), []).append(cell)
    if not panels:
        return FigureResult("published_vs_reproduced", None,
                            "skipped: no record measures a task, metric and feature the paper publishes "
                            "(e.g. cub_part_retrieval AP with patch_mean)")

    def order(key):      # panels with a published pair first, headline metrics (mIoU before mAcc, aAcc) first
        metric = key[1]
        rank = HEADLINE_METRICS.index(metric) if metric in HEADLINE_METRICS else len(HEADLINE_METRICS)
        return (not any(c.published is not None for c in panels[key]), rank, key)
    keys = sorted(panels, key=order)[:MAX_PANELS]
    labels = _labels(cells)
    colours = _colours(c.row for key in keys for c in panels[key])
    legend = Legend("published_vs_reproduced: reproduced (y) against published (x); dashed: no published value; "
                    "the strip under each panel marks every paper model's published value")
    cols = 1 if len(keys) == 1 else 2
    fig = Figure(figsize=(SINGLE if cols == 1 else DOUBLE, 3.6 * math.ceil(len(keys) / cols)), layout="constrained")
    layout = {}
    for key in keys:
        task, metric, feature = key
        paper = sorted(reference_values(task, metric, feature).items(), key=lambda kv: kv[1].value)
        panel_values = [entry.value for _, entry in paper] + [c.value for c in panels[key]]
        low, high = min(panel_values) - 5, max(panel_values) + 5
        layout[key] = (paper, low, high, _strip_levels(paper, low, high))
    strip_lines = [max(levels, default=0) + 1 for *_, levels in layout.values()]
    n_pairs = n_lines = 0
    for (ax, strip), key in zip(_panel_pairs(fig, strip_lines), keys):
        task, metric, feature = key
        paper, low, high, levels = layout[key]
        ax.plot([low, high], [low, high], color="grey", linewidth=0.8)
        _paper_strip(strip, paper, levels)
        several = len({c.column for c in panels[key]}) > 1
        ordered = sorted(panels[key], key=lambda c: (c.published is None, _row_order(c.row), c.column.name()))
        # one model's variants share its colour: the variant is told by the line style (and marker)
        styles = {column: i for i, column in enumerate(dict.fromkeys(c.column for c in ordered))}
        for cell in ordered:
            style = styles[cell.column]
            letter = legend.letter(cell.column, cell.column.name(), [c for c in panels[key] if c.column == cell.column])
            label = labels[cell.row] + (f" ({letter})" if several else "")
            if cell.published is not None:
                ax.scatter([cell.published], [cell.value], color=colours[cell.row], s=14, zorder=3,
                           marker="os^Dv"[style % 5], label=f"{label}: {cell.value:.1f} vs {cell.published:.1f}")
                n_pairs += 1
            else:
                generated = ", generated data" if cell.loaded.record.is_generated else ""
                ax.axhline(cell.value, linestyle=("--", ":", "-.", (0, (5, 1, 1, 1)))[style % 4], linewidth=0.9,
                           color=colours[cell.row],
                           label=f"{label}: {cell.value:.1f}, no published value{generated}")
                n_lines += 1
        ax.set_xlim(low, high)
        ax.set_ylim(low, high)
        table = paper[0][1].table if paper else "paper"
        strip.set_xlabel(f"published {metric} (%), {table}")
        ax.set_ylabel(f"reproduced {metric} (%)")
        first = panels[key][0].loaded.record
        ax.set_title(f"{task_name(first.probe, first.dataset)} {metric}, {feature}"
                     + ("" if several else f" ({legend.letters[panels[key][0].column]})")
                     + ("\ngenerated data" if all(c.loaded.record.is_generated for c in panels[key]) else ""))
        below_label = offset_copy(strip.transAxes, fig=fig, y=-24, units="points")   # under the ticks and x label
        strip.legend(*ax.get_legend_handles_labels(), loc="upper center", bbox_to_anchor=(0.5, 0),
                     bbox_transform=below_label, ncol=1, fontsize=5)
    path = _save(fig, out_png)
    legend.write(path, labels)
    return FigureResult("published_vs_reproduced", path,
                        f"{len(keys)} panel(s): {n_pairs} published/reproduced pair(s), "
                        f"{n_lines} value(s) without a published counterpart")


# ---------------------------------------------------------------------------------------------------
# Retrieval grids (drawn by probes/grid.py from a record's artifacts)
# ---------------------------------------------------------------------------------------------------

def retrieval_grids(records, out_dir: str | os.PathLike, max_grids: int = 1) -> FigureResult:
    """Query patches and their top-k retrieved patches, for up to ``max_grids`` part-retrieval records, drawn
    from the artifacts the run wrote beside them (``analysis.retrieval_grid``; no encoder runs here)."""
    from analysis.retrieval_grid import GridError, grid_from_record

    if max_grids <= 0:
        return FigureResult("retrieval_grid", None, "skipped: max_grids is 0")
    candidates = [r for r in current_records(records) if r.record.probe == "part_retrieval"
                  and r.record.block is None and r.record.protocol.get("crop") in ("official-code", "paper")]
    if not candidates:
        return FigureResult("retrieval_grid", None, "skipped: no final-block part-retrieval record with crops")
    # self-match excluded first: a grid whose first hit is the query itself shows nothing
    candidates.sort(key=lambda r: (r.record.protocol.get("include_self") is not False,
                                   paper_order(r.record.model), r.record.feature != "patch_mean"))
    written, reasons, seen_models = [], [], set()
    for loaded in candidates:
        if len(written) >= max_grids:
            break
        model = (loaded.record.model, loaded.record.checkpoint_sha256)
        if model in seen_models:
            continue
        name = f"retrieval_grid_{loaded.record.task}_{_safe_name(paper_name(loaded.record.model))}"
        if loaded.record.checkpoint_sha256:
            name += f"_{loaded.record.checkpoint_sha256[:6]}"
        path = Path(out_dir) / f"{name}_{loaded.record.feature}.png"
        try:
            written.append(grid_from_record(loaded.path, path))
            seen_models.add(model)
        except (GridError, OSError) as err:
            reasons.append(str(err))
    if not written:
        return FigureResult("retrieval_grid", None, "skipped: " + "; ".join(dict.fromkeys(reasons)))
    return FigureResult("retrieval_grid", written[0], f"{len(written)} grid(s): " + ", ".join(p.name for p in written))


def _safe_name(name: str) -> str:
    return "".join(c if c.isalnum() or c in "._+-" else "_" for c in name)


# ---------------------------------------------------------------------------------------------------
# Everything at once
# ---------------------------------------------------------------------------------------------------

FIGURES = {
    "object_vs_part": object_vs_part,
    "per_block": per_block,
    "published_vs_reproduced": published_vs_reproduced,
}


def build_all(results, out_dir: str | os.PathLike, max_grids: int = 1) -> list[FigureResult]:
    """Every figure into ``out_dir`` (``<name>.png/.pdf/.svg`` and ``<name>.legend.txt``); a figure without its
    records is skipped."""
    out_dir = Path(out_dir)
    current = current_records(results)
    outcomes = [function(current, out_dir / f"{name}.png") for name, function in FIGURES.items()]
    outcomes.append(retrieval_grids(current, out_dir, max_grids=max_grids))
    return outcomes


def run_notebook(results_dirs: Sequence[str | os.PathLike], out_dir: str | os.PathLike,
                 notebook: str | os.PathLike | None = None, timeout: int = 600, max_grids: int = 1) -> Path:
    """Execute notebooks/figures.ipynb with this interpreter; returns the executed copy in ``out_dir``.

    The kernel is this Python (``sys.executable``), never whatever ``python3`` kernel a user's Jupyter
    setup would pick, so the notebook sees the same installed packages as the caller.
    """
    import tempfile

    # the notebook machinery is in the ``dev`` extra; the figure functions above need only matplotlib
    import nbformat
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import KernelManager
    from nbclient import NotebookClient

    notebook = Path(notebook) if notebook else Path(__file__).resolve().parents[1] / "notebooks" / "figures.ipynb"
    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    nb = nbformat.read(notebook, as_version=4)
    env = dict(os.environ, PARTPROBE_RESULTS_DIR=os.pathsep.join(str(Path(d).resolve()) for d in results_dirs),
               PARTPROBE_FIGURES_DIR=str(out_dir), PARTPROBE_GRIDS=str(max_grids), MPLBACKEND="Agg")
    with tempfile.TemporaryDirectory() as kernels:
        spec_dir = Path(kernels) / "partprobe-python"
        spec_dir.mkdir()
        spec = {"argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                "display_name": "partprobe (this Python)", "language": "python"}
        (spec_dir / "kernel.json").write_text(json.dumps(spec), encoding="utf-8")
        manager = KernelManager(kernel_name="partprobe-python",
                                kernel_spec_manager=KernelSpecManager(kernel_dirs=[kernels]))
        client = NotebookClient(nb, km=manager, timeout=timeout,
                                resources={"metadata": {"path": str(notebook.parent)}})
        try:
            client.execute(env=env)
        finally:  # nbclient leaves a kernel it did not create running; stop ours
            if manager.has_kernel:
                manager.shutdown_kernel(now=True)
    executed = out_dir / notebook.name
    with atomic_path(executed, suffix=".ipynb") as tmp:
        nbformat.write(nb, str(tmp))
    return executed


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m analysis.figures",
                                     description="Build the figures (PNG, PDF, SVG and a legend file each) from "
                                                 "result folders.")
    parser.add_argument("--results", nargs="+", required=True, metavar="DIR", help="result folders to merge")
    parser.add_argument("--out", required=True, metavar="DIR", help="folder for the figure files")
    parser.add_argument("--grids", type=int, default=1, metavar="N",
                        help="retrieval grids to draw from part-retrieval artifacts (0: none)")
    parser.add_argument("--notebook", action="store_true",
                        help="execute notebooks/figures.ipynb instead (also writes the executed notebook)")
    args = parser.parse_args(argv)
    if args.notebook:
        executed = run_notebook(args.results, args.out, max_grids=args.grids)
        print(f"executed notebook: {executed}")
        return 0
    try:
        outcomes = build_all(args.results, args.out, max_grids=args.grids)
    except (LeaderboardError, RecordError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for outcome in outcomes:
        print(f"{outcome.name}: {outcome.path or '-'}  ({outcome.message})")
    return 0


if __name__ == "__main__":
    from probes.errors import run_main
    sys.exit(run_main(main, prog="python -m analysis.figures"))
