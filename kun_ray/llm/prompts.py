"""Prompt templates are data: text files in kun_ray/llm/prompts/, or a file a config names.

A template is filled with `str.format` fields: {text}, {instruction}, {answer} (a literal brace
is written twice).  Nothing else is substituted, so a template reads as what the model sees.
"""

from __future__ import annotations

from functools import cache
from importlib import resources
from pathlib import Path

from kun_ray.config import ConfigError

SHIPPED = (
    "label_kun",
    "label_humpback",
    "score_kun_instruction",
    "score_humpback_pair",
    "polish_kun",
    "polish_directive",
)


@cache
def load_template(name: str, override: str | None = None) -> str:
    """The shipped template `name`, or the file `override` when given."""
    if override is not None:
        try:
            return Path(override).read_text(encoding="utf-8")
        except OSError as error:
            raise ConfigError(f"prompt_file {override}: cannot read: {error.strerror or error}") from None
    return resources.files("kun_ray.llm").joinpath("prompts", f"{name}.txt").read_text(encoding="utf-8")


def render(template: str, **fields: str) -> str:
    return template.format(**fields).strip()


def check_fields(template: str, allowed: set[str], where: str) -> None:
    """A template may only use the fields its task fills: a typo is an error before any GPU starts."""
    import string

    used = {field for _, field, _, _ in string.Formatter().parse(template) if field is not None}
    if unknown := used - allowed:
        raise ConfigError(f"{where}: unknown template field(s) {sorted(unknown)}; this stage fills {sorted(allowed)}")


def all_prompt_texts() -> list[str]:
    """The shipped templates' text (the smoke-test tokenizer learns their words)."""
    return [load_template(name) for name in SHIPPED]
