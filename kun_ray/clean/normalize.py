"""normalize: strip control and zero-width characters, collapse whitespace runs, optional NFKC.

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
BLANK_LINES = re.compile(r"\n(?:[^\S\n]*\n)+")


def normalize_text(text: str, collapse_whitespace: bool = True, nfkc: bool = False) -> str:
    if nfkc:
        text = unicodedata.normalize("NFKC", text)
    text = CONTROL.sub("", text.replace("\r\n", "\n").replace("\r", "\n"))
    if collapse_whitespace:
        text = HORIZONTAL_SPACE.sub(" ", text)
        text = "\n".join(line.strip() for line in text.split("\n"))
        text = BLANK_LINES.sub("\n\n", text)
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
