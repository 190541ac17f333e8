"""The read stage: the configured sources -> one Ray Dataset of document rows and reject rows.

Planning (listing files) happens on the driver before any work starts, so a glob that
matches nothing is a config error.  Reading is one Ray task per file, streaming: a file is
parsed record by record and emitted in bounded blocks, so a 2 GB shard never sits in memory.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

import orjson
import pyarrow as pa
import ray.data

from kun_ray.config import (
    ConfigError,
    ReadConfig,
    RunConfig,
    SourceConfig,
    StorageOptions,
)
from kun_ray.io.base import CorpusReader
from kun_ray.io.jsonl import JsonlReader
from kun_ray.io.parquet import ParquetReader
from kun_ray.io.records import Document, RecordError, blocks, one_line
from kun_ray.io.skypile import SkypileReader
from kun_ray.io.storage import expand, to_url, url_to_fs
from kun_ray.io.wanjuan import WanjuanReader
from kun_ray.io.wudao import WudaoReader

READERS: dict[str, type[CorpusReader]] = {
    "wudao": WudaoReader,
    "wanjuan": WanjuanReader,
    "skypile": SkypileReader,
    "jsonl": JsonlReader,
    "parquet": ParquetReader,
}


@dataclass(frozen=True)
class InputFile:
    source: str
    url: str
    #: The path below the pattern's root: stable when a corpus moves, so ids are built from it.
    relpath: str

    @property
    def shard(self) -> str:
        """The file's name in the run: what its rows carry, and what the run commits and resumes by."""
        return f"{self.source}/{self.relpath}"


def plan_inputs(config: RunConfig) -> list[InputFile]:
    """Every input file of every source; a pattern that matches nothing is a ConfigError.  No
    file for a run that starts from another run's rows (`start:`): it reads no source."""
    inputs: list[InputFile] = []
    if config.start is not None:
        return inputs
    for i, source in enumerate(config.sources):
        seen: set[str] = set()
        for j, pattern in enumerate(source.paths):
            where = f"sources[{i}].paths[{j}]"
            try:
                fs, path = url_to_fs(pattern, config.storage_for(source.storage))
                found = expand(fs, path)
            except Exception as error:  # any listing failure is the config's path at fault
                raise ConfigError(
                    f"{where}: cannot list {pattern}: {type(error).__name__}: {one_line(error)}"
                ) from None
            if not found:
                raise ConfigError(f"{where}: no file matches {pattern}")
            for path, relpath in found:
                if path not in seen:
                    seen.add(path)
                    inputs.append(InputFile(source.name, to_url(fs, path), relpath))
    return inputs


def _record_text(record: Any) -> str:
    """A record as text for its reject row, whatever it holds."""
    try:
        return orjson.dumps(record, default=str).decode()
    except (TypeError, orjson.JSONEncodeError):
        try:
            return repr(record)[:100_000]
        except RecursionError:
            return f"<a {type(record).__name__} nested too deep to print>"


def _utf8_size(name: str, value: str) -> int | RecordError:
    """A string's size in UTF-8, or the record's reject when it cannot be written so (a lone surrogate)."""
    try:
        return len(value.encode("utf-8"))
    except UnicodeEncodeError as bad:
        return RecordError("invalid_utf8", f"the {name} holds a lone surrogate at character {bad.start}")


def _text_problem(text: Any, max_bytes: int) -> RecordError | None:
    if text is None:
        return RecordError("missing_text", "the text field is null")
    if not isinstance(text, str):
        return RecordError("malformed_record", f"the text field is a {type(text).__name__}, not a string")
    if not text.strip():
        return RecordError("empty_text", "the text is empty")
    if isinstance(size := _utf8_size("text", text), RecordError):
        return size
    if size > max_bytes:
        return RecordError("record_too_large", f"a text of {size:,} bytes, over read.max_record_bytes ({max_bytes:,})")
    return None


