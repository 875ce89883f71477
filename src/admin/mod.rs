//! The key-management JSON API as an axum [`Router`] (feature `admin`): list, create, read,
//! update, rotate, revoke, reactivate and delete an account's keys through one
//! [`KeyManager`], behind a pluggable [`AdminAuthorizer`].
//!
//! | route | answer |
//! | --- | --- |
//! | `GET /admin/accounts/{account}/keys` | 200 `{"keys": [record, …]}`, oldest first |
//! | `POST /admin/accounts/{account}/keys` | 201 record with `"key"` (the plaintext, shown once) |
//! | `GET /admin/accounts/{account}/keys/{id}` | 200 record |
//! | `PATCH /admin/accounts/{account}/keys/{id}` | 200 record |
//! | `POST /admin/accounts/{account}/keys/{id}/rotate` | 200 record with `"key"` |
//! | `POST /admin/accounts/{account}/keys/{id}/revoke`, `…/reactivate` | 200 record |
//! | `DELETE /admin/accounts/{account}/keys/{id}` | 204 |
//! | `GET /admin/accounts/{account}/keys/{id}/usage` | 200 the key's usage |
//! | `GET /admin/accounts/{account}/usage` | 200 the account's usage (every key's, deleted ones included) |
//! | `GET /admin/accounts/{account}/events` | 200 the account's [audit trail](#audit-trail), newest first |
//! | `GET /admin/openapi.json` | 200 the [OpenAPI document](#openapi) of these routes, to any caller (no credentials) |
//!
//! A record is `{"id", "account_id", "prefix", "status" ("active" or "inactive"),
//! "created_at", "last_used_at", "requests_24h", "name", "scopes", "expires_at",
//! "rate_limit", "quota", "quota_used", "allowed_ips", "metadata"}`, times in RFC 3339 (UTC,
//! microseconds) or `null`, `requests_24h` the key's
//! accepted requests in the last 24 hourly buckets (the current hour included; as recorded by
//! a [`UsageRecorder`](crate::usage::UsageRecorder)), or `null` if the store couldn't read them
//! (logged: a key is still listed, read and changed without its count), `name` a string or `null`, `scopes` a list or
//! `null` (unrestricted), `rate_limit` `{"requests": n, "per_seconds": s}` or `null` (none of
//! the key's own), `quota` `{"requests": n, "period": "day" | "month"}` or `null` (no cap),
//! `quota_used` the key's accepted requests in its quota's current period (the UTC calendar
//! day or month; as of the recorder's last flush, so requests of the last flush interval are
//! not in it yet), or `null` for a key without a quota or if the store couldn't read them (as
//! `requests_24h`), `allowed_ips` the [allowlist](crate::policy::AllowedIps)'s blocks as
//! strings (`["198.51.100.7/32", "203.0.113.0/24"]`, normalized and sorted) or `null` (any
//! address), `metadata` the key's [metadata](crate::policy::Metadata) object or `null`; while
//! the old key of a rotation with a grace period still works, also
//! `"previous_prefix"` and `"previous_expires_at"`.
//!
//! Request bodies are optional (no body and an empty one are the same); one that is present
//! must say `Content-Type: application/json` (parameters allowed) and be one JSON object
//! with no unknown member and no member given twice:
//!
//! - create: `{"name": str, "expires_in_seconds": 1..=315360000 | "expires_at": RFC 3339
//!   in the future, "scopes": [str], "rate_limit": {"requests": 1..=1000000, "per_seconds":
//!   1..=86400}, "quota": {"requests": 1..=1000000000, "period": "day" | "month"},
//!   "allowed_ips": [str], "metadata": {…}}`, every field optional (both members of
//!   `rate_limit` and of `quota` required), `null` the same as absent; `allowed_ips` 1 to 32
//!   IPv4 or IPv6 addresses or CIDR blocks (`"203.0.113.0/24"`, `"2001:db8::1"`; a bare
//!   address is a block of one), `metadata` a JSON object of at most 4 KiB once compact (no
//!   member given twice, at any depth);
//! - update (`PATCH`): any of `{"name", "expires_at", "scopes", "rate_limit", "quota",
//!   "allowed_ips", "metadata"}`; `null` clears
//!   a field and an absent one is kept; an `expires_at` in the past expires the key at once;
//!   `metadata` replaces the key's as a whole (no merge);
//! - rotate: `{"grace_seconds": 0..=604800}`, how long the old key keeps working.
//!
//! Times are RFC 3339 with any offset and must lie between 1970-01-01T00:00:00Z and
//! 9999-12-31T23:59:59Z once in UTC.
//!
//! **Usage** is `{"key_id" (the key's only), "granularity", "buckets": [{"start",
//! "accepted", "rate_limited", "refused"}, …]}`: every bucket, oldest first, zeros included,
//! each `start` in RFC 3339 (UTC, to the second). The query may give, each at most once and
//! nothing else:
//!
//! - `granularity`: `hour` (the default) or `day` (UTC days);
//! - `from` and `to` (RFC 3339, as above; percent-encode a `+` offset as `%2B`): the buckets
//!   that start in `[from, to)`, `from` rounded down to its bucket's start, at most
//!   [`MAX_BUCKETS`](crate::usage::MAX_BUCKETS) of them. Without either, the last 48 hours or
//!   the last 30 days, the current bucket included; with `from` only, 48 hours or 30 days from
//!   `from`'s bucket on (fewer near 9999); with `to` only, the 48 hours or 30 days that start before `to`.
//!
//! Errors are `{"error": message}`, and nothing is changed by a request that gets one
//! (except a 500 from the event hook, which runs after the change):
//!
//! | status | when |
//! | --- | --- |
//! | 400 | a bad account id, a bad body, a value the [policy](crate::policy) refuses, or a bad usage query (an unknown or repeated parameter, a bad value, `from` not before `to`, too many buckets), named |
//! | 401 | the authorizer doesn't know the caller (with `WWW-Authenticate: Bearer`) |
//! | 403 `cross-site request refused` | a change a browser sent from another site: an `Origin` that is neither the request's own nor [allowed](AdminRouter::allowed_origins), or none and `Sec-Fetch-Site: cross-site` / `same-site` |
//! | 403 `not allowed for this caller` | the caller may manage the account but not do this (a tenant widening a key or sending `metadata`; see [`SelfService`]) |
//! | 404 | an unknown or malformed key id, and an account the caller may not manage (byte for byte the same answer) |
//! | 405 | another method |
//! | 409 | the account holds its limit of keys |
//! | 413 | a body over the limit (16 KiB by default) |
//! | 415 | a change with a body that isn't `application/json` |
//! | 500 `internal error` | a handler, the authorizer or the event hook panicked; logged with the route (never the body; the process's panic hook still prints the panic's own message), the connection stays usable |
//! | 503 | the store failed (with `Retry-After`), without the store's details |
//!
//! Every answer carries `Cache-Control: no-store`: create and rotate answer with a plaintext
//! key.
//!
//! # Audit trail
//!
//! Every change made through the router is on the account's [audit trail](crate::audit),
//! written by the store with the change, with who made it: the name
//! [`AdminAuthorizer::actor`] gives the caller (`operator`, `tenant:ACCOUNT` by default).
//! What the authorizer refuses ([`AdminDenied::NotAllowed`], 403) and a create at the
//! account's limit (409) are recorded too, as `refused`, with the key (if the attempt named
//! one of the account's) and the fields asked for; reads, unknown callers (401) and accounts
//! the caller may not manage (404) are not.
//!
//! `GET /admin/accounts/{account}/events?limit=N&before=ID` answers `{"events": [{"id",
//! "at", "action", "key_id", "prefix", "actor", "outcome", "changes"}, …]}`, newest first:
//! `id` the entry's number (the next page is `before` the last one's), `at` RFC 3339 (UTC,
//! microseconds), `action` one of `create`, `update`, `rotate`, `revoke`, `reactivate`,
//! `delete`, `key_id` and `prefix` (after the change) or `null` for a refused create,
//! `outcome` `done` or `refused`, `changes` the policy fields set as in a record (a cleared
//! one `null`; see [`AuditChanges`](crate::audit::AuditChanges)). `limit` is 1 to 500
//! (default 50), each parameter at most once and nothing else (400). Entries older than the
//! manager's [retention](crate::KeyManager::with_audit_retention) are not shown. A tenant
//! reads its own account's trail.
//!
//! # OpenAPI
//!
//! The router describes itself in an OpenAPI 3.1 document, generated with
//! [utoipa](https://docs.rs/utoipa/5) from the handlers' own request and answer types (so it
//! says what the code reads and writes): every route above, its parameters, its body (with the
//! policy's bounds: `expires_in_seconds` 1 to 315360000, a rate limit's `requests` 1 to
//! 1000000 per 1 to 86400 `per_seconds`, a quota's `requests` 1 to 1000000000 per `day` or
//! `month`, `grace_seconds` 0 to 604800, 1 to 32 `allowed_ips`; unknown members refused, and
//! in an update `null` allowed), its answers and the errors it can give (409 on create only,
//! 413 on the routes that take a body, 415 and the cross-site 403 on changes), and the bearer
//! scheme. Nothing in the router answers 429, so the document declares none. The Integration
//! page's routes are left out: they serve HTML, a script and a style sheet, not JSON.
//!
//! It is served at [`OPENAPI_PATH`] (`GET /admin/openapi.json`), to any caller: it holds no
//! secret. Its paths start with `/admin/`, as the router's; nested under a prefix
//! (`Router::nest("/api", …)`), the served document names that prefix as its server.
//! [`AdminRouter::openapi`] gives the document as a value (to serve it elsewhere, or merge it
//! into an application's own) and [`AdminRouter::without_openapi`] drops the route.
//!
//! **Who may do what** is the [`AdminAuthorizer`]'s to decide: it names the caller
//! ([`AdminCaller::Operator`] or [`AdminCaller::Tenant`]) and is asked about each
//! [`AdminAttempt`] (the account, the operation and, for create and update, the policy asked
//! for). [`AdminToken`] is one operator token; [`AdminTokens`] adds a token per tenant; the
//! default rules ([`SelfService`]) let a tenant manage its own account and narrow its keys,
//! never widen them, and leave metadata to the operator.
//!
//! The router also serves the **Integration page** at `GET /integration` ([`AdminRouter::page_path`]
//! moves it, [`AdminRouter::without_page`] drops it): one self-contained page (its script and
//! style sheet are embedded in the crate; no external resources, no inline script) where an
//! account's keys are listed with when each was created and last used, their requests in the
//! last 24 hours, their rate limit, allowlist and quota (with how much of it is used), each
//! key's usage drawn as a bar chart (hours or days), each key's allowlist, quota and metadata
//! edited (the metadata checked to be a JSON object before it is sent),
//! and keys created (the secret shown once; with an optional name, expiry, scopes, rate limit,
//! allowlist, quota and metadata),
//! rotated (with an optional grace period), revoked, reactivated and deleted, through the JSON
//! API above. It is served with a strict `Content-Security-Policy`
//! (`frame-ancestors 'none'`), `X-Content-Type-Options: nosniff` and `X-Frame-Options: DENY`.
//!
//! Each change is logged once, by the manager (`tracing`, `info`, with account and prefix),
//! and recorded on the audit trail; [`AdminRouter::on_event`] adds a hook for shipping
//! changes elsewhere (a webhook, a SIEM).
//!
//! ```
//! use std::sync::Arc;
//! use axum::Router;
//! use axum::body::Body;
//! use http::{Request, StatusCode};
//! use tower::ServiceExt as _;
//! use tower_api_key::{KeyManager, MemoryStore, Pepper};
//! use tower_api_key::admin::{AdminRouter, AdminToken};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let manager = KeyManager::new(Arc::new(MemoryStore::new()), Pepper::random()?);
//! let app: Router = AdminRouter::new(manager, AdminToken::new("operator-token-0123456789")?)
//!     .on_event(|event| println!("{} {} {}", event.action, event.account, event.prefix))
//!     .into_router();
//!
//! let request = Request::post("/admin/accounts/acme/keys")
//!     .header("authorization", "Bearer operator-token-0123456789")
//!     .header("content-type", "application/json")
//!     .body(Body::from(r#"{"name": "CI", "scopes": ["read"], "expires_in_seconds": 86400}"#))?;
//! let response = app.oneshot(request).await?;
//! assert_eq!(response.status(), StatusCode::CREATED);
//! assert_eq!(response.headers()["cache-control"], "no-store");
//! # Ok(())
//! # }
//! ```

