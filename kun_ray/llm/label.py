"""label: instruction backtranslation (output -> instruction), as Humpback and Kun do it.

Templates: `kun` wraps the text in Kun's label prompt ("请直接告诉我，以下回复最有可能对应的指令是什么：");
`humpback` sends the text alone, as Humpback's backward model was trained on (output, instruction)
pairs.  The generated instruction is kept as Kun's script/delete_key_input.py keeps it, its
trailing spaces and newlines stripped, and filtered as it filters: empty, or a keyword from
Kun's list (新闻, 材料, 图片, ...: instructions about a text the reader cannot see).  The scorer
judges it as written: Kun's rubric teaches that a padded or repeated instruction is 【差】.  Kun
cleans the instruction itself (whitespace runs, repeated lines) after polishing: polish.py.
A unit repeated `max_unit_repeats` times is an optional filter of ours, off by default.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import pyarrow as pa
from pydantic import Field

from kun_ray.config.base import since
from kun_ray.llm.prompts import check_fields, load_template, render
from kun_ray.llm.stage import LLMStage, LLMStageConfig, SamplingConfig
from kun_ray.llm.task import Parsed, Request, Tokens, clip, user
from kun_ray.text import first_keyword, repetition_detail

KUN_INSTRUCTION_KEYWORDS = [
    "新闻",
    "材料",
    "图片",
    "链接",
    "网址",
    "根据",
    "简历",
    "简介",
    "文章",
    "摘要",
    "文本",
    "提取",
    "关键词",
    "网站",
]


class LabelConfig(LLMStageConfig):
    """Instruction backtranslation: the label model writes the instruction a text answers."""

    #: kun: Kun's label prompt in the chat template; humpback: the text alone as the user turn.
    template: Literal["kun", "humpback"] = "kun"
    keywords: list[str] = Field(default_factory=lambda: list(KUN_INSTRUCTION_KEYWORDS))
    max_unit_chars: int = Field(default=10, gt=0)
    #: Reject an instruction with a unit of up to max_unit_chars repeated more than this many
    #: times in a row (not in Kun's scripts: off by default).
    max_unit_repeats: int | None = since("0.3", None, gt=0)
    #: Kun's infer_label.sh passes --max_token 1024.
    sampling: SamplingConfig = SamplingConfig(max_tokens=1024)


def as_written(generated: str) -> str:
    """The instruction as Kun keeps it (delete_key_input.py:5-13): trailing spaces and newlines stripped."""
    return generated.rstrip(" \n")


def instruction_verdict(instruction: str, config: LabelConfig) -> tuple[str | None, str | None]:
    if not instruction.strip():
        return "empty_instruction", "the label model wrote no instruction"
    if keyword := first_keyword(instruction, config.keywords):
        return "instruction_keyword", f"contains {keyword!r}"
    if config.max_unit_repeats is not None and (
        detail := repetition_detail(instruction, config.max_unit_chars, config.max_unit_repeats)
    ):
        return "instruction_repetition", detail
    return None, None


class LabelTask:
    columns = {"instruction": "string"}
    choices: tuple[str, ...] = ()
    reasons = frozenset({"empty_instruction", "instruction_keyword", "instruction_repetition"})

    def __init__(self, config: LabelConfig):
        self.config = config
        self.template = load_template(f"label_{config.template}", config.prompt_file)
        check_fields(self.template, {"text"}, "label.prompt_file")

    def request(self, row: Mapping[str, Any], tokens: Tokens | None = None) -> Request:
        return Request(user(render(self.template, text=row["text"])))

    def parse(self, row: Mapping[str, Any], generated: str, top_logprobs: dict[str, float] | None) -> Parsed:
        instruction = as_written(generated)
        reason, detail = instruction_verdict(instruction, self.config)
        if reason == "empty_instruction":
            detail = f"{detail}: {clip(generated)!r}"
        return Parsed({"instruction": instruction}, reason, detail)


class Label(LLMStage):
    type = "label"
    config_model = LabelConfig
    task_class = LabelTask
    reads = {"text": pa.large_string()}
