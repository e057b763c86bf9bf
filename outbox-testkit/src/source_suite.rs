//! Scenarios every Source passes, with the in-memory destination.

use std::time::{Duration, Instant};

use outbox_core::memory::MemoryDestination;
use outbox_core::{Backoff, Message, RelayConfig, Source};

use crate::verify::{assert_order_per_key, eventually, numbered_messages, run_relay};
use crate::SourceHarness;

const LEASE: Duration = Duration::from_secs(10);
const DEADLINE: Duration = Duration::from_secs(30);

fn config() -> RelayConfig {
    RelayConfig {
        batch_size: 50,
        max_concurrent_keys: 8,
        max_in_flight_per_key: 4,
        send_timeout: Duration::from_secs(2),
        poll_interval_min: Duration::from_millis(5),
        poll_interval_max: Duration::from_millis(50),
        backoff: Backoff {
            initial: Duration::from_millis(20),
            max: Duration::from_millis(100),
            multiplier: 2.0,
            jitter: 0.1,
        },
        ..RelayConfig::default()
    }
}

/// 30 messages over five keys (`other-0` to `other-4`), for scenarios
/// where one key misbehaves.
fn other_keys() -> Vec<Message> {
    (0..30)
        .map(|n| {
            Message::builder("events", format!("other-{}", n % 5))
                .build()
                .unwrap()
        })
        .collect()
}

fn arrivals(destination: &MemoryDestination) -> Vec<(String, uuid::Uuid)> {
    destination
        .sent()
        .into_iter()
        .map(|sent| (sent.message.ordering_key, sent.message.id))
        .collect()
}

/// 600 messages over 20 keys: all arrive, each key in enqueue order, and the
/// table ends empty.
pub async fn order_per_key_and_nothing_lost<H: SourceHarness>(harness: &H) {
    let messages = numbered_messages("events", 20, 30);
    harness.enqueue(messages.clone()).await;
    let destination = MemoryDestination::new();
    let relay = run_relay(harness.relay(LEASE).await, destination.clone(), config());
    assert!(
        destination
            .wait_for_distinct(messages.len(), DEADLINE)
            .await,
        "only {} of {} messages arrived",
        destination.distinct_count(),
        messages.len()
    );
    relay.stop().await;
    let duplicates = assert_order_per_key(&messages, &arrivals(&destination));
    assert_eq!(
        duplicates, 0,
        "no failure happened, so no duplicate may arrive"
    );
    assert!(
        eventually(DEADLINE, || async { harness.waiting().await == 0 }).await,
        "delivered messages are still waiting in the outbox"
    );
}

/// Every field of a message comes out of the table as it went in, for a
/// message alone in its transaction and for messages written together (an
/// adapter may write the two with different statements).
pub async fn every_field_survives<H: SourceHarness>(harness: &H) {
    let full = |key: &str| {
        Message::builder("events.fields", key)
            .payload(vec![0, 159, 146, 150, 255, b'{'])
            .header("trace-id", "4bf92f3577b34da6")
            .header("tenant", "Zürich \"east\"")
            .partition_key(format!("{key}/partition"))
            .event_type("FieldsChecked")
            .build()
            .expect("message")
    };
    let bare = Message::builder("events.fields", "bare")
        .payload("x")
        .build()
        .expect("message");
    let alone = full("alone");
    let together = vec![full("together"), bare];
    harness.enqueue(vec![alone.clone()]).await;
    harness.enqueue(together.clone()).await;
    let destination = MemoryDestination::new();
    let relay = run_relay(harness.relay(LEASE).await, destination.clone(), config());
    assert!(
        destination.wait_for_distinct(3, DEADLINE).await,
        "messages did not arrive"
    );
    relay.stop().await;
    let sent = destination.sent();
    for expected in std::iter::once(&alone).chain(&together) {
        let mut got = sent
            .iter()
            .find(|s| s.message.id == expected.id)
            .map(|s| s.message.clone())
            .expect("every message arrived");
        let drift = (got.created_at - expected.created_at).abs();
        assert!(
            drift.num_microseconds() < Some(1_000),
            "created_at of {} came back {drift} off",
            expected.ordering_key
        );
        got.created_at = expected.created_at;
        assert_eq!(&got, expected, "a field changed in the table");
    }
}

