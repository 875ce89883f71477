//! Bearer tokens as admin credentials: [`AdminToken`], one operator token, and
//! [`AdminTokens`], an operator and any number of tenants, each with a token of its own.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use http::header::AUTHORIZATION;
use http::request::Parts;
use subtle::ConstantTimeEq as _;

use super::authorize::{AdminAttempt, AdminAuthorizer, AdminCaller, AdminDenied};
use super::self_service::SelfService;
use crate::store::AccountId;

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
    /// The operator with the token; 401 "missing admin token" without a bearer token,
    /// "invalid admin token" with another.
    async fn authenticate(&self, request: &Parts) -> Result<AdminCaller, AdminDenied> {
        match bearer(request) {
            Some(token) if self.matches(token) => Ok(AdminCaller::Operator),
            Some(_) => Err(AdminDenied::unauthenticated("invalid admin token")),
            None => Err(AdminDenied::unauthenticated("missing admin token")),
        }
    }
}

/// The token of `Authorization: Bearer <token>`, the scheme in any case.
fn bearer(request: &Parts) -> Option<&str> {
    request
        .headers
        .get(AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim())
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

// ===== AdminTokens =====

/// Bearer tokens for an operator and for tenants: each token names its caller, and callers
/// are authorized by a [`SelfService`] policy (by default [`SelfService::new`]: a tenant
/// manages its own account only and may narrow its keys, never widen them).
///
/// Tokens are kept as blake3 digests and looked up by digest, so neither a token nor its
/// length can be learnt from how long a refusal takes. One token names one caller: giving it
/// twice is a mistake (an operator's token that silently became a tenant's, or the
/// reverse), and panics; [`knows`](Self::knows) checks first.
///
/// ```
/// use tower_api_key::admin::{AdminToken, AdminTokens};
///
/// let tokens = AdminTokens::new()
///     .operator(AdminToken::new("operator-token-0123456789")?)
///     .tenant("acme".parse()?, AdminToken::new("acme-token-0123456789")?)
///     .tenant("globex".parse()?, AdminToken::new("globex-token-0123456789")?);
/// # let _ = tokens;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Default)]
pub struct AdminTokens {
    // Shared: cloning the authorizer (axum state, say) copies no table.
    callers: Arc<HashMap<[u8; 32], AdminCaller>>,
    policy: SelfService,
}

impl AdminTokens {
    /// No tokens yet: every request is 401.
    pub fn new() -> Self {
        Self::default()
    }

    /// `token` is the operator's: every account, no limits.
    ///
    /// # Panics
    ///
    /// If `token` was given already.
    pub fn operator(self, token: AdminToken) -> Self {
        self.given(token, AdminCaller::Operator)
    }

    /// `token` is a user of `account`: that account only, under the self-service policy.
    ///
    /// # Panics
    ///
    /// If `token` was given already.
    pub fn tenant(self, account: AccountId, token: AdminToken) -> Self {
        self.given(token, AdminCaller::Tenant(account))
    }

    /// Whether `token` was given to a caller already.
    pub fn knows(&self, token: &AdminToken) -> bool {
        self.callers.contains_key(token.0.as_bytes())
    }

    fn given(mut self, token: AdminToken, caller: AdminCaller) -> Self {
        let previous = Arc::make_mut(&mut self.callers).insert(*token.0.as_bytes(), caller);
        assert!(
            previous.is_none(),
            "an admin token was given to two callers"
        );
        self
    }

    /// Authorizes tenants with `policy` (a ceiling for new keys, say) instead of
    /// [`SelfService::new`].
    pub fn self_service(mut self, policy: SelfService) -> Self {
        self.policy = policy;
        self
    }
}

impl fmt::Debug for AdminTokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdminTokens")
            .field("callers", &self.callers.len())
            .field("self_service", &self.policy)
            .finish()
    }
}

#[async_trait]
impl AdminAuthorizer for AdminTokens {
    /// The caller the bearer token was given for; 401 "missing admin token" without one,
    /// "invalid admin token" for a token nobody was given.
    async fn authenticate(&self, request: &Parts) -> Result<AdminCaller, AdminDenied> {
        let token = bearer(request).ok_or(AdminDenied::unauthenticated("missing admin token"))?;
        let digest = blake3::hash(token.as_bytes());
        self.callers
            .get(digest.as_bytes())
            .cloned()
            .ok_or(AdminDenied::unauthenticated("invalid admin token"))
    }

    async fn authorize(&self, attempt: &AdminAttempt<'_>) -> Result<(), AdminDenied> {
        self.policy.authorize(attempt)
    }
}
