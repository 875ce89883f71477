//! The PostgreSQL change feed: `LISTEN tower_api_keys` on a dedicated connection.

use std::fmt;

use async_trait::async_trait;
use sqlx::Executor as _;
use sqlx::postgres::{PgConnectOptions, PgListener, PgPoolOptions};

use super::{CHANNEL, PostgresStore};
use crate::feed::{self, ChangeFeed, FeedConfig, FeedError, FeedTask};
use crate::invalidation::{Invalidation, InvalidationBus};
use crate::key::KeyDigest;

/// Hears every key change committed to a [`PostgresStore`]'s database, by any process, and
/// reports it as a [`ChangeFeed`]; [`spawn`](Self::spawn) it into the bus your layer listens
/// to (usually the [`KeyManager`](crate::KeyManager)'s).
///
/// It `LISTEN`s on its own connection (outside the store's pool), named in
/// `pg_stat_activity` as [`new`](Self::new) says. The table's trigger
/// sends the hex digests of the changed keys, so only those keys are dropped from caches; a
/// notification it can't read drops everything. Every second (by default) a `SELECT 1` on
/// the listening connection proves it alive. When the connection drops, caches stop trusting
/// their entries (every request is resolved from the store) until `LISTEN` is in place again
/// on a new connection, and are then cleared once more to cover what was missed; see
/// [`feed`](crate::feed) for the whole protocol.
///
/// Notifications are database-wide: processes sharing a database but using different
/// schemas also hear each other's changes, which only costs a few needless invalidations.
pub struct PgChangeFeed {
    options: PgConnectOptions,
    config: FeedConfig,
    listener: Option<PgListener>,
}

impl PgChangeFeed {
    /// The `application_name` of the listening connection, unless changed with
    /// [`application_name`](Self::application_name).
    pub const APPLICATION_NAME: &'static str = "tower-api-key change feed";

    /// A feed over the database of `store`, connecting with its pool's options. The
    /// listening connection is named `"{application_name} change feed"` if the pool's
    /// options name one, [`APPLICATION_NAME`](Self::APPLICATION_NAME) otherwise.
    pub fn new(store: &PostgresStore) -> Self {
        let options = (*store.pool().connect_options()).clone();
        let name = match options.get_application_name() {
            Some(application) => format!("{application} change feed"),
            None => Self::APPLICATION_NAME.to_owned(),
        };
        let options = options.application_name(&name);
        Self {
            options,
            config: FeedConfig::default(),
            listener: None,
        }
    }

    /// Names the listening connection `name` in `pg_stat_activity`.
    #[must_use]
    pub fn application_name(mut self, name: &str) -> Self {
        self.options = self.options.application_name(name);
        self
    }

    /// Heartbeat, timeout and backoff settings for [`spawn`](Self::spawn).
    #[must_use]
    pub fn config(mut self, config: FeedConfig) -> Self {
        self.config = config;
        self
    }

    /// Runs the feed in the background, publishing into `bus`; see [`feed::spawn`]. Caches
    /// on `bus` fail closed from this call until the first `LISTEN` is in place.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime.
    pub fn spawn(self, bus: &InvalidationBus) -> FeedTask {
        let config = self.config.clone();
        feed::spawn(self, bus, config)
    }
}

impl fmt::Debug for PgChangeFeed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgChangeFeed")
            .field("application_name", &self.options.get_application_name())
            .field("config", &self.config)
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
        listener.listen(CHANNEL).await.map_err(FeedError::new)?;
        self.listener = Some(listener);
        Ok(())
    }

    async fn recv(&mut self) -> Result<Vec<Invalidation>, FeedError> {
        let listener = self
            .listener
            .as_mut()
            .ok_or_else(|| FeedError::new("not subscribed"))?;
        // `try_recv` is cancel-safe while its connection is alive: it returns buffered
        // notifications first and only reads whole messages.
        match listener.try_recv().await {
            Ok(Some(notification)) => {
                let mut changes = changes_of(notification.payload());
                while let Some(notification) = listener.next_buffered() {
                    changes.extend(changes_of(notification.payload()));
                }
                Ok(changes)
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

    async fn ping(&mut self) -> Result<(), FeedError> {
        let listener = self
            .listener
            .as_mut()
            .ok_or_else(|| FeedError::new("not subscribed"))?;
        // Notifications arriving meanwhile are buffered for the next `recv`.
        listener
            .execute("SELECT 1")
            .await
            .map(drop)
            .map_err(FeedError::new)
    }
}

/// The invalidations a notification asks for: the keys whose hex digests it lists
/// (space-separated), or everything for `*` or anything unreadable.
fn changes_of(payload: &str) -> Vec<Invalidation> {
    let mut changes = Vec::new();
    for token in payload.split_ascii_whitespace() {
        match parse_hex_digest(token) {
            Some(digest) => changes.push(Invalidation::Key(digest)),
            None => {
                if token != "*" {
                    tracing::warn!(
                        len = token.len(),
                        "change feed: unreadable notification; invalidating everything"
                    );
                }
                return vec![Invalidation::All];
            }
        }
    }
    if changes.is_empty() {
        changes.push(Invalidation::All);
    }
    changes
}

fn parse_hex_digest(text: &str) -> Option<KeyDigest> {
    let text = text.as_bytes();
    if text.len() != 64 {
        return None;
    }
    let mut bytes = [0u8; 32];
    for (byte, pair) in bytes.iter_mut().zip(text.chunks_exact(2)) {
        let high = char::from(pair[0]).to_digit(16)?;
        let low = char::from(pair[1]).to_digit(16)?;
        *byte = u8::try_from(high * 16 + low).ok()?;
    }
    Some(KeyDigest::from_bytes(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_name_digests_or_everything() {
        let a = KeyDigest::from_bytes([0xab; 32]);
        let b = KeyDigest::from_bytes([0x01; 32]);
        let hex = |byte: &str| byte.repeat(32);
        assert_eq!(changes_of(&hex("ab")), [Invalidation::Key(a)]);
        assert_eq!(
            changes_of(&format!("{} {}", hex("AB"), hex("01"))),
            [Invalidation::Key(a), Invalidation::Key(b)]
        );
        for everything in ["*", "", "nonsense", &hex("zz"), &format!("{} x", hex("ab"))] {
            assert_eq!(
                changes_of(everything),
                [Invalidation::All],
                "{everything:?}"
            );
        }
    }
}
