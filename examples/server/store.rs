//! The key store the configuration names, and the change feed that hears other processes.

use std::sync::Arc;
#[cfg(feature = "postgres")]
use std::time::Duration;

use tower_api_key::{KeyManager, KeyStore, MemoryStore};

use crate::config::Database;

/// The store the configuration names, migrated, and what it needs to hear other processes.
pub(crate) struct OpenedStore {
    pub(crate) store: Arc<dyn KeyStore>,
    #[cfg(feature = "postgres")]
    postgres: Option<tower_api_key::PostgresStore>,
}

/// Opens the store and applies its migrations; a database that can't be reached or migrated
/// stops the server before it listens.
pub(crate) async fn open_store(database: &Database) -> Result<OpenedStore, String> {
    let kind = database.kind();
    let store: Arc<dyn KeyStore> = match database {
        Database::Memory => Arc::new(MemoryStore::new()),
        #[cfg(feature = "sqlite")]
        Database::Sqlite(url) => {
            let store = tower_api_key::SqliteStore::connect(url)
                .await
                .map_err(|err| format!("cannot open the SQLite database: {err}"))?;
            store
                .migrate()
                .await
                .map_err(|err| format!("cannot migrate the SQLite database: {err}"))?;
            Arc::new(store)
        }
        #[cfg(feature = "postgres")]
        Database::Postgres(url) => {
            let store = tower_api_key::PostgresStore::connect(url)
                .await
                .map_err(|err| format!("cannot connect to PostgreSQL: {err}"))?;
            store
                .migrate()
                .await
                .map_err(|err| format!("cannot migrate the PostgreSQL database: {err}"))?;
            tracing::info!(store = kind, "keys are kept in PostgreSQL");
            return Ok(OpenedStore {
                store: Arc::new(store.clone()),
                postgres: Some(store),
            });
        }
    };
    tracing::info!(store = kind, "key store ready");
    Ok(OpenedStore {
        store,
        #[cfg(feature = "postgres")]
        postgres: None,
    })
}

/// How long to wait for the change feed before serving anyway (the layer fails closed until
/// it is subscribed: every request is resolved from the store).
#[cfg(feature = "postgres")]
const FEED_STARTUP_WAIT: Duration = Duration::from_secs(5);

impl OpenedStore {
    /// With PostgreSQL, starts hearing other processes' changes on the manager's bus (which
    /// the layer listens to) and waits a moment for the subscription.
    #[cfg(feature = "postgres")]
    pub(crate) async fn start_feed(
        &self,
        manager: &KeyManager,
    ) -> Option<tower_api_key::feed::FeedTask> {
        let store = self.postgres.as_ref()?;
        let feed = tower_api_key::feed::spawn(
            tower_api_key::PgChangeFeed::new(store),
            manager.invalidation_bus(),
            tower_api_key::feed::FeedConfig::default(),
        );
        if !feed.wait_subscribed(FEED_STARTUP_WAIT).await {
            tracing::warn!(
                "not yet listening for other processes' key changes; every request is \
                 checked against the database until then"
            );
        }
        Some(feed)
    }

    #[cfg(not(feature = "postgres"))]
    pub(crate) async fn start_feed(&self, _manager: &KeyManager) -> Option<Feed> {
        None
    }
}

/// Without the `postgres` feature there is no change feed to stop.
#[cfg(not(feature = "postgres"))]
pub(crate) enum Feed {}

#[cfg(not(feature = "postgres"))]
impl Feed {
    pub(crate) async fn shutdown(self) {
        match self {}
    }

    pub(crate) fn monitor(&self) -> tower_api_key::feed::FeedMonitor {
        match *self {}
    }
}