/// A message failing twice is retried with backoff, then delivered, and the
/// later messages of its key wait for it.
pub async fn retry_then_success<H: SourceHarness>(harness: &H) {
    let messages = numbered_messages("events", 1, 3);
    let destination = MemoryDestination::new();
    destination.fail_times(messages[0].id, 2);
    harness.enqueue(messages.clone()).await;
    let relay = run_relay(harness.relay(LEASE).await, destination.clone(), config());
    assert!(
        destination.wait_for(3, DEADLINE).await,
        "messages did not arrive"
    );
    relay.stop().await;
    assert_order_per_key(&messages, &arrivals(&destination));
    assert_eq!(destination.attempts(messages[0].id), 3);
    let first = &destination.sent()[0];
    assert_eq!(first.message.id, messages[0].id);
    assert_eq!(
        first.message.attempts, 2,
        "the source kept the failed attempts"
    );
}

/// A permanent failure is dead-lettered at once; a message failing every
/// attempt is dead-lettered after `max_attempts`; both keep their reason and
/// other messages are delivered.
pub async fn poison_is_dead_lettered<H: SourceHarness>(harness: &H) {
    let messages = numbered_messages("events", 4, 3);
    let refused = messages[0].id;
    let exhausted = messages[1].id;
    let destination = MemoryDestination::new();
    destination.fail_permanently(refused);
    destination.fail_always(exhausted);
    harness.enqueue(messages.clone()).await;
    let config = RelayConfig {
        max_attempts: 3,
        ..config()
    };
    let relay = run_relay(harness.relay(LEASE).await, destination.clone(), config);
    assert!(
        destination.wait_for(messages.len() - 2, DEADLINE).await,
        "healthy messages did not arrive"
    );
    let settled = eventually(DEADLINE, || async {
        harness.dead_letters().await.len() == 2
    })
    .await;
    relay.stop().await;
    assert!(settled, "dead letters: {:?}", harness.dead_letters().await);
    let dead = harness.dead_letters().await;
    let reason = |id| dead.iter().find(|(d, _)| *d == id).map(|(_, e)| e.clone());
    assert!(reason(refused).unwrap().contains("permanent"), "{dead:?}");
    assert!(
        reason(exhausted)
            .unwrap()
            .contains("gave up after 3 attempts"),
        "{dead:?}"
    );
    assert_eq!(
        destination.attempts(refused),
        1,
        "a permanent error is not retried"
    );
    assert_eq!(destination.attempts(exhausted), 3);
    assert_eq!(harness.waiting().await, 0);
}

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

