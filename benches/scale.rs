//! How the layer's cost grows with the number of cached keys, and with the rate of unrelated
//! key changes. A plain `main` that prints tables; see BENCHMARKS.md ("Cost as the work
//! grows") for the figures and how to run it.
//!
//! `scale keys [SIZES..]`: for each size N (1 is the single hot key), N active keys in a
//! `MemoryStore`, the layer (cache raised to hold them all) around a no-op service, every key
//! warmed once, then requests in a pre-generated uniformly random key order. The cases (every
//! size, with the layer and without it on the same headers and order) are timed interleaved,
//! in rounds of `CHUNK` requests each, so the machine's drift hits them all alike. Also a
//! `floor` per size: parse, digest, a plain `HashMap` hit, the extensions insert.
//!
//! `scale churn [RATES..]`: a working set of 10^4 keys read in a loop on one thread while a
//! second thread revokes and reactivates *other* keys at each rate (changes per second).
//!
//! `scale maps [SIZES..]`: moka's `get` against sharded `RwLock<HashMap>`s, on their own.
//!
//! `scale zipf [CAPACITIES..]` (default 1000 10000): the positive cache's hit ratio when it
//! can't hold every key. For each capacity C, 2·C active keys, the layer with
//! `positive_capacity(C)` (positive TTL an hour, so only the capacity evicts), and a
//! deterministic Zipf(s = 1) request order over the 2·C keys (fixed-seed xorshift, ranks
//! shuffled over the keys): `SCALE_WARM` warm-up requests (default 10^6, at least 20·C), then
//! `SCALE_REQUESTS` measured ones (default 10^6) on a current_thread runtime. Prints the
//! resolver calls of the measured phase, the hit ratio they leave, the ideal hit ratio of a
//! cache holding exactly the C most requested keys (H(C) / H(2·C)), and ns per request.
//! With `SCALE_SHIFT=1` the measured phase reshuffles which keys are popular (how fast the
//! cache adapts; the first tenth of it is also shown on its own).
//!
//! `scale threads [THREAD COUNTS..]` (default 1 2 4): many threads on few hot keys. One layer
//! (one shared cache, every key warmed) cloned into T OS threads, each with its own
//! current_thread runtime, sending requests that rotate through H = 1, 4 or 64 hot keys from a
//! per-thread offset. `SCALE_REQUESTS` (default 10^6) is the total per case and thread count,
//! divided equally among the T threads. The cases (each H, with the layer and with a no-auth
//! baseline on the same headers) are interleaved in rounds of `CHUNK` requests in total, each
//! round started on a barrier and timed on the wall clock; ns per request is the per-thread
//! cost (wall time × T / requests), req/s the throughput of all threads together.
//!
//! `scale entries [N]` (default 10^6): resident bytes per entry of moka as the cache configures
//! it, of leaner moka configurations, and of the read index's shape, each filled with N entries
//! in a process of its own.

use std::collections::HashMap;
use std::convert::Infallible;
use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use http::{HeaderName, HeaderValue, Request, Response};
use tower::{Layer, Service, ServiceExt};
use tower_api_key::audit::{Actor, AuditAction, AuditNote};
use tower_api_key::cache::CacheConfig;
use tower_api_key::store::{AccountId, KeyId, KeyRecord, KeyStore};
use tower_api_key::{ApiKey, ApiKeyLayer, KeyDigest, KeyManager, MemoryStore, Pepper};

const HEADER: HeaderName = HeaderName::from_static("x-api-key");
/// Requests per case per round.
const CHUNK: usize = 50_000;
/// Slots of the per-thread front (`src/cache/front.rs`), for simulating its hit rate.
const FRONT_SLOTS: u64 = 64;

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("statm");
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|field| field.parse().ok())
        .expect("rss field");
    pages * 4096
}

/// A small deterministic generator for the request order.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    /// A uniform `f64` in [0, 1), from the top 53 bits.
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// `n` fresh keys: their header values, digests and (account, id).
struct Keys {
    headers: Vec<HeaderValue>,
    digests: Vec<KeyDigest>,
    ids: Vec<(AccountId, KeyId)>,
}

fn make_keys(n: usize, pepper: &Pepper) -> Keys {
    let mut keys = Keys {
        headers: Vec::with_capacity(n),
        digests: Vec::with_capacity(n),
        ids: Vec::with_capacity(n),
    };
    // Prefixes are 8 characters: at 10^6 keys a repeat is likely, and the store refuses it.
    let mut prefixes = std::collections::HashSet::with_capacity(n);
    for i in 0..n {
        let key = loop {
            let key = ApiKey::generate().expect("randomness");
            if prefixes.insert(key.prefix()) {
                break key;
            }
        };
        keys.headers
            .push(HeaderValue::from_str(key.expose_secret()).expect("header"));
        keys.digests.push(pepper.digest(&key));
        let account = AccountId::new(&format!("acct-{}", i / 1000)).expect("account");
        keys.ids.push((account, KeyId::random()));
    }
    keys
}

