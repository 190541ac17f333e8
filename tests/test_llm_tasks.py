"""The LLM tasks without a model: prompt builders and parsers against canned model outputs."""

from __future__ import annotations

import math

import pyarrow as pa
import pytest

from kun_ray.config import ConfigError
from kun_ray.io.export import alpaca_rows, messages_rows
from kun_ray.llm.label import LabelConfig, LabelTask, clean_instruction
from kun_ray.llm.polish import PolishConfig, PolishTask
from kun_ray.llm.score import ScoreConfig, ScoreTask, expected_value, parse_kun_verdict, parse_rating
from kun_ray.plan import parse_config

MODEL = {"model": "some/model"}
TEXT = "长江是中国第一长河，全长约六千三百公里，流经青藏高原、四川盆地，最后注入东海。"


# --- label -------------------------------------------------------------------------------


def test_kun_label_prompt_wraps_the_text_and_humpback_sends_it_alone():
    kun = LabelTask(LabelConfig(**MODEL, template="kun")).request({"text": TEXT})
    assert kun.messages == [{"role": "user", "content": "请直接告诉我，以下回复最有可能对应的指令是什么：\n" + TEXT}]
    humpback = LabelTask(LabelConfig(**MODEL, template="humpback")).request({"text": TEXT})
    assert humpback.messages == [{"role": "user", "content": TEXT}]


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("请介绍长江的概况。  \n", "请介绍长江的概况。"),
        ("请介绍长江的概况。     然后模型开始胡言乱语", "请介绍长江的概况。"),  # cut at 5+ whitespace
        ("请介绍长江。\n请介绍长江。\n它有多长？", "请介绍长江。\n它有多长？"),  # a duplicated line kept once
        ("Describe the Yangtze river.\t\t\t\t\tjunk", "Describe the Yangtze river."),
        ("   \n\n", ""),
    ],
)
def test_clean_instruction(raw, expected):
    assert clean_instruction(raw) == expected


def test_label_parse_rejects_keywords_repetition_and_empty():
    task = LabelTask(LabelConfig(**MODEL))
    assert task.parse({}, "请介绍长江的概况。", None).reason is None
    keyword = task.parse({}, "请根据以下新闻写一个摘要。", None)
    assert (keyword.reason, keyword.detail) == ("instruction_keyword", "contains '新闻'")
    assert keyword.columns == {"instruction": "请根据以下新闻写一个摘要。"}
    assert task.parse({}, "长江" + "哈" * 30, None).reason == "instruction_repetition"
    empty = task.parse({}, "        ", None)
    assert empty.reason == "empty_instruction" and empty.columns["instruction"] == ""


def test_label_keywords_are_configurable():
    task = LabelTask(LabelConfig(**MODEL, keywords=["长江"]))
    assert task.parse({}, "请根据以下新闻写一个摘要。", None).reason is None
    assert task.parse({}, "长江有多长？", None).reason == "instruction_keyword"


# --- score -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("answer", "score"),
    [
        ("【好】", 1.0),
        ("这条指令清晰明确，答：【好】", 1.0),
        ("【差】", 0.0),
        ("开始觉得【好】，再想想：【差】", 0.0),  # 差 anywhere: Kun is strict on good
        ("好", None),
        ("", None),
        ("The instruction is good.", None),
    ],
)
def test_parse_kun_verdict(answer, score):
    assert parse_kun_verdict(answer) == score


@pytest.mark.parametrize(
    ("answer", "score"),
    [
        ("The answer is helpful and complete.\nScore: 5", 5.0),
        ("Score: 3\nOn reflection it deserves more.\nScore: 4", 4.0),  # the last one counts
        ("score:4 and some trailing text afterwards", 4.0),
        ("**Score:** 2", 2.0),
        ("理由：回答完整。\n得分：5", 5.0),
        ("评分： 3", 3.0),
        ("Score: 4.5/5", 4.5),
        ("Score: 10", None),  # not on the 5-point scale
        ("Score: 0", None),
        ("I would rate it highly.", None),
        ("", None),
    ],
)
def test_parse_rating(answer, score):
    assert parse_rating(answer) == score


