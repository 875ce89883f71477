//! The question an open response asks its layer, "does my key still let me through?"
//! ([`Authority`], with its answers [`Check`] and [`Standing`]), and the gatekeeper's answer:
//! the key checked the way a new request would be, without counting a use or spending a
//! budget.

use std::any::Any;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use futures_util::FutureExt as _;
use futures_util::future::BoxFuture;

use super::watch::StreamWatch;
use crate::account::Account;
use crate::cache::{Cached, Resolution};
use crate::gatekeeper::{Gatekeeper, address_allows, has_expired};
use crate::key::{KeyDigest, KeyPrefix};
use crate::rejection::Rejection;
use crate::resolver::Resolver;

/// What the layer answers a response that asks whether its key still lets it through.
pub(crate) trait Authority: Send + Sync + 'static {
    /// The register of waiting responses.
    fn watch(&self) -> Option<&Arc<StreamWatch>>;

    /// Checks the key as a new request from `address` would be, without counting a use or
    /// spending a budget: at once from the cache, or after the resolver's answer.
    fn check(&self, prefix: KeyPrefix, digest: KeyDigest, address: Option<IpAddr>) -> Check;

    /// Counts a response ended because its key no longer lets it through.
    fn ended(&self);
}

/// The answer to [`Authority::check`].
pub(crate) enum Check {
    Ready(Standing),
    Pending(BoxFuture<'static, Standing>),
}

/// Where a key stands for an open response.
pub(crate) enum Standing {
    /// Still let through as `account` (for the scopes the response was let in with), until
    /// `expires_at` if it expires.
    Valid {
        account: Arc<dyn Any + Send + Sync>,
        expires_at: Option<SystemTime>,
    },
    /// A new request would be refused with this.
    Refused(Rejection),
    /// No answer now (too many lookups running): ask again soon.
    Retry,
}

impl<R: Resolver> Authority for Gatekeeper<R> {
    fn watch(&self) -> Option<&Arc<StreamWatch>> {
        self.streams.as_ref().map(|(watch, _)| watch)
    }

    fn check(&self, prefix: KeyPrefix, digest: KeyDigest, address: Option<IpAddr>) -> Check {
        match self.cache.cached(&digest, Instant::now()) {
            Some(Cached::Valid(account)) => Check::Ready(standing(account, address)),
            Some(Cached::Refused) => Check::Ready(Standing::Refused(Rejection::InvalidKey)),
            // Forgotten by the change that woke the response: the resolver says.
            None => match self.cache.resolve_again(prefix, digest) {
                Ok(lookup) => Check::Pending(Box::pin(lookup.map(move |resolution| {
                    match resolution {
                        Resolution::Found(account) => standing(account, address),
                        Resolution::Refused => Standing::Refused(Rejection::InvalidKey),
                        // As a new request would be answered: fail closed.
                        Resolution::Failed(_) => Standing::Refused(Rejection::Unavailable),
                    }
                }))),
                Err(_overloaded) => Check::Ready(Standing::Retry),
            },
        }
    }

    fn ended(&self) {
        self.metrics.stream_ended();
    }
}

/// Where `account`'s key stands for a response from `address`: its expiry and allowlist, as
/// the gatekeeper checks them for a new request. (Rate limits and quotas are spent per
/// request: a response already let in has spent its share.)
fn standing<A: Account + Send + Sync + 'static>(
    account: Arc<A>,
    address: Option<IpAddr>,
) -> Standing {
    let expires_at = account.expires_at();
    if has_expired(expires_at) {
        return Standing::Refused(Rejection::Expired);
    }
    if let Some(allowed) = account.allowed_ips() {
        // An address not kept (the key had no allowlist when it was let in) can't be checked:
        // refused, as a new request without an address would be.
        if !address_allows(allowed, address) {
            return Standing::Refused(Rejection::AddressNotAllowed);
        }
    }
    Standing::Valid {
        account,
        expires_at,
    }
}
