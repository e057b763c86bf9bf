//! Scenarios of isolation: a key that fails, waits, parks or sends slowly
//! holds back only its own later messages, and a claim keeps nothing it
//! does not return.

use std::time::Duration;

use outbox_core::memory::MemoryDestination;
use outbox_core::{Backoff, Message, RelayConfig, Source};

use super::{config, ids, other_keys, DEADLINE, LEASE};
use crate::arrivals;
use crate::verify::{assert_order_per_key, eventually, numbered_messages, run_relay};
use crate::SourceHarness;

/// A key whose head keeps failing holds back only its own later messages.
pub async fn no_head_of_line_blocking<H: SourceHarness>(harness: &H) {
    let messages = numbered_messages("events", 5, 10);
    let stuck = messages[0].id;
    let destination = MemoryDestination::new();
    destination.fail_always(stuck);
    harness.enqueue(messages.clone()).await;
    let config = RelayConfig {
        max_attempts: u32::MAX,
        ..config()
    };
    let relay = run_relay(harness.relay(LEASE).await, destination.clone(), config);
    let others = messages.len() - 10;
    assert!(
        destination.wait_for(others, DEADLINE).await,
        "other keys were held back: {} of {others} arrived",
        destination.sent_count()
    );
    // Give the stuck key several retries' worth of time to misbehave.
    tokio::time::sleep(Duration::from_millis(300)).await;
    relay.stop().await;
    let sent = destination.sent();
    assert!(
        destination.attempts(stuck) >= 2,
        "the stuck message was not retried"
    );
    assert!(
        sent.iter()
            .all(|s| s.message.ordering_key != messages[0].ordering_key),
        "a later message of the stuck key was published before its head"
    );
    assert_eq!(sent.len(), others);
}

/// A key whose head keeps failing, written first and with more messages
/// behind its head than a batch holds, still holds back only its own later
/// messages. The first waiting rows of the table are all this key's: a
/// claim that took them as candidates and then found them held back would
/// return nothing while the head waits for its retry, and no other key
/// would flow.
pub async fn a_long_failing_key_holds_back_only_itself<H: SourceHarness>(harness: &H) {
    let config = RelayConfig {
        max_attempts: u32::MAX,
        ..config()
    };
    let stuck: Vec<Message> = (0..config.batch_size * 4)
        .map(|n| {
            Message::builder("events", "stuck")
                .header("seq", n.to_string())
                .build()
                .unwrap()
        })
        .collect();
    let destination = MemoryDestination::new();
    destination.fail_always(stuck[0].id);
    let others = other_keys();
    harness.enqueue(stuck.clone()).await;
    harness.enqueue(others.clone()).await;
    let relay = run_relay(harness.relay(LEASE).await, destination.clone(), config);
    let flowed = destination.wait_for(others.len(), DEADLINE).await;
    let head = stuck[0].id;
    let retried = eventually(DEADLINE, || async { destination.attempts(head) >= 2 }).await;
    relay.stop().await;
    assert!(
        flowed,
        "other keys were held back behind a failing key with more messages than a batch: \
         {} of {} arrived",
        destination.sent_count(),
        others.len()
    );
    assert!(retried, "the failing head was not retried");
    assert!(
        destination
            .sent()
            .iter()
            .all(|sent| sent.message.ordering_key != "stuck"),
        "a later message of the failing key was published before its head"
    );
}

/// A destination failing for many keys at once (a topic gone): each key
/// holds back only its own later messages, however many keys fail. Every
/// head fails and waits a minute for its retry; the first waiting rows of
/// the table are then all the failing keys' later messages, more of them
/// than a claim's rounds look through, and the other keys come after.
pub async fn many_failing_keys_hold_back_only_themselves<H: SourceHarness>(harness: &H) {
    many_held_keys(harness, false).await;
}

/// The same with dead letters parking their keys: every head is refused
/// for good and parked, and its key's later message stays behind it.
pub async fn many_parked_keys_hold_back_only_themselves<H: SourceHarness>(harness: &H) {
    many_held_keys(harness, true).await;
}