mod authorize;
mod cross_site;
mod error;
mod event;
mod events;
mod handlers;
mod json;
mod openapi;
mod page;
mod query;
mod schema;
mod self_service;
mod tokens;
mod usage;

use std::fmt;
use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::middleware::{from_fn, from_fn_with_state, map_response};
use axum::response::Response;
use axum::routing::{get, post};
use http::HeaderValue;
use http::header::CACHE_CONTROL;
use tower_http::catch_panic::CatchPanicLayer;

pub use authorize::{AdminAttempt, AdminAuthorizer, AdminCaller, AdminDenied, AdminOperation};
pub use event::{AdminAction, AdminEvent};
pub use self_service::{KeyCeiling, SelfService};
pub use tokens::{AdminToken, AdminTokenError, AdminTokens};

use crate::manager::KeyManager;
use cross_site::AllowedOrigins;
use handlers::{Admin, EventHook};
use page::PageConfig;

/// Where the Integration page is served unless configured: `/integration`.
pub const DEFAULT_PAGE_PATH: &str = "/integration";

/// Where the router serves its OpenAPI document, to any caller (it holds no secret):
/// `/admin/openapi.json`. See [`AdminRouter::openapi`].
pub const OPENAPI_PATH: &str = openapi::PATH;

/// The largest request body accepted by default: 16 KiB.
pub const DEFAULT_BODY_LIMIT: usize = 16 * 1024;

