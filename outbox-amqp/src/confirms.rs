//! Publisher confirms of the shared channel, read by one task that knows
//! which message each returned message belongs to.
//!
//! lapin 4 hands a returned (unroutable, `mandatory`) message to the next
//! confirm it completes, which need not be the returned message's own: of
//! several confirms completed by one multiple-ack it takes the first, and
//! an ack of another publish arriving between a return and its owner's ack
//! takes it too. Taken as they come, a routed message was then dead-lettered
//! as unroutable and the unroutable one counted as stored: lost.
//!
//! A returned message carries its `message_id`, so this task reads every
//! confirm of the shared channel and keeps the ids of messages returned to
//! another publish. lapin completes the confirm that takes a return no later
//! than the returned message's own (the broker sends the return before the
//! owner's ack, and lapin gives a waiting return to the first confirm it
//! completes), and this task sees completions in the order lapin made them
//! (one `FuturesUnordered`, whose ready queue is in wake order). So:
//! - a confirm without a return is stored, unless its id was returned to
//!   another publish before;
//! - a confirm with its own return is unroutable;
//! - a confirm with another message's return is ambiguous: its own return
//!   may still wait in lapin's queue. It is published again alone on a
//!   channel of its own, whose confirm cannot be paired wrongly (a copy if
//!   it was stored the first time: allowed; a loss: never).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use futures_util::stream::FuturesUnordered;
use futures_util::StreamExt;
use lapin::message::BasicReturnMessage;
use lapin::{Confirmation, PublisherConfirm};
use tokio::sync::{mpsc, oneshot};

/// How long an id returned to another publish is kept for its owner's
/// confirm: far longer than any confirm takes.
const KEEP_RETURNED: Duration = Duration::from_secs(600);

/// What became of one publish on the shared channel.
#[derive(Debug)]
pub(crate) enum Verdict {
    /// Acknowledged and routed.
    Stored,
    /// Acknowledged, and the broker returned it: no queue is bound for its
    /// routing key.
    Unroutable(Box<BasicReturnMessage>),
    /// Its confirm came with another message's return: whether it was
    /// routed is not known.
    Ambiguous,
    /// The broker refused to take it.
    Nacked,
}

struct Pending {
    id: String,
    confirm: PublisherConfirm,
    answer: oneshot::Sender<Result<Verdict, lapin::Error>>,
}

/// The sender side: registers a publish's confirm with the reading task.
#[derive(Clone)]
pub(crate) struct Confirms {
    pending: mpsc::UnboundedSender<Pending>,
}

impl Confirms {
    /// Starts the task that reads the shared channel's confirms; it ends
    /// when every `Confirms` clone is dropped and no confirm is left.
    pub fn start() -> Self {
        let (pending, incoming) = mpsc::unbounded_channel();
        tokio::spawn(read(incoming));
        Self { pending }
    }

    /// Hands over the confirm of the publish of message `id` and waits
    /// for its verdict.
    pub async fn verdict(
        &self,
        id: String,
        confirm: PublisherConfirm,
    ) -> Result<Verdict, lapin::Error> {
        let (answer, verdict) = oneshot::channel();
        let pending = Pending {
            id,
            confirm,
            answer,
        };
        if self.pending.send(pending).is_err() {
            return Err(stopped());
        }
        verdict.await.unwrap_or_else(|_| Err(stopped()))
    }
}

/// The error of a publish whose confirm can no longer be read: the task
/// reading them stopped with its channel.
fn stopped() -> lapin::Error {
    lapin::ErrorKind::InvalidChannelState(lapin::ChannelState::Closed, "confirms no longer read")
        .into()
}

async fn read(mut incoming: mpsc::UnboundedReceiver<Pending>) {
    let mut waiting = FuturesUnordered::new();
    // Ids returned to another publish's confirm, and when.
    let mut returned_elsewhere: HashMap<String, Instant> = HashMap::new();
    loop {
        tokio::select! {
            biased;
            pending = incoming.recv() => match pending {
                Some(Pending { id, confirm, answer }) => {
                    waiting.push(async move { (id, answer, confirm.await) });
                }
                None if waiting.is_empty() => return,
                None => {
                    while let Some(done) = waiting.next().await {
                        answer(done, &mut returned_elsewhere);
                    }
                    return;
                }
            },
            Some(done) = waiting.next(), if !waiting.is_empty() => {
                answer(done, &mut returned_elsewhere);
            }
        }
    }
}

type Done = (
    String,
    oneshot::Sender<Result<Verdict, lapin::Error>>,
    Result<Confirmation, lapin::Error>,
);

fn answer((id, answer, confirmed): Done, returned_elsewhere: &mut HashMap<String, Instant>) {
    let verdict = confirmed.map(|confirmation| decide(&id, confirmation, returned_elsewhere));
    // The sender may have given up (its deadline passed): nothing to tell.
    let _ = answer.send(verdict);
}

fn decide(
    id: &str,
    confirmation: Confirmation,
    returned_elsewhere: &mut HashMap<String, Instant>,
) -> Verdict {
    let (acked, returned) = match confirmation {
        Confirmation::Ack(returned) => (true, returned),
        Confirmation::Nack(returned) => (false, returned),
        Confirmation::NotRequested => (false, None),
    };
    let mine_returned_before = returned_elsewhere.remove(id).is_some();
    match returned {
        Some(returned) if returned_id(&returned) == Some(id) => {
            Verdict::Unroutable(Box::new(returned))
        }
        Some(returned) => {
            if let Some(other) = returned_id(&returned) {
                returned_elsewhere.retain(|_, at| at.elapsed() < KEEP_RETURNED);
                returned_elsewhere.insert(other.to_string(), Instant::now());
            }
            if acked {
                Verdict::Ambiguous
            } else {
                Verdict::Nacked
            }
        }
        None if !acked => Verdict::Nacked,
        // Returned to another publish before: unroutable, and published
        // alone again to get the broker's own words for it.
        None if mine_returned_before => Verdict::Ambiguous,
        None => Verdict::Stored,
    }
}

fn returned_id(returned: &BasicReturnMessage) -> Option<&str> {
    returned
        .delivery
        .properties
        .message_id()
        .as_ref()
        .map(|id| id.as_str())
}
