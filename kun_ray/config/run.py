"""The run config: the shell every run has (sources, output, storage, read, final, flows), and a
section per stage, validated by the stage's own config model.

A top-level key that is not part of the shell is a stage: its type is the key, or the section's
`stage:` when one type runs twice (`instruction_exact_dedup: {stage: exact_dedup, column: instruction}`).
The stage types come from a registry (kun_ray/stages/registry.py) handed to `parse_run_config`,
so this layer knows no stage by name.  Storage credentials never appear here: they come from
the environment (AWS_*, GOOGLE_*), the way s3fs and gcsfs find them.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from pydantic import BaseModel, Field, PrivateAttr, TypeAdapter, field_validator, model_validator

from kun_ray.config.base import (
    ConfigError,
    StageConfig,
    StorageOptions,
    StrictModel,
    path_fields,
    resource,
    resource_fields,
    since_fields,
    validated,
)

CorpusFormat = Literal["wudao", "wanjuan", "skypile", "jsonl", "parquet"]
# Formats whose field names are fixed by the corpus; the others name them in the config.
FIXED_FIELD_FORMATS = {"wudao", "wanjuan", "skypile"}

#: Humpback's tags (arXiv 2308.06259): the system prompt that tells seed pairs from generated ones.
SEED_TAG = "Answer in the style of an AI Assistant."
CURATED_TAG = "Answer with knowledge from web search."


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
    #: A run's lease on its folder (kun_ray/lease.py) with no heartbeat for this long is taken
    #: over; at least three heartbeats (30 s each), so a live run's lease never looks stale.
    lease_timeout_s: float = Field(default=300.0, ge=90)


class ReadConfig(StrictModel):
    """The read flow: one task per input file, streaming, emitting blocks of at most `block_rows` rows."""

    block_rows: int = resource(2048, gt=0)
    num_cpus: float = resource(1.0, gt=0)
    max_reject_text_chars: int = Field(default=2000, ge=0)
    #: A record (a JSONL line, a document's text) over this many bytes is a `record_too_large` reject.
    max_record_bytes: int = Field(default=8 << 20, gt=0)


class FinalConfig(StrictModel):
    """The final dataset: the flow that exports (by default dedup on the instruction), as Parquet
    and JSONL (Alpaca and messages)."""

    enabled: bool = True
    formats: list[Literal["alpaca", "messages"]] = Field(default_factory=lambda: ["alpaca", "messages"])
    #: Humpback's tag for augmented rows in messages form; null for none.
    system_prompt: str | None = CURATED_TAG


class StartConfig(StrictModel):
    """A run that starts from another run's committed rows instead of reading sources: the flows
    after `flow` run on what `flow` committed in the run folder `run` (which stays as it is).
    Humpback's loop re-rates iteration 1's labelled candidates this way, without labelling again."""

    #: The run folder (local or object storage) that holds the rows, finished.
    run: str
    #: The flow of that run whose committed rows this one starts from (`read`, `dedup`, `label`, ...).
    flow: str
    storage: StorageOptions | None = None


class FlowConfig(StrictModel):
    """One flow of a `flows:` section: its stages in order, the folder of the rows it keeps."""

    stages: list[str] = Field(min_length=1)
    output: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    #: Columns the flow needs from earlier flows: without them (no LLM stage ran) the flow is left out.
    needs: list[str] = Field(default_factory=list)
    #: Write export/ (final.formats) from this flow's output: its rows must have instructions.
    export: bool = False
    #: Run even when all its stages are off: its folder then holds its input as it came.
    always: bool = False


@dataclass(frozen=True)
class Section:
    """A stage section every run config has, written or not: kun-ray 0.1's, kept so its run
    folders' fingerprints hold."""

    stage: str
    #: Defaults of this section under what the config writes (an instruction dedup's column).
    defaults: dict[str, Any] = field(default_factory=dict)
    #: What the section is when the config does not write it (LLM stages are off).
    unwritten: dict[str, Any] = field(default_factory=dict)
    #: Where kun-ray 0.1 kept it (final.exact_dedup): read from there, and fingerprinted there.
    legacy: str | None = None


