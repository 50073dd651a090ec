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
them by a stated rule. The schema is documented in ``probes/results_schema.json``; ``validate_record``
checks the same rules (plus the cross-field ones a JSON Schema cannot state) with errors that name
the file, the field and what was expected.

Metric values are percentages (0-100) for AP, mAP, precision@k, accuracy and mIoU, as in the paper.
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import functools
import hashlib
import json
import math
import os
import platform
import re
import secrets
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from probes import __version__
from probes.errors import UserError
from probes.fileio import write_bytes_atomic, write_json_atomic
from probes.options import plain

SCHEMA_VERSION = "2.0"
READABLE_VERSIONS = ("1.0", "2.0")      # 1.0 records are upgraded on read (upgrade_record)
SCHEMA_PATH = Path(__file__).with_name("results_schema.json")

# Probe names the suite writes; the task is "<dataset>_<probe>", e.g. "cub_part_retrieval".
PROBES = ("part_retrieval", "object_retrieval", "knn", "linear_probe", "attentive_probe", "linear_segmentation",
          "finetune_segmentation", "dense_segmentation", "detection")

RUN_ID_PATTERN = re.compile(r"^\d{8}T\d{12}Z-[0-9a-f]{8}$")
CONFIG_HASH_PATTERN = re.compile(r"^[0-9a-f]{16}$")
SHA256_PATTERN = re.compile(r"^([0-9a-f]{64})?$")  # empty for encoders without a checkpoint file (baselines)
CONFIG_NAME = "config.json"                       # the run's configuration, beside its records (schema 2.0)


class RecordError(UserError, ValueError):
    """A result record (or its file) breaks the schema; the message names the source and the field."""


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
    format: str
    checkpoint_sha256: str
    feature: str
    block: int | None
    protocol: dict[str, Any]
    metrics: dict[str, float]
    published: dict[str, float]
    delta: dict[str, float]
    seed: int | None
    data_sha256: str
    package_version: str
    git_commit: str
    created: str
    wall_time_s: float
    device: str
    content_sha256: str
    notes: list[str] = field(default_factory=list)
    # metric key -> where its published value comes from (table, column, mapping assumptions)
    published_source: dict[str, str] = field(default_factory=dict)
    # descriptions of protocol settings (prose); not part of config_hash
    protocol_notes: dict[str, str] = field(default_factory=dict)
    # artifact name -> file name beside the record (per-query tables, top-k lists, crop boxes)
    artifacts: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "<dict>") -> "RunRecord":
        data = upgrade_record(data, source)
        validate_record(data, source)
        names = [f.name for f in dataclasses.fields(cls)]
        return cls(**{k: data[k] for k in names if k in data})

    @classmethod
    def load(cls, path: str | os.PathLike) -> "RunRecord":
        return cls.from_dict(read_record_json(path), source=str(path))

    def identity(self) -> dict[str, Any]:
        return record_identity(self.to_dict())

    @property
    def is_generated(self) -> bool:
        """Measured on generated data (``probes.data synth``): never compared with the paper."""
        return self.protocol.get("data_source") == "synthetic" or self.protocol.get("synthetic") is True


# ---------------------------------------------------------------------------------------------------
# Validation: the same rules as results_schema.json, with messages that name file, field, expectation.
# ---------------------------------------------------------------------------------------------------

