"""A cron job: does one tick's work and exits (0 = succeeded, anything else = failed)."""

import os
import time

tick = os.environ.get("SUPERVISOR_CRON_TICK")
slot = os.environ.get("SUPERVISOR_CRON_SLOT")
node = os.environ.get("SUPERVISOR_NODE_ID")
token = os.environ.get("SUPERVISOR_FENCING_TOKEN")
print(f"report for the tick {tick}: slot {slot} on node {node} (claim token {token})")
time.sleep(float(os.environ.get("WORK_SECONDS", "1")))
print("report done")
