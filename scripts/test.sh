#!/usr/bin/env bash
# Runs every check and test of the workspace against real servers:
# formatting, clippy, then all tests (unit, conformance, integration,
# examples and benchmark smoke runs), after making sure the servers run.
#
#   scripts/test.sh
#
# Servers: scripts/services.sh up uses those answering on their ports and
# starts the missing ones (see that script for the ports and URLs).
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

step "system packages for the build"
scripts/services.sh deps

step "servers"
scripts/services.sh up
# shellcheck source=/dev/null
source .services/env

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy"
cargo clippy --workspace --all-targets --all-features -- -D warnings

# Every package as it would be published: manifest, files, and its
# dependencies on the others resolved against their packaged versions.
# (`cargo package --workspace` without --no-verify also builds each tarball:
# about 5.5 minutes more on 2 cores, run by hand before a release.)
step "cargo package"
cargo package --workspace --no-verify --allow-dirty --quiet

step "tests"
# One build, then every test binary; test binaries run one after another and
# the tests inside each in parallel (each test owns its table, topic, queue
# or subject).
cargo test --workspace --all-features --no-fail-fast

step "quickstart"
cargo run --quiet --example quickstart

step "example custom_webhook (own Source and Destination)"
cargo run --quiet --example custom_webhook

# Each service example with 20 orders: it fails unless every event arrives
# once, in order per order.
for example in postgres_kafka postgres_amqp postgres_nats mysql_kafka mysql_amqp mysql_nats; do
    step "example $example"
    cargo run --quiet --all-features --example "$example" -- 20
done

# A service embedding the relay, with traces and metrics: it fails unless
# every event is consumed in its request's trace, with a publish span in
# that trace, and /metrics counts them.
step "example observed_service"
cargo run --quiet --all-features --example observed_service -- 20

# The same service with its database and broker picked at run time, behind
# BoxSource and BoxDestination.
for pair in "mysql kafka" "postgres amqp" "postgres_wal nats" "postgres_wal_table amqp"; do
    step "example any_pair $pair"
    # shellcheck disable=SC2086
    cargo run --quiet --all-features --example any_pair -- 20 $pair
done

# The benchmark programs' smoke runs check that every section runs and
# loses nothing, not how fast: they run in the test profile, on the build
# the tests made (a release build would add several minutes on 2 cores).
# Figures come from `cargo bench` (BENCHMARKS.md).
step "scheduler benchmark (smoke)"
cargo test --quiet --all-features -p txoutbox-core --bench scheduler -- 20000 1000

# Every pair, latency, enqueue cost, relay processes and sustained load, on
# small numbers:
# it fails if a drain loses a message or leaves a row.
step "relay benchmark (smoke): every pair"
cargo test --quiet --all-features -p txoutbox-relay --bench relay -- --messages 5000 --runs 1 \
    --latency-seconds 2 --enqueue-seconds 1 --inbox-seconds 1 --small 2000 --processes 1,2 \
    --leader-only-processes 2 --lanes-processes 2 \
    --wal-messages 5000 --sustained-seconds 10 --sustained-relays 2
