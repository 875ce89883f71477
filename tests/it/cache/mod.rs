//! The layer's cache: misses, faults, and changes racing lookups.

mod faults;
mod races;
