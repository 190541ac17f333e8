"""The LLM tasks without a model: prompt builders and parsers against canned model outputs."""

from __future__ import annotations

import math

import originals
import pyarrow as pa
import pytest
from hypothesis import given
from hypothesis import strategies as st

from kun_ray.config import ConfigError
from kun_ray.io.export import alpaca_rows, messages_rows
from kun_ray.llm.label import LabelConfig, LabelTask, as_written
from kun_ray.llm.polish import PolishConfig, PolishTask, clean_instruction
from kun_ray.llm.score import ScoreConfig, ScoreTask, expected_value, parse_kun_verdict, parse_rating
from kun_ray.plan import parse_config
from kun_ray.text import starts_repeating

MODEL = {"model": "some/model"}
TEXT = "长江是中国第一长河，全长约六千三百公里，流经青藏高原、四川盆地，最后注入东海。"


# --- label -------------------------------------------------------------------------------


def test_kun_label_prompt_wraps_the_text_and_humpback_sends_it_alone():
    kun = LabelTask(LabelConfig(**MODEL, template="kun")).request({"text": TEXT})
    assert kun.messages == [{"role": "user", "content": originals.KUN_LABEL_PROMPT + "\n" + TEXT}]
    humpback = LabelTask(LabelConfig(**MODEL, template="humpback")).request({"text": TEXT})
    assert humpback.messages == [{"role": "user", "content": TEXT}]


def test_label_parse_keeps_the_instruction_as_written_and_rejects_keywords_and_empty():
    task = LabelTask(LabelConfig(**MODEL))
    assert LabelConfig(**MODEL).keywords == originals.KUN_INSTRUCTION_KEYWORDS
    padded = task.parse({}, "请介绍长江。  \n\n请介绍长江。 \n", None)  # the scorer judges it as written
    assert padded.reason is None and padded.columns == {"instruction": "请介绍长江。  \n\n请介绍长江。"}
    keyword = task.parse({}, "请根据以下新闻写一个摘要。", None)
    assert (keyword.reason, keyword.detail) == ("instruction_keyword", "contains '新闻'")
    assert keyword.columns == {"instruction": "请根据以下新闻写一个摘要。"}
    assert task.parse({}, "长江" + "哈" * 30, None).reason is None  # Kun has no repetition filter here
    repeats = LabelTask(LabelConfig(**MODEL, max_unit_repeats=5))  # ours, when asked for
    assert repeats.parse({}, "长江" + "哈" * 30, None).reason == "instruction_repetition"
    empty = task.parse({}, "        ", None)
    assert empty.reason == "empty_instruction"


#: Kun's cleaning edge cases: (the label model's output, what Kun keeps: None for a dropped row).
KUN_CLEANING_CASES = [
    ("请介绍长江的概况。  \n", "请介绍长江的概况。"),
    ("请介绍长江的概况。     然后模型开始胡言乱语", "请介绍长江的概况。"),  # cut at 5+ whitespace
    ("Describe the Yangtze river.\t\t\t\t\tjunk", "Describe the Yangtze river."),
    ("请介绍长江。\n请介绍长江。\n它有多长？", "请介绍长江。"),  # only the repeated line, which starts it
    ("它有多长？\n请介绍长江。\n请介绍长江。", None),  # a repeated line that does not start it: dropped
    ("A\nA\nBB\nBB", None),  # the longest repeated line (BB) does not start it
    ("A\nA\n      junk", "A\nA"),  # cut first, then no line check
    ("什么是排他性许可？ \n \n   -> 什么是  \n     什么是  \n ", "什么是排他性许可？"),  # the rubric's examples
    ("什么是民窿？  \n\n什么是民窿？", "什么是民窿？"),
    ("教育具有哪些社会发展功能？\n \n \n \n \n \n \n教育具有哪些社会发展功能？", "教育具有哪些社会发展功能？"),
]


@pytest.mark.parametrize(("raw", "kept"), KUN_CLEANING_CASES)
def test_instruction_cleaning_is_kuns(raw, kept):
    assert originals.kun_instruction_cleaning(raw) == kept  # the cases say what the original does
    instruction, reason = clean_instruction(as_written(raw))
    assert (None if reason == "repeated_lines" else instruction) == kept


@given(st.text(alphabet=" \n\tAB长江", max_size=40))
def test_instruction_cleaning_agrees_with_kuns_on_any_text(raw):
    written = as_written(raw)
    if not written.strip() or written[:5].isspace():
        return  # Kun kept an empty instruction, and one opening with 5 spaces became empty: ours rejects or strips
    instruction, reason = clean_instruction(written)
    assert (None if reason == "repeated_lines" else instruction) == originals.kun_instruction_cleaning(raw)


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
    query = originals.KUN_SCORE_QUERY.format(instruction="长江有多长？")
    assert kun.messages == [{"role": "user", "content": originals.KUN_SCORE_RUBRIC + "\n" + query}]
    pair = ScoreTask(ScoreConfig(**MODEL, mode="humpback_pair")).request({"instruction": "长江有多长？", "text": TEXT})
    rated = originals.HUMPBACK_CURATION.strip().format(generated_instruction="长江有多长？", response=TEXT)
    assert pair.messages == [{"role": "user", "content": rated}]


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


