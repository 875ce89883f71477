//! Per-key rate limits (mirrors `src/rate_limit/`): the budget checked after authentication,
//! 429 with `Retry-After` and the RateLimit fields, gRPC `RESOURCE_EXHAUSTED`, limits set and
//! changed through the manager, the limiter's failure policy; and, with the `redis` feature,
//! budgets shared through a real Redis.

mod demo;
mod grpc;
#[cfg(feature = "axum")]
mod http;
#[cfg(feature = "axum")]
mod limiter;
#[cfg(feature = "redis")]
mod redis;

/// Asserts that a burst of twelve requests on a key limited to 5 per 2 s, which took `took`,
/// let exactly five through. The budget refills one request every 0.4 s, so a burst slower
/// than that (a stalled machine) may fit one more per 0.4 s it took, and no more. For limiters
/// whose clock the test can't move (Redis's, the demo server's).
pub(crate) fn assert_five_of_twelve(allowed: usize, took: std::time::Duration) {
    let refills = usize::try_from(took.as_millis() / 400).expect("small");
    assert!(
        allowed == 5
            || (took >= std::time::Duration::from_millis(400)
                && (5..=5 + refills).contains(&allowed)),
        "{allowed} allowed in {took:?}"
    );
}

#[cfg(feature = "axum")]
mod app {
    //! An app whose `/v1/ping` counts the requests that reach it, behind a layer that counts
    //! the uses it records.

    use std::net::SocketAddr;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
    use std::time::Duration;

    use axum::Router;
    use axum::routing::get;
    use tower_api_key::rate_limit::LocalLimiter;
    use tower_api_key::{
        AccountId, ApiKeyLayer, ApiKeyLayerBuilder, KeyManager, KeyOptions, RateLimit,
        StoreResolver,
    };

    use crate::support::http::{Answer, client, get_with, serve};
    use crate::support::stores::TestStore;
    use crate::support::{account, pepper};

    pub(crate) struct App {
        pub(crate) addr: SocketAddr,
        pub(crate) manager: KeyManager,
        pub(crate) layer: ApiKeyLayer<StoreResolver>,
        pub(crate) account: AccountId,
        /// Requests that reached the inner service.
        pub(crate) served: Arc<AtomicUsize>,
    }

    impl App {
        pub(crate) async fn start() -> Self {
            Self::start_with(|builder| builder).await
        }

        pub(crate) async fn start_with(
            configure: impl FnOnce(
                ApiKeyLayerBuilder<StoreResolver>,
            ) -> ApiKeyLayerBuilder<StoreResolver>,
        ) -> Self {
            let store = TestStore::new();
            let manager = KeyManager::new(store.clone(), pepper());
            let resolver = StoreResolver::new(store);
            let layer = configure(
                ApiKeyLayer::builder(resolver, manager.pepper().clone())
                    .invalidated_by(manager.invalidation_bus()),
            )
            .build();
            let served = Arc::new(AtomicUsize::new(0));
            let counter = Arc::clone(&served);
            let app = Router::new()
                .route(
                    "/v1/ping",
                    get(move || {
                        counter.fetch_add(1, Ordering::SeqCst);
                        async { "pong" }
                    }),
                )
                .layer(layer.clone());
            Self {
                addr: serve(app).await,
                manager,
                layer,
                account: account("acme"),
                served,
            }
        }

        /// A new key of the app's account, limited to `limit` if given; its string.
        pub(crate) async fn key(&self, limit: Option<RateLimit>) -> String {
            let options = match limit {
                Some(limit) => KeyOptions::new().rate_limit(limit),
                None => KeyOptions::new(),
            };
            let created = self
                .manager
                .create_with(&self.account, options)
                .await
                .expect("create");
            created.key.expose_secret().to_owned()
        }

        pub(crate) async fn ping(&self, key: &str) -> Answer {
            get_with(&client(), self.addr, "/v1/ping", &[("x-api-key", key)]).await
        }

        pub(crate) fn served(&self) -> usize {
            self.served.load(Ordering::SeqCst)
        }

        /// Uses the layer recorded: it records one with every request it counts as accepted.
        pub(crate) fn uses(&self) -> u64 {
            self.layer.metrics().accepted
        }
    }

    /// A clock the test moves, and in-process limiters that read it: their budgets refill
    /// only when the test says time has passed, however long the test takes.
    #[derive(Clone, Default)]
    pub(crate) struct TestClock {
        nanos: Arc<AtomicU64>,
    }

    impl TestClock {
        /// A [`LocalLimiter`] on this clock.
        pub(crate) fn limiter(&self) -> LocalLimiter {
            let nanos = Arc::clone(&self.nanos);
            LocalLimiter::with_clock(move || Duration::from_nanos(nanos.load(Ordering::SeqCst)))
        }

        pub(crate) fn advance(&self, by: Duration) {
            let by = u64::try_from(by.as_nanos()).expect("a short step");
            self.nanos.fetch_add(by, Ordering::SeqCst);
        }
    }

    pub(crate) fn limit(requests: u32, per_seconds: u32) -> RateLimit {
        RateLimit::new(requests, per_seconds).expect("limit in range")
    }

    /// `RateLimit`'s `r` and `t` parameters.
    pub(crate) fn remaining_and_reset(answer: &Answer) -> (u32, u64) {
        let value = answer.headers["ratelimit"].to_str().expect("ascii");
        let param = |name: &str| -> u64 {
            value
                .split(';')
                .find_map(|part| part.strip_prefix(name))
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("{name} in {value:?}"))
        };
        (u32::try_from(param("r=")).expect("small"), param("t="))
    }
}
