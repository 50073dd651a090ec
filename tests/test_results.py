"""Result records: schema, validation errors, atomic and concurrent writing, provenance."""
from __future__ import annotations

import copy
import json
import multiprocessing
import re
from pathlib import Path

import jsonschema
import pytest

from probes import __version__
from probes.results import (SCHEMA_PATH, RecordError, RunRecord, config_path_for, iter_record_paths, make_record,
                            upgrade_record, validate_record, write_run)

SCHEMA = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
SHA = "ab" * 32


def encoder_info(name="dino", sha=SHA):
    return {"name": name, "method": "DINO", "arch": "vit_base_patch16_224", "checkpoint_sha256": sha,
            "format": "dino_full", "source": "test"}


def retrieval_record(name="dino", feature="patch_mean", block=None, include_self=True, ap=50.0, seed=None, **kw):
    return make_record(probe="part_retrieval", dataset="cub", split="all", encoder_info=encoder_info(name, **kw),
                       feature=feature, block=block, protocol={"include_self": include_self, "crop": "official-code",
                                                               "keypoints": "paper", "batch_size": 64},
                       metrics={"AP": ap, "mAP": ap - 1}, seed=seed, wall_time_s=1.5, device="cpu")


def schema_errors(data) -> list[str]:
    return [e.message for e in jsonschema.Draft202012Validator(SCHEMA).iter_errors(data)]


def test_schema_file_is_a_valid_json_schema():
    jsonschema.Draft202012Validator.check_schema(SCHEMA)
    # the schema's required fields are exactly the record's fields without a default
    fields = set(RunRecord.__dataclass_fields__)
    assert set(SCHEMA["properties"]) == fields
    assert set(SCHEMA["required"]) == fields - {"notes", "published_source", "protocol_notes", "artifacts"}


@pytest.mark.parametrize("kind", ["published", "baseline", "block", "cls", "linear"])
def test_every_written_record_validates_against_the_schema(tmp_path, kind):
    if kind == "published":
        record = retrieval_record()
    elif kind == "baseline":
        record = retrieval_record(name="colorstats", sha="")
    elif kind == "block":
        record = retrieval_record(block=3)
    elif kind == "cls":
        record = retrieval_record(feature="cls")
    else:
        record = make_record(probe="linear_probe", dataset="cub", split="test", encoder_info=encoder_info(),
                             feature="cls", block=None, protocol={"lr": 0.1, "epochs": 90, "crop": "official-code",
                                                                  "head": "linear", "layers": (1, 2)},
                             metrics={"top1_best": 93.0, "top1_last": 92.5}, seed=0, wall_time_s=3, device="cpu")
    path, = write_run([record], tmp_path, "an_experiment", config={"model": "dino", "data_root": tmp_path})
    on_disk = json.loads(path.read_text(encoding="utf-8"))
    assert schema_errors(on_disk) == []
    assert RunRecord.load(path) == record
    # the configuration sits beside the record, fully resolved (paths as strings)
    assert json.loads(config_path_for(path).read_text()) == {"model": "dino", "data_root": str(tmp_path)}
    assert path.parent == tmp_path / "an_experiment" / record.model / record.run_id


def test_record_carries_provenance_and_published_value():
    record = retrieval_record(ap=50.0)
    assert record.task == "cub_part_retrieval"
    assert record.metrics == {"cub_part_retrieval/AP": 50.0, "cub_part_retrieval/mAP": 49.0}
    assert record.published == {"cub_part_retrieval/AP": 48.9}  # Table 3, DINO, CUB Encoded
    assert record.delta["cub_part_retrieval/AP"] == pytest.approx(1.1)
    assert "Table 3" in record.published_source["cub_part_retrieval/AP"]
    assert "patch_mean" in record.published_source["cub_part_retrieval/AP"]
    assert record.package_version == __version__
    assert record.git_commit  # a commit, or 'unknown' outside git: never empty
    assert record.checkpoint_sha256 == SHA and record.arch == "vit_base_patch16_224"


def test_paper_model_under_another_protocol_gets_no_published_value_and_says_why():
    record = retrieval_record(include_self=False)
    assert record.published == {} and record.delta == {}
    assert any("include_self=False" in note for note in record.notes)
    cls_record = retrieval_record(feature="cls")
    assert cls_record.published == {}
    assert any("cls is not compared" in note for note in cls_record.notes)


