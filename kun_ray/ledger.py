"""Shard commits: how a flow writes its rows so that a crashed run resumes without redoing,
duplicating or losing any.

A shard is an input file; every row carries its `shard` from the read stage on.  A flow's write
tasks write each block's rows per shard, kept rows to the flow's output folder and rejects to
rejects/<stage>/, under fresh file names, and hand back what they wrote.  The driver adds that up
per shard, and once a shard's rows are all written (as many as the flow was given) it commits the
shard: one small JSON file in _commits/<flow>/ naming the shard's files and counts, written
atomically.  The files of a shard are only ever read through its commit, so a crash between
writing files and committing them leaves files no commit names; the next run deletes them
(`collect_garbage`) and redoes that shard alone.  That is datatrove's completion markers, per
shard instead of per task, so it holds whatever Ray Data's streaming does with block order.

Flows whose rows depend on each other (dedup, final) commit all their shards at once at the end.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
import uuid
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from kun_ray.io.records import REJECT_COLUMNS, SPLIT_COLUMN, column_or_nulls, reject_schema

logger = logging.getLogger("kun_ray")

#: (stage that rejected the row or None, source, reject reason or None) -> rows
Tally = Counter[tuple[str | None, str, str | None]]
#: (split stage, source) -> rows it made beyond one per row it was given
Splits = Counter[tuple[str, str]]
TALLY_COLUMNS = ["reject_stage", "source", "reject_reason"]
#: The commit of a flow whose shards are committed together.
WHOLE = "all"


@dataclass
class ShardCommit:
    """What a flow wrote for one shard: its files (relative to the run folder) and its counts."""

    rows: int = 0
    files: list[str] = field(default_factory=list)
    tally: Tally = field(default_factory=Counter)
    sums: Counter[str] = field(default_factory=Counter)
    splits: Splits = field(default_factory=Counter)

    def add(self, part: dict[str, Any]) -> None:
        """Add what one write (BlockWriter.write) reported for this shard."""
        self.rows += part["rows"]
        self.files += part["files"]
        for stage, source, reason, n in part["tally"]:
            self.tally[(stage, source, reason)] += n
        self.sums.update(part["sums"])
        for stage, source, n in part.get("splits", []):
            self.splits[(stage, source)] += n

    @property
    def kept(self) -> int:
        return sum(n for (stage, _, _), n in self.tally.items() if stage is None)

    @property
    def inputs(self) -> int:
        """The rows the flow was given that these rows came from: fewer than `rows` when a split
        stage made several of one."""
        return self.rows - sum(self.splits.values())

    def to_json(self) -> dict[str, Any]:
        tally = [[*key, n] for key, n in sorted(self.tally.items(), key=lambda kv: tuple(str(k) for k in kv[0]))]
        data = {"rows": self.rows, "files": self.files, "tally": tally, "sums": dict(self.sums)}
        if self.splits:
            data["splits"] = [[*key, n] for key, n in sorted(self.splits.items())]
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ShardCommit:
        commit = cls()
        commit.add(data)
        return commit


@dataclass(frozen=True)
class BlockWriter:
    """Writes a flow's blocks into a run folder.  Picklable: Ray ships it to the write tasks."""

    arrow_fs: Any
    root: str
    #: The folder of the flow's kept rows, relative to the run folder.
    output: str
    #: Columns whose totals the flow reports (an LLM stage's generated tokens).
    sums: tuple[str, ...] = ()
    #: The measure columns its reject rows keep, with their types (the plan's, up to this flow).
    measures: tuple[tuple[str, pa.DataType], ...] = ()
    #: What its file names start with: the run's lease tag, so garbage collection knows its own files.
    tag: str = ""

    def write(self, batch: pa.Table) -> dict[str, dict[str, Any]]:
        """Write a block's rows, per shard; for each shard, what was written (ShardCommit.add's part)."""
        shards = pc.unique(batch["shard"]).to_pylist()
        if len(shards) == 1:
            return {shards[0]: self._write_shard(batch)}
        return {shard: self._write_shard(batch.filter(pc.equal(batch["shard"], shard))) for shard in shards}

    def write_shard(self, blocks: Iterable[pa.Table]) -> dict[str, Any]:
        """Write all of one shard's blocks as one Parquet file per folder, a row group per block
        (the read flow, which sees a whole file in one task); the shard's part."""
        name = self._name()
        writers: dict[str, pq.ParquetWriter] = {}
        commit = ShardCommit()
        try:
            for block in blocks:
                for relpath, table in self._split(block, name):
                    if relpath not in writers:
                        writers[relpath] = pq.ParquetWriter(
                            self._target(relpath), table.schema, filesystem=self.arrow_fs
                        )
                    writers[relpath].write_table(table)
                commit.add(self._counts(block))
        finally:
            for writer in writers.values():
                writer.close()
        return {**commit.to_json(), "files": sorted(writers)}

    def _write_shard(self, rows: pa.Table) -> dict[str, Any]:
        files = []
        for relpath, table in self._split(rows, self._name()):
            pq.write_table(table, self._target(relpath), filesystem=self.arrow_fs)
            files.append(relpath)
        return {**self._counts(rows), "files": files}

    def _name(self) -> str:
        return f"{self.tag}{uuid.uuid4().hex}.parquet"

    def _split(self, rows: pa.Table, name: str) -> list[tuple[str, pa.Table]]:
        """The rows kept, to the flow's output, and each stage's rejects, to rejects/<stage>/, as
        files named `name`."""
        live = pc.is_null(rows["reject_reason"])
        kept = rows.filter(live).drop_columns([c for c in (*REJECT_COLUMNS, SPLIT_COLUMN) if c in rows.column_names])
        tables = [(f"{self.output}/{name}", kept)] if kept.num_rows else []
        rejected = rows.filter(pc.invert(live))
        for stage in pc.unique(rejected["reject_stage"]).to_pylist():
            tables.append(
                (
                    f"rejects/{stage}/{name}",
                    as_rejects(rejected.filter(pc.equal(rejected["reject_stage"], stage)), self.measures),
                )
            )
        return tables

    def _counts(self, rows: pa.Table) -> dict[str, Any]:
        groups = rows.group_by(TALLY_COLUMNS, use_threads=False).aggregate([([], "count_all")])
        tally = [[g["reject_stage"], g["source"], g["reject_reason"], g["count_all"]] for g in groups.to_pylist()]
        sums = {column: int(pc.sum(rows[column]).as_py() or 0) for column in self.sums}
        counts = {"rows": rows.num_rows, "files": [], "tally": tally, "sums": sums}
        if SPLIT_COLUMN in rows.column_names:
            made = rows.filter(pc.is_valid(rows[SPLIT_COLUMN])).group_by([SPLIT_COLUMN, "source"], use_threads=False)
            counts["splits"] = [
                [g[SPLIT_COLUMN], g["source"], g["count_all"]] for g in made.aggregate([([], "count_all")]).to_pylist()
            ]
        return counts

    def _target(self, relpath: str) -> str:
        """The full path of a file to write, its folder made."""
        path = f"{self.root}/{relpath}"
        self.arrow_fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
        return path


