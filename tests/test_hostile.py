"""Hostile input: random bytes, broken compression, a 100 MB line, deep nesting, NUL bytes, other
scripts, an instruction of one repeated character.  Each ends as a reject with a reason or a
document; never an exception out of a reader, a dead job or a reader holding a whole line.
"""

from __future__ import annotations

import gzip
import json
import math
import random
import tracemalloc
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as pads
import pytest
from corpus import ZH, jsonl
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kun_ray.clean.heuristics import Heuristics
from kun_ray.clean.normalize import normalize_text
from kun_ray.config import ReadConfig, SourceConfig, StorageOptions
from kun_ray.io.read import InputFile, read_file
from kun_ray.io.records import STREAM_SCHEMA
from kun_ray.llm.label import LabelConfig, as_written, instruction_verdict
from kun_ray.llm.polish import PolishConfig, answer_verdict, clean_instruction
from kun_ray.llm.score import expected_value, parse_kun_verdict, parse_rating
from kun_ray.pipeline import run
from kun_ray.plan import parse_config

READ_REASONS = {
    "malformed_json",
    "invalid_utf8",
    "malformed_record",
    "missing_text",
    "empty_text",
    "missing_id",
    "record_too_large",
    "unreadable_file",
}
FUZZ = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def read(path: Path, fmt: str, **options) -> list[dict]:
    source = SourceConfig(name="s", format=fmt, paths=[str(path)], **({"id_field": "id"} if fmt == "jsonl" else {}))
    return list(read_file(InputFile("s", str(path), path.name), source, StorageOptions(), ReadConfig(**options)))


def assert_sound(rows: list[dict]) -> None:
    """Every row a document with text, or a read reject with a known reason and a one-line detail; all storable."""
    for row in rows:
        if row["reject_reason"] is None:
            assert isinstance(row["text"], str) and row["text"].strip()
        else:
            assert row["reject_reason"] in READ_REASONS and row["reject_stage"] == "read"
            assert row["reject_detail"] and "\n" not in row["reject_detail"]
    pa.Table.from_pylist(rows, schema=STREAM_SCHEMA)


