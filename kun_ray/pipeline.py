"""Runs a plan (kun_ray/plan.py) on Ray Data, flow by flow, and keeps the accounting.

    read      files -> documents/                       (one task per file, streaming)
    then each flow of the plan, in order; by default (kun_ray/stages/registry.py DEFAULT_FLOWS):
    filter    documents/ -> normalize -> segment -> length -> perplexity -> heuristics -> filtered/
    dedup     filtered/ -> exact_dedup -> near_dedup -> clean/
    label     clean/ -> label (vLLM actors) -> labeled/
    score     labeled/ -> score (vLLM actors) -> scored/
    polish    scored/ -> polish (vLLM actors) -> polished/
    final     last of those -> instruction_exact_dedup -> instruction_near_dedup -> final/,
              then export/alpaca/ and export/messages/ (JSONL)

Each flow is one Ray Data pipeline whose rows, kept and rejected, are written once; every
input record ends in the flow's output or in rejects/<stage>/ with its reason.  A flow of row
stages commits shard by shard; a flow with a global stage (dedup) commits whole.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa
import ray.data

from kun_ray import __version__, crash
from kun_ray.config.base import ConfigError
from kun_ray.config.run import RunConfig
from kun_ray.io.export import alpaca_rows, messages_rows
from kun_ray.io.read import InputFile, file_blocks, input_files, plan_inputs
from kun_ray.lease import Lease
from kun_ray.ledger import BlockWriter, Ledger, ShardCommit, drain, write_block
from kun_ray.llm.stage import LLMStage
from kun_ray.plan import Flow, Plan, build_plan
from kun_ray.report import flow_report
from kun_ray.run import MANIFEST, RunFolder, layout, run_settings
from kun_ray.stages.base import sample_rows
from kun_ray.stages.registry import READ_FLOW, READ_OUTPUT

logger = logging.getLogger("kun_ray")


def _read_and_write(batch: pa.Table, config: RunConfig, writer: BlockWriter) -> Iterator[pa.Table]:
    """The read flow's task: read a file and write its rows as it goes; one part per file, at its end."""
    for item in batch.to_pylist():
        file = InputFile(**item)
        part = writer.write_shard(file_blocks(file, config))
        yield pa.table({"parts": [json.dumps({file.shard: {**part, "total": part["rows"]}})]})


@dataclass
class Start:
    """Where a run that starts from another run's rows (`start:`) takes them: that run's ledger
    of the flow, the flow's folder there, and that run's manifest."""

    ledger: Ledger
    output: str
    manifest: dict[str, Any]

    @property
    def url(self) -> str:
        return self.ledger.folder.url

    @property
    def rows(self) -> int:
        """The rows it starts from: what the flow kept there."""
        return sum(self.ledger.kept().values())


def starting_point(config: RunConfig) -> Start | None:
    """The committed rows a config's `start:` names; None for a run that reads its sources.  A
    ConfigError when the run folder holds no run, or the flow is not there or not finished."""
    if config.start is None:
        return None
    url, name = config.start.run, config.start.flow
    folder = RunFolder(url, config.storage_for(config.start.storage))
    if not folder.exists(MANIFEST):
        raise ConfigError(f"start.run: {url} holds no run (no {MANIFEST})")
    manifest = folder.read_json(MANIFEST)
    flows = layout(manifest)
    names = [flow.name for flow in flows]
    if name not in names:
        raise ConfigError(f"start.flow: the run at {url} has no flow {name!r} (flows: {', '.join(names)})")
    i = names.index(name)
    ledger = Ledger(folder, name)
    if flows[i].whole:
        finished = ledger.whole
    elif i == 0:
        finished = bool(ledger.shards) and folder.exists("report.json")
    else:  # every shard the flow before it kept rows of
        finished = all(s in ledger.shards for s, kept in Ledger(folder, names[i - 1]).kept().items() if kept)
    if not finished:
        raise ConfigError(
            f"start.flow: flow {name} of the run at {url} is not finished: run that run to its end first"
        )
    return Start(ledger, flows[i].output, manifest)


