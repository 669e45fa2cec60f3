"""Ignores SIGTERM and runs until killed; announces itself (and optionally a grandchild)."""

import os
import signal
import sys
import time

signal.signal(signal.SIGTERM, signal.SIG_IGN)
if "--fork" in sys.argv:
    pid = os.fork()
    if pid == 0:
        os.write(1, f"grandchild pid={os.getpid()}\n".encode())  # one write: no interleaving
        while True:
            time.sleep(3600)
os.write(1, f"ready pid={os.getpid()}\n".encode())
while True:
    time.sleep(3600)