@FUZZ
@given(
    data=st.binary(max_size=2048),
    fmt=st.sampled_from(["skypile", "wanjuan", "wudao", "jsonl"]),
    compress=st.booleans(),
)
def test_random_bytes_become_rejects(tmp_path, data, fmt, compress):
    path = tmp_path / ("part.json.gz" if compress else "part.json")
    path.write_bytes(gzip.compress(data)[: max(1, len(data) // 2)] if compress and data else data)
    assert_sound(read(path, fmt))


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(
            st.sampled_from(["text", "id", "content", "uniqueKey", "title", "x"]) | st.text(), inner, max_size=4
        )
    ),
    max_leaves=12,
)


@FUZZ
@given(records=st.lists(JSON, max_size=8), fmt=st.sampled_from(["skypile", "wanjuan", "wudao", "jsonl"]))
def test_any_json_becomes_a_document_or_a_reject(tmp_path, records, fmt):
    path = tmp_path / "part.json"
    path.write_bytes(json.dumps(records).encode() if fmt == "wudao" else jsonl(records))
    rows = read(path, fmt)
    assert_sound(rows)
    assert len(rows) == len(records) or any(r["reject_reason"] == "unreadable_file" for r in rows)


def test_a_100_mb_line_is_rejected_without_being_held(tmp_path):
    path = tmp_path / "huge.jsonl"
    line = b'{"text": "' + "长".encode() * (35 << 20) + b'"}\n'  # 110 MB
    with path.open("wb") as f:
        f.write(jsonl([{"text": ZH[0]}]))
        f.write(line)
        f.write(jsonl([{"text": ZH[1]}]))
    del line
    tracemalloc.start()
    rows = read(path, "skypile", max_record_bytes=1 << 20)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert [r["reject_reason"] for r in rows] == [None, "record_too_large", None]
    assert rows[1]["reject_detail"].endswith(
        f"line 2: a line of {len(path.read_bytes().splitlines(keepends=True)[1]):,} bytes, over read.max_record_bytes (1,048,576)"
    )
    assert len(rows[1]["text"]) <= 2000
    assert peak < 8 << 20, f"the reader held {peak:,} bytes"


def test_a_text_over_the_record_limit_in_any_format_is_rejected(tmp_path):
    path = tmp_path / "part.json"
    path.write_text(
        json.dumps(
            [{"uniqueKey": "big", "content": "长" * 400_000}, {"uniqueKey": "ok", "content": ZH[0]}],
            ensure_ascii=False,
        )
    )
    rows = read(path, "wudao", max_record_bytes=1 << 20)
    assert [(r["doc_id"], r["reject_reason"]) for r in rows] == [("big", "record_too_large"), ("ok", None)]


def test_deep_nesting_is_one_reject_and_the_file_goes_on(tmp_path):
    deep = "[" * 100_000 + "]" * 100_000
    lines = tmp_path / "deep.jsonl"
    lines.write_text(f'{{"text": {deep}}}\n{deep}\n{json.dumps({"text": ZH[0]}, ensure_ascii=False)}\n')
    assert [r["reject_reason"] for r in read(lines, "skypile")] == ["malformed_json", "malformed_json", None]
    array = tmp_path / "part-1.json"
    array.write_text(
        f'[{{"uniqueKey": "a", "content": "{ZH[0]}", "extra": {deep}}}, {{"uniqueKey": "b", "content": "{ZH[1]}"}}]'
    )
    rows = read(array, "wudao")
    assert [(r["doc_id"], r["reject_reason"]) for r in rows] == [("part-1.json:1", "malformed_record"), ("b", None)]
    assert rows[0]["reject_detail"].endswith("record 1: a record nested deeper than 64 levels")


def test_truncated_and_fake_gzip_keep_what_came_before(tmp_path):
    whole = gzip.compress(jsonl([{"text": f"{t}{i}"} for i, t in enumerate(ZH * 50)]))
    cut = tmp_path / "cut.jsonl.gz"
    cut.write_bytes(whole[: len(whole) // 2])
    rows = read(cut, "skypile")
    assert rows[-1]["reject_reason"] == "unreadable_file" and "EOFError" in rows[-1]["reject_detail"]
    assert 0 < len(rows) - 1 < 600 and all(r["reject_reason"] is None for r in rows[:-1])
    fake = tmp_path / "fake.jsonl.gz"
    fake.write_bytes(jsonl([{"text": ZH[0]}]))
    assert [r["reject_reason"] for r in read(fake, "skypile")] == ["unreadable_file"]


# --- text functions: anything in, a verdict out ------------------------------------------


PIECES = ["\x00", "\n", " ", "【好】", "【差】", "Score: 5", "得分：3", "啊", "作为", "新闻"]
TEXT = st.lists(st.text(max_size=40) | st.sampled_from(PIECES), max_size=30).map("".join)


@FUZZ
@given(text=TEXT)
def test_text_functions_never_raise(text):
    assert isinstance(normalize_text(text), str)
    assert Heuristics.build().verdict(text)[0] in {None, "repeated_unit", "repeated_lines", "whitespace_run"}
    label = LabelConfig(model="m", max_unit_repeats=5)
    assert instruction_verdict(as_written(text), label)[0] in {
        None,
        "empty_instruction",
        "instruction_keyword",
        "instruction_repetition",
    }
    instruction, reason = clean_instruction(text)
    assert isinstance(instruction, str) and reason in {None, "repeated_lines"}
    assert answer_verdict(text, PolishConfig(model="m"))[0] in {
        None,
        "answer_too_short",
        "answer_keyword",
        "answer_repetition",
    }
    assert parse_kun_verdict(text) in {None, 0.0, 1.0}
    rating = parse_rating(text)
    assert rating is None or 1 <= rating <= 5


@FUZZ
@given(logprobs=st.dictionaries(st.text(max_size=3), st.floats(max_value=0, allow_nan=False), max_size=6))
def test_expected_value_of_any_logprobs_is_a_score_or_none(logprobs):
    value = expected_value(logprobs, {"好": 1.0, "差": 0.0})
    assert value is None or (math.isfinite(value) and 0.0 <= value <= 1.0)


@pytest.mark.parametrize("char", ["啊", "a", "。", "😀", "\x00"])
def test_an_instruction_or_answer_of_one_repeated_character_is_rejected(char):
    repeats = LabelConfig(model="m", max_unit_repeats=5)
    assert instruction_verdict(as_written(char * 40), repeats)[0] == "instruction_repetition"
    assert answer_verdict(char * 200, PolishConfig(model="m"))[0] == "answer_repetition"


# --- the whole CPU pipeline on a hostile corpus -------------------------------------------------


def test_a_hostile_corpus_runs_to_the_end_with_every_record_accounted(ray_cluster, smoke_models, tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    rng = random.Random(7)
    (corpus / "random.jsonl").write_bytes(bytes(rng.randrange(256) for _ in range(50_000)))
    (corpus / "cut.jsonl.gz").write_bytes(gzip.compress(jsonl([{"text": t} for t in ZH]))[:200])
    with (corpus / "huge.jsonl").open("wb") as f:
        f.write(b'{"text": "' + b"x" * (100 << 20) + b'"}\n')
    deep = "[" * 50_000 + "]" * 50_000
    odd = [
        "前面\x00中间\x00后面，" + ZH[0],  # NUL bytes
        "مرحبا بالعالم، هذه جملة عربية طويلة بما يكفي لتمر من مرشح الطول.",  # Arabic
        "Привет, мир! Это достаточно длинное русское предложение для фильтра.",  # Cyrillic
        "😀🎉🚀✨" * 10,  # emoji
        "啊" * 60,  # one repeated character
        "   \t\n  ",  # whitespace only
    ]
    (corpus / "odd.jsonl").write_text(
        "\n".join([*(json.dumps({"text": t}, ensure_ascii=False) for t in odd), f'{{"text": {deep}}}']) + "\n"
    )
    config = parse_config(
        {
            "sources": [{"name": "web", "format": "skypile", "paths": [str(corpus)]}],
            "output": str(tmp_path / "run"),
            "read": {"max_record_bytes": 1 << 20},
            "length": {"min_chars": 10, "tokenizer": str(smoke_models["tokenizer"])},
        }
    )
    report = run(config)
    stages = report["stages"]
    for stage in stages:
        assert stage["in"] == stage["kept"] + stage["rejected"]
    read_reasons = stages[0]["rejected_by_reason"]
    assert (
        read_reasons["record_too_large"] == 1
        and read_reasons["empty_text"] == 1
        and read_reasons["malformed_json"] >= 2
    )
    assert read_reasons["unreadable_file"] == 1  # the cut gzip
    rejects = pads.dataset(str(tmp_path / "run" / "rejects"), format="parquet").to_table().to_pylist()
    documents = pads.dataset(str(tmp_path / "run" / "documents"), format="parquet").to_table().to_pylist()
    assert len(rejects) - sum(s["rejected"] for s in stages[1:]) + len(documents) == stages[0]["in"]
    by_text = {r["text"]: (r["stage"], r["reason"]) for r in rejects}
    assert by_text["啊" * 60] == ("heuristics", "repeated_unit"), by_text.get("啊" * 60)
    filtered = pads.dataset(str(tmp_path / "run" / "filtered"), format="parquet").to_table().to_pylist()
    assert "前面中间后面，" + ZH[0] in {r["text"] for r in filtered}  # normalize strips the NULs and it goes on