async fn fill(store: &dyn KeyStore, keys: &Keys, pepper: &Pepper) {
    let now = SystemTime::now();
    for (i, header) in keys.headers.iter().enumerate() {
        let key = ApiKey::parse(header.as_bytes()).expect("valid");
        let (account, id) = &keys.ids[i];
        let record = KeyRecord::new(*id, account.clone(), key.prefix(), pepper.digest(&key), now);
        store
            .insert_within_limit(
                record,
                usize::MAX,
                &AuditNote::now(Actor::system(), AuditAction::Create),
            )
            .await
            .expect("insert");
    }
}

fn request(value: &HeaderValue) -> Request<()> {
    let mut request = Request::new(());
    request.headers_mut().insert(HEADER, value.clone());
    request
}

async fn noop(_: Request<()>) -> Result<Response<String>, Infallible> {
    Ok(Response::new(String::new()))
}

/// Sends `order[from..from + count]` through `service`, returns the elapsed time.
async fn drive<S>(
    service: &mut S,
    headers: &[HeaderValue],
    order: &[u32],
    from: usize,
    count: usize,
) -> Duration
where
    S: Service<Request<()>, Error = Infallible>,
{
    let start = Instant::now();
    for &i in &order[from..from + count] {
        let ready = service.ready().await.expect("ready");
        let response = ready
            .call(request(&headers[i as usize]))
            .await
            .expect("call");
        black_box(response);
    }
    start.elapsed()
}

/// The hand-written floor of a hit: parse, digest, plain map hit, extensions insert.
fn floor(
    pepper: &Pepper,
    map: &HashMap<KeyDigest, Arc<String>>,
    headers: &[HeaderValue],
    order: &[u32],
    from: usize,
    count: usize,
) -> Duration {
    let start = Instant::now();
    for &i in &order[from..from + count] {
        let mut request = request(&headers[i as usize]);
        let value = request.headers().get(HEADER).expect("header");
        let key = ApiKey::parse(value.as_bytes()).expect("valid");
        let account = map.get(&pepper.digest(&key)).expect("known").clone();
        request.extensions_mut().insert(account);
        black_box(request);
    }
    start.elapsed()
}

/// Hit rate of a direct-mapped front of `FRONT_SLOTS` slots (indexed as `front.rs` does, by
/// the digest's first 8 bytes) over `order`, after a warm pass in key order.
fn front_hit_rate(digests: &[KeyDigest], order: &[u32]) -> f64 {
    let slot = |d: &KeyDigest| {
        let b = d.as_bytes();
        (u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) % FRONT_SLOTS)
            as usize
    };
    let mut front = [u32::MAX; FRONT_SLOTS as usize];
    for (i, d) in digests.iter().enumerate() {
        front[slot(d)] = i as u32;
    }
    let mut hits = 0u64;
    for &i in order {
        let s = slot(&digests[i as usize]);
        if front[s] == i {
            hits += 1;
        } else {
            front[s] = i;
        }
    }
    hits as f64 / order.len() as f64
}

/// The no-op inner service's function.
type NoopFn = fn(Request<()>) -> std::future::Ready<Result<Response<String>, Infallible>>;

type Svc =
    tower_api_key::ApiKeyService<tower::util::ServiceFn<NoopFn>, tower_api_key::StoreResolver>;

fn ready_noop(_: Request<()>) -> std::future::Ready<Result<Response<String>, Infallible>> {
    std::future::ready(Ok(Response::new(String::new())))
}

struct Case {
    keys: usize,
    headers: Vec<HeaderValue>,
    order: Vec<u32>,
    layer: Svc,
    floor_map: HashMap<KeyDigest, Arc<String>>,
    store_bytes: u64,
    cache_bytes: u64,
    front_hits: f64,
    // accumulated
    t_layer: Duration,
    t_base: Duration,
    t_floor: Duration,
    n: usize,
}

