//! The reader that holds the replication slot and reads the log, on a
//! thread of its own: a relay whose slot another relay holds stands by and
//! tries again.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use outbox_core::Message;
use pgwire_replication::{
    FeedbackObserver, Lsn, ReplicationClient, ReplicationConfig, ReplicationEvent,
};
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::envelope::{decode, Malformed};
use super::failures::{Failures, Parked};
use super::pending::stamped;
use super::shared::{Shared, State, Status};
use super::sweep::Sweeper;
use super::table::{self, postgres_time, Change, Relation};
use super::WalConfig;

/// How often the reader ticks: feeds the confirmed position back and
/// proves the process is running. With the status interval below, a
/// checkpoint (the end of a drain) waits about a tenth of a second.
const TICK: Duration = Duration::from_millis(25);

/// How often the confirmed position may be reported to the server: a
/// standby status update is a few dozen bytes.
const STATUS_INTERVAL: Duration = Duration::from_millis(50);

/// The reader of one relay.
pub(crate) struct Reader {
    pub(crate) config: Arc<WalConfig>,
    pub(crate) pool: PgPool,
    pub(crate) failures: Arc<Failures>,
    pub(crate) shared: Arc<Shared>,
    /// In the table mode, the deleter of the rows read (and the table,
    /// whose inserts are read too).
    pub(crate) sweeper: Option<Arc<Sweeper>>,
}

/// A transaction being read: its commit time, what it holds, and the ids
/// of its rows in the table mode's table.
struct Open {
    /// The transaction's (top-level) id.
    xid: u32,
    committed_at: DateTime<Utc>,
    reads: Vec<Read>,
    rows: Vec<Uuid>,
}

/// The reader's pool: one connection, opened when first needed, with the
/// settings (server, credentials, TLS) of the pool the outbox was given.
fn own_pool(given: &PgPool) -> PgPool {
    PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(given.options().get_acquire_timeout())
        .connect_lazy_with((*given.connect_options()).clone())
}

/// What one replication connection has read so far.
struct Session {
    open: Option<Open>,
    /// The table mode's table as its last `Relation` record described it.
    relation: Option<Relation>,
    /// The content of this connection's catch-up marker.
    marker: String,
}

/// One message as read: its log position and the message (its sequence
/// header stamped when it leaves memory, see [`Pending`](super::pending)),
/// or the reason it cannot be one.
type Read = Result<(u64, Message), (Uuid, String, Vec<u8>, String)>;

