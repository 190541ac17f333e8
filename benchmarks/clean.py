"""Cleaning throughput per CPU core: kun-ray's length + perplexity + near dedup vs Data-Juicer's.

    python benchmarks/clean.py --peer-python /path/to/venv-with-py-data-juicer/bin/python [--docs 100000] [--cpus 2]

Generates a Chinese corpus (SkyPile-like JSONL, with exact and near duplicates, over-long and
gibberish documents), builds smoke-test SentencePiece and KenLM models on a sample of it, then
runs, on the same data and settings, side by side:

- kun-ray: `length` (characters), `perplexity` (KenLM, max_ppl) and `near_dedup`
  (character 5-grams, 128 permutations, Jaccard 0.8) on a local Ray with --cpus CPUs;
- Data-Juicer (py-data-juicer, in its own virtual environment, run as a subprocess of this
  file with --as-peer): `text_length_filter`, `perplexity_filter` and
  `document_minhash_deduplicator` with the same thresholds, num_proc = --cpus.

Prints documents per second per core for each, the ratio, and how often their keep/drop
decisions agree.  Data-Juicer is installed apart because its dependencies clash with ours
(`python -m venv /tmp/dj && /tmp/dj/bin/pip install torch==2.13.0 py-data-juicer aiohttp kenlm sentencepiece`).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import time
from pathlib import Path

MIN_CHARS, MAX_CHARS = 20, 1500
PHRASES = [
    "长江是中国第一长河", "成年人每天通常需要七到九个小时的睡眠", "春节是中国最重要的传统节日",
    "光合作用是绿色植物利用光能的过程",
    "冲泡绿茶时水温不宜过高", "复利是指把利息计入本金", "预防感冒最有效的方法是勤洗手", "唐诗是中国古典诗歌的高峰",
    "生活垃圾一般分为四类", "刚开始跑步的人不要急于求成", "学习外语贵在坚持", "太阳系有八颗行星", "番茄喜欢充足的阳光",
    "一份好的求职信应当简洁", "阳光穿过大气层时会被散射", "列表推导式是创建列表的简洁写法", "除夕夜全家人团聚在一起",
]  # fmt: skip


def generate(path: Path, n: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    docs: list[str] = []
    for _ in range(n):
        roll = rng.random()
        if docs and roll < 0.05:
            text = rng.choice(docs)  # exact duplicate
        elif docs and roll < 0.10:
            base = rng.choice(docs)
            k = rng.randrange(len(base))
            text = base[:k] + "的" + base[k + 1 :]  # near duplicate: one character changed
        elif roll < 0.12:
            text = "".join(chr(rng.randint(0x4E00, 0x9FFF)) for _ in range(rng.randint(40, 200)))  # gibberish
        elif roll < 0.14:
            text = "。".join(rng.choice(PHRASES) + f"，第{j}段" for j in range(150))  # too long
        else:
            text = "，".join(rng.choice(PHRASES) for _ in range(rng.randint(2, 40))) + "。"
        docs.append(text)
    with open(path, "w", encoding="utf-8") as f:
        for i, text in enumerate(docs):
            f.write(json.dumps({"id": f"d{i:07d}", "text": text}, ensure_ascii=False) + "\n")


def run_kun_ray(corpus: Path, models: dict, max_ppl: float, cpus: int, out: Path) -> tuple[float, set[str]]:
    import pyarrow.dataset as pads
    import ray

    from kun_ray.pipeline import run
    from kun_ray.plan import parse_config

    config = parse_config(
        {
            "sources": [{"name": "bench", "format": "jsonl", "paths": [str(corpus)], "id_field": "id"}],
            "output": str(out),
            "read": {"block_rows": 1000},
            "normalize": {"enabled": False},
            "length": {"min_chars": MIN_CHARS, "max_chars": MAX_CHARS, "max_tokens": None, "batch_size": 1000},
            "perplexity": {
                "enabled": True,
                "kenlm_model": str(models["kenlm_model"]),
                "sentencepiece_model": str(models["sentencepiece_model"]),
                "max_ppl": max_ppl,
                "batch_size": 1000,
            },
            "heuristics": {"enabled": False},
            "exact_dedup": {"enabled": False},
            "near_dedup": {"batch_size": 1000},
        }
    )
    ray.init(num_cpus=cpus, logging_level="ERROR", _node_ip_address="127.0.0.1")
    import ray.data

    ray.data.DataContext.get_current().enable_progress_bars = False
    start = time.perf_counter()
    report = run(config, fresh=True)
    wall = time.perf_counter() - start
    ray.shutdown()
    kept = {
        r["doc_id"]
        for r in pads.dataset(str(out / "clean"), format="parquet").to_table(columns=["doc_id"]).to_pylist()
    }
    print(f"kun-ray timings: { ({flow: t['wall_s'] for flow, t in report['flows'].items()}) }")
    return wall, kept


def run_peer(corpus: str, cpus: int, max_ppl: float, result: str) -> None:
    """Runs inside Data-Juicer's environment (--as-peer)."""
    from data_juicer.core.data import NestedDataset
    from data_juicer.ops.deduplicator.document_minhash_deduplicator import (
        DocumentMinhashDeduplicator,
    )
    from data_juicer.ops.filter.perplexity_filter import PerplexityFilter
    from data_juicer.ops.filter.text_length_filter import TextLengthFilter
    from datasets import disable_caching, load_dataset

    dataset = NestedDataset(load_dataset("json", data_files=corpus, split="train"))
    disable_caching()  # else a second run reads the ops' results from the first one's cache files
    start = time.perf_counter()
    ops = [
        TextLengthFilter(min_len=MIN_CHARS, max_len=MAX_CHARS, num_proc=cpus),
        PerplexityFilter(lang="zh", max_ppl=max_ppl, num_proc=cpus),
        DocumentMinhashDeduplicator(
            tokenization="character",
            window_size=5,
            num_permutations=128,
            jaccard_threshold=0.8,
            lowercase=False,
            num_proc=cpus,
        ),
    ]
    for op in ops:
        dataset = op.run(dataset)
    wall = time.perf_counter() - start
    Path(result).write_text(json.dumps({"wall": wall, "kept": list(dataset["id"])}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=100_000)
    parser.add_argument("--cpus", type=int, default=os.cpu_count())
    parser.add_argument("--dir", type=Path, default=Path("/tmp/kun-ray-bench-clean"))
    parser.add_argument("--peer-python", help="a Python with py-data-juicer installed")
    parser.add_argument("--as-peer", nargs=4, metavar=("CORPUS", "CPUS", "MAX_PPL", "RESULT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.as_peer:
        corpus, cpus, max_ppl, result = args.as_peer
        return run_peer(corpus, int(cpus), float(max_ppl), result)

    from kun_ray.clean.perplexity import PerplexityScorer, quantile_cut
    from kun_ray.config import StorageOptions
    from kun_ray.smoke_models import build_all

    args.dir.mkdir(parents=True, exist_ok=True)
    corpus = args.dir / f"corpus-{args.docs}.jsonl"
    if not corpus.exists():
        generate(corpus, args.docs)
    texts = [json.loads(line)["text"] for line in open(corpus, encoding="utf-8")]
    models = build_all(texts[:2000], args.dir / "models")
    scorer = PerplexityScorer(str(models["kenlm_model"]), str(models["sentencepiece_model"]), StorageOptions())
    max_ppl = quantile_cut([scorer.perplexity(t) for t in texts[:2000]], 0.9)
    print(f"corpus: {len(texts):,} documents; max_ppl {max_ppl:.1f} (90% of a sample); {args.cpus} CPUs")

    results = {}
    if args.peer_python:
        cache = Path.home() / ".cache/data_juicer/models"  # where Data-Juicer looks for zh.arpa.bin / zh.sp.model
        cache.mkdir(parents=True, exist_ok=True)
        shutil.copy(models["kenlm_model"], cache / "zh.arpa.bin")
        shutil.copy(models["sentencepiece_model"], cache / "zh.sp.model")
        result = args.dir / "peer.json"
        subprocess.run(
            [args.peer_python, __file__, "--as-peer", str(corpus), str(args.cpus), str(max_ppl), str(result)],
            check=True,
        )
        peer = json.loads(result.read_text())
        results["Data-Juicer (baseline)"] = (peer["wall"], set(peer["kept"]))
    results["kun-ray"] = run_kun_ray(corpus, models, max_ppl, args.cpus, args.dir / "run")

    ids = {f"d{i:07d}" for i in range(len(texts))}
    base_wall = next(iter(results.values()))[0]
    print(f"{'pipeline':24} {'kept':>8} {'wall s':>8} {'docs/s/core':>12} {'speed vs baseline':>18}")
    for name, (wall, kept) in results.items():
        rate = len(texts) / wall / args.cpus
        print(f"{name:24} {len(kept):>8,} {wall:>8.1f} {rate:>12,.0f} {base_wall / wall:>17.2f}x")
    if len(results) == 2:
        (_, a), (_, b) = results.values()
        agree = sum((i in a) == (i in b) for i in ids) / len(ids)
        print(f"keep/drop decisions agree on {agree:.1%} of documents")


if __name__ == "__main__":
    main()
