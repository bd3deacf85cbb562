#!/usr/bin/env bash
# Bring up Fintegrate on this machine without Docker, in the seed's topology, and run the demo:
#   install into .venv -> prepare PostgreSQL/RabbitMQ/Redis -> apply migrations ->
#   two API instances behind the gateway (Traefik, `fintegrate gateway`), the outbox relay,
#   the history maintenance (`fintegrate maintain`) and webhook delivery ->
#   a standing event consumer (demo worker) -> `fintegrate demo` through the gateway.
# Ports come from .env: FINTEGRATE_GATEWAY_PORT (8000), FINTEGRATE_GATEWAY_UPSTREAMS
# (8001, 8002), FINTEGRATE_GATEWAY_INTERNAL_PORT (8081), FINTEGRATE_GATEWAY_DASHBOARD_PORT (8080). Logs and pid files go to .run/;
# stop everything with scripts/stop.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
step() { printf '\n==> %s\n' "$*" >&2; }
fail() { printf '\nFAILED at: %s\n' "$*" >&2; exit 1; }
port_of() { local rest="${1##*:}"; echo "${rest%%/*}"; }
port_free() { python3 -c 'import socket,sys; s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(("127.0.0.1", int(sys.argv[1])))' "$1" 2>/dev/null; }
wait_http() {  # URL SECONDS: until URL answers 2xx
    for _ in $(seq 1 $(( $2 * 2 ))); do curl -fsS "$1" >/dev/null 2>&1 && return 0; sleep 0.5; done
    return 1
}

step "1/7 installing into .venv"
./scripts/bootstrap.sh || fail "installing the package (see pip output above)"
export PATH="$PWD/.venv/bin:$PATH"

step "2/7 preparing PostgreSQL, RabbitMQ and Redis"
./scripts/prepare_services.sh || fail "preparing services (see above), or use compose/docker-compose.yml"

step "3/7 configuration (.env)"
if [ ! -f .env ]; then
    admin_key="adm_$(python3 -c 'import secrets; print(secrets.token_urlsafe(24))')"
    sed "s|^FINTEGRATE_ADMIN_API_KEY=.*|FINTEGRATE_ADMIN_API_KEY=${admin_key}|" .env.example > .env
    echo "wrote .env with a fresh admin key" >&2
fi
set -a; . ./.env; set +a
gateway_port="${FINTEGRATE_GATEWAY_PORT:-8000}"
dashboard_port="${FINTEGRATE_GATEWAY_DASHBOARD_PORT:-}"
internal_port="${FINTEGRATE_GATEWAY_INTERNAL_PORT:-8081}"  # the worker's way in, no IP budget
IFS=',' read -r -a upstreams <<< "${FINTEGRATE_GATEWAY_UPSTREAMS:-http://127.0.0.1:8001,http://127.0.0.1:8002}"
api_url="${FINTEGRATE_API_URL:-http://127.0.0.1:8000}"
[ "$(port_of "$api_url")" = "$gateway_port" ] \
    || echo "note: FINTEGRATE_API_URL ($api_url) is not the gateway's port $gateway_port" >&2

step "4/7 applying migrations"
fintegrate migrate apply --wait 30 || fail "migrations"

step "5/7 starting ${#upstreams[@]} API instances, the gateway, the outbox relay, maintenance and webhook delivery"
mkdir -p .run
./scripts/stop.sh >/dev/null 2>&1 || true
for port in "$gateway_port" "$internal_port" ${dashboard_port:+"$dashboard_port"} $(for u in "${upstreams[@]}"; do port_of "$u"; done); do
    port_free "$port" || fail "port $port is taken (set FINTEGRATE_GATEWAY_PORT, _INTERNAL_PORT, _DASHBOARD_PORT or _UPSTREAMS in .env)"
done
# The instances believe X-Forwarded-For only from the gateway, which runs on this machine.
export FINTEGRATE_TRUSTED_PROXY_IPS="${FINTEGRATE_TRUSTED_PROXY_IPS:-127.0.0.1}"
# This stack lives on loopback: the demo's webhook receiver too (docs/webhooks.md).
export FINTEGRATE_WEBHOOK_ALLOWED_CIDRS="${FINTEGRATE_WEBHOOK_ALLOWED_CIDRS:-127.0.0.0/8}"
index=0
for upstream in "${upstreams[@]}"; do
    index=$((index + 1))
    nohup fintegrate serve --host 127.0.0.1 --port "$(port_of "$upstream")" \
        > ".run/api-$index.log" 2>&1 & echo $! > ".run/api-$index.pid"
done
for upstream in "${upstreams[@]}"; do
    wait_http "$upstream/health" 30 || fail "API instance $upstream not up (see .run/api-*.log)"
done
nohup fintegrate gateway --port "$gateway_port" --internal-port "$internal_port" \
    ${dashboard_port:+--dashboard-port "$dashboard_port"} \
    > .run/gateway.log 2>&1 & echo $! > .run/gateway.pid
nohup fintegrate relay > .run/relay.log 2>&1 & echo $! > .run/relay.pid
nohup fintegrate maintain > .run/maintain.log 2>&1 & echo $! > .run/maintain.pid
nohup fintegrate webhooks deliver > .run/webhooks.log 2>&1 & echo $! > .run/webhooks.pid
wait_http "http://127.0.0.1:$gateway_port/health" 30 || fail "gateway not up on :$gateway_port (see .run/gateway.log)"
curl -fsS "http://127.0.0.1:$gateway_port/ready" >/dev/null || fail "API not ready through the gateway (see .run/api-*.log)"
echo "gateway: http://127.0.0.1:$gateway_port  (docs at /docs, log .run/gateway.log)" >&2
[ -n "$dashboard_port" ] && echo "         dashboard http://127.0.0.1:$dashboard_port/dashboard/" >&2
echo "API:     ${upstreams[*]}  (logs .run/api-*.log; clients go through the gateway)" >&2
echo "relay:   running (log .run/relay.log)" >&2
echo "maintain: running (history upkeep, log .run/maintain.log)" >&2
echo "webhooks: delivering (log .run/webhooks.log)" >&2

step "6/7 a standing event consumer (demo worker)"
if [ ! -s .run/worker.env ]; then
    worker_name="demo_worker_$(python3 -c 'import secrets; print(secrets.token_hex(3))')"
    fintegrate -q --json consumer create "$worker_name" -d "scripts/run.sh demo worker" > .run/worker.json \
        || fail "creating the worker's tenant through the gateway (see .run/gateway.log)"
    python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print("WORKER_NAME=" + d["name"]); print("WORKER_KEY=" + d["api_key"])' \
        .run/worker.json > .run/worker.env.new || fail "reading the worker's key"
    rm -f .run/worker.json
    chmod 600 .run/worker.env.new
    mv .run/worker.env.new .run/worker.env
fi
. ./.run/worker.env
# Like compose's event-consumer, the worker calls the internal entry point (no IP budget).
FINTEGRATE_API_KEY="$WORKER_KEY" FINTEGRATE_API_URL="http://127.0.0.1:$internal_port" \
    nohup fintegrate consume --consumer "$WORKER_NAME" > .run/worker.log 2>&1 & echo $! > .run/worker.pid
echo "worker:  consuming tenant $WORKER_NAME via :$internal_port (key in .run/worker.env, log .run/worker.log)" >&2

step "7/7 demo: a tenant, customers, events to its queue, receipts back (through the gateway)"
fintegrate demo || fail "demo (see .run/*.log; run 'fintegrate doctor')"
printf '\nFintegrate is running. Try: fintegrate doctor | fintegrate events stats | scripts/stop.sh\n' >&2
