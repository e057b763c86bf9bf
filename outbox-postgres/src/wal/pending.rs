//! What the reading relay holds in memory: messages read from the log and
//! not yet settled, their leases, and the position the slot may confirm.
//!
//! A message is settled when the broker acknowledged it or when it was
//! written to the failures table (a retry or a dead letter, or any message
//! of a key that waits there). The slot is confirmed up to the end of the
//! last transaction such that it and every earlier one are settled, so a
//! crash re-reads, and re-delivers, only what was not settled.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use outbox_core::{ClaimId, Message, HEADER_SEQUENCE};
use uuid::Uuid;

/// A position in the write-ahead log.
pub(crate) type Lsn = u64;

/// A held message keeps no sequence header (a header map costs an
/// allocation of about half a kilobyte, more than the message): its log
/// position is stamped on the copy that leaves memory (see [`stamped`]).
struct Entry {
    message: Message,
    position: Lsn,
    txn: Lsn,
    lease: Option<(ClaimId, Instant)>,
}

struct Txn {
    end: Lsn,
    committed_at: DateTime<Utc>,
    open: usize,
    settled: usize,
}

impl Entry {
    fn stamped(&self) -> Message {
        stamped(self.message.clone(), self.position)
    }
}

/// `message` with its log position as its sequence header, which the
/// inbox's `apply_in_order` compares within a key.
pub(crate) fn stamped(mut message: Message, position: Lsn) -> Message {
    message
        .headers
        .insert(HEADER_SEQUENCE.to_string(), position.to_string());
    message
}

/// Slots the deque keeps room for when it shrinks: what the default
/// `max_held` (10,000) grows it to.
const KEPT_SLOTS: usize = 16_384;

/// The relay's unsettled messages, in the order they were committed.
///
/// Messages are numbered in the order read; `entries[n]` holds number
/// `first + n`, `None` once settled, and settled numbers leave the front.
/// A deque of slots, not an ordered map: settling a message empties its
/// slot where a map would shift its neighbours (whole messages) in memory
/// (settling was 6.7 % of a draining relay's time with the map, 3.8 % with
/// the deque, almost all of it dropping the message).
#[derive(Default)]
pub(crate) struct Pending {
    first: u64,
    entries: VecDeque<Option<Entry>>,
    count: usize,
    by_id: HashMap<Uuid, u64>,
    txns: VecDeque<Txn>,
    last_end: Lsn,
    confirmed: Lsn,
}

impl Pending {
    /// The end of the last transaction read.
    pub(crate) fn last_end(&self) -> Lsn {
        self.last_end
    }

    /// Messages held now.
    pub(crate) fn len(&self) -> usize {
        self.count
    }

    /// The oldest held message's commit time.
    pub(crate) fn oldest(&self) -> Option<chrono::DateTime<chrono::Utc>> {
        self.held().map(|e| e.message.created_at).min()
    }

    /// The held entries, in the order read.
    fn held(&self) -> impl Iterator<Item = &Entry> {
        self.entries.iter().flatten()
    }

    /// Where the entry numbered `seq` sits in `entries`.
    fn slot(&self, seq: u64) -> Option<usize> {
        usize::try_from(seq.checked_sub(self.first)?).ok()
    }

    /// The entry numbered `seq`, if still held.
    fn entry(&self, seq: u64) -> Option<&Entry> {
        self.entries.get(self.slot(seq)?)?.as_ref()
    }

    fn entry_mut(&mut self, seq: u64) -> Option<&mut Entry> {
        let at = self.slot(seq)?;
        self.entries.get_mut(at)?.as_mut()
    }

    /// A transaction committed at `committed_at`, ending at `end`, whose messages (those not
    /// written to the failures table) are `messages`, in commit order. A
    /// message whose id is already held is a writer's duplicate and is
    /// dropped: the held one carries it.
    /// A transaction read again after a reconnection (its end is not past
    /// the last one's) is dropped: its messages are held already.
    pub(crate) fn commit(
        &mut self,
        end: Lsn,
        committed_at: DateTime<Utc>,
        messages: Vec<(Lsn, Message)>,
    ) {
        if end <= self.last_end {
            return;
        }
        self.last_end = end;
        let mut open = 0;
        for (position, message) in messages {
            if self.by_id.contains_key(&message.id) {
                continue;
            }
            let seq = self.first + self.entries.len() as u64;
            self.by_id.insert(message.id, seq);
            self.entries.push_back(Some(Entry {
                message,
                position,
                txn: end,
                lease: None,
            }));
            self.count += 1;
            open += 1;
        }
        self.txns.push_back(Txn {
            end,
            committed_at,
            open,
            settled: 0,
        });
    }

