//! The NATS destination.

use async_nats::jetstream;
use async_nats::jetstream::context::{PublishError, PublishErrorKind};
use async_nats::{Client, ConnectOptions, HeaderMap, HeaderName, HeaderValue, Subject};
use bytes::Bytes;
use outbox_core::{
    wrap_as_cloud_event, CloudEventsBinding, ConfigError, Destination, Error, Message,
    HEADER_EVENT_TYPE, HEADER_MESSAGE_ID, HEADER_ORDERING_KEY,
};

use outbox_core::redact_url;

use crate::credentials::split_credentials;
use crate::error::{classify_core, classify_jetstream, classify_no_responders};
use crate::{NatsAuth, NatsConfig, NatsMode, NATS_MSG_ID};

/// Publishes outbox messages to NATS; see the crate docs for the two modes.
#[derive(Debug, Clone)]
pub struct NatsDestination {
    client: Client,
    jetstream: jetstream::Context,
    config: NatsConfig,
}

impl NatsDestination {
    /// Checks `config` and connects. async-nats reconnects by itself after
    /// this; publishes during an outage fail as temporary errors and are
    /// retried by the relay.
    pub async fn connect(config: NatsConfig) -> Result<Self, Error> {
        config.validate()?;
        let (servers, auth) = split_credentials(&config.url, &config.auth)?;
        // async-nats asks rustls for the process's provider when it goes
        // TLS, which panics when the build holds two (the WAL outbox's TLS
        // brings aws-lc-rs beside ring) and none was installed: install
        // ring unless the application chose one, as lapin's TLS does.
        let _ = async_nats::rustls::crypto::ring::default_provider().install_default();
        let mut options = ConnectOptions::new()
            .name("outbox-relay")
            .connection_timeout(config.connect_timeout)
            .require_tls(config.require_tls || config.client_certificate.is_some());
        if let Some(path) = &config.root_certificates {
            options = options.add_root_certificates(path.clone());
        }
        if let (Some(certificate), Some(key)) = (&config.client_certificate, &config.client_key) {
            // async-nats reads them while connecting and reports a bad file
            // as a failed connection: checked here first, named.
            for (setting, path) in [("client_certificate", certificate), ("client_key", key)] {
                std::fs::File::open(path).map_err(|err| {
                    ConfigError::new(setting, format!("{}: {err}", path.display()))
                })?;
            }
            options = options.add_client_certificate(certificate.clone(), key.clone());
        }
        options = match &auth {
            NatsAuth::None => options,
            NatsAuth::UserPassword { user, password } => {
                options.user_and_password(user.clone(), password.clone())
            }
            NatsAuth::Token(token) => options.token(token.clone()),
            NatsAuth::NKey(seed) => options.nkey(seed.clone()),
            NatsAuth::CredentialsFile(path) => {
                options.credentials_file(path).await.map_err(|err| {
                    Error::permanent(format!("nats credentials file {path:?} unreadable"))
                        .with_source(err)
                })?
            }
        };
        let client = options.connect(servers.as_str()).await.map_err(|err| {
            Error::temporary(format!(
                "cannot connect to NATS at {}",
                redact_url(&config.url)
            ))
            .with_source(err)
        })?;
        let jetstream = jetstream::ContextBuilder::new()
            .timeout(config.ack_timeout)
            .build(client.clone());
        Ok(Self {
            client,
            jetstream,
            config,
        })
    }

    /// The underlying client, for subscribing or managing streams.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The JetStream context the destination publishes through.
    pub fn jetstream(&self) -> &jetstream::Context {
        &self.jetstream
    }

    /// Classifies a failed JetStream publish to `subject`. "No responders"
    /// is asked about: only JetStream's API saying that no stream listens
    /// on `subject` makes it permanent.
    async fn jetstream_error(&self, subject: &str, err: PublishError) -> Error {
        if err.kind() != PublishErrorKind::StreamNotFound {
            return classify_jetstream(err);
        }
        let stream = self.jetstream.stream_by_subject(subject).await;
        classify_no_responders(subject, stream, err)
    }

