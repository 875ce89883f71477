//! The layer in front of each transport: axum, tonic (gRPC), and a plain tower stack on hyper.

#[cfg(feature = "axum")]
mod axum;
mod tonic;
mod tower;
