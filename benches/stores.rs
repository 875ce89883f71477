//! The stores at scale, in one process: cold lookups through each SQL store at 10^6 rows, the
//! last-used writes of 10^5 keys used every second, and how long a change takes to reach
//! another process through PostgreSQL's change feed. Not a criterion bench: each part prints a
//! table of percentiles (or counts) from one run.
//!
//! - `lookups`: `KeyStore::find_by_prefix` (what `StoreResolver::resolve` asks the store on a
//!   cache miss) for random existing prefixes and for unknown ones, one at a time, through a
//!   SQLite file and through PostgreSQL, each with sqlx's `test_before_acquire` on (a ping
//!   before every acquire: sqlx's default) and off. The configurations are interleaved sample
//!   by sample, so the machine's drift hits them alike.
//! - `last-used`: 10^5 keys, each sent once per round through a layer with
//!   `record_last_used`, then one `UsageRecorder::flush` (a round stands for one flush
//!   interval of 1 s); counts the store's `record_last_used` calls and rows through a wrapping
//!   store, and times the flushes. Memory store, then PostgreSQL.
//! - `usage-flush`: one `KeyStore::record_usage` of 10^5 active keys (`KEYS`), straight to
//!   each store (memory, a SQLite file, PostgreSQL), in three variants: the uses alone (every
//!   key's `last_used_at` moves), the uses plus counts for every key in an hour not yet counted
//!   (10^5 inserted rows), and the same again into that hour (10^5 rows added to). `ROUNDS`
//!   (default 3) rounds, each with an hour of its own and the variants' order alternating;
//!   prints each flush, then the medians and the ratios to the uses alone measured in the same
//!   run.
//! - `changes`: what a change costs through `KeyManager` (its store call and, since the audit
//!   trail, the entry written with it): `KEYS` keys (default 200) of accounts of their own,
//!   each revoked, reactivated, renamed and rotated `ROUNDS` times (default 5), one call at a
//!   time, on the memory store, a SQLite file and PostgreSQL; percentiles per change.
//! - `feed`: two "processes" in this one (each its own pool, `PgChangeFeed`, manager and layer,
//!   cache entries living an hour, on a runtime of two workers) on one database. For each of
//!   `TRIES` keys (default 100), a change made through A (revoke, reactivate, rotate, delete),
//!   and how long from its return until B, polled back to back, answers accordingly; B had
//!   the key's previous answer cached each time.
//!
//! The rows are what the stores write (`KeyRecord::new`: active, no policy), put in with bulk
//! SQL for speed; the lookup rows' digests are not digests of real keys (a lookup by prefix
//! doesn't compare them), the last-used keys are real.
//!
//! PostgreSQL parts need `DATABASE_URL` (they run in schema `tak_bench_stores`, created and
//! dropped); without it they are skipped.
//!
//! ```sh
//! DATABASE_URL=postgres://postgres@127.0.0.1:5432/test cargo bench --all-features --bench stores
//! # one part, other sizes:
//! ROWS=100000 SAMPLES=2000 SQLITE_SAMPLES=500 cargo bench --all-features --bench stores -- lookups
//! KEYS=10000 ROUNDS=5 cargo bench --all-features --bench stores -- last-used
//! ROUNDS=5 cargo bench --all-features --bench stores -- usage-flush
//! KEYS=500 ROUNDS=3 cargo bench --all-features --bench stores -- changes
//! TRIES=1000 cargo bench --all-features --bench stores -- feed
//! ```

use std::convert::Infallible;
use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use tower::{Layer, ServiceExt};
use tower_api_key::audit::{Actor, AuditAction, AuditEntry, AuditEvent, AuditNote, AuditQuery};
use tower_api_key::cache::CacheConfig;
use tower_api_key::feed::{FeedConfig, FeedTask};
use tower_api_key::policy::{KeyName, PolicyUpdate};
use tower_api_key::store::{
    AccountId, KeyId, KeyRecord, KeyStatus, KeyStore, KeyUse, Rotated, StoreError,
};
use tower_api_key::usage::UsageRecorder;
use tower_api_key::usage::{Hour, UsageBatch, UsageDelta, UsageRow};
use tower_api_key::{
    ApiKey, ApiKeyLayer, KeyDigest, KeyManager, KeyPrefix, MemoryStore, Pepper, PgChangeFeed,
    PostgresStore, SqliteStore, StoreResolver,
};

const SCHEMA: &str = "tak_bench_stores";
const WARM_UP: usize = 200;
const SQLITE_WARM_UP: usize = 5;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.replace('_', "").parse().ok())
        .unwrap_or(default)
}

/// A small xorshift: reproducible picks without a dependency.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

/// The `i`-th prefix: a bijection of `0..36^8` (multiplying by a number prime to 36), so
/// `0..rows` are the stored prefixes and `rows..` are unknown ones.
fn prefix_of(i: usize) -> String {
    const SPACE: u64 = 36u64.pow(8);
    let mut x = (i as u64).wrapping_mul(2_654_435_761) % SPACE;
    let mut out = [b'0'; 8];
    for slot in out.iter_mut().rev() {
        *slot = b"0123456789abcdefghijklmnopqrstuvwxyz"[(x % 36) as usize];
        x /= 36;
    }
    String::from_utf8(out.to_vec()).expect("ascii")
}

fn digest_of(i: usize) -> Vec<u8> {
    blake3::hash(&(i as u64).to_le_bytes()).as_bytes().to_vec()
}