impl Reader {
    /// Starts reading on a thread of its own, with a single-threaded
    /// runtime and one database connection of its own (for the catch-up
    /// marker and the failures table), until `stop`.
    ///
    /// Why not a task of the caller's runtime: there the reader's decoding
    /// took turns with the relay's sends and their acknowledgements, and
    /// its ticks (the feedback that keeps the slot and the proof that the
    /// process runs) waited for whatever else the application's runtime
    /// was doing. On its own thread the WAL relay's drains to JetStream
    /// reached 0.70 - 0.86 of the adapter's ceiling against 0.48 - 0.68,
    /// builds alternated (BENCHMARKS.md, "What a WAL relay waits for").
    /// The connection is its own so that none of the caller's pool is
    /// tied to this runtime, which ends with the reader.
    pub(crate) fn start(mut self, stop: CancellationToken) {
        let shared = self.shared.clone();
        let slot = self.config.slot.clone();
        let spawned = std::thread::Builder::new()
            .name("outbox-wal-reader".into())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build();
                match runtime {
                    Ok(runtime) => runtime.block_on(async move {
                        self.pool = own_pool(&self.pool);
                        self.run(stop).await;
                    }),
                    Err(err) => {
                        let err = format!("cannot start the log reader's runtime: {err}");
                        tracing::error!(slot = %self.config.slot, "{err}");
                        self.shared.set(Status::Failed(err));
                    }
                }
            });
        if let Err(err) = spawned {
            let err = format!("cannot start the log reader's thread: {err}");
            tracing::error!(slot = %slot, "{err}");
            shared.set(Status::Failed(err));
        }
    }

    /// Reads until `stop`: connects, stands by while another relay holds
    /// the slot, and after any loss of the connection drops what it held
    /// and connects again.
    pub(crate) async fn run(self, stop: CancellationToken) {
        let mut failed_before = false;
        while !stop.is_cancelled() {
            let ended = self.session(&stop).await;
            {
                let mut state = self.shared.state.lock().await;
                state.reset(self.config.lease);
                self.shared.count_held(&state);
            }
            match ended {
                Ok(()) => return,
                // Another relay holding the slot is the normal state of a
                // standby, not worth a warning each time.
                Err(err) if err.contains("is active for PID") => {
                    tracing::debug!(slot = %self.config.slot, "standing by: {err}");
                    self.shared.set(Status::StandingBy);
                    failed_before = false;
                }
                Err(err) => {
                    let err = explained(err);
                    if !failed_before {
                        tracing::warn!(slot = %self.config.slot, "log reader: {err}");
                    }
                    self.shared.set(Status::Failed(err));
                    failed_before = true;
                }
            }
            let pause =
                (self.config.lease / 10).clamp(Duration::from_millis(100), Duration::from_secs(1));
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(pause) => {}
            }
        }
    }

    /// One replication connection, from its start to its end.
    async fn session(&self, stop: &CancellationToken) -> Result<(), String> {
        let endpoint = self.config.endpoint().map_err(|err| err.to_string())?;
        // The server ends a connection it has not heard from for a lease:
        // then a standby takes the slot over.
        let options = format!("-c wal_sender_timeout={}", self.config.lease.as_millis());
        let replication = ReplicationConfig::new(
            endpoint.host,
            endpoint.user,
            endpoint.password,
            endpoint.database,
            self.config.slot.clone(),
            self.config.publication.clone(),
        )
        .with_port(endpoint.port)
        .with_start_lsn(Lsn::ZERO)
        .with_status_interval(STATUS_INTERVAL)
        .with_wakeup_interval(Duration::from_secs(1))
        .with_options(options)
        .with_application_name(endpoint.application_name)
        .with_tls(endpoint.tls)
        // Rows in binary: a payload as its bytes, not hex text, and times
        // independent of the connection's DateStyle and TimeZone.
        .with_binary(self.sweeper.is_some())
        // With an observer the client says when every raise was reported.
        .with_feedback_observer(FeedbackObserver::new(|_| {}));
        let mut client = ReplicationClient::connect(replication)
            .await
            .map_err(|err| err.to_string())?;
        tokio::select! {
            () = stop.cancelled() => { client.stop(); return Ok(()) }
            started = client.wait_started() => started.map_err(|err| err.to_string())?,
        }
        // Keys waiting in the failures table keep their later messages there.
        let parked = self
            .failures
            .parked_keys(&self.pool)
            .await
            .map_err(|err| format!("reading the failures table: {err}"))?;
        {
            let mut state = self.shared.state.lock().await;
            state.parked = parked;
            state.parked_read_at = Some(Instant::now());
        }
        tracing::info!(slot = %self.config.slot, "reading the log");
        self.shared.tick();
        self.shared.set(Status::Reading { caught_up: false });
        // Commits are sent in log order, so once this marker comes back
        // everything committed before the reader took the slot was read.
        let mut session = Session {
            open: None,
            relation: None,
            marker: Uuid::now_v7().to_string(),
        };
        sqlx::query("SELECT pg_logical_emit_message(false, $1, $2)")
            .bind(self.marker_prefix())
            .bind(&session.marker)
            .execute(&self.pool)
            .await
            .map_err(|err| format!("emitting the catch-up marker: {err}"))?;
        let mut ticks = tokio::time::interval(TICK);
        let mut last_tick = Instant::now();
        loop {
            let full =
                self.shared.held.load(std::sync::atomic::Ordering::Relaxed) >= self.config.max_held;
            tokio::select! {
                () = stop.cancelled() => {
                    self.confirm_and_stop(&mut client).await;
                    return Ok(());
                }
                _ = ticks.tick() => {
                    // A tick far later than due: the process was stopped
                    // and the server may have handed the slot over.
                    if last_tick.elapsed() > self.config.lease / 2 {
                        client.abort();
                        return Err("the process was stopped past half a lease: reading again".into());
                    }
                    last_tick = Instant::now();
                    self.shared.tick();
                    let confirmable = self.shared.state.lock().await.confirmable();
                    client.update_applied_lsn(Lsn::from(confirmable));
                    if client.feedback_pending_since().is_none() {
                        self.shared.reported.send_if_modified(|reported| {
                            let raised = confirmable > *reported;
                            *reported = (*reported).max(confirmable);
                            raised
                        });
                    }
                }
                () = self.shared.room.notified(), if full => {}
                event = client.recv(), if !full => {
                    let event = event.map_err(|err| err.to_string())?;
                    let Some(event) = event else { return Ok(()) };
                    self.handle(event, &mut session).await?;
                }
            }
        }
    }

    /// A clean stop confirms what was settled, so the next reader sends
    /// nothing twice (see [`move_behind_settled`]); the last position is
    /// reported (waiting for the report, at most a second) before the
    /// stream ends.
    async fn confirm_and_stop(&self, client: &mut ReplicationClient) {
        if let Some(sweeper) = &self.sweeper {
            if let Err(err) = sweeper.all().await {
                tracing::warn!(slot = %self.config.slot, "deleting rows read from the log: {err}");
            }
        }
        let confirmable = {
            let mut state = self.shared.state.lock().await;
            move_behind_settled(&mut state, &self.failures, &self.pool, &self.config.slot).await;
            self.shared.count_held(&state);
            state.confirmable()
        };
        client.update_applied_lsn(Lsn::from(confirmable));
        let deadline = Instant::now() + Duration::from_secs(1);
        while client.feedback_pending_since().is_some() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let _ = client.shutdown().await;
    }

    /// The prefix of the reader's catch-up marker.
    fn marker_prefix(&self) -> String {
        format!("{}:caught-up", self.config.prefix)
    }

    async fn handle(&self, event: ReplicationEvent, session: &mut Session) -> Result<(), String> {
        let open = &mut session.open;
        match event {
            ReplicationEvent::Message {
                transactional: false,
                prefix,
                content,
                ..
            } if prefix == self.marker_prefix() && content == session.marker.as_bytes() => {
                self.shared.set(Status::Reading { caught_up: true });
            }
            ReplicationEvent::Begin {
                xid,
                commit_time_micros,
                ..
            } => {
                *open = Some(Open {
                    xid,
                    committed_at: postgres_time(commit_time_micros),
                    reads: Vec::new(),
                    rows: Vec::new(),
                })
            }
            ReplicationEvent::Message {
                transactional,
                lsn,
                prefix,
                content,
            } if prefix == self.config.prefix => {
                let lsn = lsn.as_u64();
                let Some(Open {
                    committed_at,
                    reads,
                    ..
                }) = open.as_mut().filter(|_| transactional)
                else {
                    let read = malformed(
                        lsn,
                        &content,
                        Malformed {
                            id: None,
                            key: None,
                            reason: "malformed envelope: emitted with transactional = false; the \
                                 outbox reads only pg_logical_emit_message(true, ...)"
                                .into(),
                        },
                    );
                    return self.commit(None, Utc::now(), vec![read]).await;
                };
                reads.push(match decode(&content, *committed_at) {
                    Ok(message) => match message.validate() {
                        Ok(()) => Ok((lsn, message)),
                        Err(err) => Err((
                            message.id,
                            message.ordering_key.clone(),
                            content.to_vec(),
                            format!("malformed envelope: {}", err.report()),
                        )),
                    },
                    Err(why) => malformed(lsn, &content, why),
                });
            }
            ReplicationEvent::XLogData {
                wal_start, data, ..
            } if self.sweeper.is_some() => {
                self.change(session, wal_start.as_u64(), &data)?;
            }
            ReplicationEvent::Commit { lsn, end_lsn, .. } => {
                let Open {
                    xid,
                    committed_at,
                    reads,
                    rows,
                } = open.take().unwrap_or_else(|| Open {
                    xid: 0,
                    committed_at: Utc::now(),
                    reads: Vec::new(),
                    rows: Vec::new(),
                });
                // The rows are deleted in the background, the slot held
                // below them until then (added before the transaction is
                // held, so no confirmation passes them meanwhile).
                if let Some(sweeper) = self.sweeper.as_ref().filter(|_| !rows.is_empty()) {
                    self.shared
                        .state
                        .lock()
                        .await
                        .sweep
                        .add(lsn.as_u64(), xid, rows);
                    sweeper.wake();
                }
                self.commit(Some(end_lsn.as_u64()), committed_at, reads)
                    .await?;
            }
            ReplicationEvent::KeepAlive { wal_end, .. } if open.is_none() => {
                self.shared
                    .state
                    .lock()
                    .await
                    .pending
                    .idle_at(wal_end.as_u64());
            }
            _ => {}
        }
        Ok(())
    }

    /// A record of the table mode: the table's columns, or a row of it
    /// (other tables' and other kinds of records are not the outbox's).
    fn change(&self, session: &mut Session, position: u64, data: &[u8]) -> Result<(), String> {
        let table = self.sweeper.as_ref().expect("the table mode").table();
        match table::parse(data).map_err(|why| format!("reading the log: {why}"))? {
            Change::Relation(relation) if table.is(&relation) => session.relation = Some(relation),
            Change::Insert { oid, values } => {
                let Some(relation) = session.relation.as_ref().filter(|r| r.oid == oid) else {
                    return Ok(());
                };
                let open = session
                    .open
                    .as_mut()
                    .ok_or("reading the log: a row outside a transaction")?;
                let read = match table::message(relation, &values, open.committed_at) {
                    Ok(message) => match message.validate() {
                        Ok(()) => Ok((position, message)),
                        Err(err) => Err((
                            message.id,
                            message.ordering_key.clone(),
                            message.payload.clone(),
                            format!("malformed row: {}", err.report()),
                        )),
                    },
                    Err(why) => malformed(position, &table::payload(relation, &values), why),
                };
                match &read {
                    Ok((_, message)) => open.rows.push(message.id),
                    Err((id, ..)) => open.rows.push(*id),
                }
                open.reads.push(read);
            }
            _ => {}
        }
        Ok(())
    }

    /// A transaction read to its end (or a lone message, `end` `None`):
    /// malformed messages and those of parked keys go to the failures
    /// table, the others are held for claims.
    async fn commit(
        &self,
        end: Option<u64>,
        committed_at: DateTime<Utc>,
        reads: Vec<Read>,
    ) -> Result<(), String> {
        let mut state = self.shared.state.lock().await;
        if end.is_some_and(|end| end <= state.pending.last_end()) {
            return Ok(()); // read again after a reconnection: held already
        }
        let mut held = Vec::new();
        let mut dead = Vec::new();
        let mut parked = Vec::new();
        for read in reads {
            match read {
                Ok((position, message)) if state.parked.contains(&message.ordering_key) => {
                    parked.push(stamped(message, position))
                }
                Ok(read) => held.push(read),
                Err((id, key, payload, reason)) => dead.push((
                    Message {
                        id,
                        ordering_key: key,
                        destination: String::new(),
                        partition_key: None,
                        payload,
                        headers: Default::default(),
                        event_type: None,
                        created_at: Utc::now(),
                        attempts: 0,
                    },
                    reason,
                )),
            }
        }
        let rows: Vec<Parked> = parked
            .iter()
            .map(Parked::waiting)
            .chain(dead.iter().map(|(message, reason)| Parked {
                message,
                attempts: 0,
                retry_after: Duration::ZERO,
                error: Some(reason),
                dead: true,
            }))
            .collect();
        self.failures
            .insert(&self.pool, &rows)
            .await
            .map_err(|err| format!("writing to the failures table: {err}"))?;
        if self.config.on_dead_letter == outbox_core::OnDeadLetter::Park {
            for (message, _) in &dead {
                state.parked.insert(message.ordering_key.clone());
            }
        }
        let any = !held.is_empty();
        if let Some(end) = end {
            state.pending.commit(end, committed_at, held);
        }
        self.shared.count_held(&state);
        drop(state);
        if any || !rows.is_empty() {
            self.shared.work.notify_one();
        }
        Ok(())
    }
}

