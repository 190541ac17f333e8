"""The Stage interface: what every stage declares, and what it does.

A stage is one class in one file, its config model at the top of the file.  It declares:

- `kind`: `row` (every row in, every row out, maybe rejected: its flow commits shard by shard),
  `global` (needs all of its input, as dedup does: its flow commits whole), or `split` (one row
  into several with derived ids, as segment does: the rows beyond the first carry its name in
  SPLIT_COLUMN, kun_ray/io/records.py, so the ledger knows how many rows each shard was given);
- `reads` and `adds`: the columns it needs and the ones it adds, with their Arrow types (the
  plan checks that every column a stage reads is made before it);
- `reasons`: the reject reasons it may write;
- `measures`: the columns of `adds` a reject row keeps, and `charts()`, how the report draws them;
- its config's `path(...)` fields (files and models) and `resource(...)` fields (how it runs).

It does:

- `fit(stream, rows)`: values computed once from its input (perplexity's quantile cut), fixed
  in the manifest so a resumed run uses the same; `self.fixed` holds them when `apply` runs;
- `apply(stream)`: a Ray Data transformation of the flow's row stream.  Rows an earlier stage
  rejected (`reject_reason` set) pass through untouched and never reach a model.

Two ready kinds of stage: `RowFilter` (below: `load()` once per worker, then a vectorised
keep-or-reject over live rows) and `LLMStage` (kun_ray/llm/stage.py: a task run by the engine).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import pyarrow as pa
import pyarrow.compute as pc

from kun_ray import crash
from kun_ray.config.base import CpuResources, StageConfig, StorageOptions, resource_fields

if TYPE_CHECKING:
    import ray.data

Kind = Literal["row", "global", "split"]
#: The column of a fit's sample holding each row's hash (Stage.sample).
SAMPLE_KEY = "__sample_key__"


@dataclass(frozen=True)
class RunContext:
    """What a stage may know of its run beyond its own section."""

    #: The run's default storage options (models on object storage).
    storage: StorageOptions
    #: The sources in the config's order: dedup keeps the first of a group in this order.
    sources: tuple[str, ...]


@dataclass(frozen=True)
class Chart:
    """A measure the report draws as a histogram, kept rows and cut rows apart, with the cut marked."""

    column: str
    title: str
    #: The x axis' label ("tokens", "perplexity", "score").
    unit: str
    threshold: float | None
    #: Which side of the threshold is kept: "max" (at or below), "min" (at or above).
    side: Literal["max", "min"]
    #: The key of the stage's fixed values that holds the threshold, when `fit` chooses it.
    fixed: str | None = None


class Stage:
    """One stage of a run: a named instance of a registered stage type, with its section of the config."""

    #: The registry key: the config section's name, or its `stage:` when one type runs twice.
    type: ClassVar[str]
    config_model: ClassVar[type[StageConfig]]
    kind: ClassVar[Kind] = "row"
    reads: ClassVar[dict[str, pa.DataType]] = {"text": pa.large_string()}
    adds: ClassVar[dict[str, pa.DataType]] = {}
    reasons: ClassVar[frozenset[str]] = frozenset()
    measures: ClassVar[tuple[str, ...]] = ()

    def __init__(self, name: str, config: StageConfig, run: RunContext):
        self.name = name
        self.config = config
        self.run = run
        #: The values `fit` fixed for this run (from the manifest), when the stage fits any.
        self.fixed: dict[str, Any] | None = None
        #: The schema of the rows it gets, as the plan knows it (None outside a plan).
        self.input_schema: pa.Schema | None = None
        #: At most how many rows it gets, when the run knows (its flow's input): a global stage
        #: sizes its shuffles by it.
        self.rows: int | None = None

    @classmethod
    def build(
        cls,
        name: str | None = None,
        storage: StorageOptions | None = None,
        sources: tuple[str, ...] = (),
        **fields: Any,
    ) -> Stage:
        """A stage outside a run (a notebook, a test): its config from keyword fields."""
        return cls(name or cls.type, cls.config_model(**fields), RunContext(storage or StorageOptions(), sources))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"

    # --- declarations that may depend on the config ---------------------------------------------

    def columns_read(self) -> dict[str, pa.DataType]:
        return dict(self.reads)

    def columns_added(self) -> dict[str, pa.DataType]:
        return dict(self.adds)

    def charts(self) -> list[Chart]:
        """The report's histograms of this stage's measures."""
        return []

    def report(self) -> dict[str, Any]:
        """What report.json says of this stage beside its counts."""
        return {}

    def warnings(self) -> list[str]:
        """Settings of this stage that do nothing as configured, each in words naming the key:
        `kun-ray validate` prints them, and a run logs them and lists them in report.json."""
        return []

    def settings(self) -> dict[str, Any]:
        """Its settings that decide what it keeps (not its resources), as `kun-ray validate` shows them."""
        skip = {"enabled", *resource_fields(type(self.config))}
        values = self.config.model_dump(mode="json", exclude=skip)
        return {key: value for key, value in values.items() if value not in (None, [], {})}

    # --- what it does -------------------------------------------------------------------------

    #: Whether `fit` computes values from the input (then they are fixed in the manifest).
    fits: ClassVar[bool] = False
    #: Whether a rerun gives the same rows (a sampling model does not): a global stage, which reads
    #: its input twice, may not follow a stage that is not in its flow.
    deterministic: ClassVar[bool] = True
    #: Whether columns it does not know pass through it (an LLM stage's rows are rebuilt to its
    #: declared schema): a split stage's accounting column must, so none may follow one in its flow.
    carries_columns: ClassVar[bool] = True

    def prepare(self) -> None:
        """Checks that need more than the config (a tokenizer to load), on the driver before any flow runs."""

    def sample(self) -> tuple[int, int] | None:
        """(size, seed) when `fit` needs only a sample of its input: the flow's input is sampled by
        a hash of the rows' ids (column SAMPLE_KEY) before the stages before this one run on it."""
        return None

    def fit(self, stream: ray.data.Dataset, rows: int) -> dict[str, Any]:
        """Values computed once from the rows this stage would see (or a sample of them, see
        `sample`), of `rows` input rows at most."""
        raise NotImplementedError

    def apply(self, stream: ray.data.Dataset) -> ray.data.Dataset:
        raise NotImplementedError

    # --- helpers for subclasses -------------------------------------------------------------------

    def task_options(self) -> dict[str, Any]:
        """map_batches options for the stage's CPU tasks, from its resource fields."""
        config = self.config
        options: dict[str, Any] = {"batch_format": "pyarrow"}
        if isinstance(config, CpuResources):
            options.update(batch_size=config.batch_size, num_cpus=config.num_cpus)
            if config.concurrency is not None:
                options["concurrency"] = config.concurrency
        return options

    def map(self, stream: ray.data.Dataset, fn: Callable[..., pa.Table], **kwargs: Any) -> ray.data.Dataset:
        """`stream.map_batches(fn)` as Ray tasks with the stage's resources."""
        return stream.map_batches(fn, fn_kwargs=kwargs, **self.task_options())

    @property
    def key(self) -> str:
        """The stage's identity within a worker process: its name, config and fixed values."""
        data = json.dumps([self.name, self.config.model_dump(mode="json"), self.fixed], sort_keys=True, default=str)
        return f"{self.type}:{self.name}:{hashlib.sha1(data.encode()).hexdigest()[:12]}"


