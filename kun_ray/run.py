"""The run folder: where a run's stages, rejects and report live, local or on object storage.

    <output>/
      documents/          the read stage's documents (Parquet)
      filtered/           documents the CPU filters kept (normalize, length, perplexity, heuristics)
      clean/              filtered documents left after exact and near dedup
      labeled/            clean documents with the instruction the label model wrote
      scored/             labeled rows the chat model scored high enough (score, score_raw)
      polished/           scored rows with the polished answer (answer)
      final/              pairs left after dedup on the instruction (Parquet)
      export/alpaca/      final/ as JSONL: instruction, input, output
      export/messages/    final/ as JSONL chat messages (with Humpback's system prompt tag)
      rejects/<stage>/    every row a stage rejected, with stage, reason and detail (Parquet)
      report.json         per-stage counts: in, kept, rejected by reason, per source

A flow of stages emits one row stream (documents and rejects together, see
kun_ray/io/records.py).  One Ray Data pass writes each block's kept rows to the flow's output
folder and its rejected rows to `rejects/<stage>/`, and returns the block's counts, so the
stages run once and the accounting is that of the rows written.
"""

from __future__ import annotations

import json
import uuid
from collections import Counter
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import ray.data

from kun_ray.config import RunConfig
from kun_ray.io.records import (
    REJECT_COLUMNS,
    REJECT_FIELDS,
    REJECT_SCHEMA,
    column_or_nulls,
)
from kun_ray.io.storage import is_local, pyarrow_filesystem, url_to_fs

#: (stage that rejected the row or None, source, reject reason or None) -> rows
Tally = Counter[tuple[str | None, str, str | None]]
TALLY_COLUMNS = ["reject_stage", "source", "reject_reason"]


def _write_block(batch: pa.Table, arrow_fs: Any, kept_dir: str, rejects_dir: str, sums: tuple[str, ...]) -> pa.Table:
    """Write a block's kept rows and its rejects (one file each, per stage); return its counts.

    The counts are rows per (reject_stage, source, reject_reason) and, per group, the totals
    of the `sums` columns.
    """
    name = f"{uuid.uuid4().hex}.parquet"
    live = pc.is_null(batch["reject_reason"])
    kept = batch.filter(live)
    if kept.num_rows:
        arrow_fs.create_dir(kept_dir, recursive=True)
        pq.write_table(kept.drop_columns(REJECT_COLUMNS), f"{kept_dir}/{name}", filesystem=arrow_fs)
    rejected = batch.filter(pc.invert(live))
    for stage in pc.unique(rejected["reject_stage"]).to_pylist():
        folder = f"{rejects_dir}/{stage}"
        arrow_fs.create_dir(folder, recursive=True)
        pq.write_table(_as_rejects(rejected.filter(pc.equal(rejected["reject_stage"], stage))), f"{folder}/{name}", filesystem=arrow_fs)
    aggregations = [([], "count_all"), *((column, "sum") for column in sums)]
    return batch.group_by(TALLY_COLUMNS, use_threads=False).aggregate(aggregations)


def _as_rejects(batch: pa.Table) -> pa.Table:
    return pa.table(
        {
            "doc_id": batch["doc_id"],
            "source": batch["source"],
            "stage": batch["reject_stage"],
            "reason": batch["reject_reason"],
            "detail": batch["reject_detail"],
            "text": batch["text"].cast(pa.large_string()),
            "instruction": column_or_nulls(batch, "instruction", pa.string()),
            "answer": column_or_nulls(batch, "answer", pa.large_string()),
        },
        schema=REJECT_SCHEMA,
    )


def with_reject_columns(batch: pa.Table) -> pa.Table:
    """Documents read back from a stage's output, as live rows of a new flow."""
    for field in REJECT_FIELDS:
        batch = batch.append_column(field, pa.nulls(batch.num_rows, field.type))
    return batch


class RunFolder:
    def __init__(self, config: RunConfig):
        self.url = config.output.path
        self.fs, self.root = url_to_fs(self.url, config.storage_for(config.output.storage))
        self.arrow_fs = pyarrow_filesystem(self.fs)
        if is_local(self.fs):
            self.fs.makedirs(self.root, exist_ok=True)

    def path(self, *parts: str) -> str:
        return "/".join([self.root.rstrip("/"), *parts])

    def _remove(self, path: str) -> None:
        if self.fs.exists(path):
            self.fs.rm(path, recursive=True)

    def _read(self, path: str, **kwargs: Any) -> ray.data.Dataset:
        return ray.data.read_parquet(path, filesystem=self.arrow_fs, **kwargs)

    def read_stage(self, name: str) -> ray.data.Dataset:
        """A stage's kept rows as written."""
        return self._read(self.path(name))

    def write_json_lines(self, dataset: ray.data.Dataset, name: str, json_args: dict[str, Any]) -> None:
        """Replace folder `name` with the dataset as JSONL files."""
        path = self.path(*name.split("/"))
        self._remove(path)
        dataset.write_json(path, filesystem=self.arrow_fs, **json_args)

    def stage_rows(self, name: str) -> ray.data.Dataset:
        """A stage's kept documents as live rows of a new flow."""
        return self._read(self.path(name)).map_batches(with_reject_columns, batch_format="pyarrow")

    def write_rows(self, stream: ray.data.Dataset, kept_dir: str, stages: list[str], sums: tuple[str, ...] = ()) -> tuple[Tally, dict[str, int]]:
        """Run a flow's row stream to storage: kept rows to `kept_dir`, rejects to rejects/<stage>/.

        What those folders held is replaced; a folder with no rows is not written.  Returns the
        tally and, for each column in `sums`, its total over all rows (kept and rejected).
        """
        for path in [self.path(kept_dir), *(self.path("rejects", stage) for stage in stages)]:
            self._remove(path)
        options = {"arrow_fs": self.arrow_fs, "kept_dir": self.path(kept_dir), "rejects_dir": self.path("rejects"), "sums": sums}
        tally: Tally = Counter()
        totals = dict.fromkeys(sums, 0)
        for row in stream.map_batches(_write_block, batch_format="pyarrow", fn_kwargs=options).iter_rows():
            tally[(row["reject_stage"], row["source"], row["reject_reason"])] += row["count_all"]
            for column in sums:
                totals[column] += int(row[f"{column}_sum"] or 0)
        return tally, totals if tally else {}

    def write_json(self, name: str, payload: dict[str, Any]) -> None:
        with self.fs.open(self.path(name), "w", encoding="utf-8") as f:
            json.dump(payload, f, ensure_ascii=False, indent=2)

    def read_json(self, name: str) -> dict[str, Any]:
        with self.fs.open(self.path(name), "r", encoding="utf-8") as f:
            return json.load(f)
