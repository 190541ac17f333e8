"""Reading a run back: its stages as Ray Datasets, SQL over them with DuckDB, one document's trace.

    run = kun_ray.Run.open("s3://bucket/runs/kun")    # a run folder, local or on object storage,
                                                      # or the config that writes it
    run.stages                                        # ['documents', 'filtered', 'clean', 'labeled', ...]
    run.stage("scored").to_pandas()                   # a Ray Dataset
    run.rejects(stage="score", reason="score_below_min")
    run.sql("SELECT source, count(*) FROM final GROUP BY source").df()
    print(run.trace("wudao-000123"))                  # where a document went, or where it was dropped

Only what a run has committed is read (kun_ray/ledger.py): a run that is still going, or one
that crashed, reads as the shards it has finished, never as a half-written file.  The funnel is
counted from the same commits, so it is live too; report.json is written when a run ends.
"""

from __future__ import annotations

import math
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kun_ray.config.base import StorageOptions
from kun_ray.io.records import DOCUMENT_SCHEMA, REJECT_SCHEMA
from kun_ray.io.storage import is_local, to_url
from kun_ray.ledger import Ledger
from kun_ray.report import flow_report
from kun_ray.run import MANIFEST, FlowLayout, RunFolder, layout, measures
from kun_ray.trace import Trace, TraceStep

if TYPE_CHECKING:
    import duckdb
    import ray.data

#: Columns a trace shows as a document's own, not as something a stage added.
IDENTITY = ("doc_id", "source", "shard", "record", "text", "title", "meta")


class RunNotFound(LookupError):
    """No kun-ray run at a path, or no such stage or document in it."""


class QueryError(Exception):
    """A query DuckDB could not run: its first line says what and where."""


