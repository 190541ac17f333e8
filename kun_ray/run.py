"""The run folder: where a run's stages, rejects and report live, local or on object storage.

    <output>/
      documents/          the read stage's documents (Parquet)
      rejects/<stage>/    every row a stage rejected, with stage, reason and detail (Parquet)
      report.json         per-stage counts: in, kept, rejected by reason, per source

A stage's row stream (documents and rejects together, see kun_ray/io/records.py) is written
once to `_staging/<stage>/`, then split by a cheap Parquet read into the stage's output and
its rejects, so the expensive stage runs once and its accounting is read from what was written.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import ray.data
from ray.data.expressions import col

from kun_ray.config import RunConfig
from kun_ray.io.records import REJECT_COLUMNS, REJECT_SCHEMA
from kun_ray.io.storage import is_local, pyarrow_filesystem, url_to_fs

#: (source, reject reason or None for kept rows) -> rows
Tally = Counter[tuple[str, str | None]]


def _tally_block(batch: pa.Table) -> pa.Table:
    return batch.group_by(["source", "reject_reason"]).aggregate([([], "count_all")])


def _as_rejects(batch: pa.Table, stage: str) -> pa.Table:
    return pa.table(
        {
            "doc_id": batch["doc_id"],
            "source": batch["source"],
            "stage": pa.array([stage] * batch.num_rows, pa.string()),
            "reason": batch["reject_reason"],
            "detail": batch["reject_detail"],
            "text": batch["text"].cast(pa.large_string()),
        },
        schema=REJECT_SCHEMA,
    )


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

    def _tally(self, path: str) -> Tally:
        tally: Tally = Counter()
        if self._has_files(path):
            counts = self._read(path, columns=["source", "reject_reason"]).map_batches(_tally_block, batch_format="pyarrow")
            for row in counts.take_all():
                tally[(row["source"], row["reject_reason"])] += row["count_all"]
        return tally

    def write_stage(self, stage: str, stream: ray.data.Dataset, kept_dir: str) -> Tally:
        """Run a stage's row stream to storage; its kept rows go to `kept_dir`, its rejects to rejects/<stage>/.

        A folder that would be empty is not written.
        """
        staging = self.path("_staging", stage)
        self._write(stream, staging)
        tally = self._tally(staging)
        kept_path, rejects_path = self.path(kept_dir), self.path("rejects", stage)
        self._remove(kept_path)
        self._remove(rejects_path)
        if any(reason is None for _, reason in tally):
            kept = self._read(staging).filter(expr=col("reject_reason").is_null())
            self._write(kept.drop_columns(list(REJECT_COLUMNS)), kept_path)
        if any(reason is not None for _, reason in tally):
            rejected = self._read(staging).filter(expr=col("reject_reason").is_not_null())
            self._write(rejected.map_batches(_as_rejects, batch_format="pyarrow", fn_kwargs={"stage": stage}), rejects_path)
        self._remove(self.path("_staging"))
        return tally

    def write_json(self, name: str, payload: dict[str, Any]) -> None:
        with self.fs.open(self.path(name), "w", encoding="utf-8") as f:
            json.dump(payload, f, ensure_ascii=False, indent=2)

    def read_json(self, name: str) -> dict[str, Any]:
        with self.fs.open(self.path(name), "r", encoding="utf-8") as f:
            return json.load(f)
