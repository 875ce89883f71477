//! Quotas counted from usage: how many requests each key has had accepted in its quota's
//! current period, as the store's hourly counts say plus what this process has not written
//! yet.
//!
//! A [`QuotaTally`] per key (shared by every cached identity of the key: both strings of a
//! grace rotation spend one quota) holds three numbers: `stored`, the period's accepted
//! requests in the store at the last read (every process's); `written`, what this process's
//! flushes wrote since that read; `unwritten`, what this process accepted and has not
//! written yet. A request fits while their sum is under the quota.
//!
//! The [`QuotaLedger`] keeps the tallies in step with the [`UsageRecorder`]'s flushes: a
//! written batch moves its accepted counts from `unwritten` to `written` (the same requests,
//! now in the store), and a read of the store after the flush replaces `stored` and clears
//! `written`. So one process counts exactly, across restarts (a new process starts from the
//! store), and processes sharing a store see each other's requests one flush interval late:
//! together they may overshoot a quota by what the others accepted within one interval.
//!
//! With Redis (feature `redis`, [`UsageRecorder::share_quotas`]) a fleet counts exactly: each
//! request spends the key's quota in one count in Redis, atomically, which expires with its
//! period (and a day's margin). The tallies go on counting what this process let in, for one
//! purpose: when Redis has no count for the period (a new period, a Redis restart or flush,
//! Redis configured mid-period), it starts from this process's estimate, the store's usage
//! plus what it has not written yet, so a restart of Redis doesn't reset a quota. When Redis
//! fails or is slower than its timeout (100 ms by default), the tally decides the request as
//! without Redis, best effort, never a 5xx. See `RedisQuotas`.
//!
//! [`UsageRecorder`]: super::UsageRecorder
//! [`UsageRecorder::share_quotas`]: super::UsageRecorder

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::ops::Range;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::policy::{Period, Quota};
use crate::store::{AccountId, KeyId, KeyStore, StoreError};
use crate::sync::lock;

use super::{Hour, UsageBatch};

/// A quota's answer for one request: [`Account::spend_quota`](crate::Account::spend_quota).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum QuotaVerdict {
    /// The request fits the quota and was counted against it.
    Allowed,
    /// The quota of the period is used up; the request was not counted. The layer answers
    /// 429 `quota exceeded` with `Retry-After` set to `retry_after`, rounded up to seconds.
    Exceeded {
        /// How long until the period ends.
        retry_after: Duration,
    },
}

/// A quota verdict still being worked out (a round trip to a shared counter).
pub type PendingQuotaVerdict = Pin<Box<dyn Future<Output = QuotaVerdict> + Send + 'static>>;

/// An account's quota answer: at once, or later.
pub enum QuotaCheck {
    /// Decided without waiting.
    Ready(QuotaVerdict),
    /// Decided by a future the layer awaits before calling the inner service.
    Pending(PendingQuotaVerdict),
}

impl fmt::Debug for QuotaCheck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Ready(verdict) => f.debug_tuple("Ready").field(verdict).finish(),
            Self::Pending(_) => f.write_str("Pending(..)"),
        }
    }
}

/// One key's count for its quota's current period.
pub(crate) struct QuotaTally {
    account_id: AccountId,
    id: KeyId,
    counts: Mutex<Counts>,
}

#[derive(Debug, Default, Clone, Copy)]
struct Counts {
    /// The period counted; `None` until the store was read.
    period: Option<Period>,
    /// The period's accepted requests in the store at the last read.
    stored: u64,
    /// Accepted requests this process wrote since that read (a scope refusal written after
    /// its acceptance makes it negative).
    written: i64,
    /// Accepted requests this process counted and has not written yet.
    unwritten: i64,
}

impl Counts {
    fn used(&self) -> u64 {
        let sum = i128::from(self.stored) + i128::from(self.written) + i128::from(self.unwritten);
        u64::try_from(sum.max(0)).unwrap_or(u64::MAX)
    }

