"""The cleaning stages: keep/drop decisions on hand-made Chinese text, KenLM against hand-computed
values, dedup across sources, and the accounting of a whole run through every stage."""

from __future__ import annotations

import json
import math

import pyarrow as pa
import pyarrow.dataset as pads
import pytest
from corpus import ZH, jsonl

from kun_ray.clean.heuristics import Heuristics, repeated_line_fraction
from kun_ray.clean.length import Length, LengthConfig, length_verdict
from kun_ray.clean.normalize import normalize_text
from kun_ray.clean.perplexity import PerplexityScorer, ccnet_normalize, quantile_cut
from kun_ray.clean.segment import Segment, segment_batch, segments
from kun_ray.config import ConfigError, StorageOptions
from kun_ray.dedup.near import (
    NearDedupConfig,
    band_keys,
    detection,
    first_keepers,
    jaccard,
    lsh_bands,
    shingle_hashes,
    shingle_sets,
)
from kun_ray.io.records import SPLIT_COLUMN, STREAM_SCHEMA
from kun_ray.pipeline import run
from kun_ray.plan import parse_config
from kun_ray.smoke_models import build_sentencepiece
from kun_ray.stages.base import Verdicts, on_live_rows

LONG = "".join(ZH)  # about 330 characters of ordinary Chinese


# --- normalize ---------------------------------------------------------------------------


def test_normalize_strips_controls_and_collapses_whitespace():
    raw = "\ufeff长江\u200b是中国\x00第一长河。\r\n\r\n\r\n\t全长　　约 六千三百公里。  \n\n\n\n注入东海\x07"
    assert normalize_text(raw) == "长江是中国第一长河。\n\n\t全长 约 六千三百公里。\n\n注入东海"


def test_normalize_keeps_indentation_and_line_structure():
    code = "def f(x):\n    if x:\n\t\treturn [1,  2]\n\n- 一\n  - 二\n    - 三"
    assert normalize_text(code) == "def f(x):\n    if x:\n\t\treturn [1, 2]\n\n- 一\n  - 二\n    - 三"
    assert normalize_text("  \n\n    缩进的第一行  \n  \n \n\n第二段\t \n") == "    缩进的第一行\n\n第二段"
    assert (
        normalize_text("\u3000\u3000段落首行缩进。\n\u00a0下一行") == "段落首行缩进。\n下一行"
    )  # typography, not structure
    assert normalize_text(" \t \n\u3000\n") == ""


def test_normalize_keeps_whitespace_when_told_and_nfkc_is_optional():
    assert normalize_text("Ａ１，  b", collapse_whitespace=False) == "Ａ１，  b"
    assert normalize_text("Ａ１，  b", nfkc=True) == "A1, b"


# --- length ------------------------------------------------------------------------------


def test_length_verdicts():
    config = LengthConfig(min_chars=10, max_chars=100, max_tokens=50)
    assert length_verdict(5, 3, config) == ("too_short", "5 characters < 10")
    assert length_verdict(101, 30, config) == ("too_long", "101 characters > 100")
    assert length_verdict(60, 51, config) == ("too_long", "51 tokens > 50")
    assert length_verdict(60, 50, config) == (None, None)
    assert length_verdict(60, None, config) == (None, None)


def test_length_counts_tokens_with_the_tokenizer(smoke_models):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(smoke_models["tokenizer"]))
    long_text = "我今天学习了" + "，".join(f"第{i}课的内容" for i in range(200))  # an unseen mix: many tokens
    n_long = len(tokenizer(long_text, add_special_tokens=False)["input_ids"])
    assert n_long > 600
    stage = Length.build(min_chars=5, max_tokens=512, tokenizer=str(smoke_models["tokenizer"]))
    stage.load()
    verdicts = stage.keep_or_reject(stream_rows([ZH[0], long_text, "太短"]))
    assert verdicts.reasons == [None, "too_long", "too_short"]
    assert verdicts.details[1] == f"{n_long} tokens > 512"
    assert verdicts.rows["n_chars"].to_pylist() == [len(ZH[0]), len(long_text), 2]
    assert verdicts.rows["n_tokens"].to_pylist()[1] == n_long


# --- perplexity --------------------------------------------------------------------------


