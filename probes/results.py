"""One typed, versioned result record per run, written atomically beside its resolved configuration.

Every probe ends with::

    record = make_record(
        probe="part_retrieval", dataset="cub", split="all",
        encoder_info=encoder.info(),            # name, method, arch, checkpoint_sha256, ...
        feature="patch_mean", block=None,
        protocol={...every option that changes a number...},
        metrics={"AP": 51.2, "mAP": 50.8},      # unprefixed here; stored prefixed by task
        seed=0, wall_time_s=12.3, device="cpu",
    )
    write_record(record, results_dir, config=resolved_config)

Files: ``<results>/<task>/<model>/<run_id>.json`` and ``<run_id>.config.json``. ``run_id`` is unique
per run (time + random), so any number of processes can write into one folder at once and nothing
is ever overwritten. Reruns of one configuration share ``config_hash``; the leaderboard resolves
them by a stated rule. The schema is documented in ``probes/results_schema.json``.

Metric values are percentages (0-100) for AP, mAP, precision@k, accuracy and mIoU, as in the paper.
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import json
import os
import platform
import re
import secrets
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from probes import __version__
from probes.fileio import write_json_atomic

SCHEMA_VERSION = "1.0"

# Probe names the suite writes; the task is "<dataset>_<probe>", e.g. "cub_part_retrieval".
PROBES = ("part_retrieval", "object_retrieval", "knn", "linear_probe", "attentive_probe")


@dataclass
class RunRecord:
    schema_version: str
    run_id: str
    config_hash: str
    probe: str
    task: str
    dataset: str
    split: str
    model: str
    method: str
    arch: str
    checkpoint_sha256: str
    feature: str
    block: int | None
    protocol: dict[str, Any]
    metrics: dict[str, float]
    published: dict[str, float]
    delta: dict[str, float]
    seed: int | None
    package_version: str
    git_commit: str
    created: str
    wall_time_s: float
    device: str
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "<dict>") -> "RunRecord":
        version = data.get("schema_version")
        if version != SCHEMA_VERSION:
            raise ValueError(f"{source}: field 'schema_version' is {version!r}, expected {SCHEMA_VERSION!r}")
        names = {f.name for f in dataclasses.fields(cls)}
        missing = sorted(n for n in names if n not in data and n != "notes")
        if missing:
            raise ValueError(f"{source}: missing field(s) {missing} of a result record")
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"{source}: unknown field(s) {unknown} in a result record")
        for key in ("protocol", "metrics", "published", "delta"):
            if not isinstance(data[key], dict):
                raise ValueError(f"{source}: field {key!r} must be an object, got {type(data[key]).__name__}")
        for key, value in data["metrics"].items():
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                raise ValueError(f"{source}: metric {key!r} must be a number, got {value!r}")
        return cls(**{k: data[k] for k in names if k in data})

    @classmethod
    def load(cls, path: str | os.PathLike) -> "RunRecord":
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: not valid JSON ({err})") from None
        return cls.from_dict(data, source=str(path))


def task_name(dataset: str, probe: str) -> str:
    if probe not in PROBES:
        raise ValueError(f"probe {probe!r} is not one of {PROBES}")
    return f"{dataset}_{probe}"


def config_hash(identity: Mapping[str, Any]) -> str:
    """SHA-256 (first 16 hex) of the canonical JSON of everything that defines a configuration."""
    canonical = json.dumps(identity, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]


def git_commit() -> str:
    """The commit of the code that ran, with ``+dirty`` when the work tree had changes; ``unknown`` outside git."""
    root = Path(__file__).resolve().parents[1]
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        if sha.returncode != 0:
            return "unknown"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10)
        return sha.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def new_run_id() -> str:
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    return f"{stamp}-{secrets.token_hex(4)}"


def make_record(*, probe: str, dataset: str, split: str, encoder_info: Mapping[str, Any], feature: str,
                block: int | None, protocol: Mapping[str, Any], metrics: Mapping[str, float],
                seed: int | None, wall_time_s: float, device: str, notes: list[str] | None = None) -> RunRecord:
    """Build a record; metric names get the task prefix and published values are looked up."""
    from probes.published import published_values  # local: the table is only needed here

    task = task_name(dataset, probe)
    protocol = {k: _plain(v) for k, v in sorted(protocol.items())}
    identity = {
        "probe": probe, "dataset": dataset, "split": split, "model": encoder_info["name"],
        "checkpoint_sha256": encoder_info.get("checkpoint_sha256", ""), "feature": feature,
        "block": block, "protocol": protocol, "seed": seed,
    }
    prefixed = {f"{task}/{name}": float(value) for name, value in metrics.items()}
    published = published_values(task=task, model=encoder_info["name"], feature=feature, protocol=protocol)
    published = {f"{task}/{name}": float(v) for name, v in published.items() if f"{task}/{name}" in prefixed}
    delta = {key: prefixed[key] - value for key, value in published.items()}
    return RunRecord(
        schema_version=SCHEMA_VERSION, run_id=new_run_id(), config_hash=config_hash(identity),
        probe=probe, task=task, dataset=dataset, split=split, model=encoder_info["name"],
        method=encoder_info.get("method", ""), arch=encoder_info.get("arch", ""),
        checkpoint_sha256=encoder_info.get("checkpoint_sha256", ""), feature=feature, block=block,
        protocol=protocol, metrics=prefixed, published=published, delta=delta, seed=seed,
        package_version=__version__, git_commit=git_commit(),
        created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="microseconds"),
        wall_time_s=float(wall_time_s), device=device or platform.node(), notes=list(notes or []),
    )


def write_record(record: RunRecord, results_dir: str | os.PathLike, config: Mapping[str, Any]) -> Path:
    """Write ``<run_id>.config.json`` then ``<run_id>.json`` atomically; returns the record's path.

    The record is written last, so a record on disk always has its configuration beside it.
    """
    folder = Path(results_dir) / record.task / _safe(record.model)
    write_json_atomic(folder / f"{record.run_id}.config.json", {k: _plain(v) for k, v in config.items()})
    return write_json_atomic(folder / f"{record.run_id}.json", record.to_dict())


def iter_record_paths(results_dir: str | os.PathLike):
    """Every record file under a results folder (configs and temporary files excluded), sorted."""
    for path in sorted(Path(results_dir).rglob("*.json")):
        if not path.name.endswith(".config.json") and not path.name.startswith("."):
            yield path


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._+-]+", "_", name)


def _plain(value: Any) -> Any:
    """JSON-plain form of an option value (paths and tuples become strings and lists)."""
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        return value.item()
    return value
