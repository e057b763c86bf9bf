//! The AMQP destination: one connection and one confirm-mode channel,
//! reopened when lost, and a channel of its own for a publish sent again
//! alone after the broker closed the shared one.

use std::future::{poll_fn, Future};
use std::pin::pin;
use std::sync::{Arc, Mutex as StdMutex, PoisonError};
use std::task::Poll;
use std::time::{SystemTime, UNIX_EPOCH};

use lapin::message::BasicReturnMessage;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::tcp::OwnedTLSConfig;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties,
    DefaultConnectionBuilder, PublisherConfirm,
};
use outbox_core::{
    wrap_as_cloud_event, CloudEventsBinding, Destination, Error, Message, HEADER_EVENT_TYPE,
    HEADER_MESSAGE_ID, HEADER_ORDERING_KEY,
};
use tokio::sync::RwLock;

use crate::config::CONNECT_TIMEOUT;
use crate::confirms::{Confirms, Verdict};
use crate::error::{breaks_link, classify, closed_the_channel};
use crate::{AmqpConfig, Route};
use outbox_core::redact_url;

#[derive(Clone)]
struct Link {
    /// Kept so the connection lives as long as its channel; it also opens
    /// the channels of the publishes made alone.
    connection: Arc<Connection>,
    channel: Channel,
    /// Reads the shared channel's confirms (see `confirms.rs`).
    confirms: Confirms,
}

/// Publishes outbox messages to RabbitMQ; see the crate docs.
///
/// lapin does not reconnect by itself here: when the connection or channel
/// is lost, the sends that were waiting for a confirm fail as temporary
/// errors (the relay sends them again; `message_id` lets consumers drop the
/// copies that did arrive), and the next send opens a new connection and a
/// new confirm-mode channel.
///
/// Clones share the connection and channel, so several relays in one
/// process can publish through one connection.
#[derive(Clone)]
pub struct AmqpDestination {
    config: Arc<AmqpConfig>,
    /// The CA certificates of `config.root_certificates`, read at connect.
    tls: Arc<OwnedTLSConfig>,
    link: Arc<RwLock<Option<Link>>>,
    /// Held while lapin numbers a publish and queues its frames. lapin
    /// numbers a publish (its delivery tag, which the broker's confirm names)
    /// before it builds the frames and queues them, so two publishes on one
    /// channel from two threads could reach the broker in the other order
    /// than numbered: each would then take the other's confirm, and a
    /// message the broker refused would count as stored (seen with a message
    /// over the broker's size limit published among others: confirmed, never
    /// stored).
    publish_order: Arc<StdMutex<()>>,
}

impl std::fmt::Debug for AmqpDestination {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AmqpDestination")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl AmqpDestination {
    /// Checks `config` and connects, so a wrong URL or credentials fail at
    /// start-up.
    pub async fn connect(config: AmqpConfig) -> Result<Self, Error> {
        config.validate()?;
        let tls = OwnedTLSConfig {
            identity: config.client_identity()?,
            cert_chain: config.root_certificates_pem()?,
        };
        let destination = Self {
            config: Arc::new(config),
            tls: Arc::new(tls),
            link: Arc::default(),
            publish_order: Arc::default(),
        };
        destination.channel().await?;
        Ok(destination)
    }

    /// A connected confirm-mode channel, opening one if needed.
    pub async fn channel(&self) -> Result<Channel, Error> {
        Ok(self.link().await?.channel)
    }

    /// The connection and its shared confirm-mode channel, opening them if
    /// the channel is not connected.
    async fn link(&self) -> Result<Link, Error> {
        if let Some(link) = self.link.read().await.as_ref() {
            if link.channel.status().connected() {
                return Ok(link.clone());
            }
        }
        let mut link = self.link.write().await;
        if let Some(current) = link.as_ref() {
            if current.channel.status().connected() {
                return Ok(current.clone());
            }
            tracing::warn!("amqp channel lost; reconnecting");
        }
        let opened = tokio::time::timeout(CONNECT_TIMEOUT, self.open())
            .await
            .map_err(|_| {
                Error::temporary(format!(
                    "amqp: no connection to {} within {CONNECT_TIMEOUT:?}",
                    redact_url(&self.config.url)
                ))
            })??;
        *link = Some(opened.clone());
        Ok(opened)
    }

