//! The gatekeeper: what the layer decides for one request, apart from how tower drives it.
//!
//! [`Gatekeeper::decide`] does everything that needs no `.await` (read, trim and parse the
//! header, digest the key, ask the cache, check the client's address, spend the key's
//! rate-limit budget and quota) and returns a [`Decision`]; a cache miss comes back later
//! through [`Gatekeeper::conclude`], a rate limit or quota kept elsewhere through
//! [`Gatekeeper::resume`]. Admission is
//! `admit` (the address) → `apply` (only for a limited key) → `let_in` (the quota, for a key
//! with one) → `accept`. Everything here is shared by every clone of the service.

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::header::{AUTHORIZATION, WWW_AUTHENTICATE};
use http::{Extensions, HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode};

use crate::account::Account as _;
use crate::cache::{Cached, CachedResolver, Overloaded, PendingResolution, Resolution};
use crate::client_addr::AddressSource;
use crate::key::{ApiKey, KeyPrefix, Pepper};
use crate::metrics::Metrics;
use crate::policy::AllowedIps;
use crate::rate_limit::{self, Acquire, Budget, LimiterFailure, Limits, PendingVerdict, Verdict};
use crate::rejection::{self, Rejection, RejectionContext};
use crate::resolver::Resolver;
use crate::stream::{Registered, StreamWatch, Ticket};
use crate::usage::{PendingQuotaVerdict, QuotaCheck, QuotaVerdict, UseOutcome};

/// Whether requests without the header are let through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    Required,
    Optional,
}

/// Builds a custom answer for a refused request.
pub(crate) type RejectionHook =
    Arc<dyn Fn(&RejectionContext<'_>) -> Response<Bytes> + Send + Sync + 'static>;

/// Where keys may come from, and what the inner service sees of them.
#[derive(Debug, Clone)]
pub(crate) struct Sources {
    /// The key header (`x-api-key` unless configured).
    pub(crate) header: HeaderName,
    /// Also `Authorization: Bearer <key>` when the key header is absent.
    pub(crate) bearer: bool,
    /// Remove the key's header before calling the inner service.
    pub(crate) strip: bool,
    /// `WWW-Authenticate` of a 401: names the key header.
    pub(crate) challenge: HeaderValue,
}

impl Sources {
    pub(crate) fn new(header: HeaderName) -> Self {
        Self {
            challenge: rejection::challenge(&header),
            header,
            bearer: false,
            strip: false,
        }
    }

    /// The key's bytes, trimmed; `Ok(None)` when no source carries a key.
    fn read<'h>(&self, headers: &'h HeaderMap) -> Result<Option<&'h [u8]>, &'static str> {
        if !self.bearer {
            return Ok(single(headers, &self.header)?.map(trim_blanks));
        }
        // Both headers in one pass: cheaper than two hashed look-ups for the handful of
        // headers API clients send.
        let (mut own, mut authorization) = (None, None);
        for (name, value) in headers {
            let slot = if *name == AUTHORIZATION {
                &mut authorization
            } else if *name == self.header {
                &mut own
            } else {
                continue;
            };
            if slot.replace(value.as_bytes()).is_some() {
                return Err("repeated header");
            }
        }
        let own = own.map(trim_blanks);
        let bearer = authorization.and_then(bearer_token);
        match (own, bearer) {
            (Some(own), Some(bearer)) if own != bearer => Err("two different keys"),
            (Some(key), _) | (None, Some(key)) => Ok(Some(key)),
            (None, None) => Ok(None),
        }
    }

    /// Takes the key out of the request's headers before the inner service sees them.
    pub(crate) fn strip(&self, headers: &mut HeaderMap) {
        if !self.strip {
            return;
        }
        headers.remove(&self.header);
        let carries_bearer = self.bearer
            && headers
                .get(AUTHORIZATION)
                .is_some_and(|value| bearer_token(value.as_bytes()).is_some());
        if carries_bearer {
            headers.remove(AUTHORIZATION);
        }
    }
}

/// The header's only value, if any; a repeated header is refused.
fn single<'h>(headers: &'h HeaderMap, name: &HeaderName) -> Result<Option<&'h [u8]>, &'static str> {
    let mut values = headers.get_all(name).iter();
    let first = values.next();
    if values.next().is_some() {
        return Err("repeated header");
    }
    Ok(first.map(HeaderValue::as_bytes))
}

