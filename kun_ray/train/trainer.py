"""`kun-ray train`: fine-tune a label, chat or final model on Ray Train.

A Ray Train `TorchTrainer` runs a Hugging Face `Trainer` on every worker (data parallel, DDP),
fed by a Ray Dataset of tokenized examples (kun_ray/train/examples.py).  Hugging Face saves a
checkpoint every epoch (or `save_steps`), and Ray Train's `RayTrainReportCallback` reports it
into the output folder (`<output>/ray-train/`, local or object storage), keeping the newest
`keep_checkpoints`.  Training the same config into the same output again resumes from the
last checkpoint: Ray Train restores the run from storage and the Hugging Face Trainer from its
checkpoint (weights, optimizer, scheduler, step).  When training ends, the model (LoRA merged
into the base weights) is saved as a plain Hugging Face folder in `<output>/model/`, which
vLLM loads, with `train_report.json` beside it.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

from kun_ray.config import ConfigError, TrainConfig
from kun_ray.io.storage import expand, is_local, pyarrow_filesystem, url_to_fs
from kun_ray.train.examples import IGNORE, Pair, encode, pair_of, role_messages

RAY_TRAIN_NAME = "ray-train"
MODEL_FOLDER = "model"
REPORT = "train_report.json"


def read_seed(config: TrainConfig) -> tuple[list[Pair], list[str]]:
    """Seed pairs from JSONL or Parquet files; a line or row that is not a pair is skipped with a
    one-line note of where and why (it never stops the training)."""
    import pyarrow.parquet as pq

    pairs: list[Pair] = []
    problems: list[str] = []
    for pattern in config.seed:
        fs, path = url_to_fs(pattern, config.storage)
        files = expand(fs, path)
        if not files:
            problems.append(f"{pattern}: no file matches")
        for file, _ in files:
            if file.endswith(".parquet"):
                rows = enumerate(pq.read_table(file, filesystem=pyarrow_filesystem(fs)).to_pylist(), 1)
            else:
                with fs.open(file, "rt", encoding="utf-8", errors="replace") as f:
                    rows = enumerate(_json_lines(f.read().splitlines()), 1)
            for number, row in rows:
                pair = pair_of(row) if isinstance(row, dict) else None
                if pair is None:
                    problems.append(f"{file}:{number}: not a pair with a non-empty instruction and output")
                else:
                    pairs.append(pair)
    return pairs, problems


def _json_lines(lines: list[str]) -> list[Any]:
    rows: list[Any] = []
    for line in lines:
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                rows.append(None)
    return rows


def read_curated(config: TrainConfig) -> list[Pair]:
    """The exported pairs (final/) of each curated run (its committed files only)."""
    from kun_ray.query import Run

    pairs: list[Pair] = []
    for path in config.curated:
        run = Run.open(path, config.storage)
        if (stage := run.export_stage) is not None:
            pairs += [p for row in run.rows(f"SELECT * FROM {stage}") if (p := pair_of(row)) is not None]
    return pairs


def examples(config: TrainConfig, tokenizer: Any) -> tuple[list[dict[str, list[int]]], dict[str, Any]]:
    """The role's tokenized examples, and what became of every pair (for train_report.json)."""
    seed, problems = read_seed(config)
    curated = read_curated(config) if config.role == "final" else []
    encoded = [encode(m, tokenizer, config.max_length) for m in role_messages(config, seed, curated)]
    kept = [e for e in encoded if e is not None]
    counts = {
        "seed_pairs": len(seed),
        "curated_pairs": len(curated),
        "examples": len(kept),
        "prompt_too_long": len(encoded) - len(kept),
        "skipped_seed_rows": problems,
    }
    return kept, counts