/// Builds the admin [`Router`] for one [`KeyManager`]; see the [module docs](self).
#[must_use = "call .into_router() to get the router"]
pub struct AdminRouter {
    manager: KeyManager,
    authorizer: Arc<dyn AdminAuthorizer>,
    hook: Option<EventHook>,
    body_limit: usize,
    page: Option<String>,
    token_input: bool,
    origins: AllowedOrigins,
    openapi: bool,
}

impl AdminRouter {
    /// The admin API over `manager`, letting through whom `authorizer` allows.
    pub fn new(manager: KeyManager, authorizer: impl AdminAuthorizer) -> Self {
        Self {
            manager,
            authorizer: Arc::new(authorizer),
            hook: None,
            body_limit: DEFAULT_BODY_LIMIT,
            page: Some(DEFAULT_PAGE_PATH.to_owned()),
            token_input: true,
            origins: AllowedOrigins::default(),
            openapi: true,
        }
    }

    /// Serves the Integration page at `path` instead of [`DEFAULT_PAGE_PATH`] (a trailing
    /// `/` is ignored). Its script and style sheet are served below it (`{path}/page.js`,
    /// `{path}/page.css`).
    ///
    /// # Panics
    ///
    /// If `path` doesn't start with `/`, as axum's routes must.
    pub fn page_path(mut self, path: &str) -> Self {
        assert!(path.starts_with('/'), "the page's path must start with '/'");
        let trimmed = path.trim_end_matches('/');
        self.page = Some(if trimmed.is_empty() {
            "/".to_owned()
        } else {
            trimmed.to_owned()
        });
        self
    }