/// The credentials of an `Authorization: Bearer …` value (the scheme is case-insensitive,
/// RFC 9110 §11.1); `None` for any other scheme.
fn bearer_token(value: &[u8]) -> Option<&[u8]> {
    let value = trim_blanks(value);
    let (scheme, rest) = value.split_at_checked(6)?;
    (scheme.eq_ignore_ascii_case(b"bearer") && matches!(rest.first(), Some(b' ' | b'\t')))
        .then(|| trim_blanks(rest))
}

/// Everything every clone of the service shares.
pub(crate) struct Gatekeeper<R: Resolver> {
    pub(crate) sources: Sources,
    pub(crate) mode: Mode,
    pub(crate) pepper: Pepper,
    pub(crate) cache: CachedResolver<R>,
    pub(crate) hook: Option<RejectionHook>,
    pub(crate) limits: Limits,
    pub(crate) addresses: AddressSource,
    pub(crate) metrics: Arc<Metrics>,
    /// The register of open responses and the layer's number, unless the layer doesn't
    /// watch them.
    pub(crate) streams: Option<(Arc<StreamWatch>, Registered)>,
}

/// What to do with one request; [`ResponseFuture::start`](crate::future::ResponseFuture)
/// turns it into the future's state, in one place.
pub(crate) enum Decision<A> {
    /// Call the inner service as `A`; with a budget, the response carries it.
    Accept(Arc<A>, Option<Budget>),
    /// Call the inner service without an account (optional mode, no key).
    Anonymous,
    /// Answer for the layer.
    Reject(Rejection),
    /// A valid key over its rate limit: answer 429 with this budget.
    OverLimit(Budget),
    /// A valid key over its quota: answer 429, retry after this long; with the budget of
    /// its rate limit, if it has one.
    OverQuota(Duration, Option<Budget>),
    /// Wait for the resolver's answer on the key (a cache miss).
    Resolve(PendingResolution<A>),
    /// Wait for a verdict on `A` kept elsewhere: its rate limit's, or its quota's.
    Throttle(Arc<A>, Wait, Origin),
}

/// A verdict an authenticated request waits for, kept elsewhere (in Redis, say).
pub(crate) enum Wait {
    /// The rate limiter's.
    RateLimit(PendingVerdict),
    /// The quota's, after the rate limit let the request through with this budget.
    Quota(PendingQuotaVerdict, Option<Budget>),
}

/// The verdict a [`Wait`] ended with.
pub(crate) enum Waited {
    RateLimit(Verdict),
    Quota(QuotaVerdict, Option<Budget>),
}

impl Wait {
    /// Polls the verdict to its end.
    pub(crate) fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Waited> {
        Poll::Ready(match self {
            Self::RateLimit(verdict) => Waited::RateLimit(ready!(verdict.as_mut().poll(cx))),
            Self::Quota(verdict, budget) => {
                Waited::Quota(ready!(verdict.as_mut().poll(cx)), *budget)
            }
        })
    }
}

/// Where an accepted account came from: the cache (with the prefix, for the request's span)
/// or the resolver (whose miss already put the prefix in the span). The metrics count each.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Origin {
    Cache(KeyPrefix),
    Resolver,
}

impl Origin {
    /// Bumps the counter of an outcome for this origin: `cached` or `resolved`.
    fn count(self, metrics: &Metrics, cached: fn(&Metrics), resolved: fn(&Metrics)) {
        match self {
            Self::Cache(_) => cached(metrics),
            Self::Resolver => resolved(metrics),
        }
    }
}

