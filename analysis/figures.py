"""Figures from result records: each function takes records (or result folders) and writes one PNG.

    python -m analysis.figures --results DIR [DIR ...] --out DIR

* ``object_vs_part``: the paper's central comparison. Per model, an object-level score beside a
  part-level score: ADE20K-Object(59) vs ADE20K-Part(209) and Pascal-Object(16) vs Pascal-Part(193) mIoU
  when present (protocols.md §5.4, Figure 6), else every object-level task (ImageNet/CIFAR10 probes, kNN,
  object retrieval) against every part-level task (part retrieval, part classification, part
  segmentation). Without object-level records it shows the part-level scores per feature and says so.
* ``per_block``: metric versus block index per model (records with ``block`` set), one panel per
  task, metric, feature and protocol variant; a dotted line marks the model's final-output value.
* ``published_vs_reproduced``: reproduced (y) against published (x) for every record with a published
  value, on the y = x line; the paper's values for all its models are ticks along the x axis, and a
  record of the same task, metric and feature without a published value (a baseline, or a paper model
  under another protocol) is a dashed horizontal line, so it can be read against the paper's range.
* ``retrieval_grids``: query patches and their top-k retrieved patches, drawn by ``analysis.retrieval_grid``
  from the artifacts a part-retrieval run wrote beside its records (no encoder runs here).

Values come from the leaderboard's cells (``analysis.leaderboard``): one record per configuration after
the rerun rule, and every panel is titled with the leaderboard column it plots. A figure whose records
are absent is skipped with a message saying what it needs.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from matplotlib.figure import Figure  # no pyplot: no global state, works under any backend
from matplotlib.ticker import MaxNLocator

from analysis.leaderboard import Cell, ColumnKey, LoadedRecord, RecordSet, build_cells, load_records
from probes.fileio import atomic_path
from probes.published import PAPER_MODELS, paper_alias, reference_values

HEADLINE_METRICS = ("AP", "top1_best", "top1", "mIoU", "acc1", "mAP")
FEATURE_PREFERENCE = ("patch_mean", "cls", "tokens", "projection")
# Figure 6 pairs (protocols.md §5.4): object dataset -> its part dataset.
SEG_PAIRS = (("ade20k_object59", "ade20k_part209"), ("pascal_object16", "pascal_part193"))
# Datasets whose linear/attentive probes classify keypoint-centred part crops (issue 5), not images.
PART_CROP_DATASETS = ("cub", "coco", "cub_parts", "coco_parts")
MAX_PANELS = 6


@dataclass
class FigureResult:
    name: str
    path: Path | None   # None when skipped
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


def level(probe: str, dataset: str) -> str:
    """'part' or 'object': what a task measures."""
    if probe == "part_retrieval":
        return "part"
    if probe in ("linear_probe", "attentive_probe", "knn") and dataset in PART_CROP_DATASETS:
        return "part"
    if probe == "linear_segmentation":
        return "part" if ("part" in dataset or dataset.startswith("lip")) else "object"
    return "object"


def _headline_metric(metrics: set[str]) -> str:
    for metric in HEADLINE_METRICS:
        if metric in metrics:
            return metric
    return sorted(metrics)[0]


def _headline_columns(cells: Sequence[Cell]) -> dict[str, ColumnKey]:
    """Per task, the one column a summary figure shows: headline metric, preferred feature, most models."""
    by_task: dict[str, dict[ColumnKey, int]] = {}
    for cell in cells:
        if cell.column.block is None:
            counts = by_task.setdefault(cell.column.task, {})
            counts[cell.column] = counts.get(cell.column, 0) + 1

    def rank(item: tuple[ColumnKey, int]) -> tuple:
        column, n_models = item
        metric = metric_name(column)
        metric_rank = HEADLINE_METRICS.index(metric) if metric in HEADLINE_METRICS else len(HEADLINE_METRICS)
        feature_rank = (FEATURE_PREFERENCE.index(column.feature) if column.feature in FEATURE_PREFERENCE
                        else len(FEATURE_PREFERENCE))
        return (metric_rank, feature_rank, -n_models, column.name())

    return {task: min(counts.items(), key=rank)[0] for task, counts in sorted(by_task.items())}


def _model_label(model: str) -> str:
    alias = paper_alias(model)
    return model if alias is None or alias == model else f"{model} ({alias})"


def _save(fig: Figure, out_png: str | os.PathLike) -> Path:
    """Write the PNG atomically: a reader (or a rerun) never sees half an image."""
    out_png = Path(out_png)
    with atomic_path(out_png, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=120, bbox_inches="tight", format="png")
    return out_png


def _grid(n_panels: int, width: float = 5.0, height: float = 3.8) -> tuple[Figure, list]:
    cols = min(n_panels, 2)
    rows = (n_panels + cols - 1) // cols
    fig = Figure(figsize=(width * cols, height * rows))
    axes = [fig.add_subplot(rows, cols, i + 1) for i in range(n_panels)]
    return fig, axes


def _short(name: str, width: int = 60) -> str:
    """Wrap a long column name over lines for a panel title."""
    words, lines, line = name.split(" "), [], ""
    for word in words:
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    return "\n".join(lines + [line])


# ---------------------------------------------------------------------------------------------------
# Object versus part
# ---------------------------------------------------------------------------------------------------

def _bars(ax, models: list[str], series: list[tuple[str, dict[str, float]]]) -> None:
    width = 0.8 / len(series)
    for i, (label, values) in enumerate(series):
        xs = [m + (i - (len(series) - 1) / 2) * width for m in range(len(models))]
        heights = [values.get(model, float("nan")) for model in models]
        bars = ax.bar(xs, heights, width=width, label=label)
        ax.bar_label(bars, fmt="%.1f", fontsize=7)
    ax.set_xticks(range(len(models)))
    ax.set_xticklabels([_model_label(m) for m in models], rotation=30, ha="right", fontsize=8)
    ax.legend(fontsize=7, loc="lower right")


def object_vs_part(records, out_png: str | os.PathLike) -> FigureResult:
    """Object-level versus part-level score per model (see the module docstring)."""
    cells = [c for c in build_cells(current_records(records)) if c.column.block is None]
    if not cells:
        return FigureResult("object_vs_part", None, "skipped: no records of a final-block feature")
    headline = _headline_columns(cells)
    values = {task: {c.row.model: c.value for c in cells if c.column == column} for task, column in headline.items()}
    first_record = {c.column.task: c.loaded.record for c in cells}
    levels = {task: level(first_record[task].probe, first_record[task].dataset) for task in headline}

    pairs = [(obj, part) for obj_ds, part_ds in SEG_PAIRS
             for obj, part in [(f"{obj_ds}_linear_segmentation", f"{part_ds}_linear_segmentation")]
             if obj in headline and part in headline]
    if not pairs:
        objects = [t for t in headline if levels[t] == "object"]
        parts = [t for t in headline if levels[t] == "part"]
        pairs = [(o, p) for o in objects for p in parts if set(values[o]) & set(values[p])]
    if pairs:
        pairs = pairs[:MAX_PANELS]
        fig, axes = _grid(len(pairs))
        for ax, (obj, part) in zip(axes, pairs):
            models = sorted(set(values[obj]) | set(values[part]), key=_paper_order)
            _bars(ax, models, [(f"object: {headline[obj].name()}", values[obj]),
                               (f"part: {headline[part].name()}", values[part])])
            ax.set_title(f"object-level {obj} vs part-level {part}", fontsize=9)
            ax.set_ylabel("score (%)")
        fig.suptitle("Object-level versus part-level scores per model", fontsize=11)
        path = _save(fig, out_png)
        return FigureResult("object_vs_part", path, f"{len(pairs)} object/part pair(s): "
                            + ", ".join(f"{o} vs {p}" for o, p in pairs))

    # No object-level task measured: show what the part-level records say, per feature, and say so.
    part_tasks = [t for t in headline if levels[t] == "part"] or list(headline)
    part_tasks = part_tasks[:MAX_PANELS]
    fig, axes = _grid(len(part_tasks))
    for ax, task in zip(axes, part_tasks):
        metric = headline[task].metric
        series: dict[str, dict[str, float]] = {}
        for cell in cells:
            if cell.column.task == task and cell.column.metric == metric:
                label = cell.column.descriptor()
                series.setdefault(label, {})[cell.row.model] = cell.value
        models = sorted({m for v in series.values() for m in v}, key=_paper_order)
        _bars(ax, models, sorted(series.items())[:6])
        ax.set_title(f"{metric} by feature and protocol", fontsize=9)
        ax.set_ylabel("score (%)")
    fig.suptitle("No object-level records: part-level scores only (run an object-level probe to compare)",
                 fontsize=10)
    path = _save(fig, out_png)
    return FigureResult("object_vs_part", path,
                        "no object-level records: plotted part-level scores per feature instead ("
                        + ", ".join(part_tasks) + ")")


def _paper_order(model: str) -> tuple:
    alias = paper_alias(model)
    return (0, list(PAPER_MODELS).index(alias), model) if alias else (1, 0, model)


# ---------------------------------------------------------------------------------------------------
# Per-block curves
# ---------------------------------------------------------------------------------------------------

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
    fig, axes = _grid(len(keys))
    for ax, key in zip(axes, keys):
        task, metric, feature, variant = key
        by_model: dict[str, list[Cell]] = {}
        for cell in panels[key]:
            by_model.setdefault(cell.row.model, []).append(cell)
        for model in sorted(by_model, key=_paper_order):
            points = sorted(by_model[model], key=lambda c: c.column.block)
            line, = ax.plot([c.column.block for c in points], [c.value for c in points], marker="o",
                            label=_model_label(model))
            final = _final_value(cells, points, metric)
            if final is not None:
                ax.axhline(final, linestyle=":", color=line.get_color(), linewidth=1)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("block (0-based)")
        ax.set_ylabel(f"{metric.split('/', 1)[1]} (%)")
        label = " ".join(f"{k}={v}" for k, v in variant)
        ax.set_title(_short(f"{metric} [{feature} {label}]".replace(" ]", "]")), fontsize=8)
        ax.legend(fontsize=7)
    fig.suptitle("Per-block curves (dotted: the model's final output, after the final norm)", fontsize=10)
    path = _save(fig, out_png)
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
    keys = sorted(panels, key=lambda k: (not any(c.published is not None for c in panels[k]), k))[:MAX_PANELS]
    fig, axes = _grid(len(keys), width=5.2, height=4.6)
    n_pairs = n_lines = 0
    for ax, key in zip(axes, keys):
        task, metric, feature = key
        references = reference_values(task, metric, feature)
        paper = sorted(references.items(), key=lambda kv: list(PAPER_MODELS).index(kv[0]))
        xs = [entry.value for _, entry in paper]
        panel_values = xs + [c.value for c in panels[key]]
        low, high = min(panel_values) - 5, max(panel_values) + 5
        ax.plot([low, high], [low, high], color="grey", linewidth=1, label="reproduced = published")
        for alias, entry in paper:  # the paper's models, as ticks on the x axis
            ax.axvline(entry.value, ymax=0.04, color="black", linewidth=1)
            ax.annotate(alias, (entry.value, low), textcoords="offset points", xytext=(0, 8), rotation=90,
                        fontsize=6, ha="center")
        ordered = sorted(panels[key], key=lambda c: (c.published is None, _paper_order(c.row.model),
                                                         c.column.name()))
        for i, cell in enumerate(ordered):
            variant = " ".join(f"{k}={v}" for k, v in cell.column.variant)
            label = _model_label(cell.row.model) + (f" [{variant}]" if variant else "")
            colour = f"C{i % 10}"
            if cell.published is not None:
                ax.scatter([cell.published], [cell.value], color=colour, zorder=3,
                           label=f"{label}: {cell.value:.1f} vs {cell.published:.1f}")
                n_pairs += 1
            else:
                protocol = cell.loaded.record.protocol
                synthetic = protocol.get("data_source") == "synthetic" or protocol.get("synthetic") is True
                ax.axhline(cell.value, linestyle="--", linewidth=1, color=colour,
                           label=f"{label}: {cell.value:.1f}, no published value"
                                 + (" (generated data)" if synthetic else ""))
                n_lines += 1
        ax.set_xlim(low, high)
        ax.set_ylim(low, high)
        ax.set_xlabel(f"published {metric} (%) — {paper[0][1].table if paper else 'paper'}, ticks: paper models")
        ax.set_ylabel(f"reproduced {metric} (%)")
        ax.set_title(_short(f"{task} {metric} [{feature}]"), fontsize=9)
        ax.legend(fontsize=6, loc="best")
    fig.suptitle("Published (Zhu et al., ICLR 2023 submission) versus reproduced", fontsize=10)
    path = _save(fig, out_png)
    return FigureResult("published_vs_reproduced", path,
                        f"{len(keys)} panel(s): {n_pairs} published/reproduced pair(s), "
                        f"{n_lines} value(s) without a published counterpart")


# ---------------------------------------------------------------------------------------------------
# Retrieval grids (owned by the retrieval engineer; reused, not duplicated)
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
                                   _paper_order(r.record.model), r.record.feature != "patch_mean"))
    written, reasons, seen_models = [], [], set()
    for loaded in candidates:
        if len(written) >= max_grids:
            break
        if loaded.record.model in seen_models:
            continue
        path = Path(out_dir) / f"retrieval_grid_{loaded.record.task}_{_safe_name(loaded.record.model)}_{loaded.record.feature}.png"
        try:
            written.append(grid_from_record(loaded.path, path))
            seen_models.add(loaded.record.model)
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
    """Every figure into ``out_dir`` (``<name>.png``); a figure without its records is skipped."""
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
                                     description="Build the figures (PNG) from result folders.")
    parser.add_argument("--results", nargs="+", required=True, metavar="DIR", help="result folders to merge")
    parser.add_argument("--out", required=True, metavar="DIR", help="folder for the PNG files")
    parser.add_argument("--grids", type=int, default=1, metavar="N",
                        help="retrieval grids to draw from part-retrieval artifacts (0: none)")
    parser.add_argument("--notebook", action="store_true",
                        help="execute notebooks/figures.ipynb instead (also writes the executed notebook)")
    args = parser.parse_args(argv)
    if args.notebook:
        executed = run_notebook(args.results, args.out, max_grids=args.grids)
        print(f"executed notebook: {executed}")
        return 0
    for outcome in build_all(args.results, args.out, max_grids=args.grids):
        print(f"{outcome.name}: {outcome.path or '-'}  ({outcome.message})")
    return 0


if __name__ == "__main__":
    from probes.errors import run_main
    sys.exit(run_main(main, prog="python -m analysis.figures"))
