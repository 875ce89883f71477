//! The PostgreSQL change feed: `LISTEN tower_api_keys` (everyone's changes) and a heartbeat
//! channel of its own, on a dedicated connection.

use std::fmt;

use async_trait::async_trait;
use sqlx::postgres::{PgConnectOptions, PgListener, PgPoolOptions};

use super::{CHANNEL, PostgresStore};
use crate::feed::{self, ChangeFeed, FeedError, FeedMessage};
use crate::invalidation::Invalidation;
use crate::key::KeyDigest;

/// How a heartbeat's payload starts. This release sends `heartbeat:2:<nonce, 16 hex digits>`;
/// releases before it sent `heartbeat:<nonce in hex>` on [`CHANNEL`].
const HEARTBEAT: &str = "heartbeat:";

/// The version of the heartbeat payload this release sends.
const HEARTBEAT_VERSION: &str = "2";

/// How a subscription's own heartbeat channel is named; 16 random hex digits follow.
const HEARTBEAT_CHANNEL: &str = "tower_api_keys_hb_";

/// Hears every key change committed to a [`PostgresStore`]'s database, by any process, and
/// reports it as a [`ChangeFeed`]; run it with [`feed::spawn`](crate::feed::spawn) into the bus your layer listens
/// to (usually the [`KeyManager`](crate::KeyManager)'s).
///
/// It `LISTEN`s on its own connection (outside the store's pool), named in
/// `pg_stat_activity` as [`new`](Self::new) says. The table's trigger
/// sends the hex digests of the changed keys, so only those keys are dropped from caches; a
/// notification it can't read drops everything. Every second (by default) it sends a random
/// nonce with `pg_notify` and waits for it to come back, which proves that the subscription
/// still delivers, not only that the connection answers. When the
/// connection drops or a nonce does not come back in time, caches stop trusting their entries
/// (every request is resolved from the store) until `LISTEN` is in place again on a new
/// connection, and are then cleared once more to cover what was missed; see
/// [`feed`](crate::feed) for the whole protocol.
///
/// **The listening connection must be a session of its own.** `LISTEN` belongs to a server
/// session: behind PgBouncer in transaction (or statement) pooling mode, or a proxy that
/// multiplexes sessions such as RDS Proxy, it is silently lost when the session moves. The
/// heartbeat notices that and fails closed, but the feed can then never stay subscribed.
/// Point it at the database directly, or at a pooler in session mode, with
/// [`with_options`](Self::with_options) when the store's pool goes through a transaction
/// pooler.
///
/// # Heartbeats
///
/// Each subscription also `LISTEN`s, on the same connection, on a channel of its own,
/// `tower_api_keys_hb_<16 random hex digits>`, and sends its heartbeats there as
/// `heartbeat:2:<nonce in hex>`: no other process hears them, so N processes cost N
/// notifications per heartbeat interval, not N². The proof still holds: PostgreSQL appends the
/// notifications of every channel to one queue at commit, in commit order, and each session
/// reads that queue in order, so a nonce comes back only after every change committed before
/// it, whichever channel carried it ("messages from different transactions are delivered in
/// the order in which the transactions committed", in `NOTIFY`'s documentation). Before
/// PostgreSQL 19 the server still wakes every listening session of the database for each
/// notification (it does not track who listens to what); a session with nothing to deliver
/// sends nothing, so neither the network nor the clients pay for it.
///
/// **Upgrading from a release that heartbeats on the shared channel** needs no migration and
/// works in any order. Older processes keep sending `heartbeat:<nonce>` on `tower_api_keys`;
/// this release reads those as other processes' heartbeats and ignores them (counted in
/// [`FeedStatus::foreign_heartbeats`](crate::feed::FeedStatus::foreign_heartbeats)). Its own
/// heartbeats travel on a channel older processes never listen to, so they can't mistake them
/// for an unreadable change. The payload carries its version: a heartbeat of a version this
/// release doesn't know is ignored, not taken for a change, so a later format can't make it
/// drop its caches either.
///
/// Notifications are database-wide: processes sharing a database but using different
/// schemas also hear each other's changes, which only costs a few needless invalidations.
pub struct PgChangeFeed {
    options: PgConnectOptions,
    listener: Option<PgListener>,
    /// The current subscription's heartbeat channel.
    heartbeat_channel: String,
}

