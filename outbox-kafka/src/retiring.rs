//! A producer whose last holder, when it lets go, destroys it on a thread
//! of its own.

use std::ops::Deref;

use rdkafka::producer::FutureProducer;

/// The producer sends share. Destroying a librdkafka producer purges its
/// queues and joins its threads, which blocks; done by whichever send
/// dropped the last clone, it stalled a runtime worker (and, when the
/// destination replaced its producer, while holding the lock every send
/// takes). The last `Arc<Retiring>` to go hands the producer to a plain
/// thread to destroy.
pub(crate) struct Retiring(Option<FutureProducer>);

impl Retiring {
    pub fn new(producer: FutureProducer) -> Self {
        Self(Some(producer))
    }
}

impl Deref for Retiring {
    type Target = FutureProducer;

    fn deref(&self) -> &FutureProducer {
        self.0.as_ref().expect("only taken on drop")
    }
}

impl Drop for Retiring {
    fn drop(&mut self) {
        if let Some(producer) = self.0.take() {
            let destroy = std::thread::Builder::new()
                .name("outbox-kafka-retire".into())
                .spawn(move || drop(producer));
            if let Err(err) = destroy {
                // No thread to be had: destroying it here blocks, but loses
                // nothing.
                tracing::warn!(error = %err, "no thread to destroy a kafka producer on");
            }
        }
    }
}
