//! Autovacuum on or off for a run, on a cluster that runs with it off
//! (`scripts/services.sh`). Shared by the process tests and the
//! benchmark program (`benches/relay/sustained.rs` includes this file).

use sqlx::PgPool;

/// Turns the cluster's autovacuum on, or back to the cluster's setting.
pub async fn set_autovacuum(pool: &PgPool, on: bool) {
    let statement = if on {
        "ALTER SYSTEM SET autovacuum = on"
    } else {
        "ALTER SYSTEM RESET autovacuum"
    };
    sqlx::query(statement)
        .execute(pool)
        .await
        .expect("ALTER SYSTEM");
    sqlx::query("SELECT pg_reload_conf()")
        .execute(pool)
        .await
        .expect("reload");
}
