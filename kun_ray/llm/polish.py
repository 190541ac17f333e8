"""polish: Kun's answer polishment, the chat model rewriting the raw text into an answer.

The prompt gives the text as reference, then the instruction; the engine cuts the text to
`max_text_tokens` first (Kun cut at 512 tokens).  The text stays in `text`; the polished answer
goes in `answer`.  Answers are filtered as Kun's scripts do: a keyword that betrays the model
talking about itself or its sources (作为, 根据, 知识库, 2023, 抱歉), too short, runaway repetition.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pyarrow as pa
from pydantic import Field

from kun_ray.llm.prompts import check_fields, load_template, render
from kun_ray.llm.stage import LLMStage, LLMStageConfig
from kun_ray.llm.task import Parsed, Request, user
from kun_ray.text import first_keyword, repetition_detail

KUN_ANSWER_KEYWORDS = ["作为", "根据", "知识库", "2023", "抱歉"]


class PolishConfig(LLMStageConfig):
    """Answer polishment: the chat model rewrites the text into an answer to the instruction."""

    max_text_tokens: int | None = Field(default=512, gt=0)
    keywords: list[str] = Field(default_factory=lambda: list(KUN_ANSWER_KEYWORDS))
    min_answer_chars: int = Field(default=20, ge=0)
    max_unit_chars: int = Field(default=10, gt=0)
    max_unit_repeats: int = Field(default=10, gt=0)


def answer_verdict(answer: str, config: PolishConfig) -> tuple[str | None, str | None]:
    if len(answer) < config.min_answer_chars:
        return "answer_too_short", f"{len(answer)} characters < {config.min_answer_chars}"
    if keyword := first_keyword(answer, config.keywords):
        return "answer_keyword", f"contains {keyword!r}"
    if detail := repetition_detail(answer, config.max_unit_chars, config.max_unit_repeats):
        return "answer_repetition", detail
    return None, None


class PolishTask:
    columns = {"answer": "large_string"}
    choices: tuple[str, ...] = ()
    reasons = frozenset({"answer_too_short", "answer_keyword", "answer_repetition"})

    def __init__(self, config: PolishConfig):
        self.config = config
        self.template = load_template("polish_kun", config.prompt_file)
        check_fields(self.template, {"text", "instruction"}, "polish.prompt_file")

    def request(self, row: Mapping[str, Any]) -> Request:
        return Request(user(render(self.template, text=row["text"], instruction=row["instruction"])))

    def parse(self, row: Mapping[str, Any], generated: str, top_logprobs: dict[str, float] | None) -> Parsed:
        answer = generated.strip()
        reason, detail = answer_verdict(answer, self.config)
        return Parsed({"answer": answer}, reason, detail)


class Polish(LLMStage):
    type = "polish"
    config_model = PolishConfig
    task_class = PolishTask
    reads = {"text": pa.large_string(), "instruction": pa.string()}
