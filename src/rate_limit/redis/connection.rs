//! Connecting to Redis, the same way for every Redis client of the crate (the rate limiter,
//! the quota counter): one multiplexed connection (redis-rs's `ConnectionManager`) that
//! reconnects by itself in the background, and the server named by `host:port` in logs,
//! never by its URL (which may hold a password).

use std::fmt;
use std::time::Duration;

use ::redis::aio::{ConnectionManager, ConnectionManagerConfig};
use ::redis::{Client, FromRedisValue, Script, ScriptInvocation};

use super::RedisLimiterError;
use super::breaker::Breaker;

/// A Redis server as each of the crate's Redis clients calls it: its connection, its
/// `host:port` for logs, how long a call may take, and the breaker that stops calling while
/// it doesn't answer.
pub(crate) struct RedisClient {
    connection: ConnectionManager,
    endpoint: String,
    timeout: Duration,
    breaker: Breaker,
}

impl RedisClient {
    /// A client of the server at `url` over `connection`.
    pub(crate) fn new(
        connection: ConnectionManager,
        url: &str,
        timeout: Duration,
        breaker: Breaker,
    ) -> Self {
        Self {
            connection,
            endpoint: endpoint(url),
            timeout,
            breaker,
        }
    }

    /// `host:port`: how logs name the server (its URL may hold a password).
    pub(crate) fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// How long a call may take.
    pub(crate) fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Runs a script, within the timeout and through the breaker; `None` (logged) if Redis
    /// failed or didn't answer in time.
    pub(crate) async fn invoke<T: FromRedisValue>(
        &self,
        invocation: &ScriptInvocation<'_>,
    ) -> Option<T> {
        let mut connection = self.connection.clone();
        let call = invocation.invoke_async::<T>(&mut connection);
        self.breaker.call(&self.endpoint, self.timeout, call).await
    }
}

/// What each of the crate's Redis clients is configured with, before it connects: the server,
/// the namespace of its keys, how long a call and the first connection may take. Its builders
/// hold one and add their own settings.
#[derive(Clone)]
pub(crate) struct RedisSettings {
    /// May hold a password: never printed.
    url: String,
    pub(crate) namespace: String,
    pub(crate) timeout: Duration,
    pub(crate) connect_timeout: Duration,
}

impl RedisSettings {
    /// The server at `url`, keys under `namespace`, the default timeouts.
    pub(crate) fn new(url: String, namespace: &str) -> Self {
        Self {
            url,
            namespace: namespace.to_owned(),
            timeout: super::DEFAULT_TIMEOUT,
            connect_timeout: super::DEFAULT_CONNECT_TIMEOUT,
        }
    }

    /// Connects within the connect timeout and loads `scripts`.
    pub(crate) async fn connect(
        &self,
        scripts: &[&Script],
    ) -> Result<ConnectionManager, RedisLimiterError> {
        connect(&self.url, self.connect_timeout, scripts).await
    }

    /// A connection made on its first use. Must be called inside a Tokio runtime.
    pub(crate) fn connect_lazy(&self) -> Result<ConnectionManager, RedisLimiterError> {
        connect_lazy(&self.url, self.connect_timeout)
    }

    /// The client over `connection`, calling within the timeout, stopped by `breaker`.
    pub(crate) fn client(&self, connection: ConnectionManager, breaker: Breaker) -> RedisClient {
        RedisClient::new(connection, &self.url, self.timeout, breaker)
    }

    /// Adds the settings to a builder's `Debug`, the server as `host:port` only.
    pub(crate) fn describe(&self, f: &mut fmt::DebugStruct<'_, '_>) {
        f.field("redis", &endpoint(&self.url))
            .field("namespace", &self.namespace)
            .field("timeout", &self.timeout)
            .field("connect_timeout", &self.connect_timeout);
    }
}

/// Longest wait between reconnection attempts.
const MAX_RECONNECT_DELAY: Duration = Duration::from_secs(1);

/// The client for `url`, and the connection manager's settings.
fn client(
    url: &str,
    connect_timeout: Duration,
) -> Result<(Client, ConnectionManagerConfig), RedisLimiterError> {
    let client = Client::open(url).map_err(|error| RedisLimiterError::InvalidUrl(error.into()))?;
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(connect_timeout.min(Duration::from_secs(1))))
        .set_max_delay(MAX_RECONNECT_DELAY);
    Ok((client, config))
}

/// Connects to `url` within `connect_timeout` and loads `scripts`.
async fn connect(
    url: &str,
    connect_timeout: Duration,
    scripts: &[&Script],
) -> Result<ConnectionManager, RedisLimiterError> {
    let (client, config) = client(url, connect_timeout)?;
    let connecting = async {
        // One plain attempt first, so that a refused connection or bad credentials are
        // reported at once (the manager would retry them until the timeout), and the
        // scripts are loaded.
        let mut first = client.get_multiplexed_async_connection().await?;
        for script in scripts {
            script.load_async(&mut first).await?;
        }
        ConnectionManager::new_with_config(client, config).await
    };
    tokio::time::timeout(connect_timeout, connecting)
        .await
        .map_err(|_| RedisLimiterError::Timeout)?
        .map_err(|error| RedisLimiterError::Connect(error.into()))
}

/// A connection to `url` that connects on its first use. Must be called inside a Tokio
/// runtime.
fn connect_lazy(
    url: &str,
    connect_timeout: Duration,
) -> Result<ConnectionManager, RedisLimiterError> {
    let (client, config) = client(url, connect_timeout)?;
    if tokio::runtime::Handle::try_current().is_err() {
        return Err(RedisLimiterError::NoRuntime);
    }
    ConnectionManager::new_lazy_with_config(client, config)
        .map_err(|error| RedisLimiterError::Connect(error.into()))
}

/// Where `url` points, without credentials: `host:port` (or the socket path), or `?` if it
/// doesn't parse.
pub(crate) fn endpoint(url: &str) -> String {
    Client::open(url).map_or_else(
        |_| "?".to_owned(),
        |client| client.get_connection_info().addr().to_string(),
    )
}