def test_ccnet_normalization_of_chinese_punctuation_and_digits():
    assert ccnet_normalize("  ２０２３年，ＡＢＣ说：“你好！”（测试）。 ") == '0000年,ａｂｃ说:"你好!"(测试).'
    assert ccnet_normalize("Café 12\x07") == "cafe 00"


def write_arpa(path, unigrams: dict[str, float], bigrams: dict[str, float] | None = None):
    """A tiny ARPA model written by hand: unigram log10 probs (backoff 0) and a few bigrams."""
    bigrams = bigrams or {"<s> </s>": -1.0}
    one = "\n".join(f"{p}\t{w}\t0" for w, p in unigrams.items())
    two = "\n".join(f"{p}\t{w}" for w, p in bigrams.items())
    path.write_text(
        f"\\data\\\nngram 1={len(unigrams)}\nngram 2={len(bigrams)}\n\n\\1-grams:\n{one}\n\n\\2-grams:\n{two}\n\n\\end\\\n"
    )
    return path


@pytest.fixture(scope="module")
def sentencepiece_model(tmp_path_factory):
    lines = [ccnet_normalize(t) for t in ZH]
    return build_sentencepiece(lines, tmp_path_factory.mktemp("sp") / "zh.sp.model")


def test_perplexity_is_ten_when_every_piece_costs_one_decade(tmp_path, sentencepiece_model):
    arpa = write_arpa(tmp_path / "flat.arpa", {"<unk>": -1.0, "<s>": -99, "</s>": -1.0})
    scorer = PerplexityScorer(str(arpa), str(sentencepiece_model), StorageOptions())
    assert scorer.perplexity(ZH[1]) == pytest.approx(10.0)
    assert scorer.perplexity(ZH[1] + "\n\n" + ZH[2]) == pytest.approx(10.0)


def test_perplexity_aggregates_lines_over_pieces_plus_one(tmp_path, sentencepiece_model):
    import sentencepiece

    sp = sentencepiece.SentencePieceProcessor(model_file=str(sentencepiece_model))
    line1, line2 = ZH[1], ZH[4]
    n1 = len(sp.encode(ccnet_normalize(line1), out_type=str))
    n2 = len(sp.encode(ccnet_normalize(line2), out_type=str))
    # every piece is <unk> at 10^-1, each line's end </s> at 10^-0.5, and "<s> </s>" never fires.
    arpa = write_arpa(tmp_path / "m.arpa", {"<unk>": -1.0, "<s>": -99, "</s>": -0.5})
    scorer = PerplexityScorer(str(arpa), str(sentencepiece_model), StorageOptions())
    assert scorer.perplexity(line1) == pytest.approx(10 ** ((n1 + 0.5) / (n1 + 1)))
    # one document: the log scores and the lengths are summed over lines, not the perplexities averaged
    assert scorer.perplexity(f"{line1}\n{line2}") == pytest.approx(10 ** ((n1 + n2 + 1.0) / (n1 + n2 + 2)))


def test_smoke_kenlm_model_prefers_chinese_it_has_seen(smoke_models):
    scorer = PerplexityScorer(
        str(smoke_models["kenlm_model"]), str(smoke_models["sentencepiece_model"]), StorageOptions()
    )
    assert scorer.perplexity(ZH[3]) * 5 < scorer.perplexity("qzx vbn 乱码乱码 wlk mmpq")


def test_quantile_cut():
    assert quantile_cut([5.0, 1.0, 3.0, 2.0, 4.0, math.inf], 0.6) == 3.0
    assert quantile_cut([7.0], 0.1) == 7.0


# --- heuristics --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, reason",
    [
        (ZH[0] + "哈" * 11, "repeated_unit"),
        (ZH[0] + "哈" * 10, None),
        (ZH[0] + "我爱你" * 11, "repeated_unit"),
        (ZH[0] + "\n" + "\n".join(["点击这里下载"] * 6), "repeated_lines"),
        (ZH[0] + "\n" + ZH[1] + "\n" + ZH[0], "repeated_lines"),
        (ZH[0] + " " * 11 + ZH[1], "whitespace_run"),
        (ZH[0] + "\n" + ZH[1], None),
    ],
    ids=[
        "char-run",
        "char-run-at-limit",
        "phrase-loop",
        "boilerplate-lines",
        "a-paragraph-twice",
        "whitespace",
        "clean",
    ],
)
def test_heuristics(text, reason):
    assert (
        Heuristics.build(max_unit_repeats=10, max_repeated_line_fraction=0.3, max_whitespace_run=10).verdict(text)[0]
        == reason
    )


