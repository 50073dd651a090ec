"""Sweeps: every cell of models x experiments x datasets x presets, each run through its experiment's own
``main(argv)``, resumable, on this machine or on a Slurm cluster.

    python -m probes.sweep SWEEP.yaml                          # one cell after another
    python -m probes.sweep SWEEP.yaml --workers 4              # four at a time
    python -m probes.sweep SWEEP.yaml --executor slurm --partition gpu --gpus-per-node 1

SWEEP.yaml::

    results: results/grid                 # every cell's records (and the leaderboard) go here
    models: [dino, mae, timm:vit_small_patch16_224.augreg_in21k]
    experiments: [part-retrieval, object-retrieval]     # or {part-retrieval: {crop: dense}, ...}
    datasets:                             # name: the options of that dataset
      cub: {data-root: data/CUB}
      coco: {data-root: data/coco}
    presets: [partaware, clean]           # optional: each experiment's default preset
    options: {batch-size: 128, num-workers: 8}          # optional: every cell's command line
    leaderboard: results/grid/leaderboard.csv           # optional (this is the default)

Options are the experiments' own flags without ``--`` (``true``/``false`` for switches, lists for repeated
flags). A dataset an experiment does not read, or a preset it does not have, is not a cell. A cell whose
configuration (``--config`` of its command line, resolved: preset applied, data root made absolute; run and
output options aside, as they change no number) equals the ``config.json`` of a finished run in the results
folder is skipped without loading anything, so a killed sweep restarted skips what finished (a cell killed
half-way wrote nothing: records are written as a set). A failing cell is reported at the end (its log named)
and does not stop the others; the exit status is 1 if any failed. The leaderboard is exported at the end
(``analysis.leaderboard.export``). Logs: ``<results>/.sweep/<sweep name>/<cell>.log``.

On Slurm each cell is one submitit job (``pip install 'partprobe[cluster]'``); ``--gpus-per-node N`` with
N > 1 starts N tasks per job, which share the cell's extraction and AP as torchrun ranks would
(``probes.distributed``). A job that reaches its time limit is requeued and resumes from the feature cache.
``--cluster local`` / ``debug`` run the same jobs through submitit's local executors, without Slurm.
"""
from __future__ import annotations

import argparse
import importlib
import itertools
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from probes.__main__ import COMMANDS
from probes.experiment import parse
from probes.errors import UserError
from probes.options import ConfigError, to_dict

NOT_COMPARED = ("run", "output")      # sections that change no number


@dataclass
class Cell:
    name: str                 # experiment/dataset/preset/model, also the log's name
    command: str              # partprobe command, e.g. part-retrieval
    argv: list[str]
    key: dict | None = None   # the resolved configuration, run and output aside
    state: str = "waiting"    # waiting, running, done, skipped, failed
    message: str = ""
    log: Path | None = None
    handle: object = field(default=None, repr=False)


# --- the grid -------------------------------------------------------------------------------------------------
def load_sweep(path: Path) -> dict:
    try:
        spec = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such sweep file") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({err})") from None
    if not isinstance(spec, dict):
        raise ConfigError(f"{path}: expected a mapping with models, experiments and datasets")
    unknown = sorted(set(spec) - {"results", "models", "experiments", "datasets", "presets", "options", "leaderboard"})
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {unknown}")
    for name in ("models", "experiments", "datasets"):
        if not spec.get(name):
            raise ConfigError(f"{path}: {name!r} is missing or empty")
    if not isinstance(spec["models"], list):
        raise ConfigError(f"{path}: models: expected a list of model names")
    experiments = spec["experiments"]
    spec["experiments"] = dict.fromkeys(experiments, None) if isinstance(experiments, list) else dict(experiments)
    for name in spec["experiments"]:
        if not _is_experiment(name):
            raise ConfigError(f"{path}: experiments: {name!r} is not an experiment (one of "
                              f"{', '.join(n for n in COMMANDS if _is_experiment(n))})")
    if not isinstance(spec["datasets"], dict):
        raise ConfigError(f"{path}: datasets: expected a mapping of dataset name to its options")
    spec["results"] = Path(spec.get("results") or os.environ.get("PARTPROBE_RESULTS") or "results").resolve()
    spec["leaderboard"] = Path(spec.get("leaderboard") or spec["results"] / "leaderboard.csv").resolve()
    return spec


