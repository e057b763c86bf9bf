//! Reading the configuration: the TOML file, then `OUTBOX_…` variables over
//! it, then the checks.
//!
//! A variable names a setting by its path with `__` between the parts:
//! `OUTBOX_RELAY__BATCH_SIZE=1000` sets `[relay] batch_size`,
//! `OUTBOX_SOURCE__URL=…` sets `[source] url`. Variables without `__`
//! (such as `OUTBOX_CONFIG`) are not settings.

use std::path::Path;

use outbox_core::ConfigError;

use crate::settings::Settings;

/// The sections a variable may address.
const SECTIONS: &[&str] = &["source", "destination", "relay", "http", "log"];

/// Reads `path` (a missing file counts as empty when `vars` supply
/// everything), applies `vars` and checks the result.
pub fn load(
    path: &Path,
    vars: impl IntoIterator<Item = (String, String)>,
) -> Result<Settings, ConfigError> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(err) => {
            return Err(ConfigError::new(
                "--config",
                format!("cannot read {}: {err}", path.display()),
            ))
        }
    };
    let document: toml::Table = text.parse().map_err(|err: toml::de::Error| {
        ConfigError::new(
            format!("{}", path.display()),
            format!("is not valid TOML: {err}"),
        )
    })?;
    let vars: Vec<(String, String)> = vars.into_iter().collect();
    let settings = typed_by_target(&document, &vars)?;
    settings.validate()?;
    Ok(settings)
}

/// Deserializes `document` with `vars` laid over it, each value typed by the
/// setting it names: a variable is text unless its setting refuses text
/// (a number, a boolean), so `..._PASSWORD=0123` stays `0123`, `TABLE=2024`
/// stays a table name and `properties` keep their values verbatim. The
/// settings refuse text one at a time (serde stops at the first error), so
/// this turns one variable a try, at most once each.
fn typed_by_target(
    document: &toml::Table,
    vars: &[(String, String)],
) -> Result<Settings, ConfigError> {
    let mut typed = vec![false; vars.len()];
    loop {
        let mut attempt = document.clone();
        apply_env(&mut attempt, vars, &typed)?;
        let err = match toml::Value::Table(attempt).try_into::<Settings>() {
            Ok(settings) => return Ok(settings),
            Err(err) => err,
        };
        let refused = vars.iter().enumerate().position(|(i, (name, value))| {
            !typed[i]
                && name.contains("__")
                && !matches!(scalar(value), toml::Value::String(_))
                && err
                    .message()
                    .starts_with(&format!("invalid type: string {value:?},"))
        });
        match refused {
            Some(i) => typed[i] = true,
            None => {
                return Err(refusal(
                    &attempt_sections(document, vars, &typed)?,
                    err.message(),
                ))
            }
        }
    }
}

/// The document with `vars` laid over it, as the last attempt read it.
fn attempt_sections(
    document: &toml::Table,
    vars: &[(String, String)],
    typed: &[bool],
) -> Result<toml::Table, ConfigError> {
    let mut attempt = document.clone();
    apply_env(&mut attempt, vars, typed)?;
    Ok(attempt)
}

/// serde's refusal as a [`ConfigError`], named as every other setting is
/// (`source.schema`): an unknown field by its name, an unknown variant
/// (`mode = "fast"`) by the setting that holds it.
fn refusal(attempt: &toml::Table, message: &str) -> ConfigError {
    let quoted = |prefix: &str| {
        message
            .strip_prefix(prefix)
            .and_then(|rest| rest.split('`').next())
            .map(str::to_owned)
    };
    let sections = || {
        SECTIONS.iter().filter_map(|section| {
            let table = attempt.get(*section)?.as_table()?;
            Some((*section, table))
        })
    };
    let setting = if let Some(field) = quoted("unknown field `") {
        sections()
            .find(|(_, table)| table.contains_key(&field))
            .map(|(section, _)| format!("{section}.{field}"))
    } else if let Some(variant) = quoted("unknown variant `") {
        sections().find_map(|(section, table)| {
            table
                .iter()
                .find(|(_, value)| value.as_str() == Some(variant.as_str()))
                .map(|(name, _)| format!("{section}.{name}"))
        })
    } else {
        None
    };
    ConfigError::new(setting.unwrap_or_else(|| "configuration".into()), message)
}

