//! How the layer answers an open response's question, "does my key still let me through?":
//! [`Authority`] for the gatekeeper, checking a key the way a new request would be checked,
//! without counting a use or spending a budget.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use futures_util::FutureExt as _;

use super::guard::{Authority, Check, Standing};
use super::watch::StreamWatch;
use crate::account::Account;
use crate::cache::{Cached, Resolution};
use crate::gatekeeper::Gatekeeper;
use crate::key::{KeyDigest, KeyPrefix};
use crate::rejection::Rejection;
use crate::resolver::Resolver;

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

    fn ended(&self, _rejection: Rejection) {
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
    if expires_at.is_some_and(|at| SystemTime::now() >= at) {
        return Standing::Refused(Rejection::Expired);
    }
    if let Some(allowed) = account.allowed_ips() {
        // An address not kept (the key had no allowlist when it was let in) can't be checked:
        // refused, as a new request without an address would be.
        if !address.is_some_and(|address| allowed.contains(address)) {
            return Standing::Refused(Rejection::AddressNotAllowed);
        }
    }
    Standing::Valid {
        account,
        expires_at,
    }
}
