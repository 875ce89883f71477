//! Who may do what to which account's keys: the [`AdminAuthorizer`] trait, the caller it
//! identifies ([`AdminCaller`]), what the caller attempts ([`AdminAttempt`],
//! [`AdminOperation`]), and its refusals ([`AdminDenied`]).

use std::borrow::Cow;
use std::fmt;

use async_trait::async_trait;
use http::request::Parts;

use super::self_service::SelfService;
use crate::audit::Actor;
use crate::manager::KeyInfo;
use crate::policy::{KeyOptions, PolicyUpdate, RotateOptions};
use crate::store::{AccountId, KeyId};

/// Decides who is calling the admin API and what they may do.
///
/// The router asks [`authenticate`](Self::authenticate) first, for every request (before the
/// path or the body is looked at), then [`authorize`](Self::authorize) with the account, the
/// operation and, for create and update, the policy asked for, right before it changes
/// anything. A denial is answered by the router:
///
/// | denial | answer |
/// | --- | --- |
/// | [`AdminDenied::Unauthenticated`] | 401 `{"error": message}` with `WWW-Authenticate: Bearer` |
/// | [`AdminDenied::NotThisAccount`] | 404 `{"error":"key not found"}`, byte for byte the answer for a key that doesn't exist, so a caller can't learn which accounts or keys exist |
/// | [`AdminDenied::NotAllowed`] | 403 `{"error":"not allowed for this caller"}` |
///
/// Only `authenticate` is required. The default `authorize` is [`SelfService::new`]: an
/// [`AdminCaller::Operator`] may do anything; an [`AdminCaller::Tenant`] manages its own
/// account only and may narrow its keys but never widen them. Override it to add a ceiling
/// for new keys ([`SelfService::ceiling`]) or rules of your own.
///
/// **What if it panics?** The router answers 500 `{"error":"internal error"}` and logs the
/// route; the connection stays usable.
///
/// ```
/// use async_trait::async_trait;
/// use http::request::Parts;
/// use tower_api_key::admin::{AdminAuthorizer, AdminCaller, AdminDenied};
///
/// /// Each customer manages its own keys: `x-customer` stands in for a real session check.
/// struct Customers;
///
/// #[async_trait]
/// impl AdminAuthorizer for Customers {
///     async fn authenticate(&self, request: &Parts) -> Result<AdminCaller, AdminDenied> {
///         let customer = request.headers.get("x-customer").and_then(|v| v.to_str().ok());
///         match customer.map(str::parse) {
///             Some(Ok(account)) => Ok(AdminCaller::Tenant(account)),
///             _ => Err(AdminDenied::unauthenticated("sign in first")),
///         }
///     }
///     // `authorize` is left to the default: own account only, narrowing only.
/// }
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # use std::sync::Arc;
/// # use tower_api_key::{KeyManager, MemoryStore, Pepper};
/// # let manager = KeyManager::new(Arc::new(MemoryStore::new()), Pepper::random()?);
/// let admin: axum::Router = tower_api_key::admin::AdminRouter::new(manager, Customers).into_router();
/// # let _ = admin;
/// # Ok(())
/// # }
/// ```
#[async_trait]
pub trait AdminAuthorizer: Send + Sync + 'static {
    /// Who the request comes from.
    ///
    /// # Errors
    ///
    /// [`AdminDenied`] to refuse the request, usually
    /// [`Unauthenticated`](AdminDenied::Unauthenticated).
    async fn authenticate(&self, request: &Parts) -> Result<AdminCaller, AdminDenied>;

    /// Whether the caller may make `attempt`. The default is [`SelfService::new`]'s rules.
    ///
    /// # Errors
    ///
    /// [`AdminDenied`] to refuse the attempt; nothing has changed yet.
    async fn authorize(&self, attempt: &AdminAttempt<'_>) -> Result<(), AdminDenied> {
        SelfService::new().authorize(attempt)
    }

    /// The name the [audit trail](crate::audit) records for `caller`'s changes and refused
    /// attempts. The default is [`Actor::operator`] (`operator`) for the operator and
    /// [`Actor::tenant`] (`tenant:ACCOUNT`) for a tenant; an authorizer that knows the
    /// person (a session, a named token) names them here, from the same request.
    ///
    /// ```
    /// use async_trait::async_trait;
    /// use http::request::Parts;
    /// use tower_api_key::admin::{AdminAuthorizer, AdminCaller, AdminDenied};
    /// use tower_api_key::audit::Actor;
    ///
    /// /// Operators sign their requests with `x-operator: NAME` (standing in for a real
    /// /// session check).
    /// struct NamedOperators;
    ///
    /// #[async_trait]
    /// impl AdminAuthorizer for NamedOperators {
    ///     async fn authenticate(&self, request: &Parts) -> Result<AdminCaller, AdminDenied> {
    ///         match request.headers.get("x-operator") {
    ///             Some(_) => Ok(AdminCaller::Operator),
    ///             None => Err(AdminDenied::unauthenticated("sign in first")),
    ///         }
    ///     }
    ///
    ///     fn actor(&self, _caller: &AdminCaller, request: &Parts) -> Actor {
    ///         let name = request.headers.get("x-operator").and_then(|v| v.to_str().ok());
    ///         let named = name.and_then(|name| Actor::new(&format!("operator:{name}")).ok());
    ///         named.unwrap_or_else(Actor::operator)
    ///     }
    /// }
    ///
    /// let (request, ()) = http::Request::get("/").header("x-operator", "alice").body(())
    ///     .expect("a request").into_parts();
    /// let actor = NamedOperators.actor(&AdminCaller::Operator, &request);
    /// assert_eq!(actor.as_str(), "operator:alice");
    /// ```
    fn actor(&self, caller: &AdminCaller, request: &Parts) -> Actor {
        let _ = request;
        match caller {
            AdminCaller::Operator => Actor::operator(),
            AdminCaller::Tenant(account) => Actor::tenant(account),
        }
    }
}