def as_rejects(batch: pa.Table, measures: tuple[tuple[str, pa.DataType], ...] = ()) -> pa.Table:
    """Stream rows a stage rejected, as rows of rejects/<stage>/, with the measures they had."""
    return pa.table(
        {
            "doc_id": batch["doc_id"],
            "source": batch["source"],
            "shard": batch["shard"],
            "record": column_or_nulls(batch, "record", pa.int64()),
            "stage": batch["reject_stage"],
            "reason": batch["reject_reason"],
            "detail": batch["reject_detail"],
            "text": batch["text"].cast(pa.large_string()),
            "instruction": column_or_nulls(batch, "instruction", pa.string()),
            "answer": column_or_nulls(batch, "answer", pa.large_string()),
            **{name: column_or_nulls(batch, name, kind) for name, kind in measures},
        },
        schema=reject_schema(measures),
    )


def write_block(batch: pa.Table, writer: BlockWriter) -> pa.Table:
    """map_batches form of BlockWriter.write: one row holding the parts as JSON."""
    return pa.table({"parts": [json.dumps(writer.write(batch))]})


def commit_key(shard: str) -> str:
    return hashlib.sha1(shard.encode("utf-8")).hexdigest()[:20]


class Ledger:
    """One flow's commits, in <run>/_commits/<flow>/: which shards are done, their files and counts."""

    def __init__(self, folder: Any, flow: str, stages: list[str] | None = None, lease: Any = None):
        self.folder = folder
        self.flow = flow
        #: The run's lease (kun_ray/lease.py): confirmed before each commit, and garbage
        #: collection spares files younger than it.
        self.lease = lease
        #: The flow's stages in the order they run, recorded with every commit for readers of the run.
        self.stages = list(stages or [])
        self.shards: dict[str, ShardCommit] = {}
        self.whole = False
        #: What a whole flow's stages reported when it ran (report.json's entries beside the counts).
        self.reports: dict[str, dict[str, Any]] = {}
        for name in folder.list_names(f"_commits/{flow}"):
            if name.endswith(".json"):
                data = folder.read_json(f"_commits/{flow}/{name}")
                for shard, commit in data["shards"].items():
                    self.shards[shard] = ShardCommit.from_json(commit)
                self.stages = self.stages or data.get("stages", [])
                self.whole |= name == f"{WHOLE}.json"
                self.reports.update(data.get("reports", {}))

    def commit(
        self, shards: dict[str, ShardCommit], whole: bool = False, reports: dict[str, dict[str, Any]] | None = None
    ) -> None:
        """Record shards as done: one file per shard, or one for the whole flow (with what its
        stages reported)."""
        key = WHOLE if whole else commit_key(next(iter(shards)))
        assert whole or len(shards) == 1
        if self.lease is not None:
            self.lease.confirm()
        payload: dict[str, Any] = {"stages": self.stages, "shards": {s: c.to_json() for s, c in shards.items()}}
        if reports:
            payload["reports"] = {name: report for name, report in reports.items() if report}
            self.reports.update(payload["reports"])
        self.folder.write_json(f"_commits/{self.flow}/{key}.json", payload)
        self.shards.update(shards)
        self.whole |= whole

    def files(self, folder: str, shards: Iterable[str] | None = None) -> list[str]:
        """The committed files in `folder` (relative to the run folder), of the given shards or all."""
        chosen = self.shards if shards is None else {s: self.shards[s] for s in shards}
        return sorted(f for c in chosen.values() for f in c.files if f.startswith(folder + "/"))

    def kept(self) -> dict[str, int]:
        """Rows kept per shard."""
        return {shard: commit.kept for shard, commit in self.shards.items()}

    def tally(self) -> Tally:
        total: Tally = Counter()
        for commit in self.shards.values():
            total.update(commit.tally)
        return total

    def sums(self) -> Counter[str]:
        total: Counter[str] = Counter()
        for commit in self.shards.values():
            total.update(commit.sums)
        return total

    def splits(self) -> Splits:
        total: Splits = Counter()
        for commit in self.shards.values():
            total.update(commit.splits)
        return total

    def collect_garbage(self, folders: list[str]) -> int:
        """Delete the files in `folders` that no commit names (a crashed or retried write's): those
        older than the run's lease and this run's own (named with its tag), never a file younger
        than the lease that another driver wrote; how many."""
        named = {f for commit in self.shards.values() for f in commit.files}
        found = {f: t for folder in folders for f, t in self.folder.list_modified(folder).items() if f not in named}
        lease = self.lease
        stray = [
            f
            for f, written in found.items()
            if lease is None or written < lease.since or lease.owns(f.rsplit("/", 1)[-1])
        ]
        self.folder.remove_files(stray)
        if stray:
            logger.info("%s: removed %d uncommitted files of an earlier attempt", self.flow, len(stray))
        return len(stray)


