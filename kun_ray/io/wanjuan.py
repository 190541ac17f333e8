"""WanJuan 1.0 text: JSON Lines (.jsonl, .jsonl.gz) with required `id` and `content`."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, BinaryIO

from kun_ray.io.base import CorpusReader, as_id, meta_json, take
from kun_ray.io.jsonl import json_lines
from kun_ray.io.records import Document


class WanjuanReader(CorpusReader):
    unit = "line"

    def records(self, stream: BinaryIO) -> Iterator[tuple[int, Any]]:
        return json_lines(stream, self.max_record_bytes)

    def document(self, record: dict[str, Any]) -> Document:
        rest = dict(record)
        doc_id = as_id(take(rest, "id", "missing_id"), "id")
        text = take(rest, "content", "missing_text")
        return Document(doc_id=doc_id, text=text, title=rest.pop("title", None), meta=meta_json(rest))
