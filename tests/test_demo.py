"""The README's main command: generated CUB data -> part retrieval with colorstats -> table, records, figure."""
from __future__ import annotations

import pytest

from probes import demo
from probes.results import RunRecord, iter_record_paths


@pytest.mark.slow
def test_demo_runs_end_to_end(tmp_path, capsys):
    records = demo.run(tmp_path / "out", progress=False)
    printed = capsys.readouterr().out
    assert demo.REAL_COMMAND in printed
    assert "part_retrieval   cls            self=in   AP" in printed        # the run summary
    saved = [RunRecord.load(p) for p in iter_record_paths(tmp_path / "out" / "results")]
    assert {r.run_id for r in saved} == {r.run_id for r in records}
    assert all(r.protocol["synthetic"] is True for r in saved)
    baseline_parts = [r for r in saved if r.model == "colorstats" and r.probe == "part_retrieval"]
    assert len(baseline_parts) == 4                             # patch_mean, cls x self included, excluded
    # object level for the object-vs-part figure, and blocks 0-2 plus the final output for the per-block one
    assert [r.dataset for r in saved if r.probe == "object_retrieval"] == ["cifar10"]
    assert sorted((r.block for r in saved if r.model != "colorstats"), key=lambda b: -1 if b is None else b) \
        == [None, 0, 1, 2]
    cls_included = next(r for r in baseline_parts if r.feature == "cls" and r.protocol["include_self"])
    assert cls_included.metrics["cub_part_retrieval/AP"] >= 95.0
    assert (tmp_path / "out" / "retrieval_grid.png").stat().st_size > 10_000
    assert "colorstats" in (tmp_path / "out" / "leaderboard.md").read_text()
