"""A document's journey through a run: every stage that kept it, then the one that dropped it, if any.

`kun_ray.Run.trace(doc_id)` builds one from the committed files; `print(trace)` lays it out.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from rich.table import Table
from rich.text import Text

from kun_ray.terminal import cell, render, shorten


@dataclass
class TraceStep:
    """One stage of a document's journey: the folder it was kept in, or the stage that rejected it."""

    stage: str
    kept: bool
    #: Columns this stage added to the row (instruction, score, answer, ...), or a reject's measures.
    added: dict[str, Any] = field(default_factory=dict)
    reason: str | None = None
    detail: str | None = None


@dataclass
class Trace:
    """A document's journey through a run: every stage that kept it, then the one that dropped it, if any."""

    doc_id: str
    source: str
    shard: str
    text: str
    steps: list[TraceStep]

    @property
    def dropped(self) -> TraceStep | None:
        return next((step for step in self.steps if not step.kept), None)

    @property
    def outcome(self) -> str:
        if self.dropped is not None:
            return f"dropped by {self.dropped.stage}: {self.dropped.reason}"
        return f"kept through {self.steps[-1].stage}" if self.steps else "not read yet"

    def __str__(self) -> str:
        return format_trace(self)


def format_trace(trace: Trace, width: int | None = None) -> str:
    """A document's journey: a line per stage, kept or dropped, with what the stage added or why it dropped it."""
    steps = Table.grid(padding=(0, 2))
    steps.add_column(no_wrap=True)
    steps.add_column(no_wrap=True)
    steps.add_column(overflow="fold")
    steps.add_row("text", "", shorten(trace.text or "", 200))
    for step in trace.steps:
        added = " · ".join(f"{k} {cell(v)}" for k, v in step.added.items())
        if step.kept:
            steps.add_row(step.stage, "kept", added)
        else:
            steps.add_row(
                step.stage, "dropped", f"{step.reason}: {step.detail or ''}" + (f"  ({added})" if added else "")
            )
    heading = Text(f"{trace.doc_id}  source {trace.source}  shard {trace.shard}")
    return render(heading, steps, Text(trace.outcome), width=width)