    /// The server has sent everything up to `end` and nothing is held:
    /// confirm it, so an idle outbox never pins the log.
    pub(crate) fn idle_at(&mut self, end: Lsn) {
        if self.txns.is_empty() && end > self.confirmed {
            self.confirmed = end;
        }
    }

    /// Leases up to `limit` messages within `budget` payload bytes (the
    /// first always), per key a prefix of its held messages and none of a
    /// key in `blocked` or with a message leased (a lease older than
    /// `lease` has lapsed).
    pub(crate) fn claim(
        &mut self,
        claim: ClaimId,
        limit: usize,
        budget: usize,
        blocked: &HashSet<String>,
        lease: Duration,
    ) -> Vec<Message> {
        let now = Instant::now();
        let mut held_back: HashSet<&str> = HashSet::new();
        let mut taken = Vec::with_capacity(limit.min(self.count));
        let mut bytes = 0;
        for entry in self.entries.iter_mut().flatten() {
            if taken.len() == limit {
                break;
            }
            let key = entry.message.ordering_key.as_str();
            let leased = matches!(entry.lease, Some((_, at)) if now.duration_since(at) < lease);
            if leased || held_back.contains(key) || blocked.contains(key) {
                held_back.insert(key);
                continue;
            }
            let size = entry.message.payload.len();
            if !taken.is_empty() && bytes + size > budget {
                break;
            }
            bytes += size;
            entry.lease = Some((claim, now));
            taken.push(entry.stamped());
        }
        taken
    }

    /// The held messages leased now: key, claim, since when.
    pub(crate) fn leases(&self, lease: Duration) -> Vec<(String, ClaimId, Instant)> {
        let now = Instant::now();
        self.held()
            .filter_map(|e| match e.lease {
                Some((claim, at)) if now.duration_since(at) < lease => {
                    Some((e.message.ordering_key.clone(), claim, at))
                }
                _ => None,
            })
            .collect()
    }

    /// The claim leasing `id` and since when, unless the lease lapsed.
    pub(crate) fn lease_of(&self, id: Uuid, lease: Duration) -> Option<(ClaimId, Instant)> {
        let entry = self.by_id.get(&id).and_then(|seq| self.entry(*seq))?;
        entry.lease.filter(|(_, at)| at.elapsed() < lease)
    }

    /// Whether `id` is held under `claim`'s lease.
    pub(crate) fn holds(&self, claim: ClaimId, id: Uuid) -> bool {
        self.by_id
            .get(&id)
            .and_then(|seq| self.entry(*seq))
            .is_some_and(|e| matches!(e.lease, Some((c, _)) if c == claim))
    }

    /// Settles the messages of `ids` that `claim` still leases; the others
    /// were lost to a lapsed lease and are left as they are.
    pub(crate) fn settle(&mut self, claim: ClaimId, ids: impl IntoIterator<Item = Uuid>) {
        for id in ids {
            if self.holds(claim, id) {
                self.remove(id);
            }
        }
    }

    /// Gives back the messages of `ids` that `claim` still leases.
    pub(crate) fn release(&mut self, claim: ClaimId, ids: impl IntoIterator<Item = Uuid>) {
        for id in ids {
            if self.holds(claim, id) {
                let seq = self.by_id[&id];
                self.entry_mut(seq).expect("indexed").lease = None;
            }
        }
    }

    /// Takes out every held message of `key` after `id`'s (all of them when
    /// `id` is `None`), leased or not, in order: they follow a failed
    /// message into the failures table. The caller settles them with
    /// [`Pending::settle_taken`] once they are written.
    pub(crate) fn later_of_key(&self, key: &str, after: Option<Uuid>) -> Vec<Message> {
        let skip = after
            .and_then(|id| self.by_id.get(&id))
            .and_then(|seq| self.slot(*seq))
            .map_or(0, |at| at + 1);
        self.entries
            .iter()
            .skip(skip)
            .flatten()
            .filter(|e| e.message.ordering_key == key)
            .map(Entry::stamped)
            .collect()
    }

    /// Settles messages written to the failures table, whatever their lease.
    pub(crate) fn settle_taken(&mut self, ids: impl IntoIterator<Item = Uuid>) {
        for id in ids {
            self.remove(id);
        }
    }

    fn remove(&mut self, id: Uuid) {
        let Some(seq) = self.by_id.remove(&id) else {
            return;
        };
        let at = self.slot(seq).expect("indexed");
        let entry = self.entries[at].take().expect("indexed");
        self.count -= 1;
        while self.entries.front().is_some_and(Option::is_none) {
            self.entries.pop_front();
            self.first += 1;
        }
        self.give_back_room();
        // Transactions are kept in commit order, so their ends ascend.
        if let Ok(at) = self.txns.binary_search_by_key(&entry.txn, |t| t.end) {
            self.txns[at].open -= 1;
            self.txns[at].settled += 1;
        }
    }

