//! Hiding credentials before a URL reaches a log, an error or `Debug`.

/// The URL with its user and password replaced by `***`; a string that is
/// not a URL is hidden whole, since it could be a secret.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "<not a URL>".to_string();
    };
    // The last `@` ends the credentials: a password may contain `@`.
    let (credentials, host) = match rest.find(['/', '?']) {
        Some(end) => match rest[..end].rfind('@') {
            Some(at) => (true, &rest[at + 1..]),
            None => (false, rest),
        },
        None => match rest.rfind('@') {
            Some(at) => (true, &rest[at + 1..]),
            None => (false, rest),
        },
    };
    if credentials {
        format!("{scheme}://***@{host}")
    } else {
        url.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_are_hidden() {
        assert_eq!(
            redact_url("amqp://guest:s3cret@127.0.0.1:5672/%2f"),
            "amqp://***@127.0.0.1:5672/%2f"
        );
        assert_eq!(
            redact_url("postgres://u:p@ss@db/app?sslmode=require"),
            "postgres://***@db/app?sslmode=require"
        );
        assert_eq!(
            redact_url("mysql://db:3306/app?user=a@b"),
            "mysql://db:3306/app?user=a@b"
        );
        assert_eq!(redact_url("nats://127.0.0.1:4222"), "nats://127.0.0.1:4222");
        assert_eq!(redact_url("password-only"), "<not a URL>");
    }
}
