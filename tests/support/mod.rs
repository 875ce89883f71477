//! Helpers shared by the layer's integration tests: a loopback server, a tiny HTTP/1 client,
//! and stores that misbehave on purpose.
#![allow(dead_code, unreachable_pub)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tower_api_key::store::{KeyUse, Rotated};
use tower_api_key::{
    AccountId, KeyDigest, KeyId, KeyPrefix, KeyRecord, KeyStatus, KeyStore, MemoryStore, Pepper,
    StoreError,
};

pub fn pepper() -> Pepper {
    Pepper::from_bytes([3; 32])
}

pub fn account(name: &str) -> AccountId {
    name.parse().expect("valid account id")
}

/// Serves `app` on a fresh loopback port until the test ends.
pub async fn serve(app: axum::Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    let addr = listener.local_addr().expect("local addr");
    tokio::spawn(async move {
        axum::serve(listener, app).await.expect("serve");
    });
    addr
}

/// An HTTP/1 client for loopback servers.
pub fn client() -> Client<HttpConnector, Empty<bytes::Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

/// The answer to a GET: status, headers, body text.
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: String,
}

/// GET `path` with each of `keys` as an `x-api-key` header.
pub async fn get(
    client: &Client<HttpConnector, Empty<bytes::Bytes>>,
    addr: SocketAddr,
    path: &str,
    keys: &[&str],
) -> Answer {
    let mut request = Request::get(format!("http://{addr}{path}"));
    for key in keys {
        request = request.header("x-api-key", *key);
    }
    let response = client
        .request(request.body(Empty::new()).expect("request"))
        .await
        .expect("response");
    let status = response.status();
    let headers = response.headers().clone();
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    Answer {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

/// A memory store that can be made slow, made to fail, and counts its lookups and writes.
#[derive(Default)]
pub struct TestStore {
    pub inner: MemoryStore,
    pub down: AtomicBool,
    /// Upper bound of a pseudo-random delay added to every `find_by_prefix`, in microseconds.
    pub max_delay_us: AtomicU64,
    pub lookups: AtomicUsize,
    pub last_used_writes: AtomicUsize,
    pub last_used_rows: AtomicUsize,
    seed: AtomicU64,
}

impl TestStore {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    fn check(&self) -> Result<(), StoreError> {
        if self.down.load(Ordering::SeqCst) {
            Err(StoreError::unavailable("test store is down"))
        } else {
            Ok(())
        }
    }

    async fn maybe_delay(&self) {
        let max = self.max_delay_us.load(Ordering::Relaxed);
        if max > 0 {
            // A cheap xorshift keeps delays varied without a rand dependency.
            let mut x = self
                .seed
                .fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed)
                | 1;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            tokio::time::sleep(Duration::from_micros(x % max)).await;
        }
    }
}

#[async_trait]
impl KeyStore for TestStore {
    async fn insert_within_limit(&self, record: KeyRecord, limit: usize) -> Result<(), StoreError> {
        self.check()?;
        self.inner.insert_within_limit(record, limit).await
    }
    async fn find_by_prefix(&self, prefix: &KeyPrefix) -> Result<Option<KeyRecord>, StoreError> {
        self.lookups.fetch_add(1, Ordering::SeqCst);
        self.check()?;
        // Read first, then wait: the answer is as stale as it can be when it arrives.
        let found = self.inner.find_by_prefix(prefix).await;
        self.maybe_delay().await;
        found
    }
    async fn get(&self, account: &AccountId, id: KeyId) -> Result<Option<KeyRecord>, StoreError> {
        self.check()?;
        self.inner.get(account, id).await
    }
    async fn list(&self, account: &AccountId) -> Result<Vec<KeyRecord>, StoreError> {
        self.check()?;
        self.inner.list(account).await
    }
    async fn set_status(
        &self,
        account: &AccountId,
        id: KeyId,
        status: KeyStatus,
    ) -> Result<Option<KeyRecord>, StoreError> {
        self.check()?;
        self.inner.set_status(account, id, status).await
    }
    async fn replace_key(
        &self,
        account: &AccountId,
        id: KeyId,
        prefix: KeyPrefix,
        digest: KeyDigest,
    ) -> Result<Option<Rotated>, StoreError> {
        self.check()?;
        self.inner.replace_key(account, id, prefix, digest).await
    }
    async fn delete(
        &self,
        account: &AccountId,
        id: KeyId,
    ) -> Result<Option<KeyRecord>, StoreError> {
        self.check()?;
        self.inner.delete(account, id).await
    }
    async fn record_last_used(&self, uses: &[KeyUse]) -> Result<(), StoreError> {
        self.check()?;
        self.last_used_writes.fetch_add(1, Ordering::SeqCst);
        self.last_used_rows.fetch_add(uses.len(), Ordering::SeqCst);
        self.inner.record_last_used(uses).await
    }
}