impl PgChangeFeed {
    /// The `application_name` of the listening connection, unless changed with
    /// [`application_name`](Self::application_name).
    pub const APPLICATION_NAME: &'static str = "tower-api-key change feed";

    /// A feed over the database of `store`, connecting with its pool's options. The
    /// listening connection is named `"{application_name} change feed"` if the pool's
    /// options name one, [`APPLICATION_NAME`](Self::APPLICATION_NAME) otherwise.
    pub fn new(store: &PostgresStore) -> Self {
        Self::with_options((*store.pool().connect_options()).clone())
    }

    /// A feed connecting with `options` instead of the store's: for a store whose pool goes
    /// through a transaction-mode pooler, give the database's direct address here. The
    /// listening connection is named as with [`new`](Self::new).
    ///
    /// ```no_run
    /// use tower_api_key::PgChangeFeed;
    ///
    /// # fn main() -> Result<(), sqlx::Error> {
    /// let direct = "postgres://app@db.internal:5432/keys?sslmode=require".parse()?;
    /// let feed = PgChangeFeed::with_options(direct);
    /// # let _ = feed;
    /// # Ok(())
    /// # }
    /// ```
    pub fn with_options(options: PgConnectOptions) -> Self {
        let name = match options.get_application_name() {
            Some(application) => format!("{application} change feed"),
            None => Self::APPLICATION_NAME.to_owned(),
        };
        let options = options.application_name(&name);
        Self {
            options,
            listener: None,
            heartbeat_channel: String::new(),
        }
    }

    /// Names the listening connection `name` in `pg_stat_activity`.
    #[must_use]
    pub fn application_name(mut self, name: &str) -> Self {
        self.options = self.options.application_name(name);
        self
    }
}

impl fmt::Debug for PgChangeFeed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgChangeFeed")
            .field("application_name", &self.options.get_application_name())
            .field("subscribed", &self.listener.is_some())
            .finish()
    }
}

#[async_trait]
impl ChangeFeed for PgChangeFeed {
    async fn subscribe(&mut self) -> Result<(), FeedError> {
        self.listener = None;
        // A pool of its own for each subscription: a connection of an earlier one that hangs
        // while closing can't hold up this one.
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .min_connections(0)
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_lazy_with(self.options.clone());
        let mut listener = PgListener::connect_with(&pool)
            .await
            .map_err(FeedError::new)?;
        // A lost connection must surface as an error here, never be replaced silently.
        listener.eager_reconnect(false);
        listener.ignore_pool_close_event(true);
        // A new heartbeat channel for each subscription: only this connection listens to it.
        let heartbeat_channel = format!("{HEARTBEAT_CHANNEL}{:016x}", feed::nonce());
        listener
            .listen_all([CHANNEL, heartbeat_channel.as_str()])
            .await
            .map_err(FeedError::new)?;
        self.heartbeat_channel = heartbeat_channel;
        self.listener = Some(listener);
        Ok(())
    }

    async fn recv(&mut self) -> Result<Vec<FeedMessage>, FeedError> {
        let listener = self
            .listener
            .as_mut()
            .ok_or_else(|| FeedError::new("not subscribed"))?;
        // `try_recv` is cancel-safe while its connection is alive: it returns buffered
        // notifications first and only reads whole messages.
        match listener.try_recv().await {
            Ok(Some(notification)) => {
                let mut messages = messages_of(notification.payload());
                while let Some(notification) = listener.next_buffered() {
                    messages.extend(messages_of(notification.payload()));
                }
                Ok(messages)
            }
            Ok(None) => {
                self.listener = None;
                Err(FeedError::new("the listening connection was closed"))
            }
            Err(err) => {
                self.listener = None;
                Err(FeedError::new(err))
            }
        }
    }

    async fn send_heartbeat(&mut self, nonce: u64) -> Result<(), FeedError> {
        let listener = self
            .listener
            .as_mut()
            .ok_or_else(|| FeedError::new("not subscribed"))?;
        // Sent on the listening connection itself, which also proves that connection alive;
        // notifications arriving meanwhile are buffered for the next `recv`. On this
        // subscription's own channel: delivered in commit order with the changes, to no one
        // else.
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(&self.heartbeat_channel)
            .bind(format!("{HEARTBEAT}{HEARTBEAT_VERSION}:{nonce:016x}"))
            .execute(listener)
            .await
            .map(drop)
            .map_err(FeedError::new)
    }
}