fn keys_mode(sizes: &[usize], requests: usize) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let pepper = Pepper::from_bytes([9; 32]);
    eprintln!(
        "size_of::<KeyIdentity>() = {} bytes",
        std::mem::size_of::<tower_api_key::KeyIdentity>()
    );
    let mut cases = Vec::new();
    for (c, &n) in sizes.iter().enumerate() {
        let keys = make_keys(n, &pepper);
        let before_store = rss_bytes();
        let store = Arc::new(MemoryStore::new());
        runtime.block_on(fill(&*store, &keys, &pepper));
        let after_store = rss_bytes();
        let manager = KeyManager::new(store, pepper.clone());
        let layer = ApiKeyLayer::for_manager(&manager)
            .cache_config(CacheConfig::default().positive_capacity((n as u64).max(100_000) * 2))
            .build();
        let noop_fn: NoopFn = ready_noop;
        let mut service: Svc = layer.layer(tower::service_fn(noop_fn));
        let warm: Vec<u32> = (0..n as u32).collect();
        runtime.block_on(drive(&mut service, &keys.headers, &warm, 0, n));
        // A second pass, so that moka has applied every pending write and housekeeping.
        runtime.block_on(drive(&mut service, &keys.headers, &warm, 0, n));
        let after_warm = rss_bytes();
        let metrics = layer.metrics();
        assert_eq!(metrics.resolver_calls, n as u64, "every key resolved once");
        let mut rng = XorShift(0x9E37_79B9_7F4A_7C15 ^ (c as u64 + 1));
        let order: Vec<u32> = (0..requests).map(|_| rng.below(n) as u32).collect();
        let front_hits = front_hit_rate(&keys.digests, &order);
        let floor_map: HashMap<KeyDigest, Arc<String>> = keys
            .digests
            .iter()
            .map(|d| (*d, Arc::new(String::from("acct"))))
            .collect();
        eprintln!(
            "built {n} keys: store {} B/key, cache {} B/key",
            (after_store - before_store) / n as u64,
            after_warm.saturating_sub(after_store) / n as u64
        );
        cases.push(Case {
            keys: n,
            headers: keys.headers,
            order,
            layer: service,
            floor_map,
            store_bytes: after_store - before_store,
            cache_bytes: after_warm.saturating_sub(after_store),
            front_hits,
            t_layer: Duration::ZERO,
            t_base: Duration::ZERO,
            t_floor: Duration::ZERO,
            n: 0,
        });
    }
    let base_fn: NoopFn = ready_noop;
    let mut base = tower::service_fn(base_fn);
    let mut from = 0;
    while from + CHUNK <= requests {
        for case in &mut cases {
            case.t_base +=
                runtime.block_on(drive(&mut base, &case.headers, &case.order, from, CHUNK));
            case.t_layer += runtime.block_on(drive(
                &mut case.layer,
                &case.headers,
                &case.order,
                from,
                CHUNK,
            ));
            case.t_floor += floor(
                &pepper,
                &case.floor_map,
                &case.headers,
                &case.order,
                from,
                CHUNK,
            );
            case.n += CHUNK;
        }
        from += CHUNK;
    }
    let ns = |t: Duration, n: usize| t.as_nanos() as f64 / n as f64;
    let reference = cases
        .iter()
        .find(|case| case.keys == 1000)
        .map(|case| ns(case.t_layer, case.n) - ns(case.t_base, case.n));
    println!(
        "| keys | layer ns/req | baseline ns/req | added ns | added / added@10^3 | floor added ns | front hit rate | store B/key | cache B/key |"
    );
    println!("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for case in &cases {
        let layer = ns(case.t_layer, case.n);
        let base = ns(case.t_base, case.n);
        let floor = ns(case.t_floor, case.n);
        let added = layer - base;
        let ratio = reference.map_or(String::from("-"), |r| format!("{:.2}x", added / r));
        println!(
            "| {} | {:.0} | {:.0} | {:+.0} | {} | {:+.0} | {:.2} % | {} | {} |",
            case.keys,
            layer,
            base,
            added,
            ratio,
            floor - base,
            case.front_hits * 100.0,
            case.store_bytes / case.keys as u64,
            case.cache_bytes / case.keys as u64,
        );
    }
}

