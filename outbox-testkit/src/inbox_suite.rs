//! Scenarios every SQL inbox passes: each message applied once per
//! consumer, consumers racing on one id, retention, and bad consumer names.
//! Each database's test file implements [`InboxHarness`] and expands
//! [`inbox_conformance!`](crate::inbox_conformance).

use std::future::Future;
use std::time::Duration;

use std::collections::BTreeMap;

use outbox_core::{Error, Incoming};
use outbox_sql::{Receipt, MAX_CONSUMER_LEN};
use uuid::Uuid;

/// One inbox table of a real database, and a business table beside it.
pub trait InboxHarness: Clone + Send + Sync + 'static {
    /// In one transaction: the inbox's `apply(consumer, message.id)`, or
    /// `apply_in_order(consumer, message)` when `in_order`, and, when the
    /// message is new, its effect: a row `(consumer, id)` in a business
    /// table that has no unique key, so an effect applied twice shows.
    /// Commits when `commit`, rolls back otherwise.
    fn apply_message(
        &self,
        consumer: &str,
        message: Incoming,
        in_order: bool,
        commit: bool,
    ) -> impl Future<Output = Result<Receipt, Error>> + Send;

    /// [`apply_message`](Self::apply_message) of a message known by its id
    /// only, not in order.
    fn apply(
        &self,
        consumer: &str,
        id: Uuid,
        commit: bool,
    ) -> impl Future<Output = Result<Receipt, Error>> + Send {
        self.apply_message(consumer, incoming(id, None), false, commit)
    }

    /// The ids of `consumer`'s effects, one per effect applied.
    fn effects(&self, consumer: &str) -> impl Future<Output = Vec<Uuid>> + Send;

    /// The inbox's `prune(older_than, batch)`.
    fn prune(
        &self,
        older_than: Duration,
        batch: u32,
    ) -> impl Future<Output = Result<u64, Error>> + Send;
}

/// A consumed message: `id`, of the key `order-1` at `sequence` when given.
fn incoming(id: Uuid, sequence: Option<i64>) -> Incoming {
    Incoming {
        id,
        ordering_key: sequence.map(|_| "order-1".to_string()),
        event_type: None,
        sequence,
        headers: BTreeMap::new(),
    }
}

fn sorted(mut ids: Vec<Uuid>) -> Vec<Uuid> {
    ids.sort();
    ids
}

/// A message is new once per consumer: a second apply is a duplicate, a
/// rolled-back apply leaves nothing behind, and consumers are independent.
pub async fn each_message_is_applied_once_per_consumer(inbox: &impl InboxHarness) {
    let (first, second) = (Uuid::now_v7(), Uuid::now_v7());
    assert_eq!(
        inbox.apply("billing", first, true).await.unwrap(),
        Receipt::New
    );
    assert_eq!(
        inbox.apply("billing", first, true).await.unwrap(),
        Receipt::Duplicate
    );
    assert_eq!(
        inbox.apply("shipping", first, true).await.unwrap(),
        Receipt::New,
        "another consumer applies the same message on its own"
    );
    assert_eq!(
        inbox.apply("billing", second, false).await.unwrap(),
        Receipt::New
    );
    assert_eq!(
        inbox.apply("billing", second, true).await.unwrap(),
        Receipt::New,
        "a rolled-back apply must leave no trace"
    );
    assert_eq!(
        inbox.apply("billing", second, true).await.unwrap(),
        Receipt::Duplicate
    );
    assert_eq!(inbox.effects("billing").await, sorted(vec![first, second]));
    assert_eq!(inbox.effects("shipping").await, vec![first]);
}

/// Two consumers of one name applying the same ids at the same time (a
/// redelivery racing the first delivery): each id is applied once, and
/// neither sees an error.
pub async fn two_consumers_racing_on_one_id_apply_it_once(inbox: &impl InboxHarness) {
    let ids: Vec<Uuid> = (0..40).map(|_| Uuid::now_v7()).collect();
    for &id in &ids {
        let (a, b) = (inbox.clone(), inbox.clone());
        let (first, second) = tokio::join!(
            tokio::spawn(async move { a.apply("racing", id, true).await }),
            tokio::spawn(async move { b.apply("racing", id, true).await }),
        );
        let receipts = [first.unwrap().unwrap(), second.unwrap().unwrap()];
        assert_eq!(
            receipts.iter().filter(|r| r.is_new()).count(),
            1,
            "{id}: {receipts:?}"
        );
    }
    assert_eq!(inbox.effects("racing").await, sorted(ids));
}

