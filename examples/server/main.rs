//! The demo server: API keys in front of an HTTP API and a gRPC service, on one port.
//!
//! ```text
//! cargo run --release --example server -- \
//!     [--addr HOST:PORT] [--last-used-flush-ms N] [--database-url URL] \
//!     [--header-read-timeout-ms N] [--max-connections N] [--trusted-proxies CIDR,…] \
//!     [--redis-url URL [--redis-lease N] [--redis-timeout-ms N]] [--audit-retention-days N]
//! ```
//!
//! One process serves HTTP/1.1 and gRPC (HTTP/2 cleartext) on one port, keeping keys in the
//! embedded in-memory store, or in SQLite or PostgreSQL with `--database-url`:
//!
//! | route | access |
//! | --- | --- |
//! | `GET /healthz`, `GET /metrics` (Prometheus text of the layer's counters; with PostgreSQL also the change feed's delivery delays) | open |
//! | `GET /v1/ping`, `GET /v1/whoami`, `GET /v1/events` (server-sent events: `data: tick N` every second), gRPC `grpc.health.v1.Health/Check` and `/Watch` | `X-API-KEY: <key>` (or `Authorization: Bearer <key>`) |
//! | `POST /v1/write` | a key that is unrestricted or holds the `write` scope (else 403) |
//! | `POST` and `GET /admin/accounts/{account}/keys` | `Authorization: Bearer <ADMIN_TOKEN>` |
//! | `GET`, `PATCH` and `DELETE /admin/accounts/{account}/keys/{id}` | admin |
//! | `POST /admin/accounts/{account}/keys/{id}/rotate`, `…/revoke`, `…/reactivate` | admin |
//! | `GET /admin/accounts/{account}/keys/{id}/usage`, `GET /admin/accounts/{account}/usage` | admin |
//! | `GET /admin/accounts/{account}/events?limit=N&before=ID`: the account's audit trail, newest first | admin |
//! | `GET /admin/openapi.json` (the admin API's OpenAPI 3.1 document) | open |
//!
//! The admin routes are the crate's `tower_api_key::admin` router (feature `admin`; its
//! rustdoc has the JSON contract): create takes an optional
//! `{"name", "scopes", "expires_in_seconds" | "expires_at", "rate_limit", "allowed_ips",
//! "quota", "metadata"}`, `PATCH` changes any of them (`null` clears), rotate takes an
//! optional `{"grace_seconds": N}`.
//!
//! A key's policy is enforced on every API-key route, HTTP and gRPC alike:
//!
//! - `allowed_ips` (`["203.0.113.0/24", "198.51.100.7"]`): a request from any other address
//!   is 403 `{"error":"address not allowed"}` (gRPC `PERMISSION_DENIED`). The address is the
//!   connection's peer, which the accept loop hands to every request; behind
//!   `--trusted-proxies`, the rightmost `X-Forwarded-For` entry that is not a trusted proxy.
//! - `quota` (`{"requests": N, "period": "day" | "month"}`, UTC): once N requests of the
//!   period were accepted, 429 `{"error":"quota exceeded"}` with `Retry-After` set to the
//!   seconds left in the period (gRPC `RESOURCE_EXHAUSTED`). Counted from the store's usage
//!   plus what this process has not flushed yet, so the count survives a restart (SIGTERM
//!   flushes it); servers sharing one PostgreSQL may together serve up to what the others
//!   served within one `--last-used-flush-ms` interval beyond it.
//! - `metadata` (a JSON object up to 4 KiB): shown by `/v1/whoami` (`null` without), read
//!   from the identity the layer resolved, no second lookup.
//!
//! Configuration (a flag wins over its environment variable; an empty variable counts as
//! unset):
//!
//! - `--addr` / `ADDR`: where to listen, default `127.0.0.1:3000`; port 0 picks a free port.
//! - `--last-used-flush-ms` / `LAST_USED_FLUSH_MS`: how often key uses (`last_used_at` and
//!   the hourly usage counts) are written to the store, default 500 (keep it at most 1000 for `last_used_at` to show a use within 2 s).
//! - `--database-url` / `DATABASE_URL`: where keys are kept. Unset: in memory, for this run
//!   only. `sqlite://path/keys.db` (build with `--features sqlite`): a SQLite file, created if
//!   missing, for one server process. `postgres://user:pass@host/db` (build with
//!   `--features postgres`): PostgreSQL, shared by any number of server processes; each one
//!   listens for the others' changes (`LISTEN`/`NOTIFY`), so a key revoked through one is
//!   refused by all within milliseconds. The schema is migrated at start.
//! - `--header-read-timeout-ms` / `HEADER_READ_TIMEOUT_MS`: how long a client may take to send
//!   a request head, default 10000. A connection that sends fewer than 24 bytes in that time
//!   (nothing, or part of the HTTP/2 preface) is closed too, and so is a kept-alive HTTP/1.1
//!   connection that starts no new request in that time.
//! - `--max-connections` / `MAX_CONNECTIONS`: connections open at once, default 10000. More
//!   are accepted and closed at once, without an answer, not queued.
//! - `--trusted-proxies` / `TRUSTED_PROXIES`: the reverse proxies in front of the server,
//!   addresses or CIDR blocks separated by commas (`10.0.0.0/8,192.0.2.1`; the flag may also
//!   be repeated), none by default; a bare address is one host (`/32` or `/128`). For a
//!   request whose connection comes from one of them, a key's allowed addresses are checked
//!   against the rightmost `X-Forwarded-For` entry that is not a trusted proxy. Without any,
//!   `X-Forwarded-For` is ignored: any client can write it.
//! - `--redis-url` / `REDIS_URL` (build with `--features redis`): keys' rate-limit budgets and
//!   quota counts are shared through this Redis by every server using it; unset, each server
//!   counts budgets alone and quotas against the store's usage.
//!   `--redis-lease` / `REDIS_LEASE` (1 to 1000) spends that many requests of a budget
//!   between round trips; `--redis-timeout-ms` / `REDIS_TIMEOUT_MS` (default 100) is how long
//!   a check waits before the request is let through uncounted. Redis unreachable at start
//!   stops the server.
//! - `--audit-retention-days` / `AUDIT_RETENTION_DAYS`: how long the audit trail keeps each
//!   entry, 1 to 36500 days, default 400.
//! - `ADMIN_TOKEN`: the admin bearer token, at least 16 characters; if unset, a random one is
//!   generated and printed.
//! - `API_KEY_PEPPER`: 64 hex characters keying every key digest; if unset, a random one is
//!   used for this run only. Servers sharing a database need the same pepper, kept across
//!   restarts, or their keys don't verify.
//!
//! Every admin answer, the create and rotate ones with a plaintext key among them, carries
//! `Cache-Control: no-store`.
//!
//! Every change made through the admin routes, and every change they refuse (403, or 409 at
//! the limit of keys), is on the account's audit trail with who made it: `operator` for
//! `ADMIN_TOKEN`, `tenant:ACCOUNT` for a tenant token. It is kept by the store: in memory
//! for this run, or in the database beside the keys, one trail for every server sharing it.
//!
//! HTTP/2 has no header timeout of its own: once a connection has sent its preface, a client
//! that stalls in the middle of a request's headers holds its connection slot until it goes
//! away (idle connections are pinged every 20 s and closed if the peer doesn't answer), so
//! `--max-connections` bounds what such clients can hold.
//!
//! Streams end when their key stops letting them through: `GET /v1/events` and
//! `grpc.health.v1.Health/Watch` stay open while the key is valid, and end within moments of
//! its revocation, rotation (after any grace period), deletion or expiry, here or in another
//! server on the same PostgreSQL (the SSE body ends; the gRPC call ends with
//! `UNAUTHENTICATED`).
//!
//! The server prints `listening on http://HOST:PORT` on stdout once it accepts connections.
//! SIGTERM or Ctrl-C shuts it down gracefully: in-flight requests finish, pending last-used
//! times are written, and it exits 0. Bad configuration exits 2. Logs go to stderr
//! (`RUST_LOG`, default `info`) and never contain a key.
//!
//! A session:
//!
//! ```text
//! $ ADMIN_TOKEN=demo-admin-token-s3cret cargo run --release --example server
//! listening on http://127.0.0.1:3000
//! $ curl -s -X POST -H 'authorization: Bearer demo-admin-token-s3cret' \
//!     -d '{"name": "CI", "scopes": ["read"]}' localhost:3000/admin/accounts/acme/keys
//! {"id":"…","account_id":"acme","prefix":"k3v9x0qa","key":"k3v9x0qa.…","status":"active",…,"name":"CI","scopes":["read"],"expires_at":null}
//! $ curl -s -H 'x-api-key: k3v9x0qa.…' localhost:3000/v1/whoami
//! {"account_id":"acme","key_id":"…","prefix":"k3v9x0qa","metadata":null}
//! $ curl -s -X POST -H 'authorization: Bearer k3v9x0qa.…' localhost:3000/v1/write
//! {"error":"insufficient scope"}
//! ```