/// Many keys whose head failed (waiting for its retry, or parked when
/// `park`), each with a later message, written before the other keys'.
async fn many_held_keys<H: SourceHarness>(harness: &H, park: bool) {
    let config = RelayConfig {
        max_attempts: u32::MAX,
        backoff: Backoff {
            initial: Duration::from_secs(60),
            max: Duration::from_secs(60),
            multiplier: 2.0,
            jitter: 0.0,
        },
        ..config()
    };
    let keys = config.batch_size * 8;
    let failing: Vec<Message> = (0..2 * keys)
        .map(|n| {
            Message::builder("gone", format!("failing-{}", n % keys))
                .build()
                .unwrap()
        })
        .collect();
    let heads = &failing[..keys];
    let destination = MemoryDestination::new();
    for head in heads {
        if park {
            destination.fail_permanently(head.id);
        } else {
            destination.fail_always(head.id);
        }
    }
    harness.enqueue(failing.clone()).await;
    let source = if park {
        harness.parking_relay(LEASE).await
    } else {
        harness.relay(LEASE).await
    };
    let relay = run_relay(source, destination.clone(), config);
    let all_failed = eventually(DEADLINE, || async {
        if park {
            harness.dead_letters().await.len() == keys
        } else {
            heads.iter().all(|head| destination.attempts(head.id) >= 1)
        }
    })
    .await;
    let others = other_keys();
    harness.enqueue(others.clone()).await;
    let flowed = destination.wait_for(others.len(), DEADLINE).await;
    relay.stop().await;
    assert!(
        all_failed,
        "not every failing head was tried (parking: {park})"
    );
    assert!(
        flowed,
        "other keys were held back behind {keys} failing keys (parking: {park}): \
         {} of {} arrived",
        destination.sent_count(),
        others.len()
    );
    assert!(
        destination
            .sent()
            .iter()
            .all(|sent| sent.message.destination != "gone"),
        "a later message of a failing key was published before its head"
    );
}

/// With dead letters parking their keys, a parked key with more messages
/// waiting than a batch holds back only its own: every claim after the
/// parking meets those messages first, and must pass over them.
pub async fn a_long_parked_key_holds_back_only_itself<H: SourceHarness>(harness: &H) {
    let config = config();
    let parked: Vec<Message> = (0..config.batch_size * 3)
        .map(|_| Message::builder("events", "parked").build().unwrap())
        .collect();
    let destination = MemoryDestination::new();
    destination.fail_permanently(parked[0].id);
    harness.enqueue(parked.clone()).await;
    let relay = run_relay(
        harness.parking_relay(LEASE).await,
        destination.clone(),
        config,
    );
    // The others are written once the head is parked.
    let head_parked = eventually(DEADLINE, || async {
        harness.dead_letters().await.len() == 1
    })
    .await;
    let others = other_keys();
    harness.enqueue(others.clone()).await;
    let flowed = destination.wait_for(others.len(), DEADLINE).await;
    relay.stop().await;
    assert!(head_parked, "the refused head was not dead-lettered");
    assert!(
        flowed,
        "other keys were held back behind a parked key with more messages than a batch: \
         {} of {} arrived",
        destination.sent_count(),
        others.len()
    );
    assert!(
        arrivals(&destination)
            .iter()
            .all(|(key, _)| key != "parked"),
        "a parked key's later message went out"
    );
}

/// Other keys do not wait for a key whose batch is still being sent: a key
/// written first, with more messages than a batch, whose head takes seconds
/// to be acknowledged. Its later messages wait for that batch; messages of
/// other keys, written after all of them, go out meanwhile. (A relay that
/// delivered a batch whole before starting the next, or a claim that took
/// the slow key's next rows as candidates and held them all back, kept the
/// other keys waiting for the slow send.)
pub async fn a_key_in_a_slow_send_holds_back_only_itself<H: SourceHarness>(harness: &H) {
    let config = config();
    let busy: Vec<Message> = (0..config.batch_size * 4)
        .map(|_| Message::builder("events", "busy").build().unwrap())
        .collect();
    let destination = MemoryDestination::new();
    destination.delay(busy[0].id, Duration::from_millis(1500));
    let others = other_keys();
    harness.enqueue(busy.clone()).await;
    harness.enqueue(others.clone()).await;
    let relay = run_relay(
        harness.relay(LEASE).await,
        destination.clone(),
        config.clone(),
    );
    let all = busy.len() + others.len();
    let arrived = eventually(DEADLINE, || async { destination.distinct_count() >= all }).await;
    relay.stop().await;
    assert!(
        arrived,
        "{} of {all} messages arrived",
        destination.distinct_count()
    );
    let sent = arrivals(&destination);
    let head = sent.iter().position(|(_, id)| *id == busy[0].id);
    let last_other = sent.iter().rposition(|(key, _)| key != "busy");
    assert!(
        last_other < head,
        "other keys waited for the slow send: the last of them arrived at {last_other:?}, \
         the slow message at {head:?}"
    );
    assert_order_per_key(&[busy, others].concat(), &sent);
}

