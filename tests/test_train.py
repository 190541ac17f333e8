"""Training on Ray Train (kun_ray/train/): the examples of each role as pure functions, then a
tiny model trained by 2 Ray Train workers on the CPU, resumed, and served by vLLM in the label stage."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest
from corpus import ZH

from kun_ray.config import CURATED_TAG, SEED_TAG, ConfigError, parse_train_config
from kun_ray.train.examples import IGNORE, Pair, encode, role_messages
from kun_ray.train.trainer import batching, pad_batch, read_seed, steps

QUESTIONS = [
    "番茄怎么种？",
    "长江有多长？",
    "人每天要睡多久？",
    "春节有什么习俗？",
    "什么是光合作用？",
    "绿茶怎么泡？",
    "什么是复利？",
    "怎样预防感冒？",
]
SEED = [Pair(q, a) for q, a in zip(QUESTIONS, ZH)]


def config(tmp_path, **keys):
    return parse_train_config(
        {"role": "label", "base_model": "base", "seed": ["seed.jsonl"], "output": str(tmp_path / "out"), **keys},
        base=tmp_path,
    )


@pytest.fixture(scope="module")
def tokenizer(smoke_models):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(smoke_models["chat_model"]))


# --- examples: pure functions ----------------------------------------------------------------


def test_the_label_role_turns_pairs_around_in_the_label_stages_prompt(tmp_path):
    from kun_ray.llm.label import LabelConfig, LabelTask

    messages = role_messages(config(tmp_path), SEED[:1])[0]
    asked = LabelTask(LabelConfig(model="m")).request({"text": ZH[0]}).messages  # what the label stage sends
    assert messages == [*asked, {"role": "assistant", "content": QUESTIONS[0]}]
    humpback = role_messages(config(tmp_path, label_template="humpback"), SEED[:1])[0]
    assert humpback == [{"role": "user", "content": ZH[0]}, {"role": "assistant", "content": QUESTIONS[0]}]


def test_the_chat_role_keeps_pairs_and_the_final_role_tags_them_apart(tmp_path):
    assert role_messages(config(tmp_path, role="chat"), SEED[:1]) == [
        [{"role": "user", "content": QUESTIONS[0]}, {"role": "assistant", "content": ZH[0]}]
    ]
    final = role_messages(config(tmp_path, role="final"), SEED[:2], [Pair("长江在哪里入海？", "东海。")])
    assert [m[0] for m in final] == [{"role": "system", "content": SEED_TAG}] * 2 + [
        {"role": "system", "content": CURATED_TAG}
    ]
    assert (
        SEED_TAG == "Answer in the style of an AI Assistant."
        and CURATED_TAG == "Answer with knowledge from web search."
    )
    assert final[2][1:] == [
        {"role": "user", "content": "长江在哪里入海？"},
        {"role": "assistant", "content": "东海。"},
    ]


def test_the_loss_is_on_the_answer_tokens_only(tokenizer):
    messages = [{"role": "user", "content": ZH[1]}, {"role": "assistant", "content": QUESTIONS[1]}]
    example = encode(messages, tokenizer, 1024)
    answer = [i for i, label in zip(example["input_ids"], example["labels"]) if label != IGNORE]
    assert tokenizer.decode(answer) == QUESTIONS[1] + tokenizer.eos_token  # the answer, then stop
    prompt = tokenizer.apply_chat_template(messages[:1], add_generation_prompt=True, tokenize=True)["input_ids"]
    assert example["labels"][: len(prompt)] == [IGNORE] * len(prompt) and example["input_ids"][: len(prompt)] == prompt
    assert encode(messages, tokenizer, len(prompt)) is None  # no room for one answer token
    cut = encode(messages, tokenizer, len(prompt) + 2)
    assert len(cut["input_ids"]) == len(prompt) + 2 and cut["labels"][-2:] == cut["input_ids"][-2:]


def test_pad_batch_pads_ids_masks_and_labels():
    batch = pad_batch(
        {"input_ids": [[5, 6, 7], [8]], "attention_mask": [[1, 1, 1], [1]], "labels": [[IGNORE, 6, 7], [8]]}, pad_id=0
    )
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [[IGNORE, 6, 7], [8, IGNORE, IGNORE]]


def test_seed_rows_that_are_not_pairs_are_skipped_with_where_and_why(tmp_path):
    (tmp_path / "seed.jsonl").write_text(
        "\n".join(
            [
                json.dumps({"instruction": "长江有多长？", "output": ZH[1]}, ensure_ascii=False),
                "{not json",
                json.dumps({"instruction": "空"}),
                "",
                json.dumps({"instruction": "q", "output": "a"}),
            ]
        ),
        encoding="utf-8",
    )
    pairs, problems = read_seed(config(tmp_path))
    assert pairs == [Pair("长江有多长？", ZH[1]), Pair("q", "a")]
    assert problems == [
        f"{tmp_path / 'seed.jsonl'}:2: not a pair with a non-empty instruction and output",
        f"{tmp_path / 'seed.jsonl'}:3: not a pair with a non-empty instruction and output",
    ]


def test_a_seed_with_no_pairs_stops_before_any_worker_with_one_line(tmp_path, smoke_models):
    from kun_ray.train.trainer import train

    (tmp_path / "seed.jsonl").write_text('{"instruction": "q"}\n', encoding="utf-8")
    with pytest.raises(ConfigError, match=f"label: no training examples in {tmp_path / 'seed.jsonl'}"):
        train(config(tmp_path, base_model=str(smoke_models["chat_model"])))


def test_presets_and_one_line_config_errors(tmp_path):
    assert (config(tmp_path, preset="kun_label").epochs, config(tmp_path, preset="kun_label").learning_rate) == (
        6,
        1e-5,
    )
    assert config(tmp_path, preset="kun_chat", epochs=1).epochs == 1  # a key of the config's own wins
    assert config(tmp_path, preset="kun_chat").epochs == 4
    with pytest.raises(ConfigError, match=r"learnig_rate: unknown key \(did you mean 'learning_rate'\?\)"):
        config(tmp_path, learnig_rate=1e-5)
    with pytest.raises(ConfigError, match="curated pairs are for the final role, not label"):
        config(tmp_path, curated=["run"])
    assert steps(8, config(tmp_path, batch_size=2, epochs=3, scaling={"num_workers": 2})) == (2, 6)


def test_humpbacks_recipes_as_presets(tmp_path):
    final = config(tmp_path, preset="humpback_final", role="final")
    assert (final.learning_rate, final.final_learning_rate, final.weight_decay, final.dropout) == (
        1e-5,
        9e-6,
        0.1,
        0.1,
    )
    assert (final.max_steps, final.adam_beta2, final.global_batch_size) == (1600, 0.95, 32)
    assert config(tmp_path, preset="humpback_myx").max_steps == config(tmp_path, preset="humpback_m0").max_steps == 500
    eight = config(tmp_path, preset="humpback_m0", scaling={"num_workers": 8})
    assert batching(3200, eight) == (4, 1)  # 32 examples a step: 4 on each of 8 workers
    assert batching(2999, eight) == (1, 1)  # 8 below 3,000 examples
    one = config(tmp_path, preset="humpback_m0", batch_size=4, scaling={"num_workers": 1})
    assert batching(3200, one) == (4, 8)  # 32 by accumulating 8 passes of 4
    assert steps(3200, one) == (100, 500)  # max_steps, not epochs
    assert batching(100, config(tmp_path, batch_size=2)) == (2, 1)  # no global batch: as written


def test_the_ready_training_and_loop_configs_validate():
    from pathlib import Path

    from kun_ray.config import load_loop_config, load_train_config

    jobs = Path(__file__).parent.parent / "jobs"
    roles = {path.name: load_train_config(path).role for path in sorted(jobs.glob("train-*.yaml"))}
    assert roles == {
        "train-chat.yaml": "chat",
        "train-demo.yaml": "label",
        "train-final.yaml": "final",
        "train-humpback-m0.yaml": "chat",
        "train-humpback-myx.yaml": "label",
        "train-label.yaml": "label",
    }
    assert load_train_config(jobs / "train-final.yaml").max_steps == 1600  # Humpback's recipe, by its preset
    assert (
        load_train_config(jobs / "train-label.yaml").epochs == 6
        and load_train_config(jobs / "train-chat.yaml").lora is not None
    )
    loop = load_loop_config(jobs / "loop-humpback.yaml")
    assert loop.curate == str(jobs / "humpback.yaml") and load_train_config(loop.train).role == "final"


# --- training on Ray Train ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(ray_cluster, smoke_models, s3):
    """The label model: 8 seed pairs turned around (on S3, half JSONL, half Parquet), 2 Ray Train
    workers on the CPU, checkpoints and the model written to S3."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from kun_ray.train.trainer import train

    fs = s3.fs()
    fs.pipe(
        "corpora/seed/part-1.jsonl",
        "\n".join(
            json.dumps({"instruction": p.instruction, "output": p.output}, ensure_ascii=False) for p in SEED[:4]
        ).encode("utf-8"),
    )
    with fs.open("corpora/seed/part-2.parquet", "wb") as f:
        pq.write_table(pa.Table.from_pylist([{"instruction": p.instruction, "output": p.output} for p in SEED[4:]]), f)
    keys = {
        "role": "label", "base_model": str(smoke_models["chat_model"]), "seed": ["s3://corpora/seed/*"], "output": "s3://runs/train",
        "epochs": 8, "learning_rate": 3e-3, "batch_size": 2, "warmup_ratio": 0.0, "dtype": "float32", "storage": s3.storage(),
        "scaling": {"num_workers": 2, "use_gpu": False, "cpus_per_worker": 0.5},
    }  # fmt: skip
    return keys, train(parse_train_config(keys))