def _sql_string(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _clean(value: Any) -> Any:
    """A value as a trace shows it: NaN as None."""
    return None if isinstance(value, float) and math.isnan(value) else value


class Run:
    """A run folder, read back.  Open one with `Run.open(path)`.

    It reads the commits once, when opened: of a run that goes on, open it again to see what
    was committed since.
    """

    def __init__(self, folder: RunFolder):
        self.folder = folder
        self.url = folder.url
        if not folder.exists(MANIFEST):
            raise RunNotFound(f"{self.url}: no kun-ray run here (no {MANIFEST})")
        self.manifest: dict[str, Any] = folder.read_json(MANIFEST)
        #: The run's flows, in order, as its plan laid them out.
        self.layout: list[FlowLayout] = layout(self.manifest)
        #: Each flow that has committed shards, in run order.
        self.ledgers = {flow.name: ledger for flow in self.layout if (ledger := Ledger(folder, flow.name)).shards}
        self._outputs = {flow.name: flow.output for flow in self.layout}

    @classmethod
    def open(cls, path: str | Path, storage: StorageOptions | dict[str, Any] | None = None) -> Run:
        """The run at `path`: a run folder (local, s3://, gs://), or a config file (.yaml), whose
        output and storage are used.

        `storage` reaches object storage the way a config's `storage:` does, e.g. {"endpoint_url": ...}.
        """
        text = str(path)
        if text.endswith((".yaml", ".yml")) and Path(text).is_file():
            from kun_ray.plan import load_config

            config = load_config(text)
            return cls(RunFolder.of(config))
        options = storage if isinstance(storage, StorageOptions) else StorageOptions(**(storage or {}))
        return cls(RunFolder(text.rstrip("/") or text, options))

    def __repr__(self) -> str:
        return f"Run({self.url!r}, stages={self.stages})"

    # --- what is there ---------------------------------------------------------------------

    @property
    def stages(self) -> list[str]:
        """The folders of kept rows this run has committed shards of, in run order."""
        return [self._outputs[flow] for flow in self.ledgers]

    @property
    def export_stage(self) -> str | None:
        """The folder of the flow that exports the run's pairs (final/ by default), once it committed."""
        exporting = [flow.output for flow in self.layout if flow.export and flow.name in self.ledgers]
        return exporting[-1] if exporting else None

    @property
    def measures(self) -> list[str]:
        """The measure columns the run's stages declare (n_tokens, ppl, score, ...), which reject rows keep."""
        return measures(self.manifest)

    @property
    def report(self) -> dict[str, Any] | None:
        """report.json, written when the run ended; None while it goes on (or if it crashed)."""
        return self.folder.read_json("report.json") if self.folder.exists("report.json") else None

    @property
    def settings(self) -> dict[str, Any]:
        """The settings the run was started with, as flat dotted keys (manifest.json)."""
        return self.manifest["settings"]

    @property
    def finished(self) -> bool:
        return self.report is not None

    def files(self, stage: str) -> list[str]:
        """The committed Parquet files of a stage's folder, relative to the run folder."""
        flow = self._flow(stage)
        return self.ledgers[flow].files(stage)

    def reject_files(self, stage: str | None = None, flow: str | None = None) -> list[str]:
        """The committed reject files: of one stage (rejects/<stage>/), of one flow's stages, or all."""
        prefix = f"rejects/{stage}" if stage else "rejects"
        ledgers = [self.ledgers[flow]] if flow else list(self.ledgers.values())
        return sorted(f for ledger in ledgers for f in ledger.files(prefix))

    def progress(self) -> dict[str, dict[str, Any]]:
        """Each flow that has started: shards committed, of how many it will commit, and whether it is done.

        A flow runs the shards its upstream flow kept rows of; dedup and final commit all theirs at once.
        """
        progress: dict[str, dict[str, Any]] = {}
        of, upstream_done = len(self.settings.get("inputs", [])), True
        for flow, ledger in self.ledgers.items():
            if ledger.whole:
                of, done = len(ledger.shards), upstream_done
            else:
                done = upstream_done and len(ledger.shards) >= of
            progress[flow] = {"stage": self._outputs[flow], "shards": len(ledger.shards), "of": of, "done": done}
            of, upstream_done = sum(1 for kept in ledger.kept().values() if kept), done
        return progress

    def funnel(self) -> list[dict[str, Any]]:
        """Each stage's rows in, kept and rejected by reason, overall and per source, counted from
        the commits: report.json's `stages`, live while the run goes on."""
        stages = []
        for flow, ledger in self.ledgers.items():
            tally = ledger.tally()
            # Commits written before they named their stages: the stages that rejected rows, or the flow.
            names = ledger.stages or sorted({stage for stage, _, _ in tally if stage}) or [flow]
            stages.extend({**step, "flow": flow} for step in flow_report(names, tally, splits=ledger.splits()))
        return stages

    def _flow(self, stage: str) -> str:
        for flow, output in self._outputs.items():
            if output == stage and flow in self.ledgers:
                return flow
        known = ", ".join(self.stages) or "none yet"
        raise RunNotFound(f"{self.url}: no stage {stage!r} (stages: {known}; rejects are run.rejects())")

    # --- Ray Datasets ------------------------------------------------------------------------

    def stage(self, name: str) -> ray.data.Dataset:
        """A stage's kept rows as a Ray Dataset (`.to_pandas()`, `.take(5)`, `.filter(...)`, ...)."""
        import ray.data

        files = self.files(name)
        if not files:
            return ray.data.from_arrow(DOCUMENT_SCHEMA.empty_table())
        return self.folder.read_parquet(files)

    def rejects(
        self, stage: str | None = None, reason: str | None = None, source: str | None = None
    ) -> ray.data.Dataset:
        """Rejected rows as a Ray Dataset: of one stage (e.g. "perplexity", "score"), one reason,
        one source, or all."""
        import ray.data
        from ray.data.expressions import col

        files = self.reject_files(stage)
        if not files:
            return ray.data.from_arrow(REJECT_SCHEMA.empty_table())
        dataset = self.folder.read_parquet(files)
        for column, value in (("reason", reason), ("source", source)):
            if value is not None:
                dataset = dataset.filter(expr=col(column) == value)
        return dataset

    # --- DuckDB --------------------------------------------------------------------------------

    def scan(self, files: list[str]) -> str:
        """A DuckDB table expression over run-folder files (relative paths, as `files()` gives them)."""
        paths = ", ".join(_sql_string(to_url(self.folder.fs, self.folder.path(f))) for f in files)
        return f"read_parquet([{paths}], union_by_name = true)"

    @cached_property
    def connection(self) -> duckdb.DuckDBPyConnection:
        """A DuckDB connection with a view per stage, `rejects` (every stage's) and `funnel`."""
        import duckdb
        import pyarrow as pa

        con = duckdb.connect()
        if not is_local(self.folder.fs):  # object storage through the same fsspec filesystem the run used
            con.register_filesystem(self.folder.fs)
        empty = ", ".join(f"NULL::VARCHAR AS {f.name}" for f in DOCUMENT_SCHEMA)
        for name in self.stages:
            files = self.files(name)
            body = f"SELECT * FROM {self.scan(files)}" if files else f"SELECT {empty} LIMIT 0"
            con.execute(f"CREATE VIEW {name} AS {body}")
        rejects = self.reject_files()
        no_rejects = (
            f"SELECT {empty}, {', '.join(f'NULL::VARCHAR AS {c}' for c in ('stage', 'reason', 'detail'))} LIMIT 0"
        )
        con.execute(f"CREATE VIEW rejects AS {f'SELECT * FROM {self.scan(rejects)}' if rejects else no_rejects}")
        rows = [
            {
                "flow": step["flow"],
                "stage": step["stage"],
                "source": source,
                "rows_in": counts["in"],
                "kept": counts["kept"],
                "rejected": counts["rejected"],
            }
            for step in self.funnel()
            for source, counts in step["by_source"].items()
        ]
        funnel = pa.Table.from_pylist(
            rows,
            schema=pa.schema(
                [
                    ("flow", pa.string()),
                    ("stage", pa.string()),
                    ("source", pa.string()),
                    ("rows_in", pa.int64()),
                    ("kept", pa.int64()),
                    ("rejected", pa.int64()),
                ]
            ),
        )
        con.register("_funnel", funnel)
        con.execute("CREATE VIEW funnel AS SELECT * FROM _funnel")
        return con

    def sql(self, query: str) -> duckdb.DuckDBPyRelation:
        """A DuckDB query over the run: each stage is a view (documents, filtered, clean, labeled,
        scored, polished, final), and so are `rejects` and `funnel` (flow, stage, source, rows_in,
        kept, rejected).  `.df()`, `.to_dicts()`, `.fetchall()` or `.show()` the result."""
        return self.connection.sql(query)

    def rows(self, query: str, params: list[Any] | None = None) -> list[dict[str, Any]]:
        """A query's rows as dicts (NaN as None), with `?` parameters."""
        cursor = self.connection.execute(query, params or [])
        columns = [d[0] for d in cursor.description]
        return [dict(zip(columns, map(_clean, values))) for values in cursor.fetchall()]

    def sample(self, name: str, n: int, where: str | None = None, seed: int = 0) -> list[dict[str, Any]]:
        """`n` rows of a stage (or `rejects`) picked at random, the same ones for the same seed;
        `where` is a SQL condition on its columns."""
        relation = self.table(name)
        if where:
            relation = relation.filter(where)
        return self.rows(
            f"SELECT * FROM ({relation.sql_query()}) USING SAMPLE reservoir({int(n)} ROWS) REPEATABLE ({int(seed)})"
        )

    def table(self, name: str) -> duckdb.DuckDBPyRelation:
        """A stage (or `rejects`, `funnel`) as a DuckDB relation: `.filter("score > 0.8").df()`."""
        if name not in (*self.stages, "rejects", "funnel"):
            self._flow(name)
        return self.connection.table(name)

    # --- one document ---------------------------------------------------------------------------

    def trace(self, doc_id: str, source: str | None = None) -> Trace:
        """Where a document went: each stage that kept it, with what that stage added, and the
        stage that dropped it, with the reason and detail.  `source` picks one when two sources share an id."""
        where = "doc_id = ?" + (" AND source = ?" if source else "")
        params = [doc_id, source] if source else [doc_id]
        found: dict[str, list[tuple[str, dict[str, Any]]]] = {}
        for name in [*self.stages, "rejects"]:
            for row in self.rows(f"SELECT * FROM {name} WHERE {where}", params):
                found.setdefault(row["source"], []).append((name, row))
        if not found:
            which = f" of source {source!r}" if source else ""
            raise RunNotFound(f"{self.url}: no document {doc_id!r}{which} in any committed stage or reject")
        if len(found) > 1:
            raise RunNotFound(
                f"{self.url}: document {doc_id!r} is in sources {', '.join(sorted(found))}: pass source="
            )
        ((source_name, rows),) = found.items()
        steps: list[TraceStep] = []
        seen: dict[str, Any] = {}
        for name, row in rows:
            if name == "rejects":
                measures = {
                    k: v
                    for k, v in row.items()
                    if k in (*self.measures, "instruction", "answer") and v is not None and seen.get(k) != v
                }
                steps.append(TraceStep(row["stage"], False, measures, row["reason"], row["detail"]))
            else:
                added = {k: v for k, v in row.items() if k not in IDENTITY and v is not None and k not in seen}
                steps.append(TraceStep(name, True, added))
                seen.update(row)
        if steps and steps[-1].kept:
            steps += self._split_steps(doc_id, source_name)
        first = rows[0][1]
        return Trace(doc_id, source_name, first["shard"], first["text"], steps)

    def _split_steps(self, doc_id: str, source: str) -> list[TraceStep]:
        """Where a split stage (segment) made rows of a document, each with its own id
        (`<doc_id>#<n>`), kept in its flow's folder or rejected by a stage after it: a step naming
        them, to trace each by its id."""
        steps = []
        declared = (self.manifest.get("plan") or {}).get("stages", {})
        for flow in self.layout:
            for i, stage in enumerate(flow.stages):
                if declared.get(stage, {}).get("kind") != "split" or flow.name not in self.ledgers:
                    continue
                after = ", ".join(_sql_string(s) for s in flow.stages[i + 1 :]) or "NULL"
                query = (
                    f"SELECT doc_id FROM rejects WHERE starts_with(doc_id, ?) AND source = ? AND stage IN ({after})"
                )
                params = [f"{doc_id}#", source]
                if "segment_of" in self.table(flow.output).columns:
                    query += f" UNION SELECT doc_id FROM {flow.output} WHERE segment_of = ? AND source = ?"
                    params += [doc_id, source]
                ids = [row["doc_id"] for row in self.rows(query, params)]
                made = sorted(ids, key=lambda made_id: int(made_id.rsplit("#", 1)[1]))
                if made:
                    steps.append(TraceStep(stage, True, {"split into": ", ".join(made)}))
        return steps
