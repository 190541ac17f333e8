"""`kun-ray train` and `kun-ray loop` configs: fine-tuning on Ray Train, and Humpback's loop."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from kun_ray.config.base import StorageOptions, StrictModel
from kun_ray.config.run import CURATED_TAG, SEED_TAG

#: Hyperparameters from the papers, by name; keys a training config sets itself win.
TRAIN_PRESETS: dict[str, dict[str, Any]] = {
    # Kun (arXiv 2401.06477): the label (backward) model 6 epochs, the chat model 4, both at lr 1e-5.
    "kun_label": {"epochs": 6, "learning_rate": 1e-5},
    "kun_chat": {"epochs": 4, "learning_rate": 1e-5},
}


class LoraSettings(StrictModel):
    """LoRA through PEFT; absent from a training config, every weight is trained."""

    r: int = Field(default=16, gt=0)
    alpha: int = Field(default=32, gt=0)
    dropout: float = Field(default=0.05, ge=0, lt=1)
    target_modules: list[str] | Literal["all-linear"] = "all-linear"


class TrainScaling(StrictModel):
    """Ray Train's ScalingConfig: data-parallel workers, each with its GPU (or CPUs)."""

    num_workers: int = Field(default=1, gt=0)
    use_gpu: bool = True
    cpus_per_worker: float = Field(default=1, gt=0)
    accelerator_type: str | None = None


class TrainConfig(StrictModel):
    """`kun-ray train`: fine-tune a label, chat or final model on Ray Train."""

    #: label: seed pairs turned around (output -> instruction) in the label stage's prompt;
    #: chat: seed pairs as they are; final: seed pairs plus curated ones, tagged apart (Humpback).
    role: Literal["label", "chat", "final"]
    base_model: str
    #: Seed pairs: JSONL (instruction, output) or Parquet, local or on object storage; globs allowed.
    seed: list[str] = Field(min_length=1)
    #: The final role's generated pairs: run folders whose final/ it reads (instruction, answer or text).
    curated: list[str] = Field(default_factory=list)
    #: Where checkpoints (Ray Train) and the trained model (model/) go, local or object storage.
    output: str
    preset: Literal["kun_label", "kun_chat"] | None = None
    epochs: float | None = Field(default=None, gt=0)
    learning_rate: float | None = Field(default=None, gt=0)
    batch_size: int = Field(default=8, gt=0)
    gradient_accumulation_steps: int = Field(default=1, gt=0)
    max_length: int = Field(default=1024, gt=0)
    warmup_ratio: float = Field(default=0.03, ge=0, lt=1)
    weight_decay: float = Field(default=0.0, ge=0)
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    lora: LoraSettings | None = None
    scaling: TrainScaling = TrainScaling()
    #: Steps between checkpoints (default: one per epoch); the newest `keep_checkpoints` stay.
    save_steps: int | None = Field(default=None, gt=0)
    keep_checkpoints: int = Field(default=2, gt=0)
    #: The label role's prompt: the label stage's template, so the model is asked as it was trained.
    label_template: Literal["kun", "humpback"] = "kun"
    seed_tag: str = SEED_TAG
    curated_tag: str = CURATED_TAG
    random_seed: int = 0
    storage: StorageOptions = StorageOptions()

    @model_validator(mode="after")
    def _apply_preset(self) -> TrainConfig:
        preset = TRAIN_PRESETS.get(self.preset or "", {})
        self.epochs = self.epochs if self.epochs is not None else preset.get("epochs", 3)
        self.learning_rate = (
            self.learning_rate if self.learning_rate is not None else preset.get("learning_rate", 1e-5)
        )
        if self.curated and self.role != "final":
            raise ValueError(f"curated pairs are for the final role, not {self.role}")
        return self


class LoopConfig(StrictModel):
    """`kun-ray loop`: Humpback's self-alignment loop.  Iteration 1 curates with the run config
    into <output>/iter-1/curated; iteration k >= 2 re-rates iteration 1's candidates (the rows
    committed before the first `curate_with_trained` stage) with the model trained in iteration
    k-1, into <output>/iter-k/curated.  Each then trains the final role on seed + its pairs into
    <output>/iter-k/train."""

    output: str
    #: The run config each iteration curates with (label, score, ...), relative to this file.
    curate: str
    #: The training config of the final role (base model, seed, hyperparameters), relative to this file.
    train: str
    iterations: int = Field(default=2, ge=1)
    #: The LLM stages that take the newest trained model from the second iteration on (Humpback:
    #: score; Kun: score and polish); the flows before the first of them run in iteration 1 only.
    #: Each must name an LLM stage of the run config (checked when the loop starts).
    curate_with_trained: list[str] = Field(default_factory=lambda: ["score"])
