"""Says which signals it receives (SIGUSR1, SIGUSR2); ends on SIGTERM."""

import os
import signal
import time


def said(signum: int, _frame: object) -> None:
    os.write(1, f"got {signal.Signals(signum).name}\n".encode())  # one write: no interleaving


signal.signal(signal.SIGUSR1, said)
signal.signal(signal.SIGUSR2, said)
os.write(1, f"ready pid={os.getpid()}\n".encode())
while True:
    time.sleep(3600)
