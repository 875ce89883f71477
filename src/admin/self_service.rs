//! Least privilege for an account's own users: [`SelfService`] lets a tenant do everything
//! that narrows what its keys can do and refuses what widens it; [`KeyCeiling`] bounds the
//! keys it creates.

use std::time::{Duration, SystemTime};

use super::authorize::{AdminAttempt, AdminCaller, AdminDenied, AdminOperation};
use crate::manager::KeyInfo;
use crate::policy::{AllowedIps, KeyOptions, PolicyUpdate, Quota, RateLimit, Scopes};

/// The built-in authorization rules for an operator and self-service tenants; the default
/// [`AdminAuthorizer::authorize`](super::AdminAuthorizer::authorize).
///
/// - An [`AdminCaller::Operator`] may do anything.
/// - An [`AdminCaller::Tenant`] of another account gets [`AdminDenied::NotThisAccount`] (404,
///   as for a missing key).
/// - An [`AdminCaller::Tenant`] of the account may list, read, read usage, rotate (with or
///   without a grace period), revoke, reactivate and delete; create within the [`KeyCeiling`] (none by
///   default; an allowlist or a quota on a new key only narrows it); update only to narrow:
///   rename, restrict scopes (an unrestricted key to any
///   set, a restricted one to a subset), lower a rate limit (no more requests per window
///   and no faster a rate) or add one, bring an expiry forward or add one, lower a quota
///   (fewer requests over the same period) or add one, take addresses out of an allowlist
///   (each new block within one of the old) or add one. Anything that
///   widens (scopes broader or removed, a rate limit raised or removed, an expiry extended or
///   removed, a quota raised, moved to another period or removed, an address added or the
///   allowlist removed) is [`AdminDenied::NotAllowed`] (403), even beside a narrowing.
/// - [`Metadata`](crate::policy::Metadata) is the operator's alone: a tenant's create or
///   update that sets or clears it is [`AdminDenied::NotAllowed`], whatever else it asks.
///
/// **Without a ceiling a tenant may create an unrestricted key**, the account-level key of
/// the basic model: restrictions an operator puts on existing keys then bind a tenant only
/// as long as it keeps those keys. To make them bind, give a [`KeyCeiling`].
///
/// A key without a rate limit of its own counts as unlimited here, unless you tell the rules
/// the layer's default ([`SelfService::default_rate_limit`]).
///
/// A tenant may reactivate a key an operator revoked: revoking and reactivating are the
/// account's own switches. An authorizer that wants revocations to stick overrides
/// [`authorize`](super::AdminAuthorizer::authorize) for
/// [`AdminOperation::Reactivate`].
///
/// Checks compare with the key as read just before the change: a concurrent change by
/// someone else (an operator tightening the same key) can land between the read and the
/// tenant's update.
///
/// ```
/// use std::time::Duration;
/// use tower_api_key::admin::{AdminToken, AdminTokens, KeyCeiling, SelfService};
/// use tower_api_key::policy::{Quota, QuotaPeriod};
/// use tower_api_key::{RateLimit, Scopes};
///
/// // Tenants create read-only keys, at most 10 requests a second and 100,000 a month,
/// // living 90 days at most.
/// let ceiling = KeyCeiling::new()
///     .scopes(Scopes::new(["read"])?)
///     .rate_limit(RateLimit::new(10, 1)?)
///     .quota(Quota::new(100_000, QuotaPeriod::Month)?)
///     .lifetime(Duration::from_secs(90 * 86_400));
/// let tokens = AdminTokens::new()
///     .tenant("acme".parse()?, AdminToken::new("acme-token-0123456789")?)
///     .self_service(SelfService::new().ceiling(ceiling));
/// # let _ = tokens;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Default)]
pub struct SelfService {
    ceiling: KeyCeiling,
    default_rate_limit: Option<RateLimit>,
}

impl SelfService {
    /// The rules above, with no ceiling on new keys.
    pub fn new() -> Self {
        Self::default()
    }

    /// Tenants create keys within `ceiling` only.
    pub fn ceiling(mut self, ceiling: KeyCeiling) -> Self {
        self.ceiling = ceiling;
        self
    }

    /// The layer's [default rate limit](crate::ApiKeyLayerBuilder::default_rate_limit): a key
    /// without a limit of its own counts as limited by it, so a tenant can't give a key a
    /// looser one, at create or later.
    pub fn default_rate_limit(mut self, limit: RateLimit) -> Self {
        self.default_rate_limit = Some(limit);
        self
    }

