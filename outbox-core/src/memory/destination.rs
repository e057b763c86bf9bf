//! A [`Destination`] that keeps what it was sent and fails on request.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Notify;
use uuid::Uuid;

use crate::{Destination, Error, Message};

/// One accepted message and the attempt it arrived on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sent {
    /// The message as published.
    pub message: Message,
    /// 1 for the first attempt.
    pub attempt: u32,
}

#[derive(Debug, Clone)]
enum Fault {
    Temporary { remaining: u32 },
    Permanent { reason: Arc<str> },
    Panic,
}

#[derive(Debug, Default)]
struct State {
    sent: Vec<Sent>,
    distinct: HashSet<Uuid>,
    attempts: HashMap<Uuid, u32>,
    faults: HashMap<Uuid, Fault>,
    delays: HashMap<Uuid, Duration>,
    delay_all: Duration,
}

/// Records every message it accepts, in arrival order. Clones share the
/// record. Faults are set per message id.
#[derive(Debug, Clone, Default)]
pub struct MemoryDestination {
    state: Arc<Mutex<State>>,
    arrived: Arc<Notify>,
}

impl MemoryDestination {
    /// An empty destination that accepts everything.
    pub fn new() -> Self {
        Self::default()
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Fails the next `times` attempts of message `id` with a temporary error.
    pub fn fail_times(&self, id: Uuid, times: u32) {
        self.state()
            .faults
            .insert(id, Fault::Temporary { remaining: times });
    }

    /// Fails every attempt of `id` with a temporary error.
    pub fn fail_always(&self, id: Uuid) {
        self.fail_times(id, u32::MAX);
    }

    /// Fails `id` with a permanent error, as a broker refusing it would.
    pub fn fail_permanently(&self, id: Uuid) {
        self.fail_permanently_with(id, "injected permanent failure: message refused");
    }

    /// Fails `id` with a permanent error saying `reason`.
    pub fn fail_permanently_with(&self, id: Uuid, reason: impl Into<String>) {
        let reason: Arc<str> = reason.into().into();
        self.state().faults.insert(id, Fault::Permanent { reason });
    }

    /// Panics when asked to send `id`, as a buggy destination would.
    pub fn panic_on(&self, id: Uuid) {
        self.state().faults.insert(id, Fault::Panic);
    }

    /// Delays the acknowledgement of `id`.
    pub fn delay(&self, id: Uuid, delay: Duration) {
        self.state().delays.insert(id, delay);
    }

    /// Delays every acknowledgement.
    pub fn delay_all(&self, delay: Duration) {
        self.state().delay_all = delay;
    }

    /// Removes every fault and delay.
    pub fn heal(&self) {
        let mut state = self.state();
        state.faults.clear();
        state.delays.clear();
        state.delay_all = Duration::ZERO;
    }

    /// What was accepted, in arrival order.
    pub fn sent(&self) -> Vec<Sent> {
        self.state().sent.clone()
    }

    /// How many messages were accepted.
    pub fn sent_count(&self) -> usize {
        self.state().sent.len()
    }

    /// Attempts made at `id`, failed ones included.
    pub fn attempts(&self, id: Uuid) -> u32 {
        self.state().attempts.get(&id).copied().unwrap_or(0)
    }

    /// How many different messages were accepted (copies counted once).
    pub fn distinct_count(&self) -> usize {
        self.state().distinct.len()
    }

    /// Waits until at least `count` messages were accepted, copies included;
    /// false on timeout.
    pub async fn wait_for(&self, count: usize, timeout: Duration) -> bool {
        self.wait_until(timeout, || self.sent_count() >= count)
            .await
    }

    /// Waits until at least `count` different messages were accepted (a
    /// copy of one already here does not count); false on timeout.
    pub async fn wait_for_distinct(&self, count: usize, timeout: Duration) -> bool {
        self.wait_until(timeout, || self.distinct_count() >= count)
            .await
    }

    async fn wait_until(&self, timeout: Duration, done: impl Fn() -> bool) -> bool {
        let wait = async {
            loop {
                let arrived = self.arrived.notified();
                if done() {
                    return;
                }
                arrived.await;
            }
        };
        tokio::time::timeout(timeout, wait).await.is_ok()
    }
}

impl Destination for MemoryDestination {
    type Item = Message;

    async fn send(&self, message: &Message) -> Result<(), Error> {
        let (attempt, fault, delay) = {
            let mut state = self.state();
            let attempt = {
                let n = state.attempts.entry(message.id).or_insert(0);
                *n += 1;
                *n
            };
            let fault = match state.faults.get_mut(&message.id) {
                Some(Fault::Temporary { remaining }) if *remaining > 0 => {
                    *remaining = remaining.saturating_sub(1);
                    Some(Fault::Temporary { remaining: 0 })
                }
                Some(Fault::Temporary { .. }) | None => None,
                Some(other) => Some(other.clone()),
            };
            let delay = state
                .delays
                .get(&message.id)
                .copied()
                .unwrap_or(state.delay_all);
            (attempt, fault, delay)
        };
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        match fault {
            Some(Fault::Temporary { .. }) => {
                return Err(Error::temporary(format!(
                    "injected temporary failure (attempt {attempt})"
                )))
            }
            Some(Fault::Permanent { reason }) => return Err(Error::permanent(reason.to_string())),
            Some(Fault::Panic) => panic!("injected panic in destination"),
            None => {}
        }
        let mut state = self.state();
        state.distinct.insert(message.id);
        state.sent.push(Sent {
            message: message.clone(),
            attempt,
        });
        drop(state);
        self.arrived.notify_waiters();
        Ok(())
    }
}
