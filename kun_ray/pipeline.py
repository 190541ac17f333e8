"""Assembles the stages a config asks for into Ray Data flows, and keeps the accounting.

    read      files -> documents/                       (one task per file, streaming)
    filter    documents/ -> normalize -> length -> perplexity -> heuristics -> filtered/
    dedup     filtered/ -> exact_dedup -> near_dedup -> clean/
    label     clean/ -> label (vLLM actors) -> labeled/
    score     labeled/ -> score (vLLM actors) -> scored/
    polish    scored/ -> polish (vLLM actors) -> polished/
    final     last of those -> instruction_exact_dedup -> instruction_near_dedup -> final/,
              then export/alpaca/ and export/messages/ (JSONL)

Each flow is one Ray Data pipeline whose rows, kept and rejected, are written once; every
input record ends in the flow's output or in rejects/<stage>/ with its reason.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from typing import Any

import pyarrow as pa
import ray.data

from kun_ray import __version__
from kun_ray.clean.dedup import source_ranks
from kun_ray.clean.exact_dedup import exact_dedup
from kun_ray.clean.heuristics import heuristics_batch
from kun_ray.clean.length import length_batch
from kun_ray.clean.near_dedup import near_dedup
from kun_ray.clean.normalize import normalize_batch, normalize_text
from kun_ray.clean.perplexity import PerplexityScorer, perplexity_batch, quantile_cut
from kun_ray.clean.stage import map_stage
from kun_ray.config import RunConfig
from kun_ray.io.export import alpaca_rows, messages_rows
from kun_ray.io.read import InputFile, file_blocks, input_files, plan_inputs
from kun_ray.ledger import BlockWriter, Ledger, ShardCommit, drain, write_block
from kun_ray.llm.engine import Engine, tokens_column
from kun_ray.llm.label import LabelTask
from kun_ray.llm.polish import PolishTask
from kun_ray.llm.score import ScoreTask
from kun_ray.report import flow_report
from kun_ray.run import FLOW_OUTPUTS, MANIFEST, RunFolder, run_settings

logger = logging.getLogger("kun_ray")

LLM_TASKS = {"label": LabelTask, "score": ScoreTask, "polish": PolishTask}

Step = tuple[str, Callable[[ray.data.Dataset], ray.data.Dataset]]


def _sample_keys(batch: pa.Table, seed: int, below: int) -> pa.Table:
    """The rows whose hash of (seed, source, doc_id) falls below `below`, with that hash."""
    keys = [
        int.from_bytes(hashlib.blake2b(f"{seed}\x1f{s}\x1f{d}".encode(), digest_size=8).digest(), "big")
        for s, d in zip(batch["source"].to_pylist(), batch["doc_id"].to_pylist())
    ]
    mask = pa.array([k < below for k in keys])
    return pa.table({"key": pa.array(keys, pa.uint64()).filter(mask), "text": batch["text"].filter(mask)})


def stable_sample(documents: ray.data.Dataset, size: int, n_documents: int, seed: int) -> list[str]:
    """Texts of about `size` documents picked by a hash of their ids: the same sample whatever
    the order Ray Data streams the blocks in, so a clean run and a resumed one agree."""
    fraction = min(1.0, 1.5 * size / max(1, n_documents))
    below = min(2**64 - 1, int(fraction * 2**64))
    rows = documents.map_batches(_sample_keys, batch_format="pyarrow", fn_kwargs={"seed": seed, "below": below}).take_all()
    return [row["text"] for row in sorted(rows, key=lambda r: r["key"])[:size]]


def perplexity_cut(config: RunConfig, documents: ray.data.Dataset, n_documents: int) -> dict[str, Any]:
    """The perplexity cut to apply, and how it was chosen (for report.json)."""
    stage = config.perplexity
    if stage.max_ppl is not None:
        return {"max_ppl": stage.max_ppl, "by": "max_ppl"}
    texts = stable_sample(documents, stage.sample_size, n_documents, stage.seed)
    if config.normalize.enabled:
        texts = [normalize_text(t, config.normalize.collapse_whitespace, config.normalize.nfkc) for t in texts]
    scorer = PerplexityScorer(stage.kenlm_model, stage.sentencepiece_model, stage.storage or config.storage)
    cut = quantile_cut([scorer.perplexity(t) for t in texts if t], stage.keep_fraction)
    return {"max_ppl": round(cut, 3), "by": "keep_fraction", "keep_fraction": stage.keep_fraction, "sample_size": len(texts)}


def filter_steps(config: RunConfig, cut: dict[str, Any] | None) -> list[Step]:
    steps: list[Step] = []
    if config.normalize.enabled:
        steps.append(("normalize", lambda ds: map_stage(ds, normalize_batch, config.normalize, config=config.normalize)))
    if config.length.enabled:
        steps.append(("length", lambda ds: map_stage(ds, length_batch, config.length, config=config.length, storage=config.storage)))
    if config.perplexity.enabled:
        assert cut is not None
        steps.append(
            ("perplexity", lambda ds: map_stage(ds, perplexity_batch, config.perplexity, config=config.perplexity, storage=config.storage, max_ppl=cut["max_ppl"]))
        )
    if config.heuristics.enabled:
        steps.append(("heuristics", lambda ds: map_stage(ds, heuristics_batch, config.heuristics, config=config.heuristics)))
    return steps


def dedup_steps(config: RunConfig) -> list[Step]:
    ranks = source_ranks(config)
    steps: list[Step] = []
    if config.exact_dedup.enabled:
        steps.append(("exact_dedup", lambda ds: exact_dedup(ds, ranks, config.exact_dedup)))
    if config.near_dedup.enabled:
        steps.append(("near_dedup", lambda ds: near_dedup(ds, ranks, config.near_dedup)))
    return steps


def final_steps(config: RunConfig) -> list[Step]:
    """Dedup on the instruction, as the cleaning stages dedup on the text."""
    ranks, final = source_ranks(config), config.final
    steps: list[Step] = []
    if final.exact_dedup.enabled:
        steps.append(("instruction_exact_dedup", lambda ds: exact_dedup(ds, ranks, final.exact_dedup, "instruction_exact_dedup", "instruction")))
    if final.near_dedup.enabled:
        steps.append(("instruction_near_dedup", lambda ds: near_dedup(ds, ranks, final.near_dedup, "instruction_near_dedup", "instruction")))
    return steps


def llm_tasks(config: RunConfig) -> dict[str, Any]:
    """The task of each enabled LLM stage; a prompt file that is missing or has a wrong field is a ConfigError."""
    return {name: LLM_TASKS[name](getattr(config, name)) for name in config.llm_stages()}


def llm_engines(config: RunConfig) -> dict[str, Engine]:
    """An engine per enabled LLM stage, built before any flow runs, so config errors come first."""
    return {name: Engine(task, getattr(config, name), config.storage) for name, task in llm_tasks(config).items()}


def export_final(folder: RunFolder, config: RunConfig, files: list[str]) -> None:
    """final/'s files as the JSONL formats the config asks for, replacing earlier exports."""
    final = folder.read_parquet(files)
    json_args = {"force_ascii": False}  # Chinese stays readable
    if "alpaca" in config.final.formats:
        folder.write_json_lines(final.map_batches(alpaca_rows, batch_format="pyarrow"), "export/alpaca", json_args)
    if "messages" in config.final.formats:
        rows = final.map_batches(messages_rows, batch_format="pyarrow", fn_kwargs={"system_prompt": config.final.system_prompt})
        folder.write_json_lines(rows, "export/messages", json_args)