fn percentiles(samples: &mut [Duration]) -> (f64, f64, f64, f64) {
    samples.sort();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    (
        us(at(0.5)),
        us(at(0.9)),
        us(at(0.99)),
        us(*samples.last().expect("samples")),
    )
}

// ===== setup =====

/// `DATABASE_URL`, unless unset or empty.
fn database_url() -> Option<String> {
    std::env::var("DATABASE_URL")
        .ok()
        .filter(|url| !url.is_empty())
}

/// `DATABASE_URL`'s options with the bench schema (fresh) as `search_path`.
async fn pg_schema() -> Option<PgConnectOptions> {
    let url = database_url()?;
    let admin = PgPoolOptions::new()
        .max_connections(1)
        .connect(&url)
        .await
        .expect("connect to DATABASE_URL");
    sqlx::raw_sql(&format!(
        "DROP SCHEMA IF EXISTS {SCHEMA} CASCADE; CREATE SCHEMA {SCHEMA}"
    ))
    .execute(&admin)
    .await
    .expect("create the bench schema");
    admin.close().await;
    Some(
        PgConnectOptions::from_str(&url)
            .expect("DATABASE_URL parses")
            .options([("search_path", SCHEMA)])
            .application_name("tak_bench_stores"),
    )
}

async fn pg_drop_schema() {
    if let Some(url) = database_url() {
        let admin = PgPoolOptions::new()
            .max_connections(1)
            .connect(&url)
            .await
            .expect("connect");
        sqlx::raw_sql(&format!("DROP SCHEMA IF EXISTS {SCHEMA} CASCADE"))
            .execute(&admin)
            .await
            .expect("drop the bench schema");
    }
}

/// The pool `PostgresStore::connect` builds, with `test_before_acquire` as given.
fn pg_pool(options: &PgConnectOptions, test_before_acquire: bool) -> PgPool {
    PgPoolOptions::new()
        .max_connections(10)
        .acquire_timeout(Duration::from_secs(3))
        .test_before_acquire(test_before_acquire)
        .connect_lazy_with(options.clone())
}

/// Inserts `records` (id, account, prefix, digest) as `insert_within_limit` writes them:
/// active, created now, everything else NULL. Batches of `unnest`ed arrays.
async fn pg_bulk_insert(
    pool: &PgPool,
    records: impl Iterator<Item = (uuid::Uuid, String, String, Vec<u8>)>,
) {
    let mut batch = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut records = records.peekable();
    while records.peek().is_some() {
        for (id, account, prefix, digest) in records.by_ref().take(20_000) {
            batch.0.push(id);
            batch.1.push(account);
            batch.2.push(prefix);
            batch.3.push(digest);
        }
        sqlx::query(
            "INSERT INTO tower_api_keys (id, account_id, prefix, digest, status, created_at)
             SELECT id, account_id, prefix, digest, 'active', now()
             FROM unnest($1::uuid[], $2::text[], $3::text[], $4::bytea[])
                  AS r(id, account_id, prefix, digest)",
        )
        .bind(&batch.0)
        .bind(&batch.1)
        .bind(&batch.2)
        .bind(&batch.3)
        .execute(pool)
        .await
        .expect("bulk insert");
        batch.0.clear();
        batch.1.clear();
        batch.2.clear();
        batch.3.clear();
    }
    sqlx::query("ANALYZE tower_api_keys")
        .execute(pool)
        .await
        .expect("analyze");
}

fn sqlite_options(path: &str) -> SqliteConnectOptions {
    // What `SqliteStore::connect` sets.
    SqliteConnectOptions::from_str(&format!("sqlite://{path}"))
        .expect("sqlite url")
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal)
        .busy_timeout(Duration::from_secs(5))
}

/// A SQLite file of this run, for the part `part`, in the temporary folder.
fn sqlite_path(part: &str) -> String {
    let path = std::env::temp_dir().join(format!("tak_bench_{part}_{}.db", std::process::id()));
    path.to_str().expect("utf-8 path").to_owned()
}

/// Removes the SQLite file at `path` and its write-ahead log.
fn remove_sqlite(path: &str) {
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{path}{suffix}"));
    }
}

async fn sqlite_store(path: &str, test_before_acquire: bool) -> SqliteStore {
    let pool = SqlitePoolOptions::new()
        .max_connections(8)
        .acquire_timeout(Duration::from_secs(10))
        .test_before_acquire(test_before_acquire)
        .connect_with(sqlite_options(path))
        .await
        .expect("open sqlite");
    SqliteStore::from_pool(pool)
}

// ===== lookups =====

