//! What a key may do, how often, for how long and from where: its [`KeyName`], its
//! [`Scopes`], its [`RateLimit`], its [`Quota`], its [`AllowedIps`], its [`Metadata`], its
//! expiry, and the grace period of a rotation.
//!
//! A key created with no options is what every key was before these existed: no name,
//! unrestricted (no scopes), never expires. [`KeyOptions`] sets them at creation,
//! [`PolicyUpdate`] changes them later, and [`RotateOptions`] keeps the old key string working
//! for a while after a rotation.
//!
//! ```
//! use std::time::Duration;
//! use tower_api_key::policy::{KeyOptions, Scopes};
//!
//! let options = KeyOptions::new()
//!     .name("CI".parse()?)
//!     .scopes(Scopes::new(["read", "deploy:staging"])?)
//!     .expires_in(Duration::from_secs(90 * 24 * 3600))?;
//! # let _ = options;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod address;
mod metadata;
mod quota;

pub use address::{AllowedIps, Cidr};
pub use metadata::Metadata;
pub(crate) use quota::civil_from_days;
pub use quota::{Period, Quota, QuotaPeriod};

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

// ===== KeyName =====

/// A key's label, such as `"CI"` or `"production"`: 1 to 64 characters, none of them a
/// control character. Not secret; shown in listings.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyName(Arc<str>);

impl KeyName {
    /// Longest accepted name, in characters.
    pub const MAX_CHARS: usize = 64;

    /// Checks and wraps a name.
    ///
    /// # Errors
    ///
    /// [`PolicyError::InvalidName`] if `name` is empty, longer than 64 characters, or holds a
    /// control character.
    pub fn new(name: &str) -> Result<Self, PolicyError> {
        let chars = name.chars().count();
        if (1..=Self::MAX_CHARS).contains(&chars) && !name.chars().any(char::is_control) {
            Ok(Self(Arc::from(name)))
        } else {
            Err(PolicyError::InvalidName)
        }
    }

    /// The name as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for KeyName {
    type Err = PolicyError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl fmt::Display for KeyName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for KeyName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

// ===== Scopes =====

/// The set of scopes a restricted key holds: at most 16, each matching
/// `^[a-z0-9][a-z0-9:._-]{0,63}$`. Kept sorted and without duplicates.
///
/// A key without `Scopes` (`None`) is unrestricted. A key with scopes passes only those
/// scoped routes (behind [`RequireScopeLayer`](crate::RequireScopeLayer)) whose required
/// scope it lists; an empty set passes no scoped route at all. Routes without
/// `RequireScopeLayer` accept every valid key, whatever its scopes.
///
/// ```
/// use tower_api_key::policy::Scopes;
///
/// let scopes = Scopes::new(["write", "read", "read"])?;
/// assert!(scopes.contains("read"));
/// assert_eq!(scopes.iter().collect::<Vec<_>>(), ["read", "write"]);
/// assert!(Scopes::new(["Read"]).is_err());
/// # Ok::<(), tower_api_key::policy::PolicyError>(())
/// ```
#[derive(Clone, PartialEq, Eq, Hash, Default)]
pub struct Scopes(Arc<[Box<str>]>);

impl Scopes {
    /// Most scopes one key may hold.
    pub const MAX_SCOPES: usize = 16;
    /// Longest accepted scope, in bytes.
    pub const MAX_SCOPE_LEN: usize = 64;

    /// Checks and collects scopes; duplicates count once.
    ///
    /// # Errors
    ///
    /// [`PolicyError::InvalidScope`] naming the first scope that doesn't match the pattern,
    /// or [`PolicyError::TooManyScopes`] for more than 16 distinct scopes.
    pub fn new<I, S>(scopes: I) -> Result<Self, PolicyError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut set = BTreeSet::new();
        for scope in scopes {
            let scope = scope.as_ref();
            if !is_scope(scope) {
                return Err(PolicyError::InvalidScope(truncated(scope)));
            }
            if !set.contains(scope) {
                set.insert(Box::<str>::from(scope));
            }
            if set.len() > Self::MAX_SCOPES {
                return Err(PolicyError::TooManyScopes);
            }
        }
        Ok(Self(set.into_iter().collect()))
    }