    async fn open(&self) -> Result<Link, Error> {
        let properties = ConnectionProperties::default()
            .with_connection_name(self.config.connection_name.clone().into());
        let connection = DefaultConnectionBuilder::new()
            .map_err(classify)?
            .with_uri_str(self.config.url.clone())
            .with_properties(properties)
            .with_tls_config(OwnedTLSConfig::clone(&self.tls))
            .connect()
            .await
            .map_err(classify)?;
        let channel = confirm_channel(&connection).await?;
        Ok(Link {
            connection: Arc::new(connection),
            channel,
            confirms: Confirms::start(),
        })
    }

    /// Publishes `message` alone on a channel of its own, closed after.
    ///
    /// RabbitMQ answers a publish it refuses (an exchange that does not
    /// exist, access refused, a message over its size limit) by closing the
    /// channel, and every publish still waiting for a confirm on that channel
    /// fails with the same error. Sent alone, a message gets back only its
    /// own error: the one at fault fails again, the others go through.
    async fn publish_alone(&self, message: &Message, route: &Route) -> Result<(), Error> {
        let connection = self.link().await?.connection;
        let channel = confirm_channel(&connection).await?;
        let confirmed = match publish(&channel, message, route, &self.publish_order).await {
            Ok(confirm) => confirm.await,
            Err(err) => Err(err),
        };
        if channel.status().connected() {
            // Closing a channel that is still open; nothing to report if the
            // broker closed it already.
            let _ = channel.close(200, "OK".into()).await;
        }
        confirmed.map_err(classify).and_then(|c| verdict(c, route))
    }

    /// Forgets `channel` if it is still the current one, so the next send
    /// reconnects.
    async fn drop_link(&self, channel: &Channel) {
        let mut link = self.link.write().await;
        if link
            .as_ref()
            .is_some_and(|l| l.channel.id() == channel.id())
        {
            *link = None;
        }
    }
}

/// The longest AMQP short string, in bytes.
const SHORT_STRING_MAX: usize = 255;

/// AMQP carries the exchange, the routing key, header names and the `type`
/// and `content-type` properties as short strings of at most 255 bytes, and
/// lapin panics on a longer one. Such a message can never be published, so
/// it is a permanent error naming the field, and the relay dead-letters it
/// at once instead of retrying a panic.
fn short_strings_fit(message: &Message, route: &Route) -> Result<(), Error> {
    let fields = [
        ("exchange", Some(route.exchange.as_str())),
        ("routing key", Some(route.routing_key.as_str())),
        ("event type", message.event_type.as_deref()),
        (
            "content-type header",
            message.headers.get("content-type").map(String::as_str),
        ),
    ]
    .into_iter()
    .filter_map(|(what, text)| Some((what, text?)))
    .chain(
        message
            .headers
            .keys()
            .map(|name| ("header name", name.as_str())),
    );
    for (what, text) in fields {
        if text.len() > SHORT_STRING_MAX {
            let start: String = text.chars().take(32).collect();
            return Err(Error::permanent(format!(
                "message {}: the {what} {start:?}... is {} bytes long; AMQP allows at most \
                 {SHORT_STRING_MAX}",
                message.id,
                text.len()
            )));
        }
    }
    Ok(())
}

fn properties(message: &Message) -> BasicProperties {
    let mut headers = FieldTable::default();
    for (name, value) in &message.headers {
        headers.insert(
            name.as_str().into(),
            AMQPValue::LongString(LongString::from(value.as_str())),
        );
    }
    let id = message.id.to_string();
    headers.insert(
        HEADER_MESSAGE_ID.into(),
        AMQPValue::LongString(LongString::from(id.as_str())),
    );
    headers.insert(
        HEADER_ORDERING_KEY.into(),
        AMQPValue::LongString(LongString::from(message.ordering_key.as_str())),
    );
    let mut properties = BasicProperties::default()
        .with_delivery_mode(2)
        .with_message_id(ShortString::from(id))
        .with_timestamp(
            message
                .created_at
                .timestamp()
                .max(0)
                .try_into()
                .unwrap_or_else(|_| {
                    SystemTime::now()
                        .duration_since(UNIX_EPOCH)
                        .unwrap_or_default()
                        .as_secs()
                }),
        );
    if let Some(event_type) = &message.event_type {
        properties = properties.with_type(ShortString::from(event_type.as_str()));
        headers.insert(
            HEADER_EVENT_TYPE.into(),
            AMQPValue::LongString(LongString::from(event_type.as_str())),
        );
    }
    if let Some(content_type) = message.headers.get("content-type") {
        properties = properties.with_content_type(ShortString::from(content_type.as_str()));
    }
    properties.with_headers(headers)
}