async fn lookups() {
    let rows = env_usize("ROWS", 1_000_000);
    let samples = env_usize("SAMPLES", 5_000);
    let sqlite_samples = env_usize("SQLITE_SAMPLES", 100).min(samples);
    let accounts = 1_000;
    let account = |i: usize| format!("acct{}", i % accounts);
    println!(
        "## lookups: {rows} rows, {samples} samples per case after {WARM_UP} warm-up \
         (SQLite: {sqlite_samples} after {SQLITE_WARM_UP})"
    );

    let mut stores: Vec<(String, Arc<dyn KeyStore>)> = Vec::new();

    // SQLite file.
    let path = sqlite_path("stores");
    let started = Instant::now();
    sqlite_bulk_insert(&path, &bench_keys(rows)).await;
    println!(
        "sqlite: {rows} rows inserted in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    for on in [true, false] {
        stores.push((
            format!(
                "SQLite file, test_before_acquire {}",
                if on { "on" } else { "off" }
            ),
            Arc::new(sqlite_store(&path, on).await),
        ));
    }

    // PostgreSQL.
    let pg = pg_schema().await;
    if let Some(options) = &pg {
        let store = PostgresStore::from_pool(pg_pool(options, true));
        store.migrate().await.expect("migrate postgres");
        let started = Instant::now();
        pg_bulk_insert(
            store.pool(),
            (0..rows).map(|i| (uuid::Uuid::new_v4(), account(i), prefix_of(i), digest_of(i))),
        )
        .await;
        println!(
            "postgres: {rows} rows inserted in {:.1} s",
            started.elapsed().as_secs_f64()
        );
        store.pool().close().await;
        for on in [true, false] {
            stores.push((
                format!(
                    "PostgreSQL, test_before_acquire {}",
                    if on { "on" } else { "off" }
                ),
                Arc::new(PostgresStore::from_pool(pg_pool(options, on))),
            ));
        }
    } else {
        println!("postgres: skipped (DATABASE_URL not set)");
    }

    // Interleaved: every sample goes through every store, in an order that rotates.
    let mut known: Vec<Vec<Duration>> = vec![Vec::new(); stores.len()];
    let mut unknown: Vec<Vec<Duration>> = vec![Vec::new(); stores.len()];
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for sample in 0..samples + WARM_UP {
        for k in 0..stores.len() {
            let s = (k + sample) % stores.len();
            let (name, store) = &stores[s];
            // SQLite scans the table (see the plan printed at the end): fewer samples.
            let sqlite = name.starts_with("SQLite");
            if sqlite && sample >= sqlite_samples + SQLITE_WARM_UP {
                continue;
            }
            let warm = if sqlite { SQLITE_WARM_UP } else { WARM_UP };
            let hit = KeyPrefix::from_str(&prefix_of(rng.below(rows))).expect("prefix");
            let miss = KeyPrefix::from_str(&prefix_of(rows + rng.below(rows))).expect("prefix");
            let t = Instant::now();
            let found = store.find_by_prefix(&hit).await.expect("lookup");
            let hit_time = t.elapsed();
            assert!(found.is_some(), "an existing prefix is found");
            let t = Instant::now();
            let found = store.find_by_prefix(&miss).await.expect("lookup");
            let miss_time = t.elapsed();
            assert!(found.is_none(), "an unknown prefix is not found");
            if sample >= warm {
                known[s].push(hit_time);
                unknown[s].push(miss_time);
            }
        }
    }
    println!();
    println!("| store | prefix | p50 µs | p90 µs | p99 µs | max µs |");
    println!("| --- | --- | ---: | ---: | ---: | ---: |");
    for (s, (name, _)) in stores.iter().enumerate() {
        for (what, series) in [("existing", &mut known[s]), ("unknown", &mut unknown[s])] {
            let (p50, p90, p99, max) = percentiles(series);
            println!("| {name} | {what} | {p50:.0} | {p90:.0} | {p99:.0} | {max:.0} |");
        }
    }
    drop(stores);
    sqlite_plan_after_analyze(&path, rows).await;
    remove_sqlite(&path);
    if pg.is_some() {
        pg_drop_schema().await;
    }
}

/// SQLite's plan for the lookup before and after `ANALYZE` (which `PRAGMA optimize` runs too),
/// and the median of 21 lookups of existing prefixes with each plan.
async fn sqlite_plan_after_analyze(path: &str, rows: usize) {
    let store = sqlite_store(path, false).await;
    let mut rng = Rng(7);
    for analyzed in [false, true] {
        if analyzed {
            sqlx::query("ANALYZE")
                .execute(store.pool())
                .await
                .expect("analyze");
        }
        let plan_of = |sql: &'static str| async {
            sqlx::query(sql)
                .bind("abcdefgh")
                .fetch_all(store.pool())
                .await
                .expect("plan")
                .iter()
                .map(|row| sqlx::Row::get::<String, _>(row, "detail"))
                .collect::<Vec<String>>()
        };
        let plan = plan_of(
            "EXPLAIN QUERY PLAN SELECT id FROM tower_api_keys WHERE prefix = ?1 OR previous_prefix = ?1",
        )
        .await;
        // The same lookup as two equality searches, for comparison.
        let union = plan_of(
            "EXPLAIN QUERY PLAN SELECT id FROM tower_api_keys WHERE prefix = ?1 \
             UNION ALL SELECT id FROM tower_api_keys WHERE previous_prefix = ?1 AND prefix <> ?1",
        )
        .await;
        let mut times = Vec::new();
        for _ in 0..21 {
            let prefix = KeyPrefix::from_str(&prefix_of(rng.below(rows))).expect("prefix");
            let t = Instant::now();
            store.find_by_prefix(&prefix).await.expect("lookup");
            times.push(t.elapsed());
        }
        let (p50, ..) = percentiles(&mut times);
        println!(
            "SQLite {} ANALYZE: plan {plan:?}, lookup p50 {p50:.0} µs; as UNION ALL: {union:?}",
            if analyzed { "after" } else { "before" }
        );
    }
    store.pool().close().await;
}

// ===== last-used writes =====

/// Counts and times `record_last_used`; everything else goes straight through.
struct Counting {
    inner: Arc<dyn KeyStore>,
    calls: AtomicUsize,
    rows: AtomicUsize,
    times: Mutex<Vec<Duration>>,
}

