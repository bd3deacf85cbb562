#!/usr/bin/env bash
# A local three-node RabbitMQ cluster of the installed server, on loopback ports of its own.
#
#   scripts/rabbitmq_cluster.sh start            start (or resume) and cluster the three nodes
#   scripts/rabbitmq_cluster.sh status           each node: running or not, and its cluster view
#   scripts/rabbitmq_cluster.sh stop             stop every node and delete its data
#   scripts/rabbitmq_cluster.sh kill N           kill -9 node N (1-3), keeping its data
#   scripts/rabbitmq_cluster.sh start-node N     start node N again; it rejoins the cluster
#   scripts/rabbitmq_cluster.sh urls             the FINTEGRATE_RABBITMQ_URL and _MANAGEMENT_URL
#
# Nodes fintegrate-c1..3@localhost listen on 127.0.0.1 only: AMQP 5791-5793, management
# 15791-15793, distribution 25791-25793 (override with FINTEGRATE_CLUSTER_AMQP_BASE,
# _MANAGEMENT_BASE, _DIST_BASE). Data, logs, config and the shared Erlang cookie live under
# FINTEGRATE_CLUSTER_DIR (default /tmp/fintegrate-rabbit-cluster). The system node
# (rabbit@localhost, 5672/15672/25672) and its files are never touched: every call below
# names its node and reads this directory's config, never /etc/rabbitmq.
# Creates user fintegrate_user/fintegrate_pass (administrator) and vhost fintegrate, as
# scripts/prepare_services.sh does on the system broker. Bounded waits; exit 1 on failure.
set -euo pipefail

SBIN=${RABBITMQ_SBIN:-/usr/lib/rabbitmq/bin}
DIR=${FINTEGRATE_CLUSTER_DIR:-/tmp/fintegrate-rabbit-cluster}
AMQP_BASE=${FINTEGRATE_CLUSTER_AMQP_BASE:-5791}
MANAGEMENT_BASE=${FINTEGRATE_CLUSTER_MANAGEMENT_BASE:-15791}
DIST_BASE=${FINTEGRATE_CLUSTER_DIST_BASE:-25791}
START_TIMEOUT=${FINTEGRATE_CLUSTER_START_TIMEOUT:-180}
APP_USER=fintegrate_user
APP_PASS=fintegrate_pass
VHOST=fintegrate
NODES=(1 2 3)

say() { printf '[rabbitmq-cluster] %s\n' "$*" >&2; }
node_name() { echo "fintegrate-c$1@localhost"; }
node_dir() { echo "$DIR/node$1"; }

# The environment one node's server and CLI calls run with (a subshell's exports).
node_env() {
    local n=$1 dir
    dir=$(node_dir "$n")
    export HOME="$DIR/home"  # the shared .erlang.cookie is read from $HOME
    export RABBITMQ_CONF_ENV_FILE="$DIR/rabbitmq-env.conf"
    export RABBITMQ_NODENAME
    RABBITMQ_NODENAME=$(node_name "$n")
    export RABBITMQ_NODE_IP_ADDRESS=127.0.0.1
    export RABBITMQ_NODE_PORT=$((AMQP_BASE + n - 1))
    export RABBITMQ_DIST_PORT=$((DIST_BASE + n - 1))
    export RABBITMQ_CONFIG_FILE="$dir/rabbitmq.conf"
    export RABBITMQ_ADVANCED_CONFIG_FILE="$dir/advanced.config"
    export RABBITMQ_ENABLED_PLUGINS_FILE="$dir/enabled_plugins"
    export RABBITMQ_MNESIA_BASE="$dir/mnesia"
    export RABBITMQ_LOG_BASE="$dir/log"
    export RABBITMQ_PID_FILE="$dir/pid"
    export RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}"
    export ERL_EPMD_ADDRESS=127.0.0.1
    # a CLI call that fails writes a crash dump into its working directory otherwise
    export ERL_CRASH_DUMP="$dir/log/erl_crash.dump"
}

ctl() { # ctl N args...: rabbitmqctl against node N
    local n=$1; shift
    (node_env "$n"; "$SBIN/rabbitmqctl" -n "$(node_name "$n")" "$@")
}

write_files() {
    local n=$1 dir
    dir=$(node_dir "$n")
    mkdir -p "$dir/mnesia" "$dir/log" "$DIR/home"
    if [ ! -f "$DIR/home/.erlang.cookie" ]; then
        head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$DIR/home/.erlang.cookie"
        chmod 400 "$DIR/home/.erlang.cookie"
    fi
    : > "$DIR/rabbitmq-env.conf"
    echo '[rabbitmq_management].' > "$dir/enabled_plugins"
    echo '[].' > "$dir/advanced.config"
    cat > "$dir/rabbitmq.conf" <<CONF
listeners.tcp.default = 127.0.0.1:$((AMQP_BASE + n - 1))
management.tcp.ip = 127.0.0.1
management.tcp.port = $((MANAGEMENT_BASE + n - 1))
vm_memory_high_watermark.absolute = 512MB
disk_free_limit.absolute = 50MB
loopback_users = none
CONF
}

