"""near_dedup: MinHash + LSH on character n-grams, candidates verified, the first of each group kept.

Chinese has no spaces, so a text's shingles are its character n-grams (5 by default).
Signatures come from rensa's MinHash, a whole batch per call.  Then, with Ray Data:

1. **Candidates.**  Each signature is cut into b bands of r rows, chosen for recall: a pair at
   exactly the threshold shares a band with probability `recall` (0.999), with the fewest
   candidates below it (`lsh_bands`).  Band hashes are grouped (a hash repartition), and the
   members of every bucket of two or more are the candidates.
2. **Verification.**  The candidates are joined with their texts (or signatures), and each
   pair in a bucket is compared: the true Jaccard of the two n-gram sets (`verify: jaccard`),
   or the share of equal signature values (`verify: signature`).  Only a pair at or above the
   threshold is an edge; a pair is compared in the first band it shares, not once per band.
3. **Keepers.**  Within each connected group of edges, documents are taken in the stable
   order (sources in the config's order, then doc_id); one is kept unless an edge joins it to
   a document kept before it, and is then a `near_duplicate` of that document.  So a chain
   A~B~C where A and C are not alike keeps A and C: nothing is removed for being like a
   document that was itself removed.  (The groups are formed on the driver from the verified
   edges; the distributed connected components of the scale issue replace that step.)

A small input (dedup/base.py ONE_TASK_ROWS) is compared in one task, its band rows made there:
a shuffle costs seconds whatever its size.
"""

from __future__ import annotations

import math
from functools import cache
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import ray.data
from pydantic import Field

from kun_ray.config.base import CpuResources, since
from kun_ray.dedup.base import DedupStage, live_keys, mark_duplicates, shuffle_partitions, source_ranks

#: Members of one bucket compared pair by pair; in a bigger bucket each member is compared
#: with the first MAX_BUCKET only (such a bucket is one large cluster, and its other bands join it).
MAX_BUCKET = 64


class NearDedupConfig(CpuResources):
    """MinHash + LSH on character n-grams, candidates verified; the first of each group kept."""

    threshold: float = Field(default=0.8, gt=0, lt=1)
    ngram: int = Field(default=5, gt=0)
    num_perm: int = Field(default=128, gt=0)
    seed: int = 42
    #: The column compared: the text, or the instruction (the final flow's instruction_near_dedup).
    column: str = since("0.2", "text")
    #: The chance that a pair at exactly the threshold becomes a candidate: it sets the bands.
    recall: float = since("0.3", 0.999, gt=0, lt=1)
    #: How a candidate is confirmed: the true Jaccard of the n-gram sets, or the signatures' estimate.
    verify: Literal["jaccard", "signature"] = since("0.3", "jaccard")


def detection(similarity: float | np.ndarray, bands: int, rows: int) -> float | np.ndarray:
    """The chance that a pair of Jaccard `similarity` shares at least one of `bands` bands of `rows` rows."""
    return 1.0 - (1.0 - np.asarray(similarity, dtype=float) ** rows) ** bands


@cache
def lsh_bands(threshold: float, num_perm: int, recall: float = 0.999) -> tuple[int, int]:
    """(bands, rows per band), b x r <= num_perm, that find a pair at the threshold with
    probability >= recall, and among those the fewest candidates below the threshold (the
    smallest area under the detection curve from 0 to the threshold).  For each r the fewest
    bands that reach the recall are the best: more bands only add candidates."""
    s = np.linspace(0.0, threshold, 1001)
    best, best_area = None, float("inf")
    for r in range(1, num_perm + 1):
        hit = threshold**r  # the chance that one band of r rows matches
        if hit == 0:
            break
        b = math.ceil(math.log1p(-recall) / math.log1p(-hit) - 1e-9)  # 1 - (1 - hit)^b >= recall
        if b * r > num_perm:
            continue
        area = float(np.trapezoid(detection(s, b, r), s))
        if area < best_area:
            best, best_area = (b, r), area
    if best is None:
        raise ValueError(f"no LSH bands of {num_perm} permutations find a pair at {threshold} with {recall}")
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


