//! A budget as HTTP header fields: `RateLimit-Policy` and `RateLimit` (draft-ietf-httpapi-
//! ratelimit-headers-10, one policy named `"api-key"`), and `Retry-After` on a refusal.

use std::cell::RefCell;
use std::time::Duration;

use http::header::RETRY_AFTER;
use http::{HeaderMap, HeaderName, HeaderValue};

use super::{Budget, RateLimit};

/// `RateLimit-Policy`: the limit, `"api-key";q=<requests>;w=<seconds>`.
pub(crate) static RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
/// `RateLimit`: the budget left, `"api-key";r=<remaining>;t=<seconds until full>`.
pub(crate) static RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");

thread_local! {
    /// The `RateLimit-Policy` value last written on this thread, and its limit: a key's
    /// answers repeat it, and cloning a value costs no allocation.
    static LAST_POLICY: RefCell<Option<(RateLimit, HeaderValue)>> = const { RefCell::new(None) };
}

/// Adds `RateLimit-Policy` and `RateLimit` for `budget`.
pub(crate) fn insert_budget(headers: &mut HeaderMap, budget: &Budget) {
    let mut left = Field::new();
    left.push(br#""api-key";r="#);
    left.number(u64::from(budget.remaining()));
    left.push(b";t=");
    left.number(whole_seconds(budget.reset()));
    headers.reserve(2);
    headers.insert(RATELIMIT_POLICY.clone(), policy_value(budget.limit()));
    headers.insert(RATELIMIT.clone(), left.value());
}

/// `"api-key";q=<requests>;w=<seconds>` for `limit`.
fn policy_value(limit: RateLimit) -> HeaderValue {
    let render = || {
        let mut policy = Field::new();
        policy.push(br#""api-key";q="#);
        policy.number(u64::from(limit.requests()));
        policy.push(b";w=");
        policy.number(u64::from(limit.per_seconds()));
        policy.value()
    };
    LAST_POLICY
        .try_with(|last| {
            let mut last = last.try_borrow_mut().ok()?;
            match &*last {
                Some((cached, value)) if *cached == limit => Some(value.clone()),
                _ => {
                    let value = render();
                    *last = Some((limit, value.clone()));
                    Some(value)
                }
            }
        })
        .ok()
        .flatten()
        .unwrap_or_else(render)
}

/// Sets `Retry-After` to `retry_after` in whole seconds, rounded up (at least 1): when a
/// refused request would fit, for a rate limit or a quota.
pub(crate) fn insert_retry_after(headers: &mut HeaderMap, retry_after: Duration) {
    headers.insert(
        RETRY_AFTER,
        HeaderValue::from(whole_seconds(retry_after).max(1)),
    );
}

/// Seconds, rounded up: a client waiting this long finds what was promised.
fn whole_seconds(duration: Duration) -> u64 {
    duration.as_secs() + u64::from(duration.subsec_nanos() > 0)
}

/// A header value written into a stack buffer: the longest is
/// `"api-key";q=1000000;w=86400` (27 bytes); `t` may reach 86,400 and `r` 1,000,000.
struct Field {
    bytes: [u8; 48],
    len: usize,
}

impl Field {
    fn new() -> Self {
        Self {
            bytes: [0; 48],
            len: 0,
        }
    }

    fn push(&mut self, text: &[u8]) {
        let end = (self.len + text.len()).min(self.bytes.len());
        self.bytes[self.len..end].copy_from_slice(&text[..end - self.len]);
        self.len = end;
    }

    fn number(&mut self, mut n: u64) {
        let mut digits = [0u8; 20];
        let mut at = digits.len();
        loop {
            at -= 1;
            digits[at] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        self.push(&digits[at..]);
    }

    fn value(&self) -> HeaderValue {
        // Quotes, letters, digits, `;` and `=` only: always a valid value.
        HeaderValue::from_bytes(&self.bytes[..self.len])
            .unwrap_or_else(|_| HeaderValue::from_static(""))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_follow_the_draft() {
        let limit = RateLimit::new(5, 2).unwrap();
        let budget = Budget::new(
            limit,
            3,
            Duration::from_millis(800),
            Duration::from_millis(0),
        );
        let mut headers = HeaderMap::new();
        insert_budget(&mut headers, &budget);
        assert_eq!(headers["ratelimit-policy"], r#""api-key";q=5;w=2"#);
        assert_eq!(headers["ratelimit"], r#""api-key";r=3;t=1"#);
    }

    #[test]
    fn the_widest_values_fit() {
        let limit = RateLimit::new(1_000_000, 86_400).unwrap();
        let budget = Budget::new(
            limit,
            1_000_000,
            Duration::from_secs(86_400),
            Duration::from_secs(86_400),
        );
        let mut headers = HeaderMap::new();
        insert_budget(&mut headers, &budget);
        insert_retry_after(&mut headers, budget.retry_after());
        assert_eq!(
            headers["ratelimit-policy"],
            r#""api-key";q=1000000;w=86400"#
        );
        assert_eq!(headers["ratelimit"], r#""api-key";r=1000000;t=86400"#);
        assert_eq!(headers["retry-after"], "86400");
    }

    #[test]
    fn retry_after_rounds_up_and_is_never_zero() {
        let limit = RateLimit::new(1, 1).unwrap();
        let mut headers = HeaderMap::new();
        let soon = Budget::new(limit, 0, Duration::ZERO, Duration::from_millis(1));
        insert_retry_after(&mut headers, soon.retry_after());
        assert_eq!(headers["retry-after"], "1");
        let later = Budget::new(limit, 0, Duration::ZERO, Duration::from_millis(1_001));
        insert_retry_after(&mut headers, later.retry_after());
        assert_eq!(headers["retry-after"], "2");
    }
}
