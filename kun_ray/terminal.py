"""What `kun-ray show`, `sql`, `sample` and `trace` print: tables and pairs laid out by display
width (rich), so Chinese, two columns a character, lines up."""

from __future__ import annotations

import io
import json
import shutil
from collections.abc import Sequence
from typing import Any

from rich import box
from rich.console import Console, RenderableType
from rich.table import Table
from rich.text import Text

#: Fields a pair shows, in order, with the label they get.
PAIR_FIELDS = (
    ("instruction", "instruction"),
    ("answer", "answer"),
    ("text", "text"),
    ("reason", "reason"),
    ("detail", "detail"),
)
#: Measures shown in a pair's heading when the row has them.
HEADING_FIELDS = ("stage", "source", "doc_id", "score", "ppl", "n_tokens")


def render(*items: RenderableType, width: int | None = None) -> str:
    """Rich renderables as plain text, `width` columns wide (the terminal's, or $COLUMNS, by default)."""
    console = Console(
        file=io.StringIO(),
        width=width or shutil.get_terminal_size((120, 40)).columns,
        color_system=None,
        highlight=False,
        soft_wrap=False,
    )
    for item in items:
        console.print(item)
    text = console.file.getvalue()  # type: ignore[attr-defined]
    return "".join(line.rstrip() + "\n" for line in text.splitlines())


def cell(value: Any) -> str:
    """A value as one table cell: floats to 4 significant digits, None empty, newlines folded."""
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False)
    return " ".join(str(value).split())


def table(columns: Sequence[str], rows: Sequence[Sequence[Any]], max_cell: int = 48) -> Table:
    """Query results as a table; long cells end in an ellipsis (`--json` or `--csv` give them whole)."""
    result = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False)
    for i, name in enumerate(columns):
        numeric = bool(rows) and all(
            isinstance(row[i], (int, float)) and not isinstance(row[i], bool) for row in rows if row[i] is not None
        )
        result.add_column(
            name, no_wrap=True, overflow="ellipsis", max_width=max_cell, justify="right" if numeric else "left"
        )
    for row in rows:
        result.add_row(*(cell(v) for v in row))
    return result


def shorten(text: str, limit: int | None) -> str:
    text = " ".join(text.split())
    return text if limit is None or len(text) <= limit else text[:limit] + f"… ({len(text):,} characters)"


def pair(row: dict[str, Any], number: str, text_chars: int | None = 300) -> Table:
    """One row as a readable block: a heading of where it is from, then its instruction, answer
    and text (and reason, detail for a reject), labels on the left, values wrapped beside them."""
    heading = "  ".join(
        f"{cell(row[k])}" if k in ("stage", "source", "doc_id") else f"{k} {cell(row[k])}"
        for k in HEADING_FIELDS
        if row.get(k) is not None
    )
    block = Table.grid(padding=(0, 2))
    block.add_column(style="bold", no_wrap=True)
    block.add_column(overflow="fold")
    block.title = f"{number}  {heading}"
    block.title_justify = "left"
    for key, label in PAIR_FIELDS:
        value = row.get(key)
        if value is None or value == "":
            continue
        block.add_row(label, Text(shorten(str(value), text_chars if key == "text" else None)))
    return block


def pairs(rows: list[dict[str, Any]], stage: str, text_chars: int | None = 300, width: int | None = None) -> str:
    blocks = [pair({"stage": stage, **row}, f"[{i}/{len(rows)}]", text_chars) for i, row in enumerate(rows, 1)]
    return render(*[item for block in blocks for item in (block, "")], width=width)


def funnel_progress(progress: dict[str, dict[str, Any]], finished: bool) -> str:
    """A line per flow: shards committed of the run's, and the run's state."""
    rows = [
        (flow, stage["stage"], f"{stage['shards']}/{stage['of']} shards", "done" if stage["done"] else "in progress")
        for flow, stage in progress.items()
    ]
    grid = Table.grid(padding=(0, 2))
    for _ in range(4):
        grid.add_column(no_wrap=True)
    for row in rows:
        grid.add_row(*row)
    state = (
        "finished (report.json written)"
        if finished
        else "not finished: going on, stopped or crashed (no report.json yet)"
    )
    return render(grid, Text(f"run {state}"))
