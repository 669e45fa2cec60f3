#!/bin/sh
# Three supervisors on one host share examples/cron.toml (and its SQLite file) for
# SECONDS seconds (default 12), then the history shows who ran each tick.
# Run from the repository root: sh examples/cron-fleet.sh
set -eu
cd "$(dirname "$0")"
SUPERVISOR=${SUPERVISOR:-../.venv/bin/supervisor}
SECONDS_TO_RUN=${1:-12}
pids=""
for n in 1 2 3; do
    SUPERVISOR_NODE_ID="node-$n" SUPERVISOR_METRICS__PORT=$((9470 + n)) \
        "$SUPERVISOR" run -c cron.toml >"node-$n.log" 2>&1 &
    pids="$pids $!"
done
trap 'kill $pids 2>/dev/null || true' INT TERM
sleep "$SECONDS_TO_RUN"
kill -TERM $pids
wait
"$SUPERVISOR" history -c cron.toml report --limit 30