impl<R: Resolver> Gatekeeper<R> {
    /// Reads, parses and digests the key and consults the cache: everything that needs no
    /// `.await`.
    pub(crate) fn decide(
        &self,
        headers: &HeaderMap,
        extensions: &Extensions,
    ) -> Decision<R::Account> {
        let value = match self.sources.read(headers) {
            Ok(value) => value,
            Err(reason) => return self.malformed(reason),
        };
        let Some(value) = value else {
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
        // The checksum waits for a cache miss: a cached digest is a key that had a valid one.
        let key = match ApiKey::parse_shape(value) {
            Ok(key) => key,
            Err(err) => return self.malformed(err),
        };
        let digest = self.pepper.digest(&key);
        // One clock read per request: the cache's expiry and the use's time.
        let now = Instant::now();
        match self.cache.cached(&digest, now) {
            Some(Cached::Valid(account)) => {
                if self.expired(&account) {
                    self.metrics.expired_cached();
                    account.record_use(now, UseOutcome::Refused);
                    tracing::debug!(outcome = "expired", prefix = %key.prefix(), "api key rejected: expired (cached)");
                    return Decision::Reject(Rejection::Expired);
                }
                self.admit(
                    account,
                    Origin::Cache(key.prefix()),
                    now,
                    (headers, extensions),
                )
            }
            Some(Cached::Refused) => {
                self.metrics.refused_cached();
                tracing::debug!(outcome = "invalid", prefix = %key.prefix(), "api key rejected: refused (cached)");
                Decision::Reject(Rejection::InvalidKey)
            }
            None => {
                if !key.has_valid_checksum() {
                    return self.malformed(crate::key::ParseError::Checksum);
                }
                self.metrics.cache_misses();
                // The prefix now, the account once the lookup accepts it.
                record_in_span(Some(key.prefix()), None);
                match self.cache.resolve(&key, digest) {
                    Ok(lookup) => Decision::Resolve(lookup),
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
        lookup: Resolution<R::Account>,
        request: (&HeaderMap, &Extensions),
    ) -> Decision<R::Account> {
        match lookup {
            Resolution::Found(account) if self.expired(&account) => {
                self.metrics.expired_resolved();
                account.record_use(Instant::now(), UseOutcome::Refused);
                tracing::debug!(outcome = "expired", "api key rejected: expired");
                Decision::Reject(Rejection::Expired)
            }
            Resolution::Found(account) => {
                self.admit(account, Origin::Resolver, Instant::now(), request)
            }
            Resolution::Refused => {
                self.metrics.refused_resolved();
                tracing::debug!(outcome = "invalid", "api key rejected: refused by resolver");
                Decision::Reject(Rejection::InvalidKey)
            }
            Resolution::Failed(failure) => {
                self.metrics.unavailable();
                tracing::debug!(outcome = "unavailable", ?failure, "api key check failed");
                Decision::Reject(Rejection::Unavailable)
            }
        }
    }

    /// Lets an authenticated account in if its address and rate limit allow; a limit kept
    /// elsewhere sends it to wait for the verdict.
    #[inline(always)]
    fn admit(
        &self,
        account: Arc<R::Account>,
        origin: Origin,
        now: Instant,
        request: (&HeaderMap, &Extensions),
    ) -> Decision<R::Account> {
        // The usual case, a key without an allowlist or a limit, pays two `Option` reads.
        if let Some(allowed) = account.allowed_ips() {
            if !self.address_allowed(allowed, request) {
                account.record_use(now, UseOutcome::Refused);
                origin.count(
                    &self.metrics,
                    Metrics::address_refused_cached,
                    Metrics::address_refused_resolved,
                );
                tracing::debug!(
                    outcome = "address_not_allowed",
                    "api key used from an address it doesn't allow"
                );
                return Decision::Reject(Rejection::AddressNotAllowed);
            }
        }
        match self.limits.acquire(&*account) {
            None => self.let_in(account, None, origin, now),
            Some(Acquire::Ready(verdict)) => self.apply(verdict, account, origin, now),
            Some(Acquire::Pending(verdict)) => {
                Decision::Throttle(account, Wait::RateLimit(verdict), origin)
            }
        }
    }

    /// Finishes [`Decision::Throttle`] with the verdict it waited for.
    pub(crate) fn resume(
        &self,
        waited: Waited,
        account: Arc<R::Account>,
        origin: Origin,
        now: Instant,
    ) -> Decision<R::Account> {
        match waited {
            Waited::RateLimit(verdict) => self.apply(verdict, account, origin, now),
            Waited::Quota(verdict, budget) => self.meter(verdict, account, origin, budget, now),
        }
    }

    /// Lets the account in with its budget, or refuses it, as the rate limiter's verdict
    /// says.
    #[inline(never)]
    fn apply(
        &self,
        verdict: Verdict,
        account: Arc<R::Account>,
        origin: Origin,
        now: Instant,
    ) -> Decision<R::Account> {
        match verdict {
            Verdict::Allowed(budget) => self.let_in(account, Some(budget), origin, now),
            Verdict::Limited(budget) => {
                account.record_use(now, UseOutcome::RateLimited);
                origin.count(
                    &self.metrics,
                    Metrics::rate_limited_cached,
                    Metrics::rate_limited_resolved,
                );
                tracing::debug!(outcome = "rate_limited", "api key over its rate limit");
                Decision::OverLimit(budget)
            }
            Verdict::Unavailable => {
                self.metrics.limiter_failed();
                match self.limits.on_failure {
                    LimiterFailure::Allow => {
                        tracing::debug!("rate limiter unavailable: request let through");
                        self.let_in(account, None, origin, now)
                    }
                    LimiterFailure::Refuse => {
                        self.metrics.unavailable();
                        tracing::debug!(outcome = "unavailable", "rate limiter unavailable");
                        Decision::Reject(Rejection::Unavailable)
                    }
                }
            }
        }
    }

    /// Whether the request's client address is in `allowed`. A request without an address
    /// is refused (fail closed).
    #[cold]
    fn address_allowed(
        &self,
        allowed: &AllowedIps,
        (headers, extensions): (&HeaderMap, &Extensions),
    ) -> bool {
        address_allows(allowed, self.addresses.client(headers, extensions))
    }

    /// Lets the account in if its quota allows; a quota kept elsewhere sends it to wait for
    /// the verdict.
    #[inline(always)]
    fn let_in(
        &self,
        account: Arc<R::Account>,
        budget: Option<Budget>,
        origin: Origin,
        now: Instant,
    ) -> Decision<R::Account> {
        // The usual case, a key without a quota, pays one `Option` read (the account's
        // `spend_quota` inlined), and accepting inline: no call of its own.
        match account.spend_quota(now) {
            None => self.accept(account, budget, origin, now),
            Some(check) => self.check_quota(check, account, origin, budget, now),
        }
    }

    /// Finishes a quota's check: at once, or by waiting for its verdict.
    #[inline(never)]
    fn check_quota(
        &self,
        check: QuotaCheck,
        account: Arc<R::Account>,
        origin: Origin,
        budget: Option<Budget>,
        now: Instant,
    ) -> Decision<R::Account> {
        match check {
            QuotaCheck::Ready(verdict) => self.meter(verdict, account, origin, budget, now),
            QuotaCheck::Pending(verdict) => {
                Decision::Throttle(account, Wait::Quota(verdict, budget), origin)
            }
        }
    }

    /// Lets the account in, or refuses it, as its quota's verdict says.
    #[inline(never)]
    fn meter(
        &self,
        verdict: QuotaVerdict,
        account: Arc<R::Account>,
        origin: Origin,
        budget: Option<Budget>,
        now: Instant,
    ) -> Decision<R::Account> {
        match verdict {
            QuotaVerdict::Allowed => self.accept(account, budget, origin, now),
            QuotaVerdict::Exceeded { retry_after } => {
                // Not a use (no last-used stamp): counted with the other 429s.
                account.record_use(now, UseOutcome::RateLimited);
                origin.count(
                    &self.metrics,
                    Metrics::quota_exceeded_cached,
                    Metrics::quota_exceeded_resolved,
                );
                tracing::debug!(outcome = "quota_exceeded", "api key over its quota");
                Decision::OverQuota(retry_after, budget)
            }
        }
    }

    /// Accepts the account: counts it, records its use (at `now`) and names it in the
    /// request's span.
    #[inline(always)]
    fn accept(
        &self,
        account: Arc<R::Account>,
        budget: Option<Budget>,
        origin: Origin,
        now: Instant,
    ) -> Decision<R::Account> {
        let prefix = match origin {
            Origin::Cache(prefix) => {
                self.metrics.accepted_cached();
                Some(prefix)
            }
            Origin::Resolver => {
                self.metrics.accepted_resolved();
                None
            }
        };
        account.record_use(now, UseOutcome::Accepted);
        record_in_span(prefix, account.label());
        Decision::Accept(account, budget)
    }

    /// What an accepted request's response keeps, to check its key again while it stays
    /// open: the layer's number, the key's prefix and digest as the resolver tells them (and
    /// the client's address, for a key with an allowlist); `None` if the layer doesn't watch
    /// open responses or the resolver can't look a key up again.
    #[inline(always)]
    pub(crate) fn ticket(
        &self,
        account: &R::Account,
        (headers, extensions): (&HeaderMap, &Extensions),
    ) -> Option<Ticket> {
        let (_, registered) = self.streams.as_ref()?;
        let (prefix, digest) = self.cache.resolver_ref().key_of(account)?;
        let address = match account.allowed_ips() {
            None => None,
            Some(_) => self.addresses.client(headers, extensions),
        };
        Some(Ticket {
            layer: registered.number(),
            prefix,
            digest,
            address,
        })
    }

    /// Whether the account's key has expired: read from the account on every request, so
    /// a cached entry never authenticates past its key's expiry. The clock is read only for
    /// keys that expire.
    fn expired(&self, account: &R::Account) -> bool {
        has_expired(account.expires_at())
    }

    /// The answer to a refused request: the hook's, or the default. Every 401 carries the
    /// challenge naming the key header.
    pub(crate) fn reject<B>(&self, rejection: Rejection, request: &Request<B>) -> Response<Bytes> {
        let mut response = match &self.hook {
            Some(hook) => hook(&RejectionContext {
                rejection,
                method: request.method(),
                uri: request.uri(),
                headers: request.headers(),
            }),
            None => rejection.response_for(request.headers()),
        };
        if response.status() == StatusCode::UNAUTHORIZED {
            let headers = response.headers_mut();
            if self.hook.is_none() || !headers.contains_key(WWW_AUTHENTICATE) {
                headers.insert(WWW_AUTHENTICATE, self.sources.challenge.clone());
            }
        }
        response
    }

    /// The 429 of a key over its rate limit: the rejection's answer, with the key's budget and
    /// when to retry.
    pub(crate) fn over_limit<B>(&self, budget: &Budget, request: &Request<B>) -> Response<Bytes> {
        let mut response = self.reject(Rejection::RateLimited, request);
        let headers = response.headers_mut();
        rate_limit::insert_budget(headers, budget);
        rate_limit::insert_retry_after(headers, budget.retry_after());
        response
    }

    /// The 429 of a key over its quota: the rejection's answer, with the seconds until its
    /// period ends.
    pub(crate) fn over_quota<B>(
        &self,
        retry_after: Duration,
        budget: Option<&Budget>,
        request: &Request<B>,
    ) -> Response<Bytes> {
        let mut response = self.reject(Rejection::QuotaExceeded, request);
        let headers = response.headers_mut();
        if let Some(budget) = budget {
            rate_limit::insert_budget(headers, budget);
        }
        rate_limit::insert_retry_after(headers, retry_after);
        response
    }

    /// Refuses a malformed header value; nothing of it is logged.
    fn malformed(&self, reason: impl fmt::Display) -> Decision<R::Account> {
        self.metrics.malformed();
        tracing::debug!(outcome = "invalid", %reason, "api key rejected");
        Decision::Reject(Rejection::InvalidKey)
    }
}

/// Records the key's prefix and the account in the current span's `api_key.prefix` and
/// `api_key.account` fields, if it declares them: one look-up of the span for both.
fn record_in_span(prefix: Option<KeyPrefix>, account: Option<&str>) {
    // With every level off no span exists: skip the look-up (one atomic load).
    if tracing::level_filters::LevelFilter::current() == tracing::level_filters::LevelFilter::OFF {
        return;
    }
    let span = tracing::Span::current();
    if span.is_disabled() {
        return;
    }
    if let Some(prefix) = prefix {
        span.record("api_key.prefix", tracing::field::display(prefix));
    }
    if let Some(account) = account {
        span.record("api_key.account", account);
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
            .field("sources", &self.sources)
            .field("mode", &self.mode)
            .field("cache", &self.cache)
            .field("custom_rejection", &self.hook.is_some())
            .field("rate_limits", &self.limits)
            .finish_non_exhaustive()
    }
}

/// Whether a key that expires at `expires_at` (`None`: never) has expired. The clock is read
/// only for keys that expire.
#[inline(always)]
pub(crate) fn has_expired(expires_at: Option<SystemTime>) -> bool {
    expires_at.is_some_and(|at| SystemTime::now() >= at)
}

/// Whether `allowed` lets in a client at `address`; no address is refused (fail closed): an
/// allowlist that can't be checked must not become no allowlist.
pub(crate) fn address_allows(allowed: &AllowedIps, address: Option<IpAddr>) -> bool {
    address.is_some_and(|address| allowed.contains(address))
}

#[cfg(test)]
mod tests {
    use super::{bearer_token, trim_blanks};

    #[test]
    fn bearer_tokens_are_read_with_any_case_of_the_scheme() {
        assert_eq!(bearer_token(b"Bearer abc"), Some(&b"abc"[..]));
        assert_eq!(bearer_token(b"bearer   abc "), Some(&b"abc"[..]));
        assert_eq!(bearer_token(b"BEARER\tabc"), Some(&b"abc"[..]));
        for other in [&b"Basic abc"[..], b"Bearerabc", b"Bearer", b"", b"Bear abc"] {
            assert_eq!(bearer_token(other), None, "{other:?}");
        }
    }

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
