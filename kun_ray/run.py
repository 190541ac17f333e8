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
kun_ray/io/records.py).  It is written once to `_staging/`, then split by cheap Parquet reads
into the flow's output folder and `rejects/<stage>/`, so the expensive stages run once and
the accounting is read from what was written.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import pyarrow as pa
import ray.data
from ray.data.expressions import col

from kun_ray.config import RunConfig
from kun_ray.io.records import REJECT_COLUMNS, REJECT_FIELDS, REJECT_SCHEMA
from kun_ray.io.storage import is_local, pyarrow_filesystem, url_to_fs

#: (stage that rejected the row or None, source, reject reason or None) -> rows
Tally = Counter[tuple[str | None, str, str | None]]
TALLY_COLUMNS = ["reject_stage", "source", "reject_reason"]


def _tally_block(batch: pa.Table) -> pa.Table:
    return batch.group_by(TALLY_COLUMNS, use_threads=False).aggregate([([], "count_all")])


def _as_rejects(batch: pa.Table) -> pa.Table:
    return pa.table(
        {
            "doc_id": batch["doc_id"],
            "source": batch["source"],
            "stage": batch["reject_stage"],
            "reason": batch["reject_reason"],
            "detail": batch["reject_detail"],
            "text": batch["text"].cast(pa.large_string()),
            "instruction": _column_or_nulls(batch, "instruction", pa.string()),
            "answer": _column_or_nulls(batch, "answer", pa.large_string()),
        },
        schema=REJECT_SCHEMA,
    )


def _column_or_nulls(batch: pa.Table, name: str, kind: pa.DataType) -> pa.Array:
    return batch[name].cast(kind) if name in batch.column_names else pa.nulls(batch.num_rows, kind)


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

    def _has_files(self, path: str) -> bool:
        return self.fs.exists(path) and any(p.endswith(".parquet") for p in self.fs.find(path))

    def _remove(self, path: str) -> None:
        if self.fs.exists(path):
            self.fs.rm(path, recursive=True)

    def _read(self, path: str, **kwargs: Any) -> ray.data.Dataset:
        return ray.data.read_parquet(path, filesystem=self.arrow_fs, **kwargs)

    def _write(self, dataset: ray.data.Dataset, path: str) -> None:
        """Replace whatever `path` holds with the dataset, so a re-run never appends twice."""
        self._remove(path)
        dataset.write_parquet(path, filesystem=self.arrow_fs)

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

    def _tally(self, path: str) -> Tally:
        tally: Tally = Counter()
        if self._has_files(path):
            counts = self._read(path, columns=TALLY_COLUMNS).map_batches(_tally_block, batch_format="pyarrow")
            for row in counts.take_all():
                tally[(row["reject_stage"], row["source"], row["reject_reason"])] += row["count_all"]
        return tally

    def write_rows(self, stream: ray.data.Dataset, kept_dir: str, stages: list[str], sums: tuple[str, ...] = ()) -> tuple[Tally, dict[str, int]]:
        """Run a flow's row stream to storage: kept rows to `kept_dir`, rejects to rejects/<stage>/.

        `stages` are the flow's stages; their old rejects are replaced.  An empty folder is not written.
        Returns the tally and, for each column in `sums`, its total over all rows (kept and rejected).
        """
        staging = self.path("_staging")
        self._write(stream, staging)
        tally = self._tally(staging)
        totals = {column: int(self._read(staging, columns=[column]).sum(column) or 0) for column in sums} if tally else {}
        self._remove(self.path(kept_dir))
        if any(stage is None for stage, _, _ in tally):
            kept = self._read(staging).filter(expr=col("reject_reason").is_null())
            self._write(kept.drop_columns(REJECT_COLUMNS), self.path(kept_dir))
        for stage in stages:
            self._remove(self.path("rejects", stage))
            if any(s == stage for s, _, _ in tally):
                rejected = self._read(staging).filter(expr=col("reject_stage") == stage)
                self._write(rejected.map_batches(_as_rejects, batch_format="pyarrow"), self.path("rejects", stage))
        self._remove(staging)
        return tally, totals

    def write_json(self, name: str, payload: dict[str, Any]) -> None:
        with self.fs.open(self.path(name), "w", encoding="utf-8") as f:
            json.dump(payload, f, ensure_ascii=False, indent=2)

    def read_json(self, name: str) -> dict[str, Any]:
        with self.fs.open(self.path(name), "r", encoding="utf-8") as f:
            return json.load(f)