def test_repeated_line_fraction():
    assert repeated_line_fraction("ab\nab\ncdef") == pytest.approx(4 / 8)
    assert repeated_line_fraction("") == 0.0


# --- the live-row mechanism --------------------------------------------------------------


def stream_rows(texts, rejected=()):
    rows = [
        {"doc_id": str(i), "source": "s", "text": t, "title": None, "meta": None, "reject_stage": "read" if i in rejected else None,
         "reject_reason": "x" if i in rejected else None, "reject_detail": None}
        for i, t in enumerate(texts)
    ]  # fmt: skip
    return pa.Table.from_pylist(rows, schema=STREAM_SCHEMA)


def test_stages_leave_rows_rejected_earlier_alone():
    seen = []

    def reject_all(rows):
        seen.extend(rows["doc_id"].to_pylist())
        return Verdicts(
            rows.append_column("n", pa.array([1] * rows.num_rows, pa.int64())),
            ["r"] * rows.num_rows,
            ["d"] * rows.num_rows,
        )

    out = on_live_rows(stream_rows(["a", "b", "c"], rejected={1}), "st", reject_all)
    assert seen == ["0", "2"]
    by_id = {r["doc_id"]: r for r in out.to_pylist()}
    assert (by_id["0"]["reject_stage"], by_id["0"]["reject_reason"], by_id["0"]["n"]) == ("st", "r", 1)
    assert (by_id["1"]["reject_stage"], by_id["1"]["reject_reason"], by_id["1"]["n"]) == ("read", "x", None)
    assert on_live_rows(stream_rows(["a"], rejected={0}), "st", reject_all).schema.names[-1] == "n", (
        "a batch with no live row keeps the schema"
    )


# --- segment ------------------------------------------------------------------------------


def test_segments_pack_paragraphs_into_the_band_and_keep_the_text_as_written():
    para = [ZH[i] + ZH[i + 1] for i in range(0, 12, 2)]  # six paragraphs of 50-70 characters
    text = "\n\n".join(para)
    found = segments(text, 100, 140)
    assert found and all(100 <= len(s) <= 140 for s in found)
    assert all(s in text for s in found), "a segment is a stretch of the text as written"
    assert found[0] == para[0] + "\n\n" + para[1]
    assert segments(text, 100, 140, max_segments=1) == found[:1]
    assert segments(para[0], 100, 140) == [], "nothing in the band"
    assert segments(para[0], 20, 50) == [], "a paragraph over the band splits at its lines, and a line cannot"


def test_a_heading_starts_a_segment_once_the_one_before_is_long_enough():
    body, other = ZH[0] + ZH[1], ZH[2] + ZH[3]
    text = f"# 一\n{body}\n\n## 二\n{other}\n\n{ZH[4]}"
    assert segments(text, 40, 400) == [f"# 一\n{body}", f"## 二\n{other}\n\n{ZH[4]}"]
    assert segments(text, 40, 400)[0].startswith("# 一")
    assert segments("第一章 开始\n" + body + "\n第二章 结束\n" + other, 40, 400)[1].startswith("第二章")
    assert len(text) < 300 and segments(text, 150, 400) == [text], (
        "a heading does not split a segment still under the band"
    )


def test_a_line_too_long_for_the_band_ends_the_segment_before_it():
    long_line = "长" * 300
    text = f"{ZH[0]}\n\n{ZH[1]}\n\n{long_line}\n\n{ZH[2]}\n\n{ZH[3]}"
    assert segments(text, 40, 120) == [f"{ZH[0]}\n\n{ZH[1]}", f"{ZH[2]}\n\n{ZH[3]}"]


