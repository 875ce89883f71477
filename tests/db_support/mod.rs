//! Databases for the store tests: a fresh PostgreSQL schema per test (from `DATABASE_URL`),
//! a fresh SQLite file per test. Both are cleaned up by a later run once the process that
//! made them is gone, so parallel test binaries never touch each other's data.
#![allow(dead_code, unreachable_pub)]

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

static NEXT: AtomicUsize = AtomicUsize::new(0);

/// A name no other test of any process uses: `{kind}_{pid}_{n}`.
fn unique(kind: &str) -> String {
    format!(
        "{kind}_{}_{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Whether the process that made a `{kind}_{pid}_{n}` name is gone (Linux: no `/proc/{pid}`;
/// elsewhere nothing is ever taken for gone).
fn maker_is_gone(name: &str, kind: &str) -> bool {
    let Some(pid) = name
        .strip_prefix(kind)
        .and_then(|rest| rest.strip_prefix('_'))
        .and_then(|rest| rest.split('_').next())
        .and_then(|pid| pid.parse::<u32>().ok())
    else {
        return false;
    };
    cfg!(target_os = "linux")
        && pid != std::process::id()
        && !PathBuf::from(format!("/proc/{pid}")).exists()
}

// ===== SQLite =====

#[cfg(feature = "sqlite")]
pub mod sqlite {
    use super::*;
    use tower_api_key::store::SqliteStore;

    const KIND: &str = "tak_sqlite";

    fn dir() -> PathBuf {
        std::env::temp_dir().join("tower-api-key-tests")
    }

    /// A new database file's URL (not yet created), after clearing files of finished runs.
    pub fn fresh_url() -> String {
        let dir = dir();
        std::fs::create_dir_all(&dir).expect("create the test database directory");
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if maker_is_gone(&name, KIND) {
                    let _ = std::fs::remove_file(entry.path());
                }
            }
        }
        let path = dir.join(format!("{}.db", unique(KIND)));
        format!("sqlite://{}", path.display())
    }

    /// A migrated store on a new file.
    pub async fn store() -> SqliteStore {
        store_at(&fresh_url()).await
    }

    pub async fn store_at(url: &str) -> SqliteStore {
        let store = SqliteStore::connect(url).await.expect("open sqlite");
        store.migrate().await.expect("migrate sqlite");
        store
    }
}

// ===== PostgreSQL =====

#[cfg(feature = "postgres")]
pub mod postgres {
    use std::str::FromStr;
    use std::time::Duration;

    use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
    use tokio::sync::OnceCell;

    use super::*;
    use tower_api_key::store::PostgresStore;

    const KIND: &str = "tak_test";

    /// `DATABASE_URL`, or `None` after saying that the test is skipped and why.
    pub fn database_url() -> Option<String> {
        match std::env::var("DATABASE_URL") {
            Ok(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
                Some(url)
            }
            Ok(url) if !url.is_empty() => {
                eprintln!(
                    "skipped: DATABASE_URL is not a postgres:// URL (PostgreSQL tests need one)"
                );
                let _ = url;
                None
            }
            _ => {
                eprintln!(
                    "skipped: DATABASE_URL not set (PostgreSQL tests need a server; \
                     `bash .ci/run` provides one)"
                );
                None
            }
        }
    }

    /// A schema of its own for one test, in the database of `DATABASE_URL`.
    #[derive(Debug, Clone)]
    pub struct Schema {
        pub url: String,
        pub name: String,
    }

    impl Schema {
        /// Creates a fresh schema, after dropping those of finished test runs; `None` (with
        /// the reason printed) without `DATABASE_URL`.
        pub async fn create() -> Option<Self> {
            let url = database_url()?;
            let admin = admin_pool(&url).await;
            static CLEANED: OnceCell<()> = OnceCell::const_new();
            CLEANED
                .get_or_init(|| async {
                    let names: Vec<String> = sqlx::query_scalar(
                        "SELECT nspname::text FROM pg_namespace WHERE nspname LIKE 'tak\\_test\\_%'",
                    )
                    .fetch_all(&admin)
                    .await
                    .expect("list test schemas");
                    for name in names.iter().filter(|name| maker_is_gone(name, KIND)) {
                        let _ = sqlx::raw_sql(&format!("DROP SCHEMA IF EXISTS {name} CASCADE"))
                            .execute(&admin)
                            .await;
                    }
                })
                .await;
            let name = unique(KIND);
            sqlx::raw_sql(&format!("CREATE SCHEMA {name}"))
                .execute(&admin)
                .await
                .expect("create the test schema");
            admin.close().await;
            Some(Self { url, name })
        }

        /// Connection options whose `search_path` is this schema.
        pub fn options(&self) -> PgConnectOptions {
            PgConnectOptions::from_str(&self.url)
                .expect("DATABASE_URL parses")
                .options([("search_path", self.name.as_str())])
        }

        /// `DATABASE_URL` with this schema as `search_path`, for another process.
        pub fn url_with_search_path(&self) -> String {
            let separator = if self.url.contains('?') { '&' } else { '?' };
            format!(
                "{}{separator}options=-c%20search_path%3D{}",
                self.url, self.name
            )
        }

        /// A small pool on this schema.
        pub fn pool(&self) -> PgPool {
            PgPoolOptions::new()
                .max_connections(5)
                .acquire_timeout(Duration::from_secs(10))
                .connect_lazy_with(self.options())
        }

        /// A migrated store with a pool of its own on this schema (call it twice for two
        /// "processes").
        pub async fn store(&self) -> PostgresStore {
            let store = PostgresStore::from_pool(self.pool());
            store.migrate().await.expect("migrate postgres");
            store
        }
    }

    async fn admin_pool(url: &str) -> PgPool {
        PgPoolOptions::new()
            .max_connections(1)
            .connect(url)
            .await
            .expect("connect to DATABASE_URL")
    }

    /// A migrated store on a fresh schema, or `None` without `DATABASE_URL`.
    pub async fn store() -> Option<PostgresStore> {
        Some(Schema::create().await?.store().await)
    }
}
