//! API-key authentication for any [tower] service: axum routers, tonic servers, hyper stacks.
//!
//! Keys look like `k3v9x0qa.<43 base62 characters><6-character checksum>`. The 8-character
//! prefix is readable and identifies the key; the rest is the secret, shown once when the key
//! is created or rotated. Only a keyed blake3 digest of a key is ever stored or cached.
//!
//! The crate's parts, in the order a request meets them:
//!
//! - [`layer`], [`service`], [`future`]: [`ApiKeyLayer`] reads `X-API-KEY`, parses and
//!   digests it, answers from the cache or asks the resolver, and either calls the inner
//!   service with [`Authenticated<Account>`](Authenticated) in the request's extensions or
//!   answers itself ([`rejection`]: 401 / 403 / 429 / 503 as JSON, or a gRPC status).
//! - [`cache`]: moka-backed positive and negative entries keyed by digest, with a read index
//!   serving hits on accepted keys in front of moka; coalesced misses, invalidation without
//!   stale entries.
//! - [`resolver`]: the pluggable [`Resolver`] trait and the store-backed [`StoreResolver`].
//! - [`key`]: generate, parse and digest keys.
//! - [`store`]: the [`KeyStore`] trait and the embedded [`MemoryStore`].
//! - [`require_scope`]: [`RequireScopeLayer`], 403 for a key without a route's scope.
//! - [`manager`]: [`KeyManager`], the lifecycle rules (at most 3 keys per account; rotate,
//!   with or without a grace period, revoke, reactivate, delete, each effective at once).
//! - [`policy`]: what a key may do, how often, for how long and from where: names, scopes,
//!   expiry, grace periods, rate limits, quotas, allowed addresses, metadata.
//! - [`client_addr`]: where a request came from, for keys with allowed addresses.
//! - [`invalidation`]: how key changes reach caches before the change returns.
//! - [`feed`]: how other processes' key changes reach this process's caches (the
//!   [`ChangeFeed`](feed::ChangeFeed) trait and its fail-closed runner).
//! - [`audit`]: who changed which key when, and what was refused, kept by the store with
//!   each change.
//! - [`usage`]: `last_used_at` and requests per key per hour, recorded off the hot path in
//!   batches; quotas counted from them.
//! - [`metrics`]: the layer's counters, renderable for Prometheus.
//! - `admin` (feature `admin`): the key-management JSON API as an axum `Router`, behind a
//!   pluggable authorizer.
//! - `extract` (feature `axum`): `Authenticated<A>` and `Option<Authenticated<A>>` as axum
//!   extractors.
//!
//! # Feature flags
//!
//! | feature | default | what it adds |
//! | --- | --- | --- |
//! | `axum` | no | `FromRequestParts` / `OptionalFromRequestParts` for [`Authenticated`], and the client address from axum's `ConnectInfo<SocketAddr>` for keys with allowed addresses (axum-core, axum) |
//! | `tonic` | no | the client address from tonic's `TcpConnectInfo`, for keys with allowed addresses (tonic's `server` feature) |
//! | `metrics` | no | the layer's counters also reported through the `metrics` facade crate |
//! | `sqlite` | no | `SqliteStore`: keys in a SQLite file, one process (sqlx, bundled SQLite) |
//! | `admin` | no | `admin::AdminRouter`: the key-management JSON API as an axum `Router`, with `AdminAuthorizer`, `AdminToken`, `AdminTokens` and the `SelfService` rules (axum, serde, serde_json, time, tower-http; implies `axum`) |
//! | `postgres` | no | `PostgresStore` and `PgChangeFeed`: keys in PostgreSQL shared by many processes, changes relayed by `LISTEN`/`NOTIFY` (sqlx) |
//! | `redis` | no | `rate_limit::redis::RedisLimiter` and `usage::RedisQuotas`: rate-limit budgets and quota counts shared by every process using one Redis (redis-rs) |
//! | `test-util` | no | for tests, not part of the stable API: `rate_limit::LocalLimiter::with_clock` (a rate limiter on a clock the test moves) and counts inside the cache, the bus, the usage queue and change feeds |
//!
//! # Example
//!
//! ```
//! use std::sync::Arc;
//! use tower::{Layer, ServiceExt, service_fn};
//! use tower_api_key::{ApiKeyLayer, Authenticated, KeyIdentity, KeyManager, MemoryStore, Pepper};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let manager = KeyManager::new(Arc::new(MemoryStore::new()), Pepper::random()?);
//! let created = manager.create(&"acme".parse()?).await?;
//!
//! let service = ApiKeyLayer::for_manager(&manager).build().layer(service_fn(
//!     |request: http::Request<()>| async move {
//!         let who = request.extensions().get::<Authenticated<KeyIdentity>>().unwrap();
//!         Ok::<_, std::convert::Infallible>(http::Response::new(who.account_id().to_string()))
//!     },
//! ));
//!
//! let request = http::Request::get("/")
//!     .header("x-api-key", created.key.expose_secret())
//!     .body(())?;
//! assert_eq!(service.clone().oneshot(request).await?.status(), 200);
//!
//! manager.revoke(&"acme".parse()?, created.info.id).await?;
//! let request = http::Request::get("/")
//!     .header("x-api-key", created.key.expose_secret())
//!     .body(())?;
//! assert_eq!(service.oneshot(request).await?.status(), 401); // at once
//! # Ok(())
//! # }
//! ```
//!
//! [tower]: https://docs.rs/tower
#![cfg_attr(docsrs, feature(doc_cfg))]
#![doc(test(attr(deny(warnings))))]

