//! The backend URLs a project sets (`webhookUrl`, `accessHookUrl`): a strict
//! parser shared by the settings' validation and the outbound client, so a
//! URL that was accepted is one the client can call.

use std::fmt;

/// Longest URL accepted.
pub const MAX_URL_BYTES: usize = 2048;

/// An `http://` or `https://` URL, split for the client. The grammar is
/// exactly the `BackendUrl` pattern of docs/openapi.yaml: a lowercase
/// scheme, a host name or IPv4 address (labels of letters, digits, `_` and
/// `-`, at most 63 bytes each; IPv6 literals are not taken), a port from 1
/// to 65535 without leading zeros, then a path or query without spaces,
/// control characters or `#`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url {
    /// `https://`.
    pub https: bool,
    /// A host name or an IPv4 address, lowercase.
    pub host: String,
    /// The port, 80 or 443 when not given.
    pub port: u16,
    /// The path (at least `/`) and the query, as given.
    pub path_and_query: String,
}

impl Url {
    /// `scheme://host:port`: connections are pooled per origin.
    pub fn origin(&self) -> String {
        let scheme = if self.https { "https" } else { "http" };
        format!("{scheme}://{}:{}", self.host, self.port)
    }

    /// The `Host` header: the host, and the port when it is not the default.
    pub fn host_header(&self) -> String {
        // Bracketed should an IPv6 host ever be built by hand (the parser takes none).
        let host = if self.host.contains(':') { format!("[{}]", self.host) } else { self.host.clone() };
        let default = if self.https { 443 } else { 80 };
        if self.port == default {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }
}

/// Why a URL was refused; the message is shown to the user as is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UrlError {
    /// Longer than [`MAX_URL_BYTES`].
    TooLong,
    /// Not `http://` or `https://`.
    Scheme,
    /// Spaces or control characters.
    Characters,
    /// `user:password@`.
    Userinfo,
    /// `#…`.
    Fragment,
    /// No host, or a host that is not a name or an IPv4 address.
    Host,
    /// A port that is not 1–65535.
    Port,
}

impl fmt::Display for UrlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            UrlError::TooLong => "a URL is at most 2048 bytes",
            UrlError::Scheme => "the scheme must be http:// or https://",
            UrlError::Characters => "a URL may not contain spaces or control characters",
            UrlError::Userinfo => "a URL may not carry a user or password",
            UrlError::Fragment => "a URL may not carry a #fragment",
            UrlError::Host => "the URL needs a host: a name or an IPv4 address (IPv6 literals are not supported)",
            UrlError::Port => "the port must be a number from 1 to 65535, without leading zeros",
        })
    }
}

impl std::error::Error for UrlError {}

/// Parses an `http://` or `https://` URL strictly.
pub fn parse_url(s: &str) -> Result<Url, UrlError> {
    if s.len() > MAX_URL_BYTES {
        return Err(UrlError::TooLong);
    }
    if s.bytes().any(|b| b <= b' ' || b == 0x7f) {
        return Err(UrlError::Characters);
    }
    let (https, rest) = if let Some(rest) = s.strip_prefix("https://") {
        (true, rest)
    } else if let Some(rest) = s.strip_prefix("http://") {
        (false, rest)
    } else {
        return Err(UrlError::Scheme);
    };
    if rest.contains('#') {
        return Err(UrlError::Fragment);
    }
    let split = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(split);
    if authority.contains('@') {
        return Err(UrlError::Userinfo);
    }
    let (host, port) = match authority.split_once(':') {
        Some((h, p)) => (h.to_ascii_lowercase(), Some(p)),
        None => (authority.to_ascii_lowercase(), None),
    };
    if !valid_host_name(&host) {
        return Err(UrlError::Host);
    }
    let port = match port {
        None => {
            if https {
                443
            } else {
                80
            }
        }
        Some(p) => match p.parse::<u16>() {
            Ok(n) if n > 0 && !p.starts_with('0') && p.bytes().all(|b| b.is_ascii_digit()) => n,
            _ => return Err(UrlError::Port),
        },
    };
    let path_and_query = match tail {
        "" => "/".to_string(),
        t if t.starts_with('?') => format!("/{t}"),
        t => t.to_string(),
    };
    Ok(Url { https, host, port, path_and_query })
}

/// A DNS name (labels of letters, digits, `_` and `-`, not starting or
/// ending with `-`, a trailing dot allowed) or a dotted IPv4 address.
fn valid_host_name(host: &str) -> bool {
    let name = host.strip_suffix('.').unwrap_or(host);
    !name.is_empty()
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_backend_urls_and_splits_them() {
        let u = parse_url("https://Hooks.Example.com/rh/events?x=1").unwrap();
        assert_eq!(
            (u.https, u.host.as_str(), u.port, u.path_and_query.as_str()),
            (true, "hooks.example.com", 443, "/rh/events?x=1")
        );
        assert_eq!(u.origin(), "https://hooks.example.com:443");
        assert_eq!(u.host_header(), "hooks.example.com");
        let u = parse_url("http://127.0.0.1:8080").unwrap();
        assert_eq!((u.port, u.path_and_query.as_str(), u.host_header()), (8080, "/", "127.0.0.1:8080".to_string()));
        assert_eq!(parse_url("http://localhost?q").unwrap().path_and_query, "/?q");
    }

    #[test]
    fn refuses_what_a_client_could_not_call() {
        for (url, err) in [
            ("ftp://x/", UrlError::Scheme),
            ("example.com/hook", UrlError::Scheme),
            ("http://", UrlError::Host),
            ("http://:80/", UrlError::Host),
            ("http://exa mple.com/", UrlError::Characters),
            ("http://example.com/\n", UrlError::Characters),
            ("http://u:p@example.com/", UrlError::Userinfo),
            ("http://example.com/#f", UrlError::Fragment),
            ("http://example.com:0/", UrlError::Port),
            ("http://example.com:70000/", UrlError::Port),
            ("http://example.com:+80/", UrlError::Port),
            ("http://[::1]/", UrlError::Host),
            ("HTTP://example.com/", UrlError::Scheme),
            ("http://example.com:080/", UrlError::Port),
            ("http://example.com:/", UrlError::Port),
            ("http://-bad-.com/", UrlError::Host),
            ("http://a..b/", UrlError::Host),
        ] {
            assert_eq!(parse_url(url), Err(err.clone()), "{url}");
        }
        assert_eq!(parse_url(&format!("http://a.com/{}", "x".repeat(2048))), Err(UrlError::TooLong));
    }
}