class RunFlows:
    """One invocation of a run: its flows in order, each resuming from its commits."""

    def __init__(
        self,
        config: RunConfig,
        plan: Plan,
        inputs: list[InputFile],
        lease: Lease,
        fresh: bool,
        force: bool,
        start: Start | None = None,
    ):
        self.config = config
        self.plan = plan
        self.inputs = inputs
        self.folder = lease.folder
        self.lease = lease
        lease.confirm()  # a driver whose lease was taken over while it prepared writes nothing
        self.folder.remove_partials(lease.since)
        settings = run_settings(config, inputs, start.manifest if start else None)
        self.manifest = self.folder.open(settings, plan.to_json(), fresh=fresh, force=force)
        self.stages: list[dict[str, Any]] = []
        self.flows: dict[str, dict[str, Any]] = {}

    def _writer(self, output: str, sums: tuple[str, ...] = ()) -> BlockWriter:
        """A flow's writer: kept rows to `output`, rejects with the plan's measures, totals of `sums`."""
        root = self.folder.root.rstrip("/")
        return BlockWriter(self.folder.arrow_fs, root, output, sums, self.plan.measures, self.lease.tag)

    def _account(self, ledger: Ledger, extras: dict[str, dict[str, Any]], timing: dict[str, Any]) -> Ledger:
        """Add a flow's stages and timing to the report; the flow's ledger, for the flow after it."""
        stages = [
            {**stage, "flow": ledger.flow}
            for stage in flow_report(ledger.stages, ledger.tally(), extras, ledger.splits())
        ]
        self.stages.extend(stages)
        self.flows[ledger.flow] = timing
        kept = sum(ledger.kept().values())
        rejected = sum(n for (stage, _, _), n in ledger.tally().items() if stage is not None)
        rows_in = stages[0]["in"] if stages else kept + rejected
        counts = f"{rows_in:,} in, {kept:,} kept, {rejected:,} rejected"
        shards, resumed, wall = timing["shards"], timing["shards_resumed"], timing["wall_s"]
        logger.info("%s: %s; %d shards (%d done before), %.1f s this run", ledger.flow, counts, shards, resumed, wall)
        return ledger

    @staticmethod
    def _timing(ledger: Ledger, resumed: int, clock: float, done: ShardCommit) -> dict[str, Any]:
        wall = time.monotonic() - clock
        rate = round(done.rows / wall, 1) if wall else None
        return {
            "shards": len(ledger.shards),
            "shards_resumed": resumed,
            "rows": done.rows,
            "wall_s": round(wall, 3),
            "rows_per_s": rate,
        }

    def read(self) -> Ledger:
        ledger = Ledger(self.folder, READ_FLOW, [READ_FLOW], self.lease)
        pending = [f for f in self.inputs if f.shard not in ledger.shards]
        resumed, clock, done = len(ledger.shards), time.monotonic(), ShardCommit()
        folders = [READ_OUTPUT, f"rejects/{READ_FLOW}"]
        if pending:
            ledger.collect_garbage(folders)
            files = input_files(pending).map_batches(
                _read_and_write, batch_size=1, batch_format="pyarrow", num_cpus=self.config.read.num_cpus,
                fn_kwargs={"config": self.config, "writer": self._writer(READ_OUTPUT)},
            )  # fmt: skip
            _, done = drain(_parts(files), ledger, None, len(pending))
            ledger.collect_garbage(folders)
        return self._account(
            ledger, {READ_FLOW: {"files": len(self.inputs)}}, self._timing(ledger, resumed, clock, done)
        )

    def _stream(self, flow: Flow, upstream: Ledger, source: str, shards: list[str] | None) -> ray.data.Dataset:
        """The flow's input with its stages applied; each stage that fits gets its values,
        fixed in the manifest on first use so a resumed run uses the same."""
        files = upstream.files(source, shards)
        stream = upstream.folder.read_files(files)  # this run's folder, or the one it starts from
        fixed = self.manifest["fixed"]
        rows = sum(upstream.kept().values())
        for i, stage in enumerate(flow.stages):
            stage.rows = rows
            if stage.fits and stage.name not in fixed:
                sample = upstream.folder.read_files(files)
                if (size := stage.sample()) is not None:
                    sample = sample_rows(sample, size[0], rows, size[1])
                for before in flow.stages[:i]:
                    sample = before.apply(sample)
                fixed[stage.name] = stage.fit(sample, rows)
                self.lease.confirm()
                self.folder.write_json(MANIFEST, self.manifest)
            stage.fixed = fixed.get(stage.name)
            stream = stage.apply(stream)
        return stream

    def flow(self, flow: Flow, upstream: Ledger, source: str) -> Ledger:
        """Run a flow: a flow of row stages commits shard by shard, one with a global stage
        (dedup) all of it at once, after its export if it has one."""
        ledger = Ledger(self.folder, flow.name, [stage.name for stage in flow.stages], self.lease)
        folders = [flow.output, *(f"rejects/{stage.name}" for stage in flow.stages)]
        sums = tuple(stage.tokens_column for stage in flow.stages if isinstance(stage, LLMStage))
        clock, done = time.monotonic(), ShardCommit()
        for stage in flow.stages:  # what a resumed flow reports, even with nothing left to run
            stage.fixed = self.manifest["fixed"].get(stage.name)
        if flow.whole or flow.export:
            resumed = len(ledger.shards) if ledger.whole else 0
            if not ledger.whole:
                ledger.collect_garbage(folders)
                stream = self._stream(flow, upstream, source, None)
                shards, done = drain(
                    _written(stream, self._writer(flow.output, sums)),
                    ledger,
                    None,
                    len(upstream.shards),
                    whole=True,
                )
                crash.point(f"{flow.name}:written")
                if flow.export:
                    self.export(
                        flow,
                        sorted(
                            f for commit in shards.values() for f in commit.files if f.startswith(flow.output + "/")
                        ),
                    )
                ledger.commit(shards, whole=True, reports={stage.name: stage.report() for stage in flow.stages})
                ledger.collect_garbage(folders)
        else:
            pending = {shard: kept for shard, kept in upstream.kept().items() if kept and shard not in ledger.shards}
            resumed = len(ledger.shards)
            if pending:
                ledger.collect_garbage(folders)
                stream = self._stream(flow, upstream, source, list(pending))
                _, done = drain(_written(stream, self._writer(flow.output, sums)), ledger, pending, len(pending))
                ledger.collect_garbage(folders)
        timing = self._timing(ledger, resumed, clock, done)
        # A whole flow resumed keeps what its stages reported when it ran (near dedup's LSH counts).
        extras = {stage.name: {**ledger.reports.get(stage.name, {}), **stage.report()} for stage in flow.stages}
        for stage in flow.stages:
            if isinstance(stage, LLMStage):
                generated = done.sums[stage.tokens_column]
                rate = round(generated / timing["wall_s"], 1) if timing["wall_s"] and done.rows else None
                extras[stage.name].update(
                    generated_tokens=ledger.sums()[stage.tokens_column], generated_tokens_per_s=rate
                )
        return self._account(ledger, extras, timing)

    def export(self, flow: Flow, files: list[str]) -> None:
        """The exporting flow's files as the JSONL formats the config asks for, replacing earlier exports."""
        self.lease.confirm()
        final = self.folder.read_parquet(files)
        json_args = {"force_ascii": False}  # Chinese stays readable
        formats = self.config.final.formats
        if "alpaca" in formats:
            self.folder.write_json_lines(
                final.map_batches(alpaca_rows, batch_format="pyarrow"), "export/alpaca", json_args
            )
            crash.point(f"{flow.name}:export")
        if "messages" in formats:
            rows = final.map_batches(
                messages_rows, batch_format="pyarrow", fn_kwargs={"system_prompt": self.config.final.system_prompt}
            )
            self.folder.write_json_lines(rows, "export/messages", json_args)


