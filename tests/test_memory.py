"""The preflight memory check (kun_ray/llm/memory.py) on hand-made config.json files: a model whose
weights cannot fit the GPUs a stage asks for is a one-line config error before any GPU is asked
for, and every GPU stage of the ready configs fits the GPUs it names."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from kun_ray.config import ConfigError
from kun_ray.llm.memory import bytes_per_parameter, check_fits, parameter_count
from kun_ray.plan import parse_config

REPO = Path(__file__).resolve().parent.parent

# The shapes of the models the ready configs name, as their config.json files give them.
YI_34B = {  # m-a-p/Kun-LabelModel: Yi-34B fine-tuned
    "model_type": "llama", "vocab_size": 64000, "hidden_size": 7168, "intermediate_size": 20480,
    "num_hidden_layers": 60, "num_attention_heads": 56, "num_key_value_heads": 8, "torch_dtype": "bfloat16",
}  # fmt: skip
QWEN_7B = {  # Qwen/Qwen2.5-7B-Instruct, and the chat model jobs/train-chat.yaml makes from it
    "model_type": "qwen2", "vocab_size": 152064, "hidden_size": 3584, "intermediate_size": 18944,
    "num_hidden_layers": 28, "num_attention_heads": 28, "num_key_value_heads": 4, "torch_dtype": "bfloat16",
    "tie_word_embeddings": False,
}  # fmt: skip
LLAMA_7B = {  # Humpback's smallest: LLaMA 7B
    "model_type": "llama", "vocab_size": 32000, "hidden_size": 4096, "intermediate_size": 11008,
    "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 32, "torch_dtype": "float16",
}  # fmt: skip
SHAPES = {
    "m-a-p/Kun-LabelModel": YI_34B,
    "Qwen/Qwen2.5-7B-Instruct": QWEN_7B,
    "s3://runs/kun/models/chat-m0/model": QWEN_7B,
    "s3://runs/humpback/models/myx/model": QWEN_7B,  # jobs/train-humpback-*.yaml train Qwen2.5-7B-Instruct
    "s3://runs/humpback/models/m0/model": QWEN_7B,
}


def test_parameters_are_counted_from_the_config_alone():
    assert round(parameter_count(YI_34B) / 1e9, 1) == 34.4  # Yi-34B
    assert round(parameter_count(QWEN_7B) / 1e9, 1) == 7.6  # Qwen2.5-7B
    assert round(parameter_count(LLAMA_7B) / 1e9, 1) == 6.7  # LLaMA 7B
    assert parameter_count({"model_type": "no-such-architecture"}) is None


def test_bytes_per_parameter_follow_the_engines_dtype_and_quantization():
    assert bytes_per_parameter(YI_34B, {}) == 2
    assert bytes_per_parameter({**YI_34B, "torch_dtype": "float32"}, {}) == 2  # vLLM's auto: float16
    assert bytes_per_parameter({**YI_34B, "torch_dtype": "float32"}, {"dtype": "float32"}) == 4
    assert bytes_per_parameter({**YI_34B, "quantization_config": {"quant_method": "awq", "bits": 4}}, {}) == 0.5
    assert bytes_per_parameter(YI_34B, {"quantization": "fp8"}) == 1


def test_a_34b_model_on_one_l4_is_refused_naming_the_stage_and_what_would_fit():
    with pytest.raises(ConfigError) as refused:
        check_fits("label", "m-a-p/Kun-LabelModel", YI_34B, {"tensor_parallel_size": 1}, "L4")
    assert str(refused.value) == (
        "label.model: m-a-p/Kun-LabelModel has 34.4B parameters, 64 GiB of weights, more than 1 L4 hold "
        "(20 GiB at gpu_memory_utilization 0.9): set engine_kwargs.tensor_parallel_size to 4 or more, "
        "or a larger accelerator_type"
    )
    fits = check_fits("label", "m-a-p/Kun-LabelModel", YI_34B, {"tensor_parallel_size": 2}, "H100")
    assert fits.startswith("label: m-a-p/Kun-LabelModel's weights (64.1 GiB) fit 2 H100s (134 GiB)")
    quantized = {**YI_34B, "quantization_config": {"quant_method": "awq", "bits": 4}}
    assert "fit 1 L4" in check_fits("label", "m", quantized, {}, "L4")  # 4-bit: 16 GiB
    with pytest.raises(ConfigError, match="more than 1 L4 hold"):  # the KV cache's share leaves too little
        check_fits("label", "m", quantized, {"gpu_memory_utilization": 0.5}, "L4")
    assert "not known here" in check_fits("label", "m", YI_34B, {}, "TPU-V4")


def test_the_check_runs_when_a_gpu_stage_prepares_before_any_engine(tmp_path):
    model = tmp_path / "big-model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps(YI_34B))
    config = parse_config(
        {
            "sources": [{"name": "a", "format": "jsonl", "paths": ["x.jsonl"]}],
            "output": "out",
            "label": {"model": str(model), "accelerator_type": "L4"},
        },
        tmp_path,
    )
    from kun_ray.plan import build_plan

    label = next(s for s in build_plan(config).stages() if s.name == "label")
    with pytest.raises(ConfigError, match=r"^label\.model: .*big-model has 34\.4B parameters"):
        label.prepare()
    assert label._engine is None  # refused before an engine was built


@pytest.mark.parametrize("name", ["kun", "humpback"])
def test_every_gpu_stage_of_the_ready_configs_fits_the_gpus_it_names(name):
    data = yaml.safe_load((REPO / "jobs" / f"{name}.yaml").read_text())
    checked = 0
    for stage in ("label", "score", "polish"):
        section = data.get(stage)
        if section and section.get("device", "gpu") == "gpu" and section.get("enabled", True):
            assert section.get("accelerator_type"), f"{name}.yaml: {stage} names no GPU to size it for"
            check_fits(
                stage,
                section["model"],
                SHAPES[section["model"]],
                section["engine_kwargs"],
                section["accelerator_type"],
            )
            checked += 1
    assert checked >= 2