    /// Whether `attempt` is allowed; see the [type's docs](Self).
    ///
    /// # Errors
    ///
    /// [`AdminDenied::NotThisAccount`] for another account's tenant,
    /// [`AdminDenied::NotAllowed`] for a tenant's widening or a new key above the ceiling.
    pub fn authorize(&self, attempt: &AdminAttempt<'_>) -> Result<(), AdminDenied> {
        let own = match attempt.caller {
            AdminCaller::Operator => return Ok(()),
            AdminCaller::Tenant(own) => own,
        };
        if own != attempt.account {
            return Err(AdminDenied::NotThisAccount);
        }
        let allowed = match attempt.operation {
            // Metadata is what the operator's services read about a key (a plan, a region):
            // the operator's to set, never a tenant's, not even to clear.
            AdminOperation::Create(options) if options.metadata.is_some() => false,
            AdminOperation::Update { update, .. } if update.metadata.is_some() => false,
            // Compared with an unrestricted key, an allowlist or a quota only narrows.
            AdminOperation::Create(options) => {
                self.ceiling.admits(options, SystemTime::now())
                    && options.rate_limit.is_none_or(|asked| {
                        self.default_rate_limit
                            .is_none_or(|default| asked.is_within(&default))
                    })
            }
            AdminOperation::Update { key, update } => narrows(key, update, self.default_rate_limit),
            _ => true,
        };
        if allowed {
            Ok(())
        } else {
            Err(AdminDenied::NotAllowed)
        }
    }
}

/// Whether `update` only narrows `key` (or renames it); a key without a rate limit of its own
/// is limited by `default_rate_limit`, if any.
fn narrows(key: &KeyInfo, update: &PolicyUpdate, default_rate_limit: Option<RateLimit>) -> bool {
    let held = key.rate_limit.or(default_rate_limit);
    let rate_limit = update.rate_limit.is_none_or(|limit| match (limit, held) {
        (_, None) => true,
        // Back to the default: no looser only if the key had no limit of its own.
        (None, Some(_)) => key.rate_limit.is_none(),
        (Some(new), Some(held)) => new.is_within(&held),
    });
    narrows_field(&update.scopes, &key.scopes, Scopes::is_within)
        && rate_limit
        && narrows_field(&update.expires_at, &key.expires_at, |new, held| new <= held)
        && narrows_field(&update.quota, &key.quota, Quota::is_within)
        && narrows_field(&update.allowed_ips, &key.allowed_ips, AllowedIps::is_within)
}

/// Whether a change of one restriction narrows it: none leaves it; removing one the key holds
/// widens it; setting one narrows if the key had none, or if the new one is `within` it.
fn narrows_field<T>(
    change: &Option<Option<T>>,
    held: &Option<T>,
    within: impl Fn(&T, &T) -> bool,
) -> bool {
    match (change, held) {
        (None, _) | (Some(_), None) => true,
        (Some(None), Some(_)) => false,
        (Some(Some(new)), Some(held)) => within(new, held),
    }
}

/// Whether a new key's restriction stays within a ceiling's: without a ceiling anything
/// does; with one, the key must carry the restriction, `within` it.
fn within_ceiling<T>(
    ceiling: &Option<T>,
    asked: &Option<T>,
    within: impl Fn(&T, &T) -> bool,
) -> bool {
    ceiling
        .as_ref()
        .is_none_or(|ceiling| asked.as_ref().is_some_and(|asked| within(asked, ceiling)))
}

// ===== KeyCeiling =====

/// The most a tenant's new key may do, for [`SelfService::ceiling`]. Each bound is optional;
/// [`KeyCeiling::new`] bounds nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyCeiling {
    scopes: Option<Scopes>,
    rate_limit: Option<RateLimit>,
    lifetime: Option<Duration>,
    quota: Option<Quota>,
    allowed_ips: Option<AllowedIps>,
}

impl KeyCeiling {
    /// No bounds: a tenant may create any key the policy's own rules accept.
    pub fn new() -> Self {
        Self::default()
    }

    /// New keys must be restricted to scopes within `scopes` (an unrestricted key is refused).
    #[must_use]
    pub fn scopes(mut self, scopes: Scopes) -> Self {
        self.scopes = Some(scopes);
        self
    }

    /// New keys must carry a rate limit no looser than `limit`: no more requests per window
    /// and no faster a rate.
    #[must_use]
    pub fn rate_limit(mut self, limit: RateLimit) -> Self {
        self.rate_limit = Some(limit);
        self
    }

    /// New keys must expire within `lifetime` of their creation.
    #[must_use]
    pub fn lifetime(mut self, lifetime: Duration) -> Self {
        self.lifetime = Some(lifetime);
        self
    }

