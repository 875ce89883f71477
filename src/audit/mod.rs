//! The audit trail: who changed which key, when, and what they set, kept by the store.
//!
//! Every change a [`KeyManager`](crate::KeyManager) makes (create, update, rotate, revoke,
//! reactivate, delete) hands the store an [`AuditNote`] (when, who, what), and the store
//! writes the resulting [`AuditEntry`] in the same atomic step as the change itself: in the
//! same transaction for the SQL stores, under the same lock for [`MemoryStore`]. A change
//! that doesn't happen (no such key, a taken prefix retried) leaves no entry; a change that
//! happens can't go unrecorded.
//!
//! Attempts that are refused are recorded too, marked [`AuditOutcome::Refused`]: a create
//! refused at the account's limit of keys (by the manager) and anything the admin router's
//! authorizer refuses (a tenant widening a key, say).
//!
//! An entry names the key by id and prefix, never by its secret or digest; `changes` holds
//! the policy fields a create or update set (see [`AuditChanges`]).
//!
//! Who acted is an [`Actor`]: the name the admin router's authorizer gives its caller
//! (`operator`, `tenant:acme`), or whatever a host names in
//! [`KeyManager::acting_as`](crate::KeyManager::acting_as); [`Actor::system`] otherwise.
//!
//! ```
//! use std::sync::Arc;
//! use tower_api_key::audit::{Actor, AuditAction, AuditOutcome, AuditQuery};
//! use tower_api_key::{KeyManager, MemoryStore, Pepper};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let manager = KeyManager::new(Arc::new(MemoryStore::new()), Pepper::random()?);
//! let acme = "acme".parse()?;
//! let alice = manager.acting_as(Actor::new("alice@example.com")?);
//! let key = alice.create(&acme).await?;
//! alice.revoke(&acme, key.info.id).await?;
//!
//! let trail = manager.audit_trail(&acme, AuditQuery::latest(50)).await?;
//! let actions: Vec<_> = trail.iter().map(|event| event.entry.action).collect();
//! assert_eq!(actions, [AuditAction::Revoke, AuditAction::Create]); // newest first
//! assert_eq!(trail[0].entry.actor.as_str(), "alice@example.com");
//! assert_eq!(trail[0].entry.outcome, AuditOutcome::Done);
//! # Ok(())
//! # }
//! ```
//!
//! [`MemoryStore`]: crate::MemoryStore

mod changes;

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

pub use changes::AuditChanges;

use crate::ids::{AccountId, KeyId};
use crate::key::KeyPrefix;

/// How long entries are kept unless configured: 400 days.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(400 * 24 * 3600);

/// The most entries one read returns.
pub const MAX_PAGE: usize = 500;

// ===== Actor =====

/// Who made a change: a short name, 1 to 128 characters, none of them a control character.
/// It is written to the trail as given, so it must name a person or role, never carry a
/// credential.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Actor(Arc<str>);

/// The longest [`Actor`] name, in characters.
pub const MAX_ACTOR_CHARS: usize = 128;

impl Actor {
    /// The actor named `name`.
    ///
    /// # Errors
    ///
    /// [`InvalidActor`] if `name` is empty, longer than [`MAX_ACTOR_CHARS`] characters, or
    /// holds a control character.
    pub fn new(name: &str) -> Result<Self, InvalidActor> {
        let chars = name.chars().count();
        if chars == 0 || chars > MAX_ACTOR_CHARS || name.chars().any(char::is_control) {
            return Err(InvalidActor);
        }
        Ok(Self(name.into()))
    }

    /// `operator`: the admin router's name for its operator.
    pub fn operator() -> Self {
        Self("operator".into())
    }

    /// `tenant:ACCOUNT`: the admin router's name for a user of `account`.
    pub fn tenant(account: &AccountId) -> Self {
        Self(format!("tenant:{account}").into())
    }

    /// `system`: changes made through a [`KeyManager`](crate::KeyManager) that was not told
    /// who acts.
    pub fn system() -> Self {
        Self("system".into())
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Actor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for Actor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for Actor {
    type Err = InvalidActor;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

/// Why [`Actor::new`] refused a name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct InvalidActor;

impl fmt::Display for InvalidActor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "an actor is 1 to {MAX_ACTOR_CHARS} characters without control characters"
        )
    }
}

impl std::error::Error for InvalidActor {}

// ===== AuditAction, AuditOutcome =====