class StageTypes(Protocol):
    """What the run config needs of the stage registry."""

    sections: Mapping[str, Section]

    def types(self) -> list[str]: ...

    def config_model(self, stage_type: str) -> type[StageConfig]: ...


SHELL = ("sources", "output", "storage", "read", "final", "flows", "start")


class RunConfig(StrictModel):
    sources: list[SourceConfig] = Field(min_length=1)
    output: OutputConfig
    storage: StorageOptions = StorageOptions()
    read: ReadConfig = ReadConfig()
    final: FinalConfig = FinalConfig()
    #: Which stages run in which flow (kun_ray/stages/registry.py DEFAULT_FLOWS when absent).
    flows: dict[str, FlowConfig] | None = None
    #: Start from another run's committed rows (StartConfig) instead of reading the sources.
    start: StartConfig | None = None
    #: The stage sections, by name, in the order of the config; `stage_type` gives their types.
    _stages: dict[str, StageConfig] = PrivateAttr(default_factory=dict)
    _types: dict[str, str] = PrivateAttr(default_factory=dict)
    _sections: dict[str, Section] = PrivateAttr(default_factory=dict)
    _written: set[str] = PrivateAttr(default_factory=set)
    #: Model, tokenizer and prompt paths as the config wrote them, before local ones were resolved.
    _as_written: dict[str, str] = PrivateAttr(default_factory=dict)

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

    def __getattr__(self, name: str) -> Any:
        """A stage section as an attribute: `config.length.max_tokens`."""
        try:
            return super().__getattr__(name)  # type: ignore[misc]
        except AttributeError:
            stages = (self.__pydantic_private__ or {}).get("_stages") or {}
            if name in stages:
                return stages[name]
            raise

    @property
    def stages(self) -> dict[str, StageConfig]:
        """Every stage section by name, written or standing."""
        return dict(self._stages)

    def llm_stages(self) -> list[str]:
        """The enabled stages that run a model (their section names it in `model`), in config order."""
        return [
            name
            for name, section in self._stages.items()
            if section.enabled and path_fields(type(section)).get("model") == "model"
        ]

    @property
    def written(self) -> set[str]:
        """The stage sections the config writes (the others stand at their defaults)."""
        return set(self._written)

    def stage_type(self, name: str) -> str:
        return self._types[name]

    @property
    def paths_as_written(self) -> dict[str, str]:
        """{"label.model": "../runs/smoke-models/chat-model", ...}: what names a run's files, wherever they are."""
        return dict(self._as_written)

    def storage_for(self, options: StorageOptions | None) -> StorageOptions:
        """A source's or the output's own storage options, else the run's defaults."""
        return options if options is not None else self.storage

    def source(self, name: str) -> SourceConfig:
        return next(s for s in self.sources if s.name == name)

    def settings(self) -> dict[str, Any]:
        """What decides a run's output, as flat dotted keys: the config less its output and
        storage (where things are) and its resource fields, the sources less their paths, and
        files as the config named them (a run submitted as a job, whose files land in another
        folder, has the same settings)."""
        data: dict[str, Any] = {
            "sources": [s.model_dump(mode="json", exclude={"paths", "storage"}) for s in self.sources],
            "read": behaviour(self.read),
            "final": behaviour(self.final),
        }
        if self.flows is not None:
            data["flows"] = {name: flow.model_dump(mode="json") for name, flow in self.flows.items()}
        if self.start is not None:  # where the rows come from: the run's fingerprint (run_settings), not its folder
            data["start"] = {"flow": self.start.flow}
        for name, section in self._stages.items():
            standing = self._sections.get(name)
            defaults = standing.defaults if standing else {}
            values = behaviour(section, defaults)
            if (standing is None or standing.stage != self._types[name]) and name != self._types[name]:
                values = {"stage": self._types[name], **values}
            where = (standing.legacy if standing and standing.legacy else name).split(".")
            node = data
            for part in where[:-1]:
                node = node.setdefault(part, {})
            node[where[-1]] = values
        settings = flatten(data)
        settings.update({key: value for key, value in self._as_written.items() if key in settings})
        return settings


