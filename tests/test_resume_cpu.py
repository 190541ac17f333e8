"""Runs that survive, without a model (CPU stages only): a filter worker killed mid-batch, a
crash between writing a shard and committing it, a changed config over a run folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from drivers import SHARDS, committed_files, finish, outputs, shards_config, start_run, written_files

from kun_ray.pipeline import run
from kun_ray.plan import parse_config


@pytest.fixture(scope="module")
def config(smoke_models, tmp_path_factory) -> dict:
    return shards_config(tmp_path_factory.mktemp("shards"), smoke_models["tokenizer"])


@pytest.fixture(scope="module")
def reference(ray_cluster, config, tmp_path_factory) -> Path:
    """The config run once, start to end, with nothing killed."""
    out = tmp_path_factory.mktemp("reference") / "run"
    run(parse_config({**config, "output": str(out)}))
    return out


@pytest.fixture()
def cpu_run(ray_cluster, config, tmp_path) -> tuple[dict, Path]:
    out = tmp_path / "cpu-run"
    run(parse_config({**config, "output": str(out)}))
    return config, out


def test_a_filter_worker_killed_mid_batch_is_retried_and_the_run_completes(ray_cluster, config, reference, tmp_path):
    out, once = tmp_path / "run", tmp_path / "killed-once"
    finish(start_run(config, out, ray_cluster, crash_at="worker:length", once=once))
    assert once.exists()  # a worker was killed in the middle of the length filter
    assert set(outputs(out)) >= {"documents", "filtered", "clean"}
    assert outputs(out) == outputs(reference)
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
