"""A worker that crashes after a while, to show restarts with backoff."""

import os
import sys
import time

time.sleep(float(os.environ.get("CRASH_AFTER", "3")))
print("flaky: crashing on purpose", file=sys.stderr)
sys.exit(3)
