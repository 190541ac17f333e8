"""The run configuration: pydantic models of a run's YAML, and one-line errors.

A config names its sources and its output; everything else has defaults.  Storage
credentials never appear here: they come from the environment (AWS_*, GOOGLE_*),
the way s3fs and gcsfs find them.
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Any, Literal

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


class RunConfig(StrictModel):
    sources: list[SourceConfig] = Field(min_length=1)
    output: OutputConfig
    storage: StorageOptions = StorageOptions()
    read: ReadConfig = ReadConfig()

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


def _one_line(error: ValidationError) -> str:
    # An unknown key is the most telling error: a typo also makes its intended key "missing".
    errors = sorted(error.errors(), key=lambda e: e["type"] != "extra_forbidden")
    first = errors[0]
    kind, msg = first["type"], first["msg"]
    if kind == "extra_forbidden":
        missing = [e["loc"][-1] for e in errors if e["type"] == "missing" and e["loc"][:-1] == first["loc"][:-1]]
        close = difflib.get_close_matches(str(first["loc"][-1]), [str(m) for m in missing], n=1)
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
