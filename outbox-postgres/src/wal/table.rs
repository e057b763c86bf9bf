//! The WAL outbox's table mode: writers insert rows into an outbox table
//! (any writer that can insert a row: this crate's, an ORM, another
//! language), and the relay reads the inserts from the log instead of
//! claiming them. The relay deletes the rows it read before it may confirm
//! their transaction, so the table stays near empty, and a relay that
//! stops between the two reads the inserts again from the log.
//!
//! The table needs the columns `id` (uuid), `ordering_key`, `destination`
//! (text), `payload` (bytea) and may have `partition_key`, `event_type`
//! (text), `headers` (jsonb or json, an object of strings) and `created_at`
//! (timestamptz); other columns are left alone. The table-based outbox's
//! table has them all, so its writers can stay as they are while the relay
//! moves to the log.
//!
//! The log carries each inserted row in pgoutput's binary format (the
//! relay asks for `binary 'true'`): a `Relation` record describes the
//! table's columns before its first row, an `Insert` record carries a row.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use outbox_core::{Error, Message};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use super::envelope::Malformed;
use crate::error::classify;

/// Type OIDs the row's columns may have.
const BYTEA: u32 = 17;
const TEXT: u32 = 25;
const JSON: u32 = 114;
const BPCHAR: u32 = 1042;
const VARCHAR: u32 = 1043;
const TIMESTAMP: u32 = 1114;
const TIMESTAMPTZ: u32 = 1184;
const UUID: u32 = 2950;
const JSONB: u32 = 3802;

/// The outbox table of the table mode, by its validated names.
#[derive(Debug, Clone)]
pub(crate) struct OutboxTable {
    schema: String,
    table: String,
    qualified: String,
}

impl OutboxTable {
    pub(crate) fn new(schema: &str, table: &str) -> Self {
        Self {
            schema: schema.to_string(),
            table: table.to_string(),
            qualified: format!("\"{schema}\".\"{table}\""),
        }
    }

    /// The table, if it does not exist (a table that exists, the
    /// table-based outbox's say, is used as it is), and the publication
    /// that carries its inserts, and only them: the relay's own deletes
    /// stay out of the stream.
    pub(crate) fn schema_sql(&self, publication: &str) -> String {
        let Self {
            schema,
            table,
            qualified,
        } = self;
        format!(
            "CREATE TABLE IF NOT EXISTS {qualified} (\n    \
                 id            UUID PRIMARY KEY,\n    \
                 ordering_key  TEXT NOT NULL,\n    \
                 destination   TEXT NOT NULL,\n    \
                 partition_key TEXT,\n    \
                 payload       BYTEA NOT NULL,\n    \
                 headers       JSONB NOT NULL DEFAULT '{{}}'::jsonb,\n    \
                 event_type    TEXT,\n    \
                 created_at    TIMESTAMPTZ NOT NULL DEFAULT now()\n\
             );\n\
             DO $$ BEGIN\n    \
                 IF NOT EXISTS (SELECT FROM pg_publication WHERE pubname = '{publication}') THEN\n        \
                     CREATE PUBLICATION \"{publication}\" FOR TABLE {qualified} WITH (publish = 'insert');\n    \
                 ELSIF NOT EXISTS (SELECT FROM pg_publication_tables WHERE pubname = '{publication}'\n            \
                         AND schemaname = '{schema}' AND tablename = '{table}') THEN\n        \
                     ALTER PUBLICATION \"{publication}\" ADD TABLE {qualified};\n        \
                     ALTER PUBLICATION \"{publication}\" SET (publish = 'insert');\n    \
                 END IF;\n\
             END $$;\n"
        )
    }

