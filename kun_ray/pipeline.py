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

import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

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
from kun_ray.io.read import InputFile, plan_inputs, read_documents
from kun_ray.llm.engine import Engine, tokens_column
from kun_ray.llm.label import LabelTask
from kun_ray.llm.polish import PolishTask
from kun_ray.llm.score import ScoreTask
from kun_ray.report import flow_report
from kun_ray.run import RunFolder

LLM_TASKS = {"label": LabelTask, "score": ScoreTask, "polish": PolishTask}
#: Where each LLM stage writes the rows it keeps.
LLM_OUTPUTS = {"label": "labeled", "score": "scored", "polish": "polished"}

Step = tuple[str, Callable[[ray.data.Dataset], ray.data.Dataset]]


def perplexity_cut(config: RunConfig, documents: ray.data.Dataset, n_documents: int) -> tuple[float, dict[str, Any]]:
    """The perplexity cut to apply, and how it was chosen (for report.json)."""
    stage = config.perplexity
    if stage.max_ppl is not None:
        return stage.max_ppl, {"cut": {"max_ppl": stage.max_ppl, "by": "max_ppl"}}
    fraction = min(1.0, 1.5 * stage.sample_size / max(1, n_documents))
    sample = documents.random_sample(fraction, seed=stage.seed).limit(stage.sample_size).take_all()
    texts = [row["text"] for row in sample]
    if config.normalize.enabled:
        texts = [normalize_text(t, config.normalize.collapse_whitespace, config.normalize.nfkc) for t in texts]
    scorer = PerplexityScorer(stage.kenlm_model, stage.sentencepiece_model, stage.storage or config.storage)
    cut = quantile_cut([scorer.perplexity(t) for t in texts if t], stage.keep_fraction)
    return cut, {"cut": {"max_ppl": round(cut, 3), "by": "keep_fraction", "keep_fraction": stage.keep_fraction, "sample_size": len(texts)}}


def filter_steps(config: RunConfig, documents: ray.data.Dataset, n_documents: int) -> tuple[list[Step], dict[str, dict[str, Any]]]:
    steps: list[Step] = []
    extras: dict[str, dict[str, Any]] = {}
    if config.normalize.enabled:
        steps.append(("normalize", lambda ds: map_stage(ds, normalize_batch, config.normalize, config=config.normalize)))
    if config.length.enabled:
        steps.append(("length", lambda ds: map_stage(ds, length_batch, config.length, config=config.length, storage=config.storage)))
    if config.perplexity.enabled:
        max_ppl, extras["perplexity"] = perplexity_cut(config, documents, n_documents)
        steps.append(
            ("perplexity", lambda ds: map_stage(ds, perplexity_batch, config.perplexity, config=config.perplexity, storage=config.storage, max_ppl=max_ppl))
        )
    if config.heuristics.enabled:
        steps.append(("heuristics", lambda ds: map_stage(ds, heuristics_batch, config.heuristics, config=config.heuristics)))
    return steps, extras


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


def export_final(folder: RunFolder, config: RunConfig) -> None:
    """final/ as the JSONL formats the config asks for, replacing earlier exports."""
    final = folder.read_stage("final")
    json_args = {"force_ascii": False}  # Chinese stays readable
    if "alpaca" in config.final.formats:
        folder.write_json_lines(final.map_batches(alpaca_rows, batch_format="pyarrow"), "export/alpaca", json_args)
    if "messages" in config.final.formats:
        rows = final.map_batches(messages_rows, batch_format="pyarrow", fn_kwargs={"system_prompt": config.final.system_prompt})
        folder.write_json_lines(rows, "export/messages", json_args)


def run(config: RunConfig, inputs: list[InputFile] | None = None) -> dict[str, Any]:
    """Run the configured stages on the current Ray cluster; returns the report also written to report.json.

    `inputs` are the files `plan_inputs(config)` lists; they are listed here when not given.
    """
    started = datetime.now(timezone.utc)
    clock = time.monotonic()
    inputs = plan_inputs(config) if inputs is None else inputs
    engines = llm_engines(config)
    folder = RunFolder(config)
    stages: list[dict[str, Any]] = []
    timings: dict[str, float] = {}

    def flow(
        name: str, stream: ray.data.Dataset, output: str, steps: list[Step], extras: dict[str, dict[str, Any]] | None = None, tokens: str | None = None
    ) -> int:
        """Run steps over a stream, write it, account for it; returns the rows kept.

        `tokens` names an LLM stage's column of generated tokens, totalled into its report.
        """
        flow_clock = time.monotonic()
        for _, step in steps:
            stream = step(stream)
        names = [n for n, _ in steps]
        tally, totals = folder.write_rows(stream, output, names, (tokens,) if tokens else ())
        wall = time.monotonic() - flow_clock
        extras = {stage: dict(values) for stage, values in (extras or {}).items()}
        if tokens in totals:
            total = totals[tokens]
            extras.setdefault(name, {}).update(generated_tokens=total, generated_tokens_per_s=round(total / wall, 1) if wall else None)
        stages.extend(flow_report(names, tally, extras))
        timings[name] = round(wall, 3)
        return sum(n for (stage, _, _), n in tally.items() if stage is None)

    kept = flow("read", read_documents(config, inputs), "documents", [("read", lambda ds: ds)], {"read": {"files": len(inputs)}})
    if kept:
        steps, extras = filter_steps(config, folder.stage_rows("documents"), kept)
        kept = flow("filter", folder.stage_rows("documents"), "filtered", steps, extras)
    if kept:
        kept = flow("dedup", folder.stage_rows("filtered"), "clean", dedup_steps(config))
    previous = "clean"
    for name, engine in engines.items():
        if not kept:
            break
        model = {"model": engine.config.model}
        kept = flow(name, folder.stage_rows(previous), LLM_OUTPUTS[name], [(name, engine.run)], {name: model}, tokens_column(engine.task))
        previous = LLM_OUTPUTS[name]
    if kept and engines and config.final.enabled:
        kept = flow("final", folder.stage_rows(previous), "final", final_steps(config))
        if kept:
            export_final(folder, config)

    report = {
        "kun_ray_version": __version__,
        "output": folder.url,
        "started_at": started.isoformat(timespec="seconds"),
        "wall_s": round(time.monotonic() - clock, 3),
        "timings_s": timings,
        "sources": {s.name: {"format": s.format, "files": sum(f.source == s.name for f in inputs)} for s in config.sources},
        "stages": stages,
    }
    folder.write_json("report.json", report)
    return report