def test_segment_rows_carry_derived_ids_and_a_document_with_none_is_one_reject():
    para = "\n\n".join(ZH[i] + ZH[i + 1] for i in range(0, 12, 2))
    stage = Segment.build(min_chars=100, max_chars=140)
    out = segment_batch(stream_rows([para, ZH[0], ZH[1]], rejected={2}), stage)
    rows = out.to_pylist()
    made = [r for r in rows if r["segment_of"] == "0"]
    assert [r["doc_id"] for r in made] == [f"0#{k}" for k in range(len(made))] and len(made) >= 2
    assert [r["segment"] for r in made] == list(range(len(made)))
    assert [r["text"] for r in made] == segments(para, 100, 140)
    assert [r[SPLIT_COLUMN] for r in made] == [None] + ["segment"] * (len(made) - 1)
    by_id = {r["doc_id"]: r for r in rows if r["segment_of"] is None}
    assert (by_id["1"]["reject_stage"], by_id["1"]["reject_reason"]) == ("segment", "no_segment")
    assert "100-140 characters" in by_id["1"]["reject_detail"]
    assert (by_id["2"]["reject_stage"], by_id["2"]["reject_reason"]) == ("read", "x"), "passed through"
    assert len(rows) == len(made) + 2


# --- near dedup --------------------------------------------------------------------------


def test_lsh_bands_find_a_pair_at_the_threshold_with_the_recall_asked():
    for threshold, recall in [(0.8, 0.999), (0.7, 0.999), (0.9, 0.99), (0.5, 0.9999)]:
        bands, rows = lsh_bands(threshold, 128, recall)
        assert bands * rows <= 128 and detection(threshold, bands, rows) >= recall
        # the fewest bands of that width that reach the recall
        assert detection(threshold, bands - 1, rows) < recall
    assert lsh_bands(0.8, 128) == (18, 5)  # the default: a pair at 0.8 is found 99.92% of the time
    assert detection(0.85, 18, 5) > 0.9999 and detection(0.5, 18, 5) < 0.5


def test_near_duplicates_share_a_band_and_distinct_texts_do_not():
    config = NearDedupConfig()
    one_word_changed = LONG.replace("阳光", "月光", 1)
    a, b = (set(shingle_hashes([text], 5)[0].tolist()) for text in (LONG, one_word_changed))
    assert len(a) == len(LONG) - 4 and len(a & b) / len(a | b) > 0.9  # one hash per distinct 5-gram
    assert set(band_keys(LONG, config)) == set(band_keys(LONG, config))
    assert set(band_keys(LONG, config)) & set(band_keys(one_word_changed, config))
    assert not set(band_keys(LONG, config)) & set(band_keys(ZH[2] * 3, config))


def test_jaccard_of_the_character_ngram_sets():
    x, y = shingle_sets(["abcdefg", "abcdxyz"], 3)
    # abc bcd cde def efg / abc bcd cdx dxy xyz: 2 shared of 8
    assert jaccard(x, y) == pytest.approx(2 / 8) and jaccard(x, x) == 1.0


def test_first_keepers_remove_nothing_for_being_like_a_removed_document():
    # a~b and b~c but not a~c: a is kept, b is a's duplicate, c is kept (only like b, which went)
    assert first_keepers([("b", "a"), ("c", "b")]) == {"b": "a"}
    # a star: every other member is like a
    assert first_keepers([("b", "a"), ("c", "a"), ("d", "a")]) == {"b": "a", "c": "a", "d": "a"}
    # d is like b (removed) and c (kept): it is c's duplicate; e~f apart
    assert first_keepers([("b", "a"), ("d", "b"), ("d", "c"), ("f", "e")]) == {"b": "a", "d": "c", "f": "e"}


# --- config --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "section, message",
    [
        (
            {"perplexity": {"enabled": True, "keep_fraction": 0.9}},
            "perplexity: kenlm_model is required when the perplexity stage is enabled",
        ),
        (
            {
                "perplexity": {
                    "enabled": True,
                    "kenlm_model": "a",
                    "sentencepiece_model": "b",
                    "max_ppl": 9,
                    "keep_fraction": 0.5,
                }
            },
            "perplexity: set exactly one of max_ppl and keep_fraction",
        ),
        ({"near_dedup": {"threshold": 1.5}}, "near_dedup.threshold: Input should be less than 1"),
        ({"length": {"max_token": 5}}, "length.max_token: unknown key (did you mean 'max_tokens'?)"),
        ({"segment": {"min_chars": 500, "max_chars": 400}}, "segment: min_chars (500) is above max_chars (400)"),
    ],
)
def test_stage_config_errors(section, message):
    with pytest.raises(ConfigError) as error:
        parse_config({"sources": [{"name": "s", "format": "skypile", "paths": ["x"]}], "output": "o", **section})
    assert str(error.value) == message