#[async_trait]
impl KeyStore for Counting {
    async fn insert_within_limit(
        &self,
        record: KeyRecord,
        limit: usize,
        audit: &AuditNote,
    ) -> Result<(), StoreError> {
        self.inner.insert_within_limit(record, limit, audit).await
    }
    async fn find_by_prefix(&self, prefix: &KeyPrefix) -> Result<Option<KeyRecord>, StoreError> {
        self.inner.find_by_prefix(prefix).await
    }
    async fn get(&self, account: &AccountId, id: KeyId) -> Result<Option<KeyRecord>, StoreError> {
        self.inner.get(account, id).await
    }
    async fn list(&self, account: &AccountId) -> Result<Vec<KeyRecord>, StoreError> {
        self.inner.list(account).await
    }
    async fn set_status(
        &self,
        account: &AccountId,
        id: KeyId,
        status: KeyStatus,
        audit: &AuditNote,
    ) -> Result<Option<KeyRecord>, StoreError> {
        self.inner.set_status(account, id, status, audit).await
    }
    async fn replace_key(
        &self,
        account: &AccountId,
        id: KeyId,
        prefix: KeyPrefix,
        digest: KeyDigest,
        grace_until: Option<SystemTime>,
        audit: &AuditNote,
    ) -> Result<Option<Rotated>, StoreError> {
        self.inner
            .replace_key(account, id, prefix, digest, grace_until, audit)
            .await
    }
    async fn update_policy(
        &self,
        account: &AccountId,
        id: KeyId,
        update: &PolicyUpdate,
        audit: &AuditNote,
    ) -> Result<Option<KeyRecord>, StoreError> {
        self.inner.update_policy(account, id, update, audit).await
    }
    async fn delete(
        &self,
        account: &AccountId,
        id: KeyId,
        audit: &AuditNote,
    ) -> Result<Option<KeyRecord>, StoreError> {
        self.inner.delete(account, id, audit).await
    }
    async fn append_audit(&self, entry: &AuditEntry) -> Result<(), StoreError> {
        self.inner.append_audit(entry).await
    }
    async fn audit_trail(
        &self,
        account: &AccountId,
        query: &AuditQuery,
    ) -> Result<Vec<AuditEvent>, StoreError> {
        self.inner.audit_trail(account, query).await
    }
    async fn prune_audit(&self, before: SystemTime) -> Result<u64, StoreError> {
        self.inner.prune_audit(before).await
    }
    async fn record_usage(&self, batch: &UsageBatch) -> Result<(), StoreError> {
        let started = Instant::now();
        let result = self.inner.record_usage(batch).await;
        self.times.lock().expect("lock").push(started.elapsed());
        self.calls.fetch_add(1, Ordering::Relaxed);
        self.rows
            .fetch_add(batch.last_used.len(), Ordering::Relaxed);
        result
    }
    async fn usage(
        &self,
        account: &AccountId,
        key: Option<KeyId>,
        from: Hour,
        to: Hour,
    ) -> Result<Vec<UsageRow>, StoreError> {
        self.inner.usage(account, key, from, to).await
    }
    async fn prune_usage(&self, before: Hour) -> Result<u64, StoreError> {
        self.inner.prune_usage(before).await
    }
}

/// Resident set size and its peak since the last reset, in KiB (Linux).
fn rss_kib() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

async fn wal_lsn(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::bigint")
        .fetch_one(pool)
        .await
        .expect("wal position")
}

