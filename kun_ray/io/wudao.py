"""WuDao 2.0: `part-*.json`, each file ONE JSON array of records
`{id, uniqueKey, titleUkey, dataType, title, content}`, or that array wrapped as `{"RECORDS": [...]}`.

The array is parsed incrementally (ijson over yajl), so a file is never held in memory whole,
and a record nested absurdly deep is a reject, not a memory blow-up.
A syntax error inside the array ends the file: the records before it are kept, and the rest
of the file becomes one reject.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, BinaryIO

import ijson
from ijson.common import ObjectBuilder

from kun_ray.io.base import CorpusReader, as_id, meta_json, take
from kun_ray.io.records import Document, RecordError

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


OPEN = ("start_map", "start_array")
CLOSE = ("end_map", "end_array")


def _elements(events: Iterator[tuple[str, Any]], max_depth: int) -> Iterator[Any]:
    """The elements of an array whose start_array was just read, up to its end_array.

    Built from ijson's basic events, which carry no path (ijson.items keeps one per event, and a
    pathologically deep record then costs depth-squared memory); an element nested deeper than
    `max_depth` is skipped in constant memory and comes out as a RecordError.
    """
    for event, value in events:
        if event == "end_array":
            return
        if event not in OPEN:
            yield value
            continue
        builder, depth, too_deep = ObjectBuilder(), 1, False
        builder.event(event, value)
        for event, value in events:
            depth += (event in OPEN) - (event in CLOSE)
            too_deep = too_deep or depth > max_depth
            if not too_deep:
                builder.event(event, value)
            if depth == 0:
                break
        yield (
            RecordError("malformed_record", f"a record nested deeper than {max_depth} levels")
            if too_deep
            else builder.value
        )


def _records_array(events: Iterator[tuple[str, Any]], max_depth: int) -> Iterator[Any]:
    """The elements of the top-level object's "RECORDS" array."""
    depth = 0
    for event, value in events:
        depth += (event in OPEN) - (event in CLOSE)
        if event == "map_key" and depth == 1 and value == "RECORDS":
            event, _ = next(events)
            if event != "start_array":
                raise ValueError('"RECORDS" is not an array')
            yield from _elements(events, max_depth)
            return
    raise ValueError('expected a JSON array or {"RECORDS": [...]}, found an object without "RECORDS"')


class WudaoReader(CorpusReader):
    unit = "record"
    #: A WuDao record is one flat object; this much nesting is not one.
    max_depth = 64

    def records(self, stream: BinaryIO) -> Iterator[tuple[int, Any]]:
        first, stream = _first_byte(stream)
        if first not in (b"[", b"{"):
            found = "an empty file" if not first else f"{first!r}"
            raise ValueError(f'expected a JSON array or {{"RECORDS": [...]}}, found {found}')
        events = iter(ijson.basic_parse(stream, use_float=True))
        if first == b"[":
            next(events)  # start_array
            items = _elements(events, self.max_depth)
        else:
            items = _records_array(events, self.max_depth)
        yield from enumerate(items, start=1)

    def document(self, record: dict[str, Any]) -> Document:
        rest = dict(record)
        text = take(rest, "content", "missing_text")
        unique_key = rest.pop("uniqueKey", None)
        doc_id = as_id(unique_key, "uniqueKey") if unique_key is not None else None
        return Document(doc_id=doc_id, text=text, title=rest.pop("title", None), meta=meta_json(rest))
