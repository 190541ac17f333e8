"""A corpus with near-duplicates planted at known similarities, and the brute-force truth.

Documents are random strings of common CJK characters; a near-duplicate is a copy of a base
document with a share of its characters replaced, so its character n-gram Jaccard with the
base falls anywhere from about 0.5 to 0.98.  Clusters of 3-5 (each member a mutation of the
same base, so members are alike to each other at lower similarities), pairs, and exact copies
are planted; the similarities are then measured over every pair, not assumed.
"""

from __future__ import annotations

import itertools
import random
from collections import defaultdict

#: Common characters of the CJK Unified Ideographs block, which NFKC leaves alone.
CHARS = [chr(c) for c in range(0x4E00, 0x4E00 + 3000)]


def planted_corpus(seed: int, documents: int = 2000, length: int = 160) -> list[str]:
    """`documents` texts: about half unrelated, the rest in planted pairs, clusters and copies."""
    rng = random.Random(seed)

    def fresh() -> str:
        return "".join(rng.choices(CHARS, k=length))

    def mutate(text: str, share: float) -> str:
        chars = list(text)
        for i in rng.sample(range(len(chars)), max(1, round(share * len(chars)))):
            chars[i] = rng.choice(CHARS)
        return "".join(chars)

    texts: list[str] = []
    while len(texts) < documents:
        kind = rng.random()
        base = fresh()
        if kind < 0.5:
            texts.append(base)
        elif kind < 0.8:  # a pair; replacing 1-12% of characters spans Jaccard ~0.5-0.98 for 5-grams
            texts += [base, mutate(base, rng.uniform(0.004, 0.12))]
        elif kind < 0.95:  # a cluster of 3-5 mutations of one base
            texts += [base] + [mutate(base, rng.uniform(0.004, 0.06)) for _ in range(rng.randint(2, 4))]
        else:  # an exact copy
            texts += [base, base]
    order = list(range(len(texts)))
    rng.shuffle(order)
    return [texts[i] for i in order[:documents]]


def shingles(text: str, n: int) -> set[str]:
    return {text[i : i + n] for i in range(max(1, len(text) - n + 1))}


def similar_pairs(texts: list[str], n: int = 5, at_least: float = 0.3) -> dict[tuple[int, int], float]:
    """The character n-gram Jaccard of every pair of texts at or above `at_least`, by brute force
    over an inverted index (pairs sharing no n-gram are 0)."""
    sets = [shingles(t, n) for t in texts]
    postings: dict[str, list[int]] = defaultdict(list)
    for i, s in enumerate(sets):
        for g in s:
            postings[g].append(i)
    shared: dict[tuple[int, int], int] = defaultdict(int)
    for docs in postings.values():
        for pair in itertools.combinations(docs, 2):
            shared[pair] += 1
    pairs = {}
    for (i, j), common in shared.items():
        similarity = common / (len(sets[i]) + len(sets[j]) - common)
        if similarity >= at_least:
            pairs[(i, j)] = similarity
    return pairs


def dedup_errors(
    texts: list[str], kept: set[int], pairs: dict[tuple[int, int], float], threshold: float
) -> tuple[list[tuple[int, int, float]], list[tuple[int, float]]]:
    """What a near dedup at `threshold` got wrong, with slack for similarities near it: kept pairs
    at threshold + 0.05 or more, and removed documents whose best match among the kept is below
    threshold - 0.1 (an exact copy of a kept document matches it at 1)."""
    kept_pairs = [(i, j, s) for (i, j), s in pairs.items() if i in kept and j in kept and s >= threshold + 0.05]
    best: dict[int, float] = defaultdict(float)
    for (i, j), s in pairs.items():
        if i in kept and j not in kept:
            best[j] = max(best[j], s)
        if j in kept and i not in kept:
            best[i] = max(best[i], s)
    removed = [(d, best[d]) for d in range(len(texts)) if d not in kept and best[d] < threshold - 0.1]
    return kept_pairs, removed
