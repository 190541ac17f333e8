"""Named points where a crash drill kills a process (tests/test_resume.py).

`KUN_RAY_CRASH_AT=<point>` in a driver's environment SIGKILLs the process that reaches that
point, as a preempted head, an OOM kill or a lost node would; unset, as in every real run, a
point does nothing.  The driver hands both variables to its Ray job's workers.  With
`KUN_RAY_CRASH_ONCE=<file>` a point fires only for the process that creates that file, so a
retried task goes through.  The points:

    commit:<flow>       the driver, a commit of the flow half written (a local `*.partial`)
    <flow>:written      the driver, a whole flow (dedup, final) written but not committed
    <flow>:export       the driver, the exporting flow's first export format written, not the rest
    worker:<stage>      a worker, in its first batch of a row filter (normalize, length, ...)
"""

from __future__ import annotations

import os
import signal

VARIABLES = ("KUN_RAY_CRASH_AT", "KUN_RAY_CRASH_ONCE")


def point(name: str) -> None:
    """Kill this process here if the drill names this point."""
    if os.environ.get("KUN_RAY_CRASH_AT") != name:
        return
    if once := os.environ.get("KUN_RAY_CRASH_ONCE"):
        try:
            os.close(os.open(once, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return
    os.kill(os.getpid(), signal.SIGKILL)


def worker_env() -> dict[str, str]:
    """The drill's variables, for a Ray job's runtime_env (empty in a real run)."""
    return {name: os.environ[name] for name in VARIABLES if name in os.environ}