def test_config_hash_identifies_the_configuration():
    a, b = retrieval_record(ap=50.0), retrieval_record(ap=51.0)
    assert a.config_hash == b.config_hash and a.run_id != b.run_id  # a rerun: same config, new run
    assert retrieval_record(include_self=False).config_hash != a.config_hash
    assert retrieval_record(block=2).config_hash != a.config_hash
    assert retrieval_record(seed=1).config_hash != a.config_hash
    assert retrieval_record(sha="cd" * 32).config_hash != a.config_hash


def test_make_record_rejects_non_finite_metrics():
    with pytest.raises(ValueError, match="'AP'.*finite"):
        make_record(probe="part_retrieval", dataset="cub", split="all", encoder_info=encoder_info(),
                    feature="cls", block=None, protocol={}, metrics={"AP": float("nan")}, seed=None,
                    wall_time_s=1, device="cpu")


def test_unknown_probe_is_refused():
    with pytest.raises(ValueError, match="probe 'retrieval' is not one of"):
        make_record(probe="retrieval", dataset="cub", split="all", encoder_info=encoder_info(), feature="cls",
                    block=None, protocol={}, metrics={"AP": 1.0}, seed=None, wall_time_s=1, device="cpu")


BAD_RECORDS = [
    # (field, mutation, words the error must contain)
    ("block", lambda d: d.update(block="five"), "non-negative integer or null"),
    ("block", lambda d: d.update(block=True), "non-negative integer or null"),
    ("seed", lambda d: d.update(seed=-1), "non-negative integer or null"),
    ("metrics.cub_part_retrieval/AP", lambda d: d["metrics"].update({"cub_part_retrieval/AP": "51"}), "finite number"),
    ("metrics.AP", lambda d: d["metrics"].update({"AP": 3.0}), "prefixed by the task"),
    ("checkpoint_sha256", lambda d: d.update(checkpoint_sha256="xyz"), "64 lowercase hex"),
    ("created", lambda d: d.update(created="yesterday"), "ISO 8601"),
    ("wall_time_s", lambda d: d.update(wall_time_s=-3), "non-negative number"),
    ("schema_version", lambda d: d.update(schema_version="0.9"), "'2.0'"),
    ("artifacts.items", lambda d: d.update(artifacts={"items": "../elsewhere.csv"}), "no folder part"),
    ("probe", lambda d: d.update(probe="segmentation"), "one of"),
    ("protocol", lambda d: d.update(protocol=[1, 2]), "an object"),
    ("run_id", lambda d: d.update(run_id="run-1"), "yyyymmdd"),
    ("notes", lambda d: d.update(notes="text"), "a list of strings"),
]


@pytest.mark.parametrize("field_name,mutate,expected", BAD_RECORDS, ids=[b[0] + ":" + b[2] for b in BAD_RECORDS])
def test_malformed_record_file_names_file_and_field(tmp_path, field_name, mutate, expected):
    data = retrieval_record().to_dict()
    mutate(data)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(RecordError) as err:
        RunRecord.load(path)
    message = str(err.value)
    assert str(path) in message and f"'{field_name}'" in message and expected in message
    assert schema_errors(data), "the documented schema must reject what the loader rejects"


@pytest.mark.parametrize("mutation,expected", [
    (lambda d: d.pop("metrics"), "missing field(s) ['metrics']"),
    (lambda d: d.update(extra=1), "unknown field(s) ['extra']"),
])
def test_missing_and_unknown_fields(tmp_path, mutation, expected):
    data = retrieval_record().to_dict()
    mutation(data)
    with pytest.raises(RecordError, match=re.escape(expected)):
        validate_record(data, "x.json")
    assert schema_errors(data)


def test_cross_field_rules_the_json_schema_cannot_state():
    good = retrieval_record().to_dict()
    for mutate, field_name in [
        (lambda d: d.update(task="coco_part_retrieval"), "task"),
        (lambda d: d["delta"].update({"cub_part_retrieval/AP": 9.0}), "delta.cub_part_retrieval/AP"),
        (lambda d: d["published"].update({"cub_part_retrieval/P@10": 9.0}), "published.cub_part_retrieval/P@10"),
    ]:
        data = copy.deepcopy(good)
        mutate(data)
        with pytest.raises(RecordError, match=f"r.json: field '{re.escape(field_name)}'"):
            validate_record(data, "r.json")


