#!/usr/bin/env bash
# What a message costs a writer, piece by piece, measured with the servers'
# own load tools (BENCHMARKS.md, "What a message costs a writer"). Tables of
# its own (pgb_* and slap_* in the test database), dropped at the end.
#
#   benchmarks/writer-cost.sh postgres [clients] [seconds] [rounds]
#   benchmarks/writer-cost.sh mariadb  [clients] [rounds]
#
# PostgreSQL: pgbench, prepared statements; prints each variant's average
# latency and commits per second. MariaDB: mysqlslap, text protocol;
# prints each variant's time per transaction and commits per second.
set -euo pipefail
: "${OUTBOX_POSTGRES_URL:=postgres://postgres@127.0.0.1:5432/test}"
: "${OUTBOX_MYSQL_URL:=mysql://root@127.0.0.1:3306/test}"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

postgres() {
    local clients=${1:-8} seconds=${2:-8} rounds=${3:-2}
    local columns="id, ordering_key, destination, partition_key, payload, headers, event_type, created_at"
    local values="gen_random_uuid(), 'key-' || :c, 'orders', NULL, decode(repeat('ab', 200), 'hex'), '{}'::jsonb, 'order.placed', now()"
    psql -q -v ON_ERROR_STOP=1 "$OUTBOX_POSTGRES_URL" <<'SQL'
SET client_min_messages = warning;
DROP TABLE IF EXISTS pgb_orders, pgb_full, pgb_lanes, pgb_min, pgb_idle;
CREATE TABLE pgb_orders (id bigserial PRIMARY KEY, customer text, total bigint, created_at timestamptz DEFAULT now());
-- The adapter's table and indexes (outbox-postgres/migrations).
CREATE TABLE pgb_full (
    seq BIGSERIAL PRIMARY KEY, id UUID NOT NULL, ordering_key TEXT NOT NULL, destination TEXT NOT NULL,
    partition_key TEXT, payload BYTEA NOT NULL, headers JSONB NOT NULL DEFAULT '{}'::jsonb, event_type TEXT,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(), attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at TIMESTAMPTZ NOT NULL DEFAULT now(), last_error TEXT, dead_at TIMESTAMPTZ, done_at TIMESTAMPTZ
) WITH (fillfactor = 80);
CREATE UNIQUE INDEX ON pgb_full (id);
CREATE INDEX ON pgb_full (seq) WHERE done_at IS NULL AND dead_at IS NULL;
CREATE INDEX ON pgb_full (ordering_key, seq) WHERE done_at IS NULL;
CREATE INDEX ON pgb_full (ordering_key, seq) WHERE attempts > 0 AND done_at IS NULL;
-- The adapter's table with lanes = 16: one more index, on each row's lane.
CREATE TABLE pgb_lanes (LIKE pgb_full INCLUDING ALL);
CREATE INDEX ON pgb_lanes (((hashtext(ordering_key) & 2147483647) % 16), seq) WHERE done_at IS NULL AND dead_at IS NULL;
-- The same row with only the primary key and the claim's look-back index.
CREATE TABLE pgb_min (LIKE pgb_full INCLUDING DEFAULTS);
ALTER TABLE pgb_min ADD PRIMARY KEY (seq);
CREATE INDEX ON pgb_min (ordering_key, seq) WHERE done_at IS NULL;
CREATE UNLOGGED TABLE pgb_idle (relay uuid PRIMARY KEY, since timestamptz NOT NULL);
SQL
    local order="INSERT INTO pgb_orders (customer, total) VALUES ('customer-' || :c, :c);"
    local notify="(SELECT CASE WHEN EXISTS (SELECT FROM pgb_idle) THEN pg_notify('c', '') END) AS n"
    variant() { printf '\\set c random(1, 100000)\nBEGIN;\n%s\n%s\nCOMMIT;\n' "$order" "$2" > "$work/$1.sql"; }
    variant alone ""
    variant floor "SELECT 1;"
    variant second_row "INSERT INTO pgb_orders (customer, total) VALUES ('audit-' || :c, :c);"
    variant outbox "WITH lock AS (SELECT pg_advisory_xact_lock(1, hashtext('key-' || :c))) INSERT INTO pgb_full ($columns) SELECT $values FROM lock, $notify;"
    variant outbox_lanes "WITH lock AS (SELECT pg_advisory_xact_lock(1, hashtext('key-' || :c))) INSERT INTO pgb_lanes ($columns) SELECT $values FROM lock, $notify;"
    variant no_notify_check "WITH lock AS (SELECT pg_advisory_xact_lock(1, hashtext('key-' || :c))) INSERT INTO pgb_full ($columns) SELECT $values FROM lock;"
    variant plain_insert "INSERT INTO pgb_full ($columns) VALUES ($values);"
    variant two_indexes "INSERT INTO pgb_min ($columns) VALUES ($values);"
    for round in $(seq "$rounds"); do
        for v in alone floor second_row outbox outbox_lanes no_notify_check plain_insert two_indexes; do
            pgbench -n -M prepared -c "$clients" -j 2 -T "$seconds" -f "$work/$v.sql" "$OUTBOX_POSTGRES_URL" 2>&1 |
                awk -v r="$round" -v v="$v" '/latency average/ {l=$4} /^tps/ {t=$3} END {printf "round %s  %-16s %7.3f ms  %8.0f tx/s\n", r, v, l, t}'
        done
    done
    psql -q "$OUTBOX_POSTGRES_URL" -c "DROP TABLE pgb_orders, pgb_full, pgb_lanes, pgb_min, pgb_idle"
}

