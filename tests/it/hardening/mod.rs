//! Hostile and faulty conditions: bad input, arbitrary requests, store faults. (Floods, churn
//! and timing are in `tests/serial/`.)

mod bad_input;
mod faults;
mod properties;