    /// Whether `scope` is in the set.
    pub fn contains(&self, scope: &str) -> bool {
        self.0.binary_search_by(|held| (**held).cmp(scope)).is_ok()
    }

    /// The scopes, in order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = &str> + '_ {
        self.0.iter().map(|scope| &**scope)
    }

    /// How many scopes the set holds.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the set is empty (a key that passes no scoped route).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether every scope of `self` is in `other`: restricting a key from `other` to
    /// `self` only takes routes away.
    pub fn is_within(&self, other: &Scopes) -> bool {
        self.iter().all(|scope| other.contains(scope))
    }
}

impl fmt::Debug for Scopes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.iter()).finish()
    }
}

/// `^[a-z0-9][a-z0-9:._-]{0,63}$`, without a regex engine.
fn is_scope(scope: &str) -> bool {
    let bytes = scope.as_bytes();
    let tail = |b: &u8| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b':' | b'.' | b'_' | b'-');
    match bytes.split_first() {
        Some((first, rest)) => {
            bytes.len() <= Scopes::MAX_SCOPE_LEN
                && matches!(first, b'a'..=b'z' | b'0'..=b'9')
                && rest.iter().all(tail)
        }
        None => false,
    }
}

/// At most 80 characters of a refused input, for an error message.
fn truncated(text: &str) -> String {
    text.chars().take(80).collect()
}

// ===== RateLimit =====

/// How many requests a key may make in any window of `per_seconds` seconds: at most
/// `requests` in every such window, in bursts of up to `requests` (a sliding limit, not a
/// fixed window that resets on the clock).
///
/// ```
/// use tower_api_key::policy::RateLimit;
///
/// let limit = RateLimit::new(5, 2)?; // 5 requests in any 2 seconds
/// assert_eq!(limit.requests(), 5);
/// assert!(RateLimit::new(0, 2).is_err());
/// # Ok::<(), tower_api_key::policy::PolicyError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RateLimit {
    requests: u32,
    per_seconds: u32,
}

impl RateLimit {
    /// Most requests a limit may allow per window.
    pub const MAX_REQUESTS: u32 = 1_000_000;
    /// Longest window, in seconds (one day).
    pub const MAX_PER_SECONDS: u32 = 86_400;

    /// `requests` (1 to 1,000,000) in any `per_seconds` (1 to 86,400).
    ///
    /// # Errors
    ///
    /// [`PolicyError::RateLimitOutOfRange`] outside those ranges.
    pub fn new(requests: u32, per_seconds: u32) -> Result<Self, PolicyError> {
        if (1..=Self::MAX_REQUESTS).contains(&requests)
            && (1..=Self::MAX_PER_SECONDS).contains(&per_seconds)
        {
            Ok(Self {
                requests,
                per_seconds,
            })
        } else {
            Err(PolicyError::RateLimitOutOfRange)
        }
    }

    /// Requests allowed in any window.
    pub fn requests(&self) -> u32 {
        self.requests
    }

    /// The window's length in seconds.
    pub fn per_seconds(&self) -> u32 {
        self.per_seconds
    }

    /// The window's length.
    pub fn window(&self) -> Duration {
        Duration::from_secs(u64::from(self.per_seconds))
    }

    /// Whether `self` allows no larger a burst and no faster a sustained rate than `other`.
    pub fn is_within(&self, other: &RateLimit) -> bool {
        let burst = self.requests <= other.requests;
        // self.requests / self.per_seconds <= other.requests / other.per_seconds, without
        // division.
        let rate = u64::from(self.requests) * u64::from(other.per_seconds)
            <= u64::from(other.requests) * u64::from(self.per_seconds);
        burst && rate
    }
}

// ===== limits =====

/// Longest expiry [`KeyOptions::expires_in`] accepts: 315,360,000 s (ten 365-day years).
pub const MAX_EXPIRES_IN: Duration = Duration::from_secs(315_360_000);