mariadb() {
    local clients=${1:-8} rounds=${2:-2}
    local rest=${OUTBOX_MYSQL_URL#mysql://} user host port db
    user=${rest%%@*}; rest=${rest#*@}; host=${rest%%:*}; rest=${rest#*:}; port=${rest%%/*}; db=${rest#*/}
    local my=(-h "$host" -P "$port" -u "$user")
    mysql "${my[@]}" "$db" <<'SQL'
DROP TABLE IF EXISTS slap_orders, slap_outbox, slap_outbox_keys;
CREATE TABLE slap_orders (id BIGINT AUTO_INCREMENT PRIMARY KEY, customer VARCHAR(100), total BIGINT);
CREATE TABLE slap_outbox (
    seq BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY, id BINARY(16) NOT NULL,
    ordering_key VARCHAR(255) NOT NULL, destination VARCHAR(255) NOT NULL, partition_key VARCHAR(255) NULL,
    payload LONGBLOB NOT NULL, headers LONGTEXT NOT NULL, event_type VARCHAR(255) NULL,
    created_at DATETIME(6) NOT NULL, attempts INT NOT NULL DEFAULT 0, next_attempt_at DATETIME(6) NOT NULL,
    last_error TEXT NULL, dead_at DATETIME(6) NULL, done_at DATETIME(6) NULL,
    UNIQUE KEY slap_outbox_id (id), KEY slap_outbox_waiting (done_at, dead_at, seq, ordering_key),
    KEY slap_outbox_key (ordering_key, attempts, seq), KEY slap_outbox_dead (dead_at)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;
CREATE TABLE slap_outbox_keys (ordering_key VARBINARY(1020) NOT NULL PRIMARY KEY) ENGINE = InnoDB;
SQL
    local order="INSERT INTO slap_orders (customer, total) VALUES (concat('c', floor(rand() * 100000)), 1)"
    local key="concat('key-', floor(rand() * 10000))"
    local insert="INSERT INTO slap_outbox (id, ordering_key, destination, partition_key, payload, headers, event_type, created_at, next_attempt_at) VALUES (unhex(replace(uuid(), '-', '')), $key, 'orders', NULL, repeat('x', 200), '{}', NULL, UTC_TIMESTAMP(6), UTC_TIMESTAMP(6))"
    # The lock takes a key of its own draw: the same work as the writer's.
    local lock="INSERT INTO slap_outbox_keys (ordering_key) VALUES ($key) ON DUPLICATE KEY UPDATE ordering_key = ordering_key"
    local trigger="CREATE TRIGGER slap_outbox_keylock BEFORE INSERT ON slap_outbox FOR EACH ROW INSERT INTO slap_outbox_keys (ordering_key) VALUES (NEW.ordering_key) ON DUPLICATE KEY UPDATE ordering_key = ordering_key"
    run() {
        local name=$1 statements=$2 query=$3 transactions=$((clients * 1500))
        mysqlslap "${my[@]}" --create-schema="$db" --delimiter=";" --query="$query" \
            --concurrency="$clients" --number-of-queries=$((transactions * statements)) 2>&1 |
            awk -v v="$name" -v n="$transactions" -v c="$clients" '/Average number of seconds/ {s=$(NF-1)}
                END {printf "%-18s %7.3f ms  %8.0f tx/s\n", v, s * 1000 * c / n, n / s}'
    }
    for round in $(seq "$rounds"); do
        echo "round $round"
        mysql "${my[@]}" "$db" -e "DROP TRIGGER IF EXISTS slap_outbox_keylock"
        run alone 3 "BEGIN; $order; COMMIT"
        run floor 4 "BEGIN; $order; SELECT 1; COMMIT"
        run second_row 4 "BEGIN; $order; $order; COMMIT"
        run lock_statement 5 "BEGIN; $order; $lock; $insert; COMMIT"
        mysql "${my[@]}" "$db" -e "$trigger"
        run lock_trigger 4 "BEGIN; $order; $insert; COMMIT"
    done
    mysql "${my[@]}" "$db" -e "DROP TABLE slap_orders, slap_outbox, slap_outbox_keys"
}

case "${1:-}" in
    postgres) shift; postgres "$@" ;;
    mariadb) shift; mariadb "$@" ;;
    *) echo "usage: $0 postgres [clients] [seconds] [rounds] | mariadb [clients] [rounds]" >&2; exit 2 ;;
esac
