"""heuristics: Kun's repetition and whitespace filters.

- `repeated_unit`: a unit of 1..max_unit_chars characters repeated more than max_unit_repeats
  times in a row (哈哈哈..., "的的的...", a looping phrase);
- `repeated_lines`: more than max_repeated_line_fraction of the characters sit in lines that
  occur more than once;
- `whitespace_run`: a whitespace run longer than max_whitespace_run (meaningful when normalize
  does not collapse whitespace).
"""

from __future__ import annotations

import re
from collections import Counter

import pyarrow as pa

from kun_ray.clean.stage import Verdicts, on_live_rows
from kun_ray.config import HeuristicsConfig
from kun_ray.text import repetition_detail

NAME = "heuristics"


class Heuristics:
    def __init__(self, config: HeuristicsConfig):
        self.config = config
        self.whitespace_run = re.compile(r"\s{%d,}" % (config.max_whitespace_run + 1))

    def verdict(self, text: str) -> tuple[str | None, str | None]:
        c = self.config
        if detail := repetition_detail(text, c.max_unit_chars, c.max_unit_repeats):
            return "repeated_unit", detail
        share = repeated_line_fraction(text)
        if share > c.max_repeated_line_fraction:
            return "repeated_lines", f"{share:.0%} of the text is in repeated lines (max {c.max_repeated_line_fraction:.0%})"
        if match := self.whitespace_run.search(text):
            return "whitespace_run", f"a run of {len(match.group(0))} whitespace characters (max {c.max_whitespace_run})"
        return None, None


def repeated_line_fraction(text: str) -> float:
    """The share of the text's characters that sit in non-blank lines occurring more than once."""
    lines = [line.strip() for line in text.split("\n")]
    counts = Counter(line for line in lines if line)
    total = sum(len(line) for line in lines)
    repeated = sum(len(line) * n for line, n in counts.items() if n > 1)
    return repeated / total if total else 0.0


def heuristics_batch(batch: pa.Table, config: HeuristicsConfig) -> pa.Table:
    heuristics = Heuristics(config)

    def keep_or_reject(rows: pa.Table) -> Verdicts:
        verdicts = [heuristics.verdict(t) for t in rows["text"].to_pylist()]
        return Verdicts(rows, [v[0] for v in verdicts], [v[1] for v in verdicts])

    return on_live_rows(batch, NAME, keep_or_reject)