/// `prune` removes only ids older than the window, in batches; a copy that
/// arrives after its id was pruned is new again (the window must outlast
/// redeliveries).
pub async fn ids_older_than_the_window_are_pruned_in_batches(inbox: &impl InboxHarness) {
    let ids: Vec<Uuid> = (0..5).map(|_| Uuid::now_v7()).collect();
    for &id in &ids {
        assert!(inbox.apply("pruned", id, true).await.unwrap().is_new());
    }
    assert_eq!(
        inbox.prune(Duration::from_secs(3600), 2).await.unwrap(),
        0,
        "nothing is old enough yet"
    );
    assert!(!inbox.apply("pruned", ids[0], true).await.unwrap().is_new());
    assert_eq!(inbox.prune(Duration::ZERO, 2).await.unwrap(), 5);
    assert_eq!(inbox.prune(Duration::ZERO, 2).await.unwrap(), 0);
    assert!(inbox.apply("pruned", ids[0], true).await.unwrap().is_new());
}

/// `prune` also forgets the last sequence of a key idle past the window
/// (the keys table stays bounded however many keys pass): afterwards an
/// older message of that key is new again, as a copy of a pruned id is.
pub async fn key_positions_idle_past_the_window_are_pruned(inbox: &impl InboxHarness) {
    let apply = |id: Uuid, sequence: i64| {
        inbox.apply_message("positions", incoming(id, Some(sequence)), true, true)
    };
    assert_eq!(apply(Uuid::now_v7(), 5).await.unwrap(), Receipt::New);
    assert_eq!(apply(Uuid::now_v7(), 3).await.unwrap(), Receipt::Stale);
    assert_eq!(
        inbox.prune(Duration::from_secs(3600), 10).await.unwrap(),
        0,
        "nothing is old enough yet"
    );
    assert_eq!(
        inbox.prune(Duration::ZERO, 10).await.unwrap(),
        3,
        "two ids and one key position"
    );
    assert_eq!(
        apply(Uuid::now_v7(), 3).await.unwrap(),
        Receipt::New,
        "the key's position was pruned with its ids"
    );
}

/// A consumer name that is empty or too long is refused before anything is
/// written, with an error that says so.
pub async fn a_consumer_name_out_of_bounds_is_refused(inbox: &impl InboxHarness) {
    let id = Uuid::now_v7();
    for name in [String::new(), "c".repeat(MAX_CONSUMER_LEN + 1)] {
        let err = inbox.apply(&name, id, true).await.unwrap_err();
        assert!(!err.is_temporary(), "{err}");
        assert!(err.message().contains("consumer name"), "{err}");
        assert!(inbox.effects(&name).await.is_empty());
    }
    let longest = "c".repeat(MAX_CONSUMER_LEN);
    assert!(inbox.apply(&longest, id, true).await.unwrap().is_new());
    assert!(!inbox.apply(&longest, id, true).await.unwrap().is_new());
}

/// In order: a new message older than one of its key already applied is
/// stale (skipped, its copies duplicates), a newer one is applied, keys
/// and consumers are independent, and a message without a sequence is
/// refused with an error that names the header.
pub async fn a_message_older_than_its_keys_last_is_stale_in_order(inbox: &impl InboxHarness) {
    let apply = |consumer: &'static str, id: Uuid, sequence: i64| {
        inbox.apply_message(consumer, incoming(id, Some(sequence)), true, true)
    };
    let ids: Vec<Uuid> = (0..4).map(|_| Uuid::now_v7()).collect();
    assert_eq!(apply("ledger", ids[0], 5).await.unwrap(), Receipt::New);
    assert_eq!(
        apply("ledger", ids[1], 3).await.unwrap(),
        Receipt::Stale,
        "sequence 3 after 5"
    );
    assert_eq!(
        apply("ledger", ids[1], 3).await.unwrap(),
        Receipt::Duplicate,
        "a stale message's copy"
    );
    assert_eq!(apply("ledger", ids[2], 7).await.unwrap(), Receipt::New);
    assert_eq!(
        apply("ledger", ids[2], 7).await.unwrap(),
        Receipt::Duplicate
    );
    assert_eq!(
        apply("audit", ids[1], 3).await.unwrap(),
        Receipt::New,
        "another consumer keeps its own order"
    );
    let other_key = Incoming {
        ordering_key: Some("order-2".to_string()),
        ..incoming(ids[3], Some(1))
    };
    assert_eq!(
        inbox
            .apply_message("ledger", other_key, true, true)
            .await
            .unwrap(),
        Receipt::New,
        "another key keeps its own order"
    );
    assert_eq!(
        inbox.effects("ledger").await,
        sorted(vec![ids[0], ids[2], ids[3]])
    );
    let unordered = incoming(Uuid::now_v7(), None);
    let err = inbox
        .apply_message("ledger", unordered, true, true)
        .await
        .unwrap_err();
    assert!(!err.is_temporary(), "{err}");
    assert!(err.message().contains("outbox-ordering-key"), "{err}");
}
