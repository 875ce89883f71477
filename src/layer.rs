//! [`ApiKeyLayer`] and its builder: how the middleware is configured and applied.
//!
//! ```
//! use std::sync::Arc;
//! use axum::{Router, routing::get};
//! use tower_api_key::{ApiKeyLayer, Authenticated, KeyManager, MemoryStore, Pepper};
//! use tower_api_key::resolver::KeyIdentity;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let manager = KeyManager::new(Arc::new(MemoryStore::new()), Pepper::random()?);
//! // Subscribed to the manager: revoke, rotate and delete take effect at once.
//! let api_keys = ApiKeyLayer::for_manager(&manager).build();
//!
//! let app: Router = Router::new()
//!     .route("/whoami", get(|who: Authenticated<KeyIdentity>| async move {
//!         who.account_id().to_string()
//!     }))
//!     .layer(api_keys);
//! # let _ = app;
//! # Ok(())
//! # }
//! ```

use std::fmt;
use std::sync::{Arc, Weak};

use bytes::Bytes;
use http::{HeaderName, Response};
use tower_layer::Layer;

use crate::cache::{CacheConfig, CachedResolver};
use crate::client_addr::AddressSource;
use crate::gatekeeper::{Gatekeeper, Mode, RejectionHook, Sources};
use crate::invalidation::{Invalidation, InvalidationBus, InvalidationListener as _};
use crate::key::Pepper;
use crate::manager::KeyManager;
use crate::metrics::{Metrics, MetricsSnapshot};
use crate::policy::{Cidr, RateLimit};
use crate::rate_limit::{LimiterFailure, Limits, RateLimiter};
use crate::rejection::RejectionContext;
use crate::resolver::{Resolver, StoreResolver};
use crate::service::ApiKeyService;
use crate::stream::{self, StreamWatch};
use crate::usage::UsageRecorder;

/// The header keys travel in unless configured otherwise: `x-api-key`.
pub const DEFAULT_HEADER: HeaderName = HeaderName::from_static("x-api-key");

/// Applies [`ApiKeyService`] to a service. Cloning shares the cache and the counters: every
/// service made from one layer sees the same invalidations.
///
/// Build it from a [`KeyManager`] with [`for_manager`](Self::for_manager) (its store, pepper
/// and invalidations), or from any [`Resolver`] with [`builder`](Self::builder).
///
/// ```
/// use std::sync::Arc;
/// use http::{Request, Response, StatusCode};
/// use tower::{ServiceBuilder, ServiceExt as _};
/// use tower_api_key::{ApiKeyLayer, KeyManager, MemoryStore, Pepper};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let manager = KeyManager::new(Arc::new(MemoryStore::new()), Pepper::random()?);
/// let layer = ApiKeyLayer::for_manager(&manager).accept_bearer().build();
/// let service = ServiceBuilder::new()
///     .layer(layer)
///     .service_fn(|_: Request<()>| async { Ok::<_, std::convert::Infallible>(Response::new(String::new())) });
///
/// // No key: the layer answers 401 itself, and the inner service is never called.
/// let response = service.oneshot(Request::get("/").body(())?).await?;
/// assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
/// # Ok(())
/// # }
/// ```
pub struct ApiKeyLayer<R: Resolver> {
    gatekeeper: Arc<Gatekeeper<R>>,
}

impl<R: Resolver> ApiKeyLayer<R> {
    /// Starts configuring a layer that resolves keys with `resolver`, digesting them with
    /// `pepper` (which must be the pepper the keys were stored with).
    pub fn builder(resolver: R, pepper: Pepper) -> ApiKeyLayerBuilder<R> {
        ApiKeyLayerBuilder {
            resolver,
            pepper,
            sources: Sources::new(DEFAULT_HEADER),
            mode: Mode::Required,
            hook: None,
            limits: Limits::default(),
            cache: CacheConfig::default(),
            buses: Vec::new(),
            usage: None,
            addresses: AddressSource::default(),
            end_streams: true,
        }
    }

    /// A snapshot of the layer's counters.
    pub fn metrics(&self) -> MetricsSnapshot {
        self.gatekeeper.metrics.snapshot()
    }

    /// Makes the layer forget what `invalidation` names, as a change published on its buses
    /// would: the cache drops it, then open responses of the key (of every key, for
    /// [`Invalidation::All`]) check their key again. For a change made to the store behind
    /// the manager's back; a [`KeyManager`] does this itself.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use tower_api_key::invalidation::Invalidation;
    /// use tower_api_key::{ApiKeyLayer, KeyManager, MemoryStore, Pepper};
    ///
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let manager = KeyManager::new(Arc::new(MemoryStore::new()), Pepper::random()?);
    /// let layer = ApiKeyLayer::for_manager(&manager).build();
    /// // After editing keys in the database by hand:
    /// layer.invalidate(&Invalidation::All);
    /// # Ok(())
    /// # }
    /// ```
    pub fn invalidate(&self, invalidation: &Invalidation) {
        self.gatekeeper.cache.invalidate(invalidation);
        if let Some((watch, _)) = &self.gatekeeper.streams {
            watch.invalidate(invalidation);
        }
    }