mod budgets;
mod config;
mod routes;
mod serve;
mod shutdown;
mod store;

use std::io::{IsTerminal as _, Write as _};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tonic_health::ServingStatus;
use tower_api_key::usage::UsageRecorder;
use tower_api_key::{ApiKeyLayer, KeyManager, Pepper};
use tracing_subscriber::EnvFilter;

use crate::budgets::{with_budgets, with_shared_quotas};
use crate::config::{Config, Database};
use crate::routes::{AppState, app};
use crate::serve::serve_connections;
use crate::shutdown::ShutdownSignals;
use crate::store::open_store;

/// Above this, `last_used_at` may lag a use by more than the 2 s the demo promises.
const PROMPT_FLUSH_MS: u64 = 1000;
/// How long in-flight requests (and open gRPC streams) get to finish after a shutdown signal.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// Exit code for a configuration mistake, as for a command-line usage error.
const EXIT_USAGE: u8 = 2;

fn main() -> ExitCode {
    init_tracing();
    let config = match Config::load() {
        Ok(config) => config,
        // `--help` on stdout (exit 0), or a configuration mistake on stderr (exit 2).
        Err(answer) => {
            let _ = answer.print();
            return if answer.use_stderr() {
                ExitCode::from(EXIT_USAGE)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: cannot start the tokio runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

async fn serve(config: Config) -> Result<(), String> {
    let pepper = match config.pepper {
        Some(pepper) => pepper,
        None => {
            if matches!(config.database, Database::Memory) {
                tracing::warn!(
                    "API_KEY_PEPPER is not set: using a random pepper for this run, \
                     so keys won't survive a restart"
                );
            } else {
                tracing::warn!(
                    "API_KEY_PEPPER is not set: using a random pepper for this run; keys \
                     stored in the database won't verify after a restart or in other \
                     server processes"
                );
            }
            Pepper::random().map_err(|err| format!("cannot generate a pepper: {err}"))?
        }
    };
    if config.flush_interval > Duration::from_millis(PROMPT_FLUSH_MS) {
        tracing::warn!(
            interval = ?config.flush_interval,
            "last-used flush interval above 1 s: last_used_at may lag uses by more than 2 s"
        );
    }

    let opened = open_store(&config.database).await?;
    let manager = KeyManager::new(Arc::clone(&opened.store), pepper)
        .with_audit_retention(config.audit_retention);
    let recorder = with_shared_quotas(
        UsageRecorder::new(Arc::clone(&opened.store)),
        &config.budgets,
    )
    .await?;
    let flusher = recorder.spawn_flusher(config.flush_interval);
    if !config.trusted_proxies.is_empty() {
        let proxies: Vec<String> = config
            .trusted_proxies
            .iter()
            .map(ToString::to_string)
            .collect();
        tracing::info!(
            proxies = %proxies.join(","),
            "X-Forwarded-For is read from connections of these trusted proxies"
        );
    }
    let api_keys = ApiKeyLayer::for_manager(&manager)
        .accept_bearer()
        .trusted_proxies(config.trusted_proxies.iter().copied())
        .record_usage(recorder);
    let api_keys = with_budgets(api_keys, &config.budgets).await?.build();
    let feed = opened.start_feed(&manager).await;
    let state = AppState {
        manager,
        api_keys,
        feed: feed.as_ref().map(|feed| feed.monitor()),
    };
    let (health, app) = app(state, config.admin_tokens);

    // Before announcing the address: a signal sent as soon as it is printed must already
    // mean "shut down gracefully", not the default "die at once".
    let mut signals = ShutdownSignals::install()
        .map_err(|err| format!("cannot listen for shutdown signals: {err}"))?;
    let listener = TcpListener::bind(config.addrs.as_slice())
        .await
        .map_err(|err| format!("cannot listen on {}: {err}", config.addr_text))?;
    let local_addr = listener
        .local_addr()
        .map_err(|err| format!("cannot read the listening address: {err}"))?;

    // stdout carries only what a caller parses: the generated token and the address.
    let mut stdout = std::io::stdout().lock();
    if let Some(token) = &config.generated_admin_token {
        tracing::warn!("ADMIN_TOKEN is not set: generated one for this run (printed on stdout)");
        let _ = writeln!(stdout, "admin token: {token}");
    }
    let _ = writeln!(stdout, "listening on http://{local_addr}");
    let _ = stdout.flush();
    drop(stdout);
    tracing::info!(%local_addr, "serving HTTP/1.1 and gRPC (h2c)");

    let (stop, stopped) = oneshot::channel::<()>();
    let mut server = tokio::spawn(serve_connections(listener, app, config.limits, stopped));

    tokio::select! {
        signal = signals.recv() => {
            tracing::info!(signal, "shutting down: finishing in-flight requests");
        }
        ended = &mut server => {
            return Err(match ended {
                Ok(()) => "the server stopped unexpectedly".to_owned(),
                Err(err) => format!("the server task failed: {err}"),
            });
        }
    }

    health
        .set_service_status("", ServingStatus::NotServing)
        .await;
    let _ = stop.send(());
    // Open connections get a grace period; a second signal ends it early.
    tokio::select! {
        finished = tokio::time::timeout(SHUTDOWN_GRACE, &mut server) => match finished {
            Ok(Ok(())) => {}
            Ok(Err(err)) => tracing::warn!(error = %err, "server task failed while shutting down"),
            Err(_) => {
                tracing::warn!(
                    grace = ?SHUTDOWN_GRACE,
                    "connections still open after the grace period; closing them"
                );
                server.abort();
            }
        },
        signal = signals.recv() => {
            tracing::warn!(signal, "second signal: closing open connections now");
            server.abort();
        }
    }

    match flusher.shutdown().await {
        Ok(keys) => tracing::info!(keys, "flushed pending last-used times"),
        Err(err) => tracing::warn!(error = %err, "could not flush pending last-used times"),
    }
    if let Some(feed) = feed {
        feed.shutdown().await;
    }
    tracing::info!("stopped");
    Ok(())
}