fn churn_mode(rates: &[u64], seconds: f64) {
    const WORKING: usize = 10_000;
    const OTHERS: usize = 10_000;
    let pepper = Pepper::from_bytes([9; 32]);
    println!("| changes/s (done) | ns/req | hit ratio | store lookups beyond the first warm |");
    println!("| ---: | ---: | ---: | ---: |");
    for &rate in rates {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let keys = make_keys(WORKING + OTHERS, &pepper);
        let store = Arc::new(MemoryStore::new());
        runtime.block_on(fill(&*store, &keys, &pepper));
        let manager = Arc::new(KeyManager::new(store, pepper.clone()));
        let layer = ApiKeyLayer::for_manager(&manager).build();
        let mut service = layer.layer(tower::service_fn(noop));
        let headers = &keys.headers[..WORKING];
        let warm: Vec<u32> = (0..WORKING as u32).collect();
        runtime.block_on(drive(&mut service, headers, &warm, 0, WORKING));
        let before = layer.metrics();
        let mut rng = XorShift(0x2545_F491_4F6C_DD1D);
        let order: Vec<u32> = (0..1_000_000).map(|_| rng.below(WORKING) as u32).collect();

        let stop = Arc::new(AtomicBool::new(false));
        let changes = Arc::new(AtomicU64::new(0));
        let others: Vec<(AccountId, KeyId)> = keys.ids[WORKING..].to_vec();
        let changer = {
            let stop = Arc::clone(&stop);
            let changes = Arc::clone(&changes);
            let manager = Arc::clone(&manager);
            std::thread::spawn(move || {
                if rate == 0 {
                    return;
                }
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("runtime");
                let interval = Duration::from_secs_f64(1.0 / rate as f64);
                let start = Instant::now();
                let mut done: u64 = 0;
                while !stop.load(Ordering::Relaxed) {
                    let due = start + interval.mul_f64(done as f64);
                    let now = Instant::now();
                    if now < due {
                        let wait = due - now;
                        if wait > Duration::from_micros(200) {
                            std::thread::sleep(wait - Duration::from_micros(100));
                        } else {
                            std::thread::yield_now();
                        }
                        continue;
                    }
                    let (account, id) = &others[(done as usize / 2) % others.len()];
                    rt.block_on(async {
                        if done % 2 == 0 {
                            manager.revoke(account, *id).await.expect("revoke");
                        } else {
                            manager.reactivate(account, *id).await.expect("reactivate");
                        }
                    });
                    done += 1;
                    changes.store(done, Ordering::Relaxed);
                }
            })
        };
        let mut elapsed = Duration::ZERO;
        let mut sent = 0usize;
        let deadline = Instant::now() + Duration::from_secs_f64(seconds);
        while Instant::now() < deadline {
            let from = sent % (order.len() - CHUNK + 1);
            elapsed += runtime.block_on(drive(&mut service, headers, &order, from, CHUNK / 5));
            sent += CHUNK / 5;
        }
        stop.store(true, Ordering::Relaxed);
        changer.join().expect("changer");
        let after = layer.metrics();
        // One `find_by_prefix` per resolver call.
        let finds = after.resolver_calls - before.resolver_calls;
        let hits = after.cache_hits - before.cache_hits;
        let done = changes.load(Ordering::Relaxed) as f64 / seconds;
        println!(
            "| {rate} ({done:.0}) | {:.0} | {:.3} % | {finds} |",
            elapsed.as_nanos() as f64 / sent as f64,
            hits as f64 / sent as f64 * 100.0,
        );
    }
}

/// `n` digests from `rng`: uniform bytes, as real (keyed) digests are.
fn random_digests(rng: &mut XorShift, n: usize) -> Vec<KeyDigest> {
    (0..n)
        .map(|_| {
            let mut bytes = [0u8; 32];
            for chunk in bytes.chunks_mut(8) {
                chunk.copy_from_slice(&(rng.below(usize::MAX) as u64).to_le_bytes());
            }
            KeyDigest::from_bytes(bytes)
        })
        .collect()
}

/// `BuildHasher` taking the digest's first 8 bytes, as the crate's own `DigestHasher` does.
#[derive(Clone, Copy, Default)]
struct FirstBytes(u64);

impl std::hash::BuildHasher for FirstBytes {
    type Hasher = Self;
    fn build_hasher(&self) -> Self {
        Self(0)
    }
}

impl std::hash::Hasher for FirstBytes {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(byte);
        }
    }
    fn write_u64(&mut self, value: u64) {
        self.0 ^= value;
    }
}

type Value = (Arc<String>, Instant, u64);

