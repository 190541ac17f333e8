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
from functools import lru_cache

import pyarrow as pa
from pydantic import Field

from kun_ray.config.base import CpuResources
from kun_ray.stages.base import RowFilter, Verdicts
from kun_ray.text import repetition_detail


class HeuristicsConfig(CpuResources):
    """Kun's repetition and whitespace filters."""

    #: A unit of 1..max_unit_chars characters repeated more than max_unit_repeats times in a row.
    max_unit_chars: int = Field(default=10, gt=0)
    max_unit_repeats: int = Field(default=10, gt=0)
    #: The share of the text's characters in lines that occur more than once.
    max_repeated_line_fraction: float = Field(default=0.3, ge=0, le=1)
    max_whitespace_run: int = Field(default=10, gt=0)


class Heuristics(RowFilter):
    type = "heuristics"
    config_model = HeuristicsConfig
    reasons = frozenset({"repeated_unit", "repeated_lines", "whitespace_run"})

    def keep_or_reject(self, rows: pa.Table) -> Verdicts:
        verdicts = [self.verdict(t) for t in rows["text"].to_pylist()]
        return Verdicts(rows, [v[0] for v in verdicts], [v[1] for v in verdicts])

    def verdict(self, text: str) -> tuple[str | None, str | None]:
        c = self.config
        if detail := repetition_detail(text, c.max_unit_chars, c.max_unit_repeats):
            return "repeated_unit", detail
        share = repeated_line_fraction(text)
        if share > c.max_repeated_line_fraction:
            return (
                "repeated_lines",
                f"{share:.0%} of the text is in repeated lines (max {c.max_repeated_line_fraction:.0%})",
            )
        if match := _whitespace_run(c.max_whitespace_run).search(text):
            return (
                "whitespace_run",
                f"a run of {len(match.group(0))} whitespace characters (max {c.max_whitespace_run})",
            )
        return None, None


@lru_cache(maxsize=16)
def _whitespace_run(longest: int) -> re.Pattern[str]:
    return re.compile(rf"\s{{{longest + 1},}}")


def repeated_line_fraction(text: str) -> float:
    """The share of the text's characters that sit in non-blank lines occurring more than once."""
    lines = [line.strip() for line in text.split("\n")]
    counts = Counter(line for line in lines if line)
    total = sum(len(line) for line in lines)
    repeated = sum(len(line) * n for line, n in counts.items() if n > 1)
    return repeated / total if total else 0.0
