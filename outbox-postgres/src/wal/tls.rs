//! TLS of the replication connection, from the URL's libpq parameters:
//! `sslmode`, `sslrootcert`, `sslcert`, `sslkey` (the names sqlx reads for
//! the pool too).
//!
//! With the feature `wal-tls` the connection speaks TLS through
//! `pgwire-replication`'s rustls; without it a URL that requires TLS is
//! refused at start-up, naming `url`. Modes, as libpq's: `disable`;
//! `allow` and `prefer` (the default) try TLS and fall back to a plain
//! connection when the server offers none; `require` encrypts without
//! checking the certificate; `verify-ca` checks it against `sslrootcert`
//! (or, without one, the Mozilla roots); `verify-full` also checks the
//! host name.

use std::path::PathBuf;

use outbox_core::ConfigError;
use pgwire_replication::{SslMode, TlsConfig};

/// Whether this build can speak TLS on the replication connection.
pub(crate) const TLS_BUILT: bool = cfg!(feature = "wal-tls");

/// The replication connection's TLS settings from the URL's query pairs.
pub(crate) fn tls_config(url: &url::Url) -> Result<TlsConfig, ConfigError> {
    let bad = |why: String| ConfigError::new("url", why);
    let param = |name: &str| {
        url.query_pairs()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.into_owned())
    };
    let mode = match param("sslmode").as_deref() {
        None | Some("prefer") | Some("allow") if TLS_BUILT => SslMode::Prefer,
        None | Some("prefer") | Some("allow") | Some("disable") => SslMode::Disable,
        Some("require") => SslMode::Require,
        Some("verify-ca") => SslMode::VerifyCa,
        Some("verify-full") => SslMode::VerifyFull,
        Some(other) => {
            return Err(bad(format!(
            "has sslmode={other}; one of disable, allow, prefer, require, verify-ca, verify-full"
        )))
        }
    };
    if mode.requires_tls() && !TLS_BUILT {
        return Err(bad(
            "asks for TLS (sslmode), and this build has no TLS for the replication connection: \
             build with the feature `wal-tls` (outbox-relay's `tls`, on by default)"
                .into(),
        ));
    }
    let path = |name: &str| param(name).map(PathBuf::from);
    let mut tls = TlsConfig {
        mode,
        ca_pem_path: path("sslrootcert"),
        ..TlsConfig::disabled()
    };
    match (path("sslcert"), path("sslkey")) {
        (Some(cert), Some(key)) => tls = tls.with_client_cert(cert, key),
        (None, None) => {}
        _ => {
            return Err(bad(
                "names only one of sslcert and sslkey: a client certificate needs both".into(),
            ))
        }
    }
    Ok(tls)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(query: &str) -> Result<SslMode, ConfigError> {
        let url = url::Url::parse(&format!("postgres://h/db{query}")).unwrap();
        tls_config(&url).map(|tls| tls.mode)
    }

    #[test]
    fn the_url_names_the_mode_and_prefer_is_the_default() {
        let prefer = if TLS_BUILT {
            SslMode::Prefer
        } else {
            SslMode::Disable
        };
        assert_eq!(mode("").unwrap(), prefer);
        assert_eq!(mode("?sslmode=prefer").unwrap(), prefer);
        assert_eq!(mode("?sslmode=disable").unwrap(), SslMode::Disable);
        assert_eq!(mode("?sslmode=sometimes").unwrap_err().setting, "url");
        for strict in ["require", "verify-ca", "verify-full"] {
            let query = format!("?sslmode={strict}");
            assert_eq!(mode(&query).is_ok(), TLS_BUILT, "{strict}");
        }
    }

    #[test]
    fn files_come_from_the_url() {
        let url = url::Url::parse(
            "postgres://h/db?sslmode=verify-ca&sslrootcert=/etc/ca.pem&sslcert=/c.pem&sslkey=/k.pem",
        )
        .unwrap();
        let read = tls_config(&url);
        assert_eq!(read.is_ok(), TLS_BUILT, "{read:?}");
        if let Ok(tls) = read {
            assert_eq!(tls.ca_pem_path, Some(PathBuf::from("/etc/ca.pem")));
            assert_eq!(tls.client_cert_pem_path, Some(PathBuf::from("/c.pem")));
            assert_eq!(tls.client_key_pem_path, Some(PathBuf::from("/k.pem")));
        }
        let half = url::Url::parse("postgres://h/db?sslcert=/c.pem").unwrap();
        assert_eq!(tls_config(&half).unwrap_err().setting, "url");
    }
}