/// Keys are compared byte for byte: keys that differ only in case, an accent
/// or a trailing space are different keys. Each family below holds a key
/// whose head keeps failing, an earlier head of a look-alike key that keeps
/// failing too, and a later message of the first key, which must wait for
/// its own head and never be published. (A look-back that grouped keys by
/// a case- or accent-insensitive collation found the look-alike's head
/// first, missed the key's own, and published the later message.)
pub async fn look_alike_keys_stay_distinct<H: SourceHarness>(harness: &H) {
    let families = [
        ("ORDER-a", "order-a"),
        ("order-b", "order-b "),
        ("ordér-c", "order-c"),
    ];
    let destination = MemoryDestination::new();
    let mut messages = Vec::new();
    let mut heads = Vec::new();
    let mut later = Vec::new();
    for (look_alike, key) in families {
        let family = [look_alike, key, key].map(|k| Message::builder("events", k).build().unwrap());
        destination.fail_always(family[0].id);
        destination.fail_always(family[1].id);
        heads.extend([family[0].id, family[1].id]);
        later.push((family[2].id, key));
        messages.extend(family);
    }
    let others = numbered_messages("events", 1, 5);
    messages.extend(others.iter().cloned());
    harness.enqueue(messages).await;
    let config = RelayConfig {
        max_attempts: u32::MAX,
        ..config()
    };
    let relay = run_relay(harness.relay(LEASE).await, destination.clone(), config);
    let retried = eventually(DEADLINE, || async {
        heads.iter().all(|id| destination.attempts(*id) >= 3)
    })
    .await;
    relay.stop().await;
    assert!(retried, "the failing heads were not retried");
    assert!(
        destination.wait_for(others.len(), DEADLINE).await,
        "another key was held back"
    );
    let published = destination.sent();
    for (id, key) in later {
        assert!(
            published.iter().all(|sent| sent.message.id != id),
            "a later message of key {key:?} was published while its own head waited for a retry"
        );
    }
}

/// With [`OnDeadLetter::Park`](outbox_core::OnDeadLetter::Park), a head
/// that cannot be read as a message parks its key like any dead letter:
/// the key's later messages, claimed with it, are not delivered past the
/// gap, and other keys flow.
pub async fn a_malformed_head_parks_its_key<H: SourceHarness>(harness: &H) {
    let Some(malformed) = harness.enqueue_malformed("parked").await else {
        return;
    };
    let later: Vec<Message> = (0..3)
        .map(|_| Message::builder("events", "parked").build().unwrap())
        .collect();
    let mut messages = later.clone();
    messages.extend(other_keys());
    harness.enqueue(messages).await;
    let destination = MemoryDestination::new();
    let relay = run_relay(
        harness.parking_relay(LEASE).await,
        destination.clone(),
        config(),
    );
    let others = destination.wait_for(30, DEADLINE).await;
    let dead = eventually(DEADLINE, || async {
        harness
            .dead_letters()
            .await
            .iter()
            .any(|(id, _)| *id == malformed)
    })
    .await;
    relay.stop().await;
    assert!(others, "other keys were held back");
    assert!(dead, "the malformed head was not dead-lettered");
    let published = destination.sent();
    for message in &later {
        assert!(
            published.iter().all(|sent| sent.message.id != message.id),
            "a later message of a parked key was delivered past its malformed head"
        );
    }
}

/// A claim keeps locked only the rows it returns. A claim that meets a
/// later row of a key whose earlier row is in another batch leaves it
/// behind, and the next claim after that batch is acknowledged takes it.
/// (Claims that kept such rows locked, unused, until their own batch ended
/// held those keys back from every other claim meanwhile: under a backlog
/// deeper than a batch per key, several relays' claims came back mostly
/// empty, and the relays fell behind the writers.)
pub async fn a_claim_keeps_no_row_it_holds_back<H: SourceHarness>(harness: &H) {
    let first = Message::builder("events", "busy").build().unwrap();
    let second = Message::builder("events", "busy").build().unwrap();
    let other = Message::builder("events", "free").build().unwrap();
    harness
        .enqueue(vec![first.clone(), second.clone(), other.clone()])
        .await;
    let a = harness.relay(LEASE).await;
    let head = a.claim(1).await.expect("claim");
    assert_eq!(ids(&head), vec![first.id], "the first claim takes the head");
    let b = harness.relay(LEASE).await;
    let rest = b.claim(10).await.expect("claim");
    assert_eq!(
        ids(&rest),
        vec![other.id],
        "a claim took a row whose earlier row is in another batch"
    );
    a.ack(head.id(), &head).await.expect("ack");
    let c = harness.relay(LEASE).await;
    let next = c.claim(10).await.expect("claim");
    assert_eq!(
        ids(&next),
        vec![second.id],
        "the key's next row stayed behind a claim that did not return it"
    );
    b.ack(rest.id(), &rest).await.expect("ack");
    c.ack(next.id(), &next).await.expect("ack");
    assert_eq!(harness.waiting().await, 0);
}
