"""Dedup against the truth: a corpus with near-duplicates planted at measured similarities
(tests/planted.py), deduplicated by a real run and by the final flow's instruction dedup, and
checked against the brute-force Jaccard of every pair."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.dataset as pads
import pytest
from corpus import jsonl
from planted import dedup_errors, planted_corpus, similar_pairs

from kun_ray.config.base import StorageOptions
from kun_ray.dedup.exact import ExactDedup, ExactDedupConfig
from kun_ray.dedup.near import NearDedup, NearDedupConfig
from kun_ray.io.records import STREAM_SCHEMA
from kun_ray.pipeline import run
from kun_ray.plan import parse_config
from kun_ray.stages.base import RunContext

THRESHOLD = 0.8
#: Only normalize and the two dedups: what is removed is removed as a duplicate.
DEDUP_ONLY = {"length": {"enabled": False}, "heuristics": {"enabled": False}}


def read_rows(folder) -> list[dict]:
    return pads.dataset(str(folder), format="parquet").to_table().to_pylist() if folder.exists() else []


def test_a_run_keeps_no_near_duplicate_and_removes_nothing_that_is_not_one(ray_cluster, tmp_path):
    texts = planted_corpus(seed=7, documents=2000)
    (tmp_path / "corpus").mkdir()
    (tmp_path / "corpus" / "web.jsonl").write_bytes(jsonl([{"id": f"d{i}", "text": t} for i, t in enumerate(texts)]))
    config = parse_config(
        {
            "sources": [{"name": "web", "format": "jsonl", "id_field": "id", "paths": [str(tmp_path / "corpus")]}],
            "output": str(tmp_path / "run"),
            **DEDUP_ONLY,
        }
    )
    report = run(config)

    out = tmp_path / "run"
    kept = {int(r["doc_id"][1:]) for r in read_rows(out / "clean")}
    rejects = read_rows(out / "rejects" / "exact_dedup") + read_rows(out / "rejects" / "near_dedup")
    assert len(kept) + len(rejects) == len(texts)  # every document kept or rejected as a duplicate
    assert {r["reason"] for r in rejects} == {"exact_duplicate", "near_duplicate"}

    pairs = similar_pairs(texts)
    assert sum(s >= THRESHOLD for s in pairs.values()) > 300  # the corpus plants enough on both sides
    assert sum(THRESHOLD - 0.1 <= s < THRESHOLD for s in pairs.values()) > 100
    kept_pairs, wrongly_removed = dedup_errors(texts, kept, pairs, THRESHOLD)
    assert kept_pairs == [] and wrongly_removed == []

    near = next(s for s in report["stages"] if s["stage"] == "near_dedup")
    lsh = near["lsh"]
    assert (lsh["bands"], lsh["rows_per_band"]) == (18, 5)
    assert lsh["verified"] >= lsh["duplicates"] == near["rejected"] > 0
    assert lsh["candidates"] == lsh["verified"] + lsh["rejected_candidates"] and lsh["rejected_candidates"] > 0
    assert json.loads((out / "report.json").read_text())["stages"][-1]["lsh"] == lsh


def instruction_rows(instructions: list[str]) -> pa.Table:
    rows = [{"doc_id": f"d{i}", "source": "sky", "text": "正文", "instruction": q} for i, q in enumerate(instructions)]
    return pa.Table.from_pylist(rows, schema=STREAM_SCHEMA.append(pa.field("instruction", pa.string())))


def instruction_dedup(rows: pa.Table, shuffled: bool = False, **near) -> tuple[list[dict], dict]:
    """The final flow's two instruction dedups over the rows; (rows out, the near dedup's LSH counts).
    `shuffled`: as over a big input, grouped by Ray Data shuffles and a join, not in one task."""
    import ray.data

    context = RunContext(StorageOptions(), ("sky",))
    exact = ExactDedup("instruction_exact_dedup", ExactDedupConfig(column="instruction"), context)
    stage = NearDedup("instruction_near_dedup", NearDedupConfig(column="instruction", **near), context)
    exact.rows = stage.rows = 10**6 if shuffled else rows.num_rows  # as a run of that size tells them
    out = stage.apply(exact.apply(ray.data.from_arrow(rows))).take_all()
    return out, stage.report()["lsh"]


@pytest.mark.parametrize(
    "seed, verify, shuffled", [(11, "jaccard", False), (12, "signature", True), (13, "jaccard", True)]
)
def test_the_instruction_near_dedup_against_the_truth(ray_cluster, seed, verify, shuffled):
    instructions = planted_corpus(seed=seed, documents=800, length=120)
    out, _ = instruction_dedup(instruction_rows(instructions), shuffled, verify=verify)
    assert len(out) == len(instructions)
    kept = {int(r["doc_id"][1:]) for r in out if r["reject_reason"] is None}
    assert {r["reject_reason"] for r in out} - {None} == {"exact_duplicate", "near_duplicate"}
    kept_pairs, wrongly_removed = dedup_errors(instructions, kept, similar_pairs(instructions), THRESHOLD)
    assert kept_pairs == [] and wrongly_removed == []


def test_a_candidate_just_under_the_threshold_is_not_a_duplicate(ray_cluster):
    from planted import CHARS, shingles

    base = "".join(CHARS[i * 7 % len(CHARS)] for i in range(200))
    under = base[:100] + "甲" + base[101:]  # one character changed: 5 of its 196 n-grams replaced
    alike = len(shingles(base, 5) & shingles(under, 5)) / len(shingles(base, 5) | shingles(under, 5))
    assert alike == pytest.approx(191 / 201)
    out, lsh = instruction_dedup(instruction_rows([base, under]), threshold=0.96)
    assert {r["doc_id"]: r["reject_reason"] for r in out} == {"d0": None, "d1": None}
    assert (lsh["candidates"], lsh["verified"], lsh["rejected_candidates"]) == (1, 0, 1)  # found, then refused
    out, lsh = instruction_dedup(instruction_rows([base, under]), threshold=0.94)
    assert {r["doc_id"]: r["reject_reason"] for r in out} == {"d0": None, "d1": "near_duplicate"}
    assert (lsh["candidates"], lsh["verified"]) == (1, 1)


def test_exact_dedup_removes_a_record_repeated_with_its_id_across_files_and_in_one(ray_cluster, tmp_path):
    """Real corpora repeat records, ids and all, across part files and dumps."""
    text, other = "长江是中国第一长河，全长约六千三百公里。", "黄河是中国第二长河，全长约五千四百公里。"
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "part-0.jsonl").write_bytes(jsonl([{"id": "u1", "text": text}, {"id": "u2", "text": other}]))
    (corpus / "part-1.jsonl").write_bytes(
        jsonl([{"id": "u1", "text": text}, {"id": "u2", "text": other}, {"id": "u2", "text": other}])
    )
    config = parse_config(
        {
            "sources": [{"name": "web", "format": "jsonl", "id_field": "id", "paths": [str(corpus)]}],
            "output": str(tmp_path / "run"),
            **DEDUP_ONLY,
        }
    )
    run(config)
    clean = read_rows(tmp_path / "run" / "clean")
    rejects = read_rows(tmp_path / "run" / "rejects" / "exact_dedup")
    assert sorted(r["text"] for r in clean) == sorted([text, other])  # one row per text
    assert {(r["shard"].rsplit("/", 1)[-1], r["record"]) for r in clean} == {("part-0.jsonl", 1), ("part-0.jsonl", 2)}
    assert sorted((r["doc_id"], r["reason"]) for r in rejects) == [
        ("u1", "exact_duplicate"),
        ("u2", "exact_duplicate"),
        ("u2", "exact_duplicate"),
    ]
    assert {r["detail"] for r in rejects} == {"duplicate of u1 (source web)", "duplicate of u2 (source web)"}


def test_the_instruction_dedups_tell_rows_apart_that_share_an_id(ray_cluster):
    rows = instruction_rows(["长江有多长？", "长江有多长？", "长江有多长呢？请详细回答一下这个问题吧谢谢"])
    rows = rows.set_column(0, "doc_id", pa.array(["same", "same", "same"]))
    rows = rows.set_column(rows.schema.get_field_index("shard"), "shard", pa.array(["a", "b", "a"]))
    rows = rows.set_column(rows.schema.get_field_index("record"), "record", pa.array([0, 0, 1], pa.int64()))
    out, _ = instruction_dedup(rows, threshold=0.3, ngram=2)
    reasons = sorted((r["shard"], r["record"], r["reject_reason"]) for r in out)
    assert reasons == [("a", 0, None), ("a", 1, None), ("b", 0, "exact_duplicate")]
