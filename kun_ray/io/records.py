"""The document and reject schemas, and the row stream a stage emits.

A stage emits one stream of rows: documents it keeps, and rejected rows marked with
`reject_stage`, `reject_reason` and `reject_detail`.  Stages chained in one flow pass rows
an earlier stage rejected through untouched.  The run folder splits that stream into the stage's
Parquet output and its rejects (see kun_ray/run.py), so a stage never drops a row silently.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from kun_ray.secrets import redact

DOCUMENT_SCHEMA = pa.schema(
    [
        ("doc_id", pa.string()),
        ("source", pa.string()),
        ("shard", pa.string()),  # the input file it came from: the unit a run commits and resumes by
        # The record's position in its shard as its reader counts (a line, an array element, a row;
        # null for a file that could not be read at all): with source and shard it names the row
        # even where a corpus repeats an id.
        ("record", pa.int64()),
        ("text", pa.large_string()),
        ("title", pa.string()),
        ("meta", pa.large_string()),
    ]
)
REJECT_FIELDS = [
    pa.field("reject_stage", pa.string()),
    pa.field("reject_reason", pa.string()),
    pa.field("reject_detail", pa.large_string()),
]
REJECT_COLUMNS = [f.name for f in REJECT_FIELDS]
#: A column of the row stream, never written: on the rows a split stage (segment) makes beyond
#: the first of each input row, that stage's name.  The ledger counts them apart, so a shard
#: is committed when the rows it was given are all written, however many rows they became.
SPLIT_COLUMN = "__split_by__"
STREAM_SCHEMA = pa.schema([*DOCUMENT_SCHEMA, *REJECT_FIELDS])
REJECT_SCHEMA = pa.schema(
    [
        ("doc_id", pa.string()),
        ("source", pa.string()),
        ("shard", pa.string()),
        ("record", pa.int64()),
        ("stage", pa.string()),
        ("reason", pa.string()),
        ("detail", pa.large_string()),
        ("text", pa.large_string()),
        ("instruction", pa.string()),  # null before the label stage
        ("answer", pa.large_string()),  # null before the polish stage
    ]
)


def reject_schema(measures: Iterable[tuple[str, pa.DataType]] = ()) -> pa.Schema:
    """REJECT_SCHEMA and the measures the run's stages declare (n_tokens, ppl, score, ...): the
    values a row had when it was rejected (null before the stage that adds them), so a
    histogram of what a filter saw shows what it cut, too."""
    return pa.schema([*REJECT_SCHEMA, *(pa.field(name, kind) for name, kind in measures)])


def column_or_nulls(batch: pa.Table, name: str, kind: pa.DataType) -> pa.Array | pa.ChunkedArray:
    """A batch's column as `kind`, or nulls where the batch lacks it."""
    return batch[name].cast(kind) if name in batch.column_names else pa.nulls(batch.num_rows, kind)


class RecordError(Exception):
    """One record cannot become a document: a stable reason code and a human detail."""

    def __init__(self, reason: str, detail: str, raw: bytes | None = None):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
        self.raw = raw  # the record's bytes when it could not be parsed, kept for the reject row


@dataclass(frozen=True)
class Document:
    """What a corpus format makes of one record, before the shared checks on its text."""

    doc_id: str | None
    text: Any
    title: Any = None
    meta: str | None = None


def one_line(text: str, limit: int = 500) -> str:
    """Messages go into a single-line `detail`: newlines folded, secrets masked, length capped."""
    flat = redact(" ".join(str(text).split()))
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


class BlockBuilder:
    """Accumulates stream rows and hands them out as Arrow tables of bounded size."""

    def __init__(self, max_rows: int, max_bytes: int = 64 << 20):
        self.max_rows = max_rows
        self.max_bytes = max_bytes
        self._rows: list[dict[str, Any]] = []
        self._bytes = 0

    def add(self, row: dict[str, Any]) -> pa.Table | None:
        self._rows.append(row)
        self._bytes += len(row["text"] or "") + len(row["meta"] or "")
        if len(self._rows) >= self.max_rows or self._bytes >= self.max_bytes:
            return self.flush()
        return None

    def flush(self) -> pa.Table | None:
        if not self._rows:
            return None
        table = pa.Table.from_pylist(self._rows, schema=STREAM_SCHEMA)
        self._rows, self._bytes = [], 0
        return table


def blocks(rows: Iterator[dict[str, Any]], max_rows: int) -> Iterator[pa.Table]:
    builder = BlockBuilder(max_rows)
    for row in rows:
        if (table := builder.add(row)) is not None:
            yield table
    if (table := builder.flush()) is not None:
        yield table
