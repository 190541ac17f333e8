"""normalize: strip control and zero-width characters, collapse whitespace runs, optional NFKC.

Line structure stays: newlines, and the spaces and tabs that indent a line (code, Markdown
lists), which the answers trained on need.  Inside a line a run of whitespace becomes one
space; a line's trailing whitespace goes, and so does a paragraph indent of full-width spaces
(U+3000) or no-break spaces, which is Chinese typography, not structure.  Runs of blank lines
become one.

Rewrites `text` in place (the stage exists to change it); a text left empty is rejected
with `empty_after_normalize`.
"""

from __future__ import annotations

import re
import unicodedata

import pyarrow as pa

from kun_ray.config.base import CpuResources
from kun_ray.stages.base import RowFilter, Verdicts, replace_column


class NormalizeConfig(CpuResources):
    """Strip control and zero-width characters, collapse whitespace runs, optionally NFKC."""

    collapse_whitespace: bool = True
    nfkc: bool = False


# C0/C1 controls but tab and newline, DEL, and zero-width/format characters that web text carries.
CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u200b-\u200f\u2028\u2029\u202a-\u202e\u2060-\u2064\ufeff]")
HORIZONTAL_SPACE = re.compile(r"[^\S\n]+")  # whitespace but newline: spaces, tabs, U+3000, NBSP
INDENT = re.compile(r"[ \t]*")
BLANK_LINES = re.compile(r"\n{3,}")


def normalize_line(line: str) -> str:
    """Its indent of spaces and tabs as it was, then its words with one space between them."""
    indent = INDENT.match(line).group()
    words = HORIZONTAL_SPACE.sub(" ", line[len(indent) :]).strip()
    return indent + words if words else ""


def normalize_text(text: str, collapse_whitespace: bool = True, nfkc: bool = False) -> str:
    if nfkc:
        text = unicodedata.normalize("NFKC", text)
    text = CONTROL.sub("", text.replace("\r\n", "\n").replace("\r", "\n"))
    if collapse_whitespace:
        text = "\n".join(normalize_line(line) for line in text.split("\n"))
        return BLANK_LINES.sub("\n\n", text).strip("\n")
    return text.strip()


class Normalize(RowFilter):
    type = "normalize"
    config_model = NormalizeConfig
    reasons = frozenset({"empty_after_normalize"})

    def keep_or_reject(self, rows: pa.Table) -> Verdicts:
        config = self.config
        texts = [normalize_text(t, config.collapse_whitespace, config.nfkc) for t in rows["text"].to_pylist()]
        reasons = [None if t else "empty_after_normalize" for t in texts]
        details = [None if t else "nothing left after removing control characters and whitespace" for t in texts]
        return Verdicts(replace_column(rows, "text", pa.array(texts, pa.large_string())), reasons, details)