    /// Inserts `messages` (validated) in this order on `conn`.
    pub(crate) async fn insert(
        &self,
        conn: &mut PgConnection,
        messages: &[Message],
    ) -> Result<(), Error> {
        let t = &self.qualified;
        let columns =
            "id, ordering_key, destination, partition_key, payload, headers, event_type, \
                       created_at";
        let headers = |m: &Message| serde_json::to_string(&m.headers).expect("strings serialize");
        if let [m] = messages {
            sqlx::query(&format!(
                "INSERT INTO {t} ({columns}) \
                 VALUES ($1, $2, $3, $4, $5, $6::jsonb, $7, $8)"
            ))
            .bind(m.id)
            .bind(&m.ordering_key)
            .bind(&m.destination)
            .bind(&m.partition_key)
            .bind(&m.payload)
            .bind(headers(m))
            .bind(&m.event_type)
            .bind(m.created_at)
            .execute(conn)
            .await
            .map_err(classify)?;
            return Ok(());
        }
        sqlx::query(&format!(
            "INSERT INTO {t} ({columns}) \
             SELECT u.id, u.k, u.d, u.pk, u.p, u.h::jsonb, u.et, u.ca \
             FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::bytea[], $6::text[], \
                         $7::text[], $8::timestamptz[]) \
                  WITH ORDINALITY AS u(id, k, d, pk, p, h, et, ca, ord) \
             ORDER BY u.ord"
        ))
        .bind(column(messages, |m| m.id))
        .bind(column(messages, |m| m.ordering_key.clone()))
        .bind(column(messages, |m| m.destination.clone()))
        .bind(column(messages, |m| m.partition_key.clone()))
        .bind(column(messages, |m| m.payload.clone()))
        .bind(column(messages, headers))
        .bind(column(messages, |m| m.event_type.clone()))
        .bind(column(messages, |m| m.created_at))
        .execute(conn)
        .await
        .map_err(classify)?;
        Ok(())
    }

    /// Warns when the table holds rows as the slot `slot` is created: rows
    /// committed before are not in the log the slot reads, so the WAL
    /// relay never sees them (a table-based outbox moving to the log).
    pub(crate) async fn warn_of_rows_before(
        &self,
        conn: &mut PgConnection,
        slot: &str,
    ) -> Result<(), Error> {
        let rows: i64 = sqlx::query_scalar(&format!(
            "SELECT count(*) FROM (SELECT FROM {} LIMIT 1000000) AS r",
            self.qualified
        ))
        .fetch_one(conn)
        .await
        .map_err(classify)?;
        if rows > 0 {
            let at_least = if rows == 1_000_000 { "at least " } else { "" };
            tracing::warn!(
                slot,
                table = %self.qualified,
                "the slot was created while the table holds {at_least}{rows} rows: rows \
                 committed before the slot existed are not in the log it reads, and the WAL \
                 relay will not deliver them. Deliver them with the table-based relay first \
                 (kind = \"postgres\", `outbox-relay drain`), then start the WAL relay; rows \
                 committed since the slot was created are in the log (those the table-based \
                 relay also delivers arrive twice)"
            );
        }
        Ok(())
    }

    /// Deletes the rows `ids`, read from the log; says how many were there.
    pub(crate) async fn delete(&self, pool: &PgPool, ids: &[Uuid]) -> Result<u64, sqlx::Error> {
        if ids.is_empty() {
            return Ok(0);
        }
        sqlx::query(&format!(
            "DELETE FROM {} WHERE id = ANY($1)",
            self.qualified
        ))
        .bind(ids)
        .execute(pool)
        .await
        .map(|done| done.rows_affected())
    }

    /// Whether the transactions `xids` (32-bit, as the log names them),
    /// read from the log as committed, are visible to a new snapshot. Each
    /// is widened to its 64-bit id against the snapshot's next id: it is
    /// recent, the slot holding back how old an id it can read.
    pub(crate) async fn visible(&self, pool: &PgPool, xids: &[u32]) -> Result<bool, sqlx::Error> {
        let xids: Vec<i64> = xids.iter().map(|&xid| i64::from(xid)).collect();
        sqlx::query_scalar(
            "SELECT coalesce(bool_and(pg_visible_in_snapshot( \
                 (next - ((next - xid) & 4294967295))::text::xid8, snapshot)), true) \
             FROM (SELECT pg_current_snapshot() AS snapshot) AS now, \
                  LATERAL (SELECT pg_snapshot_xmax(snapshot)::text::bigint AS next) AS upper, \
                  unnest($1::bigint[]) AS xid",
        )
        .bind(xids)
        .fetch_one(pool)
        .await
    }