impl Destination for AmqpDestination {
    type Item = Message;

    fn messaging_system(&self) -> &'static str {
        "rabbitmq"
    }

    async fn send(&self, message: &Message) -> Result<(), Error> {
        let message = &*wrap_as_cloud_event(
            self.config.cloud_events.as_ref(),
            message,
            CloudEventsBinding::Amqp,
        );
        let route = (self.config.route)(message);
        short_strings_fit(message, &route)?;
        let link = self.link().await?;
        let published = match publish(&link.channel, message, &route, &self.publish_order).await {
            Ok(confirm) => link.confirms.verdict(message.id.to_string(), confirm).await,
            Err(err) => Err(err),
        };
        match published {
            Ok(Verdict::Stored) => Ok(()),
            Ok(Verdict::Unroutable(returned)) => Err(unroutable(&returned, &route)),
            // Its confirm came with another message's return: see
            // confirms.rs. Alone, the answer is its own.
            Ok(Verdict::Ambiguous) => self.publish_alone(message, &route).await,
            Ok(Verdict::Nacked) => Err(nacked()),
            Err(err) => {
                if breaks_link(&err) {
                    self.drop_link(&link.channel).await;
                }
                if closed_the_channel(&err) {
                    // Perhaps for another publish's fault: see publish_alone.
                    return self.publish_alone(message, &route).await;
                }
                Err(classify(err))
            }
        }
    }
}

/// A new channel on `connection`, in publisher-confirm mode.
async fn confirm_channel(connection: &Connection) -> Result<Channel, Error> {
    let channel = connection.create_channel().await.map_err(classify)?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .map_err(classify)?;
    Ok(channel)
}

/// Publishes `message` persistent and mandatory on `channel` and returns
/// the broker's confirm to wait for.
///
/// lapin numbers the publish and queues its frames in the first poll of
/// `basic_publish`, so that poll is made holding `order` (see
/// `AmqpDestination::publish_order`); the wait for the frames to be written
/// and for the confirm is not.
async fn publish(
    channel: &Channel,
    message: &Message,
    route: &Route,
    order: &StdMutex<()>,
) -> Result<PublisherConfirm, lapin::Error> {
    let mut publishing = pin!(channel.basic_publish(
        route.exchange.as_str().into(),
        route.routing_key.as_str().into(),
        BasicPublishOptions {
            mandatory: true,
            immediate: false,
        },
        &message.payload,
        properties(message),
    ));
    let first = poll_fn(|cx| {
        let _numbered_and_queued = order.lock().unwrap_or_else(PoisonError::into_inner);
        Poll::Ready(publishing.as_mut().poll(cx))
    })
    .await;
    match first {
        Poll::Ready(confirm) => confirm,
        Poll::Pending => publishing.await,
    }
}

/// What the broker's confirm says of a publish to `route` made alone on a
/// channel of its own, where any returned message is this one.
fn verdict(confirmation: Confirmation, route: &Route) -> Result<(), Error> {
    match confirmation {
        Confirmation::Ack(None) => Ok(()),
        Confirmation::Ack(Some(returned)) => Err(unroutable(&returned, route)),
        Confirmation::Nack(_) => Err(nacked()),
        Confirmation::NotRequested => Err(Error::temporary("amqp: channel is not in confirm mode")),
    }
}

fn unroutable(returned: &BasicReturnMessage, route: &Route) -> Error {
    Error::permanent(format!(
        "amqp: unroutable: exchange {:?} has no queue bound for routing key {:?} ({} {})",
        route.exchange, route.routing_key, returned.reply_code, returned.reply_text
    ))
}

fn nacked() -> Error {
    Error::temporary("amqp: the broker refused to take the message (nack)")
}
