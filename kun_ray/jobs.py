"""Runs as Ray jobs: a config packed with the local files it names, submitted to a cluster's job server.

    kun-ray submit run.yaml --address http://HEAD:8265    ->  a job id
    kun-ray jobs status|logs|stop|list

A job is the entrypoint `python -m kun_ray run CONFIG` in a runtime environment of three parts:

- `working_dir`: a *job folder* holding the config (with any `--set` overrides applied) and the
  local files it names by relative paths (corpus files, models, prompt files), laid out as they
  are here, so the config's relative paths mean the same files on the cluster.  Absolute paths
  and object storage URLs are left as they are: the cluster reads them itself.
- `py_modules`: this kun_ray package, so the cluster runs the code that checked the config.
- `pip`: kun-ray's own dependencies (not Ray: the cluster's Ray stays), installed over the
  nodes' packages; `--no-deps` for images that have kun-ray installed.

Credentials are never put into the runtime environment (Ray shows it in the dashboard and job
info): the cluster's nodes have their own (instance roles, Kubernetes secrets).
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import logging
import os
import re
import shlex
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

import kun_ray
from kun_ray.config import RunConfig
from kun_ray.io.storage import expand
from kun_ray.plan import load_config_data
from kun_ray.secrets import redact

TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}


class JobError(Exception):
    """A job request that failed: the job server cannot be reached, an unknown job id. One line."""


@dataclass
class JobFolder:
    """What a job takes to the cluster: the folder, the config's path in it, and notes for the user."""

    root: Path
    config: str
    output: str
    notes: list[str] = field(default_factory=list)


def _is_relative_local(path: Any) -> bool:
    return isinstance(path, str) and "://" not in path and not os.path.isabs(os.path.expanduser(path))


def _local_files(data: dict[str, Any], config: RunConfig) -> list[Path]:
    """The files and folders the config names by paths relative to its folder, as the config resolved them."""
    import fsspec

    local = fsspec.filesystem("file")
    found: list[Path] = []
    for written, source in zip(data["sources"], config.sources):
        for pattern, resolved in zip(written["paths"], source.paths):
            if _is_relative_local(pattern):
                found += [Path(p) for p, _ in expand(local, resolved)]
    for key, written in config.paths_as_written.items():
        section, name = key.split(".")
        resolved = getattr(getattr(config, section), name)
        # A hub id (Qwen/Qwen2.5-7B) is not resolved; a relative path is, and goes if it exists.
        if _is_relative_local(written) and resolved != written and os.path.exists(resolved):
            found.append(Path(resolved))
    return found