/// What was done (or attempted) to a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(
    feature = "admin",
    derive(utoipa::ToSchema),
    schema(rename_all = "lowercase")
)]
#[non_exhaustive]
pub enum AuditAction {
    /// A key was created.
    Create,
    /// A key's policy changed.
    Update,
    /// A key got a new prefix and secret.
    Rotate,
    /// A key was made inactive.
    Revoke,
    /// A key was made active again.
    Reactivate,
    /// A key was deleted.
    Delete,
}

impl AuditAction {
    /// Every action, in the order above.
    pub const ALL: [Self; 6] = [
        Self::Create,
        Self::Update,
        Self::Rotate,
        Self::Revoke,
        Self::Reactivate,
        Self::Delete,
    ];

    /// `create`, `update`, `rotate`, `revoke`, `reactivate` or `delete`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Create => "create",
            Self::Update => "update",
            Self::Rotate => "rotate",
            Self::Revoke => "revoke",
            Self::Reactivate => "reactivate",
            Self::Delete => "delete",
        }
    }
}

impl fmt::Display for AuditAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for AuditAction {
    type Err = UnknownName;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|action| action.as_str() == s)
            .ok_or(UnknownName)
    }
}

/// Whether an attempt was carried out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(
    feature = "admin",
    derive(utoipa::ToSchema),
    schema(rename_all = "lowercase")
)]
#[non_exhaustive]
pub enum AuditOutcome {
    /// The change was made.
    Done,
    /// The change was refused (the caller may not make it, or the account holds its limit
    /// of keys); nothing changed.
    Refused,
}

impl AuditOutcome {
    /// `done` or `refused`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Done => "done",
            Self::Refused => "refused",
        }
    }
}

impl fmt::Display for AuditOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for AuditOutcome {
    type Err = UnknownName;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "done" => Ok(Self::Done),
            "refused" => Ok(Self::Refused),
            _ => Err(UnknownName),
        }
    }
}

/// An action or outcome name that isn't one (a store holding a value this version doesn't
/// know).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct UnknownName;

impl fmt::Display for UnknownName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("unknown audit action or outcome")
    }
}

impl std::error::Error for UnknownName {}

// ===== AuditNote, AuditEntry, AuditEvent =====

/// What the manager tells the store about a change it asks for: when, who, what. The store
/// turns it into an [`AuditEntry`] with [`done`](Self::done), for the record it changed, and
/// writes that in the same atomic step as the change.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct AuditNote {
    /// When the change was asked for.
    pub at: SystemTime,
    /// Who asked.
    pub actor: Actor,
    /// What was asked.
    pub action: AuditAction,
    /// The policy fields set (create and update), or the grace period (rotate).
    pub changes: AuditChanges,
}

impl AuditNote {
    /// A note of `action` by `actor` at `at`.
    pub fn new(at: SystemTime, actor: Actor, action: AuditAction, changes: AuditChanges) -> Self {
        Self {
            at,
            actor,
            action,
            changes,
        }
    }

    /// A note of `action` by `actor`, made now, setting nothing: for callers of a
    /// [`KeyStore`](crate::KeyStore) other than the manager (a migration, a test).
    pub fn now(actor: Actor, action: AuditAction) -> Self {
        Self::new(crate::clock::now(), actor, action, AuditChanges::none())
    }

    /// The entry of this change, made to `account`'s key `key_id`, whose prefix is `prefix`
    /// after the change (a rotation's new one; a deleted key's last one). A store calls it
    /// through [`KeyRecord::audit_entry`](crate::KeyRecord::audit_entry) with the record it
    /// changed.
    pub fn done(&self, account: &AccountId, key_id: KeyId, prefix: KeyPrefix) -> AuditEntry {
        AuditEntry {
            at: self.at,
            account: account.clone(),
            key_id: Some(key_id),
            prefix: Some(prefix),
            action: self.action,
            actor: self.actor.clone(),
            outcome: AuditOutcome::Done,
            changes: self.changes.clone(),
        }
    }

    /// The entry of this change refused: `account`'s key `key` (its id and prefix; `None`
    /// for a create, or a key that isn't the account's) left as it was. See
    /// [`AuditEntry::refused`].
    pub fn refused(&self, account: &AccountId, key: Option<(KeyId, KeyPrefix)>) -> AuditEntry {
        AuditEntry::refused(
            self.at,
            account.clone(),
            key,
            self.action,
            self.actor.clone(),
            self.changes.clone(),
        )
    }
}

