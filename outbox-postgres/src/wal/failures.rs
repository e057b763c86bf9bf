//! The WAL outbox's one table: messages waiting for a retry, the later
//! messages of their keys, and dead letters. Only the relay reading the
//! slot writes it, so it needs no row locks; it holds what failed, not the
//! traffic, and stays small.

use std::collections::HashSet;
use std::time::Duration;

use chrono::{DateTime, Utc};
use outbox_core::{DeadLetter, Error, Message, OnDeadLetter, Waiting};
use outbox_sql::headers_json;
use sqlx::{PgPool, Row};
use uuid::Uuid;

use crate::error::classify;
use crate::row::{read, Decoded};
use sqlx::postgres::PgRow;

/// A message written to the table: when it may be tried next, with what
/// error, and whether it is a dead letter.
pub(crate) struct Parked<'a> {
    pub(crate) message: &'a Message,
    pub(crate) attempts: u32,
    pub(crate) retry_after: Duration,
    pub(crate) error: Option<&'a str>,
    pub(crate) dead: bool,
}

impl<'a> Parked<'a> {
    /// A message moved to the table unfailed: it waits behind its key, due
    /// now, with the attempts it has.
    pub(crate) fn waiting(message: &'a Message) -> Self {
        Self {
            message,
            attempts: message.attempts,
            retry_after: Duration::ZERO,
            error: None,
            dead: false,
        }
    }
}

/// The table's statements for one configured name.
#[derive(Debug)]
pub(crate) struct Failures {
    table: String,
    park: bool,
}

/// Text columns as bytes (see `sql::READ_COLUMNS`), so a row that is not
/// UTF-8 is malformed rather than an error.
const COLUMNS: &str = "seq, id, attempts, payload, \
     convert_to(ordering_key, 'SQL_ASCII') AS ordering_key, \
     convert_to(destination, 'SQL_ASCII') AS destination, \
     convert_to(partition_key, 'SQL_ASCII') AS partition_key, \
     convert_to(event_type, 'SQL_ASCII') AS event_type, \
     convert_to(headers::text, 'SQL_ASCII') AS headers, \
     CASE WHEN isfinite(created_at) AND created_at < '200000-01-01' THEN created_at END AS created_at";

/// A row as an operator lists it: id, attempts, and the message when the
/// row can be read as one.
fn listed(row: &PgRow) -> Result<(Uuid, u32, Option<Message>), Error> {
    let message = match decode(row).map_err(classify)? {
        Decoded::Message(message) => Some(message),
        Decoded::Malformed { .. } => None,
    };
    let id = row.try_get("id").map_err(classify)?;
    let attempts: i32 = row.try_get("attempts").map_err(classify)?;
    Ok((id, attempts.max(0) as u32, message))
}

/// A row read back: its headers carry the message's log position as its
/// sequence already, so the table's `seq` is not stamped on it.
fn decode(row: &PgRow) -> Result<Decoded, sqlx::Error> {
    let id: Uuid = row.try_get("id")?;
    let attempts: i32 = row.try_get("attempts")?;
    Ok(Decoded::new(id, attempts, read(row, id, attempts, None)))
}

impl Failures {
    pub(crate) fn new(schema: &str, table: &str, on_dead_letter: OnDeadLetter) -> Self {
        Self {
            table: format!("\"{schema}\".\"{table}\""),
            park: on_dead_letter == OnDeadLetter::Park,
        }
    }

    /// The table, as SQL for `migrate` and `schema_sql`.
    pub(crate) fn schema_sql(schema: &str, table: &str) -> String {
        format!(
            "CREATE SCHEMA IF NOT EXISTS \"{schema}\";\n\
             CREATE TABLE IF NOT EXISTS \"{schema}\".\"{table}\" (\n    \
                 seq             bigserial PRIMARY KEY,\n    \
                 id              uuid NOT NULL UNIQUE,\n    \
                 ordering_key    text NOT NULL,\n    \
                 destination     text NOT NULL,\n    \
                 partition_key   text,\n    \
                 payload         bytea NOT NULL,\n    \
                 headers         jsonb NOT NULL DEFAULT '{{}}',\n    \
                 event_type      text,\n    \
                 created_at      timestamptz NOT NULL,\n    \
                 attempts        integer NOT NULL DEFAULT 0,\n    \
                 next_attempt_at timestamptz NOT NULL DEFAULT now(),\n    \
                 last_error      text,\n    \
                 dead            boolean NOT NULL DEFAULT false,\n    \
                 dead_at         timestamptz\n\
             );\n\
             CREATE INDEX IF NOT EXISTS \"{table}_key\" ON \"{schema}\".\"{table}\" (ordering_key, seq);\n"
        )
    }

