//! Databases for the store tests: a fresh PostgreSQL schema per test (from `DATABASE_URL`),
//! a fresh SQLite file per test. Both are cleaned up by a later run once the process that
//! made them is gone, so parallel test binaries never touch each other's data.

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
pub(crate) mod sqlite {
    use super::*;
    use tower_api_key::store::SqliteStore;

    const KIND: &str = "tak_sqlite";

    fn dir() -> PathBuf {
        std::env::temp_dir().join("tower-api-key-tests")
    }

    /// A new database file's URL (not yet created), after clearing files of finished runs.
    pub(crate) fn fresh_url() -> String {
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
    pub(crate) async fn store() -> SqliteStore {
        store_at(&fresh_url()).await
    }

    pub(crate) async fn store_at(url: &str) -> SqliteStore {
        let store = SqliteStore::connect(url).await.expect("open sqlite");
        store.migrate().await.expect("migrate sqlite");
        store
    }
}

// ===== PostgreSQL =====

#[cfg(feature = "postgres")]
pub(crate) mod postgres {
    use std::str::FromStr;
    use std::time::Duration;

    use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
    use tokio::sync::OnceCell;

    use super::*;
    use tower_api_key::store::PostgresStore;

    /// What a test makes on the server, named `{prefix}_{pid}_{n}`.
    struct Made {
        prefix: &'static str,
        /// `SCHEMA` or `DATABASE`.
        object: &'static str,
        /// Lists the names of every one made by any run.
        list: &'static str,
        /// What follows the name in `DROP`.
        drop_options: &'static str,
    }

    const SCHEMA: Made = Made {
        prefix: "tak_test",
        object: "SCHEMA",
        list: "SELECT nspname::text FROM pg_namespace WHERE nspname LIKE 'tak\\_test\\_%'",
        drop_options: "CASCADE",
    };

    const DATABASE: Made = Made {
        prefix: "tak_testdb",
        object: "DATABASE",
        list: "SELECT datname::text FROM pg_database WHERE datname LIKE 'tak\\_testdb\\_%'",
        drop_options: "WITH (FORCE)",
    };

    impl Made {
        /// Drops those made by runs whose process is gone.
        async fn drop_leftovers(&self, admin: &PgPool) {
            let names: Vec<String> = sqlx::query_scalar(self.list)
                .fetch_all(admin)
                .await
                .unwrap_or_else(|err| panic!("list test {}s: {err}", self.object));
            for name in names.iter().filter(|name| maker_is_gone(name, self.prefix)) {
                let _ = self.drop(admin, name).await;
            }
        }

        async fn drop(&self, admin: &PgPool, name: &str) -> Result<(), sqlx::Error> {
            let (object, options) = (self.object, self.drop_options);
            sqlx::raw_sql(&format!("DROP {object} IF EXISTS {name} {options}"))
                .execute(admin)
                .await
                .map(drop)
        }

        /// Makes a new one and closes `admin`; returns its name.
        async fn create(&self, admin: PgPool) -> String {
            let name = unique(self.prefix);
            sqlx::raw_sql(&format!("CREATE {} {name}", self.object))
                .execute(&admin)
                .await
                .unwrap_or_else(|err| panic!("create the test {}: {err}", self.object));
            admin.close().await;
            name
        }
    }

