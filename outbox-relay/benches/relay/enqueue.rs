//! What an outbox message adds to a business transaction: 8 writers commit
//! one-row transactions for a while, with and without a message in each.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use outbox_core::Message;

use crate::backlog::Backlog;
use crate::KEYS;

/// How many writers (or consumers) commit at once.
pub const WRITERS: usize = 8;

/// Transactions per second and the median transaction time of one mode.
pub struct Cost {
    pub per_second: f64,
    pub p50: Duration,
}

/// Runs the writers for `seconds`, each transaction inserting one order
/// row and, `with_message`, one outbox message of 200 bytes.
pub async fn measure(backlog: &Backlog, with_message: bool, seconds: u64) -> Cost {
    backlog.orders_table().await;
    backlog.truncate().await;
    let backlog = backlog.clone();
    timed(seconds, move |i| {
        let backlog = backlog.clone();
        async move {
            let message = with_message.then(|| {
                Message::builder("outbox-bench.orders", format!("key-{}", i % KEYS))
                    .payload(vec![b'x'; 200])
                    .build()
                    .expect("message")
            });
            backlog.business_transaction(message.as_ref()).await;
        }
    })
    .await
}

/// Runs [`WRITERS`] tasks for `seconds`, each calling `transaction(i)`
/// (`i` counts that task's calls across all tasks) one after the other,
/// and times every call.
pub async fn timed<F, Fut>(seconds: u64, transaction: F) -> Cost
where
    F: Fn(usize) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    let times: Arc<Mutex<Vec<Duration>>> = Arc::default();
    let started = Instant::now();
    let end = started + Duration::from_secs(seconds);
    let writers: Vec<_> = (0..WRITERS)
        .map(|writer| {
            let (transaction, times) = (transaction.clone(), times.clone());
            tokio::spawn(async move {
                let mut i = writer;
                while Instant::now() < end {
                    let began = Instant::now();
                    transaction(i).await;
                    times.lock().unwrap().push(began.elapsed());
                    i += WRITERS;
                }
            })
        })
        .collect();
    for writer in writers {
        writer.await.expect("writer");
    }
    let elapsed = started.elapsed().as_secs_f64();
    let mut times = std::mem::take(&mut *times.lock().unwrap());
    times.sort();
    Cost {
        per_second: times.len() as f64 / elapsed,
        p50: times[times.len() / 2],
    }
}
