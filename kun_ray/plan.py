"""The plan: which stages run in which flow, and which folder each flow writes, from the config.

A config's `flows:` section, or the default flows (kun_ray/stages/registry.py), becomes a list
of flows of stage instances.  The plan is checked before any work starts: every stage a flow
names has a section, runs in one flow only, and finds the columns it reads made by a stage
before it.  A flow with a `global` stage (dedup) commits whole; the others commit per shard.
The plan is written into manifest.json (`Plan.to_json`), where the query layer and the report
read it back (kun_ray/run.py `FlowLayout`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

from kun_ray.config.base import ConfigError
from kun_ray.config.load import load
from kun_ray.config.load import parse_config as parse_sections
from kun_ray.config.run import FlowConfig, RunConfig
from kun_ray.io.records import DOCUMENT_SCHEMA, REJECT_FIELDS
from kun_ray.stages.base import RunContext, Stage
from kun_ray.stages.registry import DEFAULT_FLOWS, READ_FLOW, READ_OUTPUT, REGISTRY, STAGE_TYPES, stage_class


@dataclass
class Flow:
    name: str
    output: str
    stages: list[Stage]
    export: bool = False

    @property
    def whole(self) -> bool:
        """Commits all its shards at once: a stage needs all of its input."""
        return any(stage.kind == "global" for stage in self.stages)


@dataclass
class Plan:
    """The flows a run goes through after its read flow, in order.  A run that starts from
    another run's rows (`start:`) has no read flow: its flows are those after `start`, and
    `before` holds the ones the other run ran (their columns are in its rows)."""

    flows: list[Flow]
    before: list[Flow] = field(default_factory=list)
    start: str | None = None

    @property
    def measures(self) -> tuple[tuple[str, pa.DataType], ...]:
        """The measure columns every reject row of the run has (null before the stage that adds one)."""
        found: dict[str, pa.DataType] = {}
        for stage in [*(s for flow in self.before for s in flow.stages), *self.stages()]:
            added = stage.columns_added()
            found.update({column: added[column] for column in stage.measures})
        return tuple(found.items())

    def stages(self) -> list[Stage]:
        return [stage for flow in self.flows for stage in flow.stages]

    def warnings(self) -> list[str]:
        """What its stages say does nothing as configured (Stage.warnings), in plan order."""
        return [warning for stage in self.stages() for warning in stage.warnings()]

    def to_json(self) -> dict[str, Any]:
        """The plan as manifest.json holds it: flows (with the read flow first, unless the run
        starts from another's rows) and each stage's declarations."""
        flows = []
        if self.start is None:
            flows.append(
                {"name": READ_FLOW, "output": READ_OUTPUT, "stages": [READ_FLOW], "commit": "shard", "export": False}
            )
        flows += [
            {
                "name": f.name,
                "output": f.output,
                "stages": [s.name for s in f.stages],
                "commit": "whole" if f.whole else "shard",
                "export": f.export,
            }
            for f in self.flows
        ]
        stages = {
            stage.name: {
                "type": stage.type,
                "kind": stage.kind,
                "reads": {c: str(t) for c, t in stage.columns_read().items()},
                "adds": {c: str(t) for c, t in stage.columns_added().items()},
                "reasons": sorted(stage.reasons),
                "measures": list(stage.measures),
                "charts": [chart.__dict__ for chart in stage.charts()],
            }
            for stage in self.stages()
        }
        plan: dict[str, Any] = {"flows": flows, "stages": stages}
        if self.start is not None:
            plan["start"] = self.start
        return plan


def _makers(column: str) -> list[str]:
    """The stage types that add a column."""
    return [t for t in REGISTRY if column in stage_class(t).adds]


def build_plan(config: RunConfig) -> Plan:
    """The config's flows as stage instances, checked; a ConfigError names what cannot run."""
    written = config.flows is not None
    flows = config.flows if written else {name: FlowConfig(**flow) for name, flow in DEFAULT_FLOWS.items()}
    context = RunContext(config.storage, tuple(s.name for s in config.sources))
    available: dict[str, pa.DataType] = {f.name: f.type for f in DOCUMENT_SCHEMA}
    placed: dict[str, str] = {}
    outputs = {READ_OUTPUT: READ_FLOW}
    plan: list[Flow] = []
    for flow_name, flow in flows.items():
        where = f"flows.{flow_name}" if written else flow_name
        if flow_name == READ_FLOW:
            raise ConfigError(f"{where}: the read flow is every run's first; name this flow otherwise")
        if flow.output in outputs or flow.output in ("export", "rejects"):
            raise ConfigError(f"{where}.output: {flow.output!r} is another flow's folder or the run's own")
        for name in flow.stages:
            if name not in config.stages:
                if written:
                    raise ConfigError(
                        f"{where}.stages: no stage {name!r} in the config (stages: {', '.join(config.stages)})"
                    )
                continue  # a default flow's stage the config has no section for (cjk_ratio)
            if name in placed:
                raise ConfigError(f"{where}.stages: {name} runs in flow {placed[name]} already")
            placed[name] = flow_name
        if flow.needs and not set(flow.needs) <= available.keys():
            continue
        if flow.export and not config.final.enabled:
            continue
        stages = [
            stage_class(config.stage_type(n))(n, config.stages[n], context)
            for n in flow.stages
            if n in config.stages and config.stages[n].enabled
        ]
        if not stages and not (flow.export or flow.always):
            continue
        if flow.export and "instruction" not in available:
            raise ConfigError(f"{where}.export: the export needs instructions, which no stage before it adds")
        for i, stage in enumerate(stages):
            generated = [s.name for s in stages[:i] if not s.deterministic]
            if stage.kind == "global" and generated:
                raise ConfigError(
                    f"{where}.stages: {stage.name} reads all of its input twice, which {generated[0]} in the same "
                    f"flow would generate twice: put {stage.name} in a flow after it"
                )
            split = [s.name for s in stages[:i] if s.kind == "split"]
            if split and not stage.carries_columns:
                raise ConfigError(
                    f"{where}.stages: {stage.name} cannot follow {split[0]} in one flow ({split[0]} splits rows "
                    f"and {stage.name} drops the column that counts them): put {stage.name} in a flow after it"
                )
        for stage in stages:
            stage.input_schema = pa.schema([*available.items(), *REJECT_FIELDS])
            for column in stage.columns_read():
                if column not in available:
                    makers = " or ".join(_makers(column)) or "a stage that adds it"
                    raise ConfigError(
                        f"{stage.name}: the {stage.name} stage needs the {makers} stage's {column!r} column: "
                        f"enable {makers} before it"
                    )
            available.update(stage.columns_added())
        outputs[flow.output] = flow_name
        plan.append(Flow(flow_name, flow.output, stages, flow.export))
    for name, section in config.stages.items():
        if section.enabled and name not in placed and name in config.written:
            if written:
                raise ConfigError(
                    f"flows: stage {name} is enabled but in no flow: add it to one, or set {name}.enabled: false"
                )
            raise ConfigError(f"{name}: not in the default flows: write a flows: section that places it")
    if config.start is None:
        return Plan(plan)
    names = [READ_FLOW, *(flow.name for flow in plan)]
    if config.start.flow not in names:
        raise ConfigError(
            f"start.flow: no flow {config.start.flow!r} in the config's plan (flows: {', '.join(names)})"
        )
    after = names.index(config.start.flow)
    if after == len(plan):
        raise ConfigError(f"start.flow: {config.start.flow} is the plan's last flow: nothing would run after it")
    return Plan(plan[after:], plan[:after], config.start.flow)


def parse_config(data: Any, base: Path | None = None) -> RunConfig:
    """A run config mapping, validated and its plan checked; local paths resolve against `base`."""
    config = parse_sections(data, STAGE_TYPES, base)
    build_plan(config)
    return config


def load_config_data(path: str | os.PathLike[str], overrides: Sequence[str] = ()) -> tuple[Any, RunConfig]:
    """A YAML run config with `--set` overrides, as data and validated; every failure is a one-line ConfigError."""
    return load(path, overrides, parse_config)


def load_config(path: str | os.PathLike[str], overrides: Sequence[str] = ()) -> RunConfig:
    """Read and validate a YAML run config, with `--set` overrides; every failure is a one-line ConfigError."""
    return load_config_data(path, overrides)[1]