    /// The period of `quota` that holds `at`, moved to if it is later than the one counted
    /// (a new period starts empty). The counted period answers without any calendar
    /// arithmetic while it holds `at`: the usual case, on every request.
    fn period_of(&mut self, quota: Quota, at: SystemTime) -> Period {
        let secs = at
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| since.as_secs());
        match self.period {
            Some(counted) if counted.holds(secs) && counted.is_of(quota.period()) => counted,
            _ => {
                let period = quota.period().containing(at);
                self.roll_to(period);
                period
            }
        }
    }

    /// Moves to `period` if it is later than the one counted: a new period starts empty.
    fn roll_to(&mut self, period: Period) {
        if self
            .period
            .is_none_or(|counted| counted.start_secs() < period.start_secs())
        {
            *self = Counts {
                period: Some(period),
                ..Counts::default()
            };
        }
    }
}

impl QuotaTally {
    fn new(account_id: AccountId, id: KeyId) -> Self {
        Self {
            account_id,
            id,
            counts: Mutex::new(Counts::default()),
        }
    }

    /// Counts one request made at `at` if it fits `quota`.
    pub(crate) fn spend(&self, quota: Quota, at: SystemTime) -> QuotaVerdict {
        let mut counts = lock(&self.counts);
        let period = counts.period_of(quota, at);
        if counts.used() >= u64::from(quota.requests()) {
            return QuotaVerdict::Exceeded {
                retry_after: Duration::from_secs(period.seconds_left(at)),
            };
        }
        counts.unwritten += 1;
        QuotaVerdict::Allowed
    }

    /// Counts one request made at `at` that a shared counter let in, whatever this process's
    /// count says: this process's share of the period's count, for [`seed`](Self::seed).
    #[cfg(feature = "redis")]
    pub(crate) fn count(&self, quota: Quota, at: SystemTime) {
        let mut counts = lock(&self.counts);
        counts.period_of(quota, at);
        counts.unwritten += 1;
    }

    /// The period of `quota` that holds `at`, and its accepted requests as this process
    /// knows them: the store's count at the last read plus what this process wrote since and
    /// has not written yet. Where a shared counter that lost its count starts again.
    #[cfg(feature = "redis")]
    pub(crate) fn seed(&self, quota: Quota, at: SystemTime) -> (Period, u64) {
        let mut counts = lock(&self.counts);
        let period = counts.period_of(quota, at);
        (period, counts.used())
    }

    /// The count of [`seed`](Self::seed) alone.
    #[cfg(all(test, feature = "redis"))]
    fn estimate(&self, quota: Quota, at: SystemTime) -> u64 {
        self.seed(quota, at).1
    }

    /// The key counted.
    #[cfg(feature = "redis")]
    pub(crate) fn key_id(&self) -> KeyId {
        self.id
    }

    /// Takes back one counted request, refused after it was let in (for its scope): usage
    /// counts it as refused, so the quota doesn't count it either.
    pub(crate) fn refund(&self) {
        lock(&self.counts).unwritten -= 1;
    }

    /// Accepted requests of the current period of `quota` at `at`, as far as this process
    /// knows.
    #[cfg(test)]
    fn used(&self, quota: Quota, at: SystemTime) -> u64 {
        let period = quota.period().containing(at);
        let counts = lock(&self.counts);
        if counts.period == Some(period) {
            counts.used()
        } else {
            0
        }
    }

    /// Reads the period's count from the store, unless the tally already counts that period.
    /// `unwritten` tells the accepted requests of given hours this process holds and has
    /// not written (`None` without a usage recorder: the tally keeps its own count).
    async fn load(
        &self,
        store: &dyn KeyStore,
        quota: Quota,
        at: SystemTime,
        unwritten: impl FnOnce(Range<Hour>) -> Option<i64>,
    ) -> Result<(), StoreError> {
        let period = quota.period().containing(at);
        if lock(&self.counts).period == Some(period) {
            return Ok(());
        }
        let stored = self.stored(store, period).await?;
        let mut counts = lock(&self.counts);
        if counts.period != Some(period) {
            // A new tally, or another kind of period than before (the quota changed): what
            // this process accepted and has not written counts too, from the key's usage
            // (requests made before the key had this quota included).
            *counts = Counts {
                period: Some(period),
                stored,
                written: 0,
                unwritten: unwritten(Hour::covering(period)).unwrap_or(counts.unwritten),
            };
        }
        Ok(())
    }

