"""What every experiment script shares: the base config, the command line, the error policy, loading the
encoder, writing the run's records as a set, and the summary printed at the end.

An experiment is one config dataclass (``Experiment`` plus its own data and protocol sections) and one
``run(cfg) -> list[RunRecord]``; its file ends with ``main = experiment.entry_point(Config, run, __doc__)``.
"""
from __future__ import annotations

import contextlib
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from probes.options import (ConfigError, ModelOptions, OutputOptions, RunOptions, build_parser,
                            config_from_args, option, recorded_values, resolve, section, to_dict)


@dataclass
class Experiment:
    """The parts every experiment has; subclasses add ``data`` and ``protocol`` sections and ``PRESETS``."""

    PRESETS = {}
    NAME = "experiment"

    preset: str = option("partaware", help="Protocol preset.", cli=False)
    seed: int = option(0, help="Seed of everything random in the run (training order, head initialisation, the "
                                "MAE token shuffle, grid queries).", recorded=False)
    model: ModelOptions = section(ModelOptions)
    run: RunOptions = section(RunOptions)
    output: OutputOptions = section(OutputOptions)


# ---------------------------------------------------------------------------------------------------
# Errors: one policy for every command
# ---------------------------------------------------------------------------------------------------

def user_errors() -> tuple[type[BaseException], ...]:
    """The suite's own errors: bad input the user can fix. They print one message, not a traceback."""
    from probes.data.errors import DatasetFormatError
    from probes.results import RecordError
    from probes.zoo.errors import ZooError

    return (ConfigError, DatasetFormatError, RecordError, ZooError)


def debug_requested(argv) -> bool:
    return "--debug" in (argv or sys.argv[1:]) or os.environ.get("PARTPROBE_DEBUG", "") not in ("", "0")


@contextlib.contextmanager
def error_policy(debug: bool = False, prog: str = "partprobe"):
    """Suite errors end the program with ``error: <message>`` and exit status 2 (``--debug`` or
    PARTPROBE_DEBUG=1: the traceback); any other exception keeps its traceback."""
    try:
        yield
    except user_errors() as err:
        if debug:
            raise
        print(f"{prog}: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None


# ---------------------------------------------------------------------------------------------------
# The command line
# ---------------------------------------------------------------------------------------------------

def entry_point(config_cls, run: Callable, doc: str | None, prog: str | None = None) -> Callable:
    """``main(argv=None)`` of an experiment script: parse the options into a config, run it (once per
    ``--model`` given), report errors by the policy above."""
    description = (doc or "").strip()

    def main(argv=None):
        debug = debug_requested(argv)
        with error_policy(debug, prog or config_cls.NAME):
            parser = build_parser(config_cls, description, prog=prog)
            args = parser.parse_args(argv)
            records = []
            for cfg in config_from_args(config_cls, args):
                records += run(cfg)
            return records
    return main


def parse(config_cls, argv) -> list:
    """The configs a command line describes (one per --model), without running them."""
    parser = build_parser(config_cls)
    return config_from_args(config_cls, parser.parse_args(argv))


# ---------------------------------------------------------------------------------------------------
# Running
# ---------------------------------------------------------------------------------------------------

def load_encoder(cfg: Experiment):
    """The encoder of ``cfg.model`` on ``cfg.run.device``, forward options set, MAE shuffle seeded by ``cfg.seed``."""
    from probes.distributed import device_for_rank
    from probes.encoders import load

    return load(cfg.model, device=device_for_rank(cfg.run.device), seed=cfg.seed)


def results_folder(cfg: Experiment) -> Path:
    from probes.paths import results_dir

    return Path(cfg.output.results) if cfg.output.results else results_dir()


def prepare(cfg):
    """The config with its preset applied and checked (``options.resolve``), and the output folders checked
    for writing before any work: the first line of every ``run``."""
    cfg = resolve(cfg)
    check_outputs(cfg)
    return cfg


def check_outputs(cfg: Experiment) -> None:
    """Fail before the work when the results (or cache) folder cannot be written."""
    from probes.paths import features_dir
    from probes.results import check_writable

    if cfg.output.write:
        check_writable(results_folder(cfg))
    if cfg.run.cache:
        check_writable(features_dir())


def task_protocol(cfg, encoder, task) -> dict:
    """The data side of a record over a task's two views (the recorded data options, the views' settings
    and counts, the encoder's forward options and input size): one definition for every script, so the kNN
    records of object retrieval and of the linear probe on the same data are the same configuration."""
    out = {**recorded_values(cfg, ("data",)), **task.describe(), **encoder.forward_protocol(),
           "input_size": encoder.crop_size}
    if cfg.data.data_source == "synthetic":
        out["synthetic"] = True
    return out


def model_label(cfg: Experiment, encoder) -> str:
    """The name records and figures use for the model."""
    return encoder.info()["name"]


@dataclass
class Run:
    """Collects one run's records and artifacts; ``finish`` writes them as a set and prints the summary."""

    cfg: Any
    experiment: str
    started: float = field(default_factory=time.time)
    records: list = field(default_factory=list)
    artifacts: dict = field(default_factory=dict)
    rows: list = field(default_factory=list)
    first_backoff: int = field(default_factory=lambda: len(_backoffs()))

    def elapsed(self) -> float:
        return time.time() - self.started

    def add(self, record, artifacts: Mapping[str, bytes] | None = None) -> None:
        self.records.append(record)
        self.artifacts.update(artifacts or {})

    def finish(self, headline: Callable | None = None) -> list:
        """Write the records as one set (under torchrun: rank 0 only; every rank computed the same records)
        and print the summary. A batch size reduced after a CUDA out-of-memory error is noted in them."""
        from probes.distributed import is_main
        from probes.results import seal, write_run

        backoffs = _backoffs()[self.first_backoff:]
        if backoffs:
            self.records = [seal(record, notes=[*record.notes, *backoffs]) for record in self.records]
        if not is_main():
            return self.records
        paths = []
        if self.cfg.output.write and self.records:
            paths = write_run(self.records, results_folder(self.cfg), self.experiment, to_dict(self.cfg),
                              self.artifacts)
        print_summary(self.records, paths, headline)
        return self.records


def _backoffs() -> list[str]:
    from probes.features import BACKOFFS

    return BACKOFFS


def print_summary(records: list, paths: list, headline: Callable | None = None) -> None:
    """What ran, the key numbers (with the published value where one applies) and the paths written."""
    if not records:
        print("no record (nothing finished)")
        return
    first = records[0]
    print(f"\n{first.model} ({first.method or 'no method'}, {first.arch or '-'}) on {first.dataset}: "
          f"{len(records)} record(s)")
    for record in records:
        keys = headline(record) if headline else list(record.metrics)[:3]
        parts = []
        for key in keys:
            full = f"{record.task}/{key}"
            if full not in record.metrics:
                continue
            text = f"{key} {record.metrics[full]:.2f}"
            if full in record.published:
                text += f" (paper {record.published[full]:.1f}, delta {record.delta[full]:+.2f})"
            parts.append(text)
        what = record.feature + ("" if record.block is None else f"@block{record.block}")
        variant = record.protocol.get("include_self")
        variant = "" if variant is None else f" self={'in' if variant else 'out'}"
        print(f"  {record.probe:<16} {what:<14}{variant:<10} " + "  ".join(parts))
    if paths:
        print(f"records written to {Path(paths[0]).parent}")
    synthetic = [r for r in records if r.protocol.get("data_source") == "synthetic"]
    if synthetic:
        print("generated data: these numbers are never compared with the paper")