    /// Whether a `Relation` record names this table.
    pub(crate) fn is(&self, relation: &Relation) -> bool {
        relation.schema == self.schema && relation.table == self.table
    }
}

/// A table's columns as a `Relation` record describes them.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Relation {
    pub(crate) oid: u32,
    pub(crate) schema: String,
    pub(crate) table: String,
    /// Each column's name and type OID, in the table's order.
    pub(crate) columns: Vec<(String, u32)>,
}

/// One pgoutput record other than a transaction's bounds and messages.
#[derive(Debug, PartialEq)]
pub(crate) enum Change<'a> {
    Relation(Relation),
    /// An inserted row: its relation and each column's value (binary
    /// format), `None` for NULL.
    Insert {
        oid: u32,
        values: Vec<Option<&'a [u8]>>,
    },
    /// Anything else (updates, deletes, types, origins, truncates).
    Other,
}

/// Parses one pgoutput record (protocol version 1).
pub(crate) fn parse(data: &[u8]) -> Result<Change<'_>, String> {
    let mut r = Cursor(data);
    match r.u8()? {
        b'R' => {
            let oid = r.u32()?;
            let schema = r.cstr()?;
            let table = r.cstr()?;
            let _identity = r.u8()?;
            let count = r.u16()?;
            let mut columns = Vec::with_capacity(count as usize);
            for _ in 0..count {
                let _flags = r.u8()?;
                let name = r.cstr()?;
                let kind = r.u32()?;
                let _modifier = r.u32()?;
                columns.push((name, kind));
            }
            Ok(Change::Relation(Relation {
                oid,
                schema,
                table,
                columns,
            }))
        }
        b'I' => {
            let oid = r.u32()?;
            if r.u8()? != b'N' {
                return Err("an Insert record without its new tuple".into());
            }
            let count = r.u16()?;
            let mut values = Vec::with_capacity(count as usize);
            for _ in 0..count {
                values.push(match r.u8()? {
                    b'n' | b'u' => None,
                    b't' | b'b' => {
                        let len = r.u32()? as usize;
                        Some(r.take(len)?)
                    }
                    other => return Err(format!("an unknown column kind {other:#04x}")),
                });
            }
            Ok(Change::Insert { oid, values })
        }
        _ => Ok(Change::Other),
    }
}

