"""near_dedup: MinHash + LSH on character n-grams; one document kept per connected group.

Chinese has no spaces, so a text's shingles are its character n-grams (5 by default).
Signatures come from rensa's MinHash.  The LSH bands (b bands of r rows, chosen for the
threshold as datasketch does: least weighted false-positive + false-negative area) are rows
of a Ray Dataset grouped by band hash with Ray Data, so the grouping scales past one machine.
Only colliding buckets come back: each gives edges from its members to its first member,
the edges are joined into connected groups on the driver (union-find, as datatrove's
clustering step does), and every member but the group's first is rejected as `near_duplicate`.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache

import numpy as np
import pyarrow as pa
import ray.data
from ray.data.aggregate import Count, Min
from ray.data.expressions import col

from kun_ray.clean.dedup import live_keys, mark_duplicates
from kun_ray.clean.stage import map_stage
from kun_ray.config import NearDedupConfig


@lru_cache(maxsize=None)
def lsh_bands(threshold: float, num_perm: int) -> tuple[int, int]:
    """(bands, rows per band) minimising the false-positive and false-negative areas, equally weighted."""
    s = np.linspace(0.0, 1.0, 2001)
    best, best_error = (1, num_perm), float("inf")
    for b in range(1, num_perm + 1):
        for r in range(1, num_perm // b + 1):
            p = 1.0 - (1.0 - s**r) ** b
            below, above = s <= threshold, s >= threshold
            error = 0.5 * np.trapezoid(p[below], s[below]) + 0.5 * np.trapezoid(1.0 - p[above], s[above])
            if error < best_error:
                best, best_error = (b, r), error
    return best


def shingles(text: str, n: int) -> list[str]:
    return list({text[i : i + n] for i in range(max(1, len(text) - n + 1))})  # MinHash ignores order


def band_keys(text: str, config: NearDedupConfig) -> list[str]:
    from rensa import RMinHash

    bands, rows = lsh_bands(config.threshold, config.num_perm)
    minhash = RMinHash(num_perm=config.num_perm, seed=config.seed)
    minhash.update(shingles(text, config.ngram))
    digest = np.asarray(minhash.digest(), dtype=np.uint32)
    return [f"{b:03d}:" + hashlib.blake2b(digest[b * rows : (b + 1) * rows].tobytes(), digest_size=12).hexdigest() for b in range(bands)]


def _band_rows(batch: pa.Table, ranks: dict[str, int], config: NearDedupConfig, column: str) -> pa.Table:
    live, keys = live_keys(batch, ranks)
    band_col, key_col = [], []
    for text, key in zip(live[column].to_pylist(), keys):
        for band in band_keys(text, config):
            band_col.append(band)
            key_col.append(key)
    return pa.table({"band_key": pa.array(band_col, pa.string()), "order_key": pa.array(key_col, pa.string())})


def _edges(batch: pa.Table, buckets: dict[str, str]) -> pa.Table:
    members, keepers = [], []
    for band, key in zip(batch["band_key"].to_pylist(), batch["order_key"].to_pylist()):
        keeper = buckets.get(band)
        if keeper is not None and keeper != key:
            members.append(key)
            keepers.append(keeper)
    return pa.table({"member": pa.array(members, pa.string()), "keeper": pa.array(keepers, pa.string())})


def group_keepers(edges: list[tuple[str, str]]) -> dict[str, str]:
    """Union-find over edges: each node of a connected group -> the group's smallest key."""
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b in edges:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)  # the root is always the group's smallest key
    return {node: find(node) for node in parent}


def _mark(batch: pa.Table, name: str, ranks: dict[str, int], keepers: dict[str, str], column: str) -> pa.Table:
    return mark_duplicates(batch, name, "near_duplicate", ranks, lambda key, text: keepers.get(key), column)


def near_dedup(stream: ray.data.Dataset, ranks: dict[str, int], stage: NearDedupConfig, name: str = "near_dedup", column: str = "text") -> ray.data.Dataset:
    """Reject, as stage `name`, every live row whose `column` is near a row earlier in the stable order."""
    bands = map_stage(stream, _band_rows, stage, ranks=ranks, config=stage, column=column).materialize()
    grouped = bands.groupby("band_key").aggregate(Count(alias_name="n"), Min("order_key", alias_name="keeper"))
    buckets = {row["band_key"]: row["keeper"] for row in grouped.filter(expr=col("n") > 1).iter_rows()}
    edges = bands.map_batches(_edges, fn_kwargs={"buckets": buckets}, batch_format="pyarrow").take_all() if buckets else []
    keepers = group_keepers([(e["member"], e["keeper"]) for e in edges])
    return map_stage(stream, _mark, stage, name=name, ranks=ranks, keepers=keepers, column=column)
