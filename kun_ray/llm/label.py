"""label: instruction backtranslation (output -> instruction), as Humpback and Kun do it.

Templates: `kun` wraps the text in Kun's label prompt ("请直接告诉我，以下回复最有可能对应的指令是什么：");
`humpback` sends the text alone, as Humpback's backward model was trained on (output, instruction)
pairs.  The generated instruction is cleaned as Kun's scripts do, then filtered: empty, a
keyword from Kun's list (新闻, 材料, 图片, ...: instructions about a text the reader cannot see),
or runaway repetition.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Literal

import pyarrow as pa
from pydantic import Field

from kun_ray.llm.prompts import check_fields, load_template, render
from kun_ray.llm.stage import LLMStage, LLMStageConfig
from kun_ray.llm.task import Parsed, Request, clip, user
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
    max_unit_repeats: int = Field(default=5, gt=0)


WHITESPACE_RUN = re.compile(r"\s{5,}")


def clean_instruction(raw: str) -> str:
    """Cut at a run of 5+ whitespace characters, keep a repeated line once, strip the ends."""
    text = WHITESPACE_RUN.split(raw.strip(), maxsplit=1)[0]
    lines: list[str] = []
    for line in text.split("\n"):
        line = line.rstrip()
        if line.strip() and line not in lines:
            lines.append(line)
    return "\n".join(lines).strip()


def instruction_verdict(instruction: str, config: LabelConfig) -> tuple[str | None, str | None]:
    if not instruction:
        return "empty_instruction", "the label model wrote no instruction"
    if keyword := first_keyword(instruction, config.keywords):
        return "instruction_keyword", f"contains {keyword!r}"
    if detail := repetition_detail(instruction, config.max_unit_chars, config.max_unit_repeats):
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

    def request(self, row: Mapping[str, Any]) -> Request:
        return Request(user(render(self.template, text=row["text"])))

    def parse(self, row: Mapping[str, Any], generated: str, top_logprobs: dict[str, float] | None) -> Parsed:
        instruction = clean_instruction(generated)
        reason, detail = instruction_verdict(instruction, self.config)
        if reason == "empty_instruction":
            detail = f"{detail}: {clip(generated)!r}"
        return Parsed({"instruction": instruction}, reason, detail)


class Label(LLMStage):
    type = "label"
    config_model = LabelConfig
    task_class = LabelTask
    reads = {"text": pa.large_string()}