@dataclass
class Verdicts:
    """A filter's answer for a batch of live rows: the rows (with its columns added, or its text
    rewritten), and per row a reject reason or None, with a detail."""

    rows: pa.Table
    reasons: list[str | None]
    details: list[str | None]


class RowFilter(Stage):
    """A row stage run as Ray tasks: `load()` once per worker process, then `keep_or_reject`
    over the live rows of each batch.

    Tasks, not actors: they give their CPU back between batches, so a chain of filters never
    starves the reads feeding it, and Ray fuses consecutive filters into one operator.
    """

    def load(self) -> None:
        """Load what the filter needs (a tokenizer, a KenLM model): once per worker process."""

    def keep_or_reject(self, rows: pa.Table) -> Verdicts:
        raise NotImplementedError

    def apply(self, stream: ray.data.Dataset) -> ray.data.Dataset:
        return self.map(stream, filter_batch, stage=self)


def filter_batch(batch: pa.Table, stage: RowFilter) -> pa.Table:
    from kun_ray.io.fetch import loaded_once

    def loaded() -> RowFilter:
        stage.load()
        return stage

    ready = loaded_once(stage.key, loaded)
    crash.point(f"worker:{stage.name}")
    return on_live_rows(batch, stage.name, ready.keep_or_reject)


def on_live_rows(batch: pa.Table, stage: str, keep_or_reject: Callable[[pa.Table], Verdicts]) -> pa.Table:
    """Apply a filter to the rows not yet rejected and mark the ones it rejects with `stage`;
    rows rejected before pass through untouched, with the new columns null."""
    live_mask = pc.is_null(batch["reject_reason"])
    verdicts = keep_or_reject(batch.filter(live_mask))  # called on empty batches too: stable schema
    stages = [None if reason is None else stage for reason in verdicts.reasons]
    rows = replace_column(verdicts.rows, "reject_stage", pa.array(stages, pa.string()))
    rows = replace_column(rows, "reject_reason", pa.array(verdicts.reasons, pa.string()))
    rows = replace_column(rows, "reject_detail", pa.array(verdicts.details, pa.large_string()))
    dead = batch.filter(pc.invert(live_mask))
    return pa.concat_tables([rows, dead], promote_options="default")


def replace_column(table: pa.Table, name: str, values: pa.Array) -> pa.Table:
    index = table.schema.get_field_index(name)
    return table.set_column(index, name, values) if index >= 0 else table.append_column(name, values)


def sample_rows(stream: ray.data.Dataset, size: int, rows: int, seed: int) -> ray.data.Dataset:
    """About 1.5 x `size` rows of `rows`, picked by a hash of (seed, source, doc_id) kept in
    SAMPLE_KEY: the same sample whatever order Ray Data streams the blocks in, so a clean run and
    a resumed one agree."""
    fraction = min(1.0, 1.5 * size / max(1, rows))
    below = min(2**64 - 1, int(fraction * 2**64))
    return stream.map_batches(_sample_keys, batch_format="pyarrow", fn_kwargs={"seed": seed, "below": below})


def _sample_keys(batch: pa.Table, seed: int, below: int) -> pa.Table:
    keys = [
        int.from_bytes(hashlib.blake2b(f"{seed}\x1f{s}\x1f{d}".encode(), digest_size=8).digest(), "big")
        for s, d in zip(batch["source"].to_pylist(), batch["doc_id"].to_pylist())
    ]
    mask = pa.array([k < below for k in keys], pa.bool_())
    return batch.append_column(SAMPLE_KEY, pa.array(keys, pa.uint64())).filter(mask)
