//! Hostile and faulty conditions: bad input, guessed keys, arbitrary requests, store faults.
//! (Floods and churn are in `tests/serial/`.)

mod bad_input;
#[cfg(feature = "axum")]
mod faults;
mod guesses;
mod policy_inputs;
mod properties;
