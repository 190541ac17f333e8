"""near_dedup: MinHash + LSH on character n-grams; one document kept per connected group.

Chinese has no spaces, so a text's shingles are its character n-grams (5 by default).
Signatures come from rensa's MinHash, a whole batch per call.  The LSH bands (b bands of r
rows, chosen for the threshold as datasketch does: least weighted false-positive +
false-negative area) are hashed to 64 bits with numpy, and become rows of a Ray Dataset
grouped by band hash with Ray Data, so the grouping scales past one machine.
Only colliding buckets come back: each gives edges from its members to its first member,
the edges are joined into connected groups on the driver (union-find, as datatrove's
clustering step does), and every member but the group's first is rejected as `near_duplicate`.
"""

from __future__ import annotations

from functools import cache

import numpy as np
import pyarrow as pa
import ray.data
from pydantic import Field
from ray.data.aggregate import Count, Min
from ray.data.expressions import col

from kun_ray.config.base import CpuResources, since
from kun_ray.dedup.base import DedupStage, live_keys, mark_duplicates, shuffle_partitions, source_ranks


class NearDedupConfig(CpuResources):
    """MinHash + LSH on character n-grams; one document kept per connected group."""

    threshold: float = Field(default=0.8, gt=0, lt=1)
    ngram: int = Field(default=5, gt=0)
    num_perm: int = Field(default=128, gt=0)
    seed: int = 42
    #: The column compared: the text, or the instruction (the final flow's instruction_near_dedup).
    column: str = since("0.2", "text")


@cache
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


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer: a 64-bit hash of each element (uint64 arithmetic wraps)."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def shingle_hashes(texts: list[str], n: int) -> tuple[np.ndarray, np.ndarray]:
    """64-bit hashes of every text's character n-grams, flat, with each text's offsets into them.

    The texts' code points are laid end to end, each text followed by n - 1 zeros, and every
    window of n hashed at once with numpy; a text's windows are those starting inside it
    (one for a text shorter than n).  No Python string per shingle.
    """
    lengths = np.fromiter((len(t) for t in texts), dtype=np.int64, count=len(texts))
    pad = "\0" * (n - 1)
    points = np.frombuffer((pad.join(texts) + pad).encode("utf-32-le", "surrogatepass"), dtype=np.uint32).astype(
        np.uint64
    )
    windows = np.zeros(len(points) - n + 1, dtype=np.uint64)
    for j in range(n):
        windows = windows * np.uint64(0x100000001B3) + points[j : j + len(windows)]
    windows = _mix(windows)
    starts = np.concatenate([[0], np.cumsum(lengths + n - 1)[:-1]])  # of each text in `points`
    counts = np.maximum(1, lengths - n + 1)  # windows per text
    offsets = np.concatenate([[0], np.cumsum(counts)])  # of each text's windows in the result
    index = np.repeat(starts - offsets[:-1], counts) + np.arange(offsets[-1])
    return windows[index], offsets.astype(np.uint64)


def band_hashes(texts: list[str], config: NearDedupConfig) -> np.ndarray:
    """One uint64 per LSH band of each text's MinHash signature, shape (texts, bands); the band index is hashed in."""
    from rensa import RMinHash

    bands, rows = lsh_bands(config.threshold, config.num_perm)
    if not texts:
        return np.empty((0, bands), dtype=np.uint64)
    flat, offsets = shingle_hashes(texts, config.ngram)
    digests = RMinHash.digest_matrix_from_flat_token_hashes(flat, offsets, config.num_perm, config.seed).to_rows()
    grid = np.asarray(digests, dtype=np.uint64)[:, : bands * rows].reshape(len(texts), bands, rows)
    hashes = _mix(np.arange(bands, dtype=np.uint64) + np.uint64(1))[None, :].repeat(len(texts), axis=0)
    for r in range(rows):
        hashes = _mix(hashes ^ grid[:, :, r])
    return hashes


def band_keys(text: str, config: NearDedupConfig) -> list[int]:
    return band_hashes([text], config)[0].tolist()


def _band_rows(batch: pa.Table, ranks: dict[str, int], config: NearDedupConfig, column: str) -> pa.Table:
    live, keys = live_keys(batch, ranks)
    hashes = band_hashes(live[column].to_pylist(), config)
    return pa.table(
        {
            "band_key": pa.array(hashes.reshape(-1), pa.uint64()),
            "order_key": pa.array(np.repeat(np.asarray(keys, dtype=object), hashes.shape[1]), pa.string()),
        }
    )


def _edges(batch: pa.Table, buckets: dict[int, str]) -> pa.Table:
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


class NearDedup(DedupStage):
    type = "near_dedup"
    config_model = NearDedupConfig
    reasons = frozenset({"near_duplicate"})

    def apply(self, stream: ray.data.Dataset) -> ray.data.Dataset:
        """Reject every live row whose column is near a row earlier in the stable order."""
        ranks, column, config = source_ranks(self.run.sources), self.config.column, self.config
        bands = self.map(stream, _band_rows, ranks=ranks, config=config, column=column).materialize()
        grouped = bands.groupby("band_key", num_partitions=shuffle_partitions()).aggregate(
            Count(alias_name="n"), Min("order_key", alias_name="keeper")
        )
        buckets = {row["band_key"]: row["keeper"] for row in grouped.filter(expr=col("n") > 1).iter_rows()}
        edges = (
            bands.map_batches(_edges, fn_kwargs={"buckets": buckets}, batch_format="pyarrow").take_all()
            if buckets
            else []
        )
        keepers = group_keepers([(e["member"], e["keeper"]) for e in edges])
        return self.map(stream, _mark, name=self.name, ranks=ranks, keepers=keepers, column=column)