def test_score_modes_build_their_prompts():
    kun = ScoreTask(ScoreConfig(**MODEL)).request({"instruction": "长江有多长？", "text": TEXT})
    assert len(kun.messages) == 1 and kun.messages[0]["content"].endswith("-【长江有多长？】答：")
    assert "【好】的评判标准极为严格" in kun.messages[0]["content"] and TEXT not in kun.messages[0]["content"]
    pair = ScoreTask(ScoreConfig(**MODEL, mode="humpback_pair")).request({"instruction": "长江有多长？", "text": TEXT})
    content = pair.messages[0]["content"]
    assert 'write "Score: <rating>" in the last line' in content
    assert content.index("长江有多长？") < content.index(TEXT)


def test_score_verdicts_and_thresholds():
    kun = ScoreTask(ScoreConfig(**MODEL))
    assert kun.parse({}, "【好】", None).reason is None
    bad = kun.parse({}, "【差】", None)
    assert (bad.reason, bad.columns["score"], bad.columns["score_raw"]) == ("score_below_min", 0.0, "【差】")
    unparseable = kun.parse({}, "I cannot judge this.", None)
    assert unparseable.reason == "unparseable_score" and unparseable.detail == "I cannot judge this."
    assert unparseable.columns["score"] is None
    pair = ScoreTask(ScoreConfig(**MODEL, mode="humpback_pair"))
    assert pair.parse({}, "Score: 5", None).reason is None
    assert pair.parse({}, "Score: 4", None).reason == "score_below_min"  # default 5, as Humpback's A5
    a4 = ScoreTask(ScoreConfig(**MODEL, mode="humpback_pair", min_score=4))
    assert a4.parse({}, "Score: 4", None).reason is None


def test_logprob_scores_are_expected_values_over_the_choices():
    assert expected_value(
        {"好": math.log(0.6), "差": math.log(0.2), "x": math.log(0.2)}, {"好": 1.0, "差": 0.0}
    ) == pytest.approx(0.75)
    # " 5" reads as "5"; ratings weigh by probability
    rating = expected_value(
        {" 5": math.log(0.5), "4": math.log(0.25), "3": math.log(0.25)}, {str(n): float(n) for n in range(1, 6)}
    )
    assert rating == pytest.approx(4.25)
    assert expected_value({"x": -0.1}, {"好": 1.0, "差": 0.0}) is None
    assert expected_value({}, {"好": 1.0}) is None


def test_logprob_scoring_prefills_the_verdict_and_asks_one_token():
    task = ScoreTask(ScoreConfig(**MODEL, method="logprobs"))
    request = task.request({"instruction": "长江有多长？", "text": TEXT})
    assert request.messages[-1] == {"role": "assistant", "content": "【"}
    assert request.sampling["max_tokens"] == 1 and task.choices == ("好", "差")
    good = task.parse({}, "好", {"好": math.log(0.9), "差": math.log(0.1)})
    assert good.reason is None and good.columns["score"] == pytest.approx(0.9)
    assert task.parse({}, "差", {"好": math.log(0.3), "差": math.log(0.7)}).reason == "score_below_min"
    assert task.parse({}, "", None).reason == "unparseable_score"
    pair = ScoreTask(ScoreConfig(**MODEL, mode="humpback_pair", method="logprobs"))
    assert pair.request({"instruction": "q", "text": "a"}).messages[-1]["content"] == "Score:"
    assert pair.choices == ("1", "2", "3", "4", "5")


# --- polish ------------------------------------------------------------------------------


def test_polish_prompt_gives_the_text_then_the_instruction():
    request = PolishTask(PolishConfig(**MODEL)).request({"text": TEXT, "instruction": "长江有多长？"})
    content = request.messages[0]["content"]
    assert content.index(TEXT) < content.index("问题：长江有多长？")


def test_polish_answer_filters():
    task = PolishTask(PolishConfig(**MODEL))
    good = task.parse({}, "  长江全长约六千三百公里，是中国第一长河，最后注入东海。\n", None)
    assert good.reason is None and good.columns["answer"] == "长江全长约六千三百公里，是中国第一长河，最后注入东海。"
    assert task.parse({}, "作为一个人工智能模型，我认为长江全长约六千三百公里。", None).reason == "answer_keyword"
    assert task.parse({}, "抱歉，我无法回答这个问题，请换一个问题试试看吧。", None).reason == "answer_keyword"
    assert task.parse({}, "六千三百公里。", None).reason == "answer_too_short"
    assert task.parse({}, "长江很长" + "很长" * 20, None).reason == "answer_repetition"
    lenient = PolishTask(PolishConfig(**MODEL, keywords=[], min_answer_chars=0))
    assert lenient.parse({}, "作为", None).reason is None


