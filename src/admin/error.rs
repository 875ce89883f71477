//! The admin router's error answers: `{"error": message}` with the right status, built in one
//! place from every way a request can fail, a panic included.

use std::any::Any;

use axum::Json;
use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http::header::{RETRY_AFTER, WWW_AUTHENTICATE};
use http::{HeaderValue, StatusCode};
use serde::Serialize;
use utoipa::ToSchema;

use super::authorize::AdminDenied;
use crate::manager::ManagerError;

/// A JSON error answer: `{"error": message}`.
#[derive(Debug)]
pub(crate) struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }

    /// 400 with `message`.
    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    pub(crate) fn bad_account() -> Self {
        Self::bad_request("account id must be 1 to 64 characters of [A-Za-z0-9_-]")
    }

    pub(crate) fn key_not_found() -> Self {
        Self::new(StatusCode::NOT_FOUND, ManagerError::NotFound.to_string())
    }
}

impl From<ManagerError> for ApiError {
    fn from(err: ManagerError) -> Self {
        match err {
            ManagerError::LimitReached { .. } => Self::new(StatusCode::CONFLICT, err.to_string()),
            ManagerError::NotFound => Self::key_not_found(),
            ManagerError::Policy(policy) => policy.into(),
            // The details (a backend's error text) go to the log, not to the client.
            _ => {
                tracing::warn!(error = %err, "key operation failed");
                Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "key store unavailable, retry later",
                )
            }
        }
    }
}

impl From<AdminDenied> for ApiError {
    fn from(denied: AdminDenied) -> Self {
        match denied {
            AdminDenied::Unauthenticated(message) => {
                Self::new(StatusCode::UNAUTHORIZED, message.into_owned())
            }
            AdminDenied::NotThisAccount => Self::key_not_found(),
            AdminDenied::NotAllowed => Self::new(StatusCode::FORBIDDEN, denied.to_string()),
        }
    }
}

impl From<crate::policy::PolicyError> for ApiError {
    fn from(err: crate::policy::PolicyError) -> Self {
        Self::bad_request(err.to_string())
    }
}

/// The body of every error answer: `{"error": message}`.
#[derive(Serialize, ToSchema)]
#[schema(as = Error)]
pub(crate) struct ErrorBody {
    error: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status;
        let mut response = (
            status,
            Json(ErrorBody {
                error: self.message,
            }),
        )
            .into_response();
        let headers = response.headers_mut();
        if status == StatusCode::SERVICE_UNAVAILABLE {
            headers.insert(RETRY_AFTER, HeaderValue::from_static("1"));
        }
        if status == StatusCode::UNAUTHORIZED {
            headers.insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

// ===== panics =====

/// Marks the answer to a request whose handler panicked, for [`log_panics`].
#[derive(Debug, Clone, Copy)]
struct Panicked;

/// The answer to a panic caught by tower-http's `CatchPanicLayer`: 500
/// `{"error":"internal error"}`. The payload is not looked at: its text may quote anything.
pub(crate) fn panic_answer(_payload: Box<dyn Any + Send + 'static>) -> Response {
    let mut response =
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal error").into_response();
    response.extensions_mut().insert(Panicked);
    response
}

/// Logs a caught panic with the method and the route it happened on (the route's pattern,
/// not the path: no account ids), never the request's body or headers.
pub(crate) async fn log_panics(request: Request, next: Next) -> Response {
    let method = request.method().clone();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "(unmatched)".to_owned(), |path| path.as_str().to_owned());
    let response = next.run(request).await;
    if response.extensions().get::<Panicked>().is_some() {
        tracing::error!(%method, %route, "admin handler panicked; answered 500");
    }
    response
}