    /// `DATABASE_URL`, or `None` after saying that the test is skipped and why.
    pub(crate) fn database_url() -> Option<String> {
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
                // CI provides a database: there, a missing one is a failure, not a skip.
                assert!(
                    std::env::var_os("REQUIRE_DATABASE_URL").is_none(),
                    "DATABASE_URL is not set but REQUIRE_DATABASE_URL is"
                );
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
    pub(crate) struct Schema {
        pub(crate) url: String,
        pub(crate) name: String,
    }

    impl Schema {
        /// Creates a fresh schema, after dropping those of finished test runs; `None` (with
        /// the reason printed) without `DATABASE_URL`.
        pub(crate) async fn create() -> Option<Self> {
            let url = database_url()?;
            let admin = admin_pool(&url).await;
            static CLEANED: OnceCell<()> = OnceCell::const_new();
            CLEANED.get_or_init(|| SCHEMA.drop_leftovers(&admin)).await;
            let name = SCHEMA.create(admin).await;
            Some(Self { url, name })
        }

        /// Connection options whose `search_path` is this schema.
        pub(crate) fn options(&self) -> PgConnectOptions {
            PgConnectOptions::from_str(&self.url)
                .expect("DATABASE_URL parses")
                .options([("search_path", self.name.as_str())])
        }

        /// `DATABASE_URL` with this schema as `search_path`, for another process.
        pub(crate) fn url_with_search_path(&self) -> String {
            let separator = if self.url.contains('?') { '&' } else { '?' };
            format!(
                "{}{separator}options=-c%20search_path%3D{}",
                self.url, self.name
            )
        }

        /// A small pool on this schema.
        pub(crate) fn pool(&self) -> PgPool {
            PgPoolOptions::new()
                .max_connections(5)
                .acquire_timeout(Duration::from_secs(10))
                .connect_lazy_with(self.options())
        }

        /// A migrated store with a pool of its own on this schema (call it twice for two
        /// "processes").
        pub(crate) async fn store(&self) -> PostgresStore {
            let store = PostgresStore::from_pool(self.pool());
            store.migrate().await.expect("migrate postgres");
            store
        }
    }

    /// A database of its own for one test, where no other test (of any process, any
    /// release) sends notifications: `NOTIFY` is database-wide, so a test that counts what a
    /// channel delivers needs one. Dropped by [`drop`](Self::drop), or by a later run once
    /// the process that made it is gone.
    #[derive(Debug)]
    pub(crate) struct Database {
        url: String,
        pub(crate) name: String,
    }

    impl Database {
        /// Creates a fresh, empty database (`DATABASE_URL`'s role needs `CREATEDB`), after
        /// dropping those of finished test runs; `None` (with the reason printed) without
        /// `DATABASE_URL`.
        pub(crate) async fn create() -> Option<Self> {
            let url = database_url()?;
            let admin = admin_pool(&url).await;
            DATABASE.drop_leftovers(&admin).await;
            let name = DATABASE.create(admin).await;
            Some(Self { url, name })
        }

        /// Connection options for this database.
        pub(crate) fn options(&self) -> PgConnectOptions {
            PgConnectOptions::from_str(&self.url)
                .expect("DATABASE_URL parses")
                .database(&self.name)
        }

        /// A small pool on this database.
        pub(crate) fn pool(&self) -> PgPool {
            PgPoolOptions::new()
                .max_connections(2)
                .acquire_timeout(Duration::from_secs(10))
                .connect_lazy_with(self.options())
        }

        /// Closes `pool` and drops the database, ending whatever else is still connected.
        pub(crate) async fn drop(self, pool: PgPool) {
            pool.close().await;
            let admin = admin_pool(&self.url).await;
            DATABASE
                .drop(&admin, &self.name)
                .await
                .expect("drop the test database");
            admin.close().await;
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
    pub(crate) async fn store() -> Option<PostgresStore> {
        Some(Schema::create().await?.store().await)
    }
}

// ===== a whole stack over PostgreSQL =====

#[cfg(feature = "postgres")]
pub(crate) mod stack {
    use std::convert::Infallible;
    use std::sync::Arc;
    use std::time::Duration;

    use http::{Request, Response, StatusCode};
    use http_body_util::Empty;
    use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
    use tower::{Layer as _, ServiceExt as _, service_fn};
    use tower_api_key::cache::CacheConfig;
    use tower_api_key::feed::{FeedConfig, FeedTask};
    use tower_api_key::resolver::StoreResolver;
    use tower_api_key::store::{PgChangeFeed, PostgresStore};
    use tower_api_key::{ApiKeyLayer, KeyManager};

    use crate::support::pepper;
    use crate::support::wait::{PATIENCE, until};

    /// One "process": its own pool, manager, change feed and layer, as a separate server
    /// would have, on a shared database.
    pub(crate) struct Stack {
        pub(crate) manager: KeyManager,
        pub(crate) feed: FeedTask,
        pub(crate) layer: ApiKeyLayer<StoreResolver>,
        pub(crate) feed_name: String,
    }

    /// How to build a [`Stack`].
    pub(crate) struct StackOptions {
        /// Where the store's pool connects.
        pub(crate) connect: PgConnectOptions,
        /// Where the feed connects, if not where the store does.
        pub(crate) feed_connect: Option<PgConnectOptions>,
        /// `application_name` of the feed's connection, to find it in `pg_stat_activity`.
        pub(crate) feed_name: String,
        pub(crate) cache: CacheConfig,
        pub(crate) feed: FeedConfig,
        pub(crate) acquire_timeout: Duration,
    }

    impl StackOptions {
        pub(crate) fn new(connect: PgConnectOptions, feed_name: &str) -> Self {
            Self {
                connect,
                feed_connect: None,
                feed_name: feed_name.to_owned(),
                // Long enough that a stale entry would outlive every test: only invalidations
                // may remove entries.
                cache: CacheConfig::default()
                    .positive_ttl(Duration::from_secs(3600))
                    .negative_ttl(Duration::from_secs(3600)),
                feed: FeedConfig::default()
                    .heartbeat(Duration::from_millis(200), Duration::from_secs(1))
                    .backoff(Duration::from_millis(10), Duration::from_millis(100))
                    .subscribe_timeout(Duration::from_secs(2)),
                acquire_timeout: Duration::from_secs(5),
            }
        }
    }

    impl Stack {
        /// Starts the stack and waits until its feed is subscribed.
        pub(crate) async fn start(options: StackOptions) -> Self {
            let pool = PgPoolOptions::new()
                .max_connections(5)
                .acquire_timeout(options.acquire_timeout)
                .connect_lazy_with(options.connect.clone());
            let store = PostgresStore::from_pool(pool);
            // Every stack on one database shares the pepper, as processes would, by configuration.
            let manager = KeyManager::new(Arc::new(store.clone()), pepper());
            let feed_source = match &options.feed_connect {
                Some(connect) => PostgresStore::from_pool(
                    PgPoolOptions::new().connect_lazy_with(connect.clone()),
                ),
                None => store.clone(),
            };
            let feed = tower_api_key::feed::spawn(
                PgChangeFeed::new(&feed_source).application_name(&options.feed_name),
                manager.invalidation_bus(),
                options.feed,
            );
            let layer = ApiKeyLayer::for_manager(&manager)
                .cache_config(options.cache)
                .build();
            assert!(
                feed.wait_subscribed(PATIENCE).await,
                "the change feed did not subscribe"
            );
            Self {
                manager,
                feed,
                layer,
                feed_name: options.feed_name,
            }
        }

        /// Asserts that this stack answers `key` with `expected`, and soon from its cache (no
        /// store lookup). "Soon": the notification of the key's own creation may still be on
        /// its way and empty the entry once more.
        pub(crate) async fn assert_cached(&self, key: &str, expected: StatusCode) {
            until("the answer to be served from the cache", || async {
                assert_eq!(self.status(key).await, expected);
                let before = self.layer.metrics().resolver_calls;
                assert_eq!(self.status(key).await, expected);
                self.layer.metrics().resolver_calls == before
            })
            .await;
        }

        /// Polls this stack with `key` until it answers `expected` (its entries live an hour:
        /// only an invalidation, or failing closed, changes its answer meanwhile).
        pub(crate) async fn eventually(&self, key: &str, expected: StatusCode) {
            until(&format!("{expected} from {}", self.feed_name), || async {
                self.status(key).await == expected
            })
            .await;
        }

        /// The status of a request with `key` (HTTP).
        pub(crate) async fn status(&self, key: &str) -> StatusCode {
            self.request(key, false).await.status()
        }

        /// A request with `key`, as gRPC if `grpc`.
        pub(crate) async fn request(&self, key: &str, grpc: bool) -> Response<impl Sized> {
            let service = self.layer.layer(service_fn(|_: Request<()>| async {
                Ok::<_, Infallible>(Response::new(Empty::<bytes::Bytes>::new()))
            }));
            let mut request = Request::get("/").header("x-api-key", key);
            if grpc {
                request = request.header("content-type", "application/grpc");
            }
            service
                .oneshot(request.body(()).expect("request"))
                .await
                .expect("infallible")
        }
    }
}

// ===== a TCP proxy that can cut or freeze the database =====

#[cfg(feature = "postgres")]
pub(crate) mod proxy {
    use std::net::SocketAddr;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio::net::{TcpListener, TcpStream};
    use tokio::task::JoinHandle;

    /// Forwards loopback connections to `target`. [`cut`](Self::cut) closes every connection
    /// and refuses new ones, as a database that went away; [`freeze`](Self::freeze) keeps
    /// connections open but delivers nothing, as a network that silently drops packets.
    pub(crate) struct Proxy {
        pub(crate) addr: SocketAddr,
        shared: Arc<Shared>,
        accept: JoinHandle<()>,
    }

    #[derive(Default)]
    struct Shared {
        cut: AtomicBool,
        frozen: AtomicBool,
        connections: Mutex<Vec<JoinHandle<()>>>,
    }

    impl Proxy {
        pub(crate) async fn start(target: SocketAddr) -> Self {
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
            let addr = listener.local_addr().expect("proxy addr");
            let shared = Arc::new(Shared::default());
            let accept = tokio::spawn({
                let shared = Arc::clone(&shared);
                async move {
                    loop {
                        let Ok((client, _)) = listener.accept().await else {
                            continue;
                        };
                        if shared.cut.load(Ordering::SeqCst) {
                            drop(client); // the database is gone
                            continue;
                        }
                        let pump = tokio::spawn(forward(client, target, Arc::clone(&shared)));
                        let mut connections = shared.connections.lock().expect("lock");
                        connections.retain(|task| !task.is_finished());
                        connections.push(pump);
                    }
                }
            });
            Self {
                addr,
                shared,
                accept,
            }
        }

        /// Closes every open connection and refuses new ones until [`restore`](Self::restore).
        pub(crate) fn cut(&self) {
            self.shared.cut.store(true, Ordering::SeqCst);
            for task in self.shared.connections.lock().expect("lock").drain(..) {
                task.abort();
            }
        }

        /// Holds every byte in both directions, on open and new connections alike.
        pub(crate) fn freeze(&self) {
            self.shared.frozen.store(true, Ordering::SeqCst);
        }

        /// Forwards again (new connections; a cut closed the old ones for good).
        pub(crate) fn restore(&self) {
            self.shared.frozen.store(false, Ordering::SeqCst);
            self.shared.cut.store(false, Ordering::SeqCst);
        }
    }

    impl Drop for Proxy {
        fn drop(&mut self) {
            self.accept.abort();
            self.cut();
        }
    }

    async fn forward(client: TcpStream, target: SocketAddr, shared: Arc<Shared>) {
        let Ok(server) = TcpStream::connect(target).await else {
            return;
        };
        let _ = client.set_nodelay(true);
        let _ = server.set_nodelay(true);
        let (client_read, client_write) = client.into_split();
        let (server_read, server_write) = server.into_split();
        let up = pump(client_read, server_write, Arc::clone(&shared));
        let down = pump(server_read, client_write, shared);
        // Either side closing ends both: the task's sockets drop together.
        tokio::select! {
            () = up => {}
            () = down => {}
        }
    }

    async fn pump(
        mut from: tokio::net::tcp::OwnedReadHalf,
        mut to: tokio::net::tcp::OwnedWriteHalf,
        shared: Arc<Shared>,
    ) {
        let mut buffer = vec![0u8; 16 * 1024];
        loop {
            let read = match from.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(read) => read,
            };
            while shared.frozen.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            if to.write_all(&buffer[..read]).await.is_err() {
                return;
            }
        }
    }

    /// Where `DATABASE_URL`'s server listens over TCP, or `None` (printed) for a Unix socket.
    pub(crate) async fn database_addr(
        options: &sqlx::postgres::PgConnectOptions,
    ) -> Option<SocketAddr> {
        let host = options.get_host();
        if host.starts_with('/') {
            eprintln!("skipped: DATABASE_URL points at a Unix socket; this test needs TCP");
            return None;
        }
        tokio::net::lookup_host((host, options.get_port()))
            .await
            .expect("resolve the database host")
            .next()
    }
}