/// The map alone: random `get`s over N digests in moka's variants and in sharded
/// `RwLock<HashMap>`s, interleaved, in ns per get.
fn maps_mode(sizes: &[usize], requests: usize) {
    use moka::policy::EvictionPolicy;
    let value: Value = (Arc::new(String::from("acct")), Instant::now(), 0);
    println!("| keys | moka TinyLFU+TTL | moka TinyLFU | moka LRU | 64 RwLock<HashMap> shards |");
    println!("| ---: | ---: | ---: | ---: | ---: |");
    for &n in sizes {
        let mut rng = XorShift(0x1234_5678 ^ n as u64);
        let digests = random_digests(&mut rng, n);
        let order: Vec<u32> = (0..requests).map(|_| rng.below(n) as u32).collect();
        let cap = (n as u64).max(100_000) * 2;
        let build = |ttl: bool, lru: bool| {
            let mut builder = moka::sync::Cache::builder().max_capacity(cap);
            if ttl {
                builder = builder.time_to_live(Duration::from_secs(3600));
            }
            if lru {
                builder = builder.eviction_policy(EvictionPolicy::lru());
            }
            let cache: moka::sync::Cache<KeyDigest, Value, FirstBytes> =
                builder.build_with_hasher(FirstBytes(0));
            for d in &digests {
                cache.insert(*d, value.clone());
            }
            cache.run_pending_tasks();
            cache
        };
        let mokas = [build(true, false), build(false, false), build(false, true)];
        let shards: Vec<std::sync::RwLock<HashMap<KeyDigest, Value, FirstBytes>>> = (0..64)
            .map(|_| std::sync::RwLock::new(HashMap::with_hasher(FirstBytes(0))))
            .collect();
        let shard_of = |d: &KeyDigest| (d.as_bytes()[12] & 63) as usize;
        for d in &digests {
            shards[shard_of(d)]
                .write()
                .expect("lock")
                .insert(*d, value.clone());
        }
        let mut totals = [Duration::ZERO; 4];
        let mut from = 0;
        while from + CHUNK <= requests {
            for (i, cache) in mokas.iter().enumerate() {
                let start = Instant::now();
                for &k in &order[from..from + CHUNK] {
                    black_box(cache.get(&digests[k as usize]));
                }
                totals[i] += start.elapsed();
            }
            let start = Instant::now();
            for &k in &order[from..from + CHUNK] {
                let d = &digests[k as usize];
                black_box(shards[shard_of(d)].read().expect("lock").get(d).cloned());
            }
            totals[3] += start.elapsed();
            from += CHUNK;
        }
        let ns = |t: Duration| t.as_nanos() as f64 / from as f64;
        println!(
            "| {n} | {:.0} | {:.0} | {:.0} | {:.0} |",
            ns(totals[0]),
            ns(totals[1]),
            ns(totals[2]),
            ns(totals[3])
        );
    }
}

/// Resident bytes per entry of one map shape holding `n` accepted-key entries, measured in a
/// process of its own (`entries-one SHAPE N`), so that one shape's freed memory can't be
/// counted against the next.
fn entries_one(shape: &str, n: usize) {
    let digests = random_digests(&mut XorShift(0x5EED ^ n as u64), n);
    // One account per key, allocated before the measurement: every shape shares them.
    let accounts: Vec<Arc<String>> = (0..n).map(|i| Arc::new(format!("{i}"))).collect();
    let now = Instant::now();
    let cap = (n as u64) * 2;
    let before = rss_bytes();
    let held: Box<dyn std::any::Any> = match shape {
        "moka" | "moka-no-ttl" => {
            let mut builder = moka::sync::Cache::builder().max_capacity(cap);
            if shape == "moka" {
                builder = builder.time_to_live(Duration::from_secs(3600));
            }
            let cache: moka::sync::Cache<KeyDigest, Value, FirstBytes> =
                builder.build_with_hasher(FirstBytes(0));
            for (d, a) in digests.iter().zip(&accounts) {
                cache.insert(*d, (Arc::clone(a), now, 0));
            }
            cache.run_pending_tasks();
            Box::new(cache)
        }
        "moka-unit" => {
            let cache: moka::sync::Cache<KeyDigest, (), FirstBytes> = moka::sync::Cache::builder()
                .max_capacity(cap)
                .time_to_live(Duration::from_secs(3600))
                .build_with_hasher(FirstBytes(0));
            for d in &digests {
                cache.insert(*d, ());
            }
            cache.run_pending_tasks();
            Box::new(cache)
        }
        "moka-u64-unit" => {
            let cache: moka::sync::Cache<u64, (), FirstBytes> = moka::sync::Cache::builder()
                .max_capacity(cap)
                .build_with_hasher(FirstBytes(0));
            for d in &digests {
                let b = d.as_bytes();
                cache.insert(
                    u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]),
                    (),
                );
            }
            cache.run_pending_tasks();
            Box::new(cache)
        }
        "shards" => {
            let mut shards: Vec<HashMap<KeyDigest, Value, FirstBytes>> = (0..64)
                .map(|_| HashMap::with_hasher(FirstBytes(0)))
                .collect();
            for (d, a) in digests.iter().zip(&accounts) {
                shards[usize::from(d.as_bytes()[8]) % 64].insert(*d, (Arc::clone(a), now, 0));
            }
            Box::new(shards)
        }
        other => panic!("unknown shape {other}"),
    };
    let after = rss_bytes();
    black_box(&held);
    println!("{}", after.saturating_sub(before) / n as u64);
}

