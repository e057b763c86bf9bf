//! The two hand-written relays the outbox's relay is compared with, on the
//! same servers and backlog.

use crate::backlog::Backlog;
use crate::broker::Broker;

/// The ceiling: in one transaction, claim and delete 1,000 rows, publish
/// them all with their acknowledgements in flight together, commit; repeat
/// until the table is empty. No grouping, retries or ordering across relays.
pub async fn ceiling(backlog: &Backlog, broker: &Broker) {
    loop {
        let (claim, rows) = backlog.claim(1000).await;
        if rows.is_empty() {
            return;
        }
        broker.publish_all(&rows).await;
        backlog.finish(claim, &rows).await;
    }
}

/// The naive relay, as simple outbox libraries do it: claim one message,
/// publish it, wait for its acknowledgement, delete it, commit; `count`
/// times.
pub async fn naive(backlog: &Backlog, broker: &Broker, count: usize) {
    for _ in 0..count {
        let (claim, rows) = backlog.claim(1).await;
        assert_eq!(rows.len(), 1, "naive: the backlog ran out");
        broker.publish_all(&rows).await;
        backlog.finish(claim, &rows).await;
    }
}
