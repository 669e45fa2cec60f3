"""Records its start on the monotonic clock, then exits with the given status."""

import sys
import time

print(f"start {time.monotonic():.6f}", flush=True)
sys.exit(int(sys.argv[1]) if len(sys.argv) > 1 else 1)
