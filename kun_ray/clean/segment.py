"""segment: split each document into self-contained segments within a character band (Humpback).

Humpback labels "self-contained segments" of web documents, not whole pages, and its kept
answers ran 1,000 to 2,200 characters (Spico197/Humback keeps documents of that length,
data/unlabelled/falcon_refinedweb.py line 9).  A document splits into blocks at blank lines
(paragraphs) and before heading lines (Markdown `#`, `第…章`, `一、`); a paragraph longer than the
band splits at its lines.  Consecutive blocks are packed greedily into segments of at most
`max_chars`, and a heading starts a new one once the one before it has `min_chars`; a segment
shorter than `min_chars` is not kept, and a line longer than `max_chars` ends the segment before
it.  A segment's text is the document's text from its first block to its
last, as written.

A split stage: each segment is a row of its own, its `doc_id` the document's with `#<segment>`
after it, `segment_of` the document's id and `segment` its index; `record` and `shard` stay the
document's.  A document with no segment in the band is one reject (`no_segment`), so every
document ends in a segment or a reject.
"""

from __future__ import annotations

import re

import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field, model_validator

from kun_ray import crash
from kun_ray.config.base import CpuResources
from kun_ray.io.records import REJECT_COLUMNS, REJECT_FIELDS, SPLIT_COLUMN
from kun_ray.stages.base import Stage, replace_column


class SegmentConfig(CpuResources):
    """Split documents at headings and paragraphs into segments of min_chars to max_chars characters."""

    min_chars: int = Field(default=1000, gt=0)
    max_chars: int = Field(default=2200, gt=0)
    #: At most this many segments of one document (the first ones); null: all.
    max_segments: int | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _band(self) -> SegmentConfig:
        if self.min_chars > self.max_chars:
            raise ValueError(f"min_chars ({self.min_chars}) is above max_chars ({self.max_chars})")
        return self


PARAGRAPH_BREAK = re.compile(r"\n[^\S\n]*\n\s*")
HEADING = re.compile(r"#{1,6}\s|第[一二三四五六七八九十百千\d]+[章节篇部回]|[一二三四五六七八九十]+、")


def blocks(text: str, max_chars: int) -> list[tuple[int, int]]:
    """The (start, end) spans of the text's blocks: paragraphs, split before heading lines, and
    a paragraph longer than `max_chars` split into its lines."""
    spans = []
    start = 0
    for match in [*PARAGRAPH_BREAK.finditer(text), None]:
        end = len(text) if match is None else match.start()
        spans += _paragraph_blocks(text, start, end, max_chars)
        if match is not None:
            start = match.end()
    return [(s, e) for s, e in spans if text[s:e].strip()]


def _paragraph_blocks(text: str, start: int, end: int, max_chars: int) -> list[tuple[int, int]]:
    lines, position = [], start
    for line in text[start:end].split("\n"):
        lines.append((position, position + len(line)))
        position += len(line) + 1
    if end - start > max_chars:
        return lines
    spans: list[tuple[int, int]] = []
    for line_start, line_end in lines:
        if spans and HEADING.match(text, line_start):
            spans.append((line_start, line_end))
        elif spans:
            spans[-1] = (spans[-1][0], line_end)
        else:
            spans.append((line_start, line_end))
    return spans


def segments(text: str, min_chars: int, max_chars: int, max_segments: int | None = None) -> list[str]:
    """The text's segments: runs of consecutive blocks packed greedily up to `max_chars`, each
    kept when it has at least `min_chars` characters; a heading starts a new segment once the
    one before it is long enough."""
    found: list[str] = []
    first = last = None  # the span of the segment being packed

    def close() -> None:
        if first is not None and last - first >= min_chars:
            found.append(text[first:last])

    for start, end in blocks(text, max_chars):
        heading = HEADING.match(text, start) is not None
        if first is not None and (end - first > max_chars or heading and last - first >= min_chars):
            close()
            first = None
        if end - start > max_chars:  # a line too long for any segment
            continue
        first, last = (start if first is None else first), end
    close()
    return found[:max_segments]


class Segment(Stage):
    type = "segment"
    config_model = SegmentConfig
    kind = "split"
    adds = {"segment_of": pa.string(), "segment": pa.int32()}
    reasons = frozenset({"no_segment"})

    def apply(self, stream):
        return self.map(stream, segment_batch, stage=self)


def segment_batch(batch: pa.Table, stage: Segment) -> pa.Table:
    """Each live row as its segments' rows, or rejected with `no_segment`; rows rejected before
    pass through.  A document's second and later segments carry the stage's name in SPLIT_COLUMN,
    so the ledger counts the rows a shard was given apart from the rows it wrote."""
    crash.point(f"worker:{stage.name}")
    config = stage.config
    if SPLIT_COLUMN not in batch.column_names:
        batch = batch.append_column(SPLIT_COLUMN, pa.nulls(batch.num_rows, pa.string()))
    live = pc.is_null(batch["reject_reason"]).to_pylist()
    texts, ids, splits = batch["text"].to_pylist(), batch["doc_id"].to_pylist(), batch[SPLIT_COLUMN].to_pylist()
    take: list[int] = []
    columns: dict[str, list] = {name: [] for name in ("text", "doc_id", "segment_of", "segment", SPLIT_COLUMN)}
    verdicts: list[tuple[str | None, str | None, str | None]] = []  # (stage, reason, detail)

    def add(i: int, text: str, doc_id: str, of: str | None, index: int | None, split: str | None) -> None:
        take.append(i)
        for name, value in zip(columns, (text, doc_id, of, index, split)):
            columns[name].append(value)

    for i, (text, doc_id, split, alive) in enumerate(zip(texts, ids, splits, live)):
        pieces = segments(text, config.min_chars, config.max_chars, config.max_segments) if alive else []
        if not alive:
            add(i, text, doc_id, None, None, split)
            verdicts.append(tuple(batch[c][i].as_py() for c in REJECT_COLUMNS))
        elif not pieces:
            add(i, text, doc_id, None, None, split)
            band = f"{config.min_chars}-{config.max_chars}"
            verdicts.append((stage.name, "no_segment", f"no paragraphs of {band} characters in {len(text)}"))
        for k, piece in enumerate(pieces):
            add(i, piece, f"{doc_id}#{k}", doc_id, k, split if k == 0 else stage.name)
            verdicts.append((None, None, None))
    rows = batch.take(pa.array(take, pa.int64()))
    rows = replace_column(rows, "text", pa.array(columns["text"], pa.large_string()))
    rows = replace_column(rows, "doc_id", pa.array(columns["doc_id"], pa.string()))
    rows = replace_column(rows, "segment_of", pa.array(columns["segment_of"], pa.string()))
    rows = replace_column(rows, "segment", pa.array(columns["segment"], pa.int32()))
    rows = replace_column(rows, SPLIT_COLUMN, pa.array(columns[SPLIT_COLUMN], pa.string()))
    for field, values in zip(REJECT_FIELDS, list(zip(*verdicts)) or [(), (), ()]):
        rows = replace_column(rows, field.name, pa.array(values, field.type))
    return rows