def test_the_logprob_cut_is_the_papers_a5_on_the_expected_rating():
    rated = ScoreTask(ScoreConfig(**MODEL, mode="humpback_pair", method="logprobs"))
    assert rated.config.threshold() == 4.5  # A5: an expected rating >= 4.5
    high = rated.parse({}, "5", {"5": math.log(0.95), "4": math.log(0.05)})
    assert high.reason is None and high.columns["score"] == pytest.approx(4.95)
    assert rated.parse({}, "4", {"5": math.log(0.4), "4": math.log(0.6)}).reason == "score_below_min"  # 4.4
    a4 = ScoreTask(ScoreConfig(**MODEL, mode="humpback_pair", method="logprobs", min_score=4))
    assert a4.parse({}, "4", {"5": math.log(0.4), "4": math.log(0.6)}).reason is None
    kun = ScoreTask(ScoreConfig(**MODEL, method="logprobs"))
    assert (
        kun.config.threshold() == 0.5
        and kun.parse({}, "好", {"好": math.log(0.5), "差": math.log(0.5)}).reason is None
    )


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


class CharTokens:
    """A tokenizer of one token a character (Tokens), to count a prompt by hand."""

    def count(self, text: str) -> int:
        return len(text)

    def head(self, text: str, n: int) -> str:
        return text[:n]


def test_polish_prompt_is_kuns_text_then_instruction():
    request = PolishTask(PolishConfig(**MODEL)).request({"text": TEXT, "instruction": "长江有多长？"})
    message = originals.KUN_POLISH_MESSAGE.format(output=TEXT, truncated_instruction="长江有多长？")
    assert request.messages == [{"role": "user", "content": originals.KUN_POLISH_PREFIX + "\n" + message}]
    directive = PolishTask(PolishConfig(**MODEL, template="directive")).request({"text": TEXT, "instruction": "q"})
    assert "参考资料" in directive.messages[0]["content"]


def test_polish_cuts_the_instruction_not_the_text_to_fit_the_prompt():
    task = PolishTask(PolishConfig(**MODEL, max_prompt_tokens=60))
    frame = len("已知：\n" + TEXT + ",请回答:")  # the prompt without the instruction, one token a character
    instruction = "请详细介绍长江的长度、流经的地区以及它最后注入的海洋。"
    request = task.request({"text": TEXT, "instruction": instruction}, CharTokens())
    cut = instruction[: 60 - frame]
    assert request.updates == {"instruction": cut} and request.messages[0]["content"].endswith(",请回答:" + cut)
    assert TEXT in request.messages[0]["content"]  # the text whole
    short = task.request({"text": TEXT, "instruction": "长江有多长？"}, CharTokens())
    assert short.updates == {} and short.refused is None
    full = PolishTask(PolishConfig(**MODEL, max_prompt_tokens=frame)).request(
        {"text": TEXT, "instruction": instruction}, CharTokens()
    )
    assert full.refused is not None and full.refused[0] == "prompt_too_long"


def test_polish_answer_filters_are_kuns():
    task = PolishTask(PolishConfig(**MODEL))
    assert task.config.keywords == originals.KUN_ANSWER_KEYWORDS and task.config.sampling.max_tokens == 1024
    row = {"instruction": "长江有多长？"}
    good = task.parse(row, "  长江全长约六千三百公里，是中国第一长河，最后注入东海。\n", None)
    assert good.reason is None and good.columns["answer"] == "长江全长约六千三百公里，是中国第一长河，最后注入东海。"
    assert task.parse(row, "作为一个人工智能模型，我认为长江全长约六千三百公里。", None).reason == "answer_keyword"
    assert task.parse(row, "抱歉，我无法回答这个问题，请换一个问题试试看吧。", None).reason == "answer_keyword"
    assert task.parse(row, "六千三百公里。", None).reason == "answer_too_short"
    lenient = PolishTask(PolishConfig(**MODEL, keywords=[], min_answer_chars=0))
    assert lenient.parse(row, "作为", None).reason is None
    # the instruction is cleaned as Kun cleaned it after polishing
    dropped = task.parse(
        {"instruction": "它有多长？\n长江。\n长江。"}, "长江全长约六千三百公里，是中国第一长河。", None
    )
    assert dropped.reason == "repeated_lines"
    kept = task.parse({"instruction": "长江有多长？\n长江有多长？"}, "长江全长约六千三百公里，是中国第一长河。", None)
    assert kept.reason is None and kept.columns["instruction"] == "长江有多长？"


#: Kun's answer repetition edge cases: a unit of any length, 6 times, at the start only.
REPETITION_CASES = [
    "哈哈哈哈哈哈后面是正常的回答内容，足够长了吧。",
    "哈哈哈哈哈后面是正常的回答内容，足够长了吧。",
    "正常开头，然后" + "哈" * 20,
    "好的" * 6 + "，这里是一个足够长的回答。",
    "abcdefghijk" * 6 + " 12-char unit x6",
    "      前面有六个空格的回答，长度也足够二十个字符。",
    "1111112 是一个数字，这个回答足够长了。",
    "长江很长" + "很长" * 20,
    "------------\n标题\n------------ 一个足够长的回答",
]


@pytest.mark.parametrize("answer", REPETITION_CASES)
def test_answer_repetition_is_kuns(answer):
    found, unit = originals.detect_repetition_improved(answer)
    assert starts_repeating(answer, 6) == (unit if found else None)


@given(st.text(alphabet="ab\n 长", max_size=30))
def test_answer_repetition_agrees_with_kuns_on_any_text(answer):
    found, unit = originals.detect_repetition_improved(answer)
    assert starts_repeating(answer, 6) == (unit if found else None)


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
