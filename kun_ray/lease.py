"""One writer per run folder: the lease in <run>/_lease.json.

A run takes the lease before it does any work and gives it back when it ends.  The lease file
is created exclusively (a hard link on a local disk, a conditional put, `If-None-Match: *`, on S3
and GCS), so of two drivers started at once on one folder exactly one gets it; the other stops
with one line naming the holder.  The holder renews the lease every `heartbeat_s` seconds (a
local file's time, an object's rewrite).  A
lease whose heartbeat is older than the output's `lease_timeout_s`, or whose holder was a process
on this host that is gone, was left by a driver that crashed (a preempted head, a RayJob retry):
the next run takes it over, and says so in the log.

Two guards keep a driver that lost its lease (paused past the timeout, then woken) from harming
the run that took it over: the holder confirms the lease is still its own before each commit
and each write that replaces or deletes what the run wrote (the manifest, --fresh, the export),
and garbage collection deletes only the uncommitted files older than the lease it runs under and
its own (their names start with the lease's tag), never a younger file of another driver.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import uuid
from datetime import UTC, datetime
from typing import Any

logger = logging.getLogger("kun_ray")

LEASE = "_lease.json"
HEARTBEAT_S = 30.0


class LeaseHeld(Exception):
    """Another driver is writing the run folder."""


class LeaseLost(RuntimeError):
    """The lease was taken over by another driver while this one held it."""


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _ray_job_id() -> str | None:
    try:
        import ray

        return ray.get_runtime_context().get_job_id() if ray.is_initialized() else None
    except Exception:  # a lease outlives Ray's shutdown
        return None


class Lease:
    """The lease a driver holds on a run folder (a kun_ray.run.RunFolder)."""

    def __init__(
        self, folder: Any, holder: dict[str, Any], since: float, heartbeat_s: float, stale: str | None = None
    ):
        self.folder = folder
        self.holder = holder
        #: The token of the crashed driver's lease this one took over: its files are garbage at any age.
        self.stale = stale
        #: When the lease file was made, by the store's clock: files older than this are earlier drivers'.
        self.since = since
        self.heartbeat_s = heartbeat_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.lost = False

    @property
    def token(self) -> str:
        return self.holder["token"]

    @property
    def tag(self) -> str:
        """What the names of the files written under this lease start with."""
        return tag(self.token)

    def owns(self, name: str) -> bool:
        """Whether a file name is of this run or of the crashed run whose lease it took over."""
        return name.startswith(self.tag) or (self.stale is not None and name.startswith(tag(self.stale)))

    @classmethod
    def take(cls, folder: Any, timeout_s: float = 300.0, heartbeat_s: float = HEARTBEAT_S) -> Lease:
        """Take the folder's lease, taking over a stale one; LeaseHeld when a live driver holds it."""
        holder = {
            "token": uuid.uuid4().hex,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "ray_job_id": _ray_job_id(),
            "started": _now(),
            "heartbeat": _now(),
        }
        stale: str | None = None
        for _ in range(3):
            created = folder.create_json(LEASE, holder)
            current, age = folder.read_lease(LEASE)
            if created or (current or {}).get("token") == holder["token"]:  # a retried put that had landed
                try:
                    lease = cls(folder, holder, folder.modified(LEASE), heartbeat_s, stale)
                except BaseException:
                    folder.remove(LEASE)
                    raise
                lease._start()
                return lease
            if current is None:  # given back meanwhile
                continue
            why = cls._stale(current, age, timeout_s)
            if why is None:
                raise LeaseHeld(f"{folder.url} is being written by another run: {cls.describe(current, age)}")
            # Of the drivers that found this lease stale, the one that makes its takeover marker removes it.
            if not folder.create_json(takeover_marker(current), {"by": holder["token"]}):
                continue
            again, _ = folder.read_lease(LEASE)
            if again is None or again.get("token") != current.get("token"):
                continue
            logger.warning("%s: taking over the lease of %s (%s)", folder.url, cls.describe(current, age), why)
            folder.remove(LEASE)
            stale = current.get("token")
        current, age = folder.read_lease(LEASE)
        raise LeaseHeld(f"{folder.url} is being written by another run: {cls.describe(current or {}, age)}")

    @staticmethod
    def _stale(current: dict[str, Any], age: float, timeout_s: float) -> str | None:
        """Why a lease is stale, or None when its holder may be alive."""
        if age > timeout_s:
            return f"no heartbeat for {age:.0f} s, over the lease timeout of {timeout_s:.0f} s"
        pid = current.get("pid")
        if current.get("host") == socket.gethostname() and isinstance(pid, int) and not _alive(pid):
            return f"process {pid} on this host is gone"
        return None

    @staticmethod
    def describe(holder: dict[str, Any], age: float) -> str:
        job = f", Ray job {holder['ray_job_id']}" if holder.get("ray_job_id") else ""
        return (
            f"host {holder.get('host', '?')} pid {holder.get('pid', '?')}{job}, "
            f"started {holder.get('started', '?')}, last heartbeat {age:.0f} s ago"
        )

    def confirm(self) -> None:
        """LeaseLost unless the folder's lease is still this one (before each commit or replacing write)."""
        current, _ = self.folder.read_lease(LEASE)
        if current is None or current.get("token") != self.token:
            self.lost = True
            holder = self.describe(current, 0) if current is not None else "no one (the lease file was removed)"
            raise LeaseLost(
                f"{self.folder.url}: this run's lease was taken over by {holder}; stopping before it commits anything"
            )

    def beat(self) -> None:
        """A fresh heartbeat, if the lease is still this run's: on a local disk the lease file's
        time alone (it cannot bring back a lease another driver replaced), elsewhere the lease
        rewritten; rewritten too once the Ray job id is known."""
        self.confirm()
        job = self.holder["ray_job_id"] or _ray_job_id()
        if self.folder.is_local and job == self.holder["ray_job_id"]:
            self.folder.touch(LEASE)
            return
        self.holder.update(heartbeat=_now(), ray_job_id=job)
        self.folder.write_json(LEASE, self.holder)

    def _start(self) -> None:
        def loop() -> None:
            while not self._stop.wait(self.heartbeat_s):
                try:
                    self.beat()
                except LeaseLost as lost:
                    logger.error("%s", lost)
                    return
                except Exception as error:  # a store hiccup: the next beat tries again
                    logger.warning("%s: lease heartbeat failed: %s", self.folder.url, error)

        self._thread = threading.Thread(target=loop, name="kun-ray-lease", daemon=True)
        self._thread.start()

    def release(self) -> None:
        """Stop the heartbeat and remove the lease, if it is still this run's."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        try:
            current, _ = self.folder.read_lease(LEASE)
            if current is not None and current.get("token") == self.token:
                self.folder.remove(LEASE)
            if self.stale is not None:
                self.folder.remove(takeover_marker({"token": self.stale}))
        except Exception as error:
            logger.warning("%s: could not remove the lease: %s", self.folder.url, error)

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def tag(token: str) -> str:
    return f"{token[:12]}-"


def takeover_marker(holder: dict[str, Any]) -> str:
    """The file a driver makes, exclusively, to take over a stale lease: one taker per lease."""
    return f"{LEASE}.takeover-{holder.get('token') or 'unknown'}"


def parse(data: bytes) -> dict[str, Any]:
    """A lease file's holder; a torn or foreign file reads as an unknown holder."""
    try:
        holder = json.loads(data)
    except ValueError:
        return {}
    return holder if isinstance(holder, dict) else {}
