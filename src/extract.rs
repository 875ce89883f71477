//! The axum extractor: `Authenticated<A>` and `Option<Authenticated<A>>` in handlers.
//!
//! ```
//! use axum::{Router, routing::get};
//! use tower_api_key::Authenticated;
//! use tower_api_key::resolver::KeyIdentity;
//!
//! async fn whoami(who: Authenticated<KeyIdentity>) -> String {
//!     who.account_id().to_string()
//! }
//!
//! async fn greeting(who: Option<Authenticated<KeyIdentity>>) -> String {
//!     match who {
//!         Some(who) => format!("hello, {}", who.account_id()),
//!         None => "hello, stranger".to_owned(),
//!     }
//! }
//!
//! let app: Router = Router::new()
//!     .route("/whoami", get(whoami))
//!     .route("/hello", get(greeting));
//! // ... then `.layer(api_key_layer)`.
//! # let _ = app;
//! ```

use std::convert::Infallible;
use std::fmt;

use axum_core::extract::{FromRequestParts, OptionalFromRequestParts};
use axum_core::response::{IntoResponse, Response};
use http::header::CONTENT_TYPE;
use http::request::Parts;
use http::{HeaderValue, StatusCode};

use crate::Authenticated;

impl<S, A> FromRequestParts<S> for Authenticated<A>
where
    S: Send + Sync,
    A: Send + Sync + 'static,
{
    type Rejection = MissingAuthentication;

    /// Takes the account the layer inserted; a missing one is a server bug (500), not a
    /// client error: the layer answers unauthenticated requests itself.
    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<Self>()
            .cloned()
            .ok_or(MissingAuthentication {
                type_name: std::any::type_name::<A>(),
            })
    }
}

impl<S, A> OptionalFromRequestParts<S> for Authenticated<A>
where
    S: Send + Sync,
    A: Send + Sync + 'static,
{
    type Rejection = Infallible;

    /// `None` for a request let through without a key (the layer's optional mode).
    async fn from_request_parts(
        parts: &mut Parts,
        _state: &S,
    ) -> Result<Option<Self>, Self::Rejection> {
        Ok(parts.extensions.get::<Self>().cloned())
    }
}

/// A handler asked for `Authenticated<A>` but the request has none: the route is not behind
/// an [`ApiKeyLayer`](crate::ApiKeyLayer), or the layer resolves another account type.
/// Answers 500 with a message that says so.
#[derive(Debug, Clone, Copy)]
pub struct MissingAuthentication {
    type_name: &'static str,
}

impl fmt::Display for MissingAuthentication {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "no Authenticated<{}> in the request extensions: is the route behind ApiKeyLayer?",
            self.type_name
        )
    }
}

impl std::error::Error for MissingAuthentication {}

impl IntoResponse for MissingAuthentication {
    fn into_response(self) -> Response {
        tracing::error!("{self}");
        let body = format!(r#"{{"error":"{}"}}"#, self.to_string().replace('"', "'"));
        let mut response = (StatusCode::INTERNAL_SERVER_ERROR, body).into_response();
        response
            .headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        response
    }
}