def _is_experiment(command: str) -> bool:
    try:
        return command in COMMANDS and config_class(command) is not None
    except (ImportError, StopIteration):
        return False


def config_class(command: str):
    module = importlib.import_module(COMMANDS[command][0])
    return next(v for v in vars(module).values() if isinstance(v, type) and getattr(v, "NAME", None)
                and v.__module__ == module.__name__ and hasattr(v, "PRESETS"))


def to_argv(parser: argparse.ArgumentParser, options: dict | None, where: str) -> list[str]:
    """Command-line words of ``{flag: value}`` as the experiment's parser takes them."""
    argv = []
    for name, value in (options or {}).items():
        flag = "--" + str(name).lstrip("-")
        action = parser._option_string_actions.get(flag)   # noqa: SLF001 - argparse has no public lookup
        if action is None:
            raise ConfigError(f"{where}: {flag} is not an option of this experiment")
        if isinstance(action, argparse.BooleanOptionalAction):
            argv.append(flag if value else "--no-" + flag[2:])
        elif isinstance(value, list):
            argv += [flag, *map(str, value)] if action.nargs == "+" else \
                [word for v in value for word in (flag, str(v))]
        elif isinstance(value, bool):
            argv += [flag, "on" if value else "off"]
        else:
            argv += [flag, str(value)]
    return argv


def cells_of(spec: dict) -> tuple[list[Cell], list[str]]:
    """Every cell of the grid (and a line for each combination that is not one)."""
    from probes.options import build_parser

    cells, not_cells = [], []
    for command, own in spec["experiments"].items():
        cls = config_class(command)
        parser = build_parser(cls)
        has_dataset, dataset_choices = _dataset_choices(cls)
        presets = spec.get("presets") or [cls.__dataclass_fields__["preset"].default]
        for (dataset, dataset_options), preset, model in itertools.product(spec["datasets"].items(), presets,
                                                                          spec["models"]):
            dataset_options = dict(dataset_options or {})
            dataset_name = dataset_options.pop("dataset", dataset)
            if dataset_choices is not None and dataset_name not in dataset_choices:
                not_cells.append(f"{command} reads no {dataset_name} data")
                continue
            if preset not in cls.PRESETS:
                not_cells.append(f"{command} has no preset {preset!r}")
                continue
            where = f"cell {command}/{dataset}/{preset}/{model}"
            if not has_dataset and dataset_name != dataset:
                not_cells.append(f"{command} has no --dataset option")
                continue
            argv = ["--model", str(model), "--preset", preset,
                    *(["--dataset", dataset_name] if has_dataset else []),
                    *to_argv(parser, dataset_options, where), *to_argv(parser, spec.get("options"), where),
                    *to_argv(parser, own, where), "--results", str(spec["results"])]
            name = re.sub(r"[^A-Za-z0-9._+-]+", "_", f"{command}.{dataset}.{preset}.{model}")
            cells.append(Cell(name, command, argv))
    return cells, sorted(set(not_cells))


def _dataset_choices(cls) -> tuple[bool, tuple | None]:
    """(whether the experiment has a --dataset option, its choices if they are a fixed list)."""
    from probes.options import choices_of, walk

    info = next((i for i in walk(cls) if i.path == "data.dataset"), None)
    return info is not None, None if info is None else choices_of(info.type)


def comparable(config: dict) -> dict:
    return json.loads(json.dumps({k: v for k, v in config.items() if k not in NOT_COMPARED}, default=str))


def finished_configs(results: Path, experiment_name: str) -> list[dict]:
    """The configurations of every finished run of an experiment in ``results`` (run and output aside)."""
    out = []
    for path in sorted((results / experiment_name).glob("*/*/config.json")):
        if any(part.startswith(".") for part in path.relative_to(results).parts):
            continue
        try:
            out.append(comparable(json.loads(path.read_text(encoding="utf-8"))))
        except (OSError, json.JSONDecodeError):
            continue
    return out


