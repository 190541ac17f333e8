"""The label stage's throughput against bare vLLM: same prompts, model and sampling, same run.

    python benchmarks/llm_stage.py MODEL [--rows 2000] [--device gpu|cpu] [--max-tokens 128]
                                         [--engine-kwargs '{"max_model_len": 4096}'] [--batch-size 64]

Side by side, each in its own process (so each has the whole accelerator):

- baseline: `vllm.LLM(MODEL).generate(prompts, SamplingParams(...))`, the prompts built with the
  label task's template and the model's chat template, exactly as kun-ray sends them;
- kun-ray: the label stage (kun_ray.llm.engine: Ray Data LLM processor, one engine actor) over
  the same rows, from a Ray Dataset to parsed, conformed rows.

Prints rows/s and generated tokens/s of each, engine start-up included (Ray Data LLM starts
its engines inside the run), and the ratio (target on a GPU: at least 0.9 of bare vLLM, with
enough rows that start-up is amortized).  On the CPU with the smoke-test model
(`python -m kun_ray.smoke_models jobs/demo.yaml runs/smoke-models`, then
`benchmarks/llm_stage.py runs/smoke-models/chat-model --device cpu --rows 256`) it measures
kun-ray's overhead around a model that costs almost nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time

from kun_ray.llm.label import LabelConfig, LabelTask

PHRASES = [
    "长江是中国第一长河，全长约六千三百公里", "成年人每天通常需要七到九个小时的睡眠", "春节是中国最重要的传统节日",
    "光合作用是绿色植物利用光能把二氧化碳和水转化为有机物的过程", "冲泡绿茶时水温不宜过高，一般以八十度左右为宜",
    "复利是指把利息计入本金再计算下一期利息的方式", "预防感冒最有效的方法是勤洗手", "唐诗是中国古典诗歌的高峰",
]  # fmt: skip


def texts(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return ["，".join(rng.choice(PHRASES) for _ in range(rng.randint(2, 12))) + "。" for _ in range(n)]


def stage_config(args: argparse.Namespace) -> LabelConfig:
    engine_kwargs = {"max_model_len": 2048, **json.loads(args.engine_kwargs)}
    if args.device == "cpu":
        engine_kwargs.setdefault("dtype", "float32")
        engine_kwargs.setdefault("enforce_eager", True)
    return LabelConfig(
        model=args.model,
        device=args.device,
        engine_kwargs=engine_kwargs,
        batch_size=args.batch_size,
        keywords=[],
        num_cpus=0.4 if args.device == "cpu" else 1,
        cpu_stage_num_cpus=0.2 if args.device == "cpu" else 1,
        env={"VLLM_CPU_KVCACHE_SPACE": "1"} if args.device == "cpu" else {},
        sampling={"temperature": 0.5, "top_p": 0.95, "repetition_penalty": 1.2, "max_tokens": args.max_tokens},
    )


def run_baseline(args: argparse.Namespace) -> dict:
    from transformers import AutoTokenizer
    from vllm import LLM, SamplingParams

    config = stage_config(args)
    task = LabelTask(config)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    started = time.monotonic()
    prompts = [
        tokenizer.apply_chat_template(task.request({"text": t}).messages, tokenize=False, add_generation_prompt=True)
        for t in texts(args.rows)
    ]
    llm = LLM(model=args.model, **config.engine_kwargs)
    ready = time.monotonic()
    outputs = llm.generate(prompts, SamplingParams(**config.sampling.model_dump(exclude_none=True)), use_tqdm=False)
    done = time.monotonic()
    tokens = sum(len(o.outputs[0].token_ids) for o in outputs)
    return {"rows": len(outputs), "tokens": tokens, "wall_s": done - started, "generate_s": done - ready}


def run_kun_ray(args: argparse.Namespace) -> dict:
    import pyarrow as pa
    import ray
    import ray.data

    from kun_ray.config import StorageOptions
    from kun_ray.io.records import STREAM_SCHEMA
    from kun_ray.llm.engine import Engine

    ray.init(include_dashboard=False, _node_ip_address="127.0.0.1", logging_level="WARNING")
    ray.data.DataContext.get_current().enable_progress_bars = False
    config = stage_config(args)
    rows = [{"doc_id": str(i), "source": "bench", "text": t} for i, t in enumerate(texts(args.rows))]
    stream = ray.data.from_arrow(pa.Table.from_pylist(rows, schema=STREAM_SCHEMA)).materialize()
    started = time.monotonic()
    n = tokens = 0
    for batch in (
        Engine(LabelTask(config), config, StorageOptions(), "label")
        .run(stream)
        .iter_batches(batch_format="pyarrow", batch_size=None)
    ):
        n += batch.num_rows
        tokens += sum(batch["label_tokens"].to_pylist())
    return {"rows": n, "tokens": tokens, "wall_s": time.monotonic() - started}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--device", choices=["gpu", "cpu"], default="gpu")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--engine-kwargs", default="{}")
    parser.add_argument("--side", choices=["baseline", "kun-ray"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side:
        result = run_baseline(args) if args.side == "baseline" else run_kun_ray(args)
        print("RESULT " + json.dumps(result))
        return

    results = {}
    for side in ("baseline", "kun-ray"):
        command = [sys.executable, __file__, *sys.argv[1:], "--side", side]
        out = subprocess.run(
            command, capture_output=True, text=True, env={**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"}
        )
        line = next((x for x in out.stdout.splitlines() if x.startswith("RESULT ")), None)
        if line is None:
            sys.exit(f"{side} failed:\n{out.stderr[-3000:]}")
        results[side] = json.loads(line.removeprefix("RESULT "))

    base, ours = results["baseline"], results["kun-ray"]
    print(f"label stage, {args.rows} rows, max_tokens {args.max_tokens}, {args.device}, model {args.model}")
    print(f"{'side':<26}{'rows':>7}{'tokens':>9}{'wall s':>9}{'rows/s':>9}{'tok/s':>9}{'vs baseline':>13}")
    for name, r in (("vLLM LLM.generate (base)", base), ("kun-ray label stage", ours)):
        ratio = (r["rows"] / r["wall_s"]) / (base["rows"] / base["wall_s"])
        rows_s, tokens_s = r["rows"] / r["wall_s"], r["tokens"] / r["wall_s"]
        print(
            f"{name:<26}{r['rows']:>7}{r['tokens']:>9}{r['wall_s']:>9.1f}{rows_s:>9.1f}{tokens_s:>9.1f}{ratio:>12.2f}x"
        )
    print(f"(both include engine start-up; bare vLLM's generate() alone took {base['generate_s']:.1f} s)")


if __name__ == "__main__":
    main()
