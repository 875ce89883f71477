//! `PostgresStore` and `PgChangeFeed`, on the database of `DATABASE_URL` (each test on a schema
//! of its own; without the variable each test says it was skipped).

mod faults;
mod feed;
mod store;
mod two_processes;

use std::time::Duration;

/// Prints the spread of `lags` (run with `--nocapture` to see it); returns the largest.
fn report_lags(what: &str, mut lags: Vec<Duration>) -> Duration {
    lags.sort();
    let at = |q: f64| lags[((lags.len() - 1) as f64 * q).round() as usize];
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let max = *lags.last().expect("samples");
    println!(
        "{what}: n={} p50={:.2} ms p99={:.2} ms max={:.2} ms",
        lags.len(),
        ms(at(0.5)),
        ms(at(0.99)),
        ms(max)
    );
    max
}