# --- the whole cleaning pipeline on Ray ------------------------------------------------------


@pytest.fixture(scope="module")
def clean_run(ray_cluster, smoke_models, tmp_path_factory):
    root = tmp_path_factory.mktemp("clean-corpus")
    near = LONG.replace("阳光", "月光", 1)
    first = [
        {"text": LONG},                                  # 1 kept: first of its exact and near groups
        {"text": "太短了"},                               # 2 too_short
        {"text": "我爱你" * 30 + ZH[0]},                   # 3 repeated_unit
        {"text": near},                                  # 4 near_duplicate of 1
        {"text": ZH[5] + "\x00\u200b"},                   # 5 kept after normalize
        {"text": "。".join(f"第{i}课的内容" for i in range(200))},  # 6 too_long (> 512 tokens)
        {"text": "qzx vbn wlk mmpq xkcd zzyv " * 3},       # 7 ppl_above_max
    ]  # fmt: skip
    (root / "a").mkdir()
    (root / "a/part.jsonl").write_bytes(jsonl(first))
    second = [
        {"id": "w1", "content": LONG},
        {"id": "w2", "content": ZH[6] + "。" + ZH[7]},
        {"id": "w3", "content": " \u3000 "},
    ]
    (root / "b").mkdir()
    (root / "b/part.jsonl").write_bytes(jsonl(second))
    config = parse_config(
        {
            "sources": [
                {"name": "sky", "format": "skypile", "paths": [str(root / "a")]},
                {"name": "wan", "format": "wanjuan", "paths": [str(root / "b")]},
            ],
            "output": str(tmp_path_factory.mktemp("clean-run")),
            "length": {"min_chars": 10, "max_tokens": 512, "tokenizer": str(smoke_models["tokenizer"])},
            "perplexity": {
                "enabled": True,
                "kenlm_model": str(smoke_models["kenlm_model"]),
                "sentencepiece_model": str(smoke_models["sentencepiece_model"]),
                "max_ppl": 200,
            },
        }
    )
    report = run(config)
    out = config.output.path
    rejects = pads.dataset(f"{out}/rejects", format="parquet").to_table().to_pylist()
    clean = pads.dataset(f"{out}/clean", format="parquet").to_table().to_pylist()
    return report, clean, rejects


def test_each_stage_drops_what_it_should(clean_run):
    report, clean, rejects = clean_run
    outcome = {(r["source"], r["doc_id"]): (r["stage"], r["reason"]) for r in rejects}
    outcome.update({(r["source"], r["doc_id"]): None for r in clean})
    assert outcome == {
        ("sky", "part.jsonl:1"): None,
        ("sky", "part.jsonl:2"): ("length", "too_short"),
        ("sky", "part.jsonl:3"): ("heuristics", "repeated_unit"),
        ("sky", "part.jsonl:4"): ("near_dedup", "near_duplicate"),
        ("sky", "part.jsonl:5"): None,
        ("sky", "part.jsonl:6"): ("length", "too_long"),
        ("sky", "part.jsonl:7"): ("perplexity", "ppl_above_max"),
        ("wan", "w1"): ("exact_dedup", "exact_duplicate"),
        ("wan", "w2"): None,
        ("wan", "w3"): ("read", "empty_text"),
    }


def test_dedup_details_name_the_kept_document(clean_run):
    _, _, rejects = clean_run
    details = {r["doc_id"]: r["detail"] for r in rejects if r["stage"] in ("exact_dedup", "near_dedup")}
    assert details == {
        "w1": "duplicate of part.jsonl:1 (source sky)",
        "part.jsonl:4": "duplicate of part.jsonl:1 (source sky)",
    }


def test_clean_rows_carry_every_stage_column(clean_run):
    _, clean, _ = clean_run
    row = next(r for r in clean if r["doc_id"] == "part.jsonl:5")
    assert row["text"] == ZH[5]
    assert row["n_chars"] == len(ZH[5]) and row["n_tokens"] > 0 and 0 < row["ppl"] < 200
    assert set(row) == {"doc_id", "source", "shard", "record", "text", "title", "meta", "n_chars", "n_tokens", "ppl"}
    assert row["record"] == 5  # its line in part.jsonl, as in its doc_id


