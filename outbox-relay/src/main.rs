//! `outbox-relay`: the transactional outbox relay as a process of its own.
//!
//! ```text
//! outbox-relay [--config outbox-relay.toml] run
//! outbox-relay check
//! outbox-relay migrate
//! outbox-relay backlog
//! outbox-relay dead-letters list [--limit N] | count | requeue (--all | ID...)
//! ```
//!
//! Settings come from the TOML file, then from `OUTBOX_<SECTION>__<SETTING>`
//! variables; see `outbox-relay.example.toml`.

mod destination;
mod destination_settings;
mod http;
mod load;
mod metrics;
mod outbox;
mod run;
mod settings;
mod source_settings;
mod startup;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use uuid::Uuid;

use crate::settings::Settings;
use outbox_sql::Operator;

/// The transactional outbox relay: moves committed messages from a database
/// outbox table to a broker, in order per key.
#[derive(Parser)]
#[command(version)]
struct Cli {
    /// The TOML settings file; `OUTBOX_<SECTION>__<SETTING>` variables
    /// override it.
    #[arg(
        short,
        long,
        env = "OUTBOX_CONFIG",
        default_value = "outbox-relay.toml"
    )]
    config: PathBuf,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Relay until SIGTERM or SIGINT (the default).
    Run,
    /// Deliver what is waiting now, print what became of it, and exit (a
    /// scheduled job's relay).
    Drain,
    /// Check the settings and print them, credentials hidden.
    Check,
    /// Create or update the outbox table.
    Migrate,
    /// Print the backlog: messages waiting, age of the oldest, dead letters.
    Backlog,
    /// The oldest waiting messages: id, next attempt, attempts, key,
    /// destination, last error.
    Waiting {
        /// How many to show.
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// List, count or requeue dead letters.
    #[command(subcommand)]
    DeadLetters(DeadLetters),
}

#[derive(Subcommand)]
enum DeadLetters {
    /// The oldest dead letters: id, time, attempts, key, destination, error.
    List {
        /// How many to show.
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// How many dead letters wait.
    Count,
    /// Put dead letters back in the delivery path, attempts reset.
    Requeue {
        /// Every dead letter.
        #[arg(long, conflicts_with = "ids")]
        all: bool,
        /// The message ids to requeue.
        #[arg(required_unless_present = "all")]
        ids: Vec<Uuid>,
    },
}

fn main() -> ExitCode {
    // The replication client's TLS brings rustls's aws-lc-rs provider
    // beside the ring one the rest uses; with two, rustls cannot pick one
    // by itself and a client that asks it to (async-nats's) would panic.
    #[cfg(feature = "tls")]
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("outbox-relay: cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    // Pools made lazily still need the runtime.
    let _entered = runtime.enter();
    let checked = load::load(&cli.config, std::env::vars())
        .and_then(|settings| Ok((outbox::open(&settings.source)?, settings)));
    let (outbox, settings) = match checked {
        Ok(checked) => checked,
        Err(err) => {
            eprintln!(
                "outbox-relay: invalid configuration ({}): {err}",
                cli.config.display()
            );
            return ExitCode::from(2);
        }
    };
    init_logs(&settings);
    match runtime.block_on(execute(
        cli.command.unwrap_or(Command::Run),
        outbox,
        settings,
    )) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(error = %err.report(), "outbox-relay failed");
            eprintln!("outbox-relay: {}", err.report());
            ExitCode::FAILURE
        }
    }
}

async fn execute(
    command: Command,
    outbox: Box<dyn Operator>,
    settings: Settings,
) -> Result<(), outbox_core::Error> {
    match command {
        Command::Run => run::run(outbox, settings).await,
        Command::Drain => {
            let drained = run::drain(&*outbox, settings).await?;
            println!(
                "published {}\nretried {}\ndead_lettered {}\nreleased {}\nbatches {}",
                drained.published,
                drained.retried,
                drained.dead_lettered,
                drained.released,
                drained.batches
            );
            Ok(())
        }
        Command::Check => {
            println!(
                "source: {} {} table {}",
                settings.source.kind(),
                settings.source.address(),
                settings.source.shared.table
            );
            println!(
                "destination: {} {}",
                settings.destination.kind(),
                settings.destination.address()
            );
            println!("relay: {:?}", settings.relay);
            println!("configuration is valid");
            Ok(())
        }
        Command::Migrate => outbox.migrate().await,
        Command::Backlog => {
            let backlog = outbox.backlog().await?;
            let oldest = backlog.oldest_age.map_or(0.0, |age| age.as_secs_f64());
            println!(
                "waiting {}\noldest_age_seconds {oldest:.3}\ndead_letters {}",
                backlog.waiting, backlog.dead_letters
            );
            if let Some(lag) = backlog.log_lag {
                println!("log_lag_bytes {}", lag.bytes);
            }
            Ok(())
        }
        Command::Waiting { limit } => {
            for waiting in outbox.waiting(limit).await? {
                let (key, destination) = waiting
                    .message
                    .map(|m| (m.ordering_key, m.destination))
                    .unwrap_or_else(|| ("<unreadable row>".into(), String::new()));
                println!(
                    "{}\t{}\t{}\t{key}\t{destination}\t{}",
                    waiting.id,
                    waiting.next_attempt_at.to_rfc3339(),
                    waiting.attempts,
                    waiting
                        .last_error
                        .unwrap_or_default()
                        .replace(['\n', '\t'], " ")
                );
            }
            Ok(())
        }
        Command::DeadLetters(command) => {
            match command {
                DeadLetters::List { limit } => {
                    for dead in outbox.dead_letters(limit).await? {
                        let (key, destination) = dead
                            .message
                            .map(|m| (m.ordering_key, m.destination))
                            .unwrap_or_else(|| ("<unreadable row>".into(), String::new()));
                        println!(
                            "{}\t{}\t{}\t{key}\t{destination}\t{}",
                            dead.id,
                            dead.dead_at.to_rfc3339(),
                            dead.attempts,
                            dead.error.replace(['\n', '\t'], " ")
                        );
                    }
                }
                DeadLetters::Count => println!("{}", outbox.count_dead_letters().await?),
                DeadLetters::Requeue { all, ids } => {
                    let requeued = if all {
                        outbox.requeue_all().await?
                    } else {
                        outbox.requeue(&ids).await?
                    };
                    println!("requeued {requeued}");
                }
            }
            Ok(())
        }
    }
}

fn init_logs(settings: &Settings) {
    use tracing_subscriber::filter::filter_fn;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&settings.log.level));
    // lapin at `trace` logs every frame it writes, the SASL PLAIN response
    // with the password included (as a list of bytes): its trace events
    // never reach the output, whatever the level asked for. rustls (whose
    // `logging` the replication client's TLS turns on) dumps every
    // handshake message at `debug` and `trace`, kilobytes per connection
    // and nothing an operator reads: from it, `info` and up only.
    let no_secrets = filter_fn(|meta| {
        let lapin_trace =
            *meta.level() == tracing::Level::TRACE && meta.target().starts_with("lapin");
        let rustls_detail =
            *meta.level() > tracing::Level::INFO && meta.target().starts_with("rustls");
        !(lapin_trace || rustls_detail)
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if settings.log.format == "json" {
        builder.json().finish().with(no_secrets).init();
    } else {
        builder.finish().with(no_secrets).init();
    }
}