    /// Leaves the Integration page out: the router serves the JSON API only.
    pub fn without_page(mut self) -> Self {
        self.page = None;
        self
    }

    /// Leaves out the route serving the OpenAPI document ([`OPENAPI_PATH`]); the document
    /// is still had from [`openapi`](Self::openapi), e.g. to serve it elsewhere or to merge
    /// it into an application's own.
    pub fn without_openapi(mut self) -> Self {
        self.openapi = false;
        self
    }

    /// The router's OpenAPI 3.1 document (utoipa's [`OpenApi`](utoipa::openapi::OpenApi),
    /// which serializes with serde): every route [`into_router`](Self::into_router) serves
    /// but the Integration page's (HTML, not JSON), their parameters, bodies and answers, the
    /// errors included, and the bearer scheme. Its paths start with `/admin/`, as the
    /// router's; it names no server (the router serves it with its prefix as the server when
    /// nested).
    ///
    /// ```
    /// # use std::sync::Arc;
    /// # use tower_api_key::{KeyManager, MemoryStore, Pepper};
    /// use tower_api_key::admin::{AdminRouter, AdminToken};
    ///
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let manager = KeyManager::new(Arc::new(MemoryStore::new()), Pepper::random()?);
    /// let admin = AdminRouter::new(manager, AdminToken::new("operator-token-0123456789")?);
    /// let document = admin.openapi();
    /// assert!(document.paths.paths.contains_key("/admin/accounts/{account}/keys"));
    /// let json = document.to_pretty_json()?;
    /// assert!(json.contains(r#""openapi": "3.1.0""#));
    /// # Ok(())
    /// # }
    /// ```
    #[must_use]
    pub fn openapi(&self) -> utoipa::openapi::OpenApi {
        openapi::document_of(self.openapi)
    }