def test_clean_accounting_and_the_cut_in_the_report(clean_run):
    report, clean, rejects = clean_run
    assert report["stages"][0]["in"] == len(clean) + len(rejects) == 10
    for before, after in zip(report["stages"], report["stages"][1:]):
        assert after["in"] == before["kept"]
        assert after["in"] == after["kept"] + after["rejected"]
    perplexity = next(s for s in report["stages"] if s["stage"] == "perplexity")
    assert perplexity["cut"] == {"max_ppl": 200, "by": "max_ppl"}
    json.dumps(report)


def test_a_segmenting_run_splits_documents_and_loses_none(ray_cluster, tmp_path):
    """Segment in the filter flow, the filters after it and dedup over the segments: every
    document ends as its segments (kept or rejected each) or as one reject; a segment that
    repeats another document's is an exact duplicate; the funnel counts the rows segment made;
    the shards commit (a miscount would stop the run) and a rerun redoes nothing."""
    from kun_ray.query import Run

    paragraphs = [ZH[i] + ZH[i + 1] for i in range(0, 12, 2)]
    docs = {
        "a": "\n\n".join(paragraphs),
        "b": "\n\n".join(paragraphs[:2]),  # a's first segment again
        "c": ZH[11],  # too short for the band
        "d": "\u200b\u200b",  # empty after normalize: rejected before segment
    }
    (tmp_path / "in").mkdir()
    (tmp_path / "in/part.jsonl").write_bytes(jsonl([{"id": k, "content": v} for k, v in docs.items()]))
    config = {
        "sources": [{"name": "web", "format": "wanjuan", "paths": [str(tmp_path / "in")]}],
        "output": str(tmp_path / "run"),
        "segment": {"min_chars": 100, "max_chars": 140},
        "length": {"max_tokens": None},
    }
    report = run(parse_config(config))
    out = tmp_path / "run"
    filtered = pads.dataset(str(out / "filtered"), format="parquet").to_table().to_pylist()
    rejects = pads.dataset(str(out / "rejects"), format="parquet").to_table().to_pylist()
    expected = {doc: segments(normalize_text(text), 100, 140) for doc, text in docs.items()}
    assert len(expected["a"]) >= 2 and expected["b"] == expected["a"][:1] and not expected["c"]
    rows = {r["doc_id"]: r for r in filtered} | {r["doc_id"]: r for r in rejects if r["stage"] != "exact_dedup"}
    for doc, made in expected.items():
        if made:
            assert [rows[f"{doc}#{k}"]["text"] for k in range(len(made))] == made
            assert doc not in rows
        else:
            assert rows[doc]["reason"] == ("no_segment" if doc == "c" else "empty_after_normalize")
    assert len(rows) == sum(len(made) or 1 for made in expected.values()), "no row lost or made up"
    assert {r["segment_of"] for r in filtered} == {"a", "b"} and SPLIT_COLUMN not in filtered[0]
    clean = pads.dataset(str(out / "clean"), format="parquet").to_table().to_pylist()
    assert sorted(r["doc_id"] for r in clean) == [f"a#{k}" for k in range(len(expected["a"]))]
    duplicate = next(r for r in rejects if r["stage"] == "exact_dedup")
    assert duplicate["doc_id"] == "b#0" and "a#0" in duplicate["detail"]

    stages = {s["stage"]: s for s in report["stages"]}
    made = len(expected["a"]) + len(expected["b"]) - 2
    assert (stages["segment"]["in"], stages["segment"]["made"]) == (3, made)
    assert stages["segment"]["rejected_by_reason"] == {"no_segment": 1}
    assert stages["segment"]["kept"] == len(filtered) == stages["length"]["in"]
    trace = Run.open(out).trace("a")
    assert trace.steps[-1].added == {"split into": ", ".join(f"a#{k}" for k in range(len(expected["a"])))}
    live = next(s for s in Run.open(out).funnel() if s["stage"] == "segment")  # counted from the commits
    assert [live[k] for k in ("in", "made", "kept")] == [stages["segment"][k] for k in ("in", "made", "kept")]
    again = run(parse_config(config))
    assert all(flow["rows"] == 0 and flow["shards_resumed"] == flow["shards"] for flow in again["flows"].values())
    assert again["stages"] == report["stages"]
