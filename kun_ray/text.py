"""Pure text checks shared by the cleaning filters and the LLM tasks (no Ray, no models)."""

from __future__ import annotations

import re
from functools import lru_cache


@lru_cache(maxsize=64)
def _repeated_unit_pattern(max_unit_chars: int, max_repeats: int) -> re.Pattern[str]:
    # A unit starts with a non-space character: runs of whitespace have their own rule.
    return re.compile(r"(\S.{0,%d}?)\1{%d,}" % (max_unit_chars - 1, max_repeats), re.DOTALL)


def repeated_unit(text: str, max_unit_chars: int, max_repeats: int) -> tuple[str, int] | None:
    """The first unit of 1..max_unit_chars characters repeated more than max_repeats times in a row, and how often."""
    match = _repeated_unit_pattern(max_unit_chars, max_repeats).search(text)
    if match is None:
        return None
    unit = match.group(1)
    return unit, len(match.group(0)) // len(unit)


def first_keyword(text: str, keywords: list[str]) -> str | None:
    return next((k for k in keywords if k in text), None)
