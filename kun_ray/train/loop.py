"""`kun-ray loop`: Humpback's self-alignment loop, every step a folder of one loop output.

    <output>/iter-1/curated/   the run config's run with the models it names (M0): label, score, ...
    <output>/iter-1/train/     the final role trained on seed + iter-1's final/ pairs: M1 in model/
    <output>/iter-2/curated/   iter-1's candidates re-rated: the run config's flows from the first
                               one with a `curate_with_trained` stage on, with M1, on the rows the
                               flow before it committed in iter-1/curated (`start:`); nothing
                               before it (reading, cleaning, labelling) runs again
    <output>/iter-2/train/     M2 on seed + iter-2's pairs
    ...

As the paper does (arXiv 2308.06259, section 2.3): iteration k rescores the same augmented
candidates with M(k-1), so each iteration selects from one candidate pool.  Run it again after
a crash and it goes on where it stopped: a finished curation redoes nothing (the run folder
resumes), a finished training (train_report.json) is skipped, and a training stopped half-way
resumes from its last checkpoint.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from kun_ray.config import ConfigError, LoopConfig, RunConfig, load_train_config
from kun_ray.io.storage import url_to_fs
from kun_ray.pipeline import run
from kun_ray.plan import build_plan, load_config
from kun_ray.stages.registry import READ_FLOW
from kun_ray.train.trainer import MODEL_FOLDER, REPORT, train

logger = logging.getLogger("kun_ray")


def candidates_flow(curate: RunConfig, config: LoopConfig) -> str:
    """The flow whose committed rows are the loop's candidates: the one before the first flow
    with a stage that takes the trained model (Humpback: label's flow, before score's)."""
    flows = build_plan(curate).flows
    names = [READ_FLOW, *(flow.name for flow in flows)]
    for i, flow in enumerate(flows):
        if {stage.name for stage in flow.stages} & set(config.curate_with_trained):
            return names[i]
    raise ConfigError(f"curate_with_trained: none of {', '.join(config.curate_with_trained)} runs in {config.curate}")


def loop(config: LoopConfig) -> list[dict[str, Any]]:
    """Run every iteration; what each one curated and trained."""
    iterations: list[dict[str, Any]] = []
    model: str | None = None
    curate = load_config(config.curate)
    for name in config.curate_with_trained:  # a stage that is off is fine: it takes the model and stays off
        if "model" not in getattr(curate.stages.get(name), "model_fields", {}):
            raise ConfigError(f"curate_with_trained: {name!r} is not an LLM stage of {config.curate}")
    start: dict[str, Any] = {"run": f"{config.output.rstrip('/')}/iter-1/curated"}  # where iteration 1 curates
    if config.iterations > 1:
        start["flow"] = candidates_flow(curate, config)
        if curate.output.storage is not None:  # iteration 1's folder is where the run config writes
            start["storage"] = curate.output.storage.model_dump(exclude_none=True)
    for k in range(1, config.iterations + 1):
        folder = f"{config.output.rstrip('/')}/iter-{k}"
        curated_at, train_at = f"{folder}/curated", f"{folder}/train"
        overrides = [f"output={json.dumps(curated_at)}"]
        if model:  # iteration 2 on: iteration 1's candidates, re-rated with the newest model
            overrides += [f"start={json.dumps(start)}"]
            overrides += [f"{stage}.model={json.dumps(model)}" for stage in config.curate_with_trained]
        curation = run(load_config(config.curate, overrides))
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