def shingle_sets(texts: list[str], n: int) -> list[np.ndarray]:
    """Each text's distinct n-gram hashes, sorted."""
    flat, offsets = shingle_hashes(texts, n)
    return [np.unique(flat[offsets[i] : offsets[i + 1]]) for i in range(len(texts))]


def jaccard(a: np.ndarray, b: np.ndarray) -> float:
    """The Jaccard similarity of two sorted sets of distinct hashes."""
    common = len(np.intersect1d(a, b, assume_unique=True))
    return common / (len(a) + len(b) - common)


def signatures(texts: list[str], config: NearDedupConfig) -> np.ndarray:
    """Each text's MinHash signature, shape (texts, num_perm)."""
    from rensa import RMinHash

    if not texts:
        return np.empty((0, config.num_perm), dtype=np.uint64)
    flat, offsets = shingle_hashes(texts, config.ngram)
    digests = RMinHash.digest_matrix_from_flat_token_hashes(flat, offsets, config.num_perm, config.seed).to_rows()
    return np.asarray(digests, dtype=np.uint64)


def band_hashes(texts: list[str], config: NearDedupConfig) -> np.ndarray:
    """One uint64 per LSH band of each text's MinHash signature, shape (texts, bands); the band index is hashed in."""
    return bands_of(signatures(texts, config), config)


def bands_of(signature: np.ndarray, config: NearDedupConfig) -> np.ndarray:
    bands, rows = lsh_bands(config.threshold, config.num_perm, config.recall)
    grid = signature[:, : bands * rows].reshape(len(signature), bands, rows)
    hashes = _mix(np.arange(bands, dtype=np.uint64) + np.uint64(1))[None, :].repeat(len(signature), axis=0)
    for r in range(rows):
        hashes = _mix(hashes ^ grid[:, :, r])
    return hashes


def band_keys(text: str, config: NearDedupConfig) -> list[int]:
    return band_hashes([text], config)[0].tolist()


def _band_rows(batch: pa.Table, ranks: dict[str, int], config: NearDedupConfig, column: str) -> pa.Table:
    """A row per band of each live row: the band's hash, the band's index, the row's order key."""
    live, keys = live_keys(batch, ranks)
    hashes = band_hashes(live[column].to_pylist(), config)
    bands = hashes.shape[1]
    return pa.table(
        {
            "band_key": pa.array(hashes.reshape(-1), pa.uint64()),
            "band": pa.array(np.tile(np.arange(bands, dtype=np.int32), len(keys)), pa.int32()),
            "order_key": pa.array(np.repeat(np.asarray(keys, dtype=object), bands), pa.string()),
        }
    )


def _runs(keys: np.ndarray) -> list[tuple[int, int]]:
    """(start, end) of each run of two or more equal values in a sorted array."""
    if len(keys) < 2:
        return []
    edges = np.flatnonzero(keys[1:] != keys[:-1]) + 1
    starts = np.concatenate([[0], edges])
    ends = np.concatenate([edges, [len(keys)]])
    return [(int(s), int(e)) for s, e in zip(starts, ends) if e - s > 1]


def _bucket_members(block: pa.Table) -> pa.Table:
    """The rows of every bucket of two or more (a block holds whole buckets, sorted by band_key)."""
    if block.num_rows == 0:
        return block
    keys = block["band_key"].to_numpy()
    take = [i for start, end in _runs(keys) for i in range(start, end)]
    return block.take(pa.array(take, pa.int64()))