/// What a notification says: a heartbeat, or the keys whose hex digests it lists
/// (space-separated), or everything for `*` or anything unreadable. A heartbeat is
/// `heartbeat:<version>:<rest>` (this release sends version 2 and ignores any other), or
/// `heartbeat:<nonce in hex>` from an earlier release.
fn messages_of(payload: &str) -> Vec<FeedMessage> {
    if let Some(heartbeat) = payload.strip_prefix(HEARTBEAT) {
        match heartbeat.split_once(':') {
            Some((HEARTBEAT_VERSION, nonce)) => {
                if let Some(nonce) = nonce_of(nonce) {
                    return vec![FeedMessage::Heartbeat(nonce)];
                }
            }
            Some((version, _))
                if !version.is_empty() && version.bytes().all(|b| b.is_ascii_digit()) =>
            {
                // Another release's heartbeat: never a change, so nothing to forget.
                tracing::debug!(version, "change feed: heartbeat of another version ignored");
                return Vec::new();
            }
            Some(_) => {}
            None => {
                if let Ok(nonce) = u64::from_str_radix(heartbeat, 16) {
                    return vec![FeedMessage::Heartbeat(nonce)];
                }
            }
        }
    }
    let mut changes = Vec::new();
    for token in payload.split_ascii_whitespace() {
        match blake3::Hash::from_hex(token) {
            Ok(hash) => changes.push(Invalidation::Key(KeyDigest::from_bytes(*hash.as_bytes()))),
            Err(_) => {
                if token != "*" {
                    tracing::warn!(
                        len = token.len(),
                        "change feed: unreadable notification; invalidating everything"
                    );
                }
                changes = vec![Invalidation::All];
                break;
            }
        }
    }
    if changes.is_empty() {
        changes.push(Invalidation::All);
    }
    changes.into_iter().map(FeedMessage::Changed).collect()
}

/// A heartbeat nonce as this release writes it: 16 hex digits.
fn nonce_of(hex: &str) -> Option<u64> {
    if hex.len() == 16 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        u64::from_str_radix(hex, 16).ok()
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn changes_of(payload: &str) -> Vec<FeedMessage> {
        messages_of(payload)
    }

    fn key(digest: KeyDigest) -> FeedMessage {
        FeedMessage::Changed(Invalidation::Key(digest))
    }

    #[test]
    fn payloads_name_digests_or_everything() {
        let a = KeyDigest::from_bytes([0xab; 32]);
        let b = KeyDigest::from_bytes([0x01; 32]);
        let hex = |byte: &str| byte.repeat(32);
        assert_eq!(changes_of(&hex("ab")), [key(a)]);
        assert_eq!(
            changes_of(&format!("{} {}", hex("AB"), hex("01"))),
            [key(a), key(b)]
        );
        // A rotation with a grace period names up to four: old and new, current and previous.
        let (c, d) = (
            KeyDigest::from_bytes([0xcd; 32]),
            KeyDigest::from_bytes([0x02; 32]),
        );
        assert_eq!(
            changes_of(&[hex("ab"), hex("01"), hex("cd"), hex("02")].join(" ")),
            [key(a), key(b), key(c), key(d)]
        );
        for everything in [
            "*",
            "",
            "nonsense",
            &hex("zz"),
            &format!("{} x", hex("ab")),
            "heartbeat:not-hex",
            "heartbeat:2:not-hex",
            "heartbeat:2:ff",
            "heartbeat::00000000000000ff",
            "heartbeat:v3:00000000000000ff",
        ] {
            assert_eq!(
                changes_of(everything),
                [FeedMessage::Changed(Invalidation::All)],
                "{everything:?}"
            );
        }
    }

    #[test]
    fn heartbeat_payloads_carry_their_nonce() {
        // This release's, then an earlier release's as heard on the shared channel during a
        // rolling upgrade.
        for version in ["2:", ""] {
            for nonce in [255, u64::MAX] {
                assert_eq!(
                    changes_of(&format!("heartbeat:{version}{nonce:016x}")),
                    [FeedMessage::Heartbeat(nonce)]
                );
            }
        }
    }

    #[test]
    fn heartbeats_of_other_versions_are_ignored_not_taken_for_changes() {
        for payload in [
            "heartbeat:3:00000000000000ff",
            "heartbeat:10:anything at all",
            "heartbeat:1:",
        ] {
            assert_eq!(changes_of(payload), [], "{payload:?}");
        }
    }
}
