"""exact_dedup: one document per normalized text, across all sources (or per instruction, in the final stage).

A 128-bit BLAKE2 hash of the text (already normalized by the normalize stage) is grouped with
Ray Data (`groupby(...).aggregate(Count, Min)`: a distributed hash aggregation, not a set on
the driver); only the hashes seen more than once, each with its keeper, come back to the
driver, and a second pass rejects every other holder of those hashes as `exact_duplicate`.
"""

from __future__ import annotations

import hashlib

import pyarrow as pa
import ray.data
from ray.data.aggregate import Count, Min
from ray.data.expressions import col

from kun_ray.clean.dedup import live_keys, mark_duplicates, shuffle_partitions
from kun_ray.clean.stage import map_stage
from kun_ray.config import StageConfig


def text_hash(text: str) -> str:
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()


def _hash_keys(batch: pa.Table, ranks: dict[str, int], column: str) -> pa.Table:
    live, keys = live_keys(batch, ranks)
    hashes = [text_hash(t) for t in live[column].to_pylist()]
    return pa.table({"text_hash": pa.array(hashes, pa.string()), "order_key": pa.array(keys, pa.string())})


def _mark(batch: pa.Table, name: str, ranks: dict[str, int], keepers: dict[str, str], column: str) -> pa.Table:
    return mark_duplicates(batch, name, "exact_duplicate", ranks, lambda key, text: keepers.get(text_hash(text)), column)


def exact_dedup(stream: ray.data.Dataset, ranks: dict[str, int], stage: StageConfig, name: str = "exact_dedup", column: str = "text") -> ray.data.Dataset:
    """Reject, as stage `name`, every live row whose `column` equals that of a row earlier in the stable order."""
    keys = map_stage(stream, _hash_keys, stage, ranks=ranks, column=column)
    groups = keys.groupby("text_hash", num_partitions=shuffle_partitions()).aggregate(Count(alias_name="n"), Min("order_key", alias_name="keeper"))
    keepers = {row["text_hash"]: row["keeper"] for row in groups.filter(expr=col("n") > 1).iter_rows()}
    return map_stage(stream, _mark, stage, name=name, ranks=ranks, keepers=keepers, column=column)