_OPTIONAL_FIELDS = {"notes": list, "published_source": dict, "protocol_notes": dict, "artifacts": dict}


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_json_plain(value: Any) -> bool:
    if value is None or isinstance(value, (str, bool, int)):
        return True
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, list):
        return all(_is_json_plain(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _is_json_plain(v) for k, v in value.items())
    return False


def validate_record(data: Any, source: str = "<dict>") -> None:
    """Raise RecordError naming ``source``, the field and what was expected, at the first violation.

    Checks schema 2.0 (upgrade a 1.0 record first with ``upgrade_record``), including the cross-field rules
    a JSON Schema cannot state and the record's own digest (``content_sha256``): a record edited by hand is
    refused.
    """
    def fail(name: str, expected: str, value: Any = dataclasses.MISSING) -> None:
        got = "" if value is dataclasses.MISSING else f", got {value!r}"
        raise RecordError(f"{source}: field {name!r}: expected {expected}{got}")

    if not isinstance(data, Mapping):
        raise RecordError(f"{source}: expected a JSON object (a result record), got {type(data).__name__}")
    version = data.get("schema_version")
    if version != SCHEMA_VERSION:
        fail("schema_version", f"{SCHEMA_VERSION!r} (this reader's schema version)", version)
    names = [f.name for f in dataclasses.fields(RunRecord)]
    missing = [n for n in names if n not in data and n not in _OPTIONAL_FIELDS]
    if missing:
        raise RecordError(f"{source}: missing field(s) {missing} of a result record")
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise RecordError(f"{source}: unknown field(s) {unknown} in a result record (schema {SCHEMA_VERSION})")

    for name in ("probe", "task", "dataset", "split", "model", "method", "arch", "format", "feature",
                 "package_version", "git_commit", "device", "data_sha256", "content_sha256"):
        if not isinstance(data[name], str):
            fail(name, "a string", data[name])
    for name in ("probe", "task", "dataset", "split", "model", "feature"):
        if not data[name]:
            fail(name, "a non-empty string", data[name])
    if not RUN_ID_PATTERN.match(str(data["run_id"])):
        fail("run_id", "'<UTC yyyymmddThhmmssffffff>Z-<8 hex>'", data["run_id"])
    if not isinstance(data["config_hash"], str) or not CONFIG_HASH_PATTERN.match(data["config_hash"]):
        fail("config_hash", "16 lowercase hex digits", data["config_hash"])
    for name in ("checkpoint_sha256", "data_sha256"):
        if not SHA256_PATTERN.match(data[name]):
            fail(name, "64 lowercase hex digits, or '' when there is none", data[name])
    if data["probe"] not in PROBES:
        fail("probe", f"one of {list(PROBES)}", data["probe"])
    if data["task"] != f"{data['dataset']}_{data['probe']}":
        fail("task", f"'<dataset>_<probe>' = {data['dataset']}_{data['probe']!s}", data["task"])
    for name in ("block", "seed"):
        value = data[name]
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
            fail(name, "a non-negative integer or null", value)
    if not _is_number(data["wall_time_s"]) or not math.isfinite(data["wall_time_s"]) or data["wall_time_s"] < 0:
        fail("wall_time_s", "a non-negative number of seconds", data["wall_time_s"])
    try:
        created = _dt.datetime.fromisoformat(str(data["created"]))
    except ValueError:
        created = None
    if created is None or created.tzinfo is None:
        fail("created", "an ISO 8601 timestamp with a time zone", data["created"])

    if not isinstance(data["protocol"], dict) or not _is_json_plain(data["protocol"]):
        fail("protocol", "an object of JSON values (strings, numbers, booleans, null, lists, objects)",
             data["protocol"])
    prefix = f"{data['task']}/"
    for name in ("metrics", "published", "delta"):
        table = data[name]
        if not isinstance(table, dict):
            fail(name, "an object mapping '<task>/<metric>' to a number", table)
        for key, value in table.items():
            if not key.startswith(prefix) or len(key) == len(prefix):
                fail(f"{name}.{key}", f"a metric name prefixed by the task, '{prefix}<metric>'")
            if not _is_number(value) or not math.isfinite(value):
                fail(f"{name}.{key}", "a finite number (percent)", value)
    for key in data["published"]:
        if key not in data["metrics"]:
            fail(f"published.{key}", "a published value only for a metric the run measured")
    if set(data["delta"]) != set(data["published"]):
        fail("delta", f"one difference per published value, keys {sorted(data['published'])}", sorted(data["delta"]))
    for key, value in data["delta"].items():
        if abs(value - (data["metrics"][key] - data["published"][key])) > 1e-6:
            fail(f"delta.{key}", f"metrics - published = {data['metrics'][key] - data['published'][key]!r}", value)
    notes = data.get("notes", [])
    if not isinstance(notes, list) or not all(isinstance(n, str) for n in notes):
        fail("notes", "a list of strings", notes)
    for name in ("published_source", "protocol_notes", "artifacts"):
        table = data.get(name, {})
        if not isinstance(table, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in table.items()):
            fail(name, "an object mapping strings to strings", table)
    for key in data.get("published_source", {}):
        if key not in data["published"]:
            fail(f"published_source.{key}", "a source only for a metric with a published value")
    for name, file_name in data.get("artifacts", {}).items():
        if "/" in file_name or "\\" in file_name or file_name.startswith("."):
            fail(f"artifacts.{name}", "a file name beside the record (no folder part)", file_name)
    if data["content_sha256"]:           # '' only for records upgraded from schema 1.0, which had no digest
        if config_hash(record_identity(data)) != data["config_hash"]:
            fail("config_hash", f"{config_hash(record_identity(data))} (the hash of the record's configuration; "
                                "the record was changed after it was written)", data["config_hash"])
        if content_digest(data) != data["content_sha256"]:
            fail("content_sha256", f"{content_digest(data)} (the digest of the record's metrics, protocol and "
                                   "identity; the record was changed after it was written)", data["content_sha256"])


# ---------------------------------------------------------------------------------------------------
# Schema 1.0 records: read, upgraded
# ---------------------------------------------------------------------------------------------------

# Protocol values of schema 1.0 that were descriptions, not settings: schema 2.0 keeps them in protocol_notes.
V1_PROSE_KEYS = ("ap", "crop_side", "crop_resize", "part_visibility", "feature_source", "dense", "knn_protocol",
                 "train_transform", "eval_transform", "recipe_source", "train_augmentation", "model_selection",
                 "reference", "weighting", "crop")
# kNN settings had per-script names in schema 1.0; schema 2.0 has one kNN protocol (probes.options.KnnOptions).
V1_KNN_RENAMES = {"k": "knn_k", "ks": "knn_ks", "temperature": "knn_temperature", "train_size": "num_train"}


def upgrade_record(data: Any, source: str = "<dict>") -> Any:
    """A schema 1.0 record as a schema 2.0 one (anything else is returned as it is).

    Descriptions move from ``protocol`` to ``protocol_notes``, kNN settings get their 2.0 names; the
    record's ``config_hash`` is kept (it identified the configuration when it was written). A 1.0 record
    has no digest (``content_sha256`` ''), no data identity and no format.
    """
    if not isinstance(data, Mapping) or data.get("schema_version") != "1.0":
        return data
    out = dict(data)
    protocol, notes = {}, {}
    for key, value in dict(data.get("protocol") or {}).items():
        prose = key in V1_PROSE_KEYS and isinstance(value, str) and (key != "crop" or " " in value)
        if prose:
            notes[key] = value
        elif data.get("probe") == "knn" and key in V1_KNN_RENAMES:
            protocol[V1_KNN_RENAMES[key]] = value
        else:
            protocol[key] = value
    out.update(schema_version=SCHEMA_VERSION, protocol=protocol, protocol_notes=notes, format="",
               data_sha256="", content_sha256="", artifacts={})
    return out


# ---------------------------------------------------------------------------------------------------
# Identity and digests
# ---------------------------------------------------------------------------------------------------

IDENTITY_FIELDS = ("probe", "dataset", "split", "model", "method", "arch", "format", "checkpoint_sha256", "feature",
                   "block", "protocol", "seed", "data_sha256")


def record_identity(data: Mapping[str, Any]) -> dict[str, Any]:
    """Everything that defines a configuration: what ran (weights, format, method, the architecture they were
    built into: one file read with 4 or 8 heads is two configurations), on what data (``data_sha256``, the
    views' identity), with which protocol. Two different datasets, files, formats or builds never share a
    ``config_hash``."""
    return {name: data[name] for name in IDENTITY_FIELDS}


def config_hash(identity: Mapping[str, Any]) -> str:
    """SHA-256 (first 16 hex) of the canonical JSON of everything that defines a configuration."""
    canonical = json.dumps(identity, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]


def content_digest(data: Mapping[str, Any]) -> str:
    """SHA-256 of a record's results and what they are results of (everything but the digest itself)."""
    body = {k: v for k, v in data.items() if k != "content_sha256"}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def data_digest(*identities: Any) -> str:
    """SHA-256 of view identities (``view.identity()``): the data a record was measured on. The views' image
    transform is left out: it is the protocol's (``image_transform``, ``normalize``), and two probes on one
    dataset with two transforms measured the same data."""
    data = [{k: v for k, v in identity.items() if k != "transform"} if isinstance(identity, Mapping) else identity
            for identity in identities]
    canonical = json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def read_record_json(path: str | os.PathLike) -> Any:
    """The parsed JSON of a record file; RecordError naming the file when it is not JSON."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise RecordError(f"{path}: not valid JSON ({err})") from None
    except UnicodeDecodeError as err:
        raise RecordError(f"{path}: not UTF-8 text ({err})") from None
    except FileNotFoundError:
        raise RecordError(f"{path}: no such record file") from None
    except IsADirectoryError:
        raise RecordError(f"{path}: a folder, not a record file (<run_id>.json)") from None


# ---------------------------------------------------------------------------------------------------
# Building records
# ---------------------------------------------------------------------------------------------------

def task_name(dataset: str, probe: str) -> str:
    if probe not in PROBES:
        raise ValueError(f"probe {probe!r} is not one of {PROBES}")
    return f"{dataset}_{probe}"


@functools.lru_cache(maxsize=1)
def git_commit() -> str:
    """The commit of the code that ran, with ``+dirty`` when the work tree had changes; ``unknown`` outside git.

    Asked once per process: the code that runs is the code imported at start.
    """
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
                seed: int | None, wall_time_s: float, device: str, notes: list[str] | None = None,
                protocol_notes: Mapping[str, str] | None = None, data_sha256: str = "",
                model: str | None = None, artifacts: Mapping[str, str] | None = None) -> RunRecord:
    """Build a validated record; metric names get the task prefix and published values are looked up.

    A published value is attached only when the run is the paper's measurement (``probes.published``);
    when a paper model ran a different protocol, a note says why it has no published value. ``model`` is
    the label the record is filed and shown under (default: the encoder's name); it plays no part in
    whether a published value applies.
    """
    from probes.published import lookup  # local: the tables are only needed here

    task = task_name(dataset, probe)
    if encoder_info.get("branch") is not None:  # teacher or student of one file: part of the configuration
        protocol = {**protocol, "weights_branch": encoder_info["branch"]}
    protocol = {str(k): plain(v) for k, v in sorted(protocol.items())}
    sha = encoder_info.get("checkpoint_sha256") or ""
    model = model or encoder_info["name"]
    prefixed = {}
    for name, value in metrics.items():
        value = float(plain(value))
        if not math.isfinite(value):
            raise ValueError(f"metric {name!r} of {task} is {value!r}; a record stores finite numbers only")
        prefixed[f"{task}/{name}"] = value
    # Whether this is one of the paper's models is a question of what ran (the encoder), never of its label.
    match = lookup(task=task, model=encoder_info["name"], feature=feature, protocol=protocol, block=block,
                   split=split)
    published = {f"{task}/{m}": float(v) for m, v in match.values.items() if f"{task}/{m}" in prefixed}
    sources = {f"{task}/{m}": s for m, s in match.sources.items() if f"{task}/{m}" in published}
    notes = list(notes or []) + [f"no published comparison: {reason}" for reason in match.reasons]
    data = dict(
        schema_version=SCHEMA_VERSION, run_id=new_run_id(), config_hash="", probe=probe, task=task,
        dataset=dataset, split=split, model=model, method=encoder_info.get("method") or "",
        arch=encoder_info.get("arch") or "", format=encoder_info.get("format") or "", checkpoint_sha256=sha,
        feature=feature, block=None if block is None else int(block), protocol=protocol, metrics=prefixed,
        published=published, delta={key: prefixed[key] - value for key, value in published.items()},
        seed=None if seed is None else int(seed), data_sha256=data_sha256, package_version=__version__,
        git_commit=git_commit(), created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="microseconds"),
        wall_time_s=float(wall_time_s), device=device or platform.node(), content_sha256="", notes=notes,
        published_source=sources, protocol_notes={str(k): str(v) for k, v in (protocol_notes or {}).items()},
        artifacts=dict(artifacts or {}))
    data["config_hash"] = config_hash(record_identity(data))
    data["content_sha256"] = content_digest(data)
    validate_record(data, source=f"record of {task}/{model}")
    return RunRecord(**data)


def seal(record: RunRecord, **changes) -> RunRecord:
    """``record`` with fields changed (e.g. ``artifacts``) and its digest recomputed."""
    data = {**record.to_dict(), **changes}
    data["config_hash"] = config_hash(record_identity(data))
    data["content_sha256"] = content_digest(data)
    validate_record(data, source=f"record {record.run_id}")
    return RunRecord(**data)


# ---------------------------------------------------------------------------------------------------
# Writing: the records of one run, as a set
# ---------------------------------------------------------------------------------------------------

def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._+-]+", "_", name)


def check_writable(folder: str | os.PathLike, remedy: str = "pass another --results folder") -> Path:
    """Fail before the work, naming the folder, when ``folder`` cannot be created or written."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".partprobe-write-check-"):
            pass
    except OSError as err:
        raise RecordError(f"{folder}: cannot write there ({err.strerror or err}); {remedy} or fix its "
                          f"permissions") from None
    return folder


def write_run(records: list[RunRecord], results_dir: str | os.PathLike, experiment: str,
              config: Mapping[str, Any], artifacts: Mapping[str, bytes] | None = None) -> list[Path]:
    """Write the records of one run with their configuration and artifacts, all or none.

    Layout: ``<results>/<experiment>/<model>/<first run_id>/`` holding ``config.json``, one
    ``<run_id>.json`` per record and the artifact files (names as given, each listed in the ``artifacts``
    field of the records that use it). Everything is written into a hidden folder beside it first, which is
    renamed into place in one step: a reader (or the leaderboard) never sees part of a run, and a full
    disk or a kill leaves no record behind. Returns the records' paths.
    """
    if not records:
        return []
    for record in records:
        validate_record(record.to_dict(), source=f"record {record.run_id}")
    artifacts = dict(artifacts or {})
    folder = Path(results_dir) / _safe(experiment) / _safe(records[0].model) / records[0].run_id
    if folder.exists():
        raise FileExistsError(f"{folder}: a run with this id exists; records are never overwritten")
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".partial", dir=folder.parent))
    try:
        write_json_atomic(staging / CONFIG_NAME, {str(k): plain(v) for k, v in config.items()})
        for name, payload in artifacts.items():
            write_bytes_atomic(staging / name, payload)
        for record in records:
            missing = [f for f in record.artifacts.values() if f not in artifacts]
            if missing:
                raise ValueError(f"record {record.run_id} lists artifact file(s) {missing} that the run did not write")
            write_json_atomic(staging / f"{record.run_id}.json", record.to_dict())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(staging, 0o777 & ~umask)
        os.rename(staging, folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return [folder / f"{record.run_id}.json" for record in records]


def config_path_for(record_path: str | os.PathLike) -> Path:
    """The configuration file of a record: ``config.json`` of its run folder (schema 2.0), or
    ``<run_id>.config.json`` beside it (schema 1.0)."""
    path = Path(record_path)
    legacy = path.with_name(path.name[: -len(".json")] + ".config.json")
    return legacy if legacy.is_file() else path.with_name(CONFIG_NAME)


def iter_record_paths(results_dir: str | os.PathLike):
    """Every record file under a results folder, sorted: files named ``<run_id>.json``, outside hidden
    (partial) folders; configurations and artifacts are not records."""
    root = Path(results_dir)
    for path in sorted(root.rglob("*.json")):
        relative = path.relative_to(root).parts
        if any(part.startswith(".") for part in relative):
            continue
        if RUN_ID_PATTERN.match(path.name[: -len(".json")]):
            yield path