/// `entries [N]`: resident bytes per entry of moka as the cache configures it, of leaner moka
/// configurations, and of the read index's shape (64 shards of plain maps), at N entries.
fn entries_mode(n: usize) {
    let exe = std::env::current_exe().expect("own path");
    println!("| shape ({n} entries) | B per entry |");
    println!("| --- | ---: |");
    for (shape, what) in [
        (
            "moka",
            "moka as the cache has it: digest key, (Arc, Instant, u64) value, TTL",
        ),
        ("moka-no-ttl", "the same without a TTL"),
        ("moka-unit", "digest key, no value, TTL"),
        (
            "moka-u64-unit",
            "64-bit key, no value, no TTL (moka's leanest)",
        ),
        (
            "shards",
            "64 shards of plain maps, the index's shape and entry",
        ),
    ] {
        let out = std::process::Command::new(&exe)
            .args(["entries-one", shape, &n.to_string()])
            .output()
            .expect("run a shape");
        let bytes = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        println!("| {what} | {bytes} |");
    }
}

/// Zipf(s = 1) over `n` ranks: the cumulative probabilities, for sampling by binary search.
fn zipf_cdf(n: usize) -> Vec<f64> {
    let total: f64 = (1..=n).map(|k| 1.0 / k as f64).sum();
    let mut sum = 0.0;
    let mut cdf: Vec<f64> = (1..=n)
        .map(|k| {
            sum += 1.0 / k as f64;
            sum / total
        })
        .collect();
    // Rounding may leave the last value just under 1.
    if let Some(last) = cdf.last_mut() {
        *last = 1.0;
    }
    cdf
}

/// Harmonic number H(n) = 1 + 1/2 + … + 1/n.
fn harmonic(n: usize) -> f64 {
    (1..=n).map(|k| 1.0 / k as f64).sum()
}

/// `count` requests drawn from Zipf(s = 1) over `keys` keys, as key indexes. Rank r (1 the
/// most requested) is key `rank_to_key[r - 1]`, a fixed shuffle, so that popularity isn't
/// correlated with the order the keys were inserted in.
fn zipf_order(cdf: &[f64], rank_to_key: &[u32], rng: &mut XorShift, count: usize) -> Vec<u32> {
    (0..count)
        .map(|_| {
            let u = rng.unit();
            let rank = cdf.partition_point(|&c| c <= u).min(cdf.len() - 1);
            rank_to_key[rank]
        })
        .collect()
}

/// `scale zipf`: the positive cache's hit ratio under a skewed load it can't hold entirely.
/// For each capacity C: 2·C active keys, `positive_capacity(C)` (TTL an hour, so only the
/// capacity evicts), a fixed-seed Zipf(s = 1) request order over the 2·C keys (ranks shuffled),
/// `warm` requests unmeasured, then `measured` requests; resolver calls in the measured phase
/// are the misses.
fn zipf_mode(capacities: &[usize], warm: usize, measured: usize) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let pepper = Pepper::from_bytes([9; 32]);
    println!(
        "| capacity | keys | requests | resolver calls | hit ratio | hit ratio, first tenth | ideal hit ratio (top C of Zipf) | ns/req |"
    );
    println!("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    let shift = std::env::var("SCALE_SHIFT").is_ok_and(|v| !v.is_empty() && v != "0");
    for &capacity in capacities {
        let n = capacity * 2;
        let warm = warm.max(20 * capacity);
        let keys = make_keys(n, &pepper);
        let store = Arc::new(MemoryStore::new());
        runtime.block_on(fill(&*store, &keys, &pepper));
        let manager = KeyManager::new(store, pepper.clone());
        let layer = ApiKeyLayer::for_manager(&manager)
            .cache_config(
                CacheConfig::default()
                    .positive_capacity(capacity as u64)
                    .positive_ttl(Duration::from_secs(3600)),
            )
            .build();
        let noop_fn: NoopFn = ready_noop;
        let mut service: Svc = layer.layer(tower::service_fn(noop_fn));

        // The same sequence for a capacity on every run and every build.
        let mut rng = XorShift(0x5DEE_CE66_D1CE_4E5B ^ capacity as u64);
        let mut rank_to_key: Vec<u32> = (0..n as u32).collect();
        for i in (1..n).rev() {
            rank_to_key.swap(i, rng.below(i + 1));
        }
        let cdf = zipf_cdf(n);
        let mut order = zipf_order(&cdf, &rank_to_key, &mut rng, warm);
        if shift {
            // The measured phase asks for the keys in a new order of popularity: how fast
            // the cache adapts.
            for i in (1..n).rev() {
                rank_to_key.swap(i, rng.below(i + 1));
            }
        }
        order.extend(zipf_order(&cdf, &rank_to_key, &mut rng, measured));
        eprintln!(
            "zipf: {n} keys, capacity {capacity}, {warm} warm-up requests, {measured} measured{}",
            if shift {
                ", popularity reshuffled after the warm-up"
            } else {
                ""
            }
        );

        runtime.block_on(drive(&mut service, &keys.headers, &order, 0, warm));
        let before = layer.metrics();
        // The first tenth on its own: with a reshuffle, how fast the cache catches up.
        let tenth = measured / 10;
        let elapsed_first =
            runtime.block_on(drive(&mut service, &keys.headers, &order, warm, tenth));
        let first = layer.metrics();
        let elapsed = elapsed_first
            + runtime.block_on(drive(
                &mut service,
                &keys.headers,
                &order,
                warm + tenth,
                measured - tenth,
            ));
        let after = layer.metrics();
        assert_eq!(
            after.accepted - before.accepted,
            measured as u64,
            "every request accepted"
        );
        let calls = after.resolver_calls - before.resolver_calls;
        let hit = 1.0 - calls as f64 / measured as f64;
        let first_hit = 1.0 - (first.resolver_calls - before.resolver_calls) as f64 / tenth as f64;
        let ideal = harmonic(capacity) / harmonic(n);
        println!(
            "| {capacity} | {n} | {measured} | {calls} | {:.2} % | {:.2} % | {:.2} % | {:.0} |",
            hit * 100.0,
            first_hit * 100.0,
            ideal * 100.0,
            elapsed.as_nanos() as f64 / measured as f64,
        );
    }
}