def batching(n_examples: int, config: TrainConfig) -> tuple[int, int]:
    """(examples per worker per forward pass, forward passes per optimizer step): `batch_size` and
    `gradient_accumulation_steps`, or what makes `global_batch_size` examples per step over all
    workers (`small_data`'s below its size of training set)."""
    size = config.global_batch_size
    if config.small_data is not None and n_examples < config.small_data.below:
        size = config.small_data.global_batch_size
    if size is None:
        return config.batch_size, config.gradient_accumulation_steps
    workers = config.scaling.num_workers
    per_device = min(config.batch_size, max(1, size // workers))
    return per_device, max(1, math.ceil(size / (per_device * workers)))


def steps(n_examples: int, config: TrainConfig) -> tuple[int, int]:
    """(optimizer steps per epoch, all steps: `max_steps`, else `epochs` of them) for each worker's
    equal share of the examples."""
    per_device, accumulation = batching(n_examples, config)
    per_worker = max(1, n_examples // config.scaling.num_workers)
    per_epoch = max(1, math.ceil(math.ceil(per_worker / per_device) / accumulation))
    if config.max_steps is not None:
        return per_epoch, config.max_steps
    return per_epoch, max(1, math.ceil(per_epoch * float(config.epochs or 1)))


def _with_dropout(base_model: str, dropout: float | None) -> dict[str, Any]:
    """from_pretrained's config override that sets the model's dropout: every dropout field its
    config has (attention_dropout, hidden_dropout, resid_pdrop, ...)."""
    if dropout is None:
        return {}
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(base_model)
    for key in ("attention_dropout", "hidden_dropout", "resid_pdrop", "embd_pdrop", "attn_pdrop", "dropout"):
        if hasattr(config, key):
            setattr(config, key, dropout)
    return {"config": config}


def pad_batch(batch: dict[str, Any], pad_id: int) -> dict[str, Any]:
    """Ray Data's batch of variable-length examples as padded tensors (labels padded with IGNORE)."""
    import torch

    width = max(len(ids) for ids in batch["input_ids"])
    fill = {"input_ids": pad_id, "attention_mask": 0, "labels": IGNORE}
    return {
        key: torch.tensor([list(row) + [value] * (width - len(row)) for row in batch[key]])
        for key, value in fill.items()
    }


def train_loop(loop: dict[str, Any]) -> None:
    """One Ray Train worker: a Hugging Face Trainer over this worker's share of the examples."""
    import ray.train
    from ray.train.huggingface.transformers import (
        RayTrainReportCallback,
        prepare_trainer,
    )
    from transformers import AutoModelForCausalLM, Trainer, TrainingArguments

    config = TrainConfig.model_validate(loop["config"])
    model = AutoModelForCausalLM.from_pretrained(
        loop["base_model"], dtype=config.dtype, **_with_dropout(loop["base_model"], config.dropout)
    )
    if config.lora is not None:
        from peft import LoraConfig, get_peft_model

        lora = config.lora
        model = get_peft_model(
            model,
            LoraConfig(
                r=lora.r,
                lora_alpha=lora.alpha,
                lora_dropout=lora.dropout,
                target_modules=lora.target_modules,
                task_type="CAUSAL_LM",
            ),
        )
    shard = ray.train.get_dataset_shard("train")
    per_device, accumulation = loop["batching"]
    batches = shard.iter_torch_batches(batch_size=per_device, collate_fn=lambda b: pad_batch(b, loop["pad_id"]))
    if config.final_learning_rate is None:
        schedule: dict[str, Any] = {"lr_scheduler_type": "cosine"}
    else:  # linear decay to the final rate: a polynomial schedule of power 1
        schedule = {
            "lr_scheduler_type": "polynomial",
            "lr_scheduler_kwargs": {"lr_end": config.final_learning_rate, "power": 1.0},
        }
    arguments = TrainingArguments(
        output_dir=tempfile.mkdtemp(prefix="kun-ray-train-"),
        per_device_train_batch_size=per_device,
        gradient_accumulation_steps=accumulation,
        learning_rate=config.learning_rate,
        **schedule,
        warmup_steps=config.warmup_ratio,  # a float under 1: a share of all steps
        weight_decay=config.weight_decay,
        adam_beta2=config.adam_beta2,
        max_steps=loop["max_steps"],
        save_strategy="steps",
        save_steps=loop["save_steps"],
        logging_steps=1,
        report_to=[],
        use_cpu=not config.scaling.use_gpu,
        bf16=config.dtype == "bfloat16",
        fp16=config.dtype == "float16",
        seed=config.random_seed,
        ddp_find_unused_parameters=False,
        disable_tqdm=True,
    )
    trainer = prepare_trainer(
        Trainer(model=model, args=arguments, train_dataset=batches, callbacks=[RayTrainReportCallback()])
    )
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        trainer.train()
    else:  # a stopped training goes on from its last checkpoint
        with checkpoint.as_directory() as folder:
            trainer.train(resume_from_checkpoint=os.path.join(folder, RayTrainReportCallback.CHECKPOINT_NAME))


def export_model(checkpoint_dir: Path, config: TrainConfig, into: Path) -> None:
    """A trained checkpoint as a plain Hugging Face folder (LoRA merged into the base) with the base's tokenizer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if (checkpoint_dir / "adapter_config.json").exists():
        from peft import PeftModel

        base = AutoModelForCausalLM.from_pretrained(config.base_model, dtype=config.dtype)
        model = PeftModel.from_pretrained(base, str(checkpoint_dir)).merge_and_unload()
    else:
        model = AutoModelForCausalLM.from_pretrained(str(checkpoint_dir), dtype=config.dtype)
    model.save_pretrained(str(into))
    AutoTokenizer.from_pretrained(config.base_model).save_pretrained(str(into))


def train(config: TrainConfig) -> dict[str, Any]:
    """Train a config's role on the current Ray cluster; the report also written to train_report.json."""
    import ray.data
    import ray.train
    from ray.train.torch import TorchTrainer
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(config.base_model)
    rows, counts = examples(config, tokenizer)
    if not rows:
        raise ConfigError(f"{config.role}: no training examples in {', '.join(config.seed + config.curated)}")
    per_epoch, max_steps = steps(len(rows), config)
    per_device, accumulation = batching(len(rows), config)
    fs, root = url_to_fs(config.output, config.storage)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    trainer = TorchTrainer(
        train_loop,
        train_loop_config={
            "config": config.model_dump(mode="json"),
            "base_model": config.base_model,
            "pad_id": pad_id,
            "max_steps": max_steps,
            "batching": (per_device, accumulation),
            "save_steps": config.save_steps or per_epoch,
        },
        scaling_config=ray.train.ScalingConfig(
            num_workers=config.scaling.num_workers,
            use_gpu=config.scaling.use_gpu,
            resources_per_worker={"CPU": config.scaling.cpus_per_worker},
            accelerator_type=config.scaling.accelerator_type,
        ),
        run_config=ray.train.RunConfig(
            name=RAY_TRAIN_NAME,
            storage_path=root if not is_local(fs) else os.path.abspath(root),
            storage_filesystem=None if is_local(fs) else pyarrow_filesystem(fs),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=config.keep_checkpoints),
        ),
        datasets={"train": ray.data.from_items(rows)},
    )
    result = trainer.fit()
    with result.checkpoint.as_directory() as folder:
        checkpoint = Path(folder) / "checkpoint"
        state = json.loads((checkpoint / "trainer_state.json").read_text(encoding="utf-8"))
        with tempfile.TemporaryDirectory(prefix="kun-ray-model-") as local:
            export_model(checkpoint, config, Path(local))
            target = f"{root.rstrip('/')}/{MODEL_FOLDER}"
            if fs.exists(target):
                fs.rm(target, recursive=True)
            fs.put(local.rstrip("/") + "/", target, recursive=True)
    logged = [entry for entry in state["log_history"] if "loss" in entry]
    losses = [entry["loss"] for entry in logged]
    report = {
        "role": config.role, "base_model": config.base_model, "output": config.output,
        "model": f"{config.output.rstrip('/')}/{MODEL_FOLDER}", **counts, "epochs": config.epochs,
        "learning_rate": config.learning_rate, "lora": config.lora is not None, "workers": config.scaling.num_workers,
        "steps": state["global_step"], "steps_per_epoch": per_epoch, "loss": losses,
        "learning_rates": [entry.get("learning_rate") for entry in logged],
        "global_batch_size": per_device * accumulation * config.scaling.num_workers,
    }  # fmt: skip
    fs.pipe_file(f"{root.rstrip('/')}/{REPORT}", json.dumps(report, ensure_ascii=False, indent=2).encode("utf-8"))
    return report
