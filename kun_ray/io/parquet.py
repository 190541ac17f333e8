"""Parquet corpora: rows read a batch at a time, fields named in the config as for `jsonl`."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, BinaryIO

import pyarrow.parquet as pq

from kun_ray.io.base import CorpusReader
from kun_ray.io.jsonl import generic_document
from kun_ray.io.records import Document

BATCH_ROWS = 1024


class ParquetReader(CorpusReader):
    unit = "row"
    compression = None  # Parquet compresses inside the file

    def records(self, stream: BinaryIO) -> Iterator[tuple[int, Any]]:
        position = 0
        for batch in pq.ParquetFile(stream).iter_batches(batch_size=BATCH_ROWS):
            for record in batch.to_pylist():
                position += 1
                yield position, record

    def document(self, record: dict[str, Any]) -> Document:
        s = self.source
        return generic_document(record, s.text_field or "text", s.id_field, s.title_field)
