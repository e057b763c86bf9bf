//! Whether the database takes a writer's key lock itself: migration
//! `0005_key_lock_trigger.sql` adds a trigger that writes (or locks) the
//! key's row in `<table>_keys` on every insert. Where it is there, a writer
//! of one key sends its insert alone; where it is not (a schema migrated
//! by an earlier version, or a server that refused the trigger), the
//! writer locks the key first, as it always did. Asked once per outbox,
//! on the writer's own connection.

use std::sync::atomic::{AtomicU8, Ordering};

use sqlx::MySqlConnection;

const UNKNOWN: u8 = 0;
const PRESENT: u8 = 1;
const ABSENT: u8 = 2;

/// The trigger's name for a table: the table's name and `_keylock`.
pub(crate) fn trigger_name(table: &str) -> String {
    format!("{table}_keylock")
}

/// What this outbox found out about the trigger.
#[derive(Debug, Default)]
pub(crate) struct KeyLockTrigger {
    state: AtomicU8,
}

impl KeyLockTrigger {
    /// Whether `trigger` exists in the connection's database. A failed
    /// look-up answers no (the writer then locks the key itself) and is
    /// asked again next time.
    pub async fn present(&self, conn: &mut MySqlConnection, trigger: &str) -> bool {
        match self.state.load(Ordering::Relaxed) {
            PRESENT => return true,
            ABSENT => return false,
            _ => {}
        }
        let found: Result<i64, _> = sqlx::query_scalar(
            "SELECT COUNT(*) FROM information_schema.TRIGGERS \
             WHERE TRIGGER_SCHEMA = DATABASE() AND TRIGGER_NAME = ?",
        )
        .bind(trigger)
        .fetch_one(conn)
        .await;
        match found {
            Ok(count) => {
                let state = if count > 0 { PRESENT } else { ABSENT };
                if state == ABSENT {
                    tracing::warn!(
                        trigger,
                        "no key-lock trigger on the outbox table (migration \
                         0005_key_lock_trigger.sql), or this user lacks the TRIGGER \
                         privilege that shows it: writers lock their keys \
                         themselves, one statement more per call"
                    );
                }
                let _ = self.state.compare_exchange(
                    UNKNOWN,
                    state,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                );
                state == PRESENT
            }
            Err(err) => {
                tracing::debug!(error = %err, "could not look for the key-lock trigger");
                false
            }
        }
    }
}
