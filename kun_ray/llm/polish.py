"""polish: Kun's answer polishment, the chat model rewriting the raw text into an answer.

The `kun` template is Kun's own ("已知：\\n{text},请回答:{instruction}", COIG-Kun
evaluation/conversation.py:435-449 and evaluation/common.py:147); `directive` is a longer
wording of ours, and `prompt_file` any other.  As Kun's evaluation/common.py:133-156 does, the
prompt is fitted to `max_prompt_tokens` (512) by cutting the end of the *instruction*, never the
text, and the row keeps the cut instruction: it is the one the answer answers.

Then Kun's script/delete_key_output.py, which cleaned both sides after polishing:
- the answer: under 20 characters, a keyword that betrays the model talking about itself or
  its sources (作为, 根据, 知识库, 2023, 抱歉), or one that *starts* with a unit of any length
  repeated 6 times (`(.+?)\\1{5}` at the start);
- the instruction (`clean_instruction`): cut at the first run of 5 or more whitespace
  characters; else, where lines repeat, keep the longest repeated line when the instruction
  starts with it, else drop the row (`repeated_lines`).
The text stays in `text`; the polished answer goes in `answer`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Literal

import pyarrow as pa
from pydantic import Field

from kun_ray.config.base import since
from kun_ray.llm.prompts import check_fields, load_template, render
from kun_ray.llm.stage import LLMStage, LLMStageConfig, SamplingConfig
from kun_ray.llm.task import Parsed, Request, Tokens, clip, user
from kun_ray.text import first_keyword, starts_repeating

KUN_ANSWER_KEYWORDS = ["作为", "根据", "知识库", "2023", "抱歉"]


class PolishConfig(LLMStageConfig):
    """Answer polishment: the chat model rewrites the text into an answer to the instruction."""

    #: kun: Kun's prompt; directive: a longer wording that asks for a direct, complete answer.
    template: Literal["kun", "directive"] = since("0.3", "kun")
    #: The prompt (text, template and instruction) in tokens of the model's tokenizer: the
    #: instruction's end is cut to fit, as Kun's 512; null: no cut.
    max_prompt_tokens: int | None = since("0.3", 512, gt=0)
    max_text_tokens: int | None = Field(default=None, gt=0)
    keywords: list[str] = Field(default_factory=lambda: list(KUN_ANSWER_KEYWORDS))
    min_answer_chars: int = Field(default=20, ge=0)
    #: An answer that starts with a unit of any length repeated this many times in a row is dropped.
    start_repeats: int = since("0.3", 6, ge=2)
    #: Kun's scripts pass --max_token 1024 for every stage.
    sampling: SamplingConfig = SamplingConfig(max_tokens=1024)


WHITESPACE_RUN = re.compile(r"\s{5,}")


def clean_instruction(instruction: str) -> tuple[str, str | None]:
    """Kun's instruction cleaning (delete_key_output.py:42-94, 109-133): (the instruction, None),
    or (the instruction, "repeated_lines") for a row it drops.

    A run of 5+ whitespace characters ends the instruction.  Else, if a line (stripped) occurs
    twice or more, the instruction is its longest repeated line when it starts with that line,
    and is dropped when it does not.  (Kun searched the run before stripping the start, so an
    instruction opening with 5 spaces became empty; the start is stripped first here.)
    """
    text = instruction.lstrip()
    if run := WHITESPACE_RUN.search(text):
        return text[: run.start()].strip(), None
    text = text.strip()
    lines = [line.strip() for line in text.split("\n") if line.strip()]
    seen: dict[str, int] = {}
    for line in lines:
        seen[line] = seen.get(line, 0) + 1
    repeated = [line for line, count in seen.items() if count > 1]
    if not repeated:
        return text, None
    longest = max(repeated, key=len)  # the first of the longest, in order of appearance, as max() picks
    if text.startswith(longest):
        return longest, None
    return text, "repeated_lines"


def answer_verdict(generated: str, config: PolishConfig) -> tuple[str | None, str | None]:
    """Why the model's answer is dropped, or (None, None).  The repetition is looked for in the
    answer as generated, as Kun did; the length is that of the answer stripped (Kun's counted
    the whitespace around it too)."""
    answer = generated.strip()
    if len(answer) < config.min_answer_chars:
        return "answer_too_short", f"{len(answer)} characters < {config.min_answer_chars}"
    if keyword := first_keyword(answer, config.keywords):
        return "answer_keyword", f"contains {keyword!r}"
    if (unit := starts_repeating(generated, config.start_repeats)) is not None:
        return "answer_repetition", f"starts with {clip(unit, 50)!r} {config.start_repeats} times in a row"
    return None, None


class PolishTask:
    columns = {"answer": "large_string"}
    choices: tuple[str, ...] = ()
    reasons = frozenset(
        {"answer_too_short", "answer_keyword", "answer_repetition", "repeated_lines", "prompt_too_long"}
    )

    def __init__(self, config: PolishConfig):
        self.config = config
        self.template = load_template(f"polish_{config.template}", config.prompt_file)
        check_fields(self.template, {"text", "instruction"}, "polish.prompt_file")

    def request(self, row: Mapping[str, Any], tokens: Tokens | None = None) -> Request:
        text, instruction = row["text"], row["instruction"]
        limit = self.config.max_prompt_tokens
        if tokens is not None and limit is not None:
            room = limit - tokens.count(render(self.template, text=text, instruction=""))
            if room < 1:
                detail = f"the text leaves no room for the instruction in {limit} prompt tokens"
                return Request([], refused=("prompt_too_long", detail))
            if tokens.count(instruction) > room:
                instruction = tokens.head(instruction, room)
        updates = {"instruction": instruction} if instruction != row["instruction"] else {}
        return Request(user(render(self.template, text=text, instruction=instruction)), updates=updates)

    def parse(self, row: Mapping[str, Any], generated: str, top_logprobs: dict[str, float] | None) -> Parsed:
        answer = generated.strip()
        instruction, reason = clean_instruction(row["instruction"])
        columns = {"answer": answer, "instruction": instruction}
        if reason is not None:
            return Parsed(columns, reason, f"a repeated line that does not start it: {clip(row['instruction'])!r}")
        reason, detail = answer_verdict(generated, self.config)
        return Parsed(columns, reason, detail)


class Polish(LLMStage):
    type = "polish"
    config_model = PolishConfig
    task_class = PolishTask
    reads = {"text": pa.large_string(), "instruction": pa.string()}
