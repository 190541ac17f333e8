"""What the crash and resume tests share: a corpus of small shards, a driver of its own
(`kun-ray run` joining the test cluster, optionally killed at a crash point), and a run
folder's rows and files, to compare a crashed-and-resumed run with a clean one."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.dataset as pads
import yaml
from corpus import ZH, jsonl

SHARDS = 16


def rows(folder: Path) -> list[dict]:
    return sorted(
        pads.dataset(str(folder), format="parquet").to_table().to_pylist(),
        key=lambda r: (r["doc_id"], r.get("stage") or ""),
    )


def outputs(out: Path) -> dict[str, list[dict]]:
    """Every Parquet folder of a run folder: stage outputs and rejects, rows sorted by doc_id."""
    folders = [p for p in out.iterdir() if p.is_dir() and not p.name.startswith("_") and p.name != "export"]
    folders += [p for p in (out / "rejects").iterdir()]
    return {str(p.relative_to(out)): rows(p) for p in folders if p.name != "rejects"}


def committed_files(out: Path) -> set[str]:
    named = set()
    for commit in (out / "_commits").rglob("*.json"):
        for shard in json.loads(commit.read_text())["shards"].values():
            named.update(shard["files"])
    return named


def written_files(out: Path) -> set[str]:
    return {str(p.relative_to(out)) for p in out.rglob("*.parquet")}


def counts(report: dict) -> list[dict]:
    """A report's stages less their throughput."""
    return [{k: v for k, v in stage.items() if not k.endswith("_per_s")} for stage in report["stages"]]


def commits(out: Path, flow: str) -> int:
    return len(list((out / "_commits" / flow).glob("*.json")))


def shards_config(folder: Path, tokenizer: Path) -> dict:
    """SHARDS small shards of three texts each, read, cleaned (length in tokens) and deduplicated."""
    texts = [a + b for a, b in itertools.permutations(ZH, 2)][: 3 * SHARDS]
    for k in range(SHARDS):
        (folder / f"part-{k:02d}.jsonl").write_bytes(jsonl([{"text": t} for t in texts[3 * k : 3 * k + 3]]))
    return {
        "sources": [{"name": "sky", "format": "skypile", "paths": [str(folder)]}],
        "length": {"min_chars": 10, "tokenizer": str(tokenizer)},
    }


def start_run(
    config: dict, out: Path, ray_address: str, *flags: str, crash_at: str | None = None, once: Path | None = None
) -> subprocess.Popen:
    """`kun-ray run` as a driver of its own on the test cluster; `crash_at` names a crash point
    (kun_ray/crash.py) where it or its workers are SIGKILLed (only once with `once`)."""
    path = out.parent / f"{out.name}.yaml"
    path.write_text(yaml.safe_dump({**config, "output": str(out)}, allow_unicode=True))
    env = {**os.environ, "RAY_ADDRESS": ray_address}
    env.update({"KUN_RAY_CRASH_AT": crash_at} if crash_at else {})
    env.update({"KUN_RAY_CRASH_ONCE": str(once)} if once else {})
    return subprocess.Popen(
        [sys.executable, "-m", "kun_ray.cli", "run", "--no-progress", *flags, str(path)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for(condition, process: subprocess.Popen, timeout: float = 420) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if process.poll() is not None:
            raise AssertionError(
                f"the run ended (exit {process.returncode}) before the moment to kill it:\n{process.stderr.read()[-3000:]}"
            )
        if time.monotonic() > deadline:
            process.kill()
            raise AssertionError("timed out waiting for the moment to kill")
        time.sleep(0.05)


def finish(process: subprocess.Popen) -> str:
    out, err = process.communicate(timeout=600)
    assert process.returncode == 0, err[-3000:]
    return out + err
