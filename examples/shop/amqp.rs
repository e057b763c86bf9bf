//! The shop's events on RabbitMQ: published to `amq.topic` with routing key
//! `shop.<name>.orders`, read from an exclusive queue bound to it.

use futures_util::StreamExt;
use outbox::amqp::lapin::options::{BasicConsumeOptions, QueueBindOptions, QueueDeclareOptions};
use outbox::amqp::lapin::types::FieldTable;
use outbox::amqp::{AmqpConfig, AmqpDestination};

use super::{decode, Broker, Result};

/// Connects to `OUTBOX_AMQP_URL`, binds a queue of the consumer's own and
/// starts consuming.
pub async fn connect(name: &str) -> Result<Broker<AmqpDestination>> {
    let destination = AmqpDestination::connect(AmqpConfig {
        url: std::env::var("OUTBOX_AMQP_URL")
            .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into()),
        ..AmqpConfig::default()
    })
    .await
    .map_err(|err| format!("RabbitMQ at OUTBOX_AMQP_URL: {err} (run scripts/services.sh up)"))?;
    let routing_key = format!("shop.{name}.orders");
    let channel = destination.channel().await?;
    let own = QueueDeclareOptions {
        exclusive: true,
        auto_delete: true,
        ..Default::default()
    };
    let queue = channel
        .queue_declare("".into(), own, FieldTable::default())
        .await?;
    channel
        .queue_bind(
            queue.name().clone(),
            "amq.topic".into(),
            routing_key.as_str().into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let no_ack = BasicConsumeOptions {
        no_ack: true,
        ..Default::default()
    };
    let mut deliveries = channel
        .basic_consume(
            queue.name().clone(),
            "shop-consumer".into(),
            no_ack,
            FieldTable::default(),
        )
        .await?;
    let (sender, arrivals) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let _channel = channel;
        while let Some(Ok(delivery)) = deliveries.next().await {
            let incoming = match outbox::amqp::incoming(&delivery) {
                Ok(incoming) => incoming,
                Err(err) => {
                    eprintln!("consumer: {err}");
                    continue;
                }
            };
            let arrival = decode(incoming, &delivery.data);
            if arrival.is_some_and(|arrival| sender.send(arrival).is_err()) {
                return;
            }
        }
    });
    Ok(Broker {
        destination,
        address: format!("amq.topic/{routing_key}"),
        arrivals,
    })
}
