//! Floods (ARCHITECTURE.md, *Hardening*): random well-formed unknown keys, malformed keys, and
//! guesses a store never answers. Each test prints its counts (run with `--nocapture` to see
//! them) and asserts the bound that would break if the property did; none reads the clock:
//!
//! - the negative cache bounds store lookups: one per distinct unknown key while its entry
//!   lives, none for a repeat;
//! - malformed keys never reach the cache or the store;
//! - the negative cache's capacity bounds its entries and this process's memory, and a flood
//!   can't evict valid keys;
//! - `max_concurrent_lookups` bounds the store's work and sheds the excess with 503 instead of
//!   a queue; keys accepted recently are not shed.
//!
//! How long shedding takes is measured by `benches/auth.rs` (case `layer/reject_shed`).

use std::future::ready;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use crate::support::exclusive::exclusive;
use crate::support::keys::unknown;
use crate::support::rng::XorShift;
use crate::support::service::{Stack, stack, status};
use crate::support::wait::until;
use http::StatusCode;
use tokio::sync::Semaphore;
use tower_api_key::cache::CacheConfig;
use tower_api_key::{
    ApiKeyLayer, KeyManager, KeyPrefix, KeyRecord, KeyStore, MemoryStore, Pepper, StoreError,
    StoreResolver,
};

// ===== a store that counts =====

/// A memory store whose `find_by_prefix` counts calls and how many run at once; told to, it
/// holds the lookups of prefixes it doesn't know until released (a store that never answers
/// a guess, the worst a flood of guesses can meet).
struct CountingStore {
    inner: MemoryStore,
    lookups: AtomicUsize,
    running: AtomicUsize,
    most_running: AtomicUsize,
    holds_guesses: bool,
    released: Semaphore,
}

impl CountingStore {
    fn new() -> Arc<Self> {
        Self::with(false)
    }

    /// A store that holds every lookup of an unknown prefix until [`release`](Self::release).
    fn holding_guesses() -> Arc<Self> {
        Self::with(true)
    }

    fn with(holds_guesses: bool) -> Arc<Self> {
        Arc::new(Self {
            inner: MemoryStore::new(),
            lookups: AtomicUsize::new(0),
            running: AtomicUsize::new(0),
            most_running: AtomicUsize::new(0),
            holds_guesses,
            released: Semaphore::new(0),
        })
    }

    /// Lets every held lookup answer, now and later.
    fn release(&self) {
        self.released.add_permits(Semaphore::MAX_PERMITS / 2);
    }

    fn lookups(&self) -> usize {
        self.lookups.load(Ordering::SeqCst)
    }

    fn running(&self) -> usize {
        self.running.load(Ordering::SeqCst)
    }
}

impl crate::support::hooks::StoreHooks for CountingStore {
    fn records(&self) -> &MemoryStore {
        &self.inner
    }
    async fn find_by_prefix(&self, prefix: &KeyPrefix) -> Result<Option<KeyRecord>, StoreError> {
        self.lookups.fetch_add(1, Ordering::SeqCst);
        let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
        self.most_running.fetch_max(now, Ordering::SeqCst);
        let found = self.inner.find_by_prefix(prefix).await;
        if self.holds_guesses && matches!(found, Ok(None)) {
            let _released = self.released.acquire().await.expect("never closed");
        }
        self.running.fetch_sub(1, Ordering::SeqCst);
        found
    }
}

crate::support::hooks::hooked_key_store!(CountingStore);

// ===== the stack =====

struct Fixture {
    store: Arc<CountingStore>,
    layer: ApiKeyLayer<StoreResolver>,
    service: Stack,
    valid: String,
}

async fn fixture(store: Arc<CountingStore>, config: CacheConfig) -> Fixture {
    let manager = KeyManager::new(store.clone(), Pepper::from_bytes([4; 32]));
    let valid = manager
        .create(&"acme".parse().expect("account"))
        .await
        .expect("create")
        .key
        .expose_secret()
        .to_owned();
    let layer = ApiKeyLayer::for_manager(&manager)
        .cache_config(config)
        .build();
    let service = stack(&layer);
    Fixture {
        store,
        layer,
        service,
        valid,
    }
}

