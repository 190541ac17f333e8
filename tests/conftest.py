"""Shared fixtures: a real local Ray cluster and a real S3 server (SeaweedFS) on loopback."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

# Test-only credentials for the loopback S3 server, and a made-up Hugging Face token. Set before
# Ray starts so its workers inherit them: tests/test_pipeline.py looks for them in every log.
S3_KEY, S3_SECRET = "kunray-test-key", "kunray-test-secret-7f3a"
HF_TOKEN = "hf_KUNRAYfakeSECRET0123456789"
os.environ["AWS_ACCESS_KEY_ID"] = S3_KEY
os.environ["AWS_SECRET_ACCESS_KEY"] = S3_SECRET
os.environ["HF_TOKEN"] = HF_TOKEN

BUCKETS = ("corpora", "runs")

#: Fixtures that start something real: a Ray cluster, the S3 server, the smoke-test models.  A
#: test that uses one, directly or through another fixture, is an integration test; the others
#: are pure, and `make test-fast` runs only them.
REAL = {"ray_cluster", "s3", "smoke_models", "ray_head"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if REAL & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def smoke_models(tmp_path_factory) -> dict[str, Path]:
    """The smoke-test models (tokenizer, SentencePiece, KenLM, a random chat model), built once per session."""
    from corpus import ZH

    from kun_ray.smoke_models import build_all

    return build_all(ZH * 3 + ["".join(ZH)], tmp_path_factory.mktemp("smoke-models"))


@pytest.fixture(scope="session")
def kun_run(ray_cluster, smoke_models, tmp_path_factory):
    """A run of Kun's whole pipeline (tests/llm_runs.py), for the pipeline tests and the tests that read it back."""
    from llm_runs import kun_pipeline

    return kun_pipeline(tmp_path_factory.mktemp("kun-run"), smoke_models)


@pytest.fixture(scope="session")
def ray_cluster():
    """One local Ray for the whole session; its GCS address lets subprocesses join it."""
    import ray
    import ray.data

    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING", _node_ip_address="127.0.0.1")
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


def free_ports(n: int) -> list[int]:
    """n ports free on 127.0.0.1 right now, for a server of the test's own (a Ray head)."""
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def short_temp_dir() -> Path:
    """A temp dir for a Ray head of a test's own, removed by the caller: Ray's socket paths under
    it must fit in 107 bytes (AF_UNIX), which pytest's temp paths do not always leave room for."""
    import tempfile

    return Path(tempfile.mkdtemp(prefix="kr-", dir="/tmp"))


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


@dataclass
class S3Server:
    endpoint: str
    port: int

    def fs(self):
        import s3fs

        return s3fs.S3FileSystem(endpoint_url=self.endpoint)

    def storage(self) -> dict:
        return {"endpoint_url": self.endpoint}


#: Every port `weed mini` listens on, each given a free one: nothing else on the machine is in the way.
WEED_PORTS = [
    "s3.port", "s3.port.grpc", "s3.port.iceberg", "s3.port.lance", "master.port", "master.port.grpc",
    "volume.port", "volume.port.grpc", "filer.port", "filer.port.grpc", "admin.port", "admin.port.grpc",
]  # fmt: skip


@pytest.fixture(scope="session")
def s3(tmp_path_factory) -> S3Server:
    """SeaweedFS's `weed mini` on 127.0.0.1, on free ports, stopped by its own process id."""
    weed = shutil.which("weed") or str(Path(sys.executable).parent / "weed")
    ports = dict(zip(WEED_PORTS, free_ports(len(WEED_PORTS))))
    data = tmp_path_factory.mktemp("seaweedfs")
    log = open(data / "weed.log", "wb")
    process = subprocess.Popen(
        [
            weed,
            "mini",
            f"-dir={data}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-bucket={','.join(BUCKETS)}",
            "-admin.ui=false",
            "-webdav=false",
            *(f"-{flag}={port}" for flag, port in ports.items()),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=data,
        env={**os.environ, "AWS_ACCESS_KEY_ID": S3_KEY, "AWS_SECRET_ACCESS_KEY": S3_SECRET},
        start_new_session=True,
    )
    server = S3Server(f"http://127.0.0.1:{ports['s3.port']}", ports["s3.port"])
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                pytest.fail(f"weed mini exited with {process.returncode}; see {data / 'weed.log'}")
            if _port_open(server.port):
                try:
                    if all(server.fs().exists(b) for b in BUCKETS):
                        break
                except Exception:
                    pass
            if time.monotonic() > deadline:
                pytest.fail(f"weed mini did not serve S3 within 60 s; see {data / 'weed.log'}")
            time.sleep(0.5)
        yield server
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        log.close()
