//! The crate's admin router (`tower_api_key::admin`), served on a loopback port and spoken to
//! over HTTP/1.1: the JSON contract, the body rules, access control and audit events.

mod access;
mod audit;
mod bodies;
mod create;
mod cross_site;
mod demo;
mod openapi;
mod page;
mod panics;
mod policy;
mod rotate;
mod self_service;
mod update;
mod usage;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use tower_api_key::admin::{AdminAuthorizer, AdminEvent, AdminRouter, AdminToken, AdminTokens};
use tower_api_key::usage::UsageRecorder;
use tower_api_key::{ApiKeyLayer, KeyManager, KeyStore, MemoryStore};

use crate::support::http::serve;
use crate::support::pepper;

/// The operator token of every harness built with [`Harness::start`].
pub(crate) const TOKEN: &str = "operator-token-for-the-admin-tests";

const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// An admin router (and `GET /v1/ping` behind the API-key layer, Bearer accepted) on a
/// loopback port, with the events its hook received.
pub(crate) struct Harness {
    addr: SocketAddr,
    client: Client<HttpConnector, Full<Bytes>>,
    pub(crate) manager: KeyManager,
    events: Arc<Mutex<Vec<AdminEvent>>>,
    /// Writes the layer's recorded uses to the store every few milliseconds.
    _flusher: tower_api_key::usage::FlushTask,
}

/// An answer: status, headers, body.
pub(crate) struct Reply {
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Bytes,
}

impl Reply {
    pub(crate) fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON (asserted to be JSON).
    pub(crate) fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|err| panic!("not JSON ({err}): {}", self.text()))
    }

    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(name)
            .map(|value| value.to_str().expect("ascii"))
    }

    /// Asserts `status` and a `{"error": string}` JSON body.
    pub(crate) fn assert_error(&self, status: StatusCode, what: &str) {
        assert_eq!(self.status, status, "{what}: {}", self.text());
        assert!(
            self.header("content-type")
                .is_some_and(|value| value.starts_with("application/json")),
            "{what}: {:?}",
            self.headers
        );
        assert!(self.json()["error"].is_string(), "{what}: {}", self.text());
    }
}

impl Harness {
    /// The router behind [`AdminToken`] with [`TOKEN`].
    pub(crate) async fn start() -> Self {
        Self::with_authorizer(AdminToken::new(TOKEN).expect("long enough")).await
    }

    pub(crate) async fn with_authorizer(authorizer: impl AdminAuthorizer) -> Self {
        Self::with(|manager| AdminRouter::new(manager, authorizer)).await
    }

    /// The router `configure` builds over the harness's manager (the harness adds its event
    /// hook).
    pub(crate) async fn with(configure: impl FnOnce(KeyManager) -> AdminRouter) -> Self {
        Self::on_store(Arc::new(MemoryStore::new()), configure).await
    }