    /// A transaction is held whole, however many messages it carries
    /// (`max_held` pauses reading only between transactions): once such a
    /// one has gone, the room it grew the deque and the index to is given
    /// back, where the deque would keep it for the life of the process
    /// (224 bytes a slot and 24 an id in the index: a quarter of a GiB
    /// and more after a transaction of a million messages).
    fn give_back_room(&mut self) {
        if self.entries.capacity() > KEPT_SLOTS.max(4 * self.entries.len()) {
            self.entries
                .shrink_to(KEPT_SLOTS.max(2 * self.entries.len()));
            self.by_id.shrink_to(KEPT_SLOTS.max(2 * self.count));
        }
    }

    /// The unsettled messages the slot's position holds back behind a
    /// settled one: every held message of the transactions up to the last
    /// with a settled message. A relay that stops moves them to the
    /// failures table, so the slot can be confirmed past everything settled
    /// and the next reader sends nothing twice.
    pub(crate) fn behind_settled(&self) -> Vec<Message> {
        let Some(last) = self.txns.iter().rev().find(|t| t.settled > 0) else {
            return Vec::new();
        };
        self.held()
            .filter(|e| e.txn <= last.end)
            .map(Entry::stamped)
            .collect()
    }

    /// When the oldest transaction read and not yet confirmed committed.
    pub(crate) fn oldest_unconfirmed(&mut self) -> Option<DateTime<Utc>> {
        self.confirmable();
        self.txns.front().map(|t| t.committed_at)
    }

