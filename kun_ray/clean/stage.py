"""What the CPU map stages share: they act on live rows only, and declare their resources.

CPU stages run as Ray tasks, not actors: tasks give their CPU back between batches, so a
chain of stages never starves the reads feeding it, and Ray fuses consecutive stages into
one operator.  Models they need load once per worker process (kun_ray.io.fetch.loaded_once).

A map stage's core is a `Filter`: given the live rows of a batch, it returns them with its
columns added (or its text rewritten) and, per row, a reject reason or None, with a detail.
Rows an earlier stage rejected pass through untouched, with the new columns null, so one
Ray Data flow carries every row to the writer.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import ray.data

from kun_ray.config import StageConfig


@dataclass
class Verdicts:
    """A filter's answer for a batch of live rows."""

    rows: pa.Table
    reasons: list[str | None]
    details: list[str | None]


Filter = Callable[[pa.Table], Verdicts]


def on_live_rows(batch: pa.Table, stage: str, keep_or_reject: Filter) -> pa.Table:
    """Apply a filter to the rows not yet rejected and mark the ones it rejects with `stage`."""
    live_mask = pc.is_null(batch["reject_reason"])
    verdicts = keep_or_reject(batch.filter(live_mask))  # called on empty batches too: stable schema
    stages = [None if reason is None else stage for reason in verdicts.reasons]
    rows = replace_column(verdicts.rows, "reject_stage", pa.array(stages, pa.string()))
    rows = replace_column(rows, "reject_reason", pa.array(verdicts.reasons, pa.string()))
    rows = replace_column(rows, "reject_detail", pa.array(verdicts.details, pa.large_string()))
    dead = batch.filter(pc.invert(live_mask))
    return pa.concat_tables([rows, dead], promote_options="default")


def replace_column(table: pa.Table, name: str, values: pa.Array) -> pa.Table:
    index = table.schema.get_field_index(name)
    return table.set_column(index, name, values) if index >= 0 else table.append_column(name, values)


def map_stage(ds: ray.data.Dataset, fn: Callable[..., pa.Table], resources: StageConfig, **kwargs: Any) -> ray.data.Dataset:
    """`ds.map_batches(fn)` as Ray tasks, with the resources a stage's config declares."""
    options: dict[str, Any] = {"batch_size": resources.batch_size, "batch_format": "pyarrow", "num_cpus": resources.num_cpus, "fn_kwargs": kwargs}
    if resources.concurrency is not None:
        options["concurrency"] = resources.concurrency
    return ds.map_batches(fn, **options)
