//! API-key authentication for any [tower] service: axum routers, tonic servers, hyper stacks.
//!
//! Keys look like `k3v9x0qa.<43 base62 characters><6-character checksum>`. The 8-character
//! prefix is readable and identifies the key; the rest is the secret, shown once when the key
//! is created or rotated. Only a keyed blake3 digest of a key is ever stored or cached.
//!
//! - [`key`]: generate, parse and digest keys.
//! - [`store`]: the [`KeyStore`] trait and the embedded [`MemoryStore`].
//! - [`manager`]: [`KeyManager`], the lifecycle rules (at most 3 keys per account; rotate,
//!   revoke, reactivate, delete, each effective at once).
//! - [`invalidation`]: how key changes reach caches before the change returns.
//!
//! ```
//! use std::sync::Arc;
//! use tower_api_key::{ApiKey, KeyManager, MemoryStore, Pepper};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let pepper = Pepper::random()?;
//! let manager = KeyManager::new(Arc::new(MemoryStore::new()), pepper.clone());
//! let account = "acme".parse()?;
//!
//! let created = manager.create(&account).await?;
//! let header_value = created.key.expose_secret().to_owned();
//!
//! // What a server does with the header: parse strictly, then look up by prefix and
//! // compare digests in constant time.
//! let key = ApiKey::parse(header_value.as_bytes())?;
//! let record = manager.store().find_by_prefix(&key.prefix()).await?.unwrap();
//! assert!(record.digest.ct_eq(&pepper.digest(&key)));
//! # Ok(())
//! # }
//! ```
//!
//! [tower]: https://docs.rs/tower
#![cfg_attr(docsrs, feature(doc_cfg))]
#![doc(test(attr(deny(warnings))))]

mod authenticated;
pub mod body;
pub mod cache;
#[cfg(feature = "axum")]
#[cfg_attr(docsrs, doc(cfg(feature = "axum")))]
pub mod extract;
pub mod future;
pub mod invalidation;
pub mod key;
pub mod last_used;
pub mod layer;
pub mod manager;
pub mod metrics;
pub mod rejection;
pub mod resolver;
pub mod service;
pub mod store;

pub use authenticated::Authenticated;
pub use key::{ApiKey, KeyDigest, KeyPrefix, Pepper};
pub use layer::{ApiKeyLayer, ApiKeyLayerBuilder};
pub use manager::{CreatedKey, KeyInfo, KeyManager, ManagerError};
pub use rejection::Rejection;
pub use resolver::{KeyIdentity, Resolver, StoreResolver};
pub use service::ApiKeyService;
pub use store::{AccountId, KeyId, KeyRecord, KeyStatus, KeyStore, MemoryStore, StoreError};