    /// The prefix and the destination, built once per send: a `Subject`
    /// clones by reference count, where a `String` is copied on each use.
    fn subject(&self, message: &Message) -> Subject {
        let prefix = &self.config.subject_prefix;
        let mut subject = String::with_capacity(prefix.len() + message.destination.len());
        subject.push_str(prefix);
        subject.push_str(&message.destination);
        Subject::from(subject)
    }
}

/// The headers a message is published with: the user's, then the message id
/// (as `Nats-Msg-Id` for deduplication and as `outbox-message-id`), the
/// ordering key and the event type.
///
/// NATS takes header names of printable ASCII without `:`, and values
/// without a line break; async-nats panics on anything else. A message
/// that breaks those rules can never be published, so it is a permanent
/// error naming the header, and the relay dead-letters it at once.
fn headers(message: &Message) -> Result<HeaderMap, Error> {
    let mut headers = HeaderMap::new();
    for (name, value) in &message.headers {
        let parsed_name: HeaderName = name.parse().map_err(|_| {
            unfit(
                message,
                format!("header name {name:?} is not printable ASCII without ':'"),
            )
        })?;
        let parsed_value: HeaderValue = value.parse().map_err(|_| {
            unfit(
                message,
                format!("header {name:?} has a line break in its value"),
            )
        })?;
        headers.insert(parsed_name, parsed_value);
    }
    // The outbox's own names are built at compile time: from a `&str`,
    // async-nats checks and copies a name on every insert.
    let mut buffer = [0u8; 36];
    let id: &str = message.id.hyphenated().encode_lower(&mut buffer);
    headers.insert(const { HeaderName::from_static(NATS_MSG_ID) }, id);
    headers.insert(const { HeaderName::from_static(HEADER_MESSAGE_ID) }, id);
    // A key with a line break cannot be a NATS header value; such a message
    // still goes out, and its consumer reads no ordering key.
    if let Ok(key) = message.ordering_key.parse::<HeaderValue>() {
        headers.insert(const { HeaderName::from_static(HEADER_ORDERING_KEY) }, key);
    }
    if let Some(event_type) = &message.event_type {
        let value: HeaderValue = event_type
            .parse()
            .map_err(|_| unfit(message, "the event type has a line break".to_string()))?;
        headers.insert(const { HeaderName::from_static(HEADER_EVENT_TYPE) }, value);
    }
    Ok(headers)
}

fn unfit(message: &Message, what: String) -> Error {
    Error::permanent(format!(
        "message {}: {what}, which a NATS header cannot carry",
        message.id
    ))
}

impl Destination for NatsDestination {
    type Item = Message;

    fn messaging_system(&self) -> &'static str {
        "nats"
    }

    async fn send(&self, message: &Message) -> Result<(), Error> {
        let message = &*wrap_as_cloud_event(
            self.config.cloud_events.as_ref(),
            message,
            CloudEventsBinding::Nats,
        );
        let headers = headers(message)?;
        let subject = self.subject(message);
        let payload = Bytes::copy_from_slice(&message.payload);
        match self.config.mode {
            NatsMode::JetStream => {
                let published = self
                    .jetstream
                    .publish_with_headers(subject.clone(), headers, payload)
                    .await;
                let ack = match published {
                    Ok(ack) => ack.await,
                    Err(err) => Err(err),
                };
                let ack = match ack {
                    Ok(ack) => ack,
                    Err(err) => return Err(self.jetstream_error(&subject, err).await),
                };
                if ack.duplicate {
                    tracing::debug!(id = %message.id, stream = ack.stream, "stream dropped a duplicate");
                }
                Ok(())
            }
            NatsMode::Core => {
                self.client
                    .publish_with_headers(subject, headers, payload)
                    .await
                    .map_err(classify_core)?;
                self.flush().await
            }
        }
    }

    async fn flush(&self) -> Result<(), Error> {
        self.client
            .flush()
            .await
            .map_err(|err| Error::temporary("nats flush").with_source(err))
    }
}