def _doc_rows(batch: pa.Table, ranks: dict[str, int], config: NearDedupConfig, column: str) -> pa.Table:
    """Each live row's order key, band hashes (to compare a pair in its first shared band only),
    and what verification compares: the text, or the signature."""
    live, keys = live_keys(batch, ranks)
    texts = live[column].to_pylist()
    signature = signatures(texts, config)
    columns: dict[str, Any] = {
        "order_key": pa.array(keys, pa.string()),
        "bands": pa.array(list(bands_of(signature, config)), pa.list_(pa.uint64())),
    }
    if config.verify == "jaccard":
        columns["value"] = pa.array(texts, pa.large_string())
    else:
        columns["value"] = pa.array(list(signature), pa.list_(pa.uint64()))
    return pa.table(columns)


def _joined(batch: pa.Table, value: pa.DataType) -> pa.Table:
    """The join's rows with every column (Ray Data's join gives an empty partition the right side's only)."""
    schema = pa.schema(
        [("band_key", pa.uint64()), ("band", pa.int32()), ("order_key", pa.string()),
         ("bands", pa.list_(pa.uint64())), ("value", value)]
    )  # fmt: skip
    if batch.num_rows == 0:
        return schema.empty_table()
    return pa.table({f.name: batch[f.name].cast(f.type) for f in schema}, schema=schema)


def _verified_edges(block: pa.Table, config: NearDedupConfig) -> pa.Table:
    """The verified edges of the buckets of a block of band rows that holds whole buckets, each
    row with its document's order key, band hashes and value (the join's rows)."""
    if block.num_rows == 0:
        return _edges_table([], [], [], 0)
    block = block.sort_by([("band_key", "ascending"), ("order_key", "ascending")])
    rows = np.arange(block.num_rows)
    return _compare(
        block["band_key"].to_numpy(),
        block["band"].to_numpy(),
        rows,
        block["order_key"].to_pylist(),
        np.asarray(block["bands"].to_pylist(), dtype=np.uint64),
        block["value"].to_pylist(),
        config,
    )


def _edges_of_docs(block: pa.Table, config: NearDedupConfig) -> pa.Table:
    """The verified edges among the documents of one block (a small input, in one task): its
    band rows are made here, without a shuffle."""
    if block.num_rows == 0:
        return _edges_table([], [], [], 0)
    order = block["order_key"].to_pylist()
    bands = np.asarray(block["bands"].to_pylist(), dtype=np.uint64)
    count, width = bands.shape
    rank = np.argsort(np.argsort(np.asarray(order, dtype=object)))  # each document's place in key order
    band_key, band = bands.reshape(-1), np.tile(np.arange(width, dtype=np.int32), count)
    doc = np.repeat(np.arange(count), width)
    sort = np.lexsort((rank[doc], band_key))
    return _compare(band_key[sort], band[sort], doc[sort], order, bands, block["value"].to_pylist(), config)


def _compare(
    band_key: np.ndarray,
    band: np.ndarray,
    doc: np.ndarray,
    order: list[str],
    bands: np.ndarray,
    values: list[Any],
    config: NearDedupConfig,
) -> pa.Table:
    """The pairs of each bucket at or above the threshold, each compared in the first band the
    pair shares, and one row (member null) counting the candidates compared.

    Band rows are sorted by band hash, then order key; `doc[i]` is band row i's document, whose
    order key, band hashes and value are `order`, `bands` and `values` at that index.
    """
    members: list[str] = []
    keepers: list[str] = []
    similarities: list[float] = []
    compared = 0
    sets: dict[int, np.ndarray] = {}

    def alike(a: int, b: int) -> float:
        if config.verify == "signature":
            return float(np.mean(np.asarray(values[a], dtype=np.uint64) == np.asarray(values[b], dtype=np.uint64)))
        for d in (a, b):
            if d not in sets:
                sets[d] = shingle_sets([values[d]], config.ngram)[0]
        return jaccard(sets[a], sets[b])

    for start, end in _runs(band_key):
        here = int(band[start])
        bucket = doc[start:end]
        for j in range(1, len(bucket)):
            for i in range(min(j, MAX_BUCKET)):
                a, b = int(bucket[i]), int(bucket[j])
                if here and (bands[a, :here] == bands[b, :here]).any():
                    continue  # compared in an earlier band the pair shares
                compared += 1
                similarity = alike(a, b)
                if similarity >= config.threshold:
                    members.append(order[b])
                    keepers.append(order[a])
                    similarities.append(similarity)
    return _edges_table(members, keepers, similarities, compared)