    /// As [`with`](Self::with), over `store`.
    pub(crate) async fn on_store(
        store: Arc<dyn KeyStore>,
        configure: impl FnOnce(KeyManager) -> AdminRouter,
    ) -> Self {
        let manager = KeyManager::new(store, pepper());
        let events = Arc::new(Mutex::new(Vec::new()));
        let trail = Arc::clone(&events);
        let recorder = UsageRecorder::new(Arc::clone(manager.store()));
        let flusher = recorder.spawn_flusher(Duration::from_millis(20));
        let app = Router::new()
            .route("/v1/ping", get(|| async { "pong" }))
            .layer(
                ApiKeyLayer::for_manager(&manager)
                    .accept_bearer()
                    .record_usage(recorder)
                    .build(),
            )
            .merge(
                configure(manager.clone())
                    .on_event(move |event| trail.lock().expect("lock").push(event.clone()))
                    .into_router(),
            );
        Self {
            addr: serve(app).await,
            client: Client::builder(TokioExecutor::new()).build_http(),
            manager,
            events,
            _flusher: flusher,
        }
    }

    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Waits (bounded) until the store has a last-used time for key `id` of `account`.
    pub(crate) async fn wait_until_used(&self, account: &str, id: &str) {
        let account = crate::support::account(account);
        let id = id.parse().expect("key id");
        let recorded = tokio::time::timeout(REQUEST_TIMEOUT, async {
            loop {
                let info = self.manager.get(&account, id).await.expect("get");
                if info.last_used_at.is_some() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
        assert!(recorded.is_ok(), "the use was never recorded");
    }

    /// Sends a request with `headers` and, if given, `body` (no content type unless a header
    /// says so).
    pub(crate) async fn send(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> Reply {
        let mut request = Request::builder()
            .method(method.clone())
            .uri(format!("http://{}{path}", self.addr));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let body = Full::new(Bytes::copy_from_slice(body.unwrap_or_default()));
        let exchange = async {
            let response = self
                .client
                .request(request.body(body).expect("request"))
                .await
                .expect("response");
            let (parts, body) = response.into_parts();
            Reply {
                status: parts.status,
                headers: parts.headers,
                body: body.collect().await.expect("body").to_bytes(),
            }
        };
        tokio::time::timeout(REQUEST_TIMEOUT, exchange)
            .await
            .unwrap_or_else(|_| panic!("{method} {path} took over {REQUEST_TIMEOUT:?}"))
    }

    /// An admin request with the operator token and a JSON body, if given.
    pub(crate) async fn admin(&self, method: Method, path: &str, body: Option<&str>) -> Reply {
        self.send_as(TOKEN, method, path, body).await
    }

    /// A request as `token`'s caller, with a JSON body if given.
    pub(crate) async fn send_as(
        &self,
        token: &str,
        method: Method,
        path: &str,
        body: Option<&str>,
    ) -> Reply {
        let bearer = format!("Bearer {token}");
        let mut headers = vec![("authorization", bearer.as_str())];
        if body.is_some() {
            headers.push(("content-type", "application/json"));
        }
        self.send(method, path, &headers, body.map(str::as_bytes))
            .await
    }

    /// `POST /admin/accounts/{account}/keys` with `body`; 201 asserted.
    pub(crate) async fn create(&self, account: &str, body: Option<&str>) -> Value {
        let reply = self
            .admin(
                Method::POST,
                &format!("/admin/accounts/{account}/keys"),
                body,
            )
            .await;
        assert_eq!(
            reply.status,
            StatusCode::CREATED,
            "{body:?}: {}",
            reply.text()
        );
        reply.json()
    }

    /// The account's records; 200 asserted.
    pub(crate) async fn list(&self, account: &str) -> Vec<Value> {
        let reply = self
            .admin(
                Method::GET,
                &format!("/admin/accounts/{account}/keys"),
                None,
            )
            .await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        reply.json()["keys"].as_array().expect("keys").clone()
    }

    /// `{method} /admin/accounts/{account}/keys/{id}{suffix}` with `body`.
    pub(crate) async fn on_key(
        &self,
        method: Method,
        account: &str,
        id: &str,
        suffix: &str,
        body: Option<&str>,
    ) -> Reply {
        self.admin(
            method,
            &format!("/admin/accounts/{account}/keys/{id}{suffix}"),
            body,
        )
        .await
    }

    /// `PATCH /admin/accounts/{account}/keys/{id}` with `body`; 200 asserted, the record.
    pub(crate) async fn patch(&self, account: &str, id: &str, body: &str) -> Value {
        let reply = self
            .on_key(Method::PATCH, account, id, "", Some(body))
            .await;
        assert_eq!(reply.status, StatusCode::OK, "{body}: {}", reply.text());
        reply.json()
    }

    /// The status of `GET /v1/ping` with `Authorization: Bearer key`.
    pub(crate) async fn ping(&self, key: &str) -> StatusCode {
        let bearer = format!("Bearer {key}");
        self.send(Method::GET, "/v1/ping", &[("authorization", &bearer)], None)
            .await
            .status
    }

    /// The events the hook has received so far.
    pub(crate) fn events(&self) -> Vec<AdminEvent> {
        self.events.lock().expect("lock").clone()
    }
}

/// The operator ([`TOKEN`]) and one tenant each of acme and globex, with these tokens.
pub(crate) fn operator_and_tenants(acme: &str, globex: &str) -> AdminTokens {
    AdminTokens::new()
        .operator(AdminToken::new(TOKEN).expect("token"))
        .tenant(
            crate::support::account("acme"),
            AdminToken::new(acme).expect("token"),
        )
        .tenant(
            crate::support::account("globex"),
            AdminToken::new(globex).expect("token"),
        )
}

/// `object[field]` as a string.
pub(crate) fn text<'a>(object: &'a Value, field: &str) -> &'a str {
    object[field]
        .as_str()
        .unwrap_or_else(|| panic!("`{field}` is not a string in {object}"))
}
