"""Prints its environment as one JSON line, then waits to be stopped."""

import json
import os
import signal
import sys
import time

signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
print("ENV " + json.dumps(dict(os.environ)), flush=True)
print(f"cwd {os.getcwd()}", flush=True)
print("to stderr", file=sys.stderr, flush=True)
while True:
    time.sleep(3600)