/// The row `values` of `relation` as a message, or why it is not one (a
/// dead letter, named by the row's id when that could be read).
pub(crate) fn message(
    relation: &Relation,
    values: &[Option<&[u8]>],
    committed_at: DateTime<Utc>,
) -> Result<Message, Malformed> {
    let column = |name: &str| -> Option<(u32, Option<&[u8]>)> {
        let at = relation.columns.iter().position(|(n, _)| n == name)?;
        Some((relation.columns[at].1, values.get(at).copied().flatten()))
    };
    let id = column("id").and_then(|(kind, value)| match (kind, value) {
        (UUID, Some(bytes)) => Uuid::from_slice(bytes).ok(),
        _ => None,
    });
    let key = column("ordering_key").and_then(|(kind, value)| text(kind, value).ok().flatten());
    let bad = |reason: String| Malformed {
        id,
        key: key.clone(),
        reason: format!("malformed row: {reason}"),
    };
    let required = |name: &str| -> Result<String, Malformed> {
        let (kind, value) = column(name).ok_or_else(|| bad(format!("the table has no {name}")))?;
        text(kind, value)
            .map_err(|why| bad(format!("{name} {why}")))?
            .ok_or_else(|| bad(format!("{name} is NULL")))
    };
    let optional = |name: &str| -> Result<Option<String>, Malformed> {
        match column(name) {
            None => Ok(None),
            Some((kind, value)) => text(kind, value).map_err(|why| bad(format!("{name} {why}"))),
        }
    };
    let Some(id) = id else {
        return Err(bad("id is missing, NULL or not a uuid".into()));
    };
    let ordering_key = required("ordering_key")?;
    let destination = required("destination")?;
    let payload = match column("payload") {
        Some((BYTEA, Some(bytes))) => bytes.to_vec(),
        Some((BYTEA, None)) => return Err(bad("payload is NULL".into())),
        Some((kind, _)) => return Err(bad(format!("payload has type OID {kind}, not bytea"))),
        None => return Err(bad("the table has no payload".into())),
    };
    let headers = match column("headers") {
        None | Some((_, None)) => BTreeMap::new(),
        Some((JSONB, Some([1, json @ ..]))) | Some((JSON, Some(json))) => {
            let json = std::str::from_utf8(json).map_err(|_| bad("headers not UTF-8".into()))?;
            outbox_sql::headers_from_text(json).map_err(|why| Malformed {
                id: Some(id),
                key: Some(ordering_key.clone()),
                reason: why,
            })?
        }
        Some((kind, _)) => return Err(bad(format!("headers has type OID {kind}, not jsonb"))),
    };
    let created_at = match column("created_at") {
        None | Some((_, None)) => committed_at,
        Some((TIMESTAMPTZ | TIMESTAMP, Some(bytes))) => {
            let micros = i64::from_be_bytes(
                bytes
                    .try_into()
                    .map_err(|_| bad("created_at is not 8 bytes".into()))?,
            );
            postgres_time(micros)
        }
        Some((kind, _)) => {
            return Err(bad(format!(
                "created_at has type OID {kind}, not timestamptz"
            )))
        }
    };
    Ok(Message {
        id,
        ordering_key,
        destination,
        partition_key: optional("partition_key")?,
        payload,
        headers,
        event_type: optional("event_type")?,
        created_at,
        attempts: 0,
    })
}

/// One field of every message, as an array to bind.
fn column<T>(messages: &[Message], field: impl Fn(&Message) -> T) -> Vec<T> {
    messages.iter().map(field).collect()
}

/// The row's payload bytes as far as they can be read, kept with a row
/// that is not a message.
pub(crate) fn payload(relation: &Relation, values: &[Option<&[u8]>]) -> Vec<u8> {
    let at = relation.columns.iter().position(|(n, _)| n == "payload");
    at.and_then(|at| values.get(at).copied().flatten())
        .unwrap_or_default()
        .to_vec()
}

/// A text column's value; an error names a type the mode cannot read.
fn text(kind: u32, value: Option<&[u8]>) -> Result<Option<String>, String> {
    if !matches!(kind, TEXT | VARCHAR | BPCHAR) {
        return Err(format!("has type OID {kind}, not text"));
    }
    value
        .map(|bytes| String::from_utf8(bytes.to_vec()).map_err(|_| "is not UTF-8".to_string()))
        .transpose()
}

/// PostgreSQL's microseconds since 2000-01-01 as a time.
pub(crate) fn postgres_time(micros: i64) -> DateTime<Utc> {
    const EPOCH_2000: i64 = 946_684_800;
    DateTime::from_timestamp_micros(EPOCH_2000 * 1_000_000 + micros).unwrap_or_else(Utc::now)
}

