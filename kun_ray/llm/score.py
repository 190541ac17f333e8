"""score: self-curation, the chat model judging what the label model wrote.

Modes:
- `kun_instruction` (Kun): the instruction alone, against Kun's good/bad rubric; the answer
  holds 【好】 or 【差】.  Score 1.0 for 【好】, 0.0 when 【差】 appears at all (Kun: strict on
  good, lenient on bad).
- `humpback_pair` (Humpback): instruction and answer, against Humpback's 5-point rubric; the
  last "Score: N" (or 得分：N / 评分：N) counts, whatever text comes around it.

Methods:
- `generate`: parse the model's answer, as the papers do.
- `logprobs`: the answer is prefilled up to the verdict ("【" or "Score:") and one token is
  generated among the choices (好/差, or 1..5); the score is P(好), or the expected rating,
  read from that token's log-probabilities.  One decode step per row, and a continuous score
  whose threshold can be tuned after the run.

Unparseable answers are rejected as `unparseable_score` with the raw text; scores under the
threshold as `score_below_min`.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from typing import Any, Literal

import pyarrow as pa

from kun_ray.llm.prompts import check_fields, load_template, render
from kun_ray.llm.stage import LLMStage, LLMStageConfig, SamplingConfig
from kun_ray.llm.task import Parsed, Request, Tokens, clip, user
from kun_ray.stages.base import Chart

KUN_VALUES = {"好": 1.0, "差": 0.0}
RATING_VALUES = {str(n): float(n) for n in range(1, 6)}
PREFILL = {"kun_instruction": "【", "humpback_pair": "Score:"}


class ScoreConfig(LLMStageConfig):
    """Self-curation: the chat model rates the instruction (Kun) or the pair (Humpback)."""

    mode: Literal["kun_instruction", "humpback_pair"] = "kun_instruction"
    #: generate: parse 【好】/【差】 or "Score: N" from the answer; logprobs: one token's probabilities.
    method: Literal["generate", "logprobs"] = "generate"
    #: Kept when score >= min_score.  Default: 0.5 for kun_instruction (【好】 = 1, 【差】 = 0, or
    #: P(好)); for humpback_pair the paper's A5, a rating of 5 generated, or an expected rating of
    #: 4.5 by log-probabilities (its A4: 4).
    min_score: float | None = None
    sampling: SamplingConfig = SamplingConfig(max_tokens=256)

    def threshold(self) -> float:
        if self.min_score is not None:
            return self.min_score
        if self.mode == "kun_instruction":
            return 0.5
        return 5.0 if self.method == "generate" else 4.5


RATING = re.compile(r"(?:score|得分|评分)\s*[:：]?\s*\**\s*([1-5](?:\.\d+)?)(?!\d|\.\d)", re.IGNORECASE)


def parse_kun_verdict(text: str) -> float | None:
    """1.0 for 【好】, 0.0 if 【差】 appears anywhere, None when neither does."""
    if "【差】" in text:
        return 0.0
    if "【好】" in text:
        return 1.0
    return None


def parse_rating(text: str) -> float | None:
    """The last "Score: N" (N in 1..5, English or Chinese label) in the text, else None."""
    matches = RATING.findall(text)
    return float(matches[-1]) if matches else None


def expected_value(top_logprobs: dict[str, float], values: dict[str, float]) -> float | None:
    """The expected value of the choices under the model's probabilities, renormalised over the choices.

    `top_logprobs` maps decoded tokens to log-probabilities; a token counts for the choice it
    reads as once stripped (" 5" is "5").  None when no choice is among them.
    """
    mass: dict[str, float] = {}
    for token, logprob in top_logprobs.items():
        choice = token.strip()
        if choice in values:
            mass[choice] = mass.get(choice, 0.0) + math.exp(logprob)
    total = sum(mass.values())
    if total <= 0:
        return None
    return sum(values[c] * p for c, p in mass.items()) / total


class ScoreTask:
    columns = {"score": "double", "score_raw": "large_string"}
    reasons = frozenset({"unparseable_score", "score_below_min"})

    def __init__(self, config: ScoreConfig):
        self.config = config
        self.values = KUN_VALUES if config.mode == "kun_instruction" else RATING_VALUES
        self.choices: tuple[str, ...] = tuple(self.values) if config.method == "logprobs" else ()
        self.template = load_template(f"score_{config.mode}", config.prompt_file)
        fields = {"instruction"} if config.mode == "kun_instruction" else {"instruction", "answer"}
        check_fields(self.template, fields, "score.prompt_file")

    def request(self, row: Mapping[str, Any], tokens: Tokens | None = None) -> Request:
        prompt = render(self.template, instruction=row["instruction"], answer=row["text"])
        if self.config.method == "generate":
            return Request(user(prompt))
        prefill = {"role": "assistant", "content": PREFILL[self.config.mode]}
        # temperature 1: the log-probabilities are the model's own, restricted to the choices.
        return Request(
            [*user(prompt), prefill], {"max_tokens": 1, "temperature": 1.0, "top_p": 1.0, "repetition_penalty": 1.0}
        )

    def parse(self, row: Mapping[str, Any], generated: str, top_logprobs: dict[str, float] | None) -> Parsed:
        if self.config.method == "logprobs":
            raw = json.dumps(top_logprobs or {}, ensure_ascii=False, sort_keys=True)
            score = expected_value(top_logprobs or {}, self.values)
        else:
            raw = generated
            score = parse_kun_verdict(generated) if self.config.mode == "kun_instruction" else parse_rating(generated)
        columns = {"score": score, "score_raw": raw}
        if score is None:
            return Parsed(columns, "unparseable_score", clip(raw))
        if score < self.config.threshold():
            return Parsed(columns, "score_below_min", f"score {score:.4g} < {self.config.threshold():g}")
        return Parsed(columns)


class Score(LLMStage):
    type = "score"
    config_model = ScoreConfig
    task_class = ScoreTask
    reads = {"text": pa.large_string(), "instruction": pa.string()}
    measures = ("score",)

    def charts(self) -> list[Chart]:
        return [Chart("score", "Score", "score", self.config.threshold(), "min")]

    def settings(self) -> dict[str, Any]:
        return {**super().settings(), "min_score": self.config.threshold()}  # the cut, written or not