    /// Hides the page's "Admin token" input, for an [`AdminAuthorizer`] that reads the
    /// caller's own session cookie instead of a bearer token (the page's calls carry the
    /// browser's cookies either way).
    pub fn hide_token_input(mut self) -> Self {
        self.token_input = false;
        self
    }

    /// Calls `hook` after each change made through the router (create, update, rotate,
    /// revoke, reactivate, delete), with the account, key id and prefix. The hook runs on
    /// the request's task: keep it quick, hand slow work to a channel.
    ///
    /// ```
    /// # use std::sync::{Arc, Mutex};
    /// # use tower_api_key::{KeyManager, MemoryStore, Pepper};
    /// use tower_api_key::admin::{AdminEvent, AdminRouter, AdminToken};
    ///
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let manager = KeyManager::new(Arc::new(MemoryStore::new()), Pepper::random()?);
    /// let audit: Arc<Mutex<Vec<AdminEvent>>> = Arc::default();
    /// let trail = Arc::clone(&audit);
    /// let router: axum::Router = AdminRouter::new(manager, AdminToken::new("operator-token-0123456789")?)
    ///     .on_event(move |event| trail.lock().unwrap().push(event.clone()))
    ///     .into_router();
    /// # let _ = router;
    /// # Ok(())
    /// # }
    /// ```
    pub fn on_event<F>(mut self, hook: F) -> Self
    where
        F: Fn(&AdminEvent) + Send + Sync + 'static,
    {
        self.hook = Some(Arc::new(hook));
        self
    }