async fn last_used_one(
    name: &str,
    inner: Arc<dyn KeyStore>,
    pg: Option<&PgPool>,
    keys: usize,
    rounds: usize,
) {
    let pepper = Pepper::random().expect("randomness");
    let generated: Vec<ApiKey> = (0..keys)
        .map(|_| ApiKey::generate().expect("randomness"))
        .collect();
    let started = Instant::now();
    match pg {
        Some(pool) => {
            pg_bulk_insert(
                pool,
                generated.iter().enumerate().map(|(i, key)| {
                    (
                        uuid::Uuid::new_v4(),
                        format!("acct{}", i % 1_000),
                        key.prefix().as_str().to_owned(),
                        pepper.digest(key).as_bytes().to_vec(),
                    )
                }),
            )
            .await;
        }
        None => {
            for (i, key) in generated.iter().enumerate() {
                let record = KeyRecord::new(
                    KeyId::random(),
                    AccountId::new(&format!("acct{}", i % 1_000)).expect("account"),
                    key.prefix(),
                    pepper.digest(key),
                    SystemTime::now(),
                );
                inner
                    .insert_within_limit(record, usize::MAX, &created())
                    .await
                    .expect("insert");
            }
        }
    }
    let setup = started.elapsed();
    let counting = Arc::new(Counting {
        inner,
        calls: AtomicUsize::new(0),
        rows: AtomicUsize::new(0),
        times: Mutex::new(Vec::new()),
    });
    let manager = KeyManager::new(counting.clone(), pepper);
    let recorder = UsageRecorder::new(counting.clone());
    let layer = ApiKeyLayer::for_manager(&manager)
        .cache_config(
            CacheConfig::default()
                .positive_capacity(2 * keys as u64)
                .positive_ttl(Duration::from_secs(3_600)),
        )
        .record_usage(recorder.clone())
        .build();
    let service = layer.layer(tower::service_fn(|_request: http::Request<()>| async {
        Ok::<_, Infallible>(http::Response::new(String::new()))
    }));
    let headers: Vec<http::HeaderValue> = generated
        .iter()
        .map(|key| http::HeaderValue::from_str(key.expose_secret()).expect("header"))
        .collect();
    println!("{name}: {keys} keys set up in {:.1} s", setup.as_secs_f64());
    println!();
    println!(
        "| {name} round | requests s | pending before flush | flush ms | store calls | rows | RSS growth over round KiB | peak RSS over flush KiB | WAL per flush KiB |"
    );
    println!("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    let mut flushes = Vec::new();
    for round in 0..rounds {
        let (rss_before, _) = rss_kib();
        let t = Instant::now();
        for header in &headers {
            let mut request = http::Request::new(());
            request.headers_mut().insert("x-api-key", header.clone());
            let response = service.clone().oneshot(request).await.expect("infallible");
            assert_eq!(response.status(), http::StatusCode::OK);
        }
        let requests = t.elapsed();
        let pending = recorder.pending_count();
        let (rss_after, _) = rss_kib();
        let calls = counting.calls.load(Ordering::Relaxed);
        let rows = counting.rows.load(Ordering::Relaxed);
        let wal = match pg {
            Some(pool) => Some(wal_lsn(pool).await),
            None => None,
        };
        reset_peak_rss();
        let (base, _) = rss_kib();
        let t = Instant::now();
        let written = recorder.flush().await.expect("flush");
        let flush = t.elapsed();
        let (_, peak) = rss_kib();
        let wal_kib = match (pg, wal) {
            (Some(pool), Some(before)) => format!("{}", (wal_lsn(pool).await - before) / 1024),
            _ => "–".to_owned(),
        };
        assert_eq!(written, keys, "every key written once");
        let calls = counting.calls.load(Ordering::Relaxed) - calls;
        let rows = counting.rows.load(Ordering::Relaxed) - rows;
        // Round 0 fills the cache (a store lookup per key): its request time is the misses'.
        println!(
            "| {round}{} | {:.2} | {pending} | {:.1} | {calls} | {rows} | {} | {} | {wal_kib} |",
            if round == 0 { " (cold)" } else { "" },
            requests.as_secs_f64(),
            flush.as_secs_f64() * 1e3,
            rss_after as i64 - rss_before as i64,
            peak.saturating_sub(base),
        );
        if round > 0 {
            flushes.push(flush);
        }
        // Times move forward at millisecond resolution: the next round's uses are later.
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    if let Some(pool) = pg {
        print_updates(name, pool).await;
    }
    let (p50, _, _, max) = percentiles(&mut flushes);
    println!();
    println!(
        "{name}: flush p50 {:.1} ms, max {:.1} ms over {} warm rounds; store calls {} for {} rows in all",
        p50 / 1e3,
        max / 1e3,
        flushes.len(),
        counting.calls.load(Ordering::Relaxed),
        counting.rows.load(Ordering::Relaxed),
    );
    println!();
}

/// Prints, for each table of the bench's schema that was updated, the row versions written
/// and how many were HOT (no index entries). An idle connection reports its statistics to
/// `pg_stat_user_tables` within 10 s (PostgreSQL 15).
async fn print_updates(name: &str, pool: &PgPool) {
    tokio::time::sleep(Duration::from_secs(11)).await;
    let tables: Vec<(String, i64, i64)> = sqlx::query_as(
        "SELECT relname::text, n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables
         WHERE schemaname = $1 AND n_tup_upd > 0 ORDER BY relname",
    )
    .bind(SCHEMA)
    .fetch_all(pool)
    .await
    .expect("table statistics");
    for (table, updated, hot) in tables {
        println!("{name}: {table}: {updated} rows updated in all, {hot} of them HOT");
    }
}

async fn last_used() {
    let keys = env_usize("KEYS", 100_000);
    let rounds = env_usize("ROUNDS", 11);
    println!("## last-used: {keys} keys, {rounds} rounds (each: every key once, then one flush)");
    println!(
        "size_of KeyUse {} bytes; a flush builds a HashMap<(KeyId, KeyPrefix), u64> and a Vec<KeyUse> of the pending keys",
        std::mem::size_of::<KeyUse>()
    );
    last_used_one("memory", Arc::new(MemoryStore::new()), None, keys, rounds).await;
    if let Some(options) = pg_schema().await {
        let store = PostgresStore::from_pool(pg_pool(&options, true));
        store.migrate().await.expect("migrate");
        let pool = store.pool().clone();
        last_used_one("postgres", Arc::new(store), Some(&pool), keys, rounds).await;
        pool.close().await;
        pg_drop_schema().await;
    } else {
        println!("postgres: skipped (DATABASE_URL not set)");
    }
}

// ===== usage flush: last used alone, then with counts =====

/// `keys` keys as the benches store them: id, account (1,000 of them), prefix (all
/// distinct), digest.
fn bench_keys(keys: usize) -> Vec<(KeyId, AccountId, KeyPrefix, KeyDigest)> {
    (0..keys)
        .map(|i| {
            let digest: [u8; 32] = digest_of(i).try_into().expect("32 bytes");
            (
                KeyId::random(),
                AccountId::new(&format!("acct{}", i % 1_000)).expect("account"),
                prefix_of(i).parse().expect("prefix"),
                KeyDigest::from_bytes(digest),
            )
        })
        .collect()
}

/// Puts `keys` in a SQLite file at `path`, in bulk, as `insert_within_limit` writes them.
async fn sqlite_bulk_insert(path: &str, keys: &[(KeyId, AccountId, KeyPrefix, KeyDigest)]) {
    let store = sqlite_store(path, true).await;
    store.migrate().await.expect("migrate sqlite");
    let now_us = i64::try_from(
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .expect("after 1970")
            .as_micros(),
    )
    .expect("fits");
    let mut tx = store.pool().begin().await.expect("begin");
    for chunk in keys.chunks(1_000) {
        let mut sql = String::from(
            "INSERT INTO tower_api_keys (id, account_id, prefix, digest, status, created_at_us) VALUES ",
        );
        for n in 0..chunk.len() {
            if n > 0 {
                sql.push(',');
            }
            sql.push_str("(?, ?, ?, ?, 'active', ?)");
        }
        let mut query = sqlx::query(&sql);
        for (id, account, prefix, digest) in chunk {
            query = query
                .bind(id.to_string())
                .bind(account.as_str().to_owned())
                .bind(prefix.as_str().to_owned())
                .bind(digest.as_bytes().to_vec())
                .bind(now_us);
        }
        query.execute(&mut *tx).await.expect("bulk insert sqlite");
    }
    tx.commit().await.expect("commit");
    sqlx::query("ANALYZE")
        .execute(store.pool())
        .await
        .expect("analyze");
    store.pool().close().await;
}

/// The flush variants, in the order of an even round.
const VARIANTS: [&str; 3] = [
    "last used only",
    "+ counts, new hour (inserts)",
    "+ counts, same hour (adds)",
];

/// Times one `record_usage` of every key per variant, `rounds` times; the variants' order
/// alternates round by round (last used first, then last), so drift hits them alike.
async fn usage_flush_one(
    name: &str,
    store: Arc<dyn KeyStore>,
    pg: Option<&PgPool>,
    keys: &[(KeyId, AccountId, KeyPrefix, KeyDigest)],
    rounds: usize,
) {
    let base = SystemTime::now();
    let first_hour = Hour::containing(base);
    let mut tick = 0u64;
    let mut times: [Vec<Duration>; 3] = Default::default();
    let mut wal: [Vec<i64>; 3] = Default::default();
    println!();
    println!("| {name} round | variant | rows (uses + counts) | flush ms | WAL KiB |");
    println!("| ---: | --- | ---: | ---: | ---: |");
    for round in 0..rounds {
        // Each round counts into an hour of its own: its first counted flush inserts the rows,
        // its second adds to them.
        let hour = Hour::from_index(first_hour.index() + round as u32);
        let order: [usize; 3] = if round % 2 == 0 { [0, 1, 2] } else { [1, 2, 0] };
        for variant in order {
            // Every flush's uses are later than the last: each one moves every key's time.
            tick += 1;
            let at = base + Duration::from_millis(tick);
            let last_used: Vec<KeyUse> = keys
                .iter()
                .map(|(id, _, prefix, _)| KeyUse {
                    id: *id,
                    prefix: *prefix,
                    at,
                })
                .collect();
            let counts: Vec<UsageDelta> = if variant == 0 {
                Vec::new()
            } else {
                keys.iter()
                    .map(|(id, account, _, _)| UsageDelta {
                        account_id: account.clone(),
                        key_id: *id,
                        hour,
                        accepted: 3,
                        rate_limited: 1,
                        refused: 0,
                    })
                    .collect()
            };
            let batch = UsageBatch { last_used, counts };
            let wal_before = match pg {
                Some(pool) => Some(wal_lsn(pool).await),
                None => None,
            };
            let t = Instant::now();
            store.record_usage(&batch).await.expect("flush");
            let took = t.elapsed();
            let wal_kib = match (pg, wal_before) {
                (Some(pool), Some(before)) => (wal_lsn(pool).await - before) / 1024,
                _ => 0,
            };
            println!(
                "| {round} | {} | {} + {} | {:.1} | {} |",
                VARIANTS[variant],
                batch.last_used.len(),
                batch.counts.len(),
                took.as_secs_f64() * 1e3,
                if pg.is_some() {
                    wal_kib.to_string()
                } else {
                    "–".to_owned()
                },
            );
            times[variant].push(took);
            wal[variant].push(wal_kib);
        }
    }
    let expected = (rounds * keys.len()) as u64;
    let some = &keys[0];
    let rows = store
        .usage(
            &some.1,
            Some(some.0),
            first_hour,
            Hour::from_index(first_hour.index() + rounds as u32),
        )
        .await
        .expect("usage");
    assert_eq!(rows.len(), rounds, "one row per round for each key");
    assert!(
        rows.iter().all(|row| row.counts.accepted == 6),
        "two counted flushes per hour"
    );
    let pruned = store
        .prune_usage(Hour::from_index(first_hour.index() + rounds as u32))
        .await
        .expect("prune");
    assert_eq!(pruned, expected, "every row counted once");
    let median = |samples: &[Duration]| {
        let mut sorted = samples.to_vec();
        sorted.sort();
        sorted[sorted.len() / 2].as_secs_f64() * 1e3
    };
    let baseline = median(&times[0]);
    println!();
    println!(
        "| {name} | flush median ms | × last used only (medians) | × per round, median | WAL per flush KiB, median |"
    );
    println!("| --- | ---: | ---: | ---: | ---: |");
    for variant in 0..3 {
        let mut per_round: Vec<f64> = times[variant]
            .iter()
            .zip(&times[0])
            .map(|(t, b)| t.as_secs_f64() / b.as_secs_f64())
            .collect();
        per_round.sort_by(f64::total_cmp);
        let mut wal_sorted = wal[variant].clone();
        wal_sorted.sort();
        println!(
            "| {} | {:.1} | {:.2} | {:.2} | {} |",
            VARIANTS[variant],
            median(&times[variant]),
            median(&times[variant]) / baseline,
            per_round[per_round.len() / 2],
            if pg.is_some() {
                wal_sorted[wal_sorted.len() / 2].to_string()
            } else {
                "–".to_owned()
            },
        );
    }
    println!("{name}: pruned {pruned} rows");
    println!();
}

async fn usage_flush() {
    let keys = env_usize("KEYS", 100_000);
    let rounds = env_usize("ROUNDS", 3);
    println!(
        "## usage-flush: {keys} active keys, {rounds} rounds of one flush per variant \
         (each: every key's use; counts for every key in one hour)"
    );
    let records = bench_keys(keys);

    let memory = Arc::new(MemoryStore::new());
    for (id, account, prefix, digest) in &records {
        memory
            .insert_within_limit(
                KeyRecord::new(*id, account.clone(), *prefix, *digest, SystemTime::now()),
                usize::MAX,
                &created(),
            )
            .await
            .expect("insert");
    }
    usage_flush_one("memory", memory, None, &records, rounds).await;

    let path = sqlite_path("usage");
    sqlite_bulk_insert(&path, &records).await;
    let sqlite = sqlite_store(&path, true).await;
    usage_flush_one("sqlite", Arc::new(sqlite.clone()), None, &records, rounds).await;
    sqlite.pool().close().await;
    remove_sqlite(&path);

    if let Some(options) = pg_schema().await {
        let store = PostgresStore::from_pool(pg_pool(&options, true));
        store.migrate().await.expect("migrate");
        let pool = store.pool().clone();
        pg_bulk_insert(
            &pool,
            records.iter().map(|(id, account, prefix, digest)| {
                (
                    *id.as_uuid(),
                    account.as_str().to_owned(),
                    prefix.as_str().to_owned(),
                    digest.as_bytes().to_vec(),
                )
            }),
        )
        .await;
        usage_flush_one("postgres", Arc::new(store), Some(&pool), &records, rounds).await;
        print_updates("postgres", &pool).await;
        pool.close().await;
        pg_drop_schema().await;
    } else {
        println!("postgres: skipped (DATABASE_URL not set)");
    }
}

// ===== changes =====

/// The operations the `changes` part times, in the order each round makes them.
const CHANGES: [&str; 4] = ["revoke", "reactivate", "update", "rotate"];

/// Times `KeyManager`'s changes on `store`: `keys` keys of their own accounts, each changed
/// `rounds` times in the order of [`CHANGES`], one call at a time.
async fn changes_on(name: &str, store: Arc<dyn KeyStore>, keys: usize, rounds: usize) {
    let manager = KeyManager::new(store, Pepper::random().expect("pepper"));
    let mut created = Vec::with_capacity(keys);
    for i in 0..keys {
        let account = AccountId::new(&format!("acct{i}")).expect("account");
        let key = manager.create(&account).await.expect("create");
        created.push((account, key.info.id));
    }
    let mut times: [Vec<Duration>; 4] = Default::default();
    for round in 0..rounds {
        for (account, id) in &created {
            let name = KeyName::new(&format!("round {round}")).expect("name");
            let started = Instant::now();
            manager.revoke(account, *id).await.expect("revoke");
            times[0].push(started.elapsed());
            let started = Instant::now();
            manager.reactivate(account, *id).await.expect("reactivate");
            times[1].push(started.elapsed());
            let started = Instant::now();
            let update = PolicyUpdate::new().name(Some(name));
            manager.update(account, *id, update).await.expect("update");
            times[2].push(started.elapsed());
            let started = Instant::now();
            manager.rotate(account, *id).await.expect("rotate");
            times[3].push(started.elapsed());
        }
    }
    for (operation, samples) in CHANGES.iter().zip(&mut times) {
        let (p50, p90, p99, max) = percentiles(samples);
        println!("| {name} | {operation} | {p50:.0} | {p90:.0} | {p99:.0} | {max:.0} |");
    }
}

async fn changes() {
    let keys = env_usize("KEYS", 200);
    let rounds = env_usize("ROUNDS", 5);
    println!(
        "## changes: {keys} keys, {rounds} rounds of revoke, reactivate, update (a name), rotate \
         each, through KeyManager, one at a time (µs)"
    );
    println!("| store | change | p50 | p90 | p99 | max |");
    println!("| --- | --- | --- | --- | --- | --- |");
    changes_on("memory", Arc::new(MemoryStore::new()), keys, rounds).await;
    let path = sqlite_path("changes");
    let sqlite = sqlite_store(&path, true).await;
    sqlite.migrate().await.expect("migrate");
    changes_on("sqlite", Arc::new(sqlite.clone()), keys, rounds).await;
    sqlite.pool().close().await;
    remove_sqlite(&path);
    if let Some(options) = pg_schema().await {
        let store = PostgresStore::from_pool(pg_pool(&options, true));
        store.migrate().await.expect("migrate");
        let pool = store.pool().clone();
        changes_on("postgres", Arc::new(store), keys, rounds).await;
        pool.close().await;
        pg_drop_schema().await;
    } else {
        println!("postgres: skipped (DATABASE_URL not set)");
    }
    println!();
}

// ===== feed =====

/// One "process": its own pool, change feed, manager and layer. Entries live an hour, so only
/// an invalidation ends one.
struct Process {
    manager: KeyManager,
    layer: ApiKeyLayer<StoreResolver>,
    feed: FeedTask,
}

impl Process {
    async fn start(options: &PgConnectOptions, name: &str) -> Self {
        let store = PostgresStore::from_pool(
            PgPoolOptions::new()
                .max_connections(5)
                .connect_lazy_with(options.clone()),
        );
        let manager = KeyManager::new(Arc::new(store.clone()), Pepper::from_bytes([9; 32]));
        let feed = tower_api_key::feed::spawn(
            PgChangeFeed::new(&store).application_name(name),
            manager.invalidation_bus(),
            FeedConfig::default(),
        );
        let hour = Duration::from_secs(3600);
        let layer = ApiKeyLayer::for_manager(&manager)
            .cache_config(CacheConfig::default().positive_ttl(hour).negative_ttl(hour))
            .build();
        assert!(
            feed.wait_subscribed(Duration::from_secs(30)).await,
            "{name}: the change feed did not subscribe"
        );
        Self {
            manager,
            layer,
            feed,
        }
    }

    async fn status(&self, key: &str) -> http::StatusCode {
        let service = self
            .layer
            .layer(tower::service_fn(|_: http::Request<()>| async {
                Ok::<_, Infallible>(http::Response::new(String::new()))
            }));
        let request = http::Request::get("/")
            .header("x-api-key", key)
            .body(())
            .expect("request");
        service.oneshot(request).await.expect("infallible").status()
    }

    /// Returns once `key` gets `expected` from the cache (the notification of the key's own
    /// creation may still be on its way and empty the entry once more).
    async fn cached(&self, key: &str, expected: http::StatusCode) {
        loop {
            assert_eq!(self.status(key).await, expected);
            let before = self.layer.metrics().resolver_calls;
            assert_eq!(self.status(key).await, expected);
            if self.layer.metrics().resolver_calls == before {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Polls `key` back to back until it gets `expected`; the time since `since`.
    async fn lag(&self, key: &str, expected: http::StatusCode, since: Instant) -> Duration {
        while self.status(key).await != expected {
            tokio::task::yield_now().await;
        }
        since.elapsed()
    }
}

async fn feed() {
    use http::StatusCode;
    let tries = env_usize("TRIES", 100);
    println!("## feed: a change in process A, in force in process B, {tries} tries per change");
    let Some(options) = pg_schema().await else {
        println!("feed: skipped (DATABASE_URL not set)");
        return;
    };
    PostgresStore::from_pool(pg_pool(&options, true))
        .migrate()
        .await
        .expect("migrate");
    let a = Process::start(&options, "tak_bench_feed_a").await;
    let b = Process::start(&options, "tak_bench_feed_b").await;
    let acme: AccountId = "acme".parse().expect("account");
    let (mut revoke, mut reactivate, mut rotate, mut delete) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..tries {
        let created = a.manager.create(&acme).await.expect("create");
        let (id, key) = (created.info.id, created.key.expose_secret().to_owned());

        b.cached(&key, StatusCode::OK).await;
        a.manager.revoke(&acme, id).await.expect("revoke");
        revoke.push(b.lag(&key, StatusCode::UNAUTHORIZED, Instant::now()).await);

        b.cached(&key, StatusCode::UNAUTHORIZED).await;
        a.manager.reactivate(&acme, id).await.expect("reactivate");
        reactivate.push(b.lag(&key, StatusCode::OK, Instant::now()).await);

        b.cached(&key, StatusCode::OK).await;
        let rotated = a.manager.rotate(&acme, id).await.expect("rotate");
        rotate.push(b.lag(&key, StatusCode::UNAUTHORIZED, Instant::now()).await);
        let new_key = rotated.key.expose_secret().to_owned();

        b.cached(&new_key, StatusCode::OK).await;
        a.manager.delete(&acme, id).await.expect("delete");
        delete.push(
            b.lag(&new_key, StatusCode::UNAUTHORIZED, Instant::now())
                .await,
        );
    }
    println!("| change at A | in force at B: p50 µs | p90 µs | p99 µs | max µs |");
    println!("| --- | ---: | ---: | ---: | ---: |");
    for (change, lags) in [
        ("revoke → 401", &mut revoke),
        ("reactivate → 200", &mut reactivate),
        ("rotate → old key 401", &mut rotate),
        ("delete → 401", &mut delete),
    ] {
        let (p50, p90, p99, max) = percentiles(lags);
        println!("| {change} | {p50:.0} | {p90:.0} | {p99:.0} | {max:.0} |");
    }
    let outages = b.feed.status().outages;
    if outages > 0 {
        // B failed closed meanwhile: some changes were in force without the feed.
        println!("B's feed lost its subscription {outages} times: the figures are void");
    }
    a.feed.shutdown().await;
    b.feed.shutdown().await;
    pg_drop_schema().await;
    println!();
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    // `cargo bench` passes `--bench`; anything else names the parts to run.
    let parts: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let wants = |part: &str| parts.is_empty() || parts.iter().any(|p| p == part);
    if wants("lookups") {
        lookups().await;
    }
    if wants("last-used") {
        last_used().await;
    }
    if wants("usage-flush") {
        usage_flush().await;
    }
    if wants("changes") {
        changes().await;
    }
    if wants("feed") {
        // Two workers, as two processes' feeds and requests would have.
        tokio::task::spawn_blocking(|| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("runtime")
                .block_on(feed())
        })
        .await
        .expect("the feed part");
    }
}

/// The audit note of a key the benchmark inserts itself.
fn created() -> AuditNote {
    AuditNote::now(Actor::system(), AuditAction::Create)
}
