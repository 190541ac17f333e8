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

import pyarrow as pa

from kun_ray.clean.stage import Verdicts, on_live_rows, replace_column
from kun_ray.config import PerplexityConfig, StorageOptions
from kun_ray.io.fetch import loaded_once, local_copy

NAME = "perplexity"

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
    """A KenLM model and its SentencePiece model, loaded once per worker."""

    def __init__(self, kenlm_model: str, sentencepiece_model: str, storage: StorageOptions):
        import kenlm
        import sentencepiece

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

    @classmethod
    def loaded(cls, config: PerplexityConfig, storage: StorageOptions) -> PerplexityScorer:
        key = f"perplexity:{config.kenlm_model}:{config.sentencepiece_model}"
        return loaded_once(key, lambda: cls(config.kenlm_model, config.sentencepiece_model, config.storage or storage))


def perplexity_batch(batch: pa.Table, config: PerplexityConfig, storage: StorageOptions, max_ppl: float) -> pa.Table:
    scorer = PerplexityScorer.loaded(config, storage)

    def keep_or_reject(rows: pa.Table) -> Verdicts:
        ppl = [scorer.perplexity(t) for t in rows["text"].to_pylist()]
        reasons = [None if p <= max_ppl else "ppl_above_max" for p in ppl]
        details = [None if p <= max_ppl else f"perplexity {p:.6g} > {max_ppl:.6g}" for p in ppl]
        return Verdicts(replace_column(rows, "ppl", pa.array(ppl, pa.float64())), reasons, details)

    return on_live_rows(batch, NAME, keep_or_reject)


def quantile_cut(perplexities: list[float], keep_fraction: float) -> float:
    """The smallest perplexity at or under which `keep_fraction` of the scorable sample lies."""
    import numpy as np

    finite = [p for p in perplexities if p != float("inf")]
    if not finite:
        raise ValueError("no document of the sample could be scored")
    return float(np.quantile(finite, keep_fraction, method="inverted_cdf"))