    /// Writes `parked` in this order; a message already there (read again
    /// after a restart) is left as it is.
    pub(crate) async fn insert(&self, pool: &PgPool, parked: &[Parked<'_>]) -> Result<(), Error> {
        if parked.is_empty() {
            return Ok(());
        }
        let column = |f: fn(&Parked) -> Option<String>| parked.iter().map(f).collect::<Vec<_>>();
        sqlx::query(&format!(
            "INSERT INTO {} (id, ordering_key, destination, partition_key, payload, headers, \
                 event_type, created_at, attempts, next_attempt_at, last_error, dead, dead_at) \
             SELECT id, k, d, p, b, h::jsonb, e, c, a, now() + make_interval(secs => w / 1000.0), \
                 l, x, CASE WHEN x THEN now() END \
             FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::bytea[], $6::text[], \
                 $7::text[], $8::timestamptz[], $9::int[], $10::float8[], $11::text[], $12::bool[]) \
                 WITH ORDINALITY AS t(id, k, d, p, b, h, e, c, a, w, l, x, n) \
             ORDER BY n \
             ON CONFLICT (id) DO NOTHING",
            self.table
        ))
        .bind(parked.iter().map(|p| p.message.id).collect::<Vec<_>>())
        .bind(column(|p| Some(p.message.ordering_key.clone())))
        .bind(column(|p| Some(p.message.destination.clone())))
        .bind(column(|p| p.message.partition_key.clone()))
        .bind(parked.iter().map(|p| p.message.payload.clone()).collect::<Vec<_>>())
        .bind(column(|p| Some(headers_json(p.message))))
        .bind(column(|p| p.message.event_type.clone()))
        .bind(parked.iter().map(|p| p.message.created_at).collect::<Vec<_>>())
        .bind(parked.iter().map(|p| p.attempts as i32).collect::<Vec<_>>())
        .bind(
            parked
                .iter()
                .map(|p| p.retry_after.as_secs_f64() * 1000.0)
                .collect::<Vec<_>>(),
        )
        .bind(column(|p| p.error.map(str::to_string)))
        .bind(parked.iter().map(|p| p.dead).collect::<Vec<_>>())
        .execute(pool)
        .await
        .map_err(classify)?;
        Ok(())
    }

    /// The keys whose new messages must go to the table: those with a
    /// message waiting there (and, when dead letters park their keys, with
    /// a dead letter).
    pub(crate) async fn parked_keys(&self, pool: &PgPool) -> Result<HashSet<String>, Error> {
        let rows = sqlx::query(&format!(
            "SELECT DISTINCT ordering_key FROM {} WHERE NOT dead OR $1",
            self.table
        ))
        .bind(self.park)
        .fetch_all(pool)
        .await
        .map_err(classify)?;
        rows.iter()
            .map(|row| row.try_get("ordering_key").map_err(classify))
            .collect()
    }

    /// Up to `limit` messages due now, per key a prefix of its waiting
    /// ones (a key's messages wait behind its head's retry time and, when
    /// dead letters park their keys, behind a dead letter), in table order.
    /// Rows that cannot be read come back malformed, with the reason.
    pub(crate) async fn due(&self, pool: &PgPool, limit: usize) -> Result<Vec<Decoded>, Error> {
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM ( \
                 SELECT f.*, bool_and(NOT dead AND next_attempt_at <= now()) \
                     OVER (PARTITION BY ordering_key ORDER BY seq) AS ready \
                 FROM {} f WHERE $1 OR NOT dead \
             ) t WHERE ready ORDER BY seq LIMIT $2",
            self.table
        ))
        .bind(self.park)
        .bind(limit as i64)
        .fetch_all(pool)
        .await
        .map_err(classify)?;
        rows.iter()
            .map(|row| decode(row).map_err(classify))
            .collect()
    }

    /// Removes delivered messages.
    pub(crate) async fn delete(&self, pool: &PgPool, ids: &[Uuid]) -> Result<(), Error> {
        sqlx::query(&format!("DELETE FROM {} WHERE id = ANY($1)", self.table))
            .bind(ids)
            .execute(pool)
            .await
            .map_err(classify)?;
        Ok(())
    }

    /// Records a failed attempt of messages already in the table: retried
    /// after `retry_after`, or dead.
    pub(crate) async fn fail(
        &self,
        pool: &PgPool,
        failed: &[(Uuid, u32, Duration, &str)],
        dead: bool,
    ) -> Result<(), Error> {
        sqlx::query(&format!(
            "UPDATE {} f SET attempts = t.a, last_error = t.l, \
                 next_attempt_at = now() + make_interval(secs => t.w / 1000.0), \
                 dead = $5, dead_at = CASE WHEN $5 THEN now() END \
             FROM unnest($1::uuid[], $2::int[], $3::float8[], $4::text[]) AS t(id, a, w, l) \
             WHERE f.id = t.id",
            self.table
        ))
        .bind(failed.iter().map(|f| f.0).collect::<Vec<_>>())
        .bind(failed.iter().map(|f| f.1 as i32).collect::<Vec<_>>())
        .bind(
            failed
                .iter()
                .map(|f| f.2.as_secs_f64() * 1000.0)
                .collect::<Vec<_>>(),
        )
        .bind(failed.iter().map(|f| f.3.to_string()).collect::<Vec<_>>())
        .bind(dead)
        .execute(pool)
        .await
        .map_err(classify)?;
        Ok(())
    }

    /// Messages waiting in the table (not dead) and the oldest's commit time.
    pub(crate) async fn waiting(
        &self,
        pool: &PgPool,
    ) -> Result<(u64, Option<DateTime<Utc>>), Error> {
        let row = sqlx::query(&format!(
            "SELECT count(*) AS n, min(created_at) AS oldest FROM {} WHERE NOT dead",
            self.table
        ))
        .fetch_one(pool)
        .await
        .map_err(classify)?;
        let n: i64 = row.try_get("n").map_err(classify)?;
        Ok((n as u64, row.try_get("oldest").map_err(classify)?))
    }

    /// How many dead letters there are.
    pub(crate) async fn count_dead(&self, pool: &PgPool) -> Result<u64, Error> {
        let n: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM {} WHERE dead", self.table))
            .fetch_one(pool)
            .await
            .map_err(classify)?;
        Ok(n as u64)
    }

    /// Up to `limit` dead letters, oldest first.
    pub(crate) async fn dead_letters(
        &self,
        pool: &PgPool,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, Error> {
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS}, coalesce(last_error, '') AS last_error, \
                 coalesce(dead_at, now()) AS dead_at \
             FROM {} WHERE dead ORDER BY seq LIMIT $1",
            self.table
        ))
        .bind(limit as i64)
        .fetch_all(pool)
        .await
        .map_err(classify)?;
        rows.iter()
            .map(|row| {
                let (id, attempts, message) = listed(row)?;
                Ok(DeadLetter {
                    id,
                    attempts,
                    message,
                    error: row.try_get("last_error").map_err(classify)?,
                    dead_at: row.try_get("dead_at").map_err(classify)?,
                })
            })
            .collect()
    }

    /// Up to `limit` waiting messages (not dead), oldest first, with their
    /// last error and next attempt.
    pub(crate) async fn waiting_rows(
        &self,
        pool: &PgPool,
        limit: usize,
    ) -> Result<Vec<Waiting>, Error> {
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS}, last_error, next_attempt_at FROM {} WHERE NOT dead \
             ORDER BY seq LIMIT $1",
            self.table
        ))
        .bind(limit as i64)
        .fetch_all(pool)
        .await
        .map_err(classify)?;
        rows.iter()
            .map(|row| {
                let (id, attempts, message) = listed(row)?;
                Ok(Waiting {
                    id,
                    attempts,
                    message,
                    last_error: row.try_get("last_error").map_err(classify)?,
                    next_attempt_at: row.try_get("next_attempt_at").map_err(classify)?,
                })
            })
            .collect()
    }

    /// Puts dead letters back in line, attempts reset (all of them when
    /// `ids` is `None`); returns how many.
    pub(crate) async fn requeue(&self, pool: &PgPool, ids: Option<&[Uuid]>) -> Result<u64, Error> {
        let done = sqlx::query(&format!(
            "UPDATE {} SET dead = false, dead_at = NULL, attempts = 0, next_attempt_at = now() \
             WHERE dead AND ($1::uuid[] IS NULL OR id = ANY($1))",
            self.table
        ))
        .bind(ids)
        .execute(pool)
        .await
        .map_err(classify)?;
        Ok(done.rows_affected())
    }
}
