"""exact_dedup: one document per normalized text, across all sources (or per instruction, in the final stage).

A 128-bit BLAKE2 hash of the text (already normalized by the normalize stage) is grouped with
Ray Data (`groupby(...).aggregate(Count, Min)`: a distributed hash aggregation, not a set on
the driver; a small input is grouped in one task instead); only the hashes seen more than
once, each with its keeper, come back to the driver, and a second pass rejects every other
holder of those hashes as `exact_duplicate`.
"""

from __future__ import annotations

import hashlib

import pyarrow as pa
import ray.data
from ray.data.aggregate import Count, Min
from ray.data.expressions import col

from kun_ray.config.base import CpuResources, since
from kun_ray.dedup.base import DedupStage, live_keys, mark_duplicates, shuffle_partitions, source_ranks


class ExactDedupConfig(CpuResources):
    """Drop texts identical to one kept earlier (source order in the config, then doc_id)."""

    #: The column compared: the text, or the instruction (the final flow's instruction_exact_dedup).
    column: str = since("0.2", "text")


def text_hash(text: str) -> str:
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()


def _hash_keys(batch: pa.Table, ranks: dict[str, int], column: str) -> pa.Table:
    live, keys = live_keys(batch, ranks)
    hashes = [text_hash(t) for t in live[column].to_pylist()]
    return pa.table({"text_hash": pa.array(hashes, pa.string()), "order_key": pa.array(keys, pa.string())})


def _groups(block: pa.Table) -> pa.Table:
    """What the distributed aggregation gives, for a block that holds every key: each hash, how
    many rows hold it, and the first of them in the stable order."""
    grouped = block.group_by("text_hash").aggregate([("order_key", "count"), ("order_key", "min")])
    return grouped.select(["text_hash", "order_key_count", "order_key_min"]).rename_columns(
        ["text_hash", "n", "keeper"]
    )


def _mark(batch: pa.Table, name: str, ranks: dict[str, int], keepers: dict[str, str], column: str) -> pa.Table:
    return mark_duplicates(
        batch, name, "exact_duplicate", ranks, lambda key, text: keepers.get(text_hash(text)), column
    )


class ExactDedup(DedupStage):
    type = "exact_dedup"
    config_model = ExactDedupConfig
    reasons = frozenset({"exact_duplicate"})

    def apply(self, stream: ray.data.Dataset) -> ray.data.Dataset:
        """Reject every live row whose column equals that of a row earlier in the stable order."""
        ranks, column = source_ranks(self.run.sources), self.config.column
        keys = self.map(stream, _hash_keys, ranks=ranks, column=column)
        partitions = shuffle_partitions(self.rows)
        if partitions == 0:  # a small input: grouped in one task, no shuffle
            groups = keys.repartition(1).map_batches(_groups, batch_size=None, batch_format="pyarrow")
        else:
            groups = keys.groupby("text_hash", num_partitions=partitions).aggregate(
                Count(alias_name="n"), Min("order_key", alias_name="keeper")
            )
        keepers = {row["text_hash"]: row["keeper"] for row in groups.filter(expr=col("n") > 1).iter_rows()}
        return self.map(stream, _mark, name=self.name, ranks=ranks, keepers=keepers, column=column)