def _read_and_write(batch: pa.Table, config: RunConfig, writer: BlockWriter) -> Iterator[pa.Table]:
    """The read flow's task: read a file and write its rows as it goes; one part per file, at its end."""
    for item in batch.to_pylist():
        file = InputFile(**item)
        part = writer.write_shard(file_blocks(file, config))
        yield pa.table({"parts": [json.dumps({file.shard: {**part, "total": part["rows"]}})]})


class RunFlows:
    """One invocation of a run: its flows in order, each resuming from its commits."""

    def __init__(self, config: RunConfig, inputs: list[InputFile], fresh: bool, force: bool):
        self.config = config
        self.inputs = inputs
        self.folder = RunFolder.of(config)
        self.manifest = self.folder.open(run_settings(config, inputs), fresh=fresh, force=force)
        self.stages: list[dict[str, Any]] = []
        self.flows: dict[str, dict[str, Any]] = {}

    def _writer(self, output: str, tokens: str | None = None) -> BlockWriter:
        return BlockWriter(self.folder.arrow_fs, self.folder.root.rstrip("/"), output, (tokens,) if tokens else ())

    def _account(self, ledger: Ledger, extras: dict[str, dict[str, Any]], timing: dict[str, Any]) -> Ledger:
        """Add a flow's stages and timing to the report; the flow's ledger, for the flow after it."""
        stages = [{**stage, "flow": ledger.flow} for stage in flow_report(ledger.stages, ledger.tally(), extras)]
        self.stages.extend(stages)
        self.flows[ledger.flow] = timing
        kept = sum(ledger.kept().values())
        logger.info(
            "%s: %s in, %s kept, %s rejected; %d shards (%d done before), %.1f s this run",
            ledger.flow, f"{stages[0]['in']:,}", f"{kept:,}", f"{stages[0]['in'] - kept:,}", timing["shards"], timing["shards_resumed"], timing["wall_s"],
        )
        return ledger

    @staticmethod
    def _timing(ledger: Ledger, resumed: int, clock: float, done: ShardCommit) -> dict[str, Any]:
        wall = time.monotonic() - clock
        return {"shards": len(ledger.shards), "shards_resumed": resumed, "rows": done.rows, "wall_s": round(wall, 3), "rows_per_s": round(done.rows / wall, 1) if wall else None}

    def read(self) -> Ledger:
        ledger = Ledger(self.folder, "read", ["read"])
        pending = [f for f in self.inputs if f.shard not in ledger.shards]
        resumed, clock, done = len(ledger.shards), time.monotonic(), ShardCommit()
        if pending:
            ledger.collect_garbage(["documents", "rejects/read"])
            files = input_files(pending).map_batches(
                _read_and_write, batch_size=1, batch_format="pyarrow", num_cpus=self.config.read.num_cpus,
                fn_kwargs={"config": self.config, "writer": self._writer("documents")},
            )
            _, done = drain(_parts(files), ledger, None, len(pending))
            ledger.collect_garbage(["documents", "rejects/read"])
        return self._account(ledger, {"read": {"files": len(self.inputs)}}, self._timing(ledger, resumed, clock, done))

    def row_flow(self, flow: str, upstream: Ledger, source: str, output: str, steps: list[Step], extras: dict[str, dict[str, Any]], tokens: str | None = None) -> Ledger:
        """A flow whose rows are independent of each other: shards commit one by one."""
        ledger = Ledger(self.folder, flow, [name for name, _ in steps])
        pending = {shard: kept for shard, kept in upstream.kept().items() if kept and shard not in ledger.shards}
        resumed, clock, done = len(ledger.shards), time.monotonic(), ShardCommit()
        folders = [output, *(f"rejects/{name}" for name, _ in steps)]
        if pending:
            ledger.collect_garbage(folders)
            stream = self.folder.read_files(upstream.files(source, pending))
            for _, step in steps:
                stream = step(stream)
            _, done = drain(_written(stream, self._writer(output, tokens)), ledger, pending, len(pending))
            ledger.collect_garbage(folders)
        timing = self._timing(ledger, resumed, clock, done)
        if tokens:
            rate = round(done.sums[tokens] / timing["wall_s"], 1) if timing["wall_s"] and pending else None
            extras[flow] = {**extras.get(flow, {}), "generated_tokens": ledger.sums()[tokens], "generated_tokens_per_s": rate}
        return self._account(ledger, extras, timing)

    def whole_flow(self, flow: str, upstream: Ledger, source: str, output: str, steps: list[Step], after: Callable[[list[str]], None] | None = None) -> Ledger:
        """A flow whose rows depend on each other (dedup): all of it runs, then commits, or none does.

        `after` gets the files of the flow's output before the commit (the export of final/).
        """
        ledger = Ledger(self.folder, flow, [name for name, _ in steps])
        clock, done = time.monotonic(), ShardCommit()
        resumed = len(ledger.shards) if ledger.whole else 0
        if not ledger.whole:
            folders = [output, *(f"rejects/{name}" for name, _ in steps)]
            ledger.collect_garbage(folders)
            stream = self.folder.read_files(upstream.files(source))
            for _, step in steps:
                stream = step(stream)
            shards, done = drain(_written(stream, self._writer(output)), ledger, None, len(upstream.shards), whole=True)
            if after is not None:
                after(sorted(f for commit in shards.values() for f in commit.files if f.startswith(output + "/")))
            ledger.commit(shards, whole=True)
            ledger.collect_garbage(folders)
        return self._account(ledger, {}, self._timing(ledger, resumed, clock, done))

    def filter(self, upstream: Ledger) -> Ledger:
        extras: dict[str, dict[str, Any]] = {}
        cut = None
        if self.config.perplexity.enabled:
            fixed = self.manifest["fixed"]
            if "perplexity_cut" not in fixed:  # fixed on first use, so a resumed run cuts where it started
                documents = self.folder.read_files(upstream.files("documents"))
                fixed["perplexity_cut"] = perplexity_cut(self.config, documents, sum(upstream.kept().values()))
                self.folder.write_json(MANIFEST, self.manifest)
            cut = fixed["perplexity_cut"]
            extras["perplexity"] = {"cut": cut}
        return self.row_flow("filter", upstream, "documents", "filtered", filter_steps(self.config, cut), extras)