    /// The layer's cache, for inspection. To make the layer forget a key by hand, use
    /// [`invalidate`](Self::invalidate): the cache's own `invalidate` doesn't reach open
    /// responses.
    pub fn cache(&self) -> &CachedResolver<R> {
        &self.gatekeeper.cache
    }
}

impl ApiKeyLayer<StoreResolver> {
    /// Starts configuring a layer over `manager`'s store and pepper, subscribed to its
    /// invalidations so that every lifecycle change is in force when the manager returns.
    pub fn for_manager(manager: &KeyManager) -> ApiKeyLayerBuilder<StoreResolver> {
        Self::builder(
            StoreResolver::new(Arc::clone(manager.store())),
            manager.pepper().clone(),
        )
        .invalidated_by(manager.invalidation_bus())
    }
}

impl<R: Resolver> Clone for ApiKeyLayer<R> {
    fn clone(&self) -> Self {
        Self {
            gatekeeper: Arc::clone(&self.gatekeeper),
        }
    }
}

impl<R: Resolver> fmt::Debug for ApiKeyLayer<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiKeyLayer")
            .field("gatekeeper", &self.gatekeeper)
            .finish()
    }
}

impl<S, R: Resolver> Layer<S> for ApiKeyLayer<R> {
    type Service = ApiKeyService<S, R>;

    fn layer(&self, inner: S) -> Self::Service {
        ApiKeyService::new(inner, Arc::clone(&self.gatekeeper))
    }
}

/// Configures an [`ApiKeyLayer`]; see [`ApiKeyLayer::builder`].
#[must_use = "call .build() to get the layer"]
pub struct ApiKeyLayerBuilder<R: Resolver> {
    resolver: R,
    pepper: Pepper,
    sources: Sources,
    mode: Mode,
    hook: Option<RejectionHook>,
    limits: Limits,
    cache: CacheConfig,
    buses: Vec<InvalidationBus>,
    /// Counts its dropped uses in this layer's metrics.
    usage: Option<UsageRecorder>,
    addresses: AddressSource,
    /// Whether open responses end when their key stops letting them through.
    end_streams: bool,
}

impl<R: Resolver> ApiKeyLayerBuilder<R> {
    /// Reads the key from `header` instead of `x-api-key`.
    pub fn header_name(mut self, header: HeaderName) -> Self {
        let Sources { bearer, strip, .. } = self.sources;
        self.sources = Sources {
            bearer,
            strip,
            ..Sources::new(header)
        };
        self
    }

    /// Also accepts the key as `Authorization: Bearer <key>` when the key header is absent
    /// (off by default). A request carrying both with different keys is refused 401.
    ///
    /// Keys in the query string are not supported, on purpose: URLs end up in access logs,
    /// browser histories and `Referer` headers.
    pub fn accept_bearer(mut self) -> Self {
        self.sources.bearer = true;
        self
    }

    /// Removes the key's header (and an `Authorization: Bearer` header, with
    /// [`accept_bearer`](Self::accept_bearer)) before the inner service sees the request, so
    /// that nothing behind the layer can log or forward the key (off by default).
    pub fn strip_key_header(mut self) -> Self {
        self.sources.strip = true;
        self
    }

    /// Lets requests without the header through, without `Authenticated` in their
    /// extensions. A request with a header that is not a valid key is still refused.
    pub fn optional(mut self) -> Self {
        self.mode = Mode::Optional;
        self
    }

    /// Refuses requests without the header (the default).
    pub fn required(mut self) -> Self {
        self.mode = Mode::Required;
        self
    }

