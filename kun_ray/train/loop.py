"""`kun-ray loop`: Humpback's self-alignment loop, every step a folder of one loop output.

    <output>/iter-1/curated/   the run config's run with the models it names (M0)
    <output>/iter-1/train/     the final role trained on seed + iter-1's final/ pairs: M1 in model/
    <output>/iter-2/curated/   the run config again, its `curate_with_trained` stages on M1
    <output>/iter-2/train/     M2 on seed + iter-2's pairs
    ...

Run it again after a crash and it goes on where it stopped: a finished curation redoes nothing
(the run folder resumes), a finished training (train_report.json) is skipped, and a training
stopped half-way resumes from its last checkpoint.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from kun_ray.config import ConfigError, LoopConfig, load_train_config
from kun_ray.io.storage import url_to_fs
from kun_ray.pipeline import run
from kun_ray.plan import build_plan, load_config
from kun_ray.train.trainer import MODEL_FOLDER, REPORT, train

logger = logging.getLogger("kun_ray")


def loop(config: LoopConfig) -> list[dict[str, Any]]:
    """Run every iteration; what each one curated and trained."""
    iterations: list[dict[str, Any]] = []
    model: str | None = None
    curate = load_config(config.curate)
    for name in config.curate_with_trained:  # a stage that is off is fine: it takes the model and stays off
        if "model" not in getattr(curate.stages.get(name), "model_fields", {}):
            raise ConfigError(f"curate_with_trained: {name!r} is not an LLM stage of {config.curate}")
    for k in range(1, config.iterations + 1):
        folder = f"{config.output.rstrip('/')}/iter-{k}"
        curated_at, train_at = f"{folder}/curated", f"{folder}/train"
        stages = [f"{stage}.model={json.dumps(model)}" for stage in config.curate_with_trained] if model else []
        curation = run(load_config(config.curate, [f"output={json.dumps(curated_at)}", *stages]))
        training = load_train_config(
            config.train, [f"output={json.dumps(train_at)}", f"curated={json.dumps([curated_at])}"]
        )
        fs, root = url_to_fs(train_at, training.storage)
        if fs.exists(f"{root}/{REPORT}"):
            logger.info("iteration %d: %s already trained, skipped", k, train_at)
            report = json.loads(fs.cat_file(f"{root}/{REPORT}"))
        else:
            report = train(training)
        exporting = {flow.name for flow in build_plan(curate).flows if flow.export}
        final = [s for s in curation["stages"] if s.get("flow") in exporting]
        pairs = final[-1]["kept"] if final else 0
        iterations.append(
            {
                "iteration": k,
                "curated": curated_at,
                "curated_with": model,
                "pairs": pairs,
                "model": report["model"],
                "steps": report["steps"],
            }
        )
        model = f"{train_at}/{MODEL_FOLDER}"
    return iterations
