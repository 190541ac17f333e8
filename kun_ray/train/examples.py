"""Training examples: seed and curated pairs as chat messages, and tokens with the loss on the answer only.

Pure functions of rows and a tokenizer, no Ray: each role's examples are tested on their own.

- label: a seed pair turned around (Humpback's backward model): the label stage's own prompt
  around the pair's output, and the instruction as the answer, so the trained model is asked
  exactly as the label stage will ask it.
- chat: a seed pair as it is.
- final: seed pairs under Humpback's seed tag and curated pairs under its curated tag (system prompts).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from kun_ray.config import TrainConfig
from kun_ray.llm.label import LabelConfig, LabelTask
from kun_ray.llm.task import Messages

#: Label id the loss ignores (PyTorch's cross entropy default).
IGNORE = -100


@dataclass(frozen=True)
class Pair:
    instruction: str
    output: str


def pair_of(row: Mapping[str, Any]) -> Pair | None:
    """A seed row ({instruction, output}) or a final/ row ({instruction, answer or text}); None if
    it lacks either side."""
    instruction = row.get("instruction")
    output = row.get("output") if row.get("output") is not None else (row.get("answer") or row.get("text"))
    if (
        not isinstance(instruction, str)
        or not isinstance(output, str)
        or not instruction.strip()
        or not output.strip()
    ):
        return None
    return Pair(instruction, output)


def label_messages(pair: Pair, task: LabelTask) -> Messages:
    return [*task.request({"text": pair.output}).messages, {"role": "assistant", "content": pair.instruction}]


def chat_messages(pair: Pair, system: str | None = None) -> Messages:
    turns = [{"role": "system", "content": system}] if system else []
    return [*turns, {"role": "user", "content": pair.instruction}, {"role": "assistant", "content": pair.output}]


def role_messages(config: TrainConfig, seed: Iterable[Pair], curated: Iterable[Pair] = ()) -> list[Messages]:
    """The conversations a role trains on."""
    if config.role == "label":
        task = LabelTask(LabelConfig(model=config.base_model, template=config.label_template))
        return [label_messages(p, task) for p in seed]
    if config.role == "chat":
        return [chat_messages(p) for p in seed]
    return [chat_messages(p, config.seed_tag) for p in seed] + [chat_messages(p, config.curated_tag) for p in curated]


def _ids(encoded: Any) -> list[int]:
    return list(encoded["input_ids"] if isinstance(encoded, Mapping) or hasattr(encoded, "keys") else encoded)


def encode(messages: Messages, tokenizer: Any, max_length: int) -> dict[str, list[int]] | None:
    """Token ids of a conversation through the model's chat template, with labels only on the
    last (assistant) turn and an end-of-sequence token after it; None when the prompt alone
    leaves no room for an answer token."""
    prompt = _ids(tokenizer.apply_chat_template(messages[:-1], add_generation_prompt=True, tokenize=True))
    full = _ids(tokenizer.apply_chat_template(messages, tokenize=True))
    if full[: len(prompt)] != prompt:
        raise ValueError(
            "the chat template renders the prompt differently with the answer after it: cannot mask the prompt"
        )
    if tokenizer.eos_token_id is not None and full[-1] != tokenizer.eos_token_id:
        full.append(tokenizer.eos_token_id)  # the model learns to stop
    if len(prompt) >= max_length:
        return None
    full = full[:max_length]
    labels = [IGNORE] * len(prompt) + full[len(prompt) :]
    return {"input_ids": full, "attention_mask": [1] * len(full), "labels": labels}
