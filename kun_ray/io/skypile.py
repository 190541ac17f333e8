"""SkyPile-150B: JSON Lines with a single `text` field (data/2020-40_zh_head_0000.jsonl).

SkyPile records carry no id: the document id is the file's path and the line number.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, BinaryIO

from kun_ray.io.base import CorpusReader, meta_json, take
from kun_ray.io.jsonl import json_lines
from kun_ray.io.records import Document


class SkypileReader(CorpusReader):
    unit = "line"

    def records(self, stream: BinaryIO) -> Iterator[tuple[int, Any]]:
        return json_lines(stream, self.max_record_bytes)

    def document(self, record: dict[str, Any]) -> Document:
        rest = dict(record)
        text = take(rest, "text", "missing_text")
        return Document(doc_id=None, text=text, meta=meta_json(rest))
