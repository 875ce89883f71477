//! The layer's own answers: 401 for a missing, invalid or expired key, 403 for a key without
//! a route's scope or used from an address its allowlist excludes, 429 for a key over its
//! rate limit or its quota, 503 when the lookup fails, as JSON for HTTP clients and as a
//! Trailers-Only gRPC status for gRPC clients.
//!
//! | rejection | HTTP | gRPC (`content-type: application/grpc…`) |
//! | --- | --- | --- |
//! | [`Rejection::MissingKey`] | 401 `{"error":"missing API key"}` | `grpc-status: 16` |
//! | [`Rejection::InvalidKey`] | 401 `{"error":"invalid API key"}` | `grpc-status: 16` |
//! | [`Rejection::Expired`] | 401 `{"error":"expired API key"}` | `grpc-status: 16` |
//! | [`Rejection::InsufficientScope`] | 403 `{"error":"insufficient scope"}` | `grpc-status: 7` |
//! | [`Rejection::AddressNotAllowed`] | 403 `{"error":"address not allowed"}` | `grpc-status: 7` |
//! | [`Rejection::RateLimited`] | 429 `{"error":"rate limit exceeded"}` with `Retry-After` | `grpc-status: 8` |
//! | [`Rejection::QuotaExceeded`] | 429 `{"error":"quota exceeded"}` with `Retry-After` | `grpc-status: 8` |
//! | [`Rejection::Unavailable`] | 503 with `Retry-After` | `grpc-status: 14` |
//!
//! Every 401 carries `WWW-Authenticate: ApiKey header="X-API-KEY"` (naming the layer's
//! header), as HTTP requires of a 401.
//!
//! A gRPC answer is HTTP 200 with the status in headers: a plain 401 would make tonic
//! clients report `Internal` instead of `Unauthenticated`.
//!
//! ```
//! use tower_api_key::Rejection;
//!
//! let response = Rejection::InvalidKey.http_response();
//! assert_eq!(response.status(), 401);
//! assert_eq!(response.body().as_ref(), br#"{"error":"invalid API key"}"#);
//!
//! let response = Rejection::InvalidKey.grpc_response();
//! assert_eq!(response.status(), 200);
//! assert_eq!(response.headers()["grpc-status"], "16");
//! ```

use std::fmt;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE};
use http::{HeaderMap, HeaderValue, Method, Response, StatusCode, Uri};

/// Why the layer answered a request itself.
///
/// All bad keys (malformed, unknown, inactive, deleted, rotated away) are one
/// [`InvalidKey`](Self::InvalidKey): the answer never tells whether a key exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Rejection {
    /// The request has no API-key header.
    MissingKey,
    /// The request's API key is not valid now.
    InvalidKey,
    /// The request's API key was valid but has expired (or is the old key of a rotation
    /// whose grace period has ended).
    Expired,
    /// The request's key is valid but lacks the scope the route requires (answered by
    /// [`RequireScopeLayer`](crate::RequireScopeLayer)).
    InsufficientScope,
    /// The key is valid but over its rate limit (see [`rate_limit`](crate::rate_limit)); the
    /// layer's answer also carries the key's budget and when to retry.
    RateLimited,
    /// The key is valid but the request comes from an address outside the key's
    /// [`AllowedIps`](crate::policy::AllowedIps), or from an address the layer can't tell.
    AddressNotAllowed,
    /// The key is valid but has had its [`Quota`](crate::policy::Quota) of requests for the
    /// period; the layer's answer says in `Retry-After` how many seconds until the period
    /// ends.
    QuotaExceeded,
    /// The key could not be checked (the resolver failed, timed out or panicked, or too many
    /// lookups are running); the client may retry.
    Unavailable,
}

