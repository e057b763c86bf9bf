//! The WAL outbox's table mode can read a transaction from the log before
//! other sessions see it: PostgreSQL flushes a commit's record, waits for
//! its synchronous standbys, and only then makes the transaction visible,
//! while logical decoding sends whatever is flushed. On a cluster of the
//! test's own whose synchronous standby never comes, a writer's commit
//! stays in that window until the test cancels its wait; the relay
//! delivers its rows meanwhile, and must still delete them once they are
//! visible, the slot held below them until then.

mod support;

use std::time::Duration;

use outbox_core::memory::MemoryDestination;
use outbox_postgres::{WalConfig, WalOutbox};
use outbox_testkit::{
    arrivals, assert_order_per_key, eventually, fast_relay_config, numbered_messages, run_relay,
};
use sqlx::PgPool;
use support::servers::OwnPostgres;
use uuid::Uuid;

const DEADLINE: Duration = Duration::from_secs(60);

/// Backends waiting for the synchronous standby.
async fn waiting_for_the_standby(pool: &PgPool) -> Vec<i32> {
    sqlx::query_scalar("SELECT pid FROM pg_stat_activity WHERE wait_event = 'SyncRep'")
        .fetch_all(pool)
        .await
        .unwrap()
}

async fn rows_of(pool: &PgPool, ids: &[Uuid]) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM public.visibility_rows WHERE id = ANY($1)")
        .bind(ids)
        .fetch_one(pool)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_read_before_their_commit_is_visible_are_still_deleted() {
    let postgres = OwnPostgres::start_logical_waiting_for_a_standby().await;
    let pool = PgPool::connect(&postgres.url()).await.unwrap();
    let config = WalConfig {
        url: postgres.url(),
        slot: "visibility".into(),
        publication: "visibility".into(),
        table: Some("visibility_rows".into()),
        ..WalConfig::default()
    };
    let outbox = WalOutbox::new(config, pool.clone()).unwrap();
    outbox.migrate().await.unwrap();

    // A commit that waits for the standby: in the log, not yet visible.
    let unseen = numbered_messages("unseen", 1, 3);
    let writer = tokio::spawn({
        let (outbox, pool, unseen) = (outbox.clone(), pool.clone(), unseen.clone());
        async move {
            let mut tx = pool.begin().await.unwrap();
            sqlx::query("SET LOCAL synchronous_commit = on")
                .execute(&mut *tx)
                .await
                .unwrap();
            outbox.enqueue_many(&mut tx, &unseen).await.unwrap();
            tx.commit().await
        }
    });
    let waits = eventually(DEADLINE, || async {
        waiting_for_the_standby(&pool).await.len() == 1
    })
    .await;
    assert!(waits, "the writer's commit did not wait for the standby");
    // Then one that is visible at once, later in the log.
    let seen = numbered_messages("seen", 1, 2);
    let mut tx = pool.begin().await.unwrap();
    outbox.enqueue_many(&mut tx, &seen).await.unwrap();
    tx.commit().await.unwrap();

    let destination = MemoryDestination::new();
    let relay = run_relay(
        outbox.source().await.unwrap(),
        destination.clone(),
        fast_relay_config(),
    );
    let all = unseen.len() + seen.len();
    assert!(
        destination.wait_for_distinct(all, DEADLINE).await,
        "only {} of {all} arrived",
        destination.sent_count()
    );
    // The visible rows are deleted, so the relay has tried the others too
    // (they come first in the log).
    let seen_ids: Vec<Uuid> = seen.iter().map(|m| m.id).collect();
    let swept = eventually(DEADLINE, || async { rows_of(&pool, &seen_ids).await == 0 }).await;
    assert!(swept, "the visible transaction's rows stayed in the table");
    let waiting = waiting_for_the_standby(&pool).await;
    assert_eq!(waiting.len(), 1, "the writer still waits for the standby");

    // The writer's wait cancelled: its transaction becomes visible.
    sqlx::query("SELECT pg_cancel_backend($1)")
        .bind(waiting[0])
        .execute(&pool)
        .await
        .unwrap();
    writer
        .await
        .unwrap()
        .expect("the commit stands, unreplicated");
    let unseen_ids: Vec<Uuid> = unseen.iter().map(|m| m.id).collect();
    let deleted = eventually(DEADLINE, || async {
        rows_of(&pool, &unseen_ids).await == 0
    })
    .await;
    assert!(
        deleted,
        "rows read from the log before their commit was visible stayed in the table"
    );
    // A stopped relay lets go of the slot, confirmed past what it settled.
    relay.stop().await;
    let confirmed = eventually(DEADLINE, || async { outbox.unread().await.ok() == Some(0) }).await;
    assert!(confirmed, "the slot was not confirmed to the end");
    let arrived = arrivals(&destination);
    assert_order_per_key(&[unseen, seen].concat(), &arrived);
}