running() { # without this directory's cookie no node of ours can be running
    [ -f "$DIR/home/.erlang.cookie" ] && ctl "$1" -q -t 5 ping >/dev/null 2>&1
}

start_node() {
    local n=$1 dir
    dir=$(node_dir "$n")
    if running "$n"; then
        return 0
    fi
    write_files "$n"
    say "starting $(node_name "$n") (AMQP $((AMQP_BASE + n - 1)), management $((MANAGEMENT_BASE + n - 1)))"
    (node_env "$n"; nohup "$SBIN/rabbitmq-server" >"$dir/log/console.log" 2>&1 &)
}

await_node() { # the VM first answers pings, then the broker inside it finishes booting
    local n=$1 deadline=$((SECONDS + START_TIMEOUT))
    until ctl "$n" -q -t 5 await_startup >/dev/null 2>&1; do
        [ "$SECONDS" -ge "$deadline" ] && break
        sleep 1
    done
    if ! ctl "$n" -q -t 5 await_startup >/dev/null 2>&1; then
        say "$(node_name "$n") did not start within ${START_TIMEOUT}s; see $(node_dir "$n")/log"
        exit 1
    fi
}

clustered() { # is node N a running member of node 1's cluster?
    ctl 1 -q cluster_status --formatter json 2>/dev/null \
        | grep -q "\"running_nodes\":\[[^]]*\"$(node_name "$1")\""
}

join_node() {
    local n=$1
    clustered "$n" && return 0
    say "joining $(node_name "$n") to $(node_name 1)"
    {
        ctl "$n" -q stop_app
        ctl "$n" -q reset
        ctl "$n" -q join_cluster "$(node_name 1)"
        ctl "$n" -q start_app
    } >>"$DIR/cluster.log" 2>&1 || { say "joining failed; see $DIR/cluster.log"; exit 1; }
}

prepare_vhost() {
    if ! ctl 1 -q list_users | grep -q "^$APP_USER"; then
        ctl 1 -q add_user "$APP_USER" "$APP_PASS"
    fi
    ctl 1 -q set_user_tags "$APP_USER" administrator
    ctl 1 -q add_vhost "$VHOST" >/dev/null 2>&1 || true
    ctl 1 -q set_permissions -p "$VHOST" "$APP_USER" '.*' '.*' '.*'
}

urls() {
    local amqp=() management=() n
    for n in "${NODES[@]}"; do
        amqp+=("amqp://$APP_USER:$APP_PASS@127.0.0.1:$((AMQP_BASE + n - 1))/$VHOST")
        management+=("http://$APP_USER:$APP_PASS@127.0.0.1:$((MANAGEMENT_BASE + n - 1))")
    done
    (IFS=,; echo "FINTEGRATE_RABBITMQ_URL=${amqp[*]}")
    (IFS=,; echo "FINTEGRATE_RABBITMQ_MANAGEMENT_URL=${management[*]}")
}

start() {
    local n
    for n in "${NODES[@]}"; do start_node "$n"; done
    for n in "${NODES[@]}"; do await_node "$n"; done
    for n in 2 3; do join_node "$n"; done
    prepare_vhost
    say "cluster ready"
    urls
}

kill_node() {
    local n=$1 pid_file
    pid_file="$(node_dir "$n")/pid"
    if [ -f "$pid_file" ]; then
        kill -9 "$(cat "$pid_file")" 2>/dev/null || true
        rm -f "$pid_file"
        say "killed $(node_name "$n")"
    fi
}

stop() {
    local n
    for n in "${NODES[@]}"; do
        if running "$n"; then
            ctl "$n" -q -t 30 stop >/dev/null 2>&1 || true
        fi
        kill_node "$n"
    done
    rm -rf "$DIR"
    say "stopped; $DIR removed"
}

status() {
    local n state=0
    for n in "${NODES[@]}"; do
        if running "$n"; then
            echo "$(node_name "$n") running, clustered with node 1: $(clustered "$n" && echo yes || echo no)"
        else
            echo "$(node_name "$n") not running"
            state=1
        fi
    done
    return "$state"
}

node_arg() {
    case "${1:-}" in
        1 | 2 | 3) echo "$1" ;;
        *) say "expected a node number 1-3, got '${1:-}'"; exit 2 ;;
    esac
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    status) status ;;
    urls) urls ;;
    kill) kill_node "$(node_arg "${2:-}")" ;;
    start-node)
        n=$(node_arg "${2:-}")
        start_node "$n"
        await_node "$n"
        ;;
    *)
        sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//' >&2
        exit 2
        ;;
esac
