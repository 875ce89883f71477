//! Hostile and faulty conditions: bad input, arbitrary requests, store faults. (Floods, churn
//! and timing are in `tests/serial/`.)

mod bad_input;
#[cfg(feature = "axum")]
mod faults;
mod policy_inputs;
mod properties;
