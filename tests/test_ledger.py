"""Shard commits without Ray: when a shard commits, what a commit holds, what a lost row does."""

from __future__ import annotations

import io
import json
import logging

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from kun_ray.io.records import REJECT_SCHEMA, SPLIT_COLUMN, STREAM_SCHEMA
from kun_ray.ledger import BlockWriter, Ledger, ShardCommit, drain
from kun_ray.plan import parse_config
from kun_ray.report import flow_report, format_table
from kun_ray.run import RunFolder


def part(rows: int, kept: int, files: list[str] | None = None) -> dict:
    tally = [[None, "web", None, kept], ["length", "web", "too_short", rows - kept]]
    return {"rows": rows, "files": files or [], "tally": tally, "sums": {}}


@pytest.fixture()
def folder(tmp_path) -> RunFolder:
    return RunFolder.of(
        parse_config(
            {"sources": [{"name": "web", "format": "jsonl", "paths": ["x"]}], "output": str(tmp_path / "run")}
        )
    )


def test_a_shard_commits_when_its_last_row_is_written_and_not_before(folder):
    ledger = Ledger(folder, "filter")
    first, second = (
        {"a": part(2, 1, ["filtered/1.parquet"])},
        {"a": part(1, 1, ["filtered/2.parquet"]), "b": part(1, 0)},
    )

    def results():
        yield first
        assert Ledger(folder, "filter").shards == {}  # 2 of a's 3 rows written: not committed yet
        yield second

    with pytest.raises(RuntimeError, match=r"^filter: rows went missing: shards not fully written: b \(1 of 4\)"):
        drain(results(), ledger, {"a": 3, "b": 4}, 2)
    reloaded = Ledger(folder, "filter")
    assert set(reloaded.shards) == {"a"}  # b never completed: no commit, it will be redone
    assert reloaded.shards["a"].files == ["filtered/1.parquet", "filtered/2.parquet"]
    assert reloaded.kept() == {"a": 2} and reloaded.tally()[("length", "web", "too_short")] == 1


def test_a_shard_a_split_stage_made_more_rows_of_commits_when_its_given_rows_are_written(folder, tmp_path):
    """Segment made 5 rows of 2 documents: the shard is done when rows minus the rows made
    (what the writer counts from SPLIT_COLUMN) reach the 2 it was given, and the funnel says so."""
    writer = BlockWriter(pafs.LocalFileSystem(), str(tmp_path / "run"), "filtered")
    rows = pa.table(
        {
            "doc_id": ["a#0", "a#1", "a#2", "b#0", "b#1"],
            "source": ["web"] * 5,
            "shard": ["s"] * 5,
            "text": pa.array(["x"] * 5, pa.large_string()),
            SPLIT_COLUMN: [None, "segment", "segment", None, "segment"],
            "reject_stage": [None, None, "length", None, None],
            "reject_reason": [None, None, "too_short", None, None],
            "reject_detail": pa.array([None, None, "d", None, None], pa.large_string()),
        }
    )
    first, second = writer.write(rows.slice(0, 3)), writer.write(rows.slice(3))
    assert first["s"]["splits"] == [["segment", "web", 2]]
    ledger = Ledger(folder, "filter", ["segment", "length"])

    def results():
        yield first
        assert Ledger(folder, "filter").shards == {}  # 1 of the 2 documents' rows written
        yield second

    drain(results(), ledger, {"s": 2}, 1)
    commit = Ledger(folder, "filter").shards["s"]
    assert (commit.rows, commit.inputs, commit.kept) == (5, 2, 4)
    kept = pq.read_table(str(tmp_path / "run" / commit.files[0]))
    assert SPLIT_COLUMN not in kept.column_names, "the accounting column is never written"
    segment, length = flow_report(["segment", "length"], ledger.tally(), splits=ledger.splits())
    assert (segment["in"], segment["made"], segment["kept"], segment["rejected"]) == (2, 3, 5, 0)
    assert (length["in"], length["kept"], length["rejected"]) == (5, 4, 1) and "made" not in length
    assert format_table({"stages": [segment, length]}).splitlines()[1].endswith("made 3 rows")


