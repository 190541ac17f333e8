"""JSON Lines: the parser the JSONL-based corpora share, and the generic `jsonl` format."""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import Any, BinaryIO

import orjson

from kun_ray.io.base import CorpusReader, as_id, meta_json, take
from kun_ray.io.records import Document, RecordError, one_line


def parse_failure(raw: bytes, error: Exception) -> RecordError:
    """Why a line is not JSON: bad UTF-8 is told apart from bad syntax."""
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as bad:
        return RecordError("invalid_utf8", f"invalid UTF-8 at byte {bad.start}: {bad.reason}", raw)
    return RecordError("malformed_json", one_line(str(error)), raw)


def _skip_line(stream: BinaryIO, chunk: int) -> int:
    """Read past the rest of the current line, `chunk` bytes at most at a time; the bytes skipped."""
    skipped = 0
    while rest := stream.readline(chunk):
        skipped += len(rest)
        if rest.endswith(b"\n"):
            break
    return skipped


def json_lines(stream: BinaryIO, max_record_bytes: int) -> Iterator[tuple[int, Any]]:
    """(line number, parsed value or RecordError) for every non-blank line.

    A line longer than `max_record_bytes` is never held whole: its head is kept for the
    reject row and the rest is skipped in bounded reads.
    """
    if not isinstance(stream, io.BufferedIOBase):  # fsspec's remote files take no readline(size)
        stream = io.BufferedReader(stream, buffer_size=1 << 20)
    number = 0
    while raw := stream.readline(max_record_bytes + 1):
        number += 1
        if len(raw) > max_record_bytes and not raw.endswith(b"\n"):
            size = len(raw) + _skip_line(stream, max_record_bytes)
            yield (
                number,
                RecordError(
                    "record_too_large",
                    f"a line of {size:,} bytes, over read.max_record_bytes ({max_record_bytes:,})",
                    raw[:4096],
                ),
            )
            continue
        if not raw.strip():
            continue
        try:
            yield number, orjson.loads(raw)
        except orjson.JSONDecodeError as error:
            yield number, parse_failure(raw, error)


def generic_document(
    record: dict[str, Any], text_field: str, id_field: str | None, title_field: str | None
) -> Document:
    """A record whose text, id and title fields are named in the config; the rest is meta."""
    rest = dict(record)
    text = take(rest, text_field, "missing_text")
    doc_id = as_id(take(rest, id_field, "missing_id"), id_field) if id_field else None
    title = rest.pop(title_field, None) if title_field else None
    return Document(doc_id=doc_id, text=text, title=title, meta=meta_json(rest))


class JsonlReader(CorpusReader):
    unit = "line"

    def records(self, stream: BinaryIO) -> Iterator[tuple[int, Any]]:
        return json_lines(stream, self.max_record_bytes)

    def document(self, record: dict[str, Any]) -> Document:
        s = self.source
        return generic_document(record, s.text_field or "text", s.id_field, s.title_field)
