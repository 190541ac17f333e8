"""What every config is built of: strict models, storage options, field markers, one-line errors.

Two markers say what a field is, beside its type:

- `resource(...)`: how a stage runs (CPUs, actors, batch sizes, environment), not what it
  writes.  Resources leave the run's fingerprint, so a run resumes on another cluster.
- `path(...)`: a file or folder of the run's own (a model, a tokenizer, a prompt file).  Local
  paths resolve against the config file's folder, jobs pack them, and the fingerprint records
  them as the config wrote them.
"""

from __future__ import annotations

import difflib
from typing import Any, Literal, TypeVar, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError


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
    #: Attempts a request gets when the store fails it in passing (500, 503 SlowDown, a dropped
    #: connection, a timeout): botocore's, standard mode, with backoff (kun_ray/io/storage.py).
    retries: int = Field(default=5, ge=1)
    connect_timeout_s: float = Field(default=10.0, gt=0)
    read_timeout_s: float = Field(default=60.0, gt=0)


def resource(default: Any = ..., **kwargs: Any) -> Any:
    """A field of how a stage runs, not of what it writes: left out of the run's fingerprint."""
    return Field(default, json_schema_extra={"resource": True}, **kwargs)


PathKind = Literal["file", "model"]


def path(default: Any = None, kind: PathKind = "file", **kwargs: Any) -> Any:
    """A field naming a file (`file`) or a model or tokenizer (`model`: a local folder, a hub id or a URL)."""
    return Field(default, json_schema_extra={"path": kind}, **kwargs)


def since(version: str, default: Any = ..., **kwargs: Any) -> Any:
    """A field added after runs were first written: at its default it stays out of the fingerprint,
    so a run folder written before the field existed resumes."""
    return Field(default, json_schema_extra={"since": version}, **kwargs)


def _extra(model: type[BaseModel], key: str) -> dict[str, Any]:
    found = {}
    for name, field in model.model_fields.items():
        extra = field.json_schema_extra
        if isinstance(extra, dict) and key in extra:
            found[name] = extra[key]
    return found


def resource_fields(model: type[BaseModel]) -> set[str]:
    return set(_extra(model, "resource"))


def path_fields(model: type[BaseModel]) -> dict[str, PathKind]:
    return _extra(model, "path")


def since_fields(model: type[BaseModel]) -> set[str]:
    return set(_extra(model, "since"))


class StageConfig(StrictModel):
    """What every stage's section holds: whether it runs.  A stage's own config subclasses this,
    at the top of the stage's file; CPU stages add their resources (`CpuResources`)."""

    enabled: bool = True


class CpuResources(StageConfig):
    """A CPU stage's tasks: CPUs each, how many at once (null: Ray Data decides), rows a batch."""

    num_cpus: float = resource(1.0, gt=0)
    concurrency: int | None = resource(None, gt=0)
    batch_size: int = resource(256, gt=0)


# --- one-line errors ---------------------------------------------------------------------------


def location(loc: tuple[Any, ...]) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(top level)"


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in get_args(annotation) for m in _models_in(arg)]


def known_keys(loc: tuple[Any, ...], model: type[BaseModel]) -> list[str]:
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


def one_line(error: ValidationError, model: type[BaseModel], prefix: tuple[Any, ...] = ()) -> str:
    """A pydantic error as one line naming the key at fault (under `prefix`, a section's name)."""
    # An unknown key is the most telling error: a typo also makes its intended key "missing".
    errors = sorted(error.errors(), key=lambda e: e["type"] != "extra_forbidden")
    first = errors[0]
    kind, msg = first["type"], first["msg"]
    if kind == "extra_forbidden":
        close = difflib.get_close_matches(str(first["loc"][-1]), known_keys(first["loc"][:-1], model), n=1)
        msg = "unknown key" + (f" (did you mean {close[0]!r}?)" if close else "")
    elif kind == "missing":
        msg = "missing required key"
    elif msg.startswith("Value error, "):
        msg = msg.removeprefix("Value error, ")
    more = len(error.errors()) - 1
    return f"{location((*prefix, *first['loc']))}: {msg}" + (f" (and {more} more)" if more else "")


Config = TypeVar("Config", bound=BaseModel)


def validated(
    model: type[Config], data: Any, prefix: tuple[Any, ...] = (), context: dict[str, Any] | None = None
) -> Config:
    """A mapping as `model`, or a one-line ConfigError."""
    try:
        return model.model_validate(data, context=context)
    except ValidationError as error:
        raise ConfigError(one_line(error, model, prefix)) from None