/// One case of `scale threads`: the layer or the no-auth baseline, over `hot` keys.
#[derive(Clone, Copy)]
struct ThreadCase {
    hot: usize,
    layer: bool,
}

/// `scale threads`: many threads on few hot keys. One layer (one shared cache) cloned into T OS
/// threads, each with its own current_thread runtime, rotating through H hot keys from its own
/// offset; the cases (H = 1, 4, 64; layer and no-auth baseline) interleaved in rounds, every
/// round started on a barrier and timed on the wall clock from the first thread's start to the
/// last one's end. `requests` per case in total, divided among the threads.
fn threads_mode(thread_counts: &[usize], requests: usize) {
    const HOT: [usize; 3] = [1, 4, 64];
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let pepper = Pepper::from_bytes([9; 32]);
    let most = HOT.iter().copied().max().unwrap_or(1);
    let keys = make_keys(most, &pepper);
    let store = Arc::new(MemoryStore::new());
    runtime.block_on(fill(&*store, &keys, &pepper));
    let manager = KeyManager::new(store, pepper.clone());
    let layer = ApiKeyLayer::for_manager(&manager)
        .cache_config(CacheConfig::default().positive_ttl(Duration::from_secs(3600)))
        .build();
    {
        let noop_fn: NoopFn = ready_noop;
        let mut service: Svc = layer.layer(tower::service_fn(noop_fn));
        let warm: Vec<u32> = (0..most as u32).collect();
        runtime.block_on(drive(&mut service, &keys.headers, &warm, 0, most));
        runtime.block_on(drive(&mut service, &keys.headers, &warm, 0, most));
    }
    assert_eq!(
        layer.metrics().resolver_calls,
        most as u64,
        "every key resolved once"
    );
    let secrets: Arc<Vec<Vec<u8>>> =
        Arc::new(keys.headers.iter().map(|h| h.as_bytes().to_vec()).collect());
    let cases: Vec<ThreadCase> = HOT
        .iter()
        .flat_map(|&hot| {
            [
                ThreadCase { hot, layer: false },
                ThreadCase { hot, layer: true },
            ]
        })
        .collect();
    println!(
        "| threads | hot keys | layer ns/req (per thread) | baseline ns/req | added ns | layer req/s | baseline req/s | resolver calls |"
    );
    println!("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for &threads in thread_counts {
        let threads = threads.max(1);
        let per_round = (CHUNK / threads).max(1);
        let rounds = (requests / (per_round * threads)).max(1);
        let barrier = Arc::new(std::sync::Barrier::new(threads));
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                let barrier = Arc::clone(&barrier);
                let secrets = Arc::clone(&secrets);
                let layer = layer.clone();
                let cases = cases.clone();
                std::thread::spawn(move || {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .expect("runtime");
                    // This thread's own header values: cloning a shared one would make every
                    // thread bump the same reference count.
                    let headers: Vec<HeaderValue> = secrets
                        .iter()
                        .map(|s| HeaderValue::from_bytes(s).expect("header"))
                        .collect();
                    let noop_fn: NoopFn = ready_noop;
                    let mut service: Svc = layer.layer(tower::service_fn(noop_fn));
                    let mut base = tower::service_fn(noop_fn);
                    let orders: Vec<Vec<u32>> = cases
                        .iter()
                        .map(|case| {
                            let offset = t * case.hot / threads;
                            (0..per_round)
                                .map(|i| ((offset + i) % case.hot) as u32)
                                .collect()
                        })
                        .collect();
                    // When this thread started and ended each case's share, round after round.
                    let mut spans = vec![Vec::with_capacity(rounds); cases.len()];
                    for _ in 0..rounds {
                        for ((case, order), spans) in cases.iter().zip(&orders).zip(&mut spans) {
                            barrier.wait();
                            let start = Instant::now();
                            if case.layer {
                                rt.block_on(drive(&mut service, &headers, order, 0, per_round));
                            } else {
                                rt.block_on(drive(&mut base, &headers, order, 0, per_round));
                            }
                            spans.push((start, Instant::now()));
                        }
                    }
                    spans
                })
            })
            .collect();
        let before = layer.metrics();
        let spans: Vec<Vec<Vec<(Instant, Instant)>>> = workers
            .into_iter()
            .map(|worker| worker.join().expect("worker"))
            .collect();
        // A round's wall time runs from the first thread's start to the last thread's end,
        // taken by the threads themselves: a waiting timer thread could wake late when there
        // are more threads than cores.
        let wall: Vec<Duration> = (0..cases.len())
            .map(|c| {
                (0..rounds)
                    .map(|r| {
                        let start = spans.iter().map(|t| t[c][r].0).min().expect("a thread");
                        let end = spans.iter().map(|t| t[c][r].1).max().expect("a thread");
                        end - start
                    })
                    .sum()
            })
            .collect();
        let calls = layer.metrics().resolver_calls - before.resolver_calls;
        let sent = (rounds * per_round * threads) as f64;
        // Per-thread cost: each thread spent the whole wall time on its share of the requests.
        let ns = |t: Duration| t.as_nanos() as f64 * threads as f64 / sent;
        let per_second = |t: Duration| sent / t.as_secs_f64();
        for (pair, hot) in wall.chunks(2).zip(HOT) {
            let (base, with_layer) = (pair[0], pair[1]);
            println!(
                "| {threads} | {hot} | {:.0} | {:.0} | {:+.0} | {:.0} | {:.0} | {calls} |",
                ns(with_layer),
                ns(base),
                ns(with_layer) - ns(base),
                per_second(with_layer),
                per_second(base),
            );
        }
    }
}