def pack(config_path: str | os.PathLike[str], overrides: Sequence[str], into: Path) -> JobFolder:
    """Write the job folder of a config into `into` (an empty folder)."""
    file = Path(os.path.abspath(config_path))
    data, config = load_config_data(config_path, overrides)  # the same checks as `kun-ray run`, before any upload
    notes = []
    output = data["output"] if isinstance(data["output"], str) else data["output"]["path"]
    if _is_relative_local(output):
        # The job runs in a temporary copy of the folder: a relative output would vanish with it.
        path = config.output.path
        data["output"] = path if isinstance(data["output"], str) else {**data["output"], "path": path}
        notes.append(
            f"output {path} is a local path: it is written on the node that runs the job's driver (the head node)"
        )
    files = _local_files(data, config)
    root = Path(os.path.commonpath([file.parent, *(f.parent for f in files)]))
    for source in files:
        target = into / source.relative_to(root)
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, target, dirs_exist_ok=True)
        else:
            shutil.copy2(source, target)
    relconfig = file.relative_to(root).as_posix()
    (into / relconfig).parent.mkdir(parents=True, exist_ok=True)
    (into / relconfig).write_text(yaml.safe_dump(data, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return JobFolder(into, relconfig, config.output.path, notes)


def requirements() -> list[str]:
    """kun-ray's own pinned dependencies, less Ray (a job must not replace the cluster's Ray)."""
    wanted = []
    for requirement in importlib.metadata.requires("kun-ray") or []:
        name = re.split(r"[\s\[<>=!~;]", requirement, maxsplit=1)[0].lower()
        if "extra ==" not in requirement and name != "ray":
            wanted.append(requirement)
    return wanted


def runtime_env(job: JobFolder, deps: bool = True) -> dict[str, Any]:
    env: dict[str, Any] = {"working_dir": str(job.root), "py_modules": [str(Path(kun_ray.__file__).parent)]}
    if deps:
        env["pip"] = {"packages": requirements(), "pip_check": False}
    return env


def entrypoint(job: JobFolder, fresh: bool = False, force: bool = False) -> str:
    """`kun-ray run` in the job folder; Ray Data's progress bars stay out of the job's log."""
    flags = " --fresh" * fresh + " --force" * force
    return f"python -m kun_ray run --no-progress{flags} {shlex.quote(job.config)}"


class Jobs:
    """The job server of one Ray cluster (its dashboard address, http://HEAD:8265)."""

    def __init__(self, address: str | None):
        from ray.job_submission import JobSubmissionClient

        _use_ray_token_if_any()
        try:  # no address: Ray's own lookup ($RAY_API_SERVER_ADDRESS, $RAY_ADDRESS, a local cluster)
            self.client = JobSubmissionClient(address)
        except Exception as error:
            raise JobError(
                f"cannot reach the Ray job server at {address or 'the default address'}: {_one_line(error)}"
            ) from None
        self.address = self.client.get_address()

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except Exception as error:
            raise JobError(f"{what}: {_one_line(error)}") from None

    def submit(self, job: JobFolder, deps: bool = True, fresh: bool = False, force: bool = False) -> str:
        return self._call(
            "submit",
            self.client.submit_job,
            entrypoint=entrypoint(job, fresh, force),
            runtime_env=runtime_env(job, deps),
            metadata={"kun_ray_config": job.config, "kun_ray_output": job.output},
        )

    def status(self, job_id: str) -> Any:
        return self._call(job_id, self.client.get_job_info, job_id)

    def logs(self, job_id: str) -> str:
        return self._call(job_id, self.client.get_job_logs, job_id)

    def follow(self, job_id: str, out: Any = sys.stdout) -> str:
        """Print the job's log as it is written until the job ends; its final status."""

        async def tail() -> None:
            async for lines in self.client.tail_job_logs(job_id):
                out.write(lines)
                out.flush()

        self._call(job_id, asyncio.run, tail())
        return self.wait(job_id, timeout_s=60)

    def stop(self, job_id: str) -> bool:
        return self._call(job_id, self.client.stop_job, job_id)

    def wait(self, job_id: str, timeout_s: float) -> str:
        """Poll until the job ends (or `timeout_s` passes); its status."""
        deadline = time.monotonic() + timeout_s
        while True:
            status = str(self.status(job_id).status)
            if status in TERMINAL or time.monotonic() > deadline:
                return status
            time.sleep(1)

    def list(self) -> list[Any]:
        """kun-ray's jobs on the cluster, oldest first."""
        jobs = self._call("list", self.client.list_jobs)
        return sorted((j for j in jobs if (j.metadata or {}).get("kun_ray_config")), key=lambda j: j.start_time or 0)


def _use_ray_token_if_any() -> None:
    """Send the cluster's token when there is one (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or
    ~/.ray/auth_token), as `ray start` does: clusters of Ray 2.5x on may require it."""
    try:
        from ray._private.authentication.authentication_token_setup import (
            maybe_enable_token_auth_if_token_available,
        )
    except ImportError:  # a Ray without token authentication
        return
    logging.getLogger(maybe_enable_token_auth_if_token_available.__module__).setLevel(
        logging.ERROR
    )  # not a warning here
    maybe_enable_token_auth_if_token_available(warn_if_disabled=False)


def _one_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return redact(f"{type(error).__name__}: {lines[-1] if lines else ''}")
