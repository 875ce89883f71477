//! Where rate-limit budgets and quota counts are kept: in this process (quotas counted
//! against the store's usage), or in a Redis shared with the other servers.

use tower_api_key::ApiKeyLayerBuilder;
use tower_api_key::StoreResolver;
use tower_api_key::usage::UsageRecorder;

use crate::config::Budgets;

/// Sets the layer's rate limiter as the configuration says. A Redis that can't be reached at
/// start stops the server before it listens (once running, an outage lets requests through
/// and counts them in `api_key_rate_limiter_failures_total`).
pub(crate) async fn with_budgets(
    layer: ApiKeyLayerBuilder<StoreResolver>,
    budgets: &Budgets,
) -> Result<ApiKeyLayerBuilder<StoreResolver>, String> {
    match budgets {
        Budgets::Local => {
            tracing::info!("rate-limit budgets are kept in this process");
            Ok(layer)
        }
        #[cfg(feature = "redis")]
        Budgets::Redis {
            url,
            lease,
            timeout,
        } => {
            use tower_api_key::rate_limit::redis::RedisLimiter;

            let builder = RedisLimiter::builder(url.as_str()).timeout(*timeout);
            let builder = match lease {
                Some(lease) => builder.local_first(*lease),
                None => builder.exact(),
            };
            let limiter = builder
                .connect()
                .await
                .map_err(|err| format!("cannot use Redis for rate limits: {err}"))?;
            tracing::info!(
                lease = lease.unwrap_or(1),
                "rate-limit budgets are shared through Redis"
            );
            Ok(layer.rate_limiter(limiter))
        }
    }
}

/// Counts quotas in Redis when the configuration names one (the same `--redis-url` and
/// timeout as the rate limits): exact across every server using it. Otherwise each server
/// counts against the store's usage. A Redis that can't be reached at start stops the server
/// before it listens.
pub(crate) async fn with_shared_quotas(
    recorder: UsageRecorder,
    budgets: &Budgets,
) -> Result<UsageRecorder, String> {
    match budgets {
        Budgets::Local => Ok(recorder),
        #[cfg(feature = "redis")]
        Budgets::Redis { url, timeout, .. } => {
            use tower_api_key::usage::RedisQuotas;

            let quotas = RedisQuotas::builder(url.as_str())
                .timeout(*timeout)
                .connect()
                .await
                .map_err(|err| format!("cannot use Redis for quotas: {err}"))?;
            tracing::info!("quotas are counted in Redis");
            Ok(recorder.share_quotas(quotas))
        }
    }
}