/// Longest grace period a rotation may give the old key: 7 days.
pub const MAX_GRACE: Duration = Duration::from_secs(7 * 24 * 3600);

/// `after` if it is a valid relative expiry (1 s to [`MAX_EXPIRES_IN`]). The one place the
/// rule is written: the builder checks it, and so does the manager for options whose fields
/// were set directly.
pub(crate) fn check_expires_in(after: Duration) -> Result<Duration, PolicyError> {
    if after < Duration::from_secs(1) || after > MAX_EXPIRES_IN {
        return Err(PolicyError::ExpiryOutOfRange);
    }
    Ok(after)
}

/// `grace` if it is a valid grace period (at most [`MAX_GRACE`]); see [`check_expires_in`].
pub(crate) fn check_grace(grace: Duration) -> Result<Duration, PolicyError> {
    if grace > MAX_GRACE {
        return Err(PolicyError::GraceOutOfRange);
    }
    Ok(grace)
}

// ===== times =====

/// The earliest instant the API takes, in seconds since the Unix epoch:
/// 1970-01-01T00:00:00Z (the epoch itself).
pub const EARLIEST_TIME_SECS: u64 = 0;

/// The latest instant the API takes, in seconds since the Unix epoch:
/// 9999-12-31T23:59:59Z (the last second with a four-digit year).
pub const LATEST_TIME_SECS: u64 = 253_402_300_799;

/// `at` if it lies between [`EARLIEST_TIME_SECS`] and [`LATEST_TIME_SECS`], both included
/// (an instant within the last second's fraction, after 9999-12-31T23:59:59Z, is outside).
/// The one place the rule is written: the manager checks every time it is given, and so does
/// the admin API.
pub(crate) fn check_time(at: SystemTime) -> Result<SystemTime, PolicyError> {
    let earliest = UNIX_EPOCH + Duration::from_secs(EARLIEST_TIME_SECS);
    let latest = UNIX_EPOCH + Duration::from_secs(LATEST_TIME_SECS);
    if (earliest..=latest).contains(&at) {
        Ok(at)
    } else {
        Err(PolicyError::TimeOutOfRange)
    }
}

// ===== KeyOptions =====

/// How a new key is set up, for [`KeyManager::create_with`](crate::KeyManager::create_with).
/// The default is a key with no name, no scopes and no expiry.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct KeyOptions {
    /// The key's label.
    pub name: Option<KeyName>,
    /// The scopes it is restricted to; `None` is unrestricted.
    pub scopes: Option<Scopes>,
    /// The instant it stops authenticating: in the future when the key is created, and
    /// between 1970-01-01T00:00:00Z and 9999-12-31T23:59:59Z ([`EARLIEST_TIME_SECS`],
    /// [`LATEST_TIME_SECS`]); [`KeyManager::create_with`](crate::KeyManager::create_with)
    /// refuses any other with [`PolicyError::TimeOutOfRange`] or [`PolicyError::ExpiryInPast`].
    pub expires_at: Option<SystemTime>,
    /// How long after its creation it stops authenticating (used when `expires_at` is
    /// `None`): the expiry is then exactly `created_at + expires_in`.
    pub expires_in: Option<Duration>,
    /// How often it may be used; `None` leaves it to the layer's default, if any.
    pub rate_limit: Option<RateLimit>,
    /// How many requests it may have accepted per calendar day or month; `None` is no cap.
    pub quota: Option<Quota>,
    /// The addresses it may be used from; `None` is anywhere.
    pub allowed_ips: Option<AllowedIps>,
    /// Facts handed to handlers with the key's identity.
    pub metadata: Option<Metadata>,
}

impl KeyOptions {
    /// No name, no scopes, no expiry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Labels the key.
    #[must_use]
    pub fn name(mut self, name: KeyName) -> Self {
        self.name = Some(name);
        self
    }

    /// Restricts the key to `scopes`.
    #[must_use]
    pub fn scopes(mut self, scopes: Scopes) -> Self {
        self.scopes = Some(scopes);
        self
    }