// ===== AdminCaller =====

/// Who is calling the admin API, as [`AdminAuthorizer::authenticate`] found.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum AdminCaller {
    /// The operator: manages every account's keys, without limits.
    Operator,
    /// A user of one account: may manage that account's keys only, and (under
    /// [`SelfService`]) only narrow what they can do.
    Tenant(AccountId),
}

// ===== AdminAttempt =====

/// What a caller is about to do, for [`AdminAuthorizer::authorize`].
///
/// `Debug` shows the request's method and path only: its headers carry the caller's
/// credentials.
#[non_exhaustive]
pub struct AdminAttempt<'a> {
    /// The request's head (method, path, headers, extensions).
    pub request: &'a Parts,
    /// Who is calling.
    pub caller: &'a AdminCaller,
    /// The account the path names.
    pub account: &'a AccountId,
    /// What the caller asks for.
    pub operation: AdminOperation<'a>,
}

impl<'a> AdminAttempt<'a> {
    /// An attempt, for unit tests of an authorizer (the router builds them itself).
    pub fn new(
        request: &'a Parts,
        caller: &'a AdminCaller,
        account: &'a AccountId,
        operation: AdminOperation<'a>,
    ) -> Self {
        Self {
            request,
            caller,
            account,
            operation,
        }
    }
}

impl fmt::Debug for AdminAttempt<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdminAttempt")
            .field("method", &self.request.method)
            .field("path", &self.request.uri.path())
            .field("caller", &self.caller)
            .field("account", &self.account)
            .field("operation", &self.operation)
            .finish()
    }
}

/// An operation of the admin API, with what it asks for.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub enum AdminOperation<'a> {
    /// `GET …/keys`: the account's keys.
    List,
    /// `GET …/keys/{id}`: one key; also a `PATCH` whose body changes nothing (it answers the
    /// record as it is).
    Get(KeyId),
    /// `POST …/keys`: a new key with these options (already checked by the policy's own
    /// rules): every field the body set, its name, scopes, expiry, rate limit, quota,
    /// allowlist and metadata included.
    Create(&'a KeyOptions),
    /// `PATCH …/keys/{id}`: a change to `key`'s policy. `key` is the record as read just
    /// before the change; `update` holds each field the body named (`Some(None)` for a
    /// `null`, which clears it), the quota, allowlist and metadata included.
    Update {
        /// The key as it is now.
        key: &'a KeyInfo,
        /// What would change.
        update: &'a PolicyUpdate,
    },
    /// `POST …/keys/{id}/rotate`.
    Rotate {
        /// The key.
        id: KeyId,
        /// The grace period asked for.
        options: &'a RotateOptions,
    },
    /// `POST …/keys/{id}/revoke`.
    Revoke(KeyId),
    /// `POST …/keys/{id}/reactivate`.
    Reactivate(KeyId),
    /// `DELETE …/keys/{id}`.
    Delete(KeyId),
    /// `GET …/keys/{id}/usage` (`Some(id)`) or `GET …/usage` (`None`, the whole account's):
    /// request counts over time. A read: it changes nothing.
    Usage(Option<KeyId>),
    /// `GET …/events`: the account's audit trail. A read: it changes nothing.
    Events,
}

impl AdminOperation<'_> {
    /// `"list"`, `"get"`, `"create"`, `"update"`, `"rotate"`, `"revoke"`, `"reactivate"`,
    /// `"delete"`, `"usage"` or `"events"`.
    pub fn name(&self) -> &'static str {
        match self {
            Self::List => "list",
            Self::Get(_) => "get",
            Self::Create(_) => "create",
            Self::Update { .. } => "update",
            Self::Rotate { .. } => "rotate",
            Self::Revoke(_) => "revoke",
            Self::Reactivate(_) => "reactivate",
            Self::Delete(_) => "delete",
            Self::Usage(_) => "usage",
            Self::Events => "events",
        }
    }
}

// ===== AdminDenied =====

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
    /// The caller may manage the account but not do this (widen a key, say): 403
    /// `{"error":"not allowed for this caller"}`.
    NotAllowed,
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
            Self::NotAllowed => f.write_str("not allowed for this caller"),
        }
    }
}

impl std::error::Error for AdminDenied {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_attempts_debug_shows_no_header() {
        let (parts, ()) = http::Request::post("/admin/accounts/acme/keys")
            .header("authorization", "Bearer operator-token-0123456789")
            .header("cookie", "session=s3cret")
            .body(())
            .expect("request")
            .into_parts();
        let account: AccountId = "acme".parse().expect("account");
        let attempt = AdminAttempt::new(
            &parts,
            &AdminCaller::Operator,
            &account,
            AdminOperation::List,
        );
        let shown = format!("{attempt:?}");
        assert!(shown.contains("/admin/accounts/acme/keys"), "{shown}");
        assert!(
            !shown.contains("operator-token") && !shown.contains("s3cret"),
            "{shown}"
        );
    }
}
