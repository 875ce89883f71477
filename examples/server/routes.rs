//! The application: open routes, API-key routes (HTTP and gRPC), the admin router.

use axum::extract::State;
use axum::handler::Handler as _;
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderValue, StatusCode};
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::stream::{self, Stream};
use serde::Serialize;
use std::convert::Infallible;
use std::time::Duration;
use tonic_health::server::HealthReporter;
use tower::Layer as _;
use tower_api_key::admin::{AdminRouter, AdminTokens};
use tower_api_key::feed::FeedMonitor;
use tower_api_key::policy::Metadata;
use tower_api_key::resolver::StoreResolver;
use tower_api_key::{ApiKeyLayer, Authenticated, KeyIdentity, KeyManager, RequireScopeLayer};

#[derive(Clone)]
pub(crate) struct AppState {
    pub(crate) manager: KeyManager,
    pub(crate) api_keys: ApiKeyLayer<StoreResolver>,
    /// The change feed's status and delivery delays, with `--database-url`.
    pub(crate) feed: Option<FeedMonitor>,
}

/// The whole application: open routes, API-key routes (HTTP and gRPC), admin routes.
/// Returns the health reporter too, to report NOT_SERVING during shutdown.
/// `admin_tokens` are the operator's and the tenants' (`--tenant-token`). They stay out of
/// [`AppState`], which axum clones for every request.
pub(crate) fn app(state: AppState, admin_tokens: AdminTokens) -> (HealthReporter, Router) {
    let (health, health_service) = tonic_health::server::health_reporter();

    // Each API route's handler (or service) is wrapped in the layer itself: only matched
    // routes check keys, so an unknown path is a plain 404. Compared with one `route_layer`
    // over these routes, axum boxes each route once instead of twice, and `for_axum` hands
    // axum its own body type so it doesn't box the response body again (BENCHMARKS.md).
    let keys = state.api_keys.clone().for_axum();
    let with_api_key = Router::new()
        // Only keys that are unrestricted or list `write`; others get 403.
        .route(
            "/v1/write",
            post(
                write
                    .layer(RequireScopeLayer::<KeyIdentity>::new("write"))
                    .layer(keys.clone()),
            ),
        )
        .route("/v1/ping", get(ping.layer(keys.clone())))
        // Server-sent events: ends when its key is revoked, rotated away, deleted or expires.
        .route("/v1/events", get(events.layer(keys.clone())))
        .route("/v1/whoami", get(whoami.layer(keys)))
        .route_service(
            "/grpc.health.v1.Health/{*method}",
            state.api_keys.layer(health_service),
        );

    // Every key lifecycle change is logged by the manager (account, prefix, action). The
    // operator manages every account; a tenant its own, narrowing keys only.
    let admin = AdminRouter::new(state.manager.clone(), admin_tokens).into_router();

    let app = Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .merge(with_api_key)
        .merge(admin)
        .fallback(not_found)
        .with_state(state);
    (health, app)
}

// ===== open routes =====

async fn healthz() -> &'static str {
    "ok"
}

async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    let mut text = state.api_keys.metrics().to_prometheus();
    if let Some(feed) = &state.feed {
        text.push_str(&feed.metrics().to_prometheus());
    }
    (
        [(
            CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4"),
        )],
        text,
    )
}

async fn not_found() -> impl IntoResponse {
    (
        StatusCode::NOT_FOUND,
        Json(serde_json::json!({ "error": "not found" })),
    )
}

// ===== API-key routes =====

async fn ping() -> &'static str {
    "pong"
}

/// `data: tick N` once a second, N from 1, for as long as the client listens and its key lets
/// it through: the layer ends the stream when the key stops doing so (`tower_api_key::stream`).
async fn events() -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let ticks = stream::unfold(
        (tokio::time::interval(TICK), 0u64),
        |(mut interval, n)| async move {
            interval.tick().await;
            let event = Event::default().data(format!("tick {}", n + 1));
            Some((Ok(event), (interval, n + 1)))
        },
    );
    Sse::new(ticks)
}

/// How often `/v1/events` sends an event.
const TICK: Duration = Duration::from_secs(1);

async fn write() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "written": true }))
}

#[derive(Serialize)]
struct Whoami<'a> {
    account_id: String,
    key_id: String,
    prefix: String,
    /// The key's metadata object, or `null` without any: read from the identity the layer
    /// resolved, no second lookup.
    metadata: Option<&'a serde_json::Map<String, serde_json::Value>>,
}

/// The crate's `Authenticated` extractor (feature `axum`, which the crate's dev-dependency on
/// itself turns on for examples, so no `--features` flag is needed).
async fn whoami(who: Authenticated<KeyIdentity>) -> Response {
    Json(Whoami {
        account_id: who.account_id().to_string(),
        key_id: who.key_id().to_string(),
        prefix: who.prefix().to_string(),
        metadata: who.metadata().map(Metadata::as_object),
    })
    .into_response()
}