    /// Limits how often the key may be used.
    #[must_use]
    pub fn rate_limit(mut self, limit: RateLimit) -> Self {
        self.rate_limit = Some(limit);
        self
    }

    /// Caps the key's accepted requests per calendar day or month.
    #[must_use]
    pub fn quota(mut self, quota: Quota) -> Self {
        self.quota = Some(quota);
        self
    }

    /// Restricts the addresses the key may be used from.
    #[must_use]
    pub fn allowed_ips(mut self, allowed: AllowedIps) -> Self {
        self.allowed_ips = Some(allowed);
        self
    }

    /// Stores facts with the key, handed to handlers with its identity.
    #[must_use]
    pub fn metadata(mut self, metadata: Metadata) -> Self {
        self.metadata = Some(metadata);
        self
    }

    /// Makes the key expire at `at`, which must be in the future when the key is created and
    /// no later than 9999-12-31T23:59:59Z (see [`KeyOptions::expires_at`]).
    #[must_use]
    pub fn expires_at(mut self, at: SystemTime) -> Self {
        self.expires_at = Some(at);
        self.expires_in = None;
        self
    }

    /// Makes the key expire `after` its creation (exactly `created_at + after`): 1 s to
    /// [`MAX_EXPIRES_IN`].
    ///
    /// # Errors
    ///
    /// [`PolicyError::ExpiryOutOfRange`] outside that range.
    pub fn expires_in(mut self, after: Duration) -> Result<Self, PolicyError> {
        self.expires_in = Some(check_expires_in(after)?);
        self.expires_at = None;
        Ok(self)
    }
}

// ===== PolicyUpdate =====

/// Changes to a key's name, scopes, expiry, rate limit, quota, allowlist and metadata, for
/// [`KeyManager::update`](crate::KeyManager::update). Each field left `None` is kept;
/// `Some(None)` clears it. Takes effect at once, like a revoke: narrowing scopes or bringing
/// the expiry forward is a security action.
///
/// ```
/// use tower_api_key::policy::{PolicyUpdate, Scopes};
///
/// // Make the key read-only and never expiring; keep its name.
/// let update = PolicyUpdate::new()
///     .scopes(Some(Scopes::new(["read"])?))
///     .expires_at(None);
/// # let _ = update;
/// # Ok::<(), tower_api_key::policy::PolicyError>(())
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PolicyUpdate {
    /// The new name, `Some(None)` to clear it.
    pub name: Option<Option<KeyName>>,
    /// The new scopes, `Some(None)` to make the key unrestricted.
    pub scopes: Option<Option<Scopes>>,
    /// The new expiry, `Some(None)` to make the key never expire. An instant in the past
    /// expires the key at once; clearing or extending the expiry revives an expired key. The
    /// instant must lie between 1970-01-01T00:00:00Z and 9999-12-31T23:59:59Z
    /// ([`EARLIEST_TIME_SECS`], [`LATEST_TIME_SECS`]);
    /// [`KeyManager::update`](crate::KeyManager::update) refuses any other with
    /// [`PolicyError::TimeOutOfRange`] and changes nothing.
    pub expires_at: Option<Option<SystemTime>>,
    /// The new rate limit, `Some(None)` to remove the key's own limit.
    pub rate_limit: Option<Option<RateLimit>>,
    /// The new quota, `Some(None)` to remove it. Counted requests are kept: raising the
    /// quota lets a key that was over it through again at once.
    pub quota: Option<Option<Quota>>,
    /// The new allowlist, `Some(None)` to allow every address.
    pub allowed_ips: Option<Option<AllowedIps>>,
    /// The new metadata (replacing the old as a whole), `Some(None)` to remove it.
    pub metadata: Option<Option<Metadata>>,
}

impl PolicyUpdate {
    /// Changes nothing.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets (`Some`) or clears (`None`) the name.
    #[must_use]
    pub fn name(mut self, name: Option<KeyName>) -> Self {
        self.name = Some(name);
        self
    }

