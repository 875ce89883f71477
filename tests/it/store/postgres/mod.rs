//! `PostgresStore` and `PgChangeFeed`, on the database of `DATABASE_URL` (each test on a schema
//! of its own; without the variable each test says it was skipped).

mod faults;
mod feed;
mod last_used;
mod store;
mod two_processes;
mod usage;
