//! The key stores: what every store does, and what each promises beyond that.

mod conformance;
#[cfg(feature = "postgres")]
mod postgres;
#[cfg(feature = "sqlite")]
mod sqlite;
