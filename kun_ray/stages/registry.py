"""The stage registry and the default flows, side by side.

A stage type is one line here: its key and the class that implements it (imported when a
config first names it, so reading a run back never loads a model library).  The default flows
say which stages run in which flow and which folder each flow writes, when a config has no
`flows:` section of its own.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from functools import cache
from typing import TYPE_CHECKING, Any

from kun_ray.config.run import Section

if TYPE_CHECKING:
    from kun_ray.config.base import StageConfig
    from kun_ray.stages.base import Stage

#: Stage type -> "module:Class".
REGISTRY: dict[str, str] = {
    "normalize": "kun_ray.clean.normalize:Normalize",
    "segment": "kun_ray.clean.segment:Segment",
    "cjk_ratio": "kun_ray.clean.cjk_ratio:CjkRatio",
    "length": "kun_ray.clean.length:Length",
    "perplexity": "kun_ray.clean.perplexity:Perplexity",
    "heuristics": "kun_ray.clean.heuristics:Heuristics",
    "exact_dedup": "kun_ray.dedup.exact:ExactDedup",
    "near_dedup": "kun_ray.dedup.near:NearDedup",
    "label": "kun_ray.llm.label:Label",
    "score": "kun_ray.llm.score:Score",
    "polish": "kun_ray.llm.polish:Polish",
}

#: The flows of a run whose config has no `flows:`, in order, after the read flow (which writes
#: documents/).  Stages that are off are left out of their flow, and a flow left with none is
#: left out unless it runs `always` (filter and dedup: their folders are always there); a flow
#: that `needs` a column no earlier flow makes is left out too (final, when no LLM stage ran).
DEFAULT_FLOWS: dict[str, dict[str, Any]] = {
    "filter": {
        "output": "filtered",
        "stages": ["normalize", "segment", "cjk_ratio", "length", "perplexity", "heuristics"],
        "always": True,
    },
    "dedup": {"output": "clean", "stages": ["exact_dedup", "near_dedup"], "always": True},
    "label": {"output": "labeled", "stages": ["label"]},
    "score": {"output": "scored", "stages": ["score"]},
    "polish": {"output": "polished", "stages": ["polish"]},
    "final": {
        "output": "final",
        "stages": ["instruction_exact_dedup", "instruction_near_dedup"],
        "needs": ["instruction"],
        "export": True,
    },
}
#: The read flow: every run starts with it.
READ_FLOW, READ_OUTPUT = "read", "documents"

#: The sections every run config has, written or not: kun-ray 0.1's, so its fingerprints hold.
#: New stage types are not here: a config has their section when it writes one.
SECTIONS: dict[str, Section] = {
    "normalize": Section("normalize"),
    "length": Section("length"),
    "perplexity": Section("perplexity", unwritten={"enabled": False}),
    "heuristics": Section("heuristics"),
    "exact_dedup": Section("exact_dedup"),
    "near_dedup": Section("near_dedup"),
    "label": Section("label", unwritten={"enabled": False}),
    "score": Section("score", unwritten={"enabled": False}),
    "polish": Section("polish", unwritten={"enabled": False}),
    "instruction_exact_dedup": Section("exact_dedup", defaults={"column": "instruction"}, legacy="final.exact_dedup"),
    "instruction_near_dedup": Section("near_dedup", defaults={"column": "instruction"}, legacy="final.near_dedup"),
}


@cache
def stage_class(stage_type: str) -> type[Stage]:
    module, _, name = REGISTRY[stage_type].partition(":")
    return getattr(importlib.import_module(module), name)


class Registry:
    """The registry as the run config reads it (kun_ray.config.run.StageTypes)."""

    sections: Mapping[str, Section] = SECTIONS

    def types(self) -> list[str]:
        return list(REGISTRY)

    def config_model(self, stage_type: str) -> type[StageConfig]:
        return stage_class(stage_type).config_model


STAGE_TYPES = Registry()
