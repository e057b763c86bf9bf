//! The WAL outbox as a chaos run's database: writers emit into the log
//! (or, in the table mode, every other commit inserts rows that the relay
//! reads from the log), the relays share one replication slot (one reads,
//! two stand by).

use std::sync::Mutex;

use outbox_core::{Backlog, Message};
use outbox_postgres::{WalConfig, WalOutbox};
use sqlx::PgPool;
use uuid::Uuid;

use crate::databases::{end_connections, restart, Database, PgConsumer, APPLICATION};
use crate::support::servers::OwnPostgres;

pub struct PostgresWal {
    outbox: WalOutbox,
    /// In the table mode, the writer of the other commits: messages
    /// emitted into the log.
    emitter: Option<WalOutbox>,
    pool: PgPool,
    url: String,
    name: String,
    /// Each commit's log position just after it, and its message count:
    /// a commit is settled once the slot is confirmed past it.
    commits: Mutex<Vec<(i64, u64)>>,
    own: Option<OwnPostgres>,
}

fn wal_url() -> String {
    std::env::var("OUTBOX_POSTGRES_WAL_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5433/test".into())
}

impl PostgresWal {
    /// A fresh slot, publication and failures table named `name` on the
    /// bench's logical cluster, in the table mode: commits alternate
    /// between rows of the table `<name>_rows` and messages emitted into
    /// the log.
    pub async fn shared_table(name: &str) -> Self {
        Self::on(wal_url(), name, None, true).await
    }

    /// A logical cluster of the harness's own, which the run restarts.
    pub async fn own(name: &str) -> Self {
        let own = OwnPostgres::start_logical().await;
        Self::on(own.url(), name, Some(own), false).await
    }

    async fn on(url: String, name: &str, own: Option<OwnPostgres>, table: bool) -> Self {
        let pool = PgPool::connect(&url)
            .await
            .expect("PostgreSQL (logical) reachable");
        sqlx::query(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots \
             WHERE slot_name = $1",
        )
        .bind(name)
        .execute(&pool)
        .await
        .expect("no relay of an earlier run reads the slot");
        sqlx::raw_sql(&format!(
            "DROP PUBLICATION IF EXISTS {name}; DROP TABLE IF EXISTS public.{name}; \
             DROP TABLE IF EXISTS public.{name}_rows"
        ))
        .execute(&pool)
        .await
        .unwrap();
        let config = WalConfig {
            url: url.clone(),
            prefix: name.into(),
            slot: name.into(),
            publication: name.into(),
            failures_table: name.into(),
            ..WalConfig::default()
        };
        let emitter = table.then(|| WalOutbox::new(config.clone(), pool.clone()).unwrap());
        let config = WalConfig {
            table: table.then(|| format!("{name}_rows")),
            ..config
        };
        let outbox = WalOutbox::new(config, pool.clone()).unwrap();
        outbox.migrate().await.unwrap();
        PostgresWal {
            outbox,
            emitter,
            pool,
            url,
            name: name.into(),
            commits: Mutex::default(),
            own,
        }
    }

    fn consumer(&self) -> PgConsumer<'_> {
        PgConsumer {
            pool: &self.pool,
            schema: "public",
            name: &self.name,
        }
    }
}

impl Database for PostgresWal {
    fn source_settings(&self) -> String {
        let separator = if self.url.contains('?') { '&' } else { '?' };
        let table = match &self.outbox.config().table {
            Some(table) => format!("\nread_table = true\ntable = \"{table}\""),
            None => String::new(),
        };
        format!(
            "kind = \"postgres_wal\"\nurl = \"{}{separator}application_name={APPLICATION}-{name}\"\n\
             prefix = \"{name}\"\nslot = \"{name}\"\npublication = \"{name}\"\n\
             failures_table = \"{name}\"{table}",
            self.url,
            name = self.name
        )
    }

    async fn commit(&self, messages: &[Message]) {
        let writer = match &self.emitter {
            Some(emitter) if self.commits.lock().unwrap().len() % 2 == 1 => emitter,
            _ => &self.outbox,
        };
        let mut tx = self.pool.begin().await.unwrap();
        writer.enqueue_many(&mut tx, messages).await.unwrap();
        tx.commit().await.unwrap();
        let after: i64 = sqlx::query_scalar("SELECT (pg_current_wal_lsn() - '0/0')::bigint")
            .fetch_one(&self.pool)
            .await
            .unwrap();
        self.commits
            .lock()
            .unwrap()
            .push((after, messages.len() as u64));
    }

    /// Messages of commits the slot is not confirmed past, plus those
    /// waiting in the failures table.
    async fn backlog(&self) -> Backlog {
        let confirmed: Option<i64> = sqlx::query_scalar(
            "SELECT (confirmed_flush_lsn - '0/0')::bigint FROM pg_replication_slots \
             WHERE slot_name = $1",
        )
        .bind(&self.name)
        .fetch_one(&self.pool)
        .await
        .unwrap();
        let confirmed = confirmed.unwrap_or(0);
        let unconfirmed: u64 = self
            .commits
            .lock()
            .unwrap()
            .iter()
            .filter(|(after, _)| *after > confirmed)
            .map(|(_, count)| count)
            .sum();
        let table = self.outbox.backlog().await.unwrap();
        Backlog {
            waiting: unconfirmed + table.waiting,
            ..table
        }
    }

    async fn end_relay_connections(&self) -> usize {
        end_connections(&self.pool, &self.name).await
    }

    async fn restart(&self) {
        restart(self.own.as_ref()).await;
    }

    async fn prepare_consumer(&self) {
        self.consumer().prepare().await;
    }

    async fn apply(&self, id: Uuid, amount: i64) -> Result<bool, String> {
        self.consumer().apply(id, amount).await
    }

    async fn effects(&self) -> (i64, i64) {
        self.consumer().effects().await
    }

    async fn clean_up(&self) {
        // Rows go before their commit may be confirmed, and every commit
        // was: none is left, whatever the faults.
        if let Some(table) = &self.outbox.config().table {
            let left: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM public.{table}"))
                .fetch_one(&self.pool)
                .await
                .unwrap();
            assert_eq!(left, 0, "rows read from the log stayed in {table}");
        }
        // The stopped relays' walsenders end a moment after them.
        let dropped = outbox_testkit::eventually(std::time::Duration::from_secs(30), || async {
            sqlx::query("SELECT pg_drop_replication_slot($1)")
                .bind(&self.name)
                .execute(&self.pool)
                .await
                .is_ok()
        })
        .await;
        assert!(dropped, "the slot stayed active after the relays stopped");
    }
}
