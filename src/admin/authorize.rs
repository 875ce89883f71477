//! Who may manage which account's keys: the [`AdminAuthorizer`] trait, its answer
//! [`AdminDenied`], and the built-in [`AdminToken`].

use std::borrow::Cow;
use std::fmt;

use async_trait::async_trait;
use http::header::AUTHORIZATION;
use http::request::Parts;
use subtle::ConstantTimeEq as _;

use crate::store::AccountId;

/// Decides whether a request may manage an account's keys.
///
/// The router asks [`authenticate`](Self::authenticate) first, for every request (before the
/// path is even looked at), then [`authorize`](Self::authorize) with the account the path
/// names. A denial is answered by the router:
///
/// | denial | answer |
/// | --- | --- |
/// | [`AdminDenied::Unauthenticated`] | 401 `{"error": message}` with `WWW-Authenticate: Bearer` |
/// | [`AdminDenied::NotThisAccount`] | 404 `{"error":"key not found"}`, as for a key that doesn't exist, so a caller can't learn which accounts exist |
///
/// ```
/// use async_trait::async_trait;
/// use http::request::Parts;
/// use tower_api_key::AccountId;
/// use tower_api_key::admin::{AdminAuthorizer, AdminDenied};
///
/// /// Each tenant manages its own keys: `x-tenant` must name the account (a real
/// /// application would verify a session or a signed token here).
/// struct SameTenant;
///
/// #[async_trait]
/// impl AdminAuthorizer for SameTenant {
///     async fn authenticate(&self, request: &Parts) -> Result<(), AdminDenied> {
///         match request.headers.get("x-tenant") {
///             Some(_) => Ok(()),
///             None => Err(AdminDenied::unauthenticated("who are you?")),
///         }
///     }
///
///     async fn authorize(&self, request: &Parts, account: &AccountId) -> Result<(), AdminDenied> {
///         let tenant = request.headers.get("x-tenant").and_then(|v| v.to_str().ok());
///         if tenant == Some(account.as_str()) {
///             Ok(())
///         } else {
///             Err(AdminDenied::NotThisAccount)
///         }
///     }
/// }
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # use std::sync::Arc;
/// # use tower_api_key::{KeyManager, MemoryStore, Pepper};
/// # let manager = KeyManager::new(Arc::new(MemoryStore::new()), Pepper::random()?);
/// let admin: axum::Router = tower_api_key::admin::router(manager, SameTenant);
/// # let _ = admin;
/// # Ok(())
/// # }
/// ```
#[async_trait]
pub trait AdminAuthorizer: Send + Sync + 'static {
    /// Whether the request comes from anyone allowed to use the admin API at all. Called for
    /// every request before the path is parsed; the default lets everyone through and
    /// leaves the decision to [`authorize`](Self::authorize) (a request whose path names an
    /// invalid account id is then answered 400 without asking `authorize`).
    ///
    /// # Errors
    ///
    /// [`AdminDenied`] to refuse the request.
    async fn authenticate(&self, request: &Parts) -> Result<(), AdminDenied> {
        let _ = request;
        Ok(())
    }

    /// Whether the request may manage the keys of `account`.
    ///
    /// # Errors
    ///
    /// [`AdminDenied`] to refuse the request.
    async fn authorize(&self, request: &Parts, account: &AccountId) -> Result<(), AdminDenied>;
}

/// Why an [`AdminAuthorizer`] refused a request.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum AdminDenied {
    /// The caller is not known (no or wrong credentials): 401 with this message and
    /// `WWW-Authenticate: Bearer`. The message must not repeat the credentials.
    Unauthenticated(Cow<'static, str>),
    /// The caller is known but may not manage this account: 404, the answer of a key that
    /// doesn't exist, so that whether the account exists doesn't leak.
    NotThisAccount,
}

impl AdminDenied {
    /// [`AdminDenied::Unauthenticated`] with `message`.
    pub fn unauthenticated(message: impl Into<Cow<'static, str>>) -> Self {
        Self::Unauthenticated(message.into())
    }
}

impl fmt::Display for AdminDenied {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unauthenticated(message) => f.write_str(message),
            Self::NotThisAccount => f.write_str("not allowed to manage this account"),
        }
    }
}

impl std::error::Error for AdminDenied {}

// ===== AdminToken =====

/// One operator token that manages every account, presented as
/// `Authorization: Bearer <token>` (the scheme in any case).
///
/// The token is kept only as a blake3 digest, and a presented token is digested and compared
/// in constant time: the comparison reveals neither the token's bytes nor its length.
/// `Debug` shows nothing of it.
///
/// ```
/// use tower_api_key::admin::{AdminToken, AdminTokenError};
///
/// let token = AdminToken::new("an-operator-token-of-some-length")?;
/// assert!(token.matches("an-operator-token-of-some-length"));
/// assert!(!token.matches("an-operator-token-of-some-lengtH"));
/// assert_eq!(AdminToken::new("too-short").unwrap_err(), AdminTokenError::TooShort);
/// # Ok::<(), AdminTokenError>(())
/// ```
#[derive(Clone)]
pub struct AdminToken(blake3::Hash);

impl AdminToken {
    /// The shortest token accepted, in characters.
    pub const MIN_LEN: usize = 16;

    /// A token of at least [`MIN_LEN`](Self::MIN_LEN) printable ASCII characters without
    /// spaces (it travels in an HTTP header).
    ///
    /// # Errors
    ///
    /// [`AdminTokenError`] otherwise; the error never repeats the token.
    pub fn new(token: &str) -> Result<Self, AdminTokenError> {
        if !token.bytes().all(|byte| byte.is_ascii_graphic()) {
            Err(AdminTokenError::NotPrintable)
        } else if token.len() < Self::MIN_LEN {
            Err(AdminTokenError::TooShort)
        } else {
            Ok(Self(blake3::hash(token.as_bytes())))
        }
    }

    /// Whether `presented` is the token, compared in constant time.
    pub fn matches(&self, presented: &str) -> bool {
        let presented = blake3::hash(presented.as_bytes());
        self.0.as_bytes().ct_eq(presented.as_bytes()).into()
    }
}

impl fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AdminToken(..)")
    }
}

#[async_trait]
impl AdminAuthorizer for AdminToken {
    /// 401 "missing admin token" without a bearer token, "invalid admin token" with another.
    async fn authenticate(&self, request: &Parts) -> Result<(), AdminDenied> {
        let presented = request
            .headers
            .get(AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token.trim());
        match presented {
            Some(token) if self.matches(token) => Ok(()),
            Some(_) => Err(AdminDenied::unauthenticated("invalid admin token")),
            None => Err(AdminDenied::unauthenticated("missing admin token")),
        }
    }

    /// The operator manages every account.
    async fn authorize(&self, _request: &Parts, _account: &AccountId) -> Result<(), AdminDenied> {
        Ok(())
    }
}

/// Why [`AdminToken::new`] refused a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum AdminTokenError {
    /// It holds a space, a control character or a non-ASCII character.
    NotPrintable,
    /// It is shorter than [`AdminToken::MIN_LEN`].
    TooShort,
}

impl fmt::Display for AdminTokenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotPrintable => f.write_str("admin token must be printable ASCII without spaces"),
            Self::TooShort => write!(
                f,
                "admin token is too short: it must be at least {} characters",
                AdminToken::MIN_LEN
            ),
        }
    }
}

impl std::error::Error for AdminTokenError {}