@pytest.mark.parametrize("field_name, mutate", [
    ("content_sha256", lambda d: d["metrics"].update({"cub_part_retrieval/mAP": 99.0})),
    ("content_sha256", lambda d: d["notes"].append("edited")),
    ("config_hash", lambda d: d["protocol"].update(crop="paper")),
    ("config_hash", lambda d: d.update(data_sha256="cd" * 32)),
])
def test_a_record_changed_after_it_was_written_is_refused(tmp_path, field_name, mutate):
    data = retrieval_record().to_dict()
    mutate(data)
    path = tmp_path / "edited.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(RecordError, match=f"{re.escape(str(path))}: field '{field_name}'.*changed after it was written"):
        RunRecord.load(path)


def test_not_json_names_the_file(tmp_path):
    path = tmp_path / "cut.json"
    path.write_text('{"schema_version": "1.0", "run_id": ', encoding="utf-8")
    with pytest.raises(RecordError, match=f"{path}: not valid JSON"):
        RunRecord.load(path)


def test_write_never_overwrites_an_existing_record(tmp_path):
    record = retrieval_record()
    path, = write_run([record], tmp_path, "x", config={})
    before = path.read_bytes()
    with pytest.raises(FileExistsError, match=record.run_id):
        write_run([record], tmp_path, "x", config={"changed": True})
    assert path.read_bytes() == before


def test_the_records_of_a_run_are_written_all_or_none(tmp_path, monkeypatch):
    """A failure while writing (here: the third file of the set) leaves no record and no partial folder."""
    from probes import results

    records = [retrieval_record(ap=50.0), retrieval_record(feature="cls"), retrieval_record(block=2)]
    calls = []
    real = results.write_json_atomic

    def failing(path, obj, *a, **k):
        calls.append(path)
        if len(calls) == 3:
            raise OSError(28, "No space left on device")
        return real(path, obj, *a, **k)
    monkeypatch.setattr(results, "write_json_atomic", failing)
    with pytest.raises(OSError, match="No space left"):
        write_run(records, tmp_path, "x", config={"a": 1})
    assert list(iter_record_paths(tmp_path)) == []
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []
    monkeypatch.setattr(results, "write_json_atomic", real)
    assert len(write_run(records, tmp_path, "x", config={"a": 1})) == 3


def test_schema_1_records_are_read_and_upgraded():
    data = retrieval_record().to_dict()
    v1 = {k: v for k, v in data.items() if k not in ("format", "data_sha256", "content_sha256", "protocol_notes",
                                                     "artifacts")}
    v1.update(schema_version="1.0", probe="knn", task="cub_knn",
              metrics={"cub_knn/top1": 90.0}, published={}, delta={}, published_source={},
              protocol={"k": 20, "temperature": 0.07, "ks": [10, 20], "weighting": "exp(similarity / T)",
                        "crop": "official-code"})
    record = RunRecord.from_dict(v1, "old.json")
    assert record.schema_version == "2.0" and record.config_hash == v1["config_hash"]     # the 1.0 hash is kept
    assert record.protocol == {"knn_k": 20, "knn_temperature": 0.07, "knn_ks": [10, 20], "crop": "official-code"}
    assert record.protocol_notes == {"weighting": "exp(similarity / T)"} and record.content_sha256 == ""
    assert upgrade_record(data) is data                                                   # 2.0 passes through


def _write_many(args) -> int:
    folder, worker, count = args
    for i in range(count):
        record = retrieval_record(name=f"model{worker}", ap=float(i), seed=i)
        write_run([record], folder, "x", config={"worker": worker, "i": i})
    return count


def test_two_processes_writing_into_one_folder_lose_nothing(tmp_path):
    per_worker = 50
    with multiprocessing.get_context("fork").Pool(2) as pool:
        written = pool.map(_write_many, [(tmp_path, w, per_worker) for w in range(2)])
    assert written == [per_worker, per_worker]
    paths = list(iter_record_paths(tmp_path))
    assert len(paths) == 2 * per_worker
    seen = set()
    for path in paths:
        record = RunRecord.load(path)  # every file complete and valid
        config = json.loads(config_path_for(path).read_text())
        assert record.model == f"model{config['worker']}" and record.seed == config["i"]
        seen.add((config["worker"], config["i"]))
    assert len(seen) == 2 * per_worker
    assert not [p for p in tmp_path.rglob("*") if p.name.startswith(".")], "temporary files left behind"
