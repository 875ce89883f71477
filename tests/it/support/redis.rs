//! The shared Redis of the tests that need one: `REDIS_URL` (default
//! `redis://127.0.0.1:6379`), a random namespace per test, deleted at the end. Without a
//! reachable Redis those tests say so and pass, unless `REQUIRE_REDIS=1`, as `bash .ci/run`
//! sets.

use std::time::Duration;

/// The shared Redis's URL.
pub(crate) fn shared_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

/// Says why a test is skipped, or fails it if Redis is required.
pub(crate) fn skip(why: &str) {
    assert!(
        std::env::var_os("REQUIRE_REDIS").is_none(),
        "REQUIRE_REDIS is set but {why}"
    );
    eprintln!("skipped: {why} (set REQUIRE_REDIS=1 to fail instead; `bash .ci/run` starts one)");
}

/// Deletes a namespace's keys from the shared Redis when dropped (they would otherwise stay
/// until they expire: a day or more for most of these tests).
pub(crate) struct Cleanup {
    pub(crate) url: String,
    pub(crate) namespace: String,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        use redis::Commands as _;
        let Ok(mut connection) = redis::Client::open(self.url.as_str())
            .and_then(|client| client.get_connection_with_timeout(Duration::from_secs(2)))
        else {
            return;
        };
        let keys: Vec<String> = match connection.scan_match(format!("{}:*", self.namespace)) {
            Ok(keys) => keys.filter_map(Result::ok).collect(),
            Err(_) => return,
        };
        if !keys.is_empty() {
            let _: Result<usize, _> = connection.del(keys);
        }
    }
}