def _edges_table(members: list[str], keepers: list[str], similarities: list[float], compared: int) -> pa.Table:
    return pa.table(
        {
            "member": pa.array([*members, None], pa.string()),
            "keeper": pa.array([*keepers, None], pa.string()),
            "similarity": pa.array([*similarities, None], pa.float64()),
            "candidates": pa.array([0] * len(members) + [compared], pa.int64()),
        }
    )


def first_keepers(edges: list[tuple[str, str]]) -> dict[str, str]:
    """Each duplicate -> the document it duplicates: in each connected group, in key order, a
    document is kept unless an edge joins it to one kept before it (the first such one)."""
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    alike: dict[str, set[str]] = {}
    for a, b in edges:
        alike.setdefault(a, set()).add(b)
        alike.setdefault(b, set()).add(a)
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    groups: dict[str, list[str]] = {}
    for node in alike:
        groups.setdefault(find(node), []).append(node)
    duplicate_of: dict[str, str] = {}
    for nodes in groups.values():
        kept: list[str] = []
        for node in sorted(nodes):
            earlier = [k for k in kept if k in alike[node]]
            if earlier:
                duplicate_of[node] = earlier[0]
            else:
                kept.append(node)
    return duplicate_of


def _mark(batch: pa.Table, name: str, ranks: dict[str, int], keepers: dict[str, str], column: str) -> pa.Table:
    return mark_duplicates(batch, name, "near_duplicate", ranks, lambda key, text: keepers.get(key), column)


class NearDedup(DedupStage):
    type = "near_dedup"
    config_model = NearDedupConfig
    reasons = frozenset({"near_duplicate"})

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.counts: dict[str, int] = {}

    def apply(self, stream: ray.data.Dataset) -> ray.data.Dataset:
        """Reject every live row alike (verified) to a row kept before it in the stable order."""
        ranks, column, config = source_ranks(self.run.sources), self.config.column, self.config
        partitions = shuffle_partitions(self.rows)
        docs = self.map(stream, _doc_rows, ranks=ranks, config=config, column=column)
        if partitions == 0:  # a small input: one block, one task, no shuffle
            found = (
                docs.repartition(1)
                .map_batches(_edges_of_docs, batch_size=None, batch_format="pyarrow", fn_kwargs={"config": config})
                .take_all()
            )
        else:
            members = (
                self.map(stream, _band_rows, ranks=ranks, config=config, column=column)
                .repartition(partitions, keys=["band_key"], sort=True)
                .map_batches(_bucket_members, batch_size=None, batch_format="pyarrow")
            )
            value = pa.large_string() if config.verify == "jaccard" else pa.list_(pa.uint64())
            found = (
                members.join(docs, "inner", partitions, on=("order_key",))
                .map_batches(_joined, batch_format="pyarrow", fn_kwargs={"value": value})
                .repartition(partitions, keys=["band_key"], sort=True)
                .map_batches(_verified_edges, batch_size=None, batch_format="pyarrow", fn_kwargs={"config": config})
                .take_all()
            )
        edges = [(e["member"], e["keeper"]) for e in found if e["member"] is not None]
        keepers = first_keepers(edges)
        bands, rows = lsh_bands(config.threshold, config.num_perm, config.recall)
        self.counts = {
            "bands": bands,
            "rows_per_band": rows,
            "candidates": sum(e["candidates"] for e in found),
            "verified": len(set(edges)),
            "duplicates": len(keepers),
        }
        self.counts["rejected_candidates"] = self.counts["candidates"] - self.counts["verified"]
        return self.map(stream, _mark, name=self.name, ranks=ranks, keepers=keepers, column=column)

    def report(self) -> dict[str, Any]:
        return {"lsh": self.counts} if self.counts else {}