const JSON: HeaderValue = HeaderValue::from_static("application/json");
const GRPC: HeaderValue = HeaderValue::from_static("application/grpc");
/// Seconds a client should wait before retrying after a 503 (or a 429 with no budget known).
const RETRY_AFTER_SECONDS: HeaderValue = HeaderValue::from_static("1");
/// The challenge of a 401 for the default header.
const DEFAULT_CHALLENGE: HeaderValue = HeaderValue::from_static(r#"ApiKey header="X-API-KEY""#);

/// The `WWW-Authenticate` value of a 401 for keys sent in `header`.
pub(crate) fn challenge(header: &http::HeaderName) -> HeaderValue {
    if header == "x-api-key" {
        return DEFAULT_CHALLENGE;
    }
    // Header names are tokens: no quote or backslash can end up inside the quoted string.
    HeaderValue::try_from(format!(r#"ApiKey header="{}""#, header.as_str()))
        .unwrap_or(DEFAULT_CHALLENGE)
}

/// Each rejection's text, written once: it is the message and, at compile time, the JSON
/// body.
macro_rules! rejection_texts {
    ($($variant:ident => $text:literal),* $(,)?) => {
        impl Rejection {
            /// The short message of both answers.
            pub const fn message(self) -> &'static str {
                match self {
                    $(Self::$variant => $text,)*
                }
            }

            /// `{"error":"<message>"}`.
            const fn json(self) -> &'static str {
                match self {
                    $(Self::$variant => concat!(r#"{"error":""#, $text, r#""}"#),)*
                }
            }
        }
    };
}

rejection_texts! {
    MissingKey => "missing API key",
    InvalidKey => "invalid API key",
    Expired => "expired API key",
    InsufficientScope => "insufficient scope",
    RateLimited => "rate limit exceeded",
    AddressNotAllowed => "address not allowed",
    QuotaExceeded => "quota exceeded",
    Unavailable => "API key check unavailable, retry later",
}

impl Rejection {
    /// The HTTP status of the JSON answer.
    pub const fn status(self) -> StatusCode {
        match self {
            Self::MissingKey | Self::InvalidKey | Self::Expired => StatusCode::UNAUTHORIZED,
            Self::InsufficientScope | Self::AddressNotAllowed => StatusCode::FORBIDDEN,
            Self::RateLimited | Self::QuotaExceeded => StatusCode::TOO_MANY_REQUESTS,
            Self::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The gRPC status code: 16 (`UNAUTHENTICATED`), 7 (`PERMISSION_DENIED`), 8
    /// (`RESOURCE_EXHAUSTED`) or 14 (`UNAVAILABLE`).
    pub const fn grpc_code(self) -> u8 {
        match self {
            Self::MissingKey | Self::InvalidKey | Self::Expired => 16,
            Self::InsufficientScope | Self::AddressNotAllowed => 7,
            Self::RateLimited | Self::QuotaExceeded => 8,
            Self::Unavailable => 14,
        }
    }

    /// The JSON answer: `{"error": message}` with `content-type: application/json`,
    /// `WWW-Authenticate: ApiKey header="X-API-KEY"` on a 401, and `Retry-After` on a 429 or
    /// a 503 (1 s; the layer's own 429 says when the key's budget allows the next request).
    pub fn http_response(self) -> Response<Bytes> {
        let mut response = Response::new(Bytes::from_static(self.json().as_bytes()));
        *response.status_mut() = self.status();
        let headers = response.headers_mut();
        headers.insert(CONTENT_TYPE, JSON);
        match self.status() {
            StatusCode::UNAUTHORIZED => {
                headers.insert(WWW_AUTHENTICATE, DEFAULT_CHALLENGE);
            }
            StatusCode::SERVICE_UNAVAILABLE | StatusCode::TOO_MANY_REQUESTS => {
                headers.insert(RETRY_AFTER, RETRY_AFTER_SECONDS);
            }
            _ => {}
        }
        response
    }

    /// The Trailers-Only gRPC answer: HTTP 200, `content-type: application/grpc`,
    /// `grpc-status` and `grpc-message` headers, and an empty body.
    pub fn grpc_response(self) -> Response<Bytes> {
        let mut response = Response::new(Bytes::new());
        let headers = response.headers_mut();
        headers.insert(CONTENT_TYPE, GRPC);
        self.insert_grpc_status(headers);
        response
    }

    /// The trailers that end a gRPC response with this rejection: `grpc-status` and
    /// `grpc-message` (how the layer ends an open stream whose key stopped letting it
    /// through).
    pub fn grpc_trailers(self) -> HeaderMap {
        let mut trailers = HeaderMap::with_capacity(2);
        self.insert_grpc_status(&mut trailers);
        trailers
    }

    fn insert_grpc_status(self, headers: &mut HeaderMap) {
        headers.insert(
            "grpc-status",
            HeaderValue::from(u16::from(self.grpc_code())),
        );
        // Messages are printable ASCII without '%', so they need no percent-encoding.
        headers.insert("grpc-message", HeaderValue::from_static(self.message()));
    }

    /// The answer that suits a request with these headers: gRPC for a gRPC call, JSON
    /// otherwise.
    pub fn response_for(self, headers: &HeaderMap) -> Response<Bytes> {
        if is_grpc(headers) {
            self.grpc_response()
        } else {
            self.http_response()
        }
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.message())
    }
}

/// Whether a request is a gRPC call: its `content-type` starts with `application/grpc`.
pub(crate) fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(CONTENT_TYPE)
        .is_some_and(|value| value.as_bytes().starts_with(b"application/grpc"))
}

/// What a custom rejection hook sees of a refused request.
#[derive(Debug)]
#[non_exhaustive]
pub struct RejectionContext<'a> {
    /// Why the request is refused.
    pub rejection: Rejection,
    /// The request method.
    pub method: &'a Method,
    /// The request URI.
    pub uri: &'a Uri,
    /// The request headers. The API-key header is among them: never log it.
    pub headers: &'a HeaderMap,
}

impl RejectionContext<'_> {
    /// Whether the request is a gRPC call.
    pub fn is_grpc(&self) -> bool {
        is_grpc(self.headers)
    }

    /// The answer the layer gives without a hook.
    pub fn default_response(&self) -> Response<Bytes> {
        self.rejection.response_for(self.headers)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_bodies_are_valid_json_with_the_message() {
        for rejection in [
            Rejection::MissingKey,
            Rejection::InvalidKey,
            Rejection::Expired,
            Rejection::InsufficientScope,
            Rejection::RateLimited,
            Rejection::AddressNotAllowed,
            Rejection::QuotaExceeded,
            Rejection::Unavailable,
        ] {
            let expected = format!(r#"{{"error":"{}"}}"#, rejection.message());
            assert_eq!(rejection.json(), expected);
            let response = rejection.http_response();
            assert_eq!(response.headers()[CONTENT_TYPE], "application/json");
            assert_eq!(response.body(), expected.as_bytes());
        }
    }

    #[test]
    fn unavailable_carries_retry_after_and_401s_do_not() {
        assert_eq!(
            Rejection::Unavailable.http_response().headers()[RETRY_AFTER],
            "1"
        );
        assert!(
            !Rejection::InvalidKey
                .http_response()
                .headers()
                .contains_key(RETRY_AFTER)
        );
    }

    #[test]
    fn every_401_and_only_401s_carry_a_challenge_naming_the_header() {
        for rejection in [
            Rejection::MissingKey,
            Rejection::InvalidKey,
            Rejection::Expired,
        ] {
            assert_eq!(
                rejection.http_response().headers()[WWW_AUTHENTICATE],
                r#"ApiKey header="X-API-KEY""#
            );
        }
        for rejection in [
            Rejection::InsufficientScope,
            Rejection::AddressNotAllowed,
            Rejection::QuotaExceeded,
            Rejection::Unavailable,
        ] {
            let response = rejection.http_response();
            assert!(!response.headers().contains_key(WWW_AUTHENTICATE));
        }
        assert_eq!(
            challenge(&http::HeaderName::from_static("x-custom-key")),
            r#"ApiKey header="x-custom-key""#
        );
        assert_eq!(
            Rejection::InsufficientScope.grpc_response().headers()["grpc-status"],
            "7"
        );
    }

    #[test]
    fn grpc_answers_are_trailers_only() {
        let response = Rejection::Unavailable.grpc_response();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()[CONTENT_TYPE], "application/grpc");
        assert_eq!(response.headers()["grpc-status"], "14");
        assert!(response.body().is_empty());
        assert_eq!(
            Rejection::MissingKey.grpc_response().headers()["grpc-status"],
            "16"
        );
    }

    #[test]
    fn grpc_is_detected_by_content_type_prefix() {
        let mut headers = HeaderMap::new();
        assert!(!is_grpc(&headers));
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/grpc+proto"),
        );
        assert!(is_grpc(&headers));
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        assert!(!is_grpc(&headers));
    }
}