    /// The period's accepted requests in the store.
    async fn stored(&self, store: &dyn KeyStore, period: Period) -> Result<u64, StoreError> {
        let rows = store
            .usage(
                &self.account_id,
                Some(self.id),
                Hour::covering(period).start,
                Hour::covering(period).end,
            )
            .await?;
        Ok(rows.iter().map(|row| row.counts.accepted).sum())
    }
}

/// A tally and its `written` count when a read of the store began.
type WrittenBefore = (Arc<QuotaTally>, i64);

/// Every key's [`QuotaTally`] in this process, kept in step with the usage flushes.
#[derive(Default)]
pub(crate) struct QuotaLedger {
    tallies: Mutex<HashMap<KeyId, Arc<QuotaTally>>>,
}

impl QuotaLedger {
    /// The key's tally, read from `store` for the period of `quota` at `at` unless this
    /// process already counts it. Called when a key with a quota is looked up (a cache
    /// miss), so that a request never waits for the store on a cache hit.
    ///
    /// `unwritten` tells the accepted requests of given hours this process holds and has not
    /// written (`None` without a usage recorder).
    pub(crate) async fn tally(
        &self,
        store: &dyn KeyStore,
        account_id: &AccountId,
        id: KeyId,
        quota: Quota,
        at: SystemTime,
        unwritten: impl FnOnce(Range<Hour>) -> Option<i64>,
    ) -> Result<Arc<QuotaTally>, StoreError> {
        let tally = Arc::clone(
            lock(&self.tallies)
                .entry(id)
                .or_insert_with(|| Arc::new(QuotaTally::new(account_id.clone(), id))),
        );
        tally.load(store, quota, at, unwritten).await?;
        Ok(tally)
    }

    /// A flush wrote `batch`: its accepted counts move from unwritten to written in the
    /// tallies of their keys (the hours of each tally's period only).
    pub(crate) fn written(&self, batch: &UsageBatch) {
        let tallies = lock(&self.tallies);
        if tallies.is_empty() {
            return;
        }
        for delta in &batch.counts {
            let Some(tally) = tallies.get(&delta.key_id) else {
                continue;
            };
            let mut counts = lock(&tally.counts);
            let in_period = counts
                .period
                .is_some_and(|period| Hour::covering(period).contains(&delta.hour));
            if in_period {
                // The requests this tally counted move from unwritten to written. Any beyond
                // them were accepted before the key had a quota (by an identity without one,
                // before an update gave it one): new to the tally, they count from now on.
                let moved = if delta.accepted > 0 {
                    delta.accepted.min(counts.unwritten.max(0))
                } else {
                    delta.accepted
                };
                counts.unwritten -= moved;
                counts.written += delta.accepted;
            }
        }
    }

    /// Reads every counted period from the store again (after a flush, so that the store
    /// holds what `written` counts), and forgets the tallies no cached identity holds
    /// anymore and that have nothing unwritten. One read per account and period, whatever
    /// the number of its keys.
    pub(crate) async fn refresh(&self, store: &dyn KeyStore) -> Result<(), StoreError> {
        // Per account and period: its tallies, each with what it had written before the read.
        let mut groups: HashMap<(AccountId, Period), Vec<WrittenBefore>> = HashMap::new();
        {
            let mut tallies = lock(&self.tallies);
            tallies.retain(|_, tally| {
                Arc::strong_count(tally) > 1 || lock(&tally.counts).unwritten != 0
            });
            for tally in tallies.values() {
                let counts = *lock(&tally.counts);
                if let Some(period) = counts.period {
                    groups
                        .entry((tally.account_id.clone(), period))
                        .or_default()
                        .push((Arc::clone(tally), counts.written));
                }
            }
        }
        let mut failure = None;
        for ((account_id, period), tallies) in groups {
            let rows = store
                .usage(
                    &account_id,
                    None,
                    Hour::covering(period).start,
                    Hour::covering(period).end,
                )
                .await;
            let rows = match rows {
                Ok(rows) => rows,
                Err(err) => {
                    failure = Some(err);
                    continue;
                }
            };
            let mut accepted: HashMap<KeyId, u64> = HashMap::new();
            for row in &rows {
                *accepted.entry(row.key_id).or_default() += row.counts.accepted;
            }
            for (tally, written_before) in tallies {
                let stored = accepted.get(&tally.id).copied().unwrap_or(0);
                let mut counts = lock(&tally.counts);
                if counts.period == Some(period) {
                    // What was written before the read is in `stored` now; a write during
                    // the read may be in both for one interval (never in neither).
                    counts.stored = stored;
                    counts.written -= written_before;
                }
            }
        }
        failure.map_or(Ok(()), Err)
    }

