//! The read index in front of moka, seen through the layer: a cache far smaller than the
//! working set evicts and admits keys all the time, and through all of it a revoked key is
//! refused at once, every other key is accepted, and the index ends holding exactly what moka
//! holds (ARCHITECTURE.md, *The cache*, step 4).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use http::StatusCode;
use tower_api_key::cache::CacheConfig;
use tower_api_key::{ApiKeyLayer, KeyManager, MemoryStore};

use crate::support::service::{stack, status};
use crate::support::{account, pepper};

/// Accepted keys the cache may hold: far fewer than the keys in use.
const CAPACITY: u64 = 8;
/// Keys in use (three per account, the limit).
const KEYS: usize = 30;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_small_cache_churning_its_index_never_lets_a_revoked_key_in() {
    let manager = KeyManager::new(Arc::new(MemoryStore::new()), pepper());
    let layer = ApiKeyLayer::for_manager(&manager)
        .cache_config(CacheConfig::default().positive_capacity(CAPACITY))
        .build();
    let service = stack(&layer);
    let mut keys = Vec::new();
    for n in 0..KEYS {
        let owner = account(&format!("churn-{}", n / 3));
        let created = manager.create(&owner).await.expect("create");
        keys.push((
            owner,
            created.info.id,
            created.key.expose_secret().to_owned(),
        ));
    }
    // Per key: whether its revoke has begun, and whether it has returned. Workers send the
    // keys in turn, each from its own offset, so moka keeps evicting and refusing admissions
    // and its listener keeps removing entries from the index.
    let flags = || -> Arc<Vec<AtomicBool>> {
        Arc::new((0..KEYS).map(|_| AtomicBool::new(false)).collect())
    };
    let (revoking, revoked) = (flags(), flags());
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicUsize::new(0));
    let wrong = Arc::new(AtomicUsize::new(0));
    let secrets: Arc<Vec<String>> = Arc::new(keys.iter().map(|(_, _, key)| key.clone()).collect());
    let workers: Vec<_> = (0..4)
        .map(|worker| {
            let (service, secrets) = (service.clone(), Arc::clone(&secrets));
            let (revoking, revoked) = (Arc::clone(&revoking), Arc::clone(&revoked));
            let stop = Arc::clone(&stop);
            let (sent, wrong) = (Arc::clone(&sent), Arc::clone(&wrong));
            tokio::spawn(async move {
                let mut n = worker * 7;
                while !stop.load(Ordering::SeqCst) {
                    let i = n % KEYS;
                    let was_revoked = revoked[i].load(Ordering::SeqCst);
                    let got = status(&service, &secrets[i]).await;
                    let untouched = !revoking[i].load(Ordering::SeqCst);
                    let right = if was_revoked {
                        // The revoke returned before this request started.
                        got == StatusCode::UNAUTHORIZED
                    } else if untouched {
                        // No revoke had begun when it ended.
                        got == StatusCode::OK
                    } else {
                        // It overlapped the revoke: either answer.
                        true
                    };
                    if !right {
                        wrong.fetch_add(1, Ordering::SeqCst);
                    }
                    sent.fetch_add(1, Ordering::SeqCst);
                    n += 1;
                    tokio::task::yield_now().await;
                }
            })
        })
        .collect();
    // Revoke a third of the keys one by one while the workers run, each after some traffic.
    for (i, (owner, id, secret)) in keys.iter().enumerate().filter(|(i, _)| i % 3 == 0) {
        let target = sent.load(Ordering::SeqCst) + 200;
        crate::support::wait::until("traffic before the revoke", || {
            std::future::ready(sent.load(Ordering::SeqCst) >= target)
        })
        .await;
        revoking[i].store(true, Ordering::SeqCst);
        manager.revoke(owner, *id).await.expect("revoke");
        revoked[i].store(true, Ordering::SeqCst);
        assert_eq!(status(&service, secret).await, StatusCode::UNAUTHORIZED);
    }
    let target = sent.load(Ordering::SeqCst) + 500;
    crate::support::wait::until("traffic after the last revoke", || {
        std::future::ready(sent.load(Ordering::SeqCst) >= target)
    })
    .await;
    stop.store(true, Ordering::SeqCst);
    for worker in workers {
        worker.await.expect("worker");
    }
    assert_eq!(wrong.load(Ordering::SeqCst), 0, "requests answered wrongly");

    let cache = layer.cache();
    cache.run_pending_tasks();
    let (recorded, _) = cache.entry_counts();
    assert!(recorded <= CAPACITY, "moka holds {recorded}");
    assert_eq!(
        cache.indexed_count() as u64,
        recorded,
        "indexed vs recorded"
    );
    let metrics = layer.metrics();
    assert!(
        metrics.resolver_calls > KEYS as u64,
        "the cache kept evicting ({} resolver calls)",
        metrics.resolver_calls
    );
}