/// Writes every `OUTBOX_<SECTION>__<KEY>…` variable into `document`: as
/// text, or typed (a number or boolean when it reads as one) where `typed`
/// says so.
fn apply_env(
    document: &mut toml::Table,
    vars: &[(String, String)],
    typed: &[bool],
) -> Result<(), ConfigError> {
    for ((name, value), typed) in vars.iter().zip(typed) {
        let Some(path) = name.strip_prefix("OUTBOX_") else {
            continue;
        };
        if !path.contains("__") {
            continue;
        }
        let parts: Vec<String> = path.split("__").map(str::to_lowercase).collect();
        if !SECTIONS.contains(&parts[0].as_str()) || parts.iter().any(String::is_empty) {
            return Err(ConfigError::new(
                name,
                format!("names no setting: use OUTBOX_<SECTION>__<SETTING> with a section of {SECTIONS:?}"),
            ));
        }
        let mut table = &mut *document;
        for part in &parts[..parts.len() - 1] {
            let entry = table
                .entry(part.clone())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            table = match entry {
                toml::Value::Table(inner) => inner,
                _ => {
                    return Err(ConfigError::new(
                        name.as_str(),
                        format!("{part} is not a table"),
                    ))
                }
            };
        }
        let value = if *typed {
            scalar(value)
        } else {
            toml::Value::String(value.clone())
        };
        table.insert(parts[parts.len() - 1].clone(), value);
    }
    Ok(())
}