# --- prompts are data --------------------------------------------------------------------


def test_prompt_files_override_the_shipped_templates(tmp_path):
    prompt = tmp_path / "label.txt"
    prompt.write_text("What instruction does this answer?\n{text}\n", encoding="utf-8")
    task = LabelTask(LabelConfig(**MODEL, prompt_file=str(prompt)))
    assert task.request({"text": "42"}).messages[0]["content"] == "What instruction does this answer?\n42"


def test_a_prompt_file_with_an_unknown_field_or_missing_is_a_config_error(tmp_path):
    prompt = tmp_path / "label.txt"
    prompt.write_text("{txt}", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"label.prompt_file: unknown template field\(s\) \['txt'\]"):
        LabelTask(LabelConfig(**MODEL, prompt_file=str(prompt)))
    with pytest.raises(ConfigError, match="prompt_file .*missing.txt: cannot read"):
        PolishTask(PolishConfig(**MODEL, prompt_file=str(tmp_path / "missing.txt")))


# --- config ------------------------------------------------------------------------------

BASE = {"sources": [{"name": "a", "format": "jsonl", "paths": ["x.jsonl"]}], "output": "out"}


def test_llm_stage_config_errors_are_one_line(tmp_path):
    with pytest.raises(ConfigError, match=r"^label.modle: unknown key \(did you mean 'model'\?\)"):
        parse_config({**BASE, "label": {"modle": "m"}}, tmp_path)
    with pytest.raises(ConfigError, match="^label: model is required when the stage is enabled"):
        parse_config({**BASE, "label": {"template": "kun"}}, tmp_path)
    with pytest.raises(ConfigError, match="score stage needs the label stage"):
        parse_config({**BASE, "score": {"model": "m"}}, tmp_path)
    with pytest.raises(ConfigError, match=r"^score.mode: Input should be 'kun_instruction' or 'humpback_pair'"):
        parse_config({**BASE, "label": {"model": "m"}, "score": {"model": "m", "mode": "pairs"}}, tmp_path)
    with pytest.raises(ConfigError, match=r"^label.concurrency: .*min <= max"):
        parse_config({**BASE, "label": {"model": "m", "concurrency": [4, 2]}}, tmp_path)


def test_x_keys_hold_yaml_anchors_and_local_models_resolve(tmp_path):
    (tmp_path / "models" / "chat").mkdir(parents=True)
    config = parse_config(
        {
            **BASE,
            "x-engine": {"batch_size": 8},
            "label": {"model": "models/chat", "batch_size": 8},
            "score": {"model": "Qwen/Qwen2.5-7B-Instruct"},
        },
        tmp_path,
    )
    assert config.label.model == str(tmp_path / "models" / "chat")
    assert config.score.model == "Qwen/Qwen2.5-7B-Instruct"  # a hub id stays one
    assert config.llm_stages() == ["label", "score"] and not config.polish.enabled


# --- export ------------------------------------------------------------------------------


def test_export_rows_in_alpaca_and_messages_form():
    final = pa.table({"instruction": ["长江有多长？"], "text": [TEXT], "answer": ["约六千三百公里。"]})
    assert alpaca_rows(final).to_pylist() == [
        {"instruction": "长江有多长？", "input": "", "output": "约六千三百公里。"}
    ]
    tagged = messages_rows(final, "Answer with knowledge from web search.").to_pylist()[0]["messages"]
    assert [m["role"] for m in tagged] == ["system", "user", "assistant"]
    assert (
        tagged[0]["content"] == "Answer with knowledge from web search." and tagged[2]["content"] == "约六千三百公里。"
    )
    untagged = messages_rows(final.drop_columns(["answer"]), None).to_pylist()[0]["messages"]
    assert untagged == [
        {"role": "user", "content": "长江有多长？"},
        {"role": "assistant", "content": TEXT},
    ]  # no polish: the text