/// Moves the unsettled messages that hold the slot's position back behind
/// settled ones to the failures table (their keys' later messages follow
/// them there when read), so the slot can be confirmed past everything
/// settled. Should the table refuse them, they stay held: the next reader
/// then sends some messages again, and at least once holds.
pub(crate) async fn move_behind_settled(
    state: &mut State,
    failures: &Failures,
    pool: &PgPool,
    slot: &str,
) {
    let behind = state.pending.behind_settled();
    let rows: Vec<Parked> = behind.iter().map(Parked::waiting).collect();
    match failures.insert(pool, &rows).await {
        Ok(()) => {
            state.pending.settle_taken(behind.iter().map(|m| m.id));
            state
                .parked
                .extend(behind.into_iter().map(|m| m.ordering_key));
        }
        Err(err) => tracing::warn!(slot, "keeping messages held: {err}"),
    }
}

/// A message that cannot be read, named by its id when its head gave one
/// and otherwise by an id made from its position (the same when read
/// again), keyed likewise.
fn malformed(lsn: u64, content: &[u8], why: Malformed) -> Read {
    let id = why.id.unwrap_or_else(|| {
        Uuid::new_v5(&Uuid::NAMESPACE_OID, format!("outbox-wal-{lsn}").as_bytes())
    });
    let key = why.key.unwrap_or_else(|| format!("malformed-{lsn}"));
    Err((id, key, content.to_vec(), why.reason))
}

/// A reader's error with what to do about it, where the server's words
/// alone do not say: a slot the server invalidated (`wal_status = lost`,
/// past `max_slot_wal_keep_size`) answers every reader with SQLSTATE 55000.
fn explained(err: String) -> String {
    if !err.contains("cannot read from logical replication slot") {
        return err;
    }
    format!(
        "{err}: the server invalidated the slot (pg_replication_slots.wal_status = 'lost'), \
         having removed log it still needed past max_slot_wal_keep_size; messages in that log \
         can no longer be read. Drop the slot (pg_drop_replication_slot) and run migrate to \
         read from now on"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_invalidated_slot_says_what_to_do() {
        // The words PostgreSQL 15 answered a reader of a lost slot with.
        let server = "server error: cannot read from logical replication slot \"orders\" \
                      (SQLSTATE 55000)";
        let said = explained(server.to_string());
        assert!(said.starts_with(server), "{said}");
        assert!(
            said.contains("max_slot_wal_keep_size") && said.contains("migrate"),
            "{said}"
        );
        assert_eq!(explained("connection refused".into()), "connection refused");
    }
}
