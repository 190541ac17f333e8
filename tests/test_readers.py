"""The corpus readers, without Ray: every record of every format ends as a document or a reject."""

from __future__ import annotations

import io
import json

import pytest
from corpus import ZH, build_corpus

from kun_ray.config import ReadConfig, SourceConfig, StorageOptions
from kun_ray.io.read import InputFile, plan_inputs, read_file
from kun_ray.io.records import DOCUMENT_SCHEMA
from kun_ray.io.skypile import SkypileReader
from kun_ray.io.wudao import WudaoReader
from kun_ray.plan import parse_config


def read_all(config):
    rows = []
    for file in plan_inputs(config):
        source = config.source(file.source)
        rows.extend(read_file(file, source, config.storage_for(source.storage)))
    return rows


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return build_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="module")
def rows(corpus):
    config = parse_config({"sources": corpus.sources(), "output": "/tmp/unused"})
    return read_all(config)


def test_every_record_is_a_document_or_a_reject_with_its_reason(corpus, rows):
    outcome = {(r["source"], r["doc_id"]): r["reject_reason"] for r in rows}
    assert len(outcome) == len(rows), "a (source, doc_id) pair came out twice"
    assert outcome == corpus.expected


def test_documents_carry_the_schema_and_their_text(corpus, rows):
    docs = [r for r in rows if r["reject_reason"] is None]
    for doc in docs:
        assert set(DOCUMENT_SCHEMA.names) <= doc.keys()
        assert doc["text"] == corpus.texts[(doc["source"], doc["doc_id"])]
        assert doc["reject_detail"] is None


def test_wudao_fields(rows):
    doc = next(r for r in rows if r["doc_id"] == "wd-1")
    assert doc["title"] == "标题1"
    assert json.loads(doc["meta"]) == {"id": 1, "titleUkey": "t1", "dataType": "博客"}


def test_wanjuan_extra_fields_go_to_meta(rows):
    doc = next(r for r in rows if r["doc_id"] == "wj-1")
    assert doc["title"] == "复利"
    assert json.loads(doc["meta"]) == {"language": "zh", "date": "2023-05-01"}


def test_generic_jsonl_uses_configured_fields(rows):
    doc = next(r for r in rows if r["source"] == "web" and r["reject_reason"] is None)
    assert (doc["doc_id"], doc["title"], doc["text"]) == ("https://example.cn/1", "天空", ZH[11])
    assert json.loads(doc["meta"]) == {"lang": "zh"}


def test_reject_detail_names_file_and_line(corpus, rows):
    bad = next(r for r in rows if r["reject_reason"] == "invalid_utf8")
    path = corpus.root / "skypile/data/2020-40_zh_head_0000.jsonl"
    assert bad["reject_detail"].startswith(f"{path}, line 2: invalid UTF-8")
    assert "bad bytes" in bad["text"]
    broken = next(r for r in rows if r["doc_id"] == "broken.parquet")
    assert broken["reject_detail"].startswith(f"{corpus.root / 'table/broken.parquet'}: ")
    assert "\n" not in broken["reject_detail"]
    truncated = next(r for r in rows if r["doc_id"] == "part-001.jsonl.gz")
    assert "EOFError" in truncated["reject_detail"] or "BadGzipFile" in truncated["reject_detail"]


def test_a_missing_file_is_one_reject(tmp_path):
    source = SourceConfig(name="s", format="skypile", paths=["x"])
    missing = InputFile("s", str(tmp_path / "gone.jsonl"), "gone.jsonl")
    (row,) = list(read_file(missing, source, StorageOptions()))
    assert row["reject_reason"] == "unreadable_file"
    assert row["reject_detail"].startswith(f"{tmp_path / 'gone.jsonl'}: FileNotFoundError")


def test_wudao_object_without_records_is_unreadable(tmp_path):
    (tmp_path / "part-1.json").write_text('{"data": [{"content": "x"}]}')
    source = SourceConfig(name="w", format="wudao", paths=["x"])
    (row,) = list(read_file(InputFile("w", str(tmp_path / "part-1.json"), "part-1.json"), source, StorageOptions()))
    assert row["reject_reason"] == "unreadable_file"
    assert "RECORDS" in row["reject_detail"]


def test_reject_text_is_capped(tmp_path):
    (tmp_path / "big.jsonl").write_bytes(b'{"text": "' + "长".encode() * 100_000 + b"\n")
    source = SourceConfig(name="s", format="skypile", paths=["x"])
    (row,) = list(
        read_file(
            InputFile("s", str(tmp_path / "big.jsonl"), "big.jsonl"),
            source,
            StorageOptions(),
            ReadConfig(max_reject_text_chars=50),
        )
    )
    assert row["reject_reason"] == "malformed_json"
    assert len(row["text"]) == 50


class CountingStream(io.BytesIO):
    """Counts the bytes a reader pulled, to show it streams."""

    pulled = 0

    def read(self, size=-1):
        data = super().read(size)
        self.pulled += len(data)
        return data

    def readline(self, size=-1):
        data = super().readline(size)
        self.pulled += len(data)
        return data

    def __next__(self):
        line = self.readline()
        if not line:
            raise StopIteration
        return line


@pytest.mark.parametrize(
    "reader, payload",
    [
        (
            SkypileReader,
            b"".join(
                json.dumps({"text": ZH[i % 12] * 20}, ensure_ascii=False).encode() + b"\n" for i in range(40_000)
            ),
        ),
        (
            WudaoReader,
            json.dumps(
                [{"uniqueKey": str(i), "content": ZH[i % 12] * 20} for i in range(40_000)], ensure_ascii=False
            ).encode(),
        ),
    ],
    ids=["jsonl", "wudao-array"],
)
def test_readers_stream(reader, payload):
    stream = CountingStream(payload)
    records = reader(SourceConfig(name="s", format="skypile", paths=["x"]), 8 << 20).records(stream)
    next(records)
    assert len(payload) > 40 << 20
    assert stream.pulled < 1 << 20, f"read {stream.pulled} bytes of {len(payload)} for the first record"