mod account;
#[cfg(feature = "admin")]
#[cfg_attr(docsrs, doc(cfg(feature = "admin")))]
pub mod admin;
pub mod audit;
mod authenticated;
#[cfg(feature = "axum")]
#[cfg_attr(docsrs, doc(cfg(feature = "axum")))]
pub mod axum_layer;
pub mod body;
pub mod cache;
pub mod client_addr;
mod clock;
#[cfg(feature = "axum")]
#[cfg_attr(docsrs, doc(cfg(feature = "axum")))]
pub mod extract;
pub mod feed;
pub mod future;
mod gatekeeper;
mod hashing;
mod ids;
pub mod invalidation;
pub mod key;
pub mod layer;
pub mod manager;
pub mod metrics;
pub mod policy;
pub mod rate_limit;
pub mod rejection;
pub mod require_scope;
pub mod resolver;
pub mod service;
pub mod store;
pub mod stream;
mod sync;
pub mod usage;

pub use account::Account;
pub use authenticated::Authenticated;
pub use client_addr::ClientAddr;
pub use key::{ApiKey, KeyDigest, KeyPrefix, Pepper};
pub use layer::{ApiKeyLayer, ApiKeyLayerBuilder};
pub use manager::{CreatedKey, KeyInfo, KeyManager, ManagerError};
pub use policy::{
    AllowedIps, KeyName, KeyOptions, Metadata, PolicyUpdate, Quota, QuotaPeriod, RateLimit,
    RotateOptions, Scoped, Scopes,
};
pub use rejection::Rejection;
pub use require_scope::RequireScopeLayer;
pub use resolver::{KeyIdentity, Resolver, StoreResolver};
pub use service::ApiKeyService;
#[cfg(feature = "sqlite")]
#[cfg_attr(docsrs, doc(cfg(feature = "sqlite")))]
pub use store::SqliteStore;
pub use store::{
    AccountId, KeyId, KeyRecord, KeyStatus, KeyStore, MemoryStore, PreviousKey, StoreError,
};
#[cfg(feature = "postgres")]
#[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
pub use store::{PgChangeFeed, PostgresStore};
pub use usage::UseOutcome;

/// The README's Rust examples, compiled and run as doctests so they can't drift from the API.
#[cfg(all(doctest, feature = "axum", feature = "postgres", feature = "admin"))]
#[doc(test(attr(allow(unused))))]
#[doc = include_str!("../README.md")]
struct ReadmeExamples;
