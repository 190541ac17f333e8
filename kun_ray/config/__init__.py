"""Configs: base models and one-line errors (base.py), the run config shell (run.py), training
and loop configs (train.py), loading YAML with `--set` overrides and local paths (load.py).

A run config's stage sections are validated by the stages' own config models, found through
the registry (kun_ray/stages/registry.py); `kun_ray.plan.load_config` loads a run config.
"""

from kun_ray.config.base import (
    ConfigError,
    CpuResources,
    StageConfig,
    StorageOptions,
    StrictModel,
    path,
    resource,
    since,
)
from kun_ray.config.load import (
    apply_overrides,
    load_loop_config,
    load_train_config,
    parse_loop_config,
    parse_train_config,
    read_config_file,
)
from kun_ray.config.run import (
    CURATED_TAG,
    SEED_TAG,
    FinalConfig,
    FlowConfig,
    OutputConfig,
    ReadConfig,
    RunConfig,
    SourceConfig,
)
from kun_ray.config.train import LoopConfig, LoraSettings, TrainConfig, TrainScaling

__all__ = [
    "CURATED_TAG",
    "SEED_TAG",
    "ConfigError",
    "CpuResources",
    "FinalConfig",
    "FlowConfig",
    "LoopConfig",
    "LoraSettings",
    "OutputConfig",
    "ReadConfig",
    "RunConfig",
    "SourceConfig",
    "StageConfig",
    "StorageOptions",
    "StrictModel",
    "TrainConfig",
    "TrainScaling",
    "apply_overrides",
    "load_loop_config",
    "load_train_config",
    "parse_loop_config",
    "parse_train_config",
    "path",
    "read_config_file",
    "resource",
    "since",
]
