//! The gatekeeper: what the layer decides for one request, apart from how tower drives it.
//!
//! [`Gatekeeper::decide`] does everything that needs no `.await` (read, trim and parse the
//! header, digest the key, ask the cache) and returns a [`Decision`]; a cache miss comes back
//! later through [`Gatekeeper::conclude`]. Everything here is shared by every clone of the
//! service.

use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, Request, Response};

use crate::cache::{Cached, CachedResolver, Lookup, Overloaded, PendingLookup};
use crate::key::{ApiKey, Pepper};
use crate::metrics::Metrics;
use crate::rejection::{Rejection, RejectionContext};
use crate::resolver::Resolver;

/// Whether requests without the header are let through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    Required,
    Optional,
}

/// Builds a custom answer for a refused request.
pub(crate) type RejectionHook =
    Arc<dyn Fn(&RejectionContext<'_>) -> Response<Bytes> + Send + Sync + 'static>;

/// Everything every clone of the service shares.
pub(crate) struct Gatekeeper<R: Resolver> {
    pub(crate) header: HeaderName,
    pub(crate) mode: Mode,
    pub(crate) pepper: Pepper,
    pub(crate) cache: CachedResolver<R>,
    pub(crate) hook: Option<RejectionHook>,
    pub(crate) metrics: Arc<Metrics>,
}

/// What to do with one request.
pub(crate) enum Decision<A> {
    Accept(Arc<A>),
    Anonymous,
    Reject(Rejection),
    Lookup(PendingLookup<A>),
}

impl<R: Resolver> Gatekeeper<R> {
    /// Reads, parses and digests the key and consults the cache: everything that needs no
    /// `.await`.
    pub(crate) fn decide(&self, headers: &HeaderMap) -> Decision<R::Account> {
        let mut values = headers.get_all(&self.header).iter();
        let Some(value) = values.next() else {
            return match self.mode {
                Mode::Optional => {
                    self.metrics.anonymous();
                    Decision::Anonymous
                }
                Mode::Required => {
                    self.metrics.missing();
                    tracing::debug!(outcome = "missing", "api key rejected");
                    Decision::Reject(Rejection::MissingKey)
                }
            };
        };
        if values.next().is_some() {
            return self.malformed("repeated header");
        }
        let key = match ApiKey::parse(trim_blanks(value.as_bytes())) {
            Ok(key) => key,
            Err(err) => return self.malformed(err),
        };
        let digest = self.pepper.digest(&key);
        match self.cache.cached(&digest) {
            Some(Cached::Valid(account)) => {
                self.metrics.accepted_cached();
                self.cache.resolver().record_use(&account);
                Decision::Accept(account)
            }
            Some(Cached::Invalid) => {
                self.metrics.refused_cached();
                tracing::debug!(outcome = "invalid", prefix = %key.prefix(), "api key rejected: refused (cached)");
                Decision::Reject(Rejection::InvalidKey)
            }
            None => {
                self.metrics.cache_misses();
                match self.cache.lookup(&key, digest) {
                    Ok(lookup) => Decision::Lookup(lookup),
                    Err(Overloaded) => {
                        self.metrics.unavailable();
                        self.metrics.lookups_shed();
                        tracing::debug!(outcome = "unavailable", prefix = %key.prefix(), "api key lookup shed: too many running");
                        Decision::Reject(Rejection::Unavailable)
                    }
                }
            }
        }
    }

    /// Turns a finished lookup into the account to let in, or the rejection.
    pub(crate) fn conclude(
        &self,
        lookup: Lookup<R::Account>,
    ) -> Result<Arc<R::Account>, Rejection> {
        match lookup {
            Lookup::Found(account) => {
                self.metrics.accepted_resolved();
                self.cache.resolver().record_use(&account);
                Ok(account)
            }
            Lookup::NotFound => {
                self.metrics.refused_resolved();
                tracing::debug!(outcome = "invalid", "api key rejected: refused by resolver");
                Err(Rejection::InvalidKey)
            }
            Lookup::Failed(failure) => {
                self.metrics.unavailable();
                tracing::debug!(outcome = "unavailable", ?failure, "api key check failed");
                Err(Rejection::Unavailable)
            }
        }
    }

    /// The answer to a refused request: the hook's, or the default.
    pub(crate) fn reject<B>(&self, rejection: Rejection, request: &Request<B>) -> Response<Bytes> {
        match &self.hook {
            Some(hook) => hook(&RejectionContext {
                rejection,
                method: request.method(),
                uri: request.uri(),
                headers: request.headers(),
            }),
            None => rejection.response_for(request.headers()),
        }
    }

    /// Refuses a malformed header value; nothing of it is logged.
    fn malformed(&self, reason: impl fmt::Display) -> Decision<R::Account> {
        self.metrics.malformed();
        tracing::debug!(outcome = "invalid", %reason, "api key rejected");
        Decision::Reject(Rejection::InvalidKey)
    }
}

/// The value less the spaces and tabs around it. HTTP/1.1 parsers already drop them (RFC 9110
/// §5.5) but HTTP/2 passes them through: trimming here gives every protocol one answer.
/// Anything else around the key (NBSP, other control bytes) stays, and parsing refuses it.
#[inline]
fn trim_blanks(mut value: &[u8]) -> &[u8] {
    // One byte compare at each end when there is nothing to trim: the usual case.
    while let [b' ' | b'\t', rest @ ..] = value {
        value = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = value {
        value = rest;
    }
    value
}

impl<R: Resolver> fmt::Debug for Gatekeeper<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Gatekeeper")
            .field("header", &self.header)
            .field("mode", &self.mode)
            .field("cache", &self.cache)
            .field("custom_rejection", &self.hook.is_some())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::trim_blanks;

    #[test]
    fn only_spaces_and_tabs_at_the_ends_are_trimmed() {
        assert_eq!(trim_blanks(b"key"), b"key");
        assert_eq!(trim_blanks(b" \t key\t "), b"key");
        assert_eq!(trim_blanks(b" k e y "), b"k e y");
        assert_eq!(trim_blanks(b" \t "), b"");
        assert_eq!(trim_blanks(b""), b"");
        assert_eq!(trim_blanks(b"\x0bkey\xc2\xa0"), b"\x0bkey\xc2\xa0");
    }
}
