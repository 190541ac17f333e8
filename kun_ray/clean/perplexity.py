"""perplexity: KenLM over SentencePiece pieces, computed the way CCNet, Data-Juicer and datatrove do.

Each line is normalized CCNet-style (lowercase, accents stripped, digits to 0, Unicode and
full-width Chinese punctuation mapped to ASCII, non-printing characters removed), cut into
SentencePiece pieces and scored by KenLM with sentence boundaries.  A document's perplexity is

    ppl = 10 ** (-sum(log10 p over its lines) / sum(pieces + 1 over its lines))

Documents above the cut are rejected with `ppl_above_max`.  The cut is `max_ppl`, or the
`keep_fraction` quantile of perplexities measured on a random sample (no threshold for Chinese
is published, so a percentile is the practical default).  Adds `ppl`.
"""

from __future__ import annotations

import re
import sys
import unicodedata
from typing import TYPE_CHECKING, Any

import pyarrow as pa
from pydantic import Field, model_validator
from ray.data.expressions import col

from kun_ray.config.base import CpuResources, StorageOptions, path
from kun_ray.stages.base import SAMPLE_KEY, Chart, RowFilter, Verdicts, replace_column

if TYPE_CHECKING:
    import ray.data


class PerplexityConfig(CpuResources):
    """KenLM perplexity over SentencePiece pieces, CCNet-style; cut by `max_ppl` or by `keep_fraction`.
    Off unless `enabled: true`: it needs models."""

    enabled: bool = False
    kenlm_model: str | None = path(kind="file")
    sentencepiece_model: str | None = path(kind="file")
    max_ppl: float | None = Field(default=None, gt=0)
    #: Keep the lowest-perplexity fraction, the cut estimated on `sample_size` random documents.
    keep_fraction: float | None = Field(default=None, gt=0, le=1)
    sample_size: int = Field(default=10_000, gt=0)
    seed: int = 0
    storage: StorageOptions | None = None

    @model_validator(mode="after")
    def _models_and_one_cut(self) -> PerplexityConfig:
        if self.enabled:
            for key in ("kenlm_model", "sentencepiece_model"):
                if getattr(self, key) is None:
                    raise ValueError(f"{key} is required when the perplexity stage is enabled")
            if (self.max_ppl is None) == (self.keep_fraction is None):
                raise ValueError("set exactly one of max_ppl and keep_fraction")
        return self


# cc_net/text_normalizer.py (facebookresearch/cc_net), as Data-Juicer and datatrove use it.
UNICODE_PUNCT = {
    "，": ",", "。": ".", "、": ",", "„": '"', "”": '"', "“": '"', "«": '"', "»": '"', "１": '"',
    "」": '"', "「": '"', "《": '"', "》": '"', "´": "'", "∶": ":", "：": ":", "？": "?", "！": "!",
    "（": "(", "）": ")", "；": ";", "–": "-", "—": " - ", "．": ". ", "～": "~", "’": "'", "…": "...",
    "━": "-", "〈": "<", "〉": ">", "【": "[", "】": "]", "％": "%", "►": "-",
}  # fmt: skip
PUNCT_TABLE = str.maketrans(UNICODE_PUNCT)
NON_PRINTING = re.compile(f"[{''.join(map(chr, list(range(0, 32)) + list(range(127, 160))))}]")
DIGIT = re.compile(r"\d")
# Nonspacing marks (accents once NFD has split them off): CCNet drops them.  One str.translate
# does what a per-character unicodedata.category() test does, at C speed.
DROP_COMBINING_MARKS = dict.fromkeys(c for c in range(sys.maxunicode + 1) if unicodedata.category(chr(c)) == "Mn")


def ccnet_normalize(line: str) -> str:
    line = line.strip()
    if not line:
        return line
    line = line.lower()
    line = unicodedata.normalize("NFD", line).translate(DROP_COMBINING_MARKS)
    line = DIGIT.sub("0", line)
    line = line.translate(PUNCT_TABLE)
    return NON_PRINTING.sub("", line)


class PerplexityScorer:
    """A KenLM model and its SentencePiece model."""

    def __init__(self, kenlm_model: str, sentencepiece_model: str, storage: StorageOptions):
        import kenlm
        import sentencepiece

        from kun_ray.io.fetch import local_copy

        self.model = kenlm.Model(local_copy(kenlm_model, storage))
        self.pieces = sentencepiece.SentencePieceProcessor(model_file=local_copy(sentencepiece_model, storage))

    def perplexity(self, text: str) -> float:
        log_score, length = 0.0, 0
        for line in text.split("\n"):
            normalized = ccnet_normalize(line)
            if not normalized:
                continue
            pieces = self.pieces.encode(normalized, out_type=str)
            log_score += self.model.score(" ".join(pieces), bos=True, eos=True)
            length += len(pieces) + 1
        return 10.0 ** (-log_score / length) if length else float("inf")


class Perplexity(RowFilter):
    type = "perplexity"
    config_model = PerplexityConfig
    adds = {"ppl": pa.float64()}
    reasons = frozenset({"ppl_above_max"})
    measures = ("ppl",)
    fits = True
    scorer: PerplexityScorer | None = None

    def load(self) -> None:
        c = self.config
        self.scorer = PerplexityScorer(c.kenlm_model, c.sentencepiece_model, c.storage or self.run.storage)

    def sample(self) -> tuple[int, int] | None:
        return None if self.config.max_ppl is not None else (self.config.sample_size, self.config.seed)

    def fit(self, stream: ray.data.Dataset, rows: int) -> dict[str, Any]:
        """The cut: `max_ppl`, or the `keep_fraction` quantile of the perplexities of a sample of
        the texts this stage sees (`stream`: the sample, through the stages before this one)."""
        c = self.config
        if c.max_ppl is not None:
            return {"max_ppl": c.max_ppl, "by": "max_ppl"}
        picked = stream.filter(expr=col("reject_reason").is_null()).select_columns([SAMPLE_KEY, "text"]).take_all()
        texts = [row["text"] for row in sorted(picked, key=lambda r: r[SAMPLE_KEY])[: c.sample_size]]
        scorer = PerplexityScorer(c.kenlm_model, c.sentencepiece_model, c.storage or self.run.storage)
        cut = quantile_cut([scorer.perplexity(t) for t in texts if t], c.keep_fraction)
        return {
            "max_ppl": round(cut, 3),
            "by": "keep_fraction",
            "keep_fraction": c.keep_fraction,
            "sample_size": len(texts),
        }

    def keep_or_reject(self, rows: pa.Table) -> Verdicts:
        max_ppl = self.fixed["max_ppl"]
        ppl = [self.scorer.perplexity(t) for t in rows["text"].to_pylist()]
        reasons = [None if p <= max_ppl else "ppl_above_max" for p in ppl]
        details = [None if p <= max_ppl else f"perplexity {p:.6g} > {max_ppl:.6g}" for p in ppl]
        return Verdicts(replace_column(rows, "ppl", pa.array(ppl, pa.float64())), reasons, details)

    def charts(self) -> list[Chart]:
        return [Chart("ppl", "Perplexity (KenLM)", "perplexity", self.config.max_ppl, "max", fixed="max_ppl")]

    def report(self) -> dict[str, Any]:
        return {"cut": self.fixed}


def quantile_cut(perplexities: list[float], keep_fraction: float) -> float:
    """The smallest perplexity at or under which `keep_fraction` of the scorable sample lies."""
    import numpy as np

    finite = [p for p in perplexities if p != float("inf")]
    if not finite:
        raise ValueError("no document of the sample could be scored")
    return float(np.quantile(finite, keep_fraction, method="inverted_cdf"))