class _Rows:
    """Builds the stream rows of one file."""

    def __init__(self, file: InputFile, source: SourceConfig, unit: str, max_reject_text_chars: int):
        self.file, self.source, self.unit, self.limit = file, source, unit, max_reject_text_chars

    def document(self, doc: Document, fallback_id: str, position: int) -> dict[str, Any]:
        title = None if doc.title is None else str(doc.title)
        for name, value in (("id", doc.doc_id), ("title", title)):
            if value is not None and isinstance(problem := _utf8_size(name, value), RecordError):
                raise problem
        return self._row(doc.doc_id or fallback_id, position, doc.text, title, doc.meta, None, None)

    def reject(self, doc_id: str, error: RecordError, position: int | None, text: str | None = None) -> dict[str, Any]:
        where = self.file.url if position is None else f"{self.file.url}, {self.unit} {position}"
        if text is None and error.raw is not None:
            text = error.raw[: self.limit * 4].decode("utf-8", errors="replace")
        text = None if text is None else text[: self.limit]
        return self._row(doc_id, position, text, None, None, error.reason, f"{where}: {error.detail}")

    def _row(
        self,
        doc_id: str,
        position: int | None,
        text: str | None,
        title: str | None,
        meta: str | None,
        reason: str | None,
        detail: str | None,
    ) -> dict[str, Any]:
        return {
            "doc_id": doc_id,
            "source": self.source.name,
            "shard": self.file.shard,
            "record": position,
            "text": text,
            "title": title,
            "meta": meta,
            "reject_stage": None if reason is None else "read",
            "reject_reason": reason,
            "reject_detail": detail,
        }


def _record_row(reader: CorpusReader, rows: _Rows, record: Any, position: int, max_bytes: int) -> dict[str, Any]:
    """One record's row: its document, or a reject with the reason.  Never raises."""
    fallback_id = f"{rows.file.relpath}:{position}"
    if isinstance(record, RecordError):
        return rows.reject(fallback_id, record, position)
    try:
        if not isinstance(record, dict):
            raise RecordError("malformed_record", f"expected a JSON object, found a {type(record).__name__}")
        doc = reader.document(record)
        if problem := _text_problem(doc.text, max_bytes):
            return rows.reject(doc.doc_id or fallback_id, problem, position)
        return rows.document(doc, fallback_id, position)
    except RecordError as error:
        return rows.reject(fallback_id, error, position, text=_record_text(record))
    except Exception as error:  # a record its reader cannot take apart (nested too deep for JSON, ...)
        failure = RecordError("malformed_record", f"{type(error).__name__}: {one_line(error)}")
        return rows.reject(fallback_id, failure, position, text=_record_text(record))


def read_file(
    file: InputFile, source: SourceConfig, storage: StorageOptions, options: ReadConfig | None = None
) -> Iterator[dict[str, Any]]:
    """Stream rows out of one file: a document per good record, a reject row per bad one.

    Never raises for bad data: a file that cannot be opened or parsed to its end yields one
    more reject row for the file (reason `unreadable_file`) after the records read before.
    """
    options = options or ReadConfig()
    reader = READERS[source.format](source, options.max_record_bytes)
    rows = _Rows(file, source, reader.unit, options.max_reject_text_chars)
    try:
        fs, path = url_to_fs(file.url, storage)
        with fs.open(path, "rb", compression=reader.compression) as stream:
            for position, record in reader.records(stream):
                yield _record_row(reader, rows, record, position, options.max_record_bytes)
    except Exception as error:  # the file's boundary: whatever broke it becomes its reject
        failure = RecordError("unreadable_file", f"{type(error).__name__}: {one_line(error)}")
        yield rows.reject(file.relpath, failure, None)


def file_blocks(file: InputFile, config: RunConfig) -> Iterator[pa.Table]:
    """One file's stream rows (kun_ray.io.records.STREAM_SCHEMA) in blocks of at most read.block_rows."""
    source = config.source(file.source)
    rows = read_file(file, source, config.storage_for(source.storage), config.read)
    return blocks(rows, config.read.block_rows)


def input_files(inputs: list[InputFile]) -> ray.data.Dataset:
    """The files as a Dataset of one block each, so each gets its own read task."""
    return ray.data.from_items([asdict(f) for f in inputs], override_num_blocks=max(1, len(inputs)))


def _read_files(batch: pa.Table, config: RunConfig) -> Iterator[pa.Table]:
    for item in batch.to_pylist():
        yield from file_blocks(InputFile(**item), config)


def read_documents(config: RunConfig, inputs: list[InputFile]) -> ray.data.Dataset:
    """The files' stream rows as one Dataset, one read task per file (the run's read flow writes
    them as it reads instead, see kun_ray.pipeline; this is for reading a corpus interactively)."""
    return input_files(inputs).map_batches(
        _read_files, batch_size=1, batch_format="pyarrow", fn_kwargs={"config": config}, num_cpus=config.read.num_cpus
    )
