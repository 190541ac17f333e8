"""Pure text checks shared by the cleaning filters and the LLM tasks (no Ray, no models)."""

from __future__ import annotations

import re
from functools import lru_cache


@lru_cache(maxsize=64)
def _repeated_unit_pattern(max_unit_chars: int, max_repeats: int) -> re.Pattern[str]:
    # A unit starts with a non-space character: runs of whitespace have their own rule.
    return re.compile(rf"(\S.{{0,{max_unit_chars - 1}}}?)\1{{{max_repeats},}}", re.DOTALL)


def repetition_detail(text: str, max_unit_chars: int, max_repeats: int) -> str | None:
    """Why a text counts as runaway repetition, or None: a unit of 1..max_unit_chars characters
    repeated more than max_repeats times in a row ("'哈' repeated 30 times in a row (max 10)")."""
    match = _repeated_unit_pattern(max_unit_chars, max_repeats).search(text)
    if match is None:
        return None
    unit = match.group(1)
    return f"{unit!r} repeated {len(match.group(0)) // len(unit)} times in a row (max {max_repeats})"


def starts_repeating(text: str, repeats: int) -> str | None:
    """Kun's detect_repetition_improved (COIG-Kun script/delete_key_output.py:3-15): the unit that
    the text starts with `repeats` times in a row, of any length, or None."""
    match = re.match(rf"(.+?)\1{{{repeats - 1}}}", text, re.DOTALL)
    return match.group(1) if match else None


def first_keyword(text: str, keywords: list[str]) -> str | None:
    return next((k for k in keywords if k in text), None)
