//! The admin router's error answers: `{"error": message}` with the right status, built in one
//! place from every way a request can fail.

use axum::Json;
use axum::response::{IntoResponse, Response};
use http::header::{RETRY_AFTER, WWW_AUTHENTICATE};
use http::{HeaderValue, StatusCode};
use serde::Serialize;

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
        }
    }
}

impl From<crate::policy::PolicyError> for ApiError {
    fn from(err: crate::policy::PolicyError) -> Self {
        Self::bad_request(err.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        #[derive(Serialize)]
        struct Body {
            error: String,
        }
        let status = self.status;
        let mut response = (
            status,
            Json(Body {
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
