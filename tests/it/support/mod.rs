//! Helpers shared by the integration tests (`tests/serial` includes the modules it needs:
//! `exclusive`, `hooks`, `keys`, `panicking`, `rng`, `service`, `wait`).

#[cfg(feature = "admin")]
pub(crate) mod browser;
pub(crate) mod clock;
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub(crate) mod db;
pub(crate) mod demo;
pub(crate) mod exclusive;
pub(crate) mod grpc;
pub(crate) mod hooks;
pub(crate) mod http;
pub(crate) mod keys;
#[cfg(feature = "admin")]
pub(crate) mod panicking;
#[cfg(feature = "redis")]
pub(crate) mod redis;
pub(crate) mod rng;
pub(crate) mod service;
pub(crate) mod stores;
pub(crate) mod wait;

use tower_api_key::{AccountId, Pepper};

/// The pepper of every manager and layer in these tests (one service, one pepper).
pub(crate) fn pepper() -> Pepper {
    Pepper::from_bytes([3; 32])
}

pub(crate) fn account(name: &str) -> AccountId {
    name.parse().expect("valid account id")
}