def take_lease(config: RunConfig) -> Lease:
    """The lease on the config's run folder; LeaseHeld when another driver writes it."""
    return Lease.take(RunFolder.of(config), config.output.lease_timeout_s)


def _written(stream: ray.data.Dataset, writer: BlockWriter) -> Iterator[dict[str, Any]]:
    return _parts(stream.map_batches(write_block, batch_format="pyarrow", fn_kwargs={"writer": writer}))


def _parts(results: ray.data.Dataset) -> Iterator[dict[str, Any]]:
    for row in results.iter_rows():
        yield json.loads(row["parts"])


def run(
    config: RunConfig,
    inputs: list[InputFile] | None = None,
    fresh: bool = False,
    force: bool = False,
    lease: Lease | None = None,
) -> dict[str, Any]:
    """Run the config's plan on the current Ray cluster; returns the report also written to report.json.

    Over a run folder that already holds this config's run, it resumes: shards every flow has
    committed are not redone.  `fresh` starts over; `force` resumes a run of a changed config.
    `inputs` are the files `plan_inputs(config)` lists; they are listed here when not given.
    The run holds the folder's lease (kun_ray/lease.py) throughout: taken here and given back at
    the end, unless the caller took it (`lease`) and gives it back itself.
    """
    if lease is None:
        with take_lease(config) as lease:
            return run(config, inputs, fresh, force, lease)
    started = datetime.now(UTC)
    clock = time.monotonic()
    inputs = plan_inputs(config) if inputs is None else inputs
    plan = build_plan(config)
    start = starting_point(config)
    for stage in plan.stages():  # engines, tokenizers: config errors before any flow runs
        stage.prepare()
    for warning in plan.warnings():
        logger.warning("warning: %s", warning)
    job = RunFlows(config, plan, inputs, lease, fresh, force, start)
    if start is None:
        previous, source = job.read(), READ_OUTPUT
    else:
        previous, source = start.ledger, start.output
        logger.info("start: %s rows that flow %s committed in %s", f"{start.rows:,}", previous.flow, start.url)
    for flow in plan.flows:
        if not any(previous.kept().values()):
            break
        previous, source = job.flow(flow, previous, source), flow.output

    report = {
        "kun_ray_version": __version__,
        "output": job.folder.url,
        "fingerprint": job.manifest["fingerprint"],
        "started_at": started.isoformat(timespec="seconds"),
        "wall_s": round(time.monotonic() - clock, 3),
        "flows": job.flows,
        "sources": {
            s.name: {"format": s.format, "files": sum(f.source == s.name for f in inputs)} for s in config.sources
        },
        "stages": job.stages,
        "warnings": plan.warnings(),
    }
    if start is not None:
        report["start"] = {
            "run": start.url,
            "flow": start.ledger.flow,
            "fingerprint": start.manifest["fingerprint"],
            "rows": start.rows,
        }
    lease.confirm()
    job.folder.write_json("report.json", report)
    return report
