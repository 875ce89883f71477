//! The layer's cache: misses, faults, changes racing lookups, and the read index churning.

mod faults;
mod index;
mod races;