    /// The position the slot may confirm now: the end of the last settled
    /// transaction with every earlier one settled.
    pub(crate) fn confirmable(&mut self) -> Lsn {
        while self.txns.front().is_some_and(|t| t.open == 0) {
            let txn = self.txns.pop_front().expect("checked");
            self.confirmed = self.confirmed.max(txn.end);
        }
        self.confirmed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LEASE: Duration = Duration::from_secs(30);

    fn ids(messages: &[Message]) -> Vec<Uuid> {
        messages.iter().map(|m| m.id).collect()
    }

    fn message(key: &str) -> Message {
        Message::builder("d", key).payload("x").build().unwrap()
    }

    fn claim(pending: &mut Pending, limit: usize) -> (ClaimId, Vec<Message>) {
        let id = ClaimId::new();
        let taken = pending.claim(id, limit, usize::MAX, &HashSet::new(), LEASE);
        (id, taken)
    }

    #[test]
    fn a_claim_takes_a_prefix_per_key_and_skips_leased_keys() {
        let mut pending = Pending::default();
        let (a1, a2, b1) = (message("a"), message("a"), message("b"));
        pending.commit(10, Utc::now(), vec![(0, a1.clone()), (0, b1.clone())]);
        pending.commit(20, Utc::now(), vec![(0, a2.clone())]);
        let (first, taken) = claim(&mut pending, 1);
        assert_eq!(ids(&taken), vec![a1.id]);
        let (_, taken) = claim(&mut pending, 10);
        assert_eq!(ids(&taken), vec![b1.id], "a2 waits behind a1's lease");
        pending.release(first, [a1.id]);
        let (_, taken) = claim(&mut pending, 10);
        assert_eq!(ids(&taken), vec![a1.id, a2.id]);
    }

    #[test]
    fn the_slot_is_confirmed_up_to_the_first_unsettled_transaction() {
        let mut pending = Pending::default();
        let (a, b, c) = (message("a"), message("b"), message("c"));
        pending.commit(10, Utc::now(), vec![(0, a.clone())]);
        pending.commit(20, Utc::now(), vec![(0, b.clone())]);
        pending.commit(30, Utc::now(), vec![(0, c.clone())]);
        let (id, _) = claim(&mut pending, 10);
        pending.settle(id, [b.id, c.id]);
        assert_eq!(pending.confirmable(), 0, "a holds back 20 and 30");
        pending.settle(id, [a.id]);
        assert_eq!(pending.confirmable(), 30);
        pending.idle_at(40);
        assert_eq!(pending.confirmable(), 40);
    }

    #[test]
    fn what_holds_back_a_settled_message_is_named() {
        let mut pending = Pending::default();
        let (a, b, c, d) = (message("a"), message("b"), message("c"), message("d"));
        pending.commit(10, Utc::now(), vec![(0, a.clone())]);
        pending.commit(20, Utc::now(), vec![(0, b.clone()), (0, c.clone())]);
        pending.commit(30, Utc::now(), vec![(0, d.clone())]);
        assert!(pending.behind_settled().is_empty());
        let (id, _) = claim(&mut pending, 10);
        pending.settle(id, [c.id]);
        assert_eq!(ids(&pending.behind_settled()), vec![a.id, b.id]);
        pending.settle_taken([a.id, b.id]);
        assert_eq!(
            pending.confirmable(),
            20,
            "d is not behind anything settled"
        );
    }

    #[test]
    fn a_report_of_a_lost_claim_changes_nothing() {
        let mut pending = Pending::default();
        let a = message("a");
        pending.commit(10, Utc::now(), vec![(0, a.clone())]);
        let stale = ClaimId::new();
        pending.claim(stale, 10, usize::MAX, &HashSet::new(), Duration::ZERO);
        let fresh = ClaimId::new();
        let taken = pending.claim(fresh, 10, usize::MAX, &HashSet::new(), Duration::ZERO);
        assert_eq!(ids(&taken), vec![a.id], "the lapsed lease is claimed again");
        pending.settle(stale, [a.id]);
        pending.release(stale, [a.id]);
        assert!(pending.holds(fresh, a.id));
        assert_eq!(pending.confirmable(), 0);
    }

    #[test]
    fn what_leaves_memory_carries_its_log_position() {
        let mut pending = Pending::default();
        let (a, b) = (message("a"), message("a"));
        pending.commit(30, Utc::now(), vec![(17, a.clone()), (23, b.clone())]);
        let sequence = |m: &Message| m.headers.get(HEADER_SEQUENCE).cloned();
        let (_, taken) = claim(&mut pending, 1);
        assert_eq!(sequence(&taken[0]).as_deref(), Some("17"));
        let later = pending.later_of_key("a", Some(a.id));
        assert_eq!(sequence(&later[0]).as_deref(), Some("23"));
    }

    #[test]
    fn messages_settled_out_of_order_leave_the_rest_reachable() {
        let mut pending = Pending::default();
        let (a, b, c, d) = (message("a"), message("b"), message("c"), message("c"));
        pending.commit(
            10,
            Utc::now(),
            vec![
                (1, a.clone()),
                (2, b.clone()),
                (3, c.clone()),
                (4, d.clone()),
            ],
        );
        let (id, _) = claim(&mut pending, 10);
        pending.settle(id, [b.id]);
        pending.settle(id, [a.id]);
        assert_eq!(pending.len(), 2);
        assert!(pending.holds(id, c.id) && pending.holds(id, d.id));
        assert_eq!(ids(&pending.later_of_key("c", Some(c.id))), vec![d.id]);
        pending.release(id, [c.id, d.id]);
        let (_, taken) = claim(&mut pending, 10);
        assert_eq!(ids(&taken), vec![c.id, d.id]);
    }

    #[test]
    fn the_room_a_large_transaction_took_is_given_back() {
        let mut pending = Pending::default();
        let large: Vec<(Lsn, Message)> = (0..100_000)
            .map(|n| (n, message(&format!("k{}", n % 1_000))))
            .collect();
        let small = message("after");
        pending.commit(10, Utc::now(), large);
        pending.commit(20, Utc::now(), vec![(0, small.clone())]);
        assert!(pending.entries.capacity() >= 100_001);
        while pending.len() > 1 {
            let (id, taken) = claim(&mut pending, 1_000);
            pending.settle(id, ids(&taken).into_iter().filter(|id| *id != small.id));
            pending.release(id, [small.id]);
        }
        assert_eq!(pending.confirmable(), 10);
        assert!(
            pending.entries.capacity() <= 2 * KEPT_SLOTS,
            "the deque kept room for {} messages",
            pending.entries.capacity()
        );
        assert!(
            pending.by_id.capacity() <= 2 * KEPT_SLOTS,
            "the index kept room for {} ids",
            pending.by_id.capacity()
        );
        let (_, taken) = claim(&mut pending, 10);
        assert_eq!(
            ids(&taken),
            vec![small.id],
            "what is still held stays reachable"
        );
    }

    #[test]
    fn later_messages_of_a_key_follow_it_out() {
        let mut pending = Pending::default();
        let (a1, b1, a2) = (message("a"), message("b"), message("a"));
        pending.commit(
            10,
            Utc::now(),
            vec![(0, a1.clone()), (0, b1.clone()), (0, a2.clone())],
        );
        assert_eq!(ids(&pending.later_of_key("a", Some(a1.id))), vec![a2.id]);
        pending.settle_taken([a1.id, a2.id]);
        assert_eq!(pending.len(), 1);
        let (_, taken) = claim(&mut pending, 10);
        assert_eq!(ids(&taken), vec![b1.id]);
    }
}
