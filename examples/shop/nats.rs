//! The shop's events on NATS JetStream: stream `SHOP_<NAME>` on subjects
//! `shop.<name>.>`, read by an ordered consumer from the moment of connecting.

use futures_util::StreamExt;
use outbox::nats::async_nats::jetstream::consumer::{pull, DeliverPolicy};
use outbox::nats::async_nats::jetstream::stream;
use outbox::nats::{NatsConfig, NatsDestination};

use super::{decode, Broker, Result};

/// Connects to `OUTBOX_NATS_URL`, creates the stream if needed and starts
/// the consumer.
pub async fn connect(name: &str) -> Result<Broker<NatsDestination>> {
    let destination = NatsDestination::connect(NatsConfig {
        url: std::env::var("OUTBOX_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into()),
        ..NatsConfig::default()
    })
    .await
    .map_err(|err| format!("NATS at OUTBOX_NATS_URL: {err} (run scripts/services.sh up)"))?;
    let stream = destination
        .jetstream()
        .get_or_create_stream(stream::Config {
            name: format!("SHOP_{}", name.to_uppercase()),
            subjects: vec![format!("shop.{name}.>")],
            ..Default::default()
        })
        .await?;
    let address = format!("shop.{name}.orders");
    let consumer = stream
        .create_consumer(pull::OrderedConfig {
            filter_subject: address.clone(),
            deliver_policy: DeliverPolicy::New,
            ..Default::default()
        })
        .await?;
    let mut messages = consumer.messages().await?;
    let (sender, arrivals) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(Ok(message)) = messages.next().await {
            let incoming = match outbox::nats::incoming(&message) {
                Ok(incoming) => incoming,
                Err(err) => {
                    eprintln!("consumer: a message on {}: {err}", message.subject);
                    continue;
                }
            };
            let arrival = decode(incoming, &message.payload);
            if arrival.is_some_and(|arrival| sender.send(arrival).is_err()) {
                return;
            }
        }
    });
    Ok(Broker {
        destination,
        address,
        arrivals,
    })
}
