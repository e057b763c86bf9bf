//! Hiding credentials before a URL reaches a log, an error or `Debug`.

/// The URL with its user and password replaced by `***`, and the values of
/// query parameters that carry a secret (`password=`, as sqlx accepts,
/// `sslpassword=`, `token=`) too; a string that is not a URL is hidden
/// whole, since it could be a secret.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "<not a URL>".to_string();
    };
    let (before_query, query) = match rest.split_once('?') {
        Some((before, query)) => (before, Some(query)),
        None => (rest, None),
    };
    // The last `@` before the path ends the credentials: a password may
    // contain `@`.
    let authority_end = before_query.find('/').unwrap_or(before_query.len());
    let host = match before_query[..authority_end].rfind('@') {
        Some(at) => format!("***@{}", &before_query[at + 1..]),
        None => before_query.to_string(),
    };
    let mut out = format!("{scheme}://{host}");
    if let Some(query) = query {
        let parameters: Vec<String> = query
            .split('&')
            .map(|parameter| match parameter.split_once('=') {
                Some((name, _)) if is_secret_parameter(name) => format!("{name}=***"),
                _ => parameter.to_string(),
            })
            .collect();
        out.push('?');
        out.push_str(&parameters.join("&"));
    }
    out
}

fn is_secret_parameter(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    ["password", "secret", "token"]
        .iter()
        .any(|part| name.contains(part))
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
        assert_eq!(
            redact_url("postgres://db/app?user=u&password=s3cret&sslmode=require"),
            "postgres://db/app?user=u&password=***&sslmode=require"
        );
        assert_eq!(
            redact_url("mysql://u@db/app?sslmode=required&PASSWORD=x"),
            "mysql://***@db/app?sslmode=required&PASSWORD=***"
        );
    }
}