def test_a_whole_flow_commits_nothing_until_told(folder):
    ledger = Ledger(folder, "dedup")
    shards, done = drain(iter([{"a": part(3, 2)}, {"b": part(2, 2)}]), ledger, None, 2, whole=True)
    assert set(shards) == {"a", "b"} and done.rows == 5 and done.kept == 4
    assert Ledger(folder, "dedup").shards == {}
    ledger.commit(shards, whole=True)
    reloaded = Ledger(folder, "dedup")
    assert reloaded.whole and set(reloaded.shards) == {"a", "b"}
    with open(folder.path("_commits", "dedup", "all.json"), encoding="utf-8") as f:
        assert json.load(f)["shards"]["b"]["rows"] == 2


def test_stray_files_are_collected_and_committed_ones_kept(folder, tmp_path):
    ledger = Ledger(folder, "read")
    (tmp_path / "run" / "documents").mkdir(parents=True)
    for name in ("kept.parquet", "stray.parquet"):
        (tmp_path / "run" / "documents" / name).write_bytes(b"x")
    ledger.commit({"f": ShardCommit.from_json(part(1, 1, ["documents/kept.parquet"]))})
    assert ledger.collect_garbage(["documents", "rejects/read"]) == 1
    assert sorted(p.name for p in (tmp_path / "run" / "documents").iterdir()) == ["kept.parquet"]


def _progress_lines(folder, every_s: float) -> list[str]:
    printed = io.StringIO()
    handler = logging.StreamHandler(printed)
    logger = logging.getLogger("kun_ray")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        drain(
            iter([{"a": part(2, 2)}, {"b": part(3, 1)}]),
            Ledger(folder, "label"),
            {"a": 2, "b": 3},
            2,
            progress_every_s=every_s,
        )
    finally:
        logger.removeHandler(handler)
    return [line for line in printed.getvalue().splitlines() if "shards committed" in line]


def test_progress_lines_while_a_flow_runs(folder):
    lines = _progress_lines(folder, every_s=0)
    assert len(lines) == 2  # the flow's last line is not logged twice
    assert lines[0].startswith("label: 1/2 shards committed, 2 rows written (2 kept) in ")
    assert lines[-1].startswith("label: 2/2 shards committed, 5 rows written (3 kept) in ") and lines[-1].endswith(
        "rows/s"
    )


def test_a_flow_that_ends_before_the_interval_still_logs_its_last_line(folder):
    lines = _progress_lines(folder, every_s=3600)
    assert len(lines) == 1 and lines[0].startswith("label: 2/2 shards committed, 5 rows written (3 kept) in ")


def test_the_read_flow_writes_a_shard_as_one_file_per_folder(tmp_path):
    rows = [
        {"doc_id": str(i), "source": "web", "shard": "web/a.jsonl", "text": f"t{i}", "title": None, "meta": None,
         "reject_stage": None if i % 3 else "read", "reject_reason": None if i % 3 else "empty_text", "reject_detail": None if i % 3 else "x"}
        for i in range(10)
    ]  # fmt: skip
    blocks = [
        pa.Table.from_pylist(rows[:4], schema=STREAM_SCHEMA),
        pa.Table.from_pylist(rows[4:], schema=STREAM_SCHEMA),
    ]
    written = BlockWriter(pafs.LocalFileSystem(), str(tmp_path), "documents").write_shard(blocks)
    assert written["rows"] == 10 and len(written["files"]) == 2
    kept, rejects = (pq.ParquetFile(tmp_path / f) for f in sorted(written["files"]))
    assert kept.metadata.num_rows == 6 and kept.metadata.num_row_groups == 2
    assert rejects.metadata.num_rows == 4 and rejects.schema_arrow == REJECT_SCHEMA
    commit = ShardCommit.from_json(written)
    assert commit.tally == {(None, "web", None): 6, ("read", "web", "empty_text"): 4} and commit.kept == 6