/// A count from the environment (`_` separators allowed), if set.
fn env_number(name: &str) -> Option<usize> {
    std::env::var(name)
        .ok()
        .and_then(|value| value.replace('_', "").parse().ok())
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let numbers = |from: usize| -> Vec<u64> {
        args.iter()
            .skip(from)
            .filter_map(|a| a.replace('_', "").parse().ok())
            .collect()
    };
    match args.first().map(String::as_str) {
        Some("churn") => {
            let rates = numbers(1);
            let rates = if rates.is_empty() {
                vec![0, 10, 100, 1_000, 10_000]
            } else {
                rates
            };
            churn_mode(&rates, 3.0);
        }
        Some("entries") => {
            let n = numbers(1).first().map_or(1_000_000, |&n| n as usize);
            entries_mode(n);
        }
        Some("entries-one") => {
            let shape = args.get(1).map(String::as_str).unwrap_or("moka");
            let n = numbers(2).first().map_or(1_000_000, |&n| n as usize);
            entries_one(shape, n);
        }
        Some("maps") => {
            let sizes: Vec<usize> = numbers(1).into_iter().map(|n| n as usize).collect();
            let sizes = if sizes.is_empty() {
                vec![1_000, 10_000, 100_000, 1_000_000]
            } else {
                sizes
            };
            maps_mode(&sizes, 1_000_000);
        }
        Some("keys") | None => {
            let sizes: Vec<usize> = numbers(1).into_iter().map(|n| n as usize).collect();
            let sizes = if sizes.is_empty() {
                vec![1, 1_000, 10_000, 100_000, 1_000_000]
            } else {
                sizes
            };
            let requests = env_number("SCALE_REQUESTS").unwrap_or(1_000_000);
            keys_mode(&sizes, requests);
        }
        Some("zipf") => {
            let capacities: Vec<usize> = numbers(1).into_iter().map(|n| n as usize).collect();
            let capacities = if capacities.is_empty() {
                vec![1_000, 10_000]
            } else {
                capacities
            };
            let measured = env_number("SCALE_REQUESTS").unwrap_or(1_000_000);
            let warm = env_number("SCALE_WARM").unwrap_or(1_000_000);
            zipf_mode(&capacities, warm, measured);
        }
        Some("threads") => {
            let counts: Vec<usize> = numbers(1).into_iter().map(|n| n as usize).collect();
            let counts = if counts.is_empty() {
                vec![1, 2, 4]
            } else {
                counts
            };
            let requests = env_number("SCALE_REQUESTS").unwrap_or(1_000_000);
            threads_mode(&counts, requests);
        }
        Some(other) => panic!("unknown mode {other}: keys, churn, maps, zipf, threads or entries"),
    }
}