/// Reads a pgoutput record front to back.
struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take(&mut self, len: usize) -> Result<&'a [u8], String> {
        if self.0.len() < len {
            return Err("a pgoutput record cut short".into());
        }
        let (head, rest) = self.0.split_at(len);
        self.0 = rest;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, String> {
        Ok(u16::from_be_bytes(
            self.take(2)?.try_into().expect("2 bytes"),
        ))
    }

    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_be_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }

    fn cstr(&mut self) -> Result<String, String> {
        let end = self
            .0
            .iter()
            .position(|b| *b == 0)
            .ok_or("a pgoutput name without its end")?;
        let name = String::from_utf8_lossy(&self.0[..end]).into_owned();
        self.0 = &self.0[end + 1..];
        Ok(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn relation() -> Relation {
        Relation {
            oid: 16_400,
            schema: "public".into(),
            table: "outbox_messages".into(),
            columns: vec![
                ("seq".into(), 20),
                ("id".into(), UUID),
                ("ordering_key".into(), TEXT),
                ("destination".into(), TEXT),
                ("payload".into(), BYTEA),
                ("headers".into(), JSONB),
                ("created_at".into(), TIMESTAMPTZ),
            ],
        }
    }

    /// The records as pgoutput writes them, built by hand.
    fn relation_record(relation: &Relation) -> Vec<u8> {
        let mut out = vec![b'R'];
        out.extend(relation.oid.to_be_bytes());
        for name in [&relation.schema, &relation.table] {
            out.extend(name.as_bytes());
            out.push(0);
        }
        out.push(b'd');
        out.extend((relation.columns.len() as u16).to_be_bytes());
        for (name, kind) in &relation.columns {
            out.push(0);
            out.extend(name.as_bytes());
            out.push(0);
            out.extend(kind.to_be_bytes());
            out.extend((-1i32).to_be_bytes());
        }
        out
    }

    fn insert_record(oid: u32, values: &[Option<&[u8]>]) -> Vec<u8> {
        let mut out = vec![b'I'];
        out.extend(oid.to_be_bytes());
        out.push(b'N');
        out.extend((values.len() as u16).to_be_bytes());
        for value in values {
            match value {
                None => out.push(b'n'),
                Some(bytes) => {
                    out.push(b'b');
                    out.extend((bytes.len() as u32).to_be_bytes());
                    out.extend(*bytes);
                }
            }
        }
        out
    }

    #[test]
    fn a_row_read_from_its_records_is_the_message() {
        let relation = relation();
        let record = relation_record(&relation);
        assert_eq!(parse(&record).unwrap(), Change::Relation(relation.clone()));
        let id = Uuid::now_v7();
        let headers = b"\x01{\"trace\": \"abc\"}";
        // 2000-01-01 plus one day, in microseconds.
        let created = 86_400_000_000i64.to_be_bytes();
        let values: Vec<Option<&[u8]>> = vec![
            Some(b"\0\0\0\0\0\0\0\x07"),
            Some(id.as_bytes()),
            Some(b"order-42"),
            Some(b"orders"),
            Some(b"{\"total\": 12}"),
            Some(headers),
            Some(&created),
        ];
        let record = insert_record(relation.oid, &values);
        let Change::Insert { oid, values } = parse(&record).unwrap() else {
            panic!("not an insert");
        };
        assert_eq!(oid, relation.oid);
        let message = message(&relation, &values, Utc::now()).unwrap();
        assert_eq!(message.id, id);
        assert_eq!(message.ordering_key, "order-42");
        assert_eq!(message.destination, "orders");
        assert_eq!(message.payload, b"{\"total\": 12}");
        assert_eq!(
            message.headers.get("trace").map(String::as_str),
            Some("abc")
        );
        assert_eq!(message.created_at.to_rfc3339(), "2000-01-02T00:00:00+00:00");
    }

    #[test]
    fn a_row_that_is_not_a_message_says_why_and_keeps_its_id() {
        let relation = relation();
        let id = Uuid::now_v7();
        let values: Vec<Option<&[u8]>> = vec![
            None,
            Some(id.as_bytes()),
            Some(b"order-42"),
            None,
            Some(b"{}"),
            None,
            None,
        ];
        let why = message(&relation, &values, Utc::now()).unwrap_err();
        assert_eq!(why.id, Some(id));
        assert_eq!(why.key.as_deref(), Some("order-42"));
        assert_eq!(why.reason, "malformed row: destination is NULL");
        let cut = &insert_record(relation.oid, &values)[..12];
        assert!(parse(cut).unwrap_err().contains("cut short"));
    }
}
