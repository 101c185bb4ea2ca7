"""Crash-test driver: kill -9 real training runs at named points, then resume them.

Run as ``python tests/train/fault_driver.py CASES.json RESULTS.json``. The driver imports
consistcam once (no torch op runs in it) and forks one child per training run, so each case
costs a training, not a Python start-up. A case is ``{"out", "kill_at"}`` (a fault point, see
``consistcam.utils.fault_point``) or ``{"out", "delay"}`` (SIGKILL after that many seconds).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time

import torch.utils.tensorboard  # noqa: F401  (imported once here, not in every child)

from consistcam.cli import main


def run(args: list[str], kill_at: str | None = None, delay: float | None = None) -> int:
    """Exit code of ``consistcam ARGS`` in a forked child; -9 when it was killed."""
    pid = os.fork()
    if pid == 0:  # child
        if kill_at:
            os.environ["CONSISTCAM_KILL_AT"] = kill_at
        else:
            os.environ.pop("CONSISTCAM_KILL_AT", None)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        try:
            code = main(args)
        except BaseException:  # noqa: BLE001  (report, do not hang the parent)
            import traceback

            traceback.print_exc()
            code = 99
        os._exit(code)
    if delay is not None:
        deadline = time.monotonic() + delay
        while time.monotonic() < deadline:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            time.sleep(0.01)
        else:
            os.kill(pid, signal.SIGKILL)
            _, status = os.waitpid(pid, 0)
    else:
        _, status = os.waitpid(pid, 0)
    return -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)


def main_driver(cases_file: str, results_file: str) -> None:
    spec = json.loads(open(cases_file).read())
    base = spec["args"]
    results = []
    for case in spec["cases"]:
        t0 = time.monotonic()
        first = run([*base, "--out", case["out"]], case.get("kill_at"), case.get("delay"))
        duration = time.monotonic() - t0
        second = run([*base, "--out", case["out"], "--resume", case["out"]]) if first != 0 else None
        results.append({**case, "first": first, "second": second, "seconds": round(duration, 2)})
    with open(results_file, "w") as f:
        json.dump(results, f)


if __name__ == "__main__":
    main_driver(sys.argv[1], sys.argv[2])
