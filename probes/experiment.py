"""What every experiment script shares: the base config, the command line, the error policy, loading the
encoder, writing the run's records as a set, and the summary printed at the end.

An experiment is one config dataclass (``Experiment`` plus its own data and protocol sections) and one
``run(cfg) -> list[RunRecord]``; its file ends with ``main = experiment.entry_point(Config, run, __doc__)``.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from probes.errors import debug_requested, error_policy  # the policy every command follows (probes/errors.py)
from probes.options import (ConfigError, ModelOptions, OutputOptions, RunOptions, build_parser, check_block,
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
    """The encoder of ``cfg.model`` on ``cfg.run.device``, forward options set, MAE shuffle seeded by ``cfg.seed``.
    The options that depend on the model (the protocol's ``--block`` and ``--feature``) are checked against it
    here, before any data is read."""
    from probes.distributed import device_for_rank
    from probes.encoders import load

    encoder = load(cfg.model, device=device_for_rank(cfg.run.device), seed=cfg.seed)
    protocol = getattr(cfg, "protocol", None)
    check_block(getattr(protocol, "block", None), encoder)
    features = getattr(protocol, "features", None) or [getattr(protocol, "feature", None)]
    if "projection" in features and not getattr(encoder, "has_projection", False):
        raise ConfigError(f"--feature projection: {model_label(cfg, encoder)} has no projection head (the checkpoint "
                          f"carries none); use cls or patch_mean")
    return encoder


def checked(cfg, skippable: bool = True, **views) -> dict:
    """The views after the data check (probes/views/checks.py): every problem reported at once before the
    work, or with ``--skip-bad-items`` the bad items left out (and recorded; ``skippable=False``: the
    experiment cannot leave items out)."""
    from probes.data import DATASETS
    from probes.views.checks import checked as check

    dataset, root = cfg.data.dataset, cfg.data.data_root
    hint = f" (python -m probes.data check {dataset} --root {root} checks the whole dataset)" \
        if dataset in DATASETS else ""
    return check(views, cfg.data.skip_bad_items if skippable else None, what=f"{dataset} at {root}", hint=hint)


def checked_task(cfg, task):
    """A classification task (probes.views.classification.Task) after the data check of both its views."""
    from probes.views.classification import Task

    views = checked(cfg, train=task.train, eval=task.eval)
    return Task(task.dataset, views["train"], views["eval"], task.class_names)


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
        check_writable(features_dir(), "the feature cache: set PARTPROBE_HOME to another folder, pass --no-cache,")


def task_protocol(cfg, encoder, task) -> dict:
    """The data side of a record over a task's two views (the recorded data options, the views' settings
    and counts, the encoder's forward options and input size): one definition for every script, so the kNN
    records of object retrieval and of the linear probe on the same data are the same configuration."""
    from probes.views.checks import left_out_protocol

    out = {**recorded_values(cfg, ("data",)), **task.describe(), **encoder.forward_protocol(),
           "input_size": encoder.crop_size, **left_out_protocol(task.train, task.eval)}
    if cfg.data.data_source == "synthetic":
        out["synthetic"] = True
    return out


def model_label(cfg: Experiment, encoder) -> str:
    """The name records, the leaderboard and figures use for the model (``encoder``: an encoder or its
    ``info()``): ``--name``, else the registry alias (or name) of the entry, ``timm:<name>`` as typed, or for a
    file its stem and the first 8 hex digits of its SHA-256 (``checkpoint-1a2b3c4d``), so that two files of
    one name stay apart. With ``--arch-kwargs`` 4 hex digits of the build follow (``checkpoint-1a2b3c4d-9f0e``):
    one file built two ways (4 or 8 heads) is two models in every table and figure."""
    if cfg.model.name:
        return cfg.model.name
    return _default_label(cfg, encoder) + _build_suffix(cfg.model)


def _default_label(cfg: Experiment, encoder) -> str:
    info = encoder if isinstance(encoder, Mapping) else encoder.info()
    typed = str(cfg.model.model)
    if typed.startswith("timm:"):
        return typed
    path = Path(typed).expanduser()
    if path.is_file():
        from probes.zoo.loader import CHECKPOINT_SUFFIXES

        stem = path.name
        while stem.endswith(CHECKPOINT_SUFFIXES):
            stem = stem[: stem.rfind(".")]
        return f"{stem or path.name}-{info['checkpoint_sha256'][:8]}"
    from probes.zoo.registry import get_entry

    entry = get_entry(typed)
    return entry.aliases[0] if entry.aliases else entry.name


def _build_suffix(model: ModelOptions) -> str:
    import hashlib
    import json

    if not model.arch_kwargs:
        return ""
    build = json.dumps([model.arch, model.arch_kwargs], sort_keys=True, default=str)
    return "-" + hashlib.sha256(build.encode()).hexdigest()[:4]


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
    """What ran, the key numbers (with the published value where one applies, or why none does for one of the
    paper's models), the files written and where to read them next."""
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
        why_not = [n[len(NO_PUBLISHED):] for n in record.notes if n.startswith(NO_PUBLISHED)]
        if why_not and not record.published:
            print(f"    no published value: {why_not[0]}" + (f" (+{len(why_not) - 1} more in the record's notes)"
                                                          if len(why_not) > 1 else ""))
    if paths:
        folder = Path(paths[0]).parent
        artifacts = sorted({name for r in records for name in r.artifacts.values()})
        print(f"records written to {folder}: {len(paths)} record file(s), config.json"
              + (f", artifacts {', '.join(artifacts)}" if artifacts else ""))
        print(f"tables and leaderboard: python -m analysis.tables --results {folder.parents[2]}")
    synthetic = [r for r in records if r.is_generated]
    if synthetic:
        print("generated data: these numbers are never compared with the paper")
    skipped = max((r.protocol.get("bad_items_skipped", 0) for r in records), default=0)
    if skipped:
        print(f"{skipped} bad items were left out (--skip-bad-items): the records list them in "
              f"protocol_notes.bad_items_skipped, and none is compared with the paper")


NO_PUBLISHED = "no published comparison: "   # the prefix probes.results.make_record gives these notes
