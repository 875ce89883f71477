//! What a browser could be made to send from another site is refused before any handler
//! runs: state-changing requests (POST, PATCH, DELETE) from a foreign `Origin` or, without
//! one, a `Sec-Fetch-Site` of `cross-site` or `same-site` (403), and bodies or content types
//! that aren't `application/json` (415), which a page or a form can send without a CORS
//! preflight.
//!
//! Requests that carry neither header (curl, SDKs, other servers) are unaffected: forging
//! requests is an attack on browsers' ambient credentials (cookies), and browsers send them.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse as _, Response};
use http::header::{CONTENT_TYPE, HOST, ORIGIN};
use http::{HeaderValue, Method, StatusCode};
use http_body::Body as _;

use super::error::ApiError;

/// The origins a host allows besides each request's own, normalized by [`normalize`].
#[derive(Debug, Clone, Default)]
pub(crate) struct AllowedOrigins(Vec<String>);

impl AllowedOrigins {
    /// Adds `origin` (`scheme://host[:port]`).
    ///
    /// # Panics
    ///
    /// If `origin` is not of that form.
    pub(crate) fn allow(&mut self, origin: &str) {
        let normalized = normalize(origin.trim_end_matches('/')).unwrap_or_else(|| {
            panic!("an allowed origin must look like https://host[:port], not {origin:?}")
        });
        self.0.push(normalized);
    }

    /// Whether the request may be a change: its `Origin` is its own or an allowed one, or it
    /// has none and doesn't say it comes from another site.
    fn same_site(&self, request: &Request) -> bool {
        let mut origins = request.headers().get_all(ORIGIN).iter();
        match (origins.next(), origins.next()) {
            (None, _) => !matches!(
                request
                    .headers()
                    .get("sec-fetch-site")
                    .map(HeaderValue::as_bytes),
                Some(b"cross-site" | b"same-site")
            ),
            (Some(origin), None) => {
                let Some(origin) = origin.to_str().ok().and_then(normalize) else {
                    // `null` (a sandboxed frame, a redirect across sites) and anything
                    // unreadable.
                    return false;
                };
                self.0.contains(&origin) || own_origin(request, &origin)
            }
            // Browsers send one Origin.
            (Some(_), Some(_)) => false,
        }
    }
}

/// The middleware: refuses a state-changing request a browser sent cross-site, or with a
/// body that isn't JSON; passes everything else on.
pub(crate) async fn refuse_cross_site(
    State(allowed): State<Arc<AllowedOrigins>>,
    request: Request,
    next: Next,
) -> Response {
    let changes = matches!(
        *request.method(),
        Method::POST | Method::PATCH | Method::DELETE
    );
    if changes {
        if !allowed.same_site(&request) {
            return ApiError::new(StatusCode::FORBIDDEN, "cross-site request refused")
                .into_response();
        }
        // A content type that isn't JSON is refused even on an empty body: that is what an
        // HTML form sends, and old browsers send forms without `Origin`.
        let content_type = request.headers().get(CONTENT_TYPE);
        let declared_other = content_type.is_some() && !is_json(content_type);
        if declared_other || (has_body(&request) && content_type.is_none()) {
            return ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "content-type must be application/json",
            )
            .into_response();
        }
    }
    next.run(request).await
}

/// Whether `origin` (normalized) names the host the request was sent to: its `:authority`
/// (HTTP/2) or `Host`. The scheme can't be checked here (TLS may end at a proxy).
fn own_origin(request: &Request, origin: &str) -> bool {
    let host = match request.uri().authority() {
        Some(authority) => Some(authority.as_str()),
        None => request
            .headers()
            .get(HOST)
            .and_then(|host| host.to_str().ok()),
    };
    let Some((scheme, authority)) = origin.split_once("://") else {
        return false;
    };
    host.is_some_and(|host| without_default_port(scheme, &host.to_ascii_lowercase()) == authority)
}

/// `scheme://authority` in lower case without the scheme's default port, or `None` if
/// `origin` isn't of that form.
fn normalize(origin: &str) -> Option<String> {
    let (scheme, authority) = origin.split_once("://")?;
    let scheme_ok = scheme
        .bytes()
        .next()
        .is_some_and(|first| first.is_ascii_alphabetic())
        && scheme
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'));
    let authority_ok = !authority.is_empty()
        && !authority
            .bytes()
            .any(|b| matches!(b, b'/' | b'?' | b'#' | b'@') || !b.is_ascii_graphic());
    if !scheme_ok || !authority_ok {
        return None;
    }
    let scheme = scheme.to_ascii_lowercase();
    let authority = authority.to_ascii_lowercase();
    let authority = without_default_port(&scheme, &authority);
    Some(format!("{scheme}://{authority}"))
}

fn without_default_port<'a>(scheme: &str, authority: &'a str) -> &'a str {
    let default = match scheme {
        "http" => ":80",
        "https" => ":443",
        _ => return authority,
    };
    authority.strip_suffix(default).unwrap_or(authority)
}

/// Whether the request carries a body: anything but a known-empty one.
fn has_body(request: &Request) -> bool {
    let body = request.body();
    !(body.is_end_stream() || body.size_hint().exact() == Some(0))
}

/// `application/json`, with or without parameters, in any case.
fn is_json(content_type: Option<&HeaderValue>) -> bool {
    content_type
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split(';').next())
        .is_some_and(|media| media.trim().eq_ignore_ascii_case("application/json"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_are_compared_in_lower_case_without_default_ports() {
        assert_eq!(
            normalize("HTTPS://Console.Example.com:443").as_deref(),
            Some("https://console.example.com")
        );
        assert_eq!(
            normalize("http://localhost:3000").as_deref(),
            Some("http://localhost:3000")
        );
        for bad in [
            "null",
            "https://",
            "example.com",
            "https://a/b",
            "https://u@a",
            "1x://a",
        ] {
            assert_eq!(normalize(bad), None, "{bad}");
        }
    }

    #[test]
    fn only_application_json_is_json() {
        let json = |value: &'static str| is_json(Some(&HeaderValue::from_static(value)));
        assert!(json("application/json"));
        assert!(json("Application/JSON ; charset=utf-8"));
        assert!(!json("application/jsonp"));
        assert!(!json("text/plain"));
        assert!(!json("application/x-www-form-urlencoded"));
        assert!(!is_json(None));
    }
}
