//! The layer in front of each transport: axum, tonic (gRPC), and a plain tower stack on hyper.

mod axum;
mod tonic;
mod tower;
