"""WuDao 2.0: `part-*.json`, each file ONE JSON array of records
`{id, uniqueKey, titleUkey, dataType, title, content}`, or that array wrapped as `{"RECORDS": [...]}`.

The array is parsed incrementally (ijson over yajl), so a file is never held in memory whole.
A syntax error inside the array ends the file: the records before it are kept, and the rest
of the file becomes one reject.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, BinaryIO

import ijson

from kun_ray.io.base import CorpusReader, as_id, meta_json, take
from kun_ray.io.records import Document

WHITESPACE = b" \t\r\n"
BOM = b"\xef\xbb\xbf"


class _Rewound:
    """A byte stream with bytes already read put back in front of it."""

    def __init__(self, head: bytes, stream: BinaryIO):
        self._head = head
        self._stream = stream

    def read(self, size: int = -1) -> bytes:
        if not self._head:
            return self._stream.read(size)
        if size is None or size < 0:
            data, self._head = self._head + self._stream.read(), b""
            return data
        data, self._head = self._head[:size], self._head[size:]
        return data


def _first_byte(stream: BinaryIO) -> tuple[bytes, _Rewound]:
    """The first byte that is not whitespace or a BOM, and the stream rewound to its start."""
    head = b""
    while chunk := stream.read(256):
        head += chunk
        body = head.removeprefix(BOM).lstrip(WHITESPACE)
        if body:
            return body[:1], _Rewound(head.removeprefix(BOM), stream)
    return b"", _Rewound(head, stream)


def _noting_records_key(events: Iterator[tuple[str, str, Any]], seen: list[bool]) -> Iterator[tuple[str, str, Any]]:
    for event in events:
        if event[0] == "" and event[1] == "map_key" and event[2] == "RECORDS":
            seen.append(True)
        yield event


class WudaoReader(CorpusReader):
    unit = "record"

    def records(self, stream: BinaryIO) -> Iterator[tuple[int, Any]]:
        first, stream = _first_byte(stream)
        if first == b"[":
            items = ijson.items(stream, "item", use_float=True)
        elif first == b"{":
            seen: list[bool] = []
            items = ijson.items(_noting_records_key(ijson.parse(stream, use_float=True), seen), "RECORDS.item")
        else:
            found = "an empty file" if not first else f"{first!r}"
            raise ValueError(f'expected a JSON array or {{"RECORDS": [...]}}, found {found}')
        yield from enumerate(items, start=1)
        if first == b"{" and not seen:
            raise ValueError('expected a JSON array or {"RECORDS": [...]}, found an object without "RECORDS"')

    def document(self, record: dict[str, Any]) -> Document:
        rest = dict(record)
        text = take(rest, "content", "missing_text")
        unique_key = rest.pop("uniqueKey", None)
        doc_id = as_id(unique_key, "uniqueKey") if unique_key is not None else None
        return Document(doc_id=doc_id, text=text, title=rest.pop("title", None), meta=meta_json(rest))
