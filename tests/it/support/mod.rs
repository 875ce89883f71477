//! Helpers shared by the layer's integration tests: a loopback server, a tiny HTTP/1 client,
//! and stores that misbehave on purpose.
#![allow(dead_code, unreachable_pub)]

pub mod db;
pub mod demo;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tower_api_key::store::KeyUse;
use tower_api_key::{AccountId, KeyPrefix, KeyRecord, KeyStore, MemoryStore, Pepper, StoreError};

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

impl StoreHooks for TestStore {
    fn records(&self) -> &MemoryStore {
        &self.inner
    }
    fn before_write(&self) -> Result<(), StoreError> {
        self.check()
    }
    fn before_read(&self) -> Result<(), StoreError> {
        self.check()
    }
    async fn find_by_prefix(&self, prefix: &KeyPrefix) -> Result<Option<KeyRecord>, StoreError> {
        self.lookups.fetch_add(1, Ordering::SeqCst);
        self.check()?;
        // Read first, then wait: the answer is as stale as it can be when it arrives.
        let found = self.inner.find_by_prefix(prefix).await;
        self.maybe_delay().await;
        found
    }
    async fn record_last_used(&self, uses: &[KeyUse]) -> Result<(), StoreError> {
        self.check()?;
        self.last_used_writes.fetch_add(1, Ordering::SeqCst);
        self.last_used_rows.fetch_add(uses.len(), Ordering::SeqCst);
        self.inner.record_last_used(uses).await
    }
}

// ===== stores that misbehave on purpose =====

/// What a test store changes about a [`MemoryStore`]; everything not overridden passes
/// straight through. Implement it, then `hooked_key_store!(YourStore)` for the `KeyStore`.
#[allow(async_fn_in_trait)]
pub trait StoreHooks: Send + Sync + 'static {
    /// The records behind the store.
    fn records(&self) -> &MemoryStore;

    /// Runs before every change (insert, set status, replace key, delete, last used).
    fn before_write(&self) -> Result<(), StoreError> {
        Ok(())
    }

    /// Runs after a change (insert, set status, replace key, delete) was applied, before the
    /// store answers: a store that commits and then stalls or fails to reply.
    async fn after_write(&self) -> Result<(), StoreError> {
        Ok(())
    }

    /// Runs before every read (get, list, and the default `find_by_prefix`).
    fn before_read(&self) -> Result<(), StoreError> {
        Ok(())
    }

    /// The lookup the layer makes on a cache miss.
    async fn find_by_prefix(&self, prefix: &KeyPrefix) -> Result<Option<KeyRecord>, StoreError> {
        self.before_read()?;
        self.records().find_by_prefix(prefix).await
    }

    /// A batch of last-used times.
    async fn record_last_used(&self, uses: &[KeyUse]) -> Result<(), StoreError> {
        self.before_write()?;
        self.records().record_last_used(uses).await
    }
}

/// Implements `KeyStore` for a [`StoreHooks`] type of the test crate that invokes it.
macro_rules! hooked_key_store {
    ($store:ty) => {
        #[async_trait::async_trait]
        impl tower_api_key::KeyStore for $store {
            async fn insert_within_limit(
                &self,
                record: tower_api_key::KeyRecord,
                limit: usize,
            ) -> Result<(), tower_api_key::StoreError> {
                $crate::support::StoreHooks::before_write(self)?;
                let applied = tower_api_key::KeyStore::insert_within_limit(
                    $crate::support::StoreHooks::records(self),
                    record,
                    limit,
                )
                .await;
                $crate::support::StoreHooks::after_write(self).await?;
                applied
            }
            async fn find_by_prefix(
                &self,
                prefix: &tower_api_key::KeyPrefix,
            ) -> Result<Option<tower_api_key::KeyRecord>, tower_api_key::StoreError> {
                $crate::support::StoreHooks::find_by_prefix(self, prefix).await
            }
            async fn get(
                &self,
                account: &tower_api_key::AccountId,
                id: tower_api_key::KeyId,
            ) -> Result<Option<tower_api_key::KeyRecord>, tower_api_key::StoreError> {
                $crate::support::StoreHooks::before_read(self)?;
                tower_api_key::KeyStore::get(
                    $crate::support::StoreHooks::records(self),
                    account,
                    id,
                )
                .await
            }
            async fn list(
                &self,
                account: &tower_api_key::AccountId,
            ) -> Result<Vec<tower_api_key::KeyRecord>, tower_api_key::StoreError> {
                $crate::support::StoreHooks::before_read(self)?;
                tower_api_key::KeyStore::list($crate::support::StoreHooks::records(self), account)
                    .await
            }
            async fn set_status(
                &self,
                account: &tower_api_key::AccountId,
                id: tower_api_key::KeyId,
                status: tower_api_key::KeyStatus,
            ) -> Result<Option<tower_api_key::KeyRecord>, tower_api_key::StoreError> {
                $crate::support::StoreHooks::before_write(self)?;
                let applied = tower_api_key::KeyStore::set_status(
                    $crate::support::StoreHooks::records(self),
                    account,
                    id,
                    status,
                )
                .await;
                $crate::support::StoreHooks::after_write(self).await?;
                applied
            }
            async fn replace_key(
                &self,
                account: &tower_api_key::AccountId,
                id: tower_api_key::KeyId,
                prefix: tower_api_key::KeyPrefix,
                digest: tower_api_key::KeyDigest,
            ) -> Result<Option<tower_api_key::store::Rotated>, tower_api_key::StoreError> {
                $crate::support::StoreHooks::before_write(self)?;
                let applied = tower_api_key::KeyStore::replace_key(
                    $crate::support::StoreHooks::records(self),
                    account,
                    id,
                    prefix,
                    digest,
                )
                .await;
                $crate::support::StoreHooks::after_write(self).await?;
                applied
            }
            async fn delete(
                &self,
                account: &tower_api_key::AccountId,
                id: tower_api_key::KeyId,
            ) -> Result<Option<tower_api_key::KeyRecord>, tower_api_key::StoreError> {
                $crate::support::StoreHooks::before_write(self)?;
                let applied = tower_api_key::KeyStore::delete(
                    $crate::support::StoreHooks::records(self),
                    account,
                    id,
                )
                .await;
                $crate::support::StoreHooks::after_write(self).await?;
                applied
            }
            async fn record_last_used(
                &self,
                uses: &[tower_api_key::store::KeyUse],
            ) -> Result<(), tower_api_key::StoreError> {
                $crate::support::StoreHooks::record_last_used(self, uses).await
            }
        }
    };
}
#[allow(unused_imports)]
pub(crate) use hooked_key_store;

hooked_key_store!(TestStore);
