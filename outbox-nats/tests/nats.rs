//! outbox-nats against a real nats-server with JetStream (`OUTBOX_NATS_URL`,
//! default `nats://127.0.0.1:4222`). Every test owns its stream and subjects;
//! the restart test runs a server of its own on a spare port.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use async_nats::jetstream::{self, stream};
use futures_util::StreamExt;
use outbox_core::memory::MemorySource;
use outbox_core::{Backoff, CloudEvents, CloudEventsBinding, Destination, Message, RelayConfig};
use outbox_nats::{NatsConfig, NatsDestination, NatsMode, NATS_MSG_ID};
use outbox_testkit::{
    assert_order_per_key, assert_recovered, eventually, numbered_messages, run_relay,
    DestinationHarness, Received,
};
use uuid::Uuid;

const DEADLINE: Duration = Duration::from_secs(60);

fn url() -> String {
    std::env::var("OUTBOX_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".to_string())
}

fn config(url: String) -> NatsConfig {
    NatsConfig {
        url,
        ack_timeout: Duration::from_secs(2),
        ..NatsConfig::default()
    }
}

/// A fresh stream `OUTBOX_TEST_<NAME>` on subjects `outbox-test.<name>.>`.
async fn fresh_stream(context: &jetstream::Context, name: &str) -> stream::Stream {
    let stream_name = format!("OUTBOX_TEST_{}", name.to_uppercase());
    let _ = context.delete_stream(&stream_name).await;
    context
        .get_or_create_stream(stream::Config {
            name: stream_name,
            subjects: vec![format!("outbox-test.{name}.>")],
            ..Default::default()
        })
        .await
        .expect("create stream")
}

/// Everything the stream holds, in stream order.
async fn stored(stream: &stream::Stream, count: usize, timeout: Duration) -> Vec<Received> {
    let mut stream = stream.clone();
    eventually(timeout, || {
        let mut stream = stream.clone();
        async move {
            stream
                .info()
                .await
                .map(|i| i.state.messages as usize >= count)
                .unwrap_or(false)
        }
    })
    .await;
    let last = stream
        .info()
        .await
        .expect("stream info")
        .state
        .last_sequence;
    let mut received = Vec::new();
    for seq in 1..=last {
        let Ok(message) = stream.get_raw_message(seq).await else {
            continue;
        };
        let incoming =
            outbox_nats::incoming_from_headers(&message.headers).expect("an outbox message");
        let id = incoming.headers[NATS_MSG_ID].parse::<Uuid>().expect("uuid");
        assert_eq!(id, incoming.id, "Nats-Msg-Id and the outbox header differ");
        received.push(Received {
            id,
            payload: message.payload.to_vec(),
            event_type: incoming.event_type,
            ordering_key: incoming.ordering_key,
            headers: incoming.headers,
        });
    }
    received
}

struct NatsStream {
    name: &'static str,
    stream: stream::Stream,
    max_payload: usize,
}

impl DestinationHarness for NatsStream {
    type Destination = NatsDestination;

    async fn destination(&self) -> NatsDestination {
        NatsDestination::connect(config(url()))
            .await
            .expect("connect")
    }

    async fn cloud_events_destination(
        &self,
        cloud_events: CloudEvents,
    ) -> Option<(NatsDestination, CloudEventsBinding)> {
        let config = NatsConfig {
            cloud_events: Some(cloud_events),
            ..config(url())
        };
        let destination = NatsDestination::connect(config).await.expect("connect");
        Some((destination, CloudEventsBinding::Nats))
    }

    fn address(&self) -> String {
        format!("outbox-test.{}.events", self.name)
    }

    async fn received(&self, count: usize, timeout: Duration) -> Vec<Received> {
        stored(&self.stream, count, timeout).await
    }

    fn refused_message(&self) -> Option<Message> {
        Some(
            Message::builder(self.address(), "too-large")
                .payload(vec![b'x'; self.max_payload + 1])
                .build()
                .unwrap(),
        )
    }