/// A number or boolean when the text is one, else the text itself.
fn scalar(text: &str) -> toml::Value {
    if let Ok(i) = text.parse::<i64>() {
        return toml::Value::Integer(i);
    }
    if let Ok(b) = text.parse::<bool>() {
        return toml::Value::Boolean(b);
    }
    if let Ok(f) = text.parse::<f64>() {
        if text.contains('.') {
            return toml::Value::Float(f);
        }
    }
    toml::Value::String(text.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
        [source]
        kind = "postgres"
        url = "postgres://127.0.0.1/test"
        [destination]
        kind = "nats"
        url = "nats://127.0.0.1:4222"
    "#;

    fn file(text: &str) -> std::path::PathBuf {
        let name = format!("outbox-relay-{}.toml", uuid::Uuid::now_v7());
        let path = std::env::temp_dir().join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    fn vars(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    use crate::settings::{Database, DestinationSettings};

    #[test]
    fn a_minimal_file_gets_the_defaults() {
        let f = file(MINIMAL);
        let settings = load(&f, vars(&[])).unwrap();
        assert_eq!(settings.relay, outbox_core::RelayConfig::default());
        assert_eq!(settings.source.shared.table, "outbox_messages");
        assert_eq!(settings.http.listen, "127.0.0.1:9187");
    }

    #[test]
    fn variables_override_the_file() {
        let f = file(MINIMAL);
        let settings = load(
            &f,
            vars(&[
                ("OUTBOX_RELAY__BATCH_SIZE", "1000"),
                ("OUTBOX_RELAY__BACKOFF__MULTIPLIER", "1.5"),
                ("OUTBOX_SOURCE__TABLE", "orders_outbox"),
                ("OUTBOX_RELAY__PREFETCH", "false"),
                ("OUTBOX_CONFIG", "ignored.toml"),
                ("OUTBOX_POSTGRES_URL", "ignored"),
            ]),
        )
        .unwrap();
        assert_eq!(settings.relay.batch_size, 1000);
        assert_eq!(settings.relay.backoff.multiplier, 1.5);
        assert!(!settings.relay.prefetch);
        assert_eq!(settings.source.shared.table, "orders_outbox");
    }

    #[test]
    fn variables_keep_text_where_the_setting_is_text() {
        let f = file(
            r#"
            [source]
            kind = "postgres"
            url = "postgres://127.0.0.1/test"
            [destination]
            kind = "kafka"
            brokers = "127.0.0.1:9092"
            "#,
        );
        let settings = load(
            &f,
            vars(&[
                ("OUTBOX_SOURCE__TABLE", "o2024"),
                ("OUTBOX_SOURCE__SCHEMA", "2024"),
                ("OUTBOX_DESTINATION__PROPERTIES__SASL.PASSWORD", "0123"),
                ("OUTBOX_DESTINATION__PROPERTIES__LINGER.MS", "5"),
                ("OUTBOX_RELAY__BATCH_SIZE", "1000"),
                ("OUTBOX_SOURCE__NOTIFY", "false"),
            ]),
        )
        .unwrap();
        let Database::Postgres(postgres) = &settings.source.database else {
            panic!("a postgres source");
        };
        assert_eq!(postgres.schema, "2024");
        assert!(!postgres.notify);
        let DestinationSettings::Kafka(kafka) = &settings.destination else {
            panic!("a kafka destination");
        };
        let properties = &kafka.properties;
        assert_eq!(
            properties.get("sasl.password"),
            Some(&toml::Value::String("0123".into()))
        );
        assert_eq!(
            properties.get("linger.ms"),
            Some(&toml::Value::String("5".into()))
        );
        assert_eq!(settings.relay.batch_size, 1000);
    }

    #[test]
    fn errors_name_the_setting() {
        let f = file(MINIMAL);
        let setting = |pairs: &[(&str, &str)]| load(&f, vars(pairs)).unwrap_err().setting;
        assert_eq!(
            setting(&[("OUTBOX_RELAY__BATCH_SIZE", "0")]),
            "relay.batch_size"
        );
        assert_eq!(setting(&[("OUTBOX_SOURCE__URL", "")]), "source.url");
        assert_eq!(
            setting(&[("OUTBOX_SOURCE__PRUNE_KEYS_INTERVAL_MS", "60000")]),
            "source.prune_keys_interval_ms"
        );
        assert_eq!(
            setting(&[("OUTBOX_DESTINATION__BROKERS", "k:9092")]),
            "destination.brokers"
        );
        assert_eq!(
            setting(&[("OUTBOX_SOURCE__LEASE_MS", "5000")]),
            "relay.send_timeout"
        );
        assert_eq!(
            setting(&[("OUTBOX_DESTINATION__TIMEOUT_MS", "10000")]),
            "destination.timeout_ms"
        );
        assert_eq!(setting(&[("OUTBOX_SORCE__URL", "x")]), "OUTBOX_SORCE__URL");
        assert_eq!(
            setting(&[("OUTBOX_DESTINATION__MODE", "fast")]),
            "destination.mode"
        );
        assert_eq!(
            setting(&[("OUTBOX_HTTP__LISTEN", "nowhere")]),
            "http.listen"
        );
        assert_eq!(
            setting(&[("OUTBOX_DESTINATION__ROOT_CERTIFICATES", "/no/such/ca.pem")]),
            "destination.root_certificates"
        );
        assert_eq!(
            setting(&[("OUTBOX_LOG__LEVEL", "outbox_core=loud")]),
            "log.level"
        );
        assert_eq!(
            setting(&[
                ("OUTBOX_SOURCE__MAX_CONNECTIONS", "3"),
                ("OUTBOX_SOURCE__LEADER_ONLY", "true")
            ]),
            "source.max_connections"
        );
        let unknown = load(&f, vars(&[("OUTBOX_RELAY__BATCH", "5")])).unwrap_err();
        assert!(
            unknown.reason.contains("unknown field `batch`"),
            "{unknown}"
        );
        let kind = load(&f, vars(&[("OUTBOX_SOURCE__KIND", "oracle")])).unwrap_err();
        assert!(kind.reason.contains("oracle"), "{kind}");
        assert_eq!(kind.setting, "source.kind");
        let elsewhere = load(&f, vars(&[("OUTBOX_SOURCE__PRUNE_KEYS_INTERVAL_MS", "5")]));
        let elsewhere = elsewhere.unwrap_err();
        assert_eq!(elsewhere.setting, "source.prune_keys_interval_ms");
        assert!(
            elsewhere.reason.contains("kind = \"postgres\""),
            "{elsewhere}"
        );
    }
}

#[cfg(test)]
mod example_file {
    /// The shipped example must stay valid.
    #[test]
    fn the_example_file_loads() {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("outbox-relay.example.toml");
        let settings = super::load(&path, Vec::new()).unwrap();
        assert_eq!(settings.relay, outbox_core::RelayConfig::default());
    }
}
