//! The writers' ordering guarantee, on a real database: two transactions
//! writing one key commit one after the other, so `seq` is commit order.

use std::time::Duration;

use outbox_core::Message;

use crate::{eventually, OpenWrites};

const DEADLINE: Duration = Duration::from_secs(30);

/// A second writer of a key waits for the first one's commit, whether it
/// writes one message or several, and the key's rows end in that order.
pub async fn second_writer_of_a_key_waits<H: OpenWrites>(harness: &H) {
    for many in [false, true] {
        let key = if many {
            "contested-many"
        } else {
            "contested-one"
        };
        let message = |payload: &str| {
            Message::builder("orders", key)
                .payload(payload.to_string())
                .build()
                .expect("message")
        };
        let (first, second) = (message("first"), message("second"));
        let open = harness.begin_and_enqueue(vec![first.clone()]).await;
        let writer = tokio::spawn({
            let (harness, second) = (harness.clone(), second.clone());
            async move {
                let other = Message::builder("orders", "uncontested")
                    .build()
                    .expect("message");
                let batch = if many {
                    vec![other, second]
                } else {
                    vec![second]
                };
                let open = harness.begin_and_enqueue(batch).await;
                harness.commit(open).await;
            }
        });
        let pending = &writer;
        assert!(
            eventually(DEADLINE, || async move {
                pending.is_finished() || harness.writers_waiting().await == 1
            })
            .await
                && !writer.is_finished(),
            "the second writer of a key did not wait for the first (several messages: {many})"
        );
        harness.commit(open).await;
        tokio::time::timeout(DEADLINE, writer)
            .await
            .expect("the second writer went on after the first committed")
            .expect("the second writer");
        assert_eq!(harness.ids_in_order(key).await, vec![first.id, second.id]);
    }
}
