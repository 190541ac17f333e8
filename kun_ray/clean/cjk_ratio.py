"""cjk_ratio: drop texts that are mostly not Chinese (or Japanese, Korean) script.

The share of a text's non-space characters that are CJK ideographs, kana or hangul, plus CJK
punctuation and full-width forms; under `min_ratio` the text is `low_cjk_ratio`.  A web page of
menus, code or English under a Chinese URL is what this catches.  Off by default (Kun has no
such filter); adds `cjk_ratio`.
"""

from __future__ import annotations

import re

import pyarrow as pa
from pydantic import Field

from kun_ray.config.base import CpuResources
from kun_ray.stages.base import RowFilter, Verdicts, replace_column

CJK = re.compile(
    "[\u2e80-\u2fdf\u3000-\u303f\u3040-\u30ff\u3100-\u31bf\u31f0-\u31ff\u3400-\u4dbf\u4e00-\u9fff"
    "\uac00-\ud7af\uf900-\ufaff\uff00-\uffef\U00020000-\U0003134f]"
)
SPACE = re.compile(r"\s")


class CjkRatioConfig(CpuResources):
    """The least share of CJK characters among a text's non-space characters."""

    enabled: bool = False
    min_ratio: float = Field(default=0.3, ge=0, le=1)


def cjk_ratio(text: str) -> float:
    """CJK characters over non-space characters (0 for a text of spaces only)."""
    visible = len(text) - len(SPACE.findall(text))
    return len(CJK.findall(text)) / visible if visible else 0.0


class CjkRatio(RowFilter):
    type = "cjk_ratio"
    config_model = CjkRatioConfig
    adds = {"cjk_ratio": pa.float64()}
    reasons = frozenset({"low_cjk_ratio"})

    def keep_or_reject(self, rows: pa.Table) -> Verdicts:
        ratios = [cjk_ratio(t) for t in rows["text"].to_pylist()]
        low = [r < self.config.min_ratio for r in ratios]
        reasons = ["low_cjk_ratio" if x else None for x in low]
        details = [f"{r:.0%} CJK characters < {self.config.min_ratio:.0%}" if x else None for r, x in zip(ratios, low)]
        return Verdicts(replace_column(rows, "cjk_ratio", pa.array(ratios, pa.float64())), reasons, details)