class Progress:
    """A summary line in the log every `every_s` seconds while a flow runs, and one when it ends."""

    def __init__(self, flow: str, shards: int, every_s: float):
        self.flow, self.shards, self.every_s = flow, shards, every_s
        self.started = self.last = time.monotonic()
        self.logged: tuple[int, int] | None = None  # (committed, rows) of the last line

    def update(self, committed: int, rows: int, kept: int, last: bool = False) -> None:
        """Log the line if `every_s` has passed since the last one, or if this is the flow's `last` update."""
        now = time.monotonic()
        if self.logged != (committed, rows) if last else now - self.last >= self.every_s:
            self.last, self.logged = now, (committed, rows)
            elapsed = now - self.started
            logger.info(
                "%s: %d/%d shards committed, %s rows written (%s kept) in %.0f s, %.1f rows/s",
                self.flow,
                committed,
                self.shards,
                f"{rows:,}",
                f"{kept:,}",
                elapsed,
                rows / elapsed if elapsed else 0.0,
            )


def drain(
    results: Iterable[dict[str, Any]],
    ledger: Ledger,
    expected: dict[str, int] | None,
    shards: int,
    whole: bool = False,
    progress_every_s: float = 30.0,
) -> tuple[dict[str, ShardCommit], ShardCommit]:
    """Add up the parts the write tasks report and commit each shard once all its rows are written.

    `expected` gives each shard's row count; None means the parts say it themselves (the read
    flow's `total`, sent with a file's last part).  A whole flow commits nothing here: it gets
    back its shards to commit once whatever follows the write (the export) is done.  `shards`
    is how many shards the flow runs, for the progress line.  Returns the uncommitted shards
    (whole flows) and this run's totals.
    """
    open_shards: dict[str, ShardCommit] = {}
    done = ShardCommit()
    committed = 0
    progress = Progress(ledger.flow, shards, progress_every_s)
    for parts in results:
        if ledger.lease is not None and ledger.lease.lost:  # the heartbeat found it taken over
            ledger.lease.confirm()
        for shard, part in parts.items():
            commit = open_shards.setdefault(shard, ShardCommit())
            commit.add(part)
            done.add({**part, "files": []})
            total = part.get("total") if expected is None else expected.get(shard)
            if not whole and total is not None and commit.inputs == total:
                ledger.commit({shard: open_shards.pop(shard)})
                committed += 1
        progress.update(committed, done.rows, done.kept)
    progress.update(committed, done.rows, done.kept, last=True)
    if not whole and open_shards:
        short = ", ".join(f"{s} ({c.inputs} of {(expected or {}).get(s)})" for s, c in list(open_shards.items())[:5])
        raise RuntimeError(f"{ledger.flow}: rows went missing: shards not fully written: {short}")
    return open_shards, done