def _written(stream: ray.data.Dataset, writer: BlockWriter) -> Iterator[dict[str, Any]]:
    return _parts(stream.map_batches(write_block, batch_format="pyarrow", fn_kwargs={"writer": writer}))


def _parts(results: ray.data.Dataset) -> Iterator[dict[str, Any]]:
    for row in results.iter_rows():
        yield json.loads(row["parts"])


def run(config: RunConfig, inputs: list[InputFile] | None = None, fresh: bool = False, force: bool = False) -> dict[str, Any]:
    """Run the configured stages on the current Ray cluster; returns the report also written to report.json.

    Over a run folder that already holds this config's run, it resumes: shards every flow has
    committed are not redone.  `fresh` starts over; `force` resumes a run of a changed config.
    `inputs` are the files `plan_inputs(config)` lists; they are listed here when not given.
    """
    started = datetime.now(timezone.utc)
    clock = time.monotonic()
    inputs = plan_inputs(config) if inputs is None else inputs
    engines = llm_engines(config)
    job = RunFlows(config, inputs, fresh, force)
    folder = job.folder

    def kept(ledger: Ledger) -> bool:
        return any(ledger.kept().values())

    previous, source = job.read(), "documents"
    if kept(previous):
        previous, source = job.filter(previous), "filtered"
    if kept(previous):
        previous, source = job.whole_flow("dedup", previous, source, "clean", dedup_steps(config)), "clean"
    for name, engine in engines.items():
        if not kept(previous):
            break
        output = FLOW_OUTPUTS[name]
        previous, source = job.row_flow(name, previous, source, output, [(name, engine.run)], {name: {"model": engine.config.model}}, tokens_column(engine.task)), output
    if kept(previous) and engines and config.final.enabled:
        job.whole_flow("final", previous, source, "final", final_steps(config), after=lambda files: export_final(folder, config, files))

    report = {
        "kun_ray_version": __version__,
        "output": folder.url,
        "fingerprint": job.manifest["fingerprint"],
        "started_at": started.isoformat(timespec="seconds"),
        "wall_s": round(time.monotonic() - clock, 3),
        "flows": job.flows,
        "sources": {s.name: {"format": s.format, "files": sum(f.source == s.name for f in inputs)} for s in config.sources},
        "stages": job.stages,
    }
    folder.write_json("report.json", report)
    return report
