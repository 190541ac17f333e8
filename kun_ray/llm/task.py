"""What an LLM task is: a prompt builder and a parser, pure functions of a row and of text.

The engine (kun_ray/llm/engine.py) turns a task into a Ray Data LLM processor; the task itself
never sees Ray or vLLM, so it is tested with canned model outputs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import pyarrow as pa

Messages = list[dict[str, str]]


#: The Arrow types a task's columns name.
ARROW_TYPES = {"string": pa.string(), "large_string": pa.large_string(), "double": pa.float64(), "int64": pa.int64()}


@dataclass
class Parsed:
    """A task's reading of one model output: its new columns, and a reject reason or None."""

    columns: dict[str, Any]
    reason: str | None = None
    detail: str | None = None


@dataclass(frozen=True)
class Request:
    """What the model is asked: the chat messages (an assistant message last is a prefill) and
    sampling overrides; the columns the request changed (polish cuts the instruction to fit its
    prompt), which the row keeps; or, instead, why the row is refused before the model sees it."""

    messages: Messages
    sampling: dict[str, Any] = field(default_factory=dict)
    updates: dict[str, Any] = field(default_factory=dict)
    refused: tuple[str, str] | None = None


class Tokens(Protocol):
    """The model's tokenizer, as a task measures and cuts text with it."""

    def count(self, text: str) -> int: ...

    def head(self, text: str, n: int) -> str:
        """The text's first n tokens at most (n >= 1), cut at a character boundary."""
        ...


class Task(Protocol):
    #: The columns it adds, with their Arrow type names ("string", "large_string", "double").
    columns: dict[str, str]
    #: For scoring by log-probabilities: the one-token answers whose probabilities are read, else empty.
    choices: tuple[str, ...]
    #: The reject reasons its parser may give.
    reasons: frozenset[str]

    def request(self, row: Mapping[str, Any], tokens: Tokens | None = None) -> Request: ...

    def parse(self, row: Mapping[str, Any], generated: str, top_logprobs: dict[str, float] | None) -> Parsed: ...


def user(content: str) -> Messages:
    return [{"role": "user", "content": content}]


def clip(text: str, limit: int = 500) -> str:
    """A model output shortened for a reject's detail."""
    return text if len(text) <= limit else text[:limit] + f"... ({len(text)} chars)"