/// Sends every value from `tasks` concurrent tasks; returns each status, in input order.
async fn flood(service: &Stack, values: Arc<Vec<Vec<u8>>>, tasks: usize) -> Vec<StatusCode> {
    let handles: Vec<_> = (0..tasks)
        .map(|task| {
            let (service, values) = (service.clone(), values.clone());
            tokio::spawn(async move {
                let mut statuses = Vec::new();
                for index in (task..values.len()).step_by(tasks) {
                    statuses.push((index, status(&service, &values[index]).await));
                }
                statuses
            })
        })
        .collect();
    let mut statuses = vec![StatusCode::OK; values.len()];
    for handle in handles {
        for (index, status) in handle.await.expect("flood task") {
            statuses[index] = status;
        }
    }
    statuses
}

fn unknown_keys(n: usize) -> Vec<Vec<u8>> {
    (0..n).map(|_| unknown().into_bytes()).collect()
}

fn count(statuses: &[StatusCode], status: StatusCode) -> usize {
    statuses.iter().filter(|s| **s == status).count()
}

/// Resident set size of this process, in KiB (Linux; `None` elsewhere).
fn rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))?;
    line.trim().trim_end_matches("kB").trim().parse().ok()
}

// ===== the floods =====

const FLOOD: usize = 20_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_unknown_keys_costs_one_store_lookup_per_distinct_key() {
    let _exclusive = exclusive().await;
    let f = fixture(
        CountingStore::new(),
        // Entries outlive both passes however slow the machine: the test is about counts.
        CacheConfig::default()
            .negative_capacity(50_000)
            .negative_ttl(Duration::from_secs(3600)),
    )
    .await;
    let keys = Arc::new(unknown_keys(FLOOD));

    let first = flood(&f.service, keys.clone(), 8).await;
    assert_eq!(
        count(&first, StatusCode::UNAUTHORIZED),
        FLOOD,
        "all refused"
    );
    assert_eq!(
        f.store.lookups(),
        FLOOD,
        "one store lookup per distinct key"
    );

    // The same keys again: every one is answered by its negative entry.
    let second = flood(&f.service, keys.clone(), 8).await;
    assert_eq!(count(&second, StatusCode::UNAUTHORIZED), FLOOD);
    assert_eq!(f.store.lookups(), FLOOD, "repeats never reach the store");

    // One unknown key hammered by many concurrent requests: one lookup in all.
    let one = Arc::new(vec![unknown_keys(1).remove(0); 5_000]);
    let hammered = flood(&f.service, one, 16).await;
    assert_eq!(count(&hammered, StatusCode::UNAUTHORIZED), 5_000);
    assert_eq!(f.store.lookups(), FLOOD + 1);

    // Valid keys still get in, and nothing was shed or failed.
    assert_eq!(status(&f.service, f.valid.as_bytes()).await, StatusCode::OK);
    let metrics = f.layer.metrics();
    assert_eq!(metrics.unavailable, 0);
    assert_eq!(metrics.resolver_calls, (FLOOD + 2) as u64);
    let (positive, negative) = f.layer.cache().entry_counts();
    println!(
        "unknown-key flood: {FLOOD} distinct keys x2 + 1 key x5000 -> {} store lookups \
         (max {} at once); cache entries: {positive} positive, {negative} negative; \
         coalesced {}",
        f.store.lookups(),
        f.store.most_running.load(Ordering::SeqCst),
        metrics.coalesced_lookups,
    );
}

const BASE62_AND_DOT: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.";

