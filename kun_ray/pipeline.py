"""Assembles the stages a config asks for into Ray Data flows, and keeps the accounting.

Today the pipeline is read -> write: every record of every source ends in documents/ or
in rejects/read/ with its reason.
"""

from __future__ import annotations

import time
from datetime import datetime, timezone
from typing import Any

from kun_ray import __version__
from kun_ray.config import RunConfig
from kun_ray.io.read import InputFile, plan_inputs, read_documents
from kun_ray.report import stage_report
from kun_ray.run import RunFolder


def run(config: RunConfig, inputs: list[InputFile] | None = None) -> dict[str, Any]:
    """Run the configured stages on the current Ray cluster; returns the report also written to report.json.

    `inputs` are the files `plan_inputs(config)` lists; they are listed here when not given.
    """
    started = datetime.now(timezone.utc)
    clock = time.monotonic()
    inputs = plan_inputs(config) if inputs is None else inputs
    folder = RunFolder(config)

    stage_clock = time.monotonic()
    tally = folder.write_stage("read", read_documents(config, inputs), kept_dir="documents")
    stages = [stage_report("read", tally, time.monotonic() - stage_clock, files=len(inputs))]

    report = {
        "kun_ray_version": __version__,
        "output": folder.url,
        "started_at": started.isoformat(timespec="seconds"),
        "wall_s": round(time.monotonic() - clock, 3),
        "sources": {s.name: {"format": s.format, "files": sum(f.source == s.name for f in inputs)} for s in config.sources},
        "stages": stages,
    }
    folder.write_json("report.json", report)
    return report