    /// Lets browsers on `origins` (each `scheme://host[:port]`, e.g.
    /// `https://console.example.com`) make changes, besides pages of the router's own
    /// origin. A state-changing request (POST, PATCH, DELETE) whose `Origin` is neither is
    /// refused with 403 `{"error":"cross-site request refused"}`, as is one without an
    /// `Origin` whose `Sec-Fetch-Site` says `cross-site` or `same-site`; requests carrying
    /// neither header (curl, SDKs, servers) are unaffected.
    ///
    /// The request's own origin is its `Host` (or HTTP/2 `:authority`): behind a proxy that
    /// rewrites `Host`, allow the public origin here, or the Integration page's own changes
    /// are refused too. A console on another origin also needs CORS for its preflight
    /// (`Authorization` and JSON bodies are not "simple"), e.g. tower-http's `CorsLayer`
    /// around the router: this only stops the router from refusing it.
    ///
    /// ```
    /// # use std::sync::Arc;
    /// # use tower_api_key::{KeyManager, MemoryStore, Pepper};
    /// use tower_api_key::admin::{AdminRouter, AdminToken};
    ///
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let manager = KeyManager::new(Arc::new(MemoryStore::new()), Pepper::random()?);
    /// // The API on api.example.com, the console that calls it on console.example.com.
    /// let router: axum::Router = AdminRouter::new(manager, AdminToken::new("operator-token-0123456789")?)
    ///     .allowed_origins(["https://console.example.com"])
    ///     .into_router();
    /// # let _ = router;
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Panics
    ///
    /// If an origin is not of the form `scheme://host[:port]` (a path, a user or a query is
    /// no part of an origin).
    pub fn allowed_origins<I, S>(mut self, origins: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        for origin in origins {
            self.origins.allow(origin.as_ref());
        }
        self
    }

    /// The largest request body accepted, in bytes (default [`DEFAULT_BODY_LIMIT`]); a
    /// larger one is answered 413.
    pub fn body_limit(mut self, bytes: usize) -> Self {
        self.body_limit = bytes;
        self
    }

    /// The router, ready to [`merge`](Router::merge) into an application of any state type
    /// (its paths all start with `/admin/accounts/`). It has no fallback of its own.
    pub fn into_router<S>(self) -> Router<S>
    where
        S: Clone + Send + Sync + 'static,
    {
        let openapi = if self.openapi {
            openapi::routes(self.openapi())
        } else {
            Router::new()
        };
        let admin = Arc::new(Admin {
            manager: self.manager,
            authorizer: self.authorizer,
            hook: self.hook,
        });
        let keys = "/admin/accounts/{account}/keys";
        let key = "/admin/accounts/{account}/keys/{id}";
        let page = match &self.page {
            Some(path) => page::routes(&PageConfig {
                path: path.clone(),
                limit: admin.manager.max_keys_per_account(),
                token_input: self.token_input,
            }),
            None => Router::new(),
        };
        Router::new()
            .route(keys, get(handlers::list_keys).post(handlers::create_key))
            .route(
                key,
                get(handlers::get_key)
                    .patch(handlers::update_key)
                    .delete(handlers::delete_key),
            )
            .route(&format!("{key}/rotate"), post(handlers::rotate_key))
            .route(&format!("{key}/revoke"), post(handlers::revoke_key))
            .route(&format!("{key}/reactivate"), post(handlers::reactivate_key))
            .route(&format!("{key}/usage"), get(handlers::key_usage))
            .route(
                "/admin/accounts/{account}/usage",
                get(handlers::account_usage),
            )
            .route(
                "/admin/accounts/{account}/events",
                get(handlers::account_events),
            )
            .merge(page)
            .merge(openapi)
            .method_not_allowed_fallback(handlers::method_not_allowed)
            .layer(DefaultBodyLimit::max(self.body_limit))
            .layer(from_fn_with_state(
                Arc::new(self.origins),
                cross_site::refuse_cross_site,
            ))
            // A panic anywhere inside (a handler, the authorizer, the event hook) is a 500
            // on a connection that stays open, logged with its route. (The process's panic
            // hook still prints the panic's own message to stderr, as for any panic.)
            .layer(CatchPanicLayer::custom(error::panic_answer))
            .layer(from_fn(error::log_panics))
            // Create and rotate answer with a plaintext key: no cache may keep it. Every
            // answer gets it, so a route added later can't forget.
            .layer(map_response(no_store))
            .with_state(admin)
    }
}

async fn no_store(mut response: Response) -> Response {
    response
        .headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

impl fmt::Debug for AdminRouter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdminRouter")
            .field("manager", &self.manager)
            .field("on_event", &self.hook.is_some())
            .field("body_limit", &self.body_limit)
            .field("page", &self.page)
            .field("allowed_origins", &self.origins)
            .field("openapi", &self.openapi)
            .finish_non_exhaustive()
    }
}
