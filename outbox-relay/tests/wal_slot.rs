//! The WAL outbox's slot, invalidated by the server: on a logical cluster
//! of the test's own that keeps at most 1 MB of log for a slot behind,
//! the slot falls past it, a checkpoint invalidates it, and `migrate` then
//! refuses it, saying what happened and what to do.

mod support;

use std::time::{Duration, Instant};

use outbox_postgres::{WalConfig, WalOutbox};
use sqlx::PgPool;
use support::servers::OwnPostgres;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_refuses_an_invalidated_slot() {
    let postgres = OwnPostgres::start_logical_keeping(1).await;
    let pool = PgPool::connect(&postgres.url()).await.unwrap();
    let outbox = WalOutbox::new(
        WalConfig {
            url: postgres.url(),
            slot: "lost_slot".into(),
            ..WalConfig::default()
        },
        pool.clone(),
    )
    .unwrap();
    outbox.migrate().await.expect("a new slot");

    // No reader: write log past the slot's allowance until a checkpoint
    // invalidates it.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        sqlx::raw_sql(
            "DROP TABLE IF EXISTS filler; \
             CREATE TABLE filler AS SELECT g, repeat('x', 100) AS pad FROM generate_series(1, 100000) AS g",
        )
        .execute(&pool)
        .await
        .unwrap();
        sqlx::query("SELECT pg_switch_wal()")
            .execute(&pool)
            .await
            .unwrap();
        sqlx::query("CHECKPOINT").execute(&pool).await.unwrap();
        let status: Option<String> = sqlx::query_scalar(
            "SELECT wal_status FROM pg_replication_slots WHERE slot_name = 'lost_slot'",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        if status.as_deref() == Some("lost") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the slot was not invalidated ({status:?})"
        );
    }

    let refused = outbox
        .migrate()
        .await
        .expect_err("migrate must refuse an invalidated slot");
    let said = refused.to_string();
    assert!(
        said.contains("lost_slot") && said.contains("invalidated"),
        "{said}"
    );
    assert!(
        said.contains("pg_drop_replication_slot") && said.contains("migrate"),
        "{said}"
    );

    // Done as it says, migrate makes a new slot.
    sqlx::query("SELECT pg_drop_replication_slot('lost_slot')")
        .execute(&pool)
        .await
        .unwrap();
    outbox.migrate().await.expect("a new slot after the drop");
}