    /// Sets (`Some`) or clears (`None`, unrestricted) the scopes.
    #[must_use]
    pub fn scopes(mut self, scopes: Option<Scopes>) -> Self {
        self.scopes = Some(scopes);
        self
    }

    /// Sets (`Some`) or clears (`None`) the expiry; see [`PolicyUpdate::expires_at`] for the
    /// instants accepted.
    #[must_use]
    pub fn expires_at(mut self, at: Option<SystemTime>) -> Self {
        self.expires_at = Some(at);
        self
    }

    /// Sets (`Some`) or removes (`None`) the key's own rate limit.
    #[must_use]
    pub fn rate_limit(mut self, limit: Option<RateLimit>) -> Self {
        self.rate_limit = Some(limit);
        self
    }

    /// Sets (`Some`) or removes (`None`) the key's quota.
    #[must_use]
    pub fn quota(mut self, quota: Option<Quota>) -> Self {
        self.quota = Some(quota);
        self
    }

    /// Sets (`Some`) or clears (`None`: any address) the key's allowlist.
    #[must_use]
    pub fn allowed_ips(mut self, allowed: Option<AllowedIps>) -> Self {
        self.allowed_ips = Some(allowed);
        self
    }

    /// Replaces (`Some`) or removes (`None`) the key's metadata.
    #[must_use]
    pub fn metadata(mut self, metadata: Option<Metadata>) -> Self {
        self.metadata = Some(metadata);
        self
    }

    /// Whether the update changes nothing.
    pub fn is_empty(&self) -> bool {
        self.name.is_none()
            && self.scopes.is_none()
            && self.expires_at.is_none()
            && self.rate_limit.is_none()
            && self.quota.is_none()
            && self.allowed_ips.is_none()
            && self.metadata.is_none()
    }
}

// ===== RotateOptions =====

/// How a rotation treats the old key string, for
/// [`KeyManager::rotate_with`](crate::KeyManager::rotate_with).
///
/// With no grace (the default) the old key is refused the moment the rotation returns. With
/// a grace period the old key keeps working, with the key's scopes and expiry, until
/// `now + grace`, so clients can switch over without a same-second deploy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RotateOptions {
    /// How long the old key string stays valid (at most [`MAX_GRACE`]).
    pub grace: Duration,
}

impl RotateOptions {
    /// No grace: the old key is refused at once.
    pub fn new() -> Self {
        Self::default()
    }

    /// Keeps the old key valid for `grace`, at most [`MAX_GRACE`].
    ///
    /// # Errors
    ///
    /// [`PolicyError::GraceOutOfRange`] above 7 days.
    pub fn grace(mut self, grace: Duration) -> Result<Self, PolicyError> {
        self.grace = check_grace(grace)?;
        Ok(self)
    }
}

// ===== PolicyError =====