    /// Header names and values async-nats would panic on.
    fn unfit_messages(&self) -> Vec<(&'static str, Message)> {
        let unfit = |key: &str| Message::builder(self.address(), key);
        [
            (
                "header name \"order:id\"",
                unfit("colon").header("order:id", "7"),
            ),
            ("header name \"café\"", unfit("accent").header("café", "7")),
            (
                "header \"trace\" has a line break",
                unfit("line-break").header("trace", "a\r\nb"),
            ),
            (
                "the event type has a line break",
                unfit("event-type").event_type("Order\nPlaced"),
            ),
        ]
        .into_iter()
        .map(|(expected, builder)| (expected, builder.build().unwrap()))
        .collect()
    }
}

async fn nats_stream(scenario: &'static str) -> NatsStream {
    let destination = NatsDestination::connect(config(url()))
        .await
        .expect("NATS reachable at OUTBOX_NATS_URL");
    let stream = fresh_stream(destination.jetstream(), scenario).await;
    let max_payload = destination.client().server_info().max_payload;
    NatsStream {
        name: scenario,
        stream,
        max_payload,
    }
}

mod conformance {
    use super::*;
    outbox_testkit::destination_conformance!(nats_stream);
}

#[tokio::test]
async fn a_message_sent_twice_is_stored_once() {
    let harness = nats_stream("duplicate").await;
    let destination = harness.destination().await;
    let message = Message::builder(harness.address(), "k")
        .payload("once")
        .build()
        .unwrap();
    destination.send(&message).await.unwrap();
    destination.send(&message).await.unwrap();
    let received = harness.received(1, Duration::from_secs(5)).await;
    let mut stream = harness.stream.clone();
    assert_eq!(
        stream.info().await.unwrap().state.messages,
        1,
        "the stream kept a duplicate"
    );
    assert_eq!(received[0].id, message.id);
}

#[tokio::test]
async fn a_subject_without_a_stream_is_a_permanent_error() {
    let destination = NatsDestination::connect(config(url())).await.unwrap();
    let message = Message::builder("outbox-test.no-stream-here", "k")
        .build()
        .unwrap();
    let err = destination.send(&message).await.unwrap_err();
    assert!(!err.is_temporary(), "{}", err.report());
    assert!(
        err.report()
            .contains("no stream listens on subject outbox-test.no-stream-here"),
        "{}",
        err.report()
    );
}

/// A server whose JetStream does not answer (here: not enabled) gives the
/// same "no responders" as a missing stream, but that is what a publish
/// gets while JetStream restarts: temporary, never a dead letter at once.
#[tokio::test]
async fn a_jetstream_that_does_not_answer_is_a_temporary_error() {
    let server = OwnServer::start_without_jetstream();
    server.wait_until_up().await;
    let destination = NatsDestination::connect(config(server.url()))
        .await
        .unwrap();
    let message = Message::builder("outbox-test.no-jetstream", "k")
        .build()
        .unwrap();
    let err = destination.send(&message).await.unwrap_err();
    assert!(err.is_temporary(), "{}", err.report());
    assert!(
        err.report().contains("is JetStream enabled and up?"),
        "{}",
        err.report()
    );
}

#[tokio::test]
async fn core_mode_publishes_to_subscribers() {
    let destination = NatsDestination::connect(NatsConfig {
        mode: NatsMode::Core,
        subject_prefix: "outbox-test.core.".to_string(),
        ..config(url())
    })
    .await
    .unwrap();
    let mut subscription = destination
        .client()
        .subscribe("outbox-test.core.events")
        .await
        .unwrap();
    destination.client().flush().await.unwrap();
    let messages = numbered_messages("events", 3, 5);
    let source = MemorySource::new(Duration::from_secs(30));
    source.enqueue(messages.clone());
    let relay = run_relay(source, destination, fast());
    let mut arrivals = Vec::new();
    while arrivals.len() < messages.len() {
        let message = tokio::time::timeout(DEADLINE, subscription.next())
            .await
            .expect("timed out")
            .unwrap();
        let headers = message.headers.expect("headers");
        let id: Uuid = headers.get(NATS_MSG_ID).unwrap().as_str().parse().unwrap();
        let key = messages
            .iter()
            .find(|m| m.id == id)
            .unwrap()
            .ordering_key
            .clone();
        arrivals.push((key, id));
    }
    relay.stop().await;
    assert_order_per_key(&messages, &arrivals);
}

