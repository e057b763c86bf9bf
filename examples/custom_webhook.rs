//! Bring your own Source and Destination: events an application already
//! writes to a legacy SQLite table of its own design are relayed, in order
//! per customer, to an HTTP webhook.
//!
//! * `LegacyEvents` is a [`Source`] over a table the outbox crates did not
//!   create, with its own item type, [`LegacyEvent`].
//! * `Webhook` is a [`Destination`] that POSTs each event and maps HTTP
//!   status codes to temporary or permanent failures.
//! * A receiving webhook runs in this process; it answers 503 once (the
//!   relay retries) and 422 to an event it cannot accept (dead-lettered).
//!
//! `cargo run --example custom_webhook`

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use outbox::{
    Backoff, CancellationToken, Claim, ClaimId, Destination, Error, Failure, Item, Relay,
    RelayConfig, Source,
};
use sqlx::{Row, SqlitePool};
use uuid::Uuid;

/// One row of the legacy `customer_events` table.
#[derive(Debug, Clone)]
struct LegacyEvent {
    row_id: i64,
    customer: String,
    kind: String,
    body: String,
    attempts: u32,
}

impl Item for LegacyEvent {
    /// Stable across attempts, derived from the row id: the webhook uses it
    /// as an idempotency key.
    fn id(&self) -> Uuid {
        Uuid::from_u64_pair(0x6c65_6761_6379, self.row_id as u64)
    }

    fn ordering_key(&self) -> &str {
        &self.customer
    }

    fn attempts(&self) -> u32 {
        self.attempts
    }
}

/// The Source: one relay (leases kept in memory), claiming the oldest
/// unsent rows whose customer has no earlier row in flight or waiting for a
/// retry. It reads every unsent row per claim, which suits a small table;
/// a large one wants an index and a `LIMIT`, as the outbox crates' sources
/// have.
struct LegacyEvents {
    pool: SqlitePool,
    in_flight: Mutex<HashSet<i64>>,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn db_error(err: sqlx::Error) -> Error {
    Error::temporary("legacy events table").with_source(err)
}

impl Source for LegacyEvents {
    type Item = LegacyEvent;

    async fn claim(&self, limit: usize) -> Result<Claim<LegacyEvent>, Error> {
        let rows = sqlx::query(
            "SELECT e.id, e.customer, e.kind, e.body, e.attempts FROM customer_events e \
             WHERE e.sent_at IS NULL AND e.dead_reason IS NULL AND e.next_try_ms <= ?1 \
               AND NOT EXISTS (SELECT 1 FROM customer_events p WHERE p.customer = e.customer \
                   AND p.id < e.id AND p.sent_at IS NULL AND p.next_try_ms > ?1) \
             ORDER BY e.id",
        )
        .bind(now_ms())
        .fetch_all(&self.pool)
        .await
        .map_err(db_error)?;
        let mut in_flight = self.in_flight.lock().expect("not poisoned");
        // A customer with a row in flight waits: nothing later of theirs goes.
        let mut held: HashSet<String> = HashSet::new();
        let mut claimed = Vec::new();
        for row in rows {
            let event = LegacyEvent {
                row_id: row.get("id"),
                customer: row.get("customer"),
                kind: row.get("kind"),
                body: row.get("body"),
                attempts: row.get::<i64, _>("attempts") as u32,
            };
            if held.contains(&event.customer) || in_flight.contains(&event.row_id) {
                held.insert(event.customer);
                continue;
            }
            if claimed.len() < limit {
                in_flight.insert(event.row_id);
                claimed.push(event);
            } else {
                break;
            }
        }
        Ok(Claim::new(ClaimId::new(), claimed))
    }

    async fn ack(&self, _claim: ClaimId, items: &[LegacyEvent]) -> Result<(), Error> {
        for item in items {
            sqlx::query("UPDATE customer_events SET sent_at = ?1 WHERE id = ?2")
                .bind(now_ms())
                .bind(item.row_id)
                .execute(&self.pool)
                .await
                .map_err(db_error)?;
        }
        self.forget(items.iter());
        Ok(())
    }

    async fn retry(&self, _claim: ClaimId, failures: &[Failure<LegacyEvent>]) -> Result<(), Error> {
        for failure in failures {
            sqlx::query("UPDATE customer_events SET attempts = ?1, next_try_ms = ?2 WHERE id = ?3")
                .bind(i64::from(failure.attempts))
                .bind(now_ms() + failure.retry_after.as_millis() as i64)
                .bind(failure.item.row_id)
                .execute(&self.pool)
                .await
                .map_err(db_error)?;
        }
        self.forget(failures.iter().map(|f| &f.item));
        Ok(())
    }

    async fn dead_letter(
        &self,
        _claim: ClaimId,
        failures: &[Failure<LegacyEvent>],
    ) -> Result<(), Error> {
        for failure in failures {
            sqlx::query("UPDATE customer_events SET attempts = ?1, dead_reason = ?2 WHERE id = ?3")
                .bind(i64::from(failure.attempts))
                .bind(&failure.error)
                .bind(failure.item.row_id)
                .execute(&self.pool)
                .await
                .map_err(db_error)?;
        }
        self.forget(failures.iter().map(|f| &f.item));
        Ok(())
    }

    async fn release(&self, _claim: ClaimId, items: &[LegacyEvent]) -> Result<(), Error> {
        self.forget(items.iter());
        Ok(())
    }

