"""length: drop texts by characters and by tokens of the label model's tokenizer.

Adds `n_chars` and `n_tokens` (null without a tokenizer).  Kun dropped texts over 512 tokens;
`too_short` and `too_long` are the reasons.  Tokens are counted by a Hugging Face fast
tokenizer, a whole batch per call, loaded once per worker.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa
from pydantic import Field

from kun_ray.config.base import CpuResources, path
from kun_ray.stages.base import Chart, RowFilter, Verdicts, replace_column


class LengthConfig(CpuResources):
    """Drop texts by characters and by tokens of the label model's tokenizer (Kun: over 512 tokens)."""

    min_chars: int = Field(default=20, ge=0)
    max_chars: int | None = Field(default=None, gt=0)
    max_tokens: int | None = Field(default=512, gt=0)
    #: A Hugging Face tokenizer: hub id, local folder, or s3:// / gs:// folder. Without one, tokens are not counted.
    tokenizer: str | None = path(kind="model")


def length_verdict(n_chars: int, n_tokens: int | None, config: LengthConfig) -> tuple[str | None, str | None]:
    if n_chars < config.min_chars:
        return "too_short", f"{n_chars} characters < {config.min_chars}"
    if config.max_chars is not None and n_chars > config.max_chars:
        return "too_long", f"{n_chars} characters > {config.max_chars}"
    if n_tokens is not None and config.max_tokens is not None and n_tokens > config.max_tokens:
        return "too_long", f"{n_tokens} tokens > {config.max_tokens}"
    return None, None


class Length(RowFilter):
    type = "length"
    config_model = LengthConfig
    adds = {"n_chars": pa.int64(), "n_tokens": pa.int64()}
    reasons = frozenset({"too_short", "too_long"})
    measures = ("n_chars", "n_tokens")
    tokenizer: Any = None

    def load(self) -> None:
        from kun_ray.io.fetch import load_tokenizer

        if self.config.tokenizer:
            self.tokenizer = load_tokenizer(self.config.tokenizer, self.run.storage)

    def count_tokens(self, texts: list[str]) -> list[int | None]:
        if self.tokenizer is None or not texts:
            return [None] * len(texts)
        encoded = self.tokenizer(texts, add_special_tokens=False, return_attention_mask=False)
        return [len(ids) for ids in encoded["input_ids"]]

    def keep_or_reject(self, rows: pa.Table) -> Verdicts:
        texts = rows["text"].to_pylist()
        n_chars = [len(t) for t in texts]
        n_tokens = self.count_tokens(texts)
        verdicts = [length_verdict(c, t, self.config) for c, t in zip(n_chars, n_tokens)]
        rows = replace_column(rows, "n_chars", pa.array(n_chars, pa.int64()))
        rows = replace_column(rows, "n_tokens", pa.array(n_tokens, pa.int64()))
        return Verdicts(rows, [v[0] for v in verdicts], [v[1] for v in verdicts])

    def warnings(self) -> list[str]:
        if self.config.max_tokens is not None and not self.config.tokenizer:
            return [
                f"{self.name}.max_tokens: {self.config.max_tokens} is not applied: no {self.name}.tokenizer to count "
                f"tokens with (name the label model's, or set max_tokens: null to say it is off)"
            ]
        return []

    def charts(self) -> list[Chart]:
        if self.config.tokenizer:
            return [Chart("n_tokens", "Length in tokens", "tokens", self.config.max_tokens, "max")]
        return [Chart("n_chars", "Length in characters", "characters", self.config.max_chars, "max")]
