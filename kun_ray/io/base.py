"""What every corpus reader is: records out of a byte stream, and a document out of a record.

A new corpus format is one new module beside this one with a `CorpusReader` subclass,
registered in kun_ray/io/read.py.  The shared checks (is it an object, is the text a
non-empty string) and all error handling live in read.py, so a reader only knows its format.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, BinaryIO

import orjson

from kun_ray.config import SourceConfig
from kun_ray.io.records import Document, RecordError


class CorpusReader:
    #: What a position in the file counts: "line", "record" or "row".
    unit = "line"
    #: fsspec compression for opening the file: "infer" picks it from the extension (.gz, .zst).
    compression: str | None = "infer"

    def __init__(self, source: SourceConfig, max_record_bytes: int):
        self.source = source
        #: A record larger than this is a `record_too_large` reject, not a document.
        self.max_record_bytes = max_record_bytes

    def records(self, stream: BinaryIO) -> Iterator[tuple[int, Any]]:
        """(1-based position, parsed record or RecordError) for every record in the stream.

        Streams: a record is parsed, yielded and forgotten.  An exception ends the file and
        becomes one reject for the whole file (the records already yielded stay).
        """
        raise NotImplementedError

    def document(self, record: dict[str, Any]) -> Document:
        """The document fields of one record; raises RecordError for a record that cannot be one."""
        raise NotImplementedError


def take(record: dict[str, Any], field: str, reason: str) -> Any:
    """Remove and return a required field, or raise RecordError(reason)."""
    if field not in record:
        raise RecordError(reason, f"record has no {field!r} field")
    return record.pop(field)


def as_id(value: Any, field: str) -> str:
    if value is None or (isinstance(value, str) and not value.strip()):
        raise RecordError("missing_id", f"record has an empty {field!r} field")
    if isinstance(value, (dict, list)):
        raise RecordError("malformed_record", f"{field!r} is a {type(value).__name__}, not an id")
    return str(value)


def meta_json(rest: dict[str, Any]) -> str | None:
    """Whatever else a record carried, as a JSON string (None when nothing is left)."""
    if not rest:
        return None
    return orjson.dumps(rest, default=str, option=orjson.OPT_NON_STR_KEYS).decode()
