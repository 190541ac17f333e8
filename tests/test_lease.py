"""One writer per run folder (kun_ray/lease.py): the lease is exclusive, a stale one is taken over,
a lost one stops its holder before it commits, and garbage collection spares another driver's files."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import time

import pytest

from kun_ray.lease import LEASE, Lease, LeaseHeld, LeaseLost
from kun_ray.ledger import Ledger, ShardCommit
from kun_ray.run import RunFolder


def foreign_lease(folder: RunFolder, age_s: float, host: str = "other-host", pid: int = 4242) -> None:
    """A lease another driver wrote `age_s` seconds ago."""
    holder = {"token": "f" * 32, "host": host, "pid": pid, "ray_job_id": "03000000", "started": "2026-12-01T00:00:00"}
    folder.write_json(LEASE, holder)
    stamp = time.time() - age_s
    os.utime(folder.path(LEASE), (stamp, stamp))


def race(folder, drivers: int = 6) -> list[Lease]:
    """The leases that `drivers` threads, let go at once, each with its own `folder()`, got."""
    from concurrent.futures import ThreadPoolExecutor
    from threading import Barrier

    start = Barrier(drivers)

    def take(_: int) -> Lease | None:
        mine = folder()
        start.wait()
        try:
            return Lease.take(mine)
        except LeaseHeld:
            return None

    with ThreadPoolExecutor(drivers) as pool:
        return [lease for lease in pool.map(take, range(drivers)) if lease is not None]


def test_a_second_driver_is_refused_with_one_line_naming_the_holder(tmp_path):
    folder = RunFolder(str(tmp_path / "run"))
    with Lease.take(folder) as lease:
        holder = json.loads((tmp_path / "run" / LEASE).read_text())
        assert holder["token"] == lease.token and holder["pid"] == os.getpid()
        with pytest.raises(LeaseHeld) as refused:
            Lease.take(RunFolder(str(tmp_path / "run")))
        message = str(refused.value)
        assert "\n" not in message
        assert (
            f"host {socket.gethostname()} pid {os.getpid()}" in message
            and "is being written by another run" in message
        )
        assert json.loads((tmp_path / "run" / LEASE).read_text())["token"] == lease.token
    assert not (tmp_path / "run" / LEASE).exists()  # given back
    Lease.take(folder).release()  # and free again


def test_a_lease_without_heartbeat_past_the_timeout_is_taken_over_and_logged(tmp_path, caplog):
    folder = RunFolder(str(tmp_path))
    foreign_lease(folder, age_s=600)
    with pytest.raises(LeaseHeld):
        Lease.take(folder, timeout_s=3600)  # within its timeout: still held
    with caplog.at_level(logging.WARNING, logger="kun_ray"), Lease.take(folder, timeout_s=300) as lease:
        assert json.loads((tmp_path / LEASE).read_text())["token"] == lease.token
    assert "taking over the lease of host other-host pid 4242" in caplog.text
    assert "no heartbeat for 600 s" in caplog.text


def test_a_lease_of_a_process_gone_from_this_host_is_taken_over_at_once(tmp_path):
    folder = RunFolder(str(tmp_path))
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    foreign_lease(folder, age_s=0, host=socket.gethostname(), pid=int(gone.stdout))
    with Lease.take(folder) as lease:
        assert json.loads((tmp_path / LEASE).read_text())["token"] == lease.token


def test_the_heartbeat_rewrites_the_lease_and_a_lost_lease_stops_commits(tmp_path):
    folder = RunFolder(str(tmp_path))
    lease = Lease.take(folder, heartbeat_s=0.05)
    long_ago = time.time() - 600
    os.utime(tmp_path / LEASE, (long_ago, long_ago))
    deadline = time.monotonic() + 10
    while folder.modified(LEASE) < long_ago + 60 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert folder.read_lease(LEASE)[1] < 60  # the heartbeat renewed it
    assert json.loads((tmp_path / LEASE).read_text())["token"] == lease.token
    lease.release()

    lease = Lease.take(folder)
    foreign_lease(folder, age_s=0)  # another driver took it over while this one was paused
    ledger = Ledger(folder, "filter", ["length"], lease)
    with pytest.raises(LeaseLost, match="taken over by host other-host pid 4242"):
        ledger.commit({"part-0": ShardCommit(rows=1)})
    assert not (tmp_path / "_commits").exists()
    lease.release()
    assert (tmp_path / LEASE).exists()  # not this run's to remove


def test_garbage_collection_spares_files_younger_than_its_lease_unless_its_own(tmp_path):
    folder = RunFolder(str(tmp_path))
    (tmp_path / "filtered").mkdir()
    old = tmp_path / "filtered" / "crashed-run.parquet"
    old.write_bytes(b"x")
    os.utime(old, (time.time() - 60, time.time() - 60))
    lease = Lease.take(folder)
    young = tmp_path / "filtered" / "another-driver.parquet"
    young.write_bytes(b"x")
    own = tmp_path / "filtered" / f"{lease.tag}retried-task.parquet"
    own.write_bytes(b"x")
    committed = tmp_path / "filtered" / f"{lease.tag}committed.parquet"
    committed.write_bytes(b"x")
    ledger = Ledger(folder, "filter", ["length"], lease)
    ledger.commit({"part-0": ShardCommit(rows=1, files=["filtered/" + committed.name])})
    assert ledger.collect_garbage(["filtered"]) == 2
    assert sorted(p.name for p in (tmp_path / "filtered").iterdir()) == sorted([young.name, committed.name])
    lease.release()


def test_half_written_json_of_a_crashed_run_is_removed(tmp_path):
    folder = RunFolder(str(tmp_path))
    (tmp_path / "_commits" / "filter").mkdir(parents=True)
    leftovers = [
        tmp_path / f"manifest.json.{'0a' * 16}.partial",
        tmp_path / "_commits" / "filter" / f"x.json.{'2c' * 16}.partial",
    ]
    kept = [tmp_path / "manifest.json", tmp_path / "_commits" / "filter" / "x.json", tmp_path / "notes.partial"]
    for path in leftovers + kept:
        path.write_text("{}")
        os.utime(path, (time.time() - 60, time.time() - 60))
    with Lease.take(folder) as lease:
        folder.remove_partials(lease.since)
    assert [p.exists() for p in leftovers] == [False, False] and all(p.exists() for p in kept)


@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.integration)])
def any_folder(request, tmp_path):
    """A run folder on a local disk, and one on the test S3 server (SeaweedFS)."""
    if request.param == "local":
        return lambda: RunFolder(str(tmp_path / "run"))
    from kun_ray.config import StorageOptions

    s3 = request.getfixturevalue("s3")
    s3.fs().rm("runs/lease-race", recursive=True) if s3.fs().exists("runs/lease-race") else None
    return lambda: RunFolder("s3://runs/lease-race", StorageOptions(endpoint_url=s3.endpoint))


def test_of_drivers_racing_for_one_folder_exactly_one_gets_the_lease(any_folder):
    """The lease file is created exclusively: a hard link locally, If-None-Match on S3."""
    winners = race(any_folder)
    assert len(winners) == 1
    folder = any_folder()
    holder, age = folder.read_lease(LEASE)
    assert holder["token"] == winners[0].token and age < 60
    winners[0].release()
    assert folder.read_lease(LEASE) == (None, 0.0)


def test_of_drivers_racing_to_take_over_one_stale_lease_exactly_one_gets_it(tmp_path):
    """The driver that makes the takeover marker removes the stale lease: a slower one cannot
    remove the new holder's lease instead."""
    foreign_lease(RunFolder(str(tmp_path)), age_s=600)
    winners = race(lambda: RunFolder(str(tmp_path)))
    assert len(winners) == 1
    assert json.loads((tmp_path / LEASE).read_text())["token"] == winners[0].token
    winners[0].release()
    left = {p.name for p in tmp_path.iterdir()}  # the takeover marker, if its maker lost the race to create
    assert left <= {f"{LEASE}.takeover-{'f' * 32}"}
    with Lease.take(RunFolder(str(tmp_path))) as lease:
        RunFolder(str(tmp_path)).remove_partials(lease.since)
    assert [p.name for p in tmp_path.iterdir()] == []