/// A batch whose lease leaves no time to start its last sends (its first
/// send was slow) keeps what it delivered: the unsent rest is released, the
/// acknowledgements are committed, and nothing delivered is sent again.
/// (Left unreported, the unsent rest kept a transaction-lease source's
/// batch open until the lease rolled it back, acknowledgements and all, and
/// the same slow batch was claimed and sent again, over and over.)
pub async fn a_batch_past_its_send_window_keeps_its_acks<H: SourceHarness>(harness: &H) {
    // Sends may start only in the first second of a batch (lease 10 s, send
    // timeout 8 s, and a tenth of the lease kept for the reports); the
    // key's first send takes 3 s.
    let config = RelayConfig {
        send_timeout: LEASE - Duration::from_secs(2),
        ..config()
    };
    let messages = numbered_messages("events", 1, config.batch_size * 2);
    let destination = MemoryDestination::new();
    destination.delay(messages[0].id, Duration::from_secs(3));
    harness.enqueue(messages.clone()).await;
    let relay = run_relay(harness.relay(LEASE).await, destination.clone(), config);
    let arrived = eventually(DEADLINE, || async {
        destination.distinct_count() >= messages.len()
    })
    .await;
    relay.stop().await;
    assert!(
        arrived,
        "{} of {} messages arrived after {} sends",
        destination.distinct_count(),
        messages.len(),
        destination.sent_count()
    );
    assert_eq!(
        assert_order_per_key(&messages, &arrivals(&destination)),
        0,
        "delivered messages were sent again"
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

/// A relay that claimed and died without releasing: its claims are taken
/// over once the lease passes (or at once, where they end with the relay's
/// transaction), and nothing is lost.
pub async fn dead_relay_claims_taken_over<H: SourceHarness>(harness: &H) {
    let lease = Duration::from_millis(1500);
    let messages = numbered_messages("events", 5, 4);
    harness.enqueue(messages.clone()).await;
    let crashed = harness.relay(lease).await;
    let held = crashed.claim(100).await.expect("claim");
    let claimed_at = Instant::now();
    assert_eq!(held.len(), messages.len());
    drop(crashed);

    let survivor = harness.relay(lease).await;
    let ends_with_the_relay = harness.claims_end_with_the_relay();
    if !ends_with_the_relay {
        assert!(
            survivor.claim(100).await.expect("claim").is_empty(),
            "leased messages were handed out twice"
        );
    }
    let destination = MemoryDestination::new();
    let config = RelayConfig {
        send_timeout: Duration::from_millis(500),
        ..config()
    };
    let relay = run_relay(survivor, destination.clone(), config);
    assert!(
        destination
            .wait_for_distinct(messages.len(), DEADLINE)
            .await,
        "claims were never taken over"
    );
    relay.stop().await;
    if ends_with_the_relay {
        assert!(
            claimed_at.elapsed() < lease,
            "the dead relay's claims outlived it"
        );
    } else {
        assert!(
            claimed_at.elapsed() >= lease.mul_f32(0.9),
            "taken over before the lease ended"
        );
    }
    assert_order_per_key(&messages, &arrivals(&destination));
}

/// On shutdown the relay releases what it did not send: another relay can
/// claim it at once, without waiting for the lease.
pub async fn shutdown_releases_claims<H: SourceHarness>(harness: &H) {
    let messages = numbered_messages("events", 20, 2);
    harness.enqueue(messages.clone()).await;
    let destination = MemoryDestination::new();
    destination.delay_all(Duration::from_millis(100));
    let config = RelayConfig {
        max_concurrent_keys: 2,
        shutdown_timeout: Duration::from_millis(10),
        ..config()
    };
    let relay = run_relay(
        harness.relay(Duration::from_secs(60)).await,
        destination.clone(),
        config,
    );
    assert!(destination.wait_for(1, DEADLINE).await, "nothing was sent");
    relay.stop().await;
    let sent = destination.sent_count();
    let waiting = harness.waiting().await as usize;
    assert!(waiting > 0, "the relay was expected to stop before the end");
    assert_eq!(
        waiting + sent,
        messages.len(),
        "messages were lost or acked twice"
    );
    let next = harness.relay(Duration::from_secs(60)).await;
    let claimed = next.claim(1000).await.expect("claim");
    assert_eq!(claimed.len(), waiting, "shutdown left claims held");
}

/// A relay whose lease ran out cannot acknowledge rows another relay now
/// holds; its acknowledgement is not retried.
pub async fn stale_relay_is_fenced<H: SourceHarness>(harness: &H) {
    let lease = Duration::from_millis(500);
    let messages = numbered_messages("events", 3, 1);
    harness.enqueue(messages.clone()).await;
    let stale = harness.relay(lease).await;
    let mine = stale.claim(10).await.expect("claim");
    assert_eq!(mine.len(), 3);
    let other = harness.relay(Duration::from_secs(30)).await;
    let deadline = Instant::now() + DEADLINE;
    let theirs = loop {
        let claimed = other.claim(10).await.expect("claim");
        if !claimed.is_empty() {
            break claimed;
        }
        assert!(
            Instant::now() < deadline,
            "the expired lease was never taken over"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(theirs.len(), 3);
    // The stale ack changes nothing. It may say its lease was lost (a
    // transaction the database ended), but never as worth retrying.
    if let Err(err) = stale.ack(mine.id(), &mine).await {
        assert!(!err.is_temporary(), "a fenced ack asked for a retry: {err}");
    }
    assert_eq!(
        harness.waiting().await,
        3,
        "a stale relay removed rows it no longer held"
    );
    other.ack(theirs.id(), &theirs).await.expect("ack");
    assert_eq!(harness.waiting().await, 0);
}

/// A relay whose claim outlived its lease (a stall) and that claimed the
/// same rows again: a late report of the lost claim changes nothing in the
/// new claim, which still holds its rows until its own reports.
pub async fn lost_claims_never_touch_newer_ones<H: SourceHarness>(harness: &H) {
    let lease = Duration::from_millis(1000);
    let messages = numbered_messages("events", 3, 1);
    harness.enqueue(messages.clone()).await;
    let relay = harness.relay(lease).await;
    let lost = relay.claim(10).await.expect("claim");
    assert_eq!(lost.len(), 3);
    let deadline = Instant::now() + DEADLINE;
    let newer = loop {
        let claimed = relay.claim(10).await.expect("claim");
        if !claimed.is_empty() {
            break claimed;
        }
        assert!(
            Instant::now() < deadline,
            "the lost claim's rows were never claimed again"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(newer.len(), 3);
    assert_ne!(lost.id(), newer.id(), "two claims share an identity");
    if let Err(err) = relay.release(lost.id(), &lost).await {
        assert!(
            !err.is_temporary(),
            "a fenced report asked for a retry: {err}"
        );
    }
    let other = harness.relay(Duration::from_secs(30)).await;
    assert!(
        other.claim(10).await.expect("claim").is_empty(),
        "a report of the lost claim ended the newer claim of the same rows"
    );
    relay
        .ack(newer.id(), &newer)
        .await
        .expect("ack of the newer claim");
    assert!(
        eventually(DEADLINE, || async { harness.waiting().await == 0 }).await,
        "the newer claim's acknowledgement was lost"
    );
}

/// A destination's error of 100 KiB is stored cut short with the dead
/// letter: recording it never fails the report (a bounded column would
/// refuse it and lose the batch, again and again).
pub async fn a_long_error_is_stored_cut_short<H: SourceHarness>(harness: &H) {
    let messages = numbered_messages("events", 1, 2);
    harness.enqueue(messages.clone()).await;
    let destination = MemoryDestination::new();
    let reason = format!("refused: {}", "é".repeat(50 * 1024));
    destination.fail_permanently_with(messages[0].id, reason);
    let relay = run_relay(harness.relay(LEASE).await, destination.clone(), config());
    let stored = eventually(DEADLINE, || async {
        !harness.dead_letters().await.is_empty()
    })
    .await;
    let next_arrived = destination.wait_for(1, DEADLINE).await;
    relay.stop().await;
    assert!(
        stored,
        "the dead letter with a long error was never recorded"
    );
    assert!(next_arrived, "the key's next message never arrived");
    let dead = harness.dead_letters().await;
    let (id, error) = &dead[0];
    assert_eq!(*id, messages[0].id);
    assert!(error.starts_with("refused: éé"), "{error:.80}");
    assert!(
        error.len() <= outbox_core::MAX_ERROR_BYTES,
        "stored error of {} bytes",
        error.len()
    );
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

/// Claims stay within the source's byte budget: a claim stops before the
/// row that would take it past the budget, a row larger than the budget
/// comes alone, and everything arrives, each key in order.
pub async fn a_claim_stays_within_its_byte_budget<H: SourceHarness>(harness: &H) {
    const MIB: usize = 1 << 20;
    let budget = 5 * MIB / 2;
    let sized = |key: &str, size: usize, fill: u8| {
        Message::builder("events", key)
            .payload(vec![fill; size])
            .build()
            .unwrap()
    };
    let messages = vec![
        sized("big-a", MIB, b'1'),
        sized("big-a", MIB, b'2'),
        sized("big-b", 3 * MIB, b'3'),
        sized("big-a", MIB, b'4'),
        sized("big-b", 1024, b'5'),
        sized("big-a", MIB, b'6'),
    ];
    harness.enqueue(messages.clone()).await;
    let relay = harness.budgeted_relay(LEASE, budget).await;
    let mut claims = Vec::new();
    let deadline = Instant::now() + DEADLINE;
    while claims.iter().map(Vec::len).sum::<usize>() < messages.len() {
        assert!(Instant::now() < deadline, "claimed only {claims:?}");
        let claim = relay.claim(500).await.expect("claim");
        let bytes: usize = claim.iter().map(|m| m.payload.len()).sum();
        assert!(
            bytes <= budget || claim.len() == 1,
            "a claim of {} rows holds {bytes} payload bytes, over its budget of {budget}",
            claim.len()
        );
        for message in claim.iter() {
            let sent = messages.iter().find(|m| m.id == message.id).expect("known");
            assert_eq!(message.payload, sent.payload, "a payload came back changed");
        }
        if !claim.is_empty() {
            claims.push(
                claim
                    .iter()
                    .map(|m| m.payload[0] - b'0')
                    .collect::<Vec<u8>>(),
            );
            relay.ack(claim.id(), &claim).await.expect("ack");
        }
    }
    assert_eq!(
        claims,
        vec![vec![1, 2], vec![3], vec![4, 5, 6]],
        "claims in enqueue order, each cut before its budget, the large row alone"
    );
    assert_eq!(harness.waiting().await, 0);
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

fn ids(claim: &[Message]) -> Vec<uuid::Uuid> {
    claim.iter().map(|m| m.id).collect()
}
