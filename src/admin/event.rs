//! [`AdminEvent`]: what the admin router tells its hook after each change.

use std::fmt;

use crate::key::KeyPrefix;
use crate::store::{AccountId, KeyId};

/// A key change made through the admin router, for
/// [`AdminRouter::on_event`](super::AdminRouter::on_event): an audit trail, a webhook, a
/// metric. It names the key by id and prefix, never by its secret.
///
/// The change itself is already logged once by [`KeyManager`](crate::KeyManager) (a
/// `tracing` event at `info`); the router adds no log line of its own.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct AdminEvent {
    /// What happened.
    pub action: AdminAction,
    /// The account whose key changed.
    pub account: AccountId,
    /// The key's id.
    pub key_id: KeyId,
    /// The key's prefix after the change (for a rotation, the new one; for a deletion, the
    /// one it had).
    pub prefix: KeyPrefix,
}

/// The kind of an [`AdminEvent`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum AdminAction {
    /// A key was created.
    Created,
    /// A key got a new secret (and prefix).
    Rotated,
    /// A key was made inactive.
    Revoked,
    /// A key was made active again.
    Reactivated,
    /// A key's name, scopes or expiry changed.
    Updated,
    /// A key was deleted.
    Deleted,
}

impl AdminAction {
    /// `"created"`, `"rotated"`, `"revoked"`, `"reactivated"`, `"updated"` or `"deleted"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Created => "created",
            Self::Rotated => "rotated",
            Self::Revoked => "revoked",
            Self::Reactivated => "reactivated",
            Self::Updated => "updated",
            Self::Deleted => "deleted",
        }
    }
}

impl fmt::Display for AdminAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
