"""Read throughput and peak memory: kun-ray's streaming readers vs plain `ray.data.read_json`.

    python benchmarks/read.py [--gb 1.0] [--files 8] [--dir /tmp/kun-ray-bench-read]

Generates a SkyPile-like corpus of JSONL shards (at least --gb gigabytes, reused when present),
then reads it through each reader on the same local Ray, side by side: once through kun-ray's read stage
(`read_documents`: per-record parsing, reject rows, document ids) and once through
`ray.data.read_json` (Arrow's C++ JSON reader, no per-record checks).  Each pass streams every
block to the driver and drops it; passes alternate, and each reader's fastest counts.
Prints MB/s, the machine's peak extra memory, and the ratio.
"""

from __future__ import annotations

import argparse
import json
import random
import threading
import time
from pathlib import Path

import psutil
import ray
import ray.data

from kun_ray.io.read import plan_inputs, read_documents
from kun_ray.plan import parse_config

PHRASES = [
    "长江是中国第一长河",
    "成年人每天通常需要七到九个小时的睡眠",
    "春节是中国最重要的传统节日",
    "光合作用是绿色植物利用光能的过程",
    "冲泡绿茶时水温不宜过高",
    "复利是指把利息计入本金",
    "预防感冒最有效的方法是勤洗手",
    "唐诗是中国古典诗歌的高峰",
    "生活垃圾一般分为四类",
]


def generate(folder: Path, gigabytes: float, files: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    target = int(gigabytes * (1 << 30) / files)
    paths = [folder / f"2020-40_zh_head_{i:04d}.jsonl" for i in range(files)]
    rng = random.Random(0)
    for path in paths:
        if path.exists() and path.stat().st_size >= target:
            continue
        with open(path, "w", encoding="utf-8") as f:
            written = 0
            while written < target:
                text = "，".join(rng.choice(PHRASES) for _ in range(rng.randint(20, 120))) + "。"
                line = json.dumps({"text": text}, ensure_ascii=False) + "\n"
                f.write(line)
                written += len(line.encode())
    return paths


class PeakMemory:
    """The machine's peak memory (process memory plus shared memory, where Ray's object store
    lives) above what was in use when it started, sampled every 50 ms."""

    @staticmethod
    def _in_use() -> int:
        memory = psutil.virtual_memory()
        return memory.used + memory.shared

    def __init__(self):
        self.base = self._in_use()
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self._in_use() - self.base)
            time.sleep(0.05)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def consume(dataset: ray.data.Dataset) -> tuple[int, float, int]:
    rows = 0
    with PeakMemory() as memory:
        start = time.perf_counter()
        for batch in dataset.iter_batches(batch_size=None, batch_format="pyarrow"):
            rows += batch.num_rows
        wall = time.perf_counter() - start
    return rows, wall, memory.peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gb", type=float, default=1.0)
    parser.add_argument("--files", type=int, default=8)
    parser.add_argument("--dir", default="/tmp/kun-ray-bench-read")
    parser.add_argument("--repeat", type=int, default=2, help="passes per reader, alternating; the fastest counts")
    args = parser.parse_args()

    paths = generate(Path(args.dir), args.gb, args.files)
    size_mb = sum(p.stat().st_size for p in paths) / (1 << 20)
    ray.init(logging_level="WARNING")
    ray.data.DataContext.get_current().enable_progress_bars = False
    cpus = int(ray.cluster_resources()["CPU"])
    print(f"corpus: {len(paths)} files, {size_mb:,.0f} MB; Ray with {cpus} CPUs")

    config = parse_config(
        {
            "sources": [{"name": "skypile", "format": "skypile", "paths": [f"{args.dir}/*.jsonl"]}],
            "output": "/tmp/unused",
        }
    )
    readers = {
        "ray.data.read_json (baseline)": lambda: ray.data.read_json([str(p) for p in paths]),
        "kun-ray read_documents": lambda: read_documents(config, plan_inputs(config)),
    }
    results: dict[str, tuple[int, float, int]] = {}
    for _ in range(args.repeat):
        for name, make in readers.items():
            rows, wall, peak = consume(make())
            best = results.get(name)
            results[name] = (rows, min(wall, best[1]) if best else wall, max(peak, best[2]) if best else peak)

    base_rows, base_wall, _ = results["ray.data.read_json (baseline)"]
    print(f"{'reader':34} {'rows':>10} {'MB/s':>8} {'peak MB':>9} {'speed vs baseline':>18}")
    for name, (rows, wall, peak) in results.items():
        print(f"{name:34} {rows:>10,} {size_mb / wall:>8.1f} {peak / (1 << 20):>9,.0f} {base_wall / wall:>17.2f}x")
    assert len({r for r, _, _ in results.values()}) == 1, "the two readers disagree on the row count"
    ray.shutdown()


if __name__ == "__main__":
    main()
