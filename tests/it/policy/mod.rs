//! Key policy at the layer (mirrors `src/policy.rs`, `src/require_scope.rs` and the key sources
//! of `src/gatekeeper.rs`): expiry on the hit path, scopes and 403, rotation with a grace
//! period, `WWW-Authenticate`, the Bearer source and header stripping. HTTP over a loopback
//! axum server; gRPC over a loopback tonic server.

#[cfg(feature = "axum")]
mod address;
#[cfg(feature = "axum")]
mod expiry;
#[cfg(feature = "axum")]
mod grace;
mod grpc;
#[cfg(feature = "axum")]
mod metadata;
#[cfg(feature = "axum")]
mod quota;
#[cfg(all(feature = "axum", feature = "redis"))]
mod quota_redis;
#[cfg(feature = "axum")]
mod scopes;
#[cfg(feature = "axum")]
mod sources;

#[cfg(feature = "axum")]
pub(crate) mod app {
    //! The app every HTTP policy test serves: `/v1/ping` for any valid key, `/v1/write` for
    //! keys with scope `write`, and `/v1/headers`, which echoes the key headers it received.

    use std::net::SocketAddr;
    use std::sync::Arc;
    use std::time::{Duration, SystemTime};

    use crate::support::http::{Answer, client, get_with, serve};
    use crate::support::stores::TestStore;
    use crate::support::{account, pepper};
    use axum::Router;
    use axum::routing::get;
    use http::HeaderMap;
    use tower_api_key::{
        AccountId, ApiKeyLayer, ApiKeyLayerBuilder, KeyIdentity, KeyManager, RequireScopeLayer,
        StoreResolver,
    };

    pub(crate) struct App {
        pub(crate) addr: SocketAddr,
        pub(crate) manager: KeyManager,
        pub(crate) layer: ApiKeyLayer<StoreResolver>,
        pub(crate) store: Arc<TestStore>,
        pub(crate) account: AccountId,
    }

    async fn echo_headers(headers: HeaderMap) -> String {
        let mut seen: Vec<&str> = ["x-api-key", "authorization"]
            .into_iter()
            .filter(|name| headers.contains_key(*name))
            .collect();
        seen.sort_unstable();
        seen.join(",")
    }

    impl App {
        pub(crate) async fn start() -> Self {
            Self::start_with(|builder| builder).await
        }

        /// An app whose layer is configured further by `configure`.
        pub(crate) async fn start_with(
            configure: impl FnOnce(
                ApiKeyLayerBuilder<StoreResolver>,
            ) -> ApiKeyLayerBuilder<StoreResolver>,
        ) -> Self {
            Self::start_on(TestStore::new(), configure).await
        }

        /// An app on `store` (which other apps may share), its layer configured by
        /// `configure`.
        pub(crate) async fn start_on(
            store: Arc<TestStore>,
            configure: impl FnOnce(
                ApiKeyLayerBuilder<StoreResolver>,
            ) -> ApiKeyLayerBuilder<StoreResolver>,
        ) -> Self {
            let manager = KeyManager::new(store.clone(), pepper());
            let layer = configure(ApiKeyLayer::for_manager(&manager)).build();
            let app = Router::new()
                .route(
                    "/v1/write",
                    get(|| async { "written" }).post(|| async { "written" }),
                )
                .route_layer(RequireScopeLayer::<KeyIdentity>::new("write"))
                .route("/v1/ping", get(|| async { "pong" }))
                .route("/v1/headers", get(echo_headers))
                .layer(layer.clone());
            Self {
                addr: serve(app).await,
                manager,
                layer,
                store,
                account: account("acme"),
            }
        }

        /// GET `path` with `key` as `x-api-key`.
        pub(crate) async fn get(&self, path: &str, key: &str) -> Answer {
            self.get_with(path, &[("x-api-key", key)]).await
        }

        pub(crate) async fn get_with(&self, path: &str, headers: &[(&str, &str)]) -> Answer {
            get_with(&client(), self.addr, path, headers).await
        }

        /// How many lookups reached the store so far.
        pub(crate) fn lookups(&self) -> usize {
            self.store.lookups.load(std::sync::atomic::Ordering::SeqCst)
        }
    }

    /// Waits until the wall clock has passed `at` (by a millisecond), however the sleep goes.
    pub(crate) async fn wait_past(at: SystemTime) {
        while SystemTime::now() <= at {
            let left = at
                .duration_since(SystemTime::now())
                .unwrap_or(Duration::ZERO);
            tokio::time::sleep(left + Duration::from_millis(1)).await;
        }
    }

    /// Asserts a 401 with the given message and the challenge.
    pub(crate) fn assert_401(answer: &Answer, message: &str) {
        assert_eq!(answer.status, 401, "{}", answer.body);
        assert_eq!(answer.body, format!(r#"{{"error":"{message}"}}"#));
        assert_eq!(
            answer.headers["www-authenticate"], r#"ApiKey header="X-API-KEY""#,
            "every 401 names the scheme and the header"
        );
    }
}
