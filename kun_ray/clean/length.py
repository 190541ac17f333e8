"""length: drop texts by characters and by tokens of the label model's tokenizer.

Adds `n_chars` and `n_tokens` (null without a tokenizer).  Kun dropped texts over 512 tokens;
`too_short` and `too_long` are the reasons.  Tokens are counted by a Hugging Face fast
tokenizer, a whole batch per call, loaded once per worker.
"""

from __future__ import annotations

import pyarrow as pa

from kun_ray.clean.stage import Verdicts, on_live_rows, replace_column
from kun_ray.config import LengthConfig, StorageOptions
from kun_ray.io.fetch import load_tokenizer, loaded_once

NAME = "length"


def length_verdict(n_chars: int, n_tokens: int | None, config: LengthConfig) -> tuple[str | None, str | None]:
    if n_chars < config.min_chars:
        return "too_short", f"{n_chars} characters < {config.min_chars}"
    if config.max_chars is not None and n_chars > config.max_chars:
        return "too_long", f"{n_chars} characters > {config.max_chars}"
    if n_tokens is not None and config.max_tokens is not None and n_tokens > config.max_tokens:
        return "too_long", f"{n_tokens} tokens > {config.max_tokens}"
    return None, None


class LengthFilter:
    def __init__(self, config: LengthConfig, storage: StorageOptions):
        self.config = config
        self.tokenizer = load_tokenizer(config.tokenizer, storage) if config.tokenizer else None

    @classmethod
    def loaded(cls, config: LengthConfig, storage: StorageOptions) -> LengthFilter:
        return loaded_once(f"length:{config.tokenizer}", lambda: cls(config, storage))

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


def length_batch(batch: pa.Table, config: LengthConfig, storage: StorageOptions) -> pa.Table:
    return on_live_rows(batch, NAME, LengthFilter.loaded(config, storage).keep_or_reject)
