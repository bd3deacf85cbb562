#!/usr/bin/env bash
# Stop what scripts/run.sh started, using the pid files in .run/: the worker first, then the
# gateway (it stops Traefik), the API instances, the relay, maintain and webhook delivery.
# Each gets SIGTERM and up to 15 s before SIGKILL.
set -u
cd "$(dirname "$0")/.."
stop_pid() {
    local pidfile="$1" pid
    pid=$(cat "$pidfile")
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid" 2>/dev/null
        for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
        kill -KILL "$pid" 2>/dev/null || true
        echo "stopped $(basename "$pidfile" .pid) ($pid)"
    fi
    rm -f "$pidfile"
}
for name in worker gateway; do
    [ -f ".run/$name.pid" ] && stop_pid ".run/$name.pid"
done
for pidfile in .run/*.pid; do
    [ -f "$pidfile" ] && stop_pid "$pidfile"
done
exit 0