def test_two_workers_train_and_the_loss_goes_down(trained, s3):
    _, report = trained
    assert report["seed_pairs"] == 8 and report["examples"] == 8 and report["workers"] == 2
    assert report["steps"] == 16 and report["steps_per_epoch"] == 2
    first, last = report["loss"][0], report["loss"][-1]
    assert last < 0.5 * first, report["loss"]
    fs = s3.fs()
    fs.invalidate_cache()
    assert json.loads(fs.cat_file("runs/train/train_report.json")) == report
    # keep_checkpoints: the newest two of one per epoch hold files (SeaweedFS lists the folders of deleted ones)
    checkpoints = {p.split("/")[3] for p in fs.find("runs/train/ray-train") if "/checkpoint_2" in p}
    assert len(checkpoints) == 2, checkpoints
    assert {"config.json", "model.safetensors", "tokenizer.json", "chat_template.jinja"} <= {
        p.rsplit("/", 1)[-1] for p in fs.ls("runs/train/model")
    }


def test_a_second_training_into_the_same_output_resumes_from_its_last_checkpoint(trained, s3, tmp_path, capsys):
    import yaml

    from kun_ray.cli import main

    keys, first = trained
    (tmp_path / "train.yaml").write_text(yaml.safe_dump(keys, allow_unicode=True), encoding="utf-8")
    assert main(["train", str(tmp_path / "train.yaml"), "--set", "epochs=9"]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    fs = s3.fs()
    fs.invalidate_cache()
    report = json.loads(fs.cat_file("runs/train/train_report.json"))
    assert (
        report["steps"] == printed["steps"] == 18 and len(report["loss"]) == 18
    )  # steps 1-16 from the first run's checkpoint on S3, then 17-18
    assert report["loss"][:16] == first["loss"] and printed["model"] == "s3://runs/train/model"


def test_the_humpback_loop_rerates_iteration_1s_candidates_with_the_trained_model(ray_cluster, smoke_models, tmp_path):
    """Two iterations on the CPU: label and score with M0 -> train M1 (final role: seed + curated,
    tagged) -> score iteration 1's labelled candidates with M1 in vLLM, labelling nothing again ->
    train M2.  Run again, it redoes nothing."""
    import yaml
    from corpus import jsonl
    from llm_runs import engine

    from kun_ray.config import load_loop_config
    from kun_ray.train.loop import loop

    (tmp_path / "corpus").mkdir()
    (tmp_path / "corpus" / "web.jsonl").write_bytes(jsonl([{"text": t} for t in ZH[8:]]))
    (tmp_path / "seed.jsonl").write_text(
        "\n".join(
            json.dumps({"instruction": p.instruction, "output": p.output}, ensure_ascii=False) for p in SEED[:4]
        ),
        encoding="utf-8",
    )
    curate = {
        "sources": [{"name": "web", "format": "jsonl", "paths": ["corpus"]}], "output": "unused",
        "length": {"min_chars": 10, "tokenizer": str(smoke_models["tokenizer"])},
        "label": {**engine(smoke_models["chat_model"]), "keywords": [], "sampling": {"max_tokens": 8}},
        # Humpback's 5-point rating by log-probabilities; a random model's expected rating is near 3
        "score": {**engine(smoke_models["chat_model"]), "mode": "humpback_pair", "method": "logprobs", "min_score": 1.0},
    }  # fmt: skip
    training = {
        "role": "final", "base_model": str(smoke_models["chat_model"]), "seed": ["seed.jsonl"], "output": "unused",
        "preset": "humpback_final", "max_steps": 2, "learning_rate": 1e-3, "final_learning_rate": 5e-4,  # Humpback's recipe, shorter
        "batch_size": 2, "dtype": "float32", "scaling": {"num_workers": 2, "use_gpu": False, "cpus_per_worker": 0.5},
        "lora": {"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]},  # merged into M1 before vLLM serves it
    }  # fmt: skip
    (tmp_path / "curate.yaml").write_text(yaml.safe_dump(curate, allow_unicode=True), encoding="utf-8")
    (tmp_path / "train.yaml").write_text(yaml.safe_dump(training, allow_unicode=True), encoding="utf-8")
    (tmp_path / "loop.yaml").write_text(
        yaml.safe_dump({"output": "loop", "curate": "curate.yaml", "train": "train.yaml", "iterations": 2}),
        encoding="utf-8",
    )
    config = load_loop_config(tmp_path / "loop.yaml")
    assert config.curate_with_trained == ["score"]  # Humpback's loop by default

    iterations = loop(config)
    out = tmp_path / "loop"
    m1 = str(out / "iter-1" / "train" / "model")
    assert [i["curated_with"] for i in iterations] == [None, m1]
    first, second = (
        json.loads((out / f"iter-{k}" / "curated" / "report.json").read_text(encoding="utf-8")) for k in (1, 2)
    )
    labelled = next(s for s in first["stages"] if s["stage"] == "label")["kept"]
    assert list(second["flows"]) == ["score", "final"]  # nothing read, cleaned or labelled again
    assert second["start"]["run"] == str(out / "iter-1" / "curated") and second["start"]["flow"] == "label"
    score = next(s for s in second["stages"] if s["stage"] == "score")
    assert score["model"] == m1 and score["in"] == labelled > 0  # iteration 1's candidates, rated by M1 in vLLM
    candidates = pq.read_table(out / "iter-1" / "curated" / "labeled").sort_by("doc_id")
    rerated = pq.read_table(out / "iter-2" / "curated" / "scored").sort_by("doc_id")
    assert rerated["instruction"].to_pylist() == candidates["instruction"].to_pylist()  # the same pool
    assert (
        not (out / "iter-2" / "curated" / "labeled").exists()
        and not (out / "iter-2" / "curated" / "documents").exists()
    )
    for k, iteration in enumerate(iterations, 1):
        report = json.loads((out / f"iter-{k}" / "train" / "train_report.json").read_text(encoding="utf-8"))
        assert (
            report["seed_pairs"] == 4 and report["curated_pairs"] == iteration["pairs"] > 0 and report["lora"]
        )  # seed + A(k)
        assert (
            report["examples"] == 4 + iteration["pairs"]
            and (out / f"iter-{k}" / "train" / "model" / "config.json").exists()
        )
        # 8 examples a step below 3,000 (2 workers x 2 x 2 passes); the rate each step ran at, decaying
        # linearly from 1e-3 to reach the final 5e-4 at the end of step 2
        assert report["global_batch_size"] == 8 and report["steps"] == 2
        assert report["learning_rates"] == pytest.approx([1e-3, 7.5e-4])
    again = loop(config)  # a finished loop redoes nothing
    assert again == iterations
    assert all(
        f["shards_resumed"] == f["shards"]
        for f in json.loads((out / "iter-2" / "curated" / "report.json").read_text(encoding="utf-8"))["flows"].values()
    )
    assert not (out / "iter-1" / "train" / "model" / "adapter_config.json").exists()  # a plain model, LoRA merged