/// Values a client could send that are not well-formed keys, of many shapes.
fn malformed_values(n: usize, valid: &str) -> Vec<Vec<u8>> {
    let mut rng = XorShift::seeded(0x5eed_1234_abcd_ef01);
    let valid = valid.as_bytes();
    (0..n)
        .map(|i| {
            let mut value = match i % 8 {
                // Arbitrary header-legal bytes of any length up to 200.
                0 => (0..rng.below(200))
                    .map(|_| match rng.below(3) {
                        0 => b' ' + rng.below(95) as u8,
                        1 => 0x80 + rng.below(128) as u8,
                        _ => b'\t',
                    })
                    .collect(),
                // The right length, base62 garbage: fails the checksum (or the alphabet).
                1 => (0..valid.len())
                    .map(|_| BASE62_AND_DOT[rng.below(BASE62_AND_DOT.len())])
                    .collect(),
                // A valid key with one character changed.
                2 => {
                    let mut key = valid.to_vec();
                    let at = rng.below(key.len());
                    key[at] = if key[at] == b'A' { b'B' } else { b'A' };
                    key
                }
                // Upper-cased (the prefix is lower-case only).
                3 => valid.to_ascii_uppercase(),
                // Wrapped as a bearer token.
                4 => [&b"Bearer "[..], valid].concat(),
                // The prefix alone, the body alone.
                5 => valid[..8].to_vec(),
                6 => valid[9..].to_vec(),
                // Far too long.
                _ => vec![b'a'; 1024 + rng.below(4096)],
            };
            // Make sure no case is, by chance, the valid key.
            if value == valid {
                value.push(b'x');
            }
            value
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_keys_never_reach_the_cache_or_the_store() {
    let _exclusive = exclusive().await;
    let f = fixture(CountingStore::new(), CacheConfig::default()).await;
    let values = Arc::new(malformed_values(FLOOD, &f.valid));
    let statuses = flood(&f.service, values, 8).await;

    assert_eq!(count(&statuses, StatusCode::UNAUTHORIZED), FLOOD);
    assert_eq!(f.store.lookups(), 0, "no malformed key reached the store");
    let metrics = f.layer.metrics();
    assert_eq!(
        metrics.cache_hits + metrics.cache_misses,
        0,
        "nor the cache"
    );
    assert_eq!(metrics.resolver_calls, 0);
    assert_eq!(metrics.invalid, FLOOD as u64);
    assert_eq!(f.layer.cache().entry_counts(), (0, 0));
    println!("malformed flood: {FLOOD} values -> 0 store lookups, 0 cache lookups");
}

/// Sends fresh unknown keys until moka has applied its evictions (it does so in batches on
/// later writes) and the negative entries are within `capacity`; returns how many it sent.
async fn settle_negative_entries(f: &Fixture, capacity: u64) -> usize {
    let mut extra = 0;
    while f.layer.cache().entry_counts().1 > capacity && extra < 2_000 {
        let key = unknown_keys(1).remove(0);
        assert_eq!(status(&f.service, &key).await, StatusCode::UNAUTHORIZED);
        extra += 1;
        if extra % 50 == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    extra
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_negative_cache_capacity_bounds_its_entries_and_memory_and_spares_valid_keys() {
    let _exclusive = exclusive().await;
    const CAPACITY: u64 = 1_000;
    const ROUNDS: usize = 4;
    let f = fixture(
        CountingStore::new(),
        CacheConfig::default().negative_capacity(CAPACITY),
    )
    .await;
    // Cache the valid key first: the flood must not evict it.
    assert_eq!(status(&f.service, f.valid.as_bytes()).await, StatusCode::OK);
    let lookups_before = f.store.lookups();

    let mut sent = 0;
    let mut rss = Vec::new();
    for _ in 0..ROUNDS {
        let keys = Arc::new(unknown_keys(FLOOD));
        let statuses = flood(&f.service, keys, 8).await;
        assert_eq!(count(&statuses, StatusCode::UNAUTHORIZED), FLOOD);
        sent += FLOOD + settle_negative_entries(&f, CAPACITY).await;
        let negative = f.layer.cache().entry_counts().1;
        assert!(
            negative <= CAPACITY,
            "{negative} negative entries for a capacity of {CAPACITY}"
        );
        rss.push(rss_kib());
    }

    // The valid key is still a cache hit: no store lookup for it.
    let lookups = f.store.lookups();
    assert_eq!(status(&f.service, f.valid.as_bytes()).await, StatusCode::OK);
    assert_eq!(f.store.lookups(), lookups, "the valid key was not evicted");
    assert_eq!(lookups - lookups_before, sent);
    let (positive, negative) = f.layer.cache().entry_counts();
    println!(
        "bounded negative cache: {sent} distinct unknown keys in {ROUNDS} rounds -> \
         {negative} negative entries (capacity {CAPACITY}), {positive} positive; \
         RSS after each round (KiB): {rss:?}"
    );
    // Past the first round the cache is full: more keys must not grow the process. Measured
    // with an unbounded negative cache, the same 60,000 keys grew it by about 21 MiB (some
    // 360 bytes per entry in a debug build); bounded, by about 1 MiB.
    if let (Some(Some(first)), Some(Some(last))) = (rss.first(), rss.last()) {
        let growth = last.saturating_sub(*first);
        assert!(
            growth < 4 * 1024,
            "RSS grew by {growth} KiB over {} more unknown keys",
            sent - FLOOD
        );
    }
}

/// A retried unknown key must win its place in a full negative cache. When the cache asked
/// moka with `contains_key` (not a read, so TinyLFU never learned the key was retried) every
/// retry reached the store: 50 of 50. Reading with `get`, as `cached` does, makes it 3 of 50.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_unknown_key_reaches_the_store_once_even_while_a_flood_fills_the_cache() {
    let _exclusive = exclusive().await;
    const CAPACITY: u64 = 1_000;
    let f = fixture(
        CountingStore::new(),
        CacheConfig::default().negative_capacity(CAPACITY),
    )
    .await;
    // Fill the negative cache with one-off keys first.
    let filler = Arc::new(unknown_keys(4 * CAPACITY as usize));
    flood(&f.service, filler, 8).await;
    settle_negative_entries(&f, CAPACITY).await;

    // A guesser retries one key while the flood goes on around it.
    let guess = unknown_keys(1).remove(0);
    let mut guess_lookups = 0;
    for _ in 0..50 {
        let before = f.store.lookups();
        assert_eq!(status(&f.service, &guess).await, StatusCode::UNAUTHORIZED);
        guess_lookups += f.store.lookups() - before;
        let more = Arc::new(unknown_keys(100));
        flood(&f.service, more, 4).await;
    }
    println!(
        "a repeated unknown key amid a flood that keeps a {CAPACITY}-entry negative cache \
         full: 50 tries -> {guess_lookups} store lookups"
    );
    assert!(
        // TinyLFU admits the retried key once its frequency beats the eviction victim's: a
        // few tries, not one per try.
        guess_lookups <= 5,
        "the retried key reached the store {guess_lookups} times in 50 tries"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lookups_beyond_the_limit_are_shed_with_503_while_the_store_holds_the_running_ones() {
    let _exclusive = exclusive().await;
    const LIMIT: usize = 16;
    const CLIENTS: usize = 64;
    const EACH: usize = 100;
    let f = fixture(
        CountingStore::holding_guesses(),
        // No timeout: the running lookups keep their permits until the store answers.
        CacheConfig::default()
            .max_concurrent_lookups(Some(LIMIT))
            .lookup_timeout(None),
    )
    .await;

    // LIMIT guesses take every permit, and the store holds them.
    let running: Vec<_> = (0..LIMIT)
        .map(|_| {
            let service = f.service.clone();
            tokio::spawn(async move { status(&service, unknown()).await })
        })
        .collect();
    until("the limit's lookups to run", || {
        ready(f.store.running() == LIMIT)
    })
    .await;

    // Meanwhile a flood: every guess is answered 503, none queues, none reaches the store.
    let statuses = flood(&f.service, Arc::new(unknown_keys(CLIENTS * EACH)), CLIENTS).await;
    let shed = count(&statuses, StatusCode::SERVICE_UNAVAILABLE);
    println!(
        "a store holding {LIMIT} lookups, limit {LIMIT}: {CLIENTS} clients x {EACH} guesses \
         -> {shed} shed with 503, {} store lookups",
        f.store.lookups()
    );
    assert_eq!(shed, CLIENTS * EACH, "every guess beyond the limit shed");
    assert_eq!(
        f.store.lookups(),
        LIMIT,
        "the store saw no more than the limit"
    );
    assert_eq!(f.layer.metrics().lookups_shed, (CLIENTS * EACH) as u64);

    f.store.release();
    for request in running {
        assert_eq!(request.await.expect("request"), StatusCode::UNAUTHORIZED);
    }
    assert_eq!(f.store.most_running.load(Ordering::SeqCst), LIMIT);
    // Once the store answers, permits are back: a valid key is looked up and let in.
    assert_eq!(status(&f.service, f.valid.as_bytes()).await, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_guessed_keys_does_not_lock_out_keys_accepted_recently() {
    let _exclusive = exclusive().await;
    const LIMIT: usize = 64;
    // The store never answers a guess while the flood lasts: guesses take every lookup the
    // layer may start, and keep them.
    let store = CountingStore::holding_guesses();
    let manager = KeyManager::new(store.clone(), Pepper::from_bytes([4; 32]));
    let mut valid = Vec::new();
    for account in 0..7 {
        let account = format!("account-{account}").parse().expect("account");
        for _ in 0..3 {
            let created = manager.create(&account).await.expect("create");
            valid.push(created.key.expose_secret().to_owned());
        }
    }
    let layer = ApiKeyLayer::for_manager(&manager)
        .cache_config(
            CacheConfig::default()
                .max_concurrent_lookups(Some(LIMIT))
                .lookup_timeout(None),
        )
        .build();
    let service: Stack = stack(&layer);
    // Every valid key is seen once before the flood.
    for key in &valid {
        assert_eq!(status(&service, key.as_bytes()).await, StatusCode::OK);
    }

    let stop = Arc::new(AtomicBool::new(false));
    // Far more guesses in flight than the lookups they may start.
    let flooders: Vec<_> = (0..256)
        .map(|_| {
            let (service, stop) = (service.clone(), stop.clone());
            tokio::spawn(async move {
                let (mut sent, mut shed) = (0usize, 0usize);
                while !stop.load(Ordering::SeqCst) {
                    let guess = unknown_keys(1).remove(0);
                    let status = status(&service, &guess).await;
                    sent += 1;
                    shed += usize::from(status == StatusCode::SERVICE_UNAVAILABLE);
                    tokio::task::yield_now().await;
                }
                (sent, shed)
            })
        })
        .collect();
    until("guesses to take every lookup", || {
        ready(store.running() == LIMIT)
    })
    .await;

    const ROUNDS: usize = 50;
    let (mut legit, mut accepted) = (0usize, 0usize);
    for _ in 0..ROUNDS {
        // Every entry expires at once (as after a TTL, or a change feed's loss): each valid
        // key must be resolved again, in the middle of the flood.
        layer
            .cache()
            .invalidate(&tower_api_key::invalidation::Invalidation::All);
        let requests: Vec<_> = valid
            .iter()
            .map(|key| {
                let (service, key) = (service.clone(), key.clone());
                tokio::spawn(async move { status(&service, key.as_bytes()).await })
            })
            .collect();
        for request in requests {
            legit += 1;
            accepted += usize::from(request.await.expect("request") == StatusCode::OK);
        }
    }
    // The guesses held every lookup the layer may start throughout.
    assert_eq!(store.running(), LIMIT);
    stop.store(true, Ordering::SeqCst);
    store.release();
    let (mut sent, mut shed) = (0, 0);
    for flooder in flooders {
        let (s, d) = flooder.await.expect("flooder");
        sent += s;
        shed += d;
    }
    println!(
        "guessed-key flood: {sent} guesses ({shed} shed with 503) while {LIMIT} held every \
         lookup; {accepted}/{legit} requests with recently accepted keys succeeded"
    );
    assert_eq!(
        accepted, legit,
        "requests with recently accepted keys refused"
    );
}
