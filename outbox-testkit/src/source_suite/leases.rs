//! Scenarios of leases and fencing: a dead relay's claims are taken over, a
//! stopped one's released, a stale one's reports change nothing.

use std::time::{Duration, Instant};

use outbox_core::memory::MemoryDestination;
use outbox_core::{RelayConfig, Source};

use super::{config, DEADLINE, LEASE};
use crate::arrivals;
use crate::verify::{assert_order_per_key, eventually, numbered_messages, run_relay};
use crate::SourceHarness;

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

/// A relay that claimed and died without releasing: its claims are taken
/// over once the lease passes (or at once, where they end with the relay's
/// transaction), and nothing is lost.
pub async fn dead_relay_claims_taken_over<H: SourceHarness>(harness: &H) {
    let ends_with_the_relay = harness.claims_end_with_the_relay();
    // Where claims end with the relay, the survivor must deliver before the
    // lease would have ended: a lease long enough for a slow machine to
    // start a relay (a WAL source connects, takes the slot and decodes),
    // and still far longer than that takes, so claims that outlived the
    // dead relay fail the check. Otherwise the test waits the lease out.
    let lease = if ends_with_the_relay {
        Duration::from_secs(5)
    } else {
        Duration::from_millis(1500)
    };
    let messages = numbered_messages("events", 5, 4);
    harness.enqueue(messages.clone()).await;
    let crashed = harness.relay(lease).await;
    let held = crashed.claim(100).await.expect("claim");
    let claimed_at = Instant::now();
    assert_eq!(held.len(), messages.len());
    drop(crashed);

    let survivor = harness.relay(lease).await;
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
    // The rows come free as the stale claim's lease ends; a claim made in
    // that moment may find some of them still held (with lanes, a claim
    // scans its own lane, then the others: the lease can end in between),
    // so the other relay claims until it holds all three, in one claim or
    // more.
    let deadline = Instant::now() + DEADLINE;
    let mut theirs = Vec::new();
    let mut held = 0;
    while held < 3 {
        let claimed = other.claim(10).await.expect("claim");
        if !claimed.is_empty() {
            held += claimed.len();
            theirs.push(claimed);
            continue;
        }
        assert!(
            Instant::now() < deadline,
            "the expired lease was never taken over"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(held, 3);
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
    for claim in &theirs {
        other.ack(claim.id(), claim).await.expect("ack");
    }
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
