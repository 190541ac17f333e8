"""The run configuration: pydantic models of a run's YAML, and one-line errors.

A config names its sources and its output; everything else has defaults.  Storage
credentials never appear here: they come from the environment (AWS_*, GOOGLE_*),
the way s3fs and gcsfs find them.
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Any, Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator


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

    def storage_for(self, options: StorageOptions | None) -> StorageOptions:
        """A source's or the output's own storage options, else the run's defaults."""
        return options if options is not None else self.storage

    def source(self, name: str) -> SourceConfig:
        return next(s for s in self.sources if s.name == name)


def _is_local(path: str) -> bool:
    return "://" not in path or path.startswith("file://")


def _resolve_local(path: str, base: Path) -> str:
    """Local paths are relative to the config file's folder, so a config runs from anywhere."""
    if not _is_local(path):
        return path
    plain = path.removeprefix("file://")
    return str((base / os.path.expanduser(plain)).resolve()) if not os.path.isabs(plain) else plain


def _location(loc: tuple[Any, ...]) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(top level)"


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in get_args(annotation) for m in _models_in(arg)]


def _known_keys(loc: tuple[Any, ...]) -> list[str]:
    """The keys a config accepts at `loc`, for "did you mean" hints."""
    model: type[BaseModel] = RunConfig
    for part in loc:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(str(part))
        models = _models_in(field.annotation) if field else []
        if not models:
            return []
        model = models[0]
    return list(model.model_fields)


def _one_line(error: ValidationError) -> str:
    # An unknown key is the most telling error: a typo also makes its intended key "missing".
    errors = sorted(error.errors(), key=lambda e: e["type"] != "extra_forbidden")
    first = errors[0]
    kind, msg = first["type"], first["msg"]
    if kind == "extra_forbidden":
        close = difflib.get_close_matches(str(first["loc"][-1]), _known_keys(first["loc"][:-1]), n=1)
        msg = "unknown key" + (f" (did you mean {close[0]!r}?)" if close else "")
    elif kind == "missing":
        msg = "missing required key"
    elif msg.startswith("Value error, "):
        msg = msg.removeprefix("Value error, ")
    more = len(error.errors()) - 1
    return f"{_location(first['loc'])}: {msg}" + (f" (and {more} more)" if more else "")


def parse_config(data: Any, base: Path = Path.cwd()) -> RunConfig:
    """Validate a config mapping; local paths resolve against `base`."""
    if not isinstance(data, dict):
        raise ConfigError("the config must be a mapping of keys to values")
    try:
        config = RunConfig.model_validate(data)
    except ValidationError as error:
        raise ConfigError(_one_line(error)) from None
    for source in config.sources:
        source.paths = [_resolve_local(p, base) for p in source.paths]
    config.output.path = _resolve_local(config.output.path, base)
    for key in ("kenlm_model", "sentencepiece_model"):
        if (path := getattr(config.perplexity, key)) is not None:
            setattr(config.perplexity, key, _resolve_local(path, base))
    tokenizer = config.length.tokenizer
    if tokenizer is not None and _is_local(tokenizer) and (tokenizer.startswith((".", "/", "~")) or (base / tokenizer).exists()):
        config.length.tokenizer = _resolve_local(tokenizer, base)  # a local folder; anything else is a hub id
    return config


def load_config(path: str | os.PathLike[str]) -> RunConfig:
    """Read and validate a YAML config file; every failure is a one-line ConfigError."""
    file = Path(path)
    try:
        data = yaml.safe_load(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{file}: no such config file") from None
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"{file}: cannot read: {error}") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise ConfigError(f"{file}:{where}: invalid YAML: {problem}") from None
    try:
        return parse_config(data, base=file.resolve().parent)
    except ConfigError as error:
        raise ConfigError(f"{file}: {error}") from None
