"""Loading configs: YAML files, `--set` overrides, and local paths resolved against the config's folder.

Every failure is a one-line ConfigError naming the file and the key.  Which fields of a run
config name files is declared by the stages themselves (`path(...)` fields), so a new stage's
model or prompt file resolves, packs into jobs and fingerprints without a line here.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml

from kun_ray.config.base import Config, ConfigError, validated
from kun_ray.config.run import RunConfig, StageTypes, parse_run_config, stage_paths
from kun_ray.config.train import LoopConfig, TrainConfig


def is_local(path: str) -> bool:
    return "://" not in path or path.startswith("file://")


def resolve_local(path: str, base: Path) -> str:
    """Local paths are relative to the config file's folder, so a config runs from anywhere."""
    if not is_local(path):
        return path
    plain = os.path.expanduser(path.removeprefix("file://"))
    # Lexical, not resolved: a path through a symlink stays the path the config names.
    return os.path.normpath(os.path.join(base, plain)) if not os.path.isabs(plain) else plain


def resolve_model(name: str | None, base: Path) -> str | None:
    """A model or tokenizer: a local folder resolves against `base`; anything else is a hub id or a URL."""
    if name is not None and is_local(name) and (name.startswith((".", "/", "~")) or (base / name).exists()):
        return resolve_local(name, base)
    return name


def parse_config(data: Any, registry: StageTypes, base: Path | None = None) -> RunConfig:
    """Validate a run config mapping; local paths resolve against `base` (default: the working folder)."""
    base = Path.cwd() if base is None else base
    config = parse_run_config(data, registry)
    for source in config.sources:
        source.paths = [resolve_local(p, base) for p in source.paths]
    config.output.path = resolve_local(config.output.path, base)
    for name, key, kind in stage_paths(config):
        section = config.stages[name]
        if (value := getattr(section, key)) is not None:
            config._as_written[f"{name}.{key}"] = value
            setattr(section, key, resolve_model(value, base) if kind == "model" else resolve_local(value, base))
    return config


def parse_train_config(data: Any, base: Path | None = None) -> TrainConfig:
    """Validate a training config mapping; local paths resolve against `base`."""
    base = Path.cwd() if base is None else base
    config = _validated(TrainConfig, data)
    config.base_model = resolve_model(config.base_model, base) or config.base_model
    config.seed = [resolve_local(p, base) for p in config.seed]
    config.curated = [resolve_local(p, base) for p in config.curated]
    config.output = resolve_local(config.output, base)
    return config


def parse_loop_config(data: Any, base: Path | None = None) -> LoopConfig:
    """Validate a loop config mapping; its output and the configs it names resolve against `base`."""
    base = Path.cwd() if base is None else base
    config = _validated(LoopConfig, data)
    config.output, config.curate, config.train = (
        resolve_local(p, base) for p in (config.output, config.curate, config.train)
    )
    return config


def _validated(model: type[Config], data: Any) -> Config:
    if not isinstance(data, dict):
        raise ConfigError("the config must be a mapping of keys to values")
    return validated(model, {key: value for key, value in data.items() if not str(key).startswith("x-")})


def load(
    path: str | os.PathLike[str], overrides: Sequence[str], parse: Callable[[Any, Path], Config]
) -> tuple[Any, Config]:
    """A YAML config file with `--set` overrides, as data and parsed; every failure is a one-line
    ConfigError naming the file."""
    file = Path(path)
    data = apply_overrides(read_config_file(file), overrides)
    try:
        return data, parse(data, Path(os.path.abspath(file)).parent)
    except ConfigError as error:
        raise ConfigError(f"{file}: {error}") from None


def load_train_config(path: str | os.PathLike[str], overrides: Sequence[str] = ()) -> TrainConfig:
    """A training config file (kun-ray train) with `--set` overrides."""
    return load(path, overrides, parse_train_config)[1]


def load_loop_config(path: str | os.PathLike[str], overrides: Sequence[str] = ()) -> LoopConfig:
    """A loop config file (kun-ray loop) with `--set` overrides."""
    return load(path, overrides, parse_loop_config)[1]


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