    /// How many keys have a tally.
    pub(crate) fn len(&self) -> usize {
        lock(&self.tallies).len()
    }
}

impl fmt::Debug for QuotaLedger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QuotaLedger")
            .field("keys", &self.len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::QuotaPeriod;
    use crate::store::{KeyRecord, MemoryStore};
    use crate::usage::UsageDelta;
    use std::time::UNIX_EPOCH;

    const NOON: u64 = 1_796_472_000; // 2026-12-05T12:00:00Z

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn accepted(account: &AccountId, id: KeyId, secs: u64, count: i64) -> UsageBatch {
        UsageBatch {
            last_used: Vec::new(),
            counts: vec![UsageDelta {
                account_id: account.clone(),
                key_id: id,
                hour: Hour::containing(at(secs)),
                accepted: count,
                rate_limited: 0,
                refused: 0,
            }],
        }
    }

    /// `ledger`'s tally of `id`, read at noon with nothing unwritten.
    async fn noon_tally(
        ledger: &QuotaLedger,
        store: &MemoryStore,
        account: &AccountId,
        id: KeyId,
        quota: Quota,
    ) -> Arc<QuotaTally> {
        ledger
            .tally(store, account, id, quota, at(NOON), |_| None)
            .await
            .expect("loaded")
    }

    async fn setup() -> (Arc<MemoryStore>, AccountId, KeyId) {
        let store = Arc::new(MemoryStore::new());
        let account: AccountId = "acme".parse().expect("valid");
        let id = KeyId::random();
        let key = crate::ApiKey::generate().expect("randomness");
        let record = KeyRecord::new(
            id,
            account.clone(),
            key.prefix(),
            crate::KeyDigest::from_bytes([7; 32]),
            at(NOON),
        );
        store
            .insert_within_limit(
                record,
                3,
                &crate::audit::AuditNote::now(
                    crate::audit::Actor::system(),
                    crate::audit::AuditAction::Create,
                ),
            )
            .await
            .expect("inserted");
        (store, account, id)
    }

    #[tokio::test]
    async fn a_tally_starts_from_the_store_and_counts_to_the_quota() {
        let (store, account, id) = setup().await;
        // Another process accepted 3 today, and 5 yesterday.
        store
            .record_usage(&accepted(&account, id, NOON - 3600, 3))
            .await
            .expect("written");
        store
            .record_usage(&accepted(&account, id, NOON - 86_400, 5))
            .await
            .expect("written");
        let ledger = QuotaLedger::default();
        let quota = Quota::new(5, QuotaPeriod::Day).expect("valid");
        let tally = noon_tally(&ledger, &store, &account, id, quota).await;
        assert_eq!(tally.used(quota, at(NOON)), 3);
        assert_eq!(tally.spend(quota, at(NOON)), QuotaVerdict::Allowed);
        assert_eq!(tally.spend(quota, at(NOON)), QuotaVerdict::Allowed);
        assert_eq!(
            tally.spend(quota, at(NOON)),
            QuotaVerdict::Exceeded {
                retry_after: Duration::from_secs(12 * 3600)
            }
        );
        // Raising the quota lets the key through at once.
        let raised = Quota::new(6, QuotaPeriod::Day).expect("valid");
        assert_eq!(tally.spend(raised, at(NOON)), QuotaVerdict::Allowed);
        // The next day starts empty.
        assert_eq!(tally.spend(quota, at(NOON + 86_400)), QuotaVerdict::Allowed);
        assert_eq!(tally.used(quota, at(NOON + 86_400)), 1);
    }

    #[tokio::test]
    async fn a_write_and_a_read_count_each_request_once() {
        let (store, account, id) = setup().await;
        let ledger = QuotaLedger::default();
        let quota = Quota::new(100, QuotaPeriod::Month).expect("valid");
        let tally = noon_tally(&ledger, &store, &account, id, quota).await;
        for _ in 0..4 {
            assert_eq!(tally.spend(quota, at(NOON)), QuotaVerdict::Allowed);
        }
        tally.refund(); // one of them refused for its scope
        // The flush writes the net 3 accepted.
        let batch = accepted(&account, id, NOON, 3);
        store.record_usage(&batch).await.expect("written");
        ledger.written(&batch);
        assert_eq!(tally.used(quota, at(NOON)), 3);
        // Another process writes 10 meanwhile; the read after the flush sees them.
        store
            .record_usage(&accepted(&account, id, NOON, 10))
            .await
            .expect("written");
        assert_eq!(tally.used(quota, at(NOON)), 3, "not read yet");
        ledger.refresh(&*store).await.expect("read");
        assert_eq!(tally.used(quota, at(NOON)), 13);
        // A write of another period's hour doesn't touch this period's count.
        ledger.written(&accepted(&account, id, NOON - 40 * 86_400, 50));
        assert_eq!(tally.used(quota, at(NOON)), 13);
    }

    #[tokio::test]
    async fn requests_accepted_before_the_key_had_a_quota_count_once_written() {
        let (store, account, id) = setup().await;
        let ledger = QuotaLedger::default();
        let quota = Quota::new(10, QuotaPeriod::Day).expect("valid");
        // The key gets its quota while 4 requests accepted without one wait to be written.
        let tally = noon_tally(&ledger, &store, &account, id, quota).await;
        assert_eq!(tally.spend(quota, at(NOON)), QuotaVerdict::Allowed);
        let batch = accepted(&account, id, NOON, 5); // the 4, and the one just counted
        store.record_usage(&batch).await.expect("written");
        ledger.written(&batch);
        assert_eq!(tally.used(quota, at(NOON)), 5);
        ledger.refresh(&*store).await.expect("read");
        assert_eq!(tally.used(quota, at(NOON)), 5, "each counted once");
    }

    #[tokio::test]
    async fn tallies_nobody_holds_are_forgotten_once_written() {
        let (store, account, id) = setup().await;
        let ledger = QuotaLedger::default();
        let quota = Quota::new(10, QuotaPeriod::Day).expect("valid");
        let tally = noon_tally(&ledger, &store, &account, id, quota).await;
        assert_eq!(tally.spend(quota, at(NOON)), QuotaVerdict::Allowed);
        drop(tally);
        ledger.refresh(&*store).await.expect("read");
        assert_eq!(ledger.len(), 1, "one request not written yet");
        ledger.written(&accepted(&account, id, NOON, 1));
        ledger.refresh(&*store).await.expect("read");
        assert_eq!(ledger.len(), 0);
    }

    #[cfg(feature = "redis")]
    #[tokio::test]
    async fn the_estimate_is_the_store_plus_this_process_and_a_shared_count_goes_past_the_quota() {
        let (store, account, id) = setup().await;
        store
            .record_usage(&accepted(&account, id, NOON - 3600, 4))
            .await
            .expect("written");
        let ledger = QuotaLedger::default();
        let quota = Quota::new(5, QuotaPeriod::Day).expect("valid");
        let tally = noon_tally(&ledger, &store, &account, id, quota).await;
        assert_eq!(tally.estimate(quota, at(NOON)), 4);
        assert_eq!(tally.spend(quota, at(NOON)), QuotaVerdict::Allowed);
        // Let in by a shared counter: counted even past this process's view of the quota.
        tally.count(quota, at(NOON));
        assert_eq!(tally.estimate(quota, at(NOON)), 6);
        // Written and read back: the same 6.
        let batch = accepted(&account, id, NOON, 2);
        store.record_usage(&batch).await.expect("written");
        ledger.written(&batch);
        ledger.refresh(&*store).await.expect("read");
        assert_eq!(tally.estimate(quota, at(NOON)), 6);
        // The next day starts from nothing.
        assert_eq!(tally.estimate(quota, at(NOON + 86_400)), 0);
    }
}