    /// New keys must carry a quota within `quota`: over the same period, no more requests.
    #[must_use]
    pub fn quota(mut self, quota: Quota) -> Self {
        self.quota = Some(quota);
        self
    }

    /// New keys must be restricted to addresses within `allowed` (a key usable from
    /// anywhere is refused).
    #[must_use]
    pub fn allowed_ips(mut self, allowed: AllowedIps) -> Self {
        self.allowed_ips = Some(allowed);
        self
    }

    /// Whether a key created with `options` at `now` stays within the ceiling.
    fn admits(&self, options: &KeyOptions, now: SystemTime) -> bool {
        let lifetime =
            self.lifetime
                .is_none_or(|lifetime| match (options.expires_at, options.expires_in) {
                    (Some(at), _) => now.checked_add(lifetime).is_some_and(|latest| at <= latest),
                    (None, Some(after)) => after <= lifetime,
                    (None, None) => false,
                });
        lifetime
            && within_ceiling(&self.scopes, &options.scopes, Scopes::is_within)
            && within_ceiling(&self.rate_limit, &options.rate_limit, RateLimit::is_within)
            && within_ceiling(&self.quota, &options.quota, Quota::is_within)
            && within_ceiling(
                &self.allowed_ips,
                &options.allowed_ips,
                AllowedIps::is_within,
            )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::QuotaPeriod;

    fn limit(requests: u32, per_seconds: u32) -> RateLimit {
        RateLimit::new(requests, per_seconds).expect("valid")
    }

    #[test]
    fn a_rate_limit_is_no_looser_with_no_larger_burst_and_no_faster_rate() {
        let held = limit(100, 60);
        assert!(limit(100, 60).is_within(&held));
        assert!(limit(100, 61).is_within(&held));
        assert!(limit(1, 1).is_within(&held));
        assert!(!limit(101, 3600).is_within(&held), "a larger burst");
        assert!(!limit(2, 1).is_within(&held), "a faster rate");
        // The largest values don't overflow.
        let max = limit(RateLimit::MAX_REQUESTS, RateLimit::MAX_PER_SECONDS);
        assert!(max.is_within(&max));
    }

    #[test]
    fn a_key_without_its_own_limit_is_held_to_the_default() {
        let key = key_with(None, None);
        let raise = PolicyUpdate::new().rate_limit(Some(limit(1_000_000, 1)));
        assert!(narrows(&key, &raise, None), "no default: unlimited");
        assert!(!narrows(&key, &raise, Some(limit(10, 1))));
        let lower = PolicyUpdate::new().rate_limit(Some(limit(5, 1)));
        assert!(narrows(&key, &lower, Some(limit(10, 1))));
        let back = PolicyUpdate::new().rate_limit(None);
        assert!(
            narrows(&key, &back, Some(limit(10, 1))),
            "already the default"
        );
    }

    fn key_with(quota: Option<Quota>, allowed: Option<AllowedIps>) -> KeyInfo {
        let record = crate::store::KeyRecord {
            quota,
            allowed_ips: allowed,
            ..crate::store::KeyRecord::new(
                crate::store::KeyId::random(),
                "acme".parse().expect("account"),
                "abcd1234".parse().expect("prefix"),
                crate::key::Pepper::from_bytes([7; 32])
                    .digest(&crate::key::ApiKey::generate().expect("randomness")),
                SystemTime::UNIX_EPOCH,
            )
        };
        KeyInfo::from_record(record, SystemTime::UNIX_EPOCH)
    }

    fn quota(requests: u32, period: QuotaPeriod) -> Quota {
        Quota::new(requests, period).expect("valid")
    }

    fn ips(entries: &[&str]) -> AllowedIps {
        AllowedIps::new(entries).expect("valid")
    }

    #[test]
    fn a_quota_narrows_when_added_or_lowered_in_the_same_period() {
        let free = key_with(None, None);
        let day = PolicyUpdate::new().quota(Some(quota(1000, QuotaPeriod::Day)));
        assert!(narrows(&free, &day, None), "added");
        assert!(narrows(&free, &PolicyUpdate::new().quota(None), None));
        let capped = key_with(Some(quota(1000, QuotaPeriod::Day)), None);
        assert!(narrows(&capped, &day, None), "unchanged");
        let lower = PolicyUpdate::new().quota(Some(quota(10, QuotaPeriod::Day)));
        assert!(narrows(&capped, &lower, None));
        let higher = PolicyUpdate::new().quota(Some(quota(1001, QuotaPeriod::Day)));
        assert!(!narrows(&capped, &higher, None));
        let month = PolicyUpdate::new().quota(Some(quota(10, QuotaPeriod::Month)));
        assert!(!narrows(&capped, &month, None), "another period");
        assert!(!narrows(&capped, &PolicyUpdate::new().quota(None), None));
    }

    #[test]
    fn an_allowlist_narrows_when_added_or_only_taking_addresses_away() {
        let anywhere = key_with(None, None);
        let one = PolicyUpdate::new().allowed_ips(Some(ips(&["198.51.100.7"])));
        assert!(narrows(&anywhere, &one, None), "added");
        assert!(narrows(
            &anywhere,
            &PolicyUpdate::new().allowed_ips(None),
            None
        ));
        let office = key_with(None, Some(ips(&["203.0.113.0/24", "198.51.100.7"])));
        let fewer = PolicyUpdate::new().allowed_ips(Some(ips(&["203.0.113.128/25"])));
        assert!(narrows(&office, &fewer, None));
        assert!(narrows(&office, &one, None));
        let more = PolicyUpdate::new().allowed_ips(Some(ips(&["203.0.113.0/24", "192.0.2.1"])));
        assert!(!narrows(&office, &more, None));
        let wider = PolicyUpdate::new().allowed_ips(Some(ips(&["203.0.112.0/23"])));
        assert!(!narrows(&office, &wider, None));
        assert!(!narrows(
            &office,
            &PolicyUpdate::new().allowed_ips(None),
            None
        ));
    }

    #[test]
    fn metadata_is_the_operators_alone() {
        let (parts, ()) = http::Request::new(()).into_parts();
        let account: crate::store::AccountId = "acme".parse().expect("account");
        let tenant = AdminCaller::Tenant(account.clone());
        let metadata = crate::policy::Metadata::from_json(r#"{"plan":"pro"}"#).expect("valid");
        let key = key_with(None, None);
        let rules = SelfService::new();
        let create = KeyOptions::new().metadata(metadata.clone());
        let set = PolicyUpdate::new().metadata(Some(metadata));
        let clear = PolicyUpdate::new().metadata(None);
        let operations = [
            AdminOperation::Create(&create),
            AdminOperation::Update {
                key: &key,
                update: &set,
            },
            AdminOperation::Update {
                key: &key,
                update: &clear,
            },
        ];
        for operation in operations {
            let as_tenant = AdminAttempt::new(&parts, &tenant, &account, operation);
            assert_eq!(
                rules.authorize(&as_tenant),
                Err(AdminDenied::NotAllowed),
                "{operation:?}"
            );
            let as_operator =
                AdminAttempt::new(&parts, &AdminCaller::Operator, &account, operation);
            assert_eq!(rules.authorize(&as_operator), Ok(()), "{operation:?}");
        }
    }

    #[test]
    fn a_ceiling_bounds_quotas_and_addresses() {
        let now = SystemTime::UNIX_EPOCH;
        let day = |n| Quota::new(n, QuotaPeriod::Day).expect("valid");
        let blocks = |list: &[&str]| AllowedIps::new(list).expect("valid");
        let ceiling = KeyCeiling::new()
            .quota(day(1000))
            .allowed_ips(blocks(&["10.0.0.0/8"]));
        let within = KeyOptions::new()
            .quota(day(10))
            .allowed_ips(blocks(&["10.1.2.3"]));
        assert!(ceiling.admits(&within, now));
        for (outside, why) in [
            (within.clone().quota(day(1001)), "more requests"),
            (
                within
                    .clone()
                    .quota(Quota::new(10, QuotaPeriod::Month).expect("valid")),
                "another period",
            ),
            (
                within.clone().allowed_ips(blocks(&["192.0.2.1"])),
                "elsewhere",
            ),
            (
                KeyOptions::new().allowed_ips(blocks(&["10.1.2.3"])),
                "no quota",
            ),
            (KeyOptions::new().quota(day(10)), "any address"),
        ] {
            assert!(!ceiling.admits(&outside, now), "{why}");
        }
    }

    #[test]
    fn a_ceiling_needs_what_it_bounds() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let day = Duration::from_secs(86_400);
        let ceiling = KeyCeiling::new().lifetime(day);
        assert!(!ceiling.admits(&KeyOptions::new(), now), "no expiry");
        assert!(ceiling.admits(&KeyOptions::new().expires_at(now + day), now));
        assert!(!ceiling.admits(&KeyOptions::new().expires_at(now + day * 2), now));
        let within = KeyOptions::new().expires_in(day).expect("valid");
        assert!(ceiling.admits(&within, now));
        assert!(KeyCeiling::new().admits(&KeyOptions::new(), now));
    }
}