def mark_finished(cells: list[Cell], results: Path) -> None:
    """Resolve each cell's configuration without running it; a cell already in ``results`` is skipped, a cell
    whose configuration is invalid fails here."""
    done: dict[str, list[dict]] = {}
    for cell in cells:
        cls = config_class(cell.command)
        try:
            (cfg,) = parse(cls, cell.argv)
        except UserError as err:   # a bad option or an unknown model: this cell fails, the others run
            cell.state, cell.message = "failed", f"configuration: {err}"
            continue
        except SystemExit:
            cell.state, cell.message = "failed", f"configuration: bad command line {' '.join(cell.argv)}"
            continue
        cell.key = comparable(to_dict(cfg))
        if cls.NAME not in done:
            done[cls.NAME] = finished_configs(results, cls.NAME)
        if cell.key in done[cls.NAME]:
            cell.state = "skipped"


# --- running ----------------------------------------------------------------------------------------------------
class CellJob:
    """One cell, run in the process that calls it (a submitit job): the experiment's ``main(argv)``. With
    several tasks (``--gpus-per-node N``), the tasks are the ranks of one torch.distributed group."""

    def __init__(self, command: str, argv: list[str]):
        self.command, self.argv = command, list(argv)

    def __call__(self) -> int:
        import submitit

        if submitit.JobEnvironment().num_tasks > 1:
            submitit.helpers.TorchDistributedEnvironment().export()
        module = importlib.import_module(COMMANDS[self.command][0])
        try:
            return len(module.main(self.argv) or [])
        except SystemExit as exit:   # the error policy's exit: a failed job, not the end of the job's process
            if exit.code in (0, None):
                return 0
            raise RuntimeError(f"{self.command} {' '.join(self.argv)}: exit status {exit.code}") from None

    def checkpoint(self):
        """At the time limit (or preemption), requeue the same cell: it resumes from the feature cache."""
        import submitit

        return submitit.helpers.DelayedSubmission(CellJob(self.command, self.argv))


def last_error(log: Path | None) -> str:
    if log is None or not log.is_file():
        return ""
    lines = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()]
    policy = [line for line in lines if re.match(r"^[\w. -]+: error: ", line)]     # the suite's own message
    errors = [line for line in lines if "error" in line.lower()]
    return (policy or errors or lines or [""])[-1][:300]


def summary(cells: list[Cell]) -> str:
    counts = {state: sum(c.state == state for c in cells) for state in ("done", "skipped", "running", "failed",
                                                                         "waiting")}
    return (f"sweep: {counts['done'] + counts['skipped']}/{len(cells)} done ({counts['skipped']} already), "
            f"{counts['running']} running, {counts['failed']} failed, {counts['waiting']} waiting")


def run_local(cells: list[Cell], logs: Path, workers: int, poll: float = 0.5) -> None:
    """Each cell in its own process (``python -m <experiment module> ARGV``), ``workers`` at a time."""
    waiting = [c for c in cells if c.state == "waiting"]
    running: list[Cell] = []
    shown = ""
    try:
        while waiting or running:
            for cell in list(running):
                process, out = cell.handle
                if process.poll() is None:
                    continue
                out.close()
                cell.state = "done" if process.returncode == 0 else "failed"
                if cell.state == "failed":
                    cell.message = f"exit status {process.returncode}: {last_error(cell.log)}"
                running.remove(cell)
            while waiting and len(running) < workers:
                cell = waiting.pop(0)
                cell.log = logs / f"{cell.name}.log"
                out = open(cell.log, "w")
                cell.handle = (subprocess.Popen([sys.executable, "-m", COMMANDS[cell.command][0], *cell.argv],
                                                stdout=out, stderr=subprocess.STDOUT), out)
                cell.state = "running"
                running.append(cell)
            if summary(cells) != shown:
                shown = summary(cells)
                print(shown, flush=True)
            time.sleep(poll if running else 0)
    finally:   # interrupted: stop what runs (it wrote nothing half-way; the rerun does it again)
        for cell in running:
            cell.handle[0].terminate()
            cell.handle[0].wait()


