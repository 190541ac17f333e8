"""JSON Lines: the parser the JSONL-based corpora share, and the generic `jsonl` format."""

from __future__ import annotations

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


def json_lines(stream: BinaryIO) -> Iterator[tuple[int, Any]]:
    """(line number, parsed value or RecordError) for every non-blank line."""
    for number, raw in enumerate(stream, start=1):
        if not raw.strip():
            continue
        try:
            yield number, orjson.loads(raw)
        except orjson.JSONDecodeError as error:
            yield number, parse_failure(raw, error)


def generic_document(record: dict[str, Any], text_field: str, id_field: str | None, title_field: str | None) -> Document:
    """A record whose text, id and title fields are named in the config; the rest is meta."""
    rest = dict(record)
    text = take(rest, text_field, "missing_text")
    doc_id = as_id(take(rest, id_field, "missing_id"), id_field) if id_field else None
    title = rest.pop(title_field, None) if title_field else None
    return Document(doc_id=doc_id, text=text, title=title, meta=meta_json(rest))


class JsonlReader(CorpusReader):
    unit = "line"

    def records(self, stream: BinaryIO) -> Iterator[tuple[int, Any]]:
        return json_lines(stream)

    def document(self, record: dict[str, Any]) -> Document:
        s = self.source
        return generic_document(record, s.text_field or "text", s.id_field, s.title_field)
