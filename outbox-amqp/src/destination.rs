//! The AMQP destination: one connection and one confirm-mode channel,
//! reopened when lost.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::tcp::OwnedTLSConfig;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties,
    DefaultConnectionBuilder,
};
use outbox_core::{Destination, Error, Message, HEADER_EVENT_TYPE, HEADER_MESSAGE_ID};
use tokio::sync::RwLock;

use crate::config::CONNECT_TIMEOUT;
use crate::error::{breaks_link, classify};
use crate::{AmqpConfig, Route};
use outbox_core::redact_url;

struct Link {
    // Kept so the connection lives as long as its channel.
    _connection: Connection,
    channel: Channel,
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
            identity: None,
            cert_chain: config.root_certificates_pem()?,
        };
        let destination = Self {
            config: Arc::new(config),
            tls: Arc::new(tls),
            link: Arc::default(),
        };
        destination.channel().await?;
        Ok(destination)
    }

    /// A connected confirm-mode channel, opening one if needed.
    pub async fn channel(&self) -> Result<Channel, Error> {
        if let Some(link) = self.link.read().await.as_ref() {
            if link.channel.status().connected() {
                return Ok(link.channel.clone());
            }
        }
        let mut link = self.link.write().await;
        if let Some(current) = link.as_ref() {
            if current.channel.status().connected() {
                return Ok(current.channel.clone());
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
        let channel = opened.channel.clone();
        *link = Some(opened);
        Ok(channel)
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
        let channel = connection.create_channel().await.map_err(classify)?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(classify)?;
        Ok(Link {
            _connection: connection,
            channel,
        })
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

    async fn send(&self, message: &Message) -> Result<(), Error> {
        let route = (self.config.route)(message);
        short_strings_fit(message, &route)?;
        let channel = self.channel().await?;
        let published = channel
            .basic_publish(
                route.exchange.as_str().into(),
                route.routing_key.as_str().into(),
                BasicPublishOptions {
                    mandatory: true,
                    immediate: false,
                },
                &message.payload,
                properties(message),
            )
            .await;
        let confirm = match published {
            Ok(confirm) => confirm.await,
            Err(err) => Err(err),
        };
        match confirm {
            Ok(Confirmation::Ack(None)) => Ok(()),
            Ok(Confirmation::Ack(Some(returned))) => Err(Error::permanent(format!(
                "amqp: unroutable: exchange {:?} has no queue bound for routing key {:?} ({} {})",
                route.exchange, route.routing_key, returned.reply_code, returned.reply_text
            ))),
            Ok(Confirmation::Nack(_)) => Err(Error::temporary(
                "amqp: the broker refused to take the message (nack)",
            )),
            Ok(Confirmation::NotRequested) => {
                Err(Error::temporary("amqp: channel is not in confirm mode"))
            }
            Err(err) => {
                if breaks_link(&err) {
                    self.drop_link(&channel).await;
                }
                Err(classify(err))
            }
        }
    }
}
