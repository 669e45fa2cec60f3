"""What the trust watchdog costs, and how it keeps a deadline: figures, no assertions.

Runs `supervisor run` on an SQLite file with the default timings, twice: with one
every-node worker (no trusted child: the watchdog has no deadline to keep) and with
one global-leader worker (a trusted child, renewed every second). For each, over
SECONDS: the watchdog's RSS, its CPU time and its wake-ups (voluntary context
switches), beside the supervisor's own CPU. Then SIGSTOPs the leader's supervisor and
times its child's death: the watchdog must kill it by the trust deadline (the last
renewal + renew_deadline + the leader stop grace: at most 8 s after the stop with the
defaults).

    .venv/bin/python bench/watchdog.py [SECONDS]
"""

from __future__ import annotations

import os
import re
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

SECONDS = float(sys.argv[1]) if len(sys.argv) > 1 else 30.0
SUPERVISOR = Path(sys.executable).parent / "supervisor"


def config(mode: str) -> str:
    return (f'node_id = "bench"\ndatabase_url = "sqlite:///bench.db"\n'
            f"[metrics]\nenabled = false\n"
            f'[workers.w]\ncommand = ["sleep", "100000"]\nmode = "{mode}"\n')


def cpu_seconds(pid: int) -> float:
    """CPU time of every thread of `pid`, in nanoseconds from schedstat (not clock ticks)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        total += int((task / "schedstat").read_text().split()[0])
    return total / 1e9


def status(pid: int, key: str) -> int:
    match = re.search(rf"^{key}:\s+(\d+)", Path(f"/proc/{pid}/status").read_text(), re.M)
    return int(match.group(1)) if match else 0


def children(pid: int) -> list[int]:
    return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def cmdline(pid: int) -> bytes:
    return Path(f"/proc/{pid}/cmdline").read_bytes()


class Node:
    def __init__(self, directory: Path, mode: str) -> None:
        path = directory / f"{mode}.toml"
        path.write_text(config(mode))
        self.proc = subprocess.Popen([str(SUPERVISOR), "run", "-c", str(path)], cwd=directory,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     text=True)
        self.lines: list[str] = []
        self.started = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)
            if "w: started" in line:
                self.started.set()

    def child(self, marker: bytes) -> int:
        for pid in children(self.proc.pid):
            if marker in cmdline(pid):
                return pid
        raise RuntimeError(f"no child running {marker!r}")

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGCONT)
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=30)


def measure(directory: Path, mode: str) -> None:
    node = Node(directory, mode)
    try:
        if not node.started.wait(60):
            raise RuntimeError("the worker did not start:\n" + "".join(node.lines))
        watchdog = node.child(b"watchdog.py")
        cpu0, sup0 = cpu_seconds(watchdog), cpu_seconds(node.proc.pid)
        wake0 = status(watchdog, "voluntary_ctxt_switches")
        time.sleep(SECONDS)  # the measuring interval itself
        cpu = cpu_seconds(watchdog) - cpu0
        wakes = status(watchdog, "voluntary_ctxt_switches") - wake0
        sup = cpu_seconds(node.proc.pid) - sup0
        rss = status(watchdog, "VmRSS") / 1024
        print(f"{mode:12} watchdog RSS {rss:5.1f} MiB, CPU {1000 * cpu / SECONDS * 60:6.1f} ms/min,"
              f" {wakes / SECONDS:5.1f} wake-ups/s; supervisor CPU "
              f"{1000 * sup / SECONDS * 60:6.1f} ms/min")
        if mode == "global-leader":
            frozen_kill(node)
    finally:
        node.stop()


def frozen_kill(node: Node) -> None:
    child = node.child(b"sleep")
    pidfd = os.pidfd_open(child)
    stopped = time.monotonic()
    node.proc.send_signal(signal.SIGSTOP)
    select.select([pidfd], [], [], 30)  # readable when the child has died
    died = time.monotonic() - stopped
    os.close(pidfd)
    print(f"{'':12} supervisor SIGSTOPped: its leader's child SIGKILLed by the watchdog "
          f"{died:.2f}s later (bound: renew_deadline 5 s + stop grace 3 s = 8 s after its "
          f"last renewal)")


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        for mode in ("every-node", "global-leader"):
            measure(Path(tmp), mode)


if __name__ == "__main__":
    main()