def run_submitit(cells: list[Cell], logs: Path, args, poll: float = 5.0) -> None:
    """One submitit job per cell (Slurm, or submitit's local/debug executors)."""
    try:
        import submitit
    except ImportError:
        raise ConfigError("--executor slurm needs submitit: pip install 'partprobe[cluster]'") from None
    executor = submitit.AutoExecutor(folder=logs / "submitit", cluster=args.cluster)
    parameters = dict(name="partprobe-sweep", timeout_min=args.timeout_min, gpus_per_node=args.gpus_per_node,
                      tasks_per_node=max(1, args.gpus_per_node), cpus_per_task=args.cpus_per_task)
    if args.partition:
        parameters["slurm_partition"] = args.partition
    executor.update_parameters(**parameters)
    for cell in cells:
        if cell.state == "waiting":
            cell.handle = executor.submit(CellJob(cell.command, cell.argv))
            cell.state, cell.log = "running", Path(str(cell.handle.paths.stdout))
    shown = ""
    while True:
        for cell in cells:
            if cell.state != "running":
                continue
            try:
                finished = cell.handle.done()
            except Exception:    # noqa: BLE001 - the debug executor runs the job here and raises its error
                finished = True
            if finished:
                error = cell.handle.exception()
                cell.state = "failed" if error else "done"
                if error:
                    cell.message = f"job {cell.handle.job_id}: {last_error(Path(str(cell.handle.paths.stderr))) or error}"
                    cell.log = Path(str(cell.handle.paths.stderr))
        if summary(cells) != shown:
            shown = summary(cells)
            print(shown, flush=True)
        if not any(cell.state == "running" for cell in cells):
            return
        time.sleep(poll)


def main(argv=None) -> int:
    from probes.experiment import error_policy

    parser = argparse.ArgumentParser(prog="python -m probes.sweep", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("sweep", type=Path, help="The sweep file (YAML).")
    parser.add_argument("--executor", choices=("local", "slurm"), default="local",
                        help="local: cells as processes on this machine; slurm: one submitit job per cell.")
    parser.add_argument("--workers", type=int, default=1, help="local: cells run at once (default 1).")
    parser.add_argument("--partition", default=None, help="slurm: the partition.")
    parser.add_argument("--gpus-per-node", type=int, default=1, help="slurm: GPUs (and tasks) per job.")
    parser.add_argument("--cpus-per-task", type=int, default=10, help="slurm: CPUs per task (DataLoader workers).")
    parser.add_argument("--timeout-min", type=int, default=240, help="slurm: time limit per job; a job that "
                                                                     "reaches it is requeued and resumes.")
    parser.add_argument("--cluster", choices=("slurm", "local", "debug"), default="slurm",
                        help="slurm executor: submitit's cluster (local/debug: its executors without Slurm).")
    parser.add_argument("--dry-run", action="store_true", help="List the cells and their state; run nothing.")
    parser.add_argument("--debug", action="store_true", help="Show the traceback of an error.")
    args = parser.parse_args(argv)
    if args.workers < 1:
        parser.error(f"--workers {args.workers}: expected 1 or more")
    with error_policy(args.debug, "sweep"):
        spec = load_sweep(args.sweep)
        cells, not_cells = cells_of(spec)
        for line in not_cells:
            print(f"not a cell: {line}")
        mark_finished(cells, spec["results"])
        logs = spec["results"] / ".sweep" / args.sweep.stem
        logs.mkdir(parents=True, exist_ok=True)
        print(f"{len(cells)} cells; records in {spec['results']}; logs in {logs}")
        if args.dry_run:
            for cell in cells:
                print(f"  {cell.state:<8} {cell.name}  {cell.message}")
            return 0
        print(summary(cells), flush=True)
        if args.executor == "local":
            run_local(cells, logs, args.workers)
        else:
            run_submitit(cells, logs, args)
        return report(cells, spec)


def report(cells: list[Cell], spec: dict) -> int:
    from analysis.leaderboard import LeaderboardError, export

    failed = [cell for cell in cells if cell.state == "failed"]
    print(summary(cells))
    try:
        exported = export([spec["results"]], spec["leaderboard"])
        print(f"leaderboard: {exported.out} ({exported.n_rows} rows from {exported.n_current} current records)")
    except LeaderboardError as err:
        print(f"leaderboard: not written ({err})")
    for cell in failed:
        print(f"failed: {cell.name}: {cell.message}" + (f" (log: {cell.log})" if cell.log else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
