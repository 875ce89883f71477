//! [`Account`]: what the layer needs to know about an authenticated account besides who it
//! is — when it stops authenticating, how it is named in logs, the addresses it may come
//! from, its rate limit and quota, and where its uses are recorded. Every method has a
//! default, so a custom account type opts in to what it has.

use std::time::{Instant, SystemTime};

use crate::policy::{AllowedIps, RateLimit};
use crate::rate_limit::BudgetKey;
use crate::usage::{QuotaCheck, UseOutcome};

/// What the layer reads from an authenticated account on every request, cached or not.
///
/// A [`Resolver`](crate::Resolver)'s account type implements it; with nothing to say, an
/// empty `impl Account for Customer {}` gives an account that never expires, is not named in
/// the request's span, may be used from anywhere, is not rate limited, has no quota and
/// records no uses.
/// [`KeyIdentity`](crate::KeyIdentity), the account of keys kept in a store, implements
/// every method.
///
/// ```
/// use std::time::SystemTime;
/// use tower_api_key::Account;
///
/// struct Customer {
///     name: String,
///     trial_ends: Option<SystemTime>,
/// }
///
/// impl Account for Customer {
///     fn expires_at(&self) -> Option<SystemTime> {
///         self.trial_ends
///     }
///
///     fn label(&self) -> Option<&str> {
///         Some(&self.name)
///     }
/// }
/// # let c = Customer { name: "acme".into(), trial_ends: None };
/// # assert_eq!(c.label(), Some("acme"));
/// ```
pub trait Account {
    /// When the account stops authenticating, if it does. The layer compares it with the
    /// clock on every request, cached or not, and answers 401 `expired API key` from that
    /// instant without asking the resolver again. The default is `None` (never).
    fn expires_at(&self) -> Option<SystemTime> {
        None
    }

    /// How the account is named in the request's tracing span (field `api_key.account`), if
    /// it has a name worth logging. Never a secret. The default is `None`.
    fn label(&self) -> Option<&str> {
        None
    }

    /// The addresses the account may be used from. `None`, the default, allows every
    /// address. A request from elsewhere, or from an address the layer can't tell (see
    /// [`client_addr`](crate::client_addr)), is answered 403 `address not allowed`.
    fn allowed_ips(&self) -> Option<&AllowedIps> {
        None
    }

    /// Whose rate-limit budget the account's requests spend (see
    /// [`rate_limit`](crate::rate_limit)). `None`, the default, exempts them from rate limits.
    fn budget_key(&self) -> Option<BudgetKey> {
        None
    }

    /// The account's own rate limit. `None`, the default, leaves it to the layer's
    /// [`default_rate_limit`](crate::ApiKeyLayerBuilder::default_rate_limit), if any.
    fn rate_limit(&self) -> Option<RateLimit> {
        None
    }

    /// Counts a request made at `at` against the account's quota, after its rate limit let it
    /// through; `None`, the default, means no quota. A request over the quota is answered 429
    /// `quota exceeded`, not served and not recorded as a use. Called on the request path:
    /// it should answer [`QuotaCheck::Ready`] when it can.
    fn spend_quota(&self, at: Instant) -> Option<QuotaCheck> {
        let _ = at;
        None
    }

    /// Called on the request path for every request the layer decided for this account,
    /// cached or not, with the instant of the decision (read once per request, for its cache)
    /// and what was decided: let in, over its rate limit, refused for its expiry, or refused
    /// by [`RequireScopeLayer`](crate::RequireScopeLayer) after being let in. It must be
    /// cheap and must not block; the default does nothing.
    fn record_use(&self, at: Instant, outcome: UseOutcome) {
        let _ = (at, outcome);
    }
}