/// A name, scope, rate limit, quota, address, metadata, expiry or grace period that the rules
/// refuse. The messages quote at most the offending scope or address, never a key.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum PolicyError {
    /// A name is empty, longer than 64 characters, or holds a control character.
    InvalidName,
    /// A scope doesn't match `^[a-z0-9][a-z0-9:._-]{0,63}$`.
    InvalidScope(String),
    /// More than 16 distinct scopes.
    TooManyScopes,
    /// An expiry given as a duration is not within 1 s and 315,360,000 s.
    ExpiryOutOfRange,
    /// A new key's expiry is not in the future.
    ExpiryInPast,
    /// An `expires_at` is not between 1970-01-01T00:00:00Z and 9999-12-31T23:59:59Z
    /// ([`EARLIEST_TIME_SECS`], [`LATEST_TIME_SECS`]).
    TimeOutOfRange,
    /// A grace period is longer than 7 days.
    GraceOutOfRange,
    /// A rate limit is not 1 to 1,000,000 requests per 1 to 86,400 seconds.
    RateLimitOutOfRange,
    /// A quota is not 1 to 1,000,000,000 requests per `day` or `month`.
    QuotaOutOfRange,
    /// An allowlist entry is not an IPv4 or IPv6 address or CIDR block.
    InvalidAddress(String),
    /// More than 32 distinct blocks in an allowlist.
    TooManyAddresses,
    /// An allowlist without any block (clear it to allow every address).
    NoAddresses,
    /// Metadata that is not a JSON object.
    InvalidMetadata,
    /// Metadata over 4 KiB serialized.
    MetadataTooLarge,
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::InvalidName => {
                f.write_str("name must be 1 to 64 characters without control characters")
            }
            Self::InvalidScope(scope) => write!(
                f,
                "scope {scope:?} must match ^[a-z0-9][a-z0-9:._-]{{0,63}}$"
            ),
            Self::TooManyScopes => write!(f, "at most {} scopes", Scopes::MAX_SCOPES),
            Self::ExpiryOutOfRange => write!(
                f,
                "expiry must be 1 to {} seconds away",
                MAX_EXPIRES_IN.as_secs()
            ),
            Self::ExpiryInPast => f.write_str("expiry must be in the future"),
            Self::TimeOutOfRange => f.write_str(
                "expires_at must lie between 1970-01-01T00:00:00Z and 9999-12-31T23:59:59Z",
            ),
            Self::RateLimitOutOfRange => write!(
                f,
                "rate limit must be 1 to {} requests per 1 to {} seconds",
                RateLimit::MAX_REQUESTS,
                RateLimit::MAX_PER_SECONDS
            ),
            Self::QuotaOutOfRange => write!(
                f,
                "quota must be 1 to {} requests per day or month",
                Quota::MAX_REQUESTS
            ),
            Self::InvalidAddress(entry) => write!(
                f,
                "allowed address {entry:?} must be an IPv4 or IPv6 address or CIDR block"
            ),
            Self::TooManyAddresses => {
                write!(f, "at most {} allowed addresses", AllowedIps::MAX_ENTRIES)
            }
            Self::NoAddresses => {
                f.write_str("allowed addresses must hold at least one; clear them instead")
            }
            Self::InvalidMetadata => f.write_str("metadata must be a JSON object"),
            Self::MetadataTooLarge => write!(
                f,
                "metadata must be at most {} bytes of JSON",
                Metadata::MAX_BYTES
            ),
            Self::GraceOutOfRange => {
                write!(
                    f,
                    "grace period must be at most {} seconds",
                    MAX_GRACE.as_secs()
                )
            }
        }
    }
}

impl std::error::Error for PolicyError {}

// ===== Scoped =====

/// What scopes an account type holds, for [`RequireScopeLayer`](crate::RequireScopeLayer).
///
/// Implemented for [`KeyIdentity`](crate::KeyIdentity); implement it for your own
/// [`Resolver::Account`](crate::Resolver::Account) to put scoped routes behind your own
/// accounts.
///
/// ```
/// use tower_api_key::policy::Scoped;
///
/// struct Customer {
///     read_only: bool,
/// }
///
/// impl Scoped for Customer {
///     fn has_scope(&self, scope: &str) -> bool {
///         !self.read_only || scope == "read"
///     }
/// }
/// # assert!(Customer { read_only: true }.has_scope("read"));
/// ```
pub trait Scoped {
    /// Whether this account may use a route that requires `scope`.
    fn has_scope(&self, scope: &str) -> bool;
}

