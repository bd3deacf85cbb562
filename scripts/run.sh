#!/usr/bin/env bash
# Bring up Fintegrate on this machine without Docker and run the demo:
#   install into .venv -> prepare PostgreSQL/RabbitMQ/Redis -> apply migrations ->
#   start the API and the outbox relay in the background -> `fintegrate demo`.
# Logs and pid files go to .run/; stop everything with scripts/stop.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
step() { printf '\n==> %s\n' "$*" >&2; }
fail() { printf '\nFAILED at: %s\n' "$*" >&2; exit 1; }

step "1/6 installing into .venv"
./scripts/bootstrap.sh || fail "installing the package (see pip output above)"
export PATH="$PWD/.venv/bin:$PATH"

step "2/6 preparing PostgreSQL, RabbitMQ and Redis"
./scripts/prepare_services.sh || fail "preparing services (see above), or use compose/docker-compose.yml"

step "3/6 configuration (.env)"
if [ ! -f .env ]; then
    admin_key="adm_$(python3 -c 'import secrets; print(secrets.token_urlsafe(24))')"
    sed "s|^FINTEGRATE_ADMIN_API_KEY=.*|FINTEGRATE_ADMIN_API_KEY=${admin_key}|" .env.example > .env
    echo "wrote .env with a fresh admin key" >&2
fi
set -a; . ./.env; set +a

step "4/6 applying migrations"
fintegrate migrate apply --wait 30 || fail "migrations"

step "5/6 starting the API and the outbox relay"
mkdir -p .run
./scripts/stop.sh >/dev/null 2>&1 || true
port="${FINTEGRATE_API_URL##*:}"; port="${port%%/*}"
nohup fintegrate serve --host 127.0.0.1 --port "$port" > .run/api.log 2>&1 & echo $! > .run/api.pid
nohup fintegrate relay > .run/relay.log 2>&1 & echo $! > .run/relay.pid
for _ in $(seq 1 60); do
    curl -fsS "$FINTEGRATE_API_URL/health" >/dev/null 2>&1 && break
    sleep 0.5
done
curl -fsS "$FINTEGRATE_API_URL/ready" >/dev/null || fail "API not ready at $FINTEGRATE_API_URL (see .run/api.log)"
echo "API:   $FINTEGRATE_API_URL  (docs at $FINTEGRATE_API_URL/docs, log .run/api.log)" >&2
echo "relay: running (log .run/relay.log)" >&2

step "6/6 demo: a tenant, customers, events to its queue, receipts back"
fintegrate demo || fail "demo (see .run/*.log; run 'fintegrate doctor')"
printf '\nFintegrate is running. Try: fintegrate doctor | fintegrate events stats | scripts/stop.sh\n' >&2
