//! Credentials taken out of a server URL before the client sees it:
//! async-nats logs the server address whole (its `attempting connection`
//! and `connection attempt failed` debug events), password included.

use outbox_core::ConfigError;

use crate::NatsAuth;

/// The URL (or comma-separated URLs) without user info, and the
/// credentials it held: `user:password@` is a user and password, a lone
/// `token@` a token, as NATS reads them. Percent-escapes in them are
/// decoded. Credentials in both the URL and `auth`, or differing between
/// servers, are refused naming `url`.
pub(crate) fn split_credentials(
    url: &str,
    auth: &NatsAuth,
) -> Result<(String, NatsAuth), ConfigError> {
    let mut found: Option<NatsAuth> = None;
    let mut servers = Vec::new();
    for server in url.split(',').map(str::trim) {
        let (bare, credentials) = strip(server);
        servers.push(bare);
        let Some(credentials) = credentials else {
            continue;
        };
        if found.as_ref().is_some_and(|seen| *seen != credentials) {
            return Err(ConfigError::new(
                "url",
                "the servers' URLs carry different credentials",
            ));
        }
        found = Some(credentials);
    }
    let auth = match (found, auth) {
        (None, auth) => auth.clone(),
        (Some(credentials), NatsAuth::None) => credentials,
        (Some(_), _) => {
            return Err(ConfigError::new(
                "url",
                "carries credentials while auth is set too: keep one of them",
            ))
        }
    };
    Ok((servers.join(","), auth))
}

/// One server's URL without its user info, and the credentials it held.
fn strip(server: &str) -> (String, Option<NatsAuth>) {
    let (scheme, rest) = match server.split_once("://") {
        Some((scheme, rest)) => (Some(scheme), rest),
        None => (None, server),
    };
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let Some(at) = rest[..authority_end].rfind('@') else {
        return (server.to_string(), None);
    };
    let userinfo = &rest[..at];
    let host = &rest[at + 1..];
    let bare = match scheme {
        Some(scheme) => format!("{scheme}://{host}"),
        None => host.to_string(),
    };
    let credentials = match userinfo.split_once(':') {
        Some((user, password)) => NatsAuth::UserPassword {
            user: decode(user),
            password: decode(password),
        },
        None => NatsAuth::Token(decode(userinfo)),
    };
    (bare, Some(credentials))
}

/// Decodes `%XX` escapes; anything else is kept as it is.
fn decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = (bytes[i] == b'%')
            .then(|| text.get(i + 1..i + 3))
            .flatten()
            .and_then(|hex| u8::from_str_radix(hex, 16).ok());
        match escaped {
            Some(byte) => {
                out.push(byte);
                i += 3;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_user_and_password_leave_the_url() {
        let (url, auth) =
            split_credentials("nats://alice:s%40cret@127.0.0.1:4222", &NatsAuth::None).unwrap();
        assert_eq!(url, "nats://127.0.0.1:4222");
        assert_eq!(
            auth,
            NatsAuth::UserPassword {
                user: "alice".into(),
                password: "s@cret".into()
            }
        );
    }

    #[test]
    fn a_lone_user_is_a_token_and_every_server_is_stripped() {
        let (url, auth) =
            split_credentials("tls://t0k3n@a:4222, tls://t0k3n@b:4222/", &NatsAuth::None).unwrap();
        assert_eq!(url, "tls://a:4222,tls://b:4222/");
        assert_eq!(auth, NatsAuth::Token("t0k3n".into()));
    }

    #[test]
    fn a_url_without_credentials_keeps_the_configured_auth() {
        let auth = NatsAuth::Token("t".into());
        let (url, kept) = split_credentials("nats://127.0.0.1:4222", &auth).unwrap();
        assert_eq!((url.as_str(), kept), ("nats://127.0.0.1:4222", auth));
    }

    #[test]
    fn credentials_in_both_places_are_refused() {
        let auth = NatsAuth::Token("t".into());
        let err = split_credentials("nats://u:p@h:4222", &auth).unwrap_err();
        assert_eq!(err.setting, "url");
        assert!(!err.to_string().contains(":p@"), "{err}");
    }
}
