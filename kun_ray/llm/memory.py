"""Preflight: do an LLM stage's weights fit the GPUs it asks for?  Checked on the driver before
any flow runs, so a 34B model sent to one 24 GB L4 is a one-line config error, not an engine
that dies minutes later on a GPU node the autoscaler started for it.

The weights' size comes from the model's `config.json`: its parameters are counted by building
the model on PyTorch's meta device (no memory, any architecture transformers knows), times the
bytes per parameter of the dtype the engine loads (vLLM's `dtype: auto` loads float32 weights as
float16) or of the quantization's bits.  The room is the accelerator's memory x
`gpu_memory_utilization` x tensor x pipeline parallel size.  What cannot be known (no
`accelerator_type`, a model whose config cannot be read or built) is not checked, and the log
says so.
"""

from __future__ import annotations

import json
import logging
import math
import os
from typing import Any

from kun_ray.config.base import ConfigError, StorageOptions
from kun_ray.io.storage import url_to_fs

logger = logging.getLogger("kun_ray")

#: Memory of one accelerator, in GB (10^9 bytes, as sold; a little under what the cards report),
#: by the `accelerator_type` names of ray.util.accelerators.
ACCELERATOR_GB: dict[str, float] = {
    "T4": 16, "V100": 16, "P100": 16, "P4": 8, "K80": 12, "A10G": 24, "L4": 24, "L40S": 48,
    "A100": 40, "A100-40G": 40, "A100-80G": 80, "H100": 80, "H200": 141, "H20": 96,
    "B200": 180, "B300": 288, "GB200": 186, "GB300": 288, "RTX-PRO-6000": 96,
    "AMD-Instinct-MI210": 64, "AMD-Instinct-MI250X-MI250": 128, "AMD-Instinct-MI300A": 128,
}  # fmt: skip
DTYPE_BYTES = {"float32": 4, "float": 4, "float16": 2, "half": 2, "bfloat16": 2}
GIB = 1 << 30


def parameter_count(model_config: dict[str, Any]) -> int | None:
    """The parameters of the model a `config.json` describes, counted on the meta device; None
    when transformers cannot build it (an unknown `model_type`, remote code)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        config = AutoConfig.for_model(**model_config)
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config)
    except Exception:  # any architecture it cannot build is left unchecked
        return None
    return sum(p.numel() for p in model.parameters())


def bytes_per_parameter(model_config: dict[str, Any], engine_kwargs: dict[str, Any]) -> float:
    """What one weight takes once vLLM has loaded it: the quantization's bits, else the dtype's."""
    quantization = model_config.get("quantization_config") or {}
    bits = quantization.get("bits") or quantization.get("w_bit")
    if bits:
        return bits / 8
    if "fp8" in str(engine_kwargs.get("quantization") or quantization.get("quant_method") or ""):
        return 1.0
    dtype = str(engine_kwargs.get("dtype") or "auto")
    if dtype == "auto":  # vLLM: the checkpoint's dtype, but float16 for a float32 one
        stored = str(model_config.get("dtype") or model_config.get("torch_dtype") or "bfloat16")
        return min(DTYPE_BYTES.get(stored, 2), 2)
    return DTYPE_BYTES.get(dtype, 2)


def check_fits(
    stage: str,
    model: str,
    model_config: dict[str, Any],
    engine_kwargs: dict[str, Any],
    accelerator_type: str,
) -> str:
    """A ConfigError naming the stage when the model's weights cannot fit its GPUs; else the
    check's result in words, for the log."""
    gb = ACCELERATOR_GB.get(accelerator_type)
    if gb is None:
        return f"{stage}: the memory of a {accelerator_type} is not known here: weights not checked"
    params = parameter_count(model_config)
    if params is None:
        return f"{stage}: cannot count the parameters of {model} from its config.json: weights not checked"
    weights = params * bytes_per_parameter(model_config, engine_kwargs)
    tensor = int(engine_kwargs.get("tensor_parallel_size", 1))
    pipeline = int(engine_kwargs.get("pipeline_parallel_size", 1))
    utilization = float(engine_kwargs.get("gpu_memory_utilization", 0.9))
    room = gb * 1e9 * utilization * tensor * pipeline
    gpus = f"{tensor * pipeline} {accelerator_type}{'s' if tensor * pipeline > 1 else ''}"
    if weights > room:
        per_gpu = gb * 1e9 * utilization
        needed = 2 ** math.ceil(math.log2(math.ceil(weights / per_gpu)))
        raise ConfigError(
            f"{stage}.model: {model} has {params / 1e9:.1f}B parameters, {weights / GIB:.0f} GiB of weights, more "
            f"than {gpus} hold ({room / GIB:.0f} GiB at gpu_memory_utilization {utilization}): set "
            f"engine_kwargs.tensor_parallel_size to {needed} or more, or a larger accelerator_type"
        )
    return (
        f"{stage}: {model}'s weights ({weights / GIB:.1f} GiB) fit {gpus} ({room / GIB:.0f} GiB), "
        f"{(room - weights) / GIB:.1f} GiB left for the KV cache"
    )


def model_config(model: str, storage: StorageOptions) -> dict[str, Any] | None:
    """A model's config.json: from a local or object-store folder, or from the Hugging Face Hub
    for a hub id; None when it cannot be read (no network to the hub, say)."""
    try:
        if "://" in model or os.path.isdir(model):
            fs, path = url_to_fs(model.rstrip("/") + "/config.json", storage)
            return json.loads(fs.cat_file(path))
        from huggingface_hub import hf_hub_download

        with open(hf_hub_download(model, "config.json"), encoding="utf-8") as f:
            return json.load(f)
    except Exception as error:  # unreadable: the engine will say what it is when it loads
        logger.info("preflight: cannot read %s's config.json (%s): weights not checked", model, type(error).__name__)
        return None