fn fast() -> RelayConfig {
    RelayConfig {
        send_timeout: Duration::from_secs(3),
        max_attempts: 1000,
        poll_interval_max: Duration::from_millis(50),
        backoff: Backoff {
            initial: Duration::from_millis(50),
            max: Duration::from_millis(500),
            ..Backoff::default()
        },
        ..RelayConfig::default()
    }
}

/// A nats-server of the test's own, with JetStream on a file store that
/// survives restarts.
struct OwnServer {
    port: u16,
    dir: PathBuf,
    child: Option<Child>,
    jetstream: bool,
}

impl OwnServer {
    fn start() -> Self {
        Self::start_with(true)
    }

    /// A server with core NATS only.
    fn start_without_jetstream() -> Self {
        Self::start_with(false)
    }

    fn start_with(jetstream: bool) -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = std::env::temp_dir().join(format!("outbox-nats-{port}-{}", Uuid::now_v7()));
        let mut server = OwnServer {
            port,
            dir,
            child: None,
            jetstream,
        };
        server.restart();
        server
    }

    fn restart(&mut self) {
        let bin = outbox_testkit::nats_server_bin();
        let mut command = Command::new(&bin);
        command.args(["-a", "127.0.0.1", "-p", &self.port.to_string()]);
        if self.jetstream {
            command.arg("-js").arg("-sd").arg(&self.dir);
        }
        let child = command
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|err| panic!("cannot run {bin} (run scripts/services.sh up, or set OUTBOX_NATS_SERVER_BIN): {err}"));
        self.child = Some(child);
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().ok();
            child.wait().ok();
        }
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    async fn wait_until_up(&self) {
        let up = eventually(Duration::from_secs(20), || async {
            tokio::net::TcpStream::connect(("127.0.0.1", self.port))
                .await
                .is_ok()
        })
        .await;
        assert!(up, "own nats-server did not start on {}", self.port);
    }
}

impl Drop for OwnServer {
    fn drop(&mut self) {
        self.stop();
        std::fs::remove_dir_all(&self.dir).ok();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_resumes_after_the_server_restarts_and_nothing_is_lost() {
    let mut server = OwnServer::start();
    server.wait_until_up().await;
    let destination = NatsDestination::connect(config(server.url()))
        .await
        .unwrap();
    let stream = fresh_stream(destination.jetstream(), "restart").await;
    let messages = numbered_messages("outbox-test.restart.events", 20, 100);
    let source = MemorySource::new(Duration::from_secs(30));
    source.enqueue(messages.clone());
    let config = RelayConfig {
        batch_size: 50,
        max_concurrent_keys: 4,
        ..fast()
    };
    let relay = run_relay(source.clone(), destination, config);
    let stats = relay.stats.clone();
    assert!(
        eventually(DEADLINE, || async {
            stats.snapshot().counts.published >= 300
        })
        .await,
        "nothing flowed"
    );

    server.stop();
    let published_at_stop = stats.snapshot().counts.published;
    tokio::time::sleep(Duration::from_millis(500)).await;
    server.restart();
    server.wait_until_up().await;

    let drained = eventually(DEADLINE, || async { source.waiting() == 0 }).await;
    relay.stop().await;
    assert_recovered(&source, drained, published_at_stop, messages.len());
    let received = stored(&stream, messages.len(), DEADLINE).await;
    let subject_messages: Vec<(String, Uuid)> = received
        .iter()
        .map(|r| {
            (
                messages
                    .iter()
                    .find(|m| m.id == r.id)
                    .unwrap()
                    .ordering_key
                    .clone(),
                r.id,
            )
        })
        .collect();
    let duplicates = assert_order_per_key(&messages, &subject_messages);
    println!(
        "restart: {} messages, stopped after {published_at_stop}, {} retried, {duplicates} duplicates stored",
        messages.len(),
        stats.snapshot().counts.retried
    );
}