impl Scoped for Option<Scopes> {
    fn has_scope(&self, scope: &str) -> bool {
        self.as_ref().is_none_or(|scopes| scopes.contains(scope))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_one_to_sixty_four_characters_without_controls() {
        assert!(KeyName::new("CI").is_ok());
        assert!(KeyName::new(&"é".repeat(64)).is_ok());
        for bad in ["", "a\nb", "tab\there", "\u{7f}", &"x".repeat(65)] {
            assert_eq!(KeyName::new(bad), Err(PolicyError::InvalidName), "{bad:?}");
        }
    }

    #[test]
    fn scopes_follow_the_pattern_and_the_count() {
        for good in ["read", "0", "deploy:staging", "a.b_c-d", &"a".repeat(64)] {
            assert!(is_scope(good), "{good:?}");
        }
        for bad in ["", "Read", ":read", "-x", "a b", "é", &"a".repeat(65)] {
            assert!(!is_scope(bad), "{bad:?}");
        }
        let sixteen: Vec<String> = (0..16).map(|i| format!("s{i}")).collect();
        assert_eq!(Scopes::new(&sixteen).map(|s| s.len()), Ok(16));
        let mut seventeen = sixteen.clone();
        seventeen.push("s16".into());
        assert_eq!(Scopes::new(&seventeen), Err(PolicyError::TooManyScopes));
        // Duplicates count once.
        let twice: Vec<&str> = sixteen.iter().chain(&sixteen).map(String::as_str).collect();
        assert_eq!(Scopes::new(twice).map(|s| s.len()), Ok(16));
    }

    #[test]
    fn unrestricted_holds_every_scope_and_empty_holds_none() {
        assert!(None::<Scopes>.has_scope("write"));
        assert!(!Some(Scopes::default()).has_scope("write"));
        let read = Scopes::new(["read"]).expect("valid");
        assert!(Some(read.clone()).has_scope("read"));
        assert!(!Some(read).has_scope("write"));
    }

    #[test]
    fn limits_are_checked_at_the_edges() {
        assert!(KeyOptions::new().expires_in(Duration::from_secs(1)).is_ok());
        assert!(KeyOptions::new().expires_in(MAX_EXPIRES_IN).is_ok());
        assert_eq!(
            KeyOptions::new().expires_in(Duration::from_millis(999)),
            Err(PolicyError::ExpiryOutOfRange)
        );
        assert_eq!(
            KeyOptions::new().expires_in(MAX_EXPIRES_IN + Duration::from_secs(1)),
            Err(PolicyError::ExpiryOutOfRange)
        );
        assert!(RotateOptions::new().grace(MAX_GRACE).is_ok());
        assert_eq!(
            RotateOptions::new().grace(MAX_GRACE + Duration::from_secs(1)),
            Err(PolicyError::GraceOutOfRange)
        );
    }

    #[test]
    fn times_lie_between_1970_and_9999() {
        let at = |secs: u64| UNIX_EPOCH + Duration::from_secs(secs);
        for good in [
            UNIX_EPOCH,
            at(1),
            at(1_700_000_000),
            at(LATEST_TIME_SECS),
            at(LATEST_TIME_SECS - 1) + Duration::from_micros(999_999),
        ] {
            assert_eq!(check_time(good), Ok(good), "{good:?}");
        }
        for bad in [
            UNIX_EPOCH - Duration::from_nanos(1),
            UNIX_EPOCH - Duration::from_secs(86_400),
            at(LATEST_TIME_SECS) + Duration::from_nanos(1),
            at(LATEST_TIME_SECS + 1),
            at(u64::from(u32::MAX) * 100),
        ] {
            assert_eq!(check_time(bad), Err(PolicyError::TimeOutOfRange), "{bad:?}");
        }
    }

    #[test]
    fn the_bounds_are_the_first_and_last_second_of_years_1970_and_9999() {
        let leap = |year: u64| (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
        let days: u64 = (1970..10_000)
            .map(|year| if leap(year) { 366 } else { 365 })
            .sum();
        assert_eq!(EARLIEST_TIME_SECS, 0);
        // The last second before 10000-01-01T00:00:00Z.
        assert_eq!(LATEST_TIME_SECS + 1, days * 86_400);
    }

    #[test]
    fn an_out_of_range_time_names_the_field_and_the_bounds() {
        assert_eq!(
            PolicyError::TimeOutOfRange.to_string(),
            "expires_at must lie between 1970-01-01T00:00:00Z and 9999-12-31T23:59:59Z"
        );
    }

    #[test]
    fn error_messages_quote_at_most_a_truncated_scope() {
        let long = "X".repeat(500);
        let text = Scopes::new([long.as_str()]).unwrap_err().to_string();
        assert!(text.len() < 200, "{text}");
    }
}