    fn lease(&self) -> Duration {
        // In memory: the lease lasts as long as this process.
        Duration::from_secs(3600)
    }
}

impl LegacyEvents {
    fn forget<'a>(&self, items: impl Iterator<Item = &'a LegacyEvent>) {
        let mut in_flight = self.in_flight.lock().expect("not poisoned");
        for item in items {
            in_flight.remove(&item.row_id);
        }
    }
}

/// The Destination: POST the body with the event's id and kind as headers.
struct Webhook {
    client: reqwest::Client,
    url: String,
}

impl Destination for Webhook {
    type Item = LegacyEvent;

    async fn send(&self, item: &LegacyEvent) -> Result<(), Error> {
        let response = self
            .client
            .post(&self.url)
            .header("idempotency-key", item.id().to_string())
            .header("x-event-type", &item.kind)
            .header("x-customer", &item.customer)
            .header("content-type", "application/json")
            .body(item.body.clone())
            .send()
            .await
            .map_err(|err| Error::temporary("webhook unreachable").with_source(err))?;
        let status = response.status();
        match status.as_u16() {
            200..=299 => Ok(()),
            // Timeouts, rate limits and server errors pass; other client
            // errors mean this request will never be accepted.
            408 | 429 | 500..=599 => Err(Error::temporary(format!("webhook answered {status}"))),
            _ => Err(Error::permanent(format!(
                "webhook refused the event: {status}"
            ))),
        }
    }
}

/// What the receiving webhook saw, and its one planned outage.
#[derive(Default)]
struct Receiver {
    accepted: Vec<(String, String)>,
    keys: HashSet<String>,
    outage_left: u32,
}

async fn receive(
    State(receiver): State<Arc<Mutex<Receiver>>>,
    headers: HeaderMap,
    body: String,
) -> StatusCode {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    let mut receiver = receiver.lock().expect("not poisoned");
    if receiver.outage_left > 0 {
        receiver.outage_left -= 1;
        return StatusCode::SERVICE_UNAVAILABLE;
    }
    if serde_json::from_str::<serde_json::Value>(&body).is_err() {
        return StatusCode::UNPROCESSABLE_ENTITY;
    }
    if receiver.keys.insert(header("idempotency-key")) {
        let event = (header("x-customer"), header("x-event-type"));
        receiver.accepted.push(event);
    }
    StatusCode::NO_CONTENT
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "error".into()),
        )
        .init();

    // The receiving end: answers 503 to the first two requests.
    let receiver = Arc::new(Mutex::new(Receiver {
        outage_left: 2,
        ..Receiver::default()
    }));
    let app = axum::Router::new()
        .route("/hooks/customers", post(receive))
        .with_state(receiver.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/hooks/customers", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, app).await });

    // The application's own table, written by its own code.
    let pool = SqlitePool::connect("sqlite::memory:").await?;
    sqlx::query(
        "CREATE TABLE customer_events (id INTEGER PRIMARY KEY, customer TEXT NOT NULL, \
         kind TEXT NOT NULL, body TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, \
         next_try_ms INTEGER NOT NULL DEFAULT 0, sent_at INTEGER, dead_reason TEXT)",
    )
    .execute(&pool)
    .await?;
    let kinds = ["CustomerRegistered", "EmailChanged", "PlanUpgraded"];
    for customer in ["ada", "grace", "linus"] {
        for kind in kinds {
            sqlx::query("INSERT INTO customer_events (customer, kind, body) VALUES (?1, ?2, ?3)")
                .bind(customer)
                .bind(kind)
                .bind(format!(r#"{{"customer":"{customer}","kind":"{kind}"}}"#))
                .execute(&pool)
                .await?;
        }
    }
    sqlx::query("INSERT INTO customer_events (customer, kind, body) VALUES ('mallory', 'Broken', 'not json')")
        .execute(&pool)
        .await?;

    let source = LegacyEvents {
        pool: pool.clone(),
        in_flight: Mutex::default(),
    };
    let webhook = Webhook {
        client: reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()?,
        url: url.clone(),
    };
    let config = RelayConfig {
        backoff: Backoff {
            initial: Duration::from_millis(100),
            ..Backoff::default()
        },
        ..RelayConfig::default()
    };
    let relay = Relay::new(source, webhook, config)?;
    let stats = relay.stats();
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(relay.run(shutdown.clone()));
    println!("relaying customer_events to {url}");

    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (sent, dead): (i64, i64) =
            sqlx::query_as("SELECT COUNT(sent_at), COUNT(dead_reason) FROM customer_events")
                .fetch_one(&pool)
                .await?;
        if sent == 9 && dead == 1 {
            break;
        }
        if tokio::time::Instant::now() > deadline {
            return Err(format!("after 30 s: {sent} of 9 sent, {dead} of 1 dead").into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    shutdown.cancel();
    running.await??;

    let accepted = receiver.lock().expect("not poisoned").accepted.clone();
    let mut per_customer: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (customer, kind) in accepted {
        per_customer.entry(customer).or_default().push(kind);
    }
    for (customer, kinds) in &per_customer {
        println!("  {customer}: {}", kinds.join(" -> "));
    }
    let (reason,): (String,) =
        sqlx::query_as("SELECT dead_reason FROM customer_events WHERE dead_reason IS NOT NULL")
            .fetch_one(&pool)
            .await?;
    println!("  mallory's event was dead-lettered: {reason}");
    let counts = stats.snapshot().counts;
    println!(
        "published {}, retried {}, dead-lettered {}",
        counts.published, counts.retried, counts.dead_lettered
    );
    if per_customer.len() != 3 || per_customer.values().any(|k| k.as_slice() != kinds) {
        return Err("a customer's events arrived out of order or went missing".into());
    }
    println!("every customer's events reached the webhook in order.");
    Ok(())
}
