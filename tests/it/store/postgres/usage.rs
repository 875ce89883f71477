//! `PostgresStore`'s usage counts beyond the conformance suite: two "processes" (two pools)
//! flushing overlapping counts at once add up exactly, without a deadlock, and the counts
//! outlive both. Without `DATABASE_URL`, each test says it was skipped.
//!
//! Flushes take turns under a transaction advisory lock (migration 7 on). Before, they wrote
//! each flush's rows sorted by the table's key; fed in the batch's own order instead, this
//! test failed with PostgreSQL's "deadlock detected" (tried when it was written).

use std::time::{Duration, UNIX_EPOCH};

use crate::support::account;
use crate::support::db::postgres::Schema;
use tower_api_key::store::KeyUse;
use tower_api_key::usage::{Hour, UsageBatch, UsageCounts, UsageDelta};
use tower_api_key::{ApiKey, KeyId, KeyRecord, KeyStore, Pepper};

const KEYS: usize = 400;
const HOURS: u32 = 3;
const FLUSHES_EACH: usize = 10;
const FIRST_HOUR: u32 = 475_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_flushing_overlapping_counts_add_up_without_deadlock() {
    let Some(schema) = Schema::create().await else {
        return;
    };
    let (a, b) = (schema.store().await, schema.store().await);
    // Half the counted keys exist (their uses lock their rows too), half were deleted.
    let mut records = Vec::new();
    for i in 0..KEYS {
        let key = ApiKey::generate().expect("randomness");
        let record = KeyRecord::new(
            KeyId::random(),
            account("acme"),
            key.prefix(),
            Pepper::from_bytes([1; 32]).digest(&key),
            UNIX_EPOCH + Duration::from_secs(1_700_000_000),
        );
        if i % 2 == 0 {
            a.insert_within_limit(record.clone(), usize::MAX, &crate::store::note())
                .await
                .expect("insert");
        }
        records.push(record);
    }
    // Every flush adds to every row, starting at a different row each time and going in
    // either direction, so the batches overlap in every order.
    let batch = |flush: usize| {
        let mut counts = Vec::new();
        for record in &records {
            for hour in 0..HOURS {
                counts.push(UsageDelta {
                    account_id: account("acme"),
                    key_id: record.id,
                    hour: Hour::from_index(FIRST_HOUR + hour),
                    accepted: 1,
                    rate_limited: i64::try_from(flush).expect("small"),
                    refused: if flush % 2 == 0 { 2 } else { -1 },
                });
            }
        }
        let rows = counts.len();
        counts.rotate_left(flush * 37 % rows);
        if flush % 2 == 1 {
            counts.reverse();
        }
        let mut last_used: Vec<KeyUse> = records
            .iter()
            .map(|record| KeyUse {
                id: record.id,
                prefix: record.prefix,
                at: UNIX_EPOCH + Duration::from_secs(1_700_000_000 + flush as u64),
            })
            .collect();
        let uses = last_used.len();
        last_used.rotate_left(flush * 13 % uses);
        // One flush in four has uses (the rest have counts alone), so that flushes of either
        // kind meet each other.
        if flush % 4 != 0 {
            last_used.clear();
        }
        UsageBatch { last_used, counts }
    };
    let flushes: Vec<_> = (0..2 * FLUSHES_EACH)
        .map(|flush| {
            let store = if flush % 2 == 0 { a.clone() } else { b.clone() };
            let batch = batch(flush);
            tokio::spawn(async move { store.record_usage(&batch).await })
        })
        .collect();
    for flush in flushes {
        // A deadlock would abort one of the transactions: an error here.
        flush.await.expect("task").expect("flush");
    }
    let flushes = 2 * FLUSHES_EACH as u64;
    let expected = UsageCounts {
        accepted: flushes,
        rate_limited: (0..flushes).sum(),
        refused: flushes / 2, // ten times +2, ten times -1
    };
    let check = |store: tower_api_key::store::PostgresStore| {
        let records = records.clone();
        async move {
            let rows = store
                .usage(
                    &account("acme"),
                    None,
                    Hour::from_index(FIRST_HOUR),
                    Hour::from_index(FIRST_HOUR + HOURS),
                )
                .await
                .expect("usage");
            assert_eq!(rows.len(), KEYS * HOURS as usize);
            for row in &rows {
                assert_eq!(row.counts, expected, "{row:?}");
            }
            let mut ids: Vec<KeyId> = records.iter().map(|r| r.id).collect();
            ids.sort();
            let first_hour: Vec<KeyId> = rows[..KEYS].iter().map(|row| row.key_id).collect();
            assert_eq!(first_hour, ids, "the first hour's rows, in key order");
        }
    };
    check(b.clone()).await;
    // The counts are the database's: a new pool (a restarted process) reads the same.
    a.pool().close().await;
    b.pool().close().await;
    check(schema.store().await).await;
}
