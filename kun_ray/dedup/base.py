"""What exact and near dedup share: a stable order, and marking rows that duplicate a kept one.

The document kept out of each group of duplicates is the first in a stable order: sources in
the order of the config, then `doc_id`, then the shard and the record's position in it (corpora
repeat ids across files and dumps: two rows never share a key).  An order key string sorts
that way, so Ray Data's `Min` aggregation picks the keeper without any Python per group.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import pyarrow as pa
import pyarrow.compute as pc

from kun_ray.stages.base import Stage, Verdicts, on_live_rows

SEPARATOR = "\x1f"


#: Rows a shuffle partition of a dedup is sized for.
ROWS_PER_PARTITION = 200_000
#: Up to this many rows a dedup groups its input in one task, without a shuffle: a shuffle
#: starts its own tasks and costs seconds whatever its size.
ONE_TASK_ROWS = 20_000


def shuffle_partitions(rows: int | None) -> int:
    """Partitions of a dedup's shuffles, 0 for none (up to ONE_TASK_ROWS rows): one per
    ROWS_PER_PARTITION rows, at most a few per CPU of the cluster (and 200); when the rows are
    not known (a stage outside a run), a few per CPU."""
    import ray

    most = max(8, min(200, 2 * int(ray.cluster_resources().get("CPU", 1))))
    if rows is None:
        return most
    return 0 if rows <= ONE_TASK_ROWS else max(1, min(most, math.ceil(rows / ROWS_PER_PARTITION)))


def source_ranks(sources: tuple[str, ...]) -> dict[str, int]:
    return {name: rank for rank, name in enumerate(sources)}


def order_key(rank: int, doc_id: str, shard: str = "", record: int | None = None) -> str:
    """A row's place in the stable order, unique even where a corpus repeats an id: the source's
    rank, the doc_id, then the shard and the record's position in it."""
    position = "" if record is None else f"{record:012d}"
    return SEPARATOR.join((f"{rank:05d}", doc_id, shard, position))


def describe(key: str, names: list[str]) -> str:
    rank, rest = key.split(SEPARATOR, 1)
    doc_id = rest.rsplit(SEPARATOR, 2)[0]
    return f"duplicate of {doc_id} (source {names[int(rank)]})"


def row_keys(rows: pa.Table, ranks: dict[str, int]) -> list[str]:
    """The order keys of rows (rows written before the record column have none: their doc_id stands)."""
    records = rows["record"].to_pylist() if "record" in rows.column_names else [None] * rows.num_rows
    return [
        order_key(ranks[source], doc_id, shard or "", record)
        for source, doc_id, shard, record in zip(
            rows["source"].to_pylist(), rows["doc_id"].to_pylist(), rows["shard"].to_pylist(), records
        )
    ]


def live_keys(batch: pa.Table, ranks: dict[str, int]) -> tuple[pa.Table, list[str]]:
    """The live rows of a batch and their order keys."""
    live = batch.filter(pc.is_null(batch["reject_reason"]))
    return live, row_keys(live, ranks)


def mark_duplicates(
    batch: pa.Table,
    stage: str,
    reason: str,
    ranks: dict[str, int],
    keeper_of: Callable[[str, str], str | None],
    column: str = "text",
) -> pa.Table:
    """Reject each live row whose keeper (found by `keeper_of(order key, value of column)`) is another row."""
    names = sorted(ranks, key=ranks.get)

    def keep_or_reject(rows: pa.Table) -> Verdicts:
        reasons: list[str | None] = []
        details: list[str | None] = []
        for key, text in zip(row_keys(rows, ranks), rows[column].to_pylist()):
            keeper = keeper_of(key, text)
            duplicate = keeper is not None and keeper != key
            reasons.append(reason if duplicate else None)
            details.append(describe(keeper, names) if duplicate else None)
        return Verdicts(rows, reasons, details)

    return on_live_rows(batch, stage, keep_or_reject)


class DedupStage(Stage):
    """What exact and near dedup declare alike: they need all of their input, and compare the
    column their config names (the text, or the instruction in the final flow)."""

    kind = "global"

    def columns_read(self) -> dict[str, pa.DataType]:
        return {self.config.column: pa.large_string() if self.config.column == "text" else pa.string()}