    /// Answers refused requests with `hook`'s response instead of the default JSON or gRPC
    /// answer ([`RejectionContext::default_response`] gives the default to adapt).
    pub fn on_rejection<F>(mut self, hook: F) -> Self
    where
        F: Fn(&RejectionContext<'_>) -> Response<Bytes> + Send + Sync + 'static,
    {
        self.hook = Some(Arc::new(hook));
        self
    }

    /// Sizes and lifetimes of the cache.
    pub fn cache_config(mut self, config: CacheConfig) -> Self {
        self.cache = config;
        self
    }

    /// Subscribes the layer's cache to `bus`; may be called for several buses.
    pub fn invalidated_by(mut self, bus: &InvalidationBus) -> Self {
        self.buses.push(bus.clone());
        self
    }

    /// Keeps rate-limit budgets in `limiter` instead of the default, a [`LocalLimiter`](crate::rate_limit::LocalLimiter) of
    /// this layer's own (see [`rate_limit`](crate::rate_limit)). Share one limiter (or one
    /// Redis) between layers that should count against the same budgets.
    pub fn rate_limiter(mut self, limiter: impl RateLimiter) -> Self {
        self.limits.limiter = Arc::new(limiter);
        self
    }

    /// Limits keys that have no rate limit of their own to `limit`. By default they are not
    /// limited.
    pub fn default_rate_limit(mut self, limit: RateLimit) -> Self {
        self.limits.default = Some(limit);
        self
    }

    /// What to do when the rate limiter can't answer (default [`LimiterFailure::Allow`]: let
    /// the request through and count the failure).
    pub fn on_limiter_failure(mut self, policy: LimiterFailure) -> Self {
        self.limits.on_failure = policy;
        self
    }

    /// Names the reverse proxies in front of the service, for keys with
    /// [`AllowedIps`](crate::policy::AllowedIps): a request whose connection comes from one
    /// of `proxies` is taken to come from the rightmost `X-Forwarded-For` entry that is not a
    /// trusted proxy. Without trusted proxies (the default), `X-Forwarded-For` is ignored,
    /// since any client can send it. See [`client_addr`](crate::client_addr).
    ///
    /// ```
    /// use tower_api_key::policy::Cidr;
    /// use tower_api_key::{ApiKeyLayer, KeyManager, MemoryStore, Pepper};
    /// # use std::sync::Arc;
    ///
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let manager = KeyManager::new(Arc::new(MemoryStore::new()), Pepper::random()?);
    /// let layer = ApiKeyLayer::for_manager(&manager)
    ///     // The load balancers' subnet.
    ///     .trusted_proxies(["10.0.0.0/8".parse::<Cidr>()?])
    ///     .build();
    /// # let _ = layer;
    /// # Ok(())
    /// # }
    /// ```
    pub fn trusted_proxies(mut self, proxies: impl IntoIterator<Item = Cidr>) -> Self {
        self.addresses = AddressSource::trusting(proxies);
        self
    }

    /// Whether a response that stays open (a gRPC server stream, server-sent events, a long
    /// download) ends when its key stops letting it through: revoked, rotated away, deleted,
    /// expired, or changed so that a new request would be refused. On by default; see
    /// [`stream`] for what it watches and what it costs (about 90 instructions per
    /// request, for the ticket each accepted request carries to its response). Off, a
    /// stream is checked once, when it starts.
    ///
    /// ```
    /// use tower_api_key::{ApiKeyLayer, KeyManager, MemoryStore, Pepper};
    /// # use std::sync::Arc;
    ///
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let manager = KeyManager::new(Arc::new(MemoryStore::new()), Pepper::random()?);
    /// // Streams are checked when they start, and never again.
    /// let layer = ApiKeyLayer::for_manager(&manager)
    ///     .end_streams_on_change(false)
    ///     .build();
    /// # let _ = layer;
    /// # Ok(())
    /// # }
    /// ```
    pub fn end_streams_on_change(mut self, end: bool) -> Self {
        self.end_streams = end;
        self
    }

    /// Builds the layer.
    pub fn build(self) -> ApiKeyLayer<R> {
        let metrics = Arc::new(Metrics::default());
        if let Some(recorder) = &self.usage {
            recorder.count_drops_in(&metrics);
        }
        let cache = CachedResolver::new(
            self.resolver,
            &self.cache,
            Arc::clone(&metrics),
            &self.buses,
        );
        // Subscribed after the cache: a bus delivers to its listeners in order, so a response
        // woken by a change finds its key already gone from the cache.
        let watch = self.end_streams.then(|| {
            let watch = StreamWatch::new();
            for bus in &self.buses {
                bus.subscribe(&watch);
            }
            watch
        });
        let gatekeeper = Arc::new_cyclic(|layer: &Weak<Gatekeeper<R>>| Gatekeeper {
            sources: self.sources,
            mode: self.mode,
            pepper: self.pepper,
            cache,
            hook: self.hook,
            limits: self.limits,
            addresses: self.addresses,
            metrics,
            // Numbered for the responses it lets in: see `stream`.
            streams: watch.map(|watch| (watch, stream::register(layer.clone()))),
        });
        ApiKeyLayer { gatekeeper }
    }
}

impl ApiKeyLayerBuilder<StoreResolver> {
    /// Records usage with `recorder` (see [`UsageRecorder`]): every accepted key's
    /// `last_used_at`, and every request decided for a known key in that key's hourly counts.
    /// Its dropped entries are counted in this layer's metrics, unless a layer built earlier
    /// with the same recorder counts them.
    pub fn record_usage(mut self, recorder: UsageRecorder) -> Self {
        self.usage = Some(recorder.clone());
        self.resolver = self.resolver.record_usage(recorder);
        self
    }
}

impl<R: Resolver> fmt::Debug for ApiKeyLayerBuilder<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiKeyLayerBuilder")
            .field("sources", &self.sources)
            .field("mode", &self.mode)
            .field("cache", &self.cache)
            .field("custom_rejection", &self.hook.is_some())
            .field("rate_limits", &self.limits)
            .finish_non_exhaustive()
    }
}
