#!/usr/bin/env bash
# Prepare local PostgreSQL, RabbitMQ and Redis for Fintegrate development and tests.
# Starts a service that is installed but down, then creates what the project needs:
#   PostgreSQL: role fintegrate_user (password fintegrate_pass, CREATEDB), database fintegrate_db
#   RabbitMQ:   user fintegrate_user (administrator), vhost fintegrate, management plugin
#   Redis:      reachable on 127.0.0.1:6379
#   Prometheus: Debian's binaries (prometheus, promtool) for the metrics and alert-rule
#               tests; installed, never started as a service
# Idempotent: safe to run any number of times.
set -euo pipefail

PG_HOST=${PG_HOST:-127.0.0.1}
PG_PORT=${PG_PORT:-5432}
PG_SUPERUSER=${PG_SUPERUSER:-postgres}
APP_USER=fintegrate_user
APP_PASS=fintegrate_pass
APP_DB=fintegrate_db
RABBIT_VHOST=fintegrate
missing=()

say() { printf '[prepare] %s\n' "$*" >&2; }
wait_until() { # wait_until SECONDS command...
    local deadline=$((SECONDS + $1)); shift
    until "$@" >/dev/null 2>&1; do
        [ "$SECONDS" -ge "$deadline" ] && return 1
        sleep 1
    done
}
as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

prepare_postgres() {
    if ! command -v psql >/dev/null || ! ls /etc/postgresql >/dev/null 2>&1; then
        missing+=("PostgreSQL: apt-get install postgresql (or use compose/docker-compose.yml)")
        return
    fi
    if ! pg_isready -h "$PG_HOST" -p "$PG_PORT" -q; then
        say "PostgreSQL is down; starting it"
        as_root pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | sort -V | tail -1)" main start || true
        wait_until 30 pg_isready -h "$PG_HOST" -p "$PG_PORT" -q || { say "PostgreSQL did not start"; exit 1; }
    fi
    local psql_admin=(psql -h "$PG_HOST" -p "$PG_PORT" -U "$PG_SUPERUSER" -d postgres -v ON_ERROR_STOP=1 -qtA)
    "${psql_admin[@]}" <<SQL
DO \$\$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$APP_USER') THEN
    CREATE ROLE $APP_USER LOGIN PASSWORD '$APP_PASS' CREATEDB;
  ELSE
    ALTER ROLE $APP_USER LOGIN PASSWORD '$APP_PASS' CREATEDB;
  END IF;
END \$\$;
SQL
    if [ -z "$("${psql_admin[@]}" -c "SELECT 1 FROM pg_database WHERE datname = '$APP_DB'")" ]; then
        "${psql_admin[@]}" -c "CREATE DATABASE $APP_DB OWNER $APP_USER"
    fi
    say "PostgreSQL ready: $APP_USER@$PG_HOST:$PG_PORT/$APP_DB"
}

prepare_rabbitmq() {
    if ! command -v rabbitmqctl >/dev/null; then
        missing+=("RabbitMQ: apt-get install rabbitmq-server (or use compose/docker-compose.yml)")
        return
    fi
    if ! as_root rabbitmqctl -q status >/dev/null 2>&1; then
        say "RabbitMQ is down; starting it"
        as_root rabbitmq-server -detached || true
    fi
    wait_until 90 as_root rabbitmqctl -q await_startup || { say "RabbitMQ did not start"; exit 1; }
    if ! as_root rabbitmqctl -q list_users | awk '{print $1}' | grep -qx "$APP_USER"; then
        as_root rabbitmqctl -q add_user "$APP_USER" "$APP_PASS"
    fi
    as_root rabbitmqctl -q set_user_tags "$APP_USER" administrator
    as_root rabbitmqctl -q add_vhost "$RABBIT_VHOST" 2>/dev/null || true
    for vhost in "$RABBIT_VHOST" /; do
        as_root rabbitmqctl -q set_permissions -p "$vhost" "$APP_USER" '.*' '.*' '.*'
    done
    as_root rabbitmq-plugins -q enable rabbitmq_management >/dev/null
    wait_until 60 curl -fsS -u "$APP_USER:$APP_PASS" http://127.0.0.1:15672/api/overview \
        || { say "RabbitMQ management API did not answer on 15672"; exit 1; }
    say "RabbitMQ ready: vhost $RABBIT_VHOST, management on http://127.0.0.1:15672"
}

prepare_redis() {
    if ! command -v redis-server >/dev/null; then
        missing+=("Redis (optional, the API fails open without it): apt-get install redis-server")
        return
    fi
    if ! redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
        say "Redis is down; starting it"
        redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no
        wait_until 15 redis-cli -h 127.0.0.1 -p 6379 ping || { say "Redis did not start"; exit 1; }
    fi
    say "Redis ready: 127.0.0.1:6379"
}

prepare_prometheus() {
    if command -v promtool >/dev/null && command -v prometheus >/dev/null; then
        return
    fi
    if ! command -v apt-get >/dev/null; then
        missing+=("Prometheus (promtool for the alert-rule tests): install the prometheus package")
        return
    fi
    say "installing Debian's prometheus package (binaries only; the tests run their own)"
    local apt_install=(env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends prometheus)
    as_root "${apt_install[@]}" >/dev/null || { as_root apt-get update -q >/dev/null && as_root "${apt_install[@]}" >/dev/null; }
    # The package may start its own service where an init system runs; the tests need only the binaries.
    command -v promtool >/dev/null || { say "prometheus did not install"; exit 1; }
    say "Prometheus binaries ready: $(command -v prometheus), $(command -v promtool)"
}

prepare_postgres
prepare_rabbitmq
prepare_redis
prepare_prometheus
if [ "${#missing[@]}" -gt 0 ]; then
    say "not installed here:"
    for line in "${missing[@]}"; do say "  - $line"; done
    say "install them, or run the whole stack with: docker compose -f compose/docker-compose.yml up"
    exit 1
fi