/// One line of the trail, as written.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct AuditEntry {
    /// When.
    pub at: SystemTime,
    /// Whose key.
    pub account: AccountId,
    /// The key's id; `None` for a create that was refused (no key was made).
    pub key_id: Option<KeyId>,
    /// The key's prefix after the change (a rotation's new one, a deleted key's last one);
    /// `None` where `key_id` is.
    pub prefix: Option<KeyPrefix>,
    /// What was done or attempted.
    pub action: AuditAction,
    /// Who.
    pub actor: Actor,
    /// Whether it was done.
    pub outcome: AuditOutcome,
    /// The policy fields set, or asked for if refused.
    pub changes: AuditChanges,
}

impl AuditEntry {
    /// A refused attempt of `actor` at `action` on `account`'s key `key` (`None`: no key, as
    /// for a create, or one that isn't the account's), with the `changes` asked for (any
    /// metadata by size only: [`AuditChanges::refused`]).
    pub fn refused(
        at: SystemTime,
        account: AccountId,
        key: Option<(KeyId, KeyPrefix)>,
        action: AuditAction,
        actor: Actor,
        changes: AuditChanges,
    ) -> Self {
        Self {
            at,
            account,
            key_id: key.map(|(id, _)| id),
            prefix: key.map(|(_, prefix)| prefix),
            action,
            actor,
            outcome: AuditOutcome::Refused,
            changes: changes.refused(),
        }
    }
}

/// The number a store gave an entry: later entries of one store have larger numbers, so
/// it orders the trail and pages through it ([`AuditQuery::before`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AuditId(u64);

impl AuditId {
    /// The entry numbered `n` (stores number from 1).
    pub const fn new(n: u64) -> Self {
        Self(n)
    }

    /// The number.
    pub const fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for AuditId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

/// An entry as read back from the store, with its number.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct AuditEvent {
    /// Its number in the store.
    pub id: AuditId,
    /// What was recorded.
    pub entry: AuditEntry,
}

impl AuditEvent {
    /// The entry `entry`, numbered `id` (for stores reading their rows back).
    pub fn new(id: AuditId, entry: AuditEntry) -> Self {
        Self { id, entry }
    }
}

// ===== AuditQuery =====

/// Which page of an account's trail to read: at most `limit` entries, newest first, those
/// numbered below `before` if given, none recorded before `since`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct AuditQuery {
    /// How many entries at most (the manager caps it at [`MAX_PAGE`]).
    pub limit: usize,
    /// Only entries numbered below this one: the last entry of the previous page.
    pub before: Option<AuditId>,
    /// Only entries recorded at or after this instant (the manager sets it from the
    /// retention, so entries past it are never shown even before they are pruned).
    pub since: SystemTime,
}

impl AuditQuery {
    /// The newest `limit` entries.
    pub fn latest(limit: usize) -> Self {
        Self {
            limit,
            before: None,
            since: SystemTime::UNIX_EPOCH,
        }
    }

    /// The `limit` entries before (older than) entry `before`.
    pub fn before(limit: usize, before: AuditId) -> Self {
        Self {
            before: Some(before),
            ..Self::latest(limit)
        }
    }

    /// The same page, without entries recorded before `since`.
    #[must_use]
    pub fn since(mut self, since: SystemTime) -> Self {
        self.since = since;
        self
    }

    /// Whether `event` belongs on this page, ignoring `limit` (for stores that filter in
    /// memory).
    pub fn admits(&self, event: &AuditEvent) -> bool {
        self.before.is_none_or(|before| event.id < before) && event.entry.at >= self.since
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actors_are_short_printable_names() {
        assert_eq!(Actor::new("operator").expect("name").as_str(), "operator");
        assert_eq!(
            Actor::tenant(&"acme".parse().expect("account")).as_str(),
            "tenant:acme"
        );
        assert!(Actor::new("").is_err());
        assert!(Actor::new("a\nb").is_err());
        assert!(Actor::new(&"é".repeat(MAX_ACTOR_CHARS)).is_ok());
        assert!(Actor::new(&"a".repeat(MAX_ACTOR_CHARS + 1)).is_err());
    }

    #[test]
    fn action_and_outcome_names_read_back() {
        for action in AuditAction::ALL {
            assert_eq!(action.as_str().parse::<AuditAction>(), Ok(action));
        }
        for outcome in [AuditOutcome::Done, AuditOutcome::Refused] {
            assert_eq!(outcome.as_str().parse::<AuditOutcome>(), Ok(outcome));
        }
        assert!("created".parse::<AuditAction>().is_err());
        assert!("".parse::<AuditOutcome>().is_err());
    }
}
