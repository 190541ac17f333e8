"""`kun-ray train` and `kun-ray loop` configs: fine-tuning on Ray Train, and Humpback's loop."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from kun_ray.config.base import StorageOptions, StrictModel
from kun_ray.config.run import CURATED_TAG, SEED_TAG

#: Humpback (arXiv 2308.06259, section 3.1 and appendix): lr 1e-5 decaying linearly to 9e-6,
#: weight decay 0.1, a batch of 32 examples (8 below 3,000), dropout 0.1; Adam's beta2 0.95 and
#: the steps as Spico197/Humback runs them (scripts/train_seed.sh: 500 on the 3,200 seed pairs
#: for M_yx and M0; README: "the original Humback trains 1600 steps on 512k samples" for M1).
HUMPBACK = {
    "learning_rate": 1e-5, "final_learning_rate": 9e-6, "weight_decay": 0.1, "dropout": 0.1, "adam_beta2": 0.95,
    "warmup_ratio": 0.0, "global_batch_size": 32, "small_data": {"below": 3000, "global_batch_size": 8},
}  # fmt: skip

#: Hyperparameters from the papers, by name; keys a training config sets itself win.
TRAIN_PRESETS: dict[str, dict[str, Any]] = {
    # Kun (arXiv 2401.06477): the label (backward) model 6 epochs, the chat model 4, both at lr 1e-5.
    "kun_label": {"epochs": 6, "learning_rate": 1e-5},
    "kun_chat": {"epochs": 4, "learning_rate": 1e-5},
    "humpback_myx": {**HUMPBACK, "max_steps": 500},  # the backward (label) model, on the seed pairs
    "humpback_m0": {**HUMPBACK, "max_steps": 500},  # the seed model that rates in iteration 1
    "humpback_final": {**HUMPBACK, "max_steps": 1600},  # M1, M2: seed + curated pairs
}


class SmallData(StrictModel):
    """A smaller global batch for a small training set (Humpback: 8 below 3,000 examples)."""

    below: int = Field(gt=0)
    global_batch_size: int = Field(gt=0)


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
    #: Hyperparameters from a paper (TRAIN_PRESETS); the keys a config writes win.
    preset: Literal["kun_label", "kun_chat", "humpback_myx", "humpback_m0", "humpback_final"] | None = None
    epochs: float | None = Field(default=None, gt=0)
    #: Optimizer steps to train for, instead of `epochs`.
    max_steps: int | None = Field(default=None, gt=0)
    learning_rate: float | None = Field(default=None, gt=0)
    #: Decay the learning rate linearly to this at the last step (Humpback: 9e-6); none: a cosine to 0.
    final_learning_rate: float | None = Field(default=None, ge=0)
    #: Examples per worker per forward pass.
    batch_size: int = Field(default=8, gt=0)
    gradient_accumulation_steps: int = Field(default=1, gt=0)
    #: Examples per optimizer step over all workers: sets the accumulation steps (over `batch_size` x workers).
    global_batch_size: int | None = Field(default=None, gt=0)
    small_data: SmallData | None = None
    #: The model's dropout (attention and residual, whichever its config has); none: as the base model has it.
    dropout: float | None = Field(default=None, ge=0, lt=1)
    adam_beta2: float = Field(default=0.999, gt=0, lt=1)
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

    @model_validator(mode="before")
    @classmethod
    def _apply_preset(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("preset") in TRAIN_PRESETS:
            return {**TRAIN_PRESETS[data["preset"]], **data}
        return data

    @model_validator(mode="after")
    def _defaults(self) -> TrainConfig:
        self.epochs = self.epochs if self.epochs is not None else 3
        self.learning_rate = self.learning_rate if self.learning_rate is not None else 1e-5
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