def behaviour(model: BaseModel, defaults: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A model's fields that change what a run writes: not its resources, nor a field added since
    runs were first written while it has its default."""
    skip = resource_fields(type(model))
    new = since_fields(type(model))
    out: dict[str, Any] = {}
    for name, info in type(model).model_fields.items():
        if name in skip:
            continue
        value = getattr(model, name)
        if name in new:
            default = (defaults or {}).get(name, info.get_default(call_default_factory=True))
            if value == default:
                continue
        out[name] = behaviour(value) if isinstance(value, BaseModel) else _json(value)
    return out


def _json(value: Any) -> Any:
    return _ANY.dump_python(value, mode="json")


_ANY = TypeAdapter(Any)


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict) and value:
        flat: dict[str, Any] = {}
        for key, item in value.items():
            flat.update(flatten(item, f"{prefix}{key}."))
        return flat
    return {prefix.rstrip("."): value}


def _lift_legacy(data: dict[str, Any], registry: StageTypes) -> dict[str, Any]:
    """Sections written where kun-ray 0.1 kept them (final.exact_dedup) move to their own key."""
    data = dict(data)
    for name, section in registry.sections.items():
        if not section.legacy:
            continue
        parent, key = section.legacy.split(".")
        holder = data.get(parent)
        if isinstance(holder, dict) and key in holder:
            holder = dict(holder)
            value = holder.pop(key)
            data[parent] = holder
            if name in data:
                raise ConfigError(f"{section.legacy}: also written as {name}: keep one")
            data[name] = value
    return data


def _unknown_key(name: str, registry: StageTypes) -> ConfigError:
    known = [*SHELL, *registry.sections, *registry.types()]
    close = difflib.get_close_matches(name, known, n=1)
    return ConfigError(
        f"{name}: unknown key"
        + (f" (did you mean {close[0]!r}?)" if close else "")
        + "; not a setting nor a stage type"
    )


def parse_run_config(data: Any, registry: StageTypes) -> RunConfig:
    """A config mapping as a RunConfig with its stage sections, or a one-line ConfigError."""
    if not isinstance(data, dict):
        raise ConfigError("the config must be a mapping of keys to values")
    # Top-level `x-...` keys hold YAML anchors for reuse (as in Compose files); they are not settings.
    data = _lift_legacy({k: v for k, v in data.items() if not str(k).startswith("x-")}, registry)
    shell = {k: v for k, v in data.items() if k in SHELL}
    written = {k: v for k, v in data.items() if k not in SHELL}
    config = validated(RunConfig, shell)
    names = [*registry.sections, *(name for name in written if name not in registry.sections)]
    for name in names:
        standing = registry.sections.get(name)
        value = written.get(name, standing.unwritten if standing else None)
        if value is None:
            value = {}
        if not isinstance(value, dict):
            raise ConfigError(f"{name}: a stage's section must be a mapping of keys to values")
        value = dict(value)
        stage_type = value.pop("stage", None) or (standing.stage if standing else name)
        if stage_type not in registry.types():
            if "stage" in (written.get(name) or {}):
                close = difflib.get_close_matches(stage_type, registry.types(), n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise ConfigError(f"{name}.stage: no stage type {stage_type!r}{hint}")
            raise _unknown_key(name, registry)
        if standing is not None and stage_type != standing.stage:
            raise ConfigError(f"{name}.stage: {name} is a {standing.stage} stage")
        model = registry.config_model(stage_type)
        merged = {**(standing.defaults if standing else {}), **value}
        config._stages[name] = validated(model, merged, prefix=(name,))
        config._types[name] = stage_type
        if name in written:
            config._written.add(name)
        if standing is not None:
            config._sections[name] = standing
    return config


def stage_paths(config: RunConfig) -> list[tuple[str, str, str]]:
    """(section, field, kind) of every field of a stage section that names a file or a model."""
    return [
        (name, key, kind)
        for name, section in config.stages.items()
        for key, kind in path_fields(type(section)).items()
    ]
