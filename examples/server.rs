//! The demo server: API keys in front of an HTTP API and a gRPC service, on one port.
//!
//! ```text
//! cargo run --release --example server -- \
//!     [--addr HOST:PORT] [--last-used-flush-ms N] [--database-url URL] \
//!     [--header-read-timeout-ms N] [--max-connections N]
//! ```
//!
//! One process serves HTTP/1.1 and gRPC (HTTP/2 cleartext) on one port, keeping keys in the
//! embedded in-memory store, or in SQLite or PostgreSQL with `--database-url`:
//!
//! | route | access |
//! | --- | --- |
//! | `GET /healthz`, `GET /metrics` (Prometheus text of the layer's counters) | open |
//! | `GET /v1/ping`, `GET /v1/whoami`, gRPC `grpc.health.v1.Health/Check` and `/Watch` | `X-API-KEY: <key>` (or `Authorization: Bearer <key>`) |
//! | `POST /v1/write` | a key that is unrestricted or holds the `write` scope (else 403) |
//! | `POST` and `GET /admin/accounts/{account}/keys` | `Authorization: Bearer <ADMIN_TOKEN>` |
//! | `GET`, `PATCH` and `DELETE /admin/accounts/{account}/keys/{id}` | admin |
//! | `POST /admin/accounts/{account}/keys/{id}/rotate`, `…/revoke`, `…/reactivate` | admin |
//!
//! The admin routes are the crate's `tower_api_key::admin` router (feature `admin`; its
//! rustdoc has the JSON contract): create takes an optional
//! `{"name", "scopes", "expires_in_seconds" | "expires_at"}`, `PATCH` changes name, scopes or
//! expiry (`null` clears), rotate takes an optional `{"grace_seconds": N}`.
//!
//! Configuration (a flag wins over its environment variable; an empty variable counts as
//! unset):
//!
//! - `--addr` / `ADDR`: where to listen, default `127.0.0.1:3000`; port 0 picks a free port.
//! - `--last-used-flush-ms` / `LAST_USED_FLUSH_MS`: how often key uses are written to the
//!   store, default 500 (keep it at most 1000 for `last_used_at` to show a use within 2 s).
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
//! - `ADMIN_TOKEN`: the admin bearer token, at least 16 characters; if unset, a random one is
//!   generated and printed.
//! - `API_KEY_PEPPER`: 64 hex characters keying every key digest; if unset, a random one is
//!   used for this run only. Servers sharing a database need the same pepper, kept across
//!   restarts, or their keys don't verify.
//!
//! Every admin answer, the create and rotate ones with a plaintext key among them, carries
//! `Cache-Control: no-store`.
//!
//! HTTP/2 has no header timeout of its own: once a connection has sent its preface, a client
//! that stalls in the middle of a request's headers holds its connection slot until it goes
//! away (idle connections are pinged every 20 s and closed if the peer doesn't answer), so
//! `--max-connections` bounds what such clients can hold. A server-streaming call such as
//! `grpc.health.v1.Health/Watch` is checked once, when it starts: revoking its key doesn't end
//! a stream already open.
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
//! {"account_id":"acme","key_id":"…","prefix":"k3v9x0qa"}
//! $ curl -s -X POST -H 'authorization: Bearer k3v9x0qa.…' localhost:3000/v1/write
//! {"error":"insufficient scope"}
//! ```

use std::ffi::OsString;
use std::io::{IsTerminal as _, Write as _};
use std::net::{SocketAddr, ToSocketAddrs as _};
use std::pin::Pin;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderValue, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use hyper_util::service::TowerToHyperService;
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;
use tower_api_key::admin::{AdminRouter, AdminToken, AdminTokenError};
use tower_api_key::last_used::LastUsedRecorder;
use tower_api_key::resolver::StoreResolver;
use tower_api_key::{
    ApiKeyLayer, Authenticated, KeyIdentity, KeyManager, KeyStore, MemoryStore, Pepper,
    RequireScopeLayer,
};
use tracing_subscriber::EnvFilter;

const USAGE: &str = "\
usage: server [--addr HOST:PORT] [--last-used-flush-ms N] [--database-url URL]
              [--header-read-timeout-ms N] [--max-connections N]

  --addr HOST:PORT          where to listen (env ADDR, default 127.0.0.1:3000;
                            port 0 picks any free port)
  --last-used-flush-ms N    how often key uses are written to the store, in milliseconds
                            (env LAST_USED_FLUSH_MS, default 500, 1 to 3600000)
  --database-url URL        where keys are kept (env DATABASE_URL; default: in memory):
                            sqlite://FILE (one process; needs --features sqlite) or
                            postgres://USER:PASS@HOST/DB (many processes; --features postgres)
  --header-read-timeout-ms N
                            how long a client may take to send a request head, in milliseconds
                            (env HEADER_READ_TIMEOUT_MS, default 10000, 1 to 3600000)
  --max-connections N       connections open at once; more are closed at once
                            (env MAX_CONNECTIONS, default 10000, 1 to 1000000)
  -h, --help                print this help

environment:
  ADMIN_TOKEN               bearer token of the /admin routes, at least 16 characters
                            (default: generated and printed)
  API_KEY_PEPPER            64 hex characters keying key digests (default: random for this run)
  RUST_LOG                  log filter for stderr (default: info)";

const DEFAULT_ADDR: &str = "127.0.0.1:3000";
/// Above this, `last_used_at` may lag a use by more than the 2 s the demo promises.
const PROMPT_FLUSH_MS: u64 = 1000;
/// How long in-flight requests (and open gRPC streams) get to finish after a shutdown signal.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// Exit code for a configuration mistake, as for a command-line usage error.
const EXIT_USAGE: u8 = 2;

fn main() -> ExitCode {
    init_tracing();
    let config = match Config::load(std::env::args_os().skip(1), |name| std::env::var_os(name)) {
        Ok(Command::Help) => {
            let _ = writeln!(std::io::stdout(), "{USAGE}");
            return ExitCode::SUCCESS;
        }
        Ok(Command::Serve(config)) => *config,
        Err(message) => {
            eprintln!("error: {message}\n(run with --help for usage)");
            return ExitCode::from(EXIT_USAGE);
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

// ===== configuration =====

enum Command {
    // Boxed: a `Config` is large beside `Help`, and built once.
    Serve(Box<Config>),
    Help,
}

struct Config {
    /// Where to listen, resolved; `addr_text` is how the user wrote it.
    addrs: Vec<SocketAddr>,
    addr_text: String,
    flush_interval: Duration,
    limits: ConnectionLimits,
    admin_token: AdminToken,
    /// The generated admin token, to print once; `None` when it came from `ADMIN_TOKEN`.
    generated_admin_token: Option<String>,
    /// `None` when `API_KEY_PEPPER` is unset: a random pepper is used for this run.
    pepper: Option<Pepper>,
    database: Database,
}

/// Where keys are kept.
enum Database {
    Memory,
    #[cfg(feature = "sqlite")]
    Sqlite(String),
    #[cfg(feature = "postgres")]
    Postgres(String),
}

impl Database {
    /// The store a URL names. The URL itself is never repeated in a message: it may hold a
    /// password.
    fn from_url(source: &str, url: &str) -> Result<Self, String> {
        let scheme = url.split_once(':').map_or("", |(scheme, _)| scheme);
        match scheme.to_ascii_lowercase().as_str() {
            "postgres" | "postgresql" => {
                #[cfg(feature = "postgres")]
                return Ok(Self::Postgres(url.to_owned()));
                #[cfg(not(feature = "postgres"))]
                return Err(format!(
                    "{source} is a PostgreSQL URL, but this server was built without the \
                     `postgres` feature; run with --features postgres"
                ));
            }
            "sqlite" => {
                #[cfg(feature = "sqlite")]
                return Ok(Self::Sqlite(url.to_owned()));
                #[cfg(not(feature = "sqlite"))]
                return Err(format!(
                    "{source} is a SQLite URL, but this server was built without the \
                     `sqlite` feature; run with --features sqlite"
                ));
            }
            _ => Err(format!(
                "{source} must be a postgres://… or sqlite://… URL (or unset for the \
                 in-memory store)"
            )),
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            Self::Memory => "memory",
            #[cfg(feature = "sqlite")]
            Self::Sqlite(_) => "sqlite",
            #[cfg(feature = "postgres")]
            Self::Postgres(_) => "postgres",
        }
    }
}

/// A setting as the user gave it: where it came from (a flag or a variable name) and its text.
type Setting = Option<(String, String)>;

impl Config {
    /// Reads the command line, then the environment for whatever the flags left unset.
    /// Every mistake is a message for the user, never a panic.
    fn load(
        args: impl Iterator<Item = OsString>,
        env: impl Fn(&str) -> Option<OsString>,
    ) -> Result<Command, String> {
        let Some(Flags {
            addr,
            flush_ms,
            header_read_timeout_ms,
            max_connections,
            database_url,
        }) = Flags::parse(args)?
        else {
            return Ok(Command::Help);
        };
        // An empty variable counts as unset, as with most servers' configuration.
        let var = |name: &str| -> Result<Setting, String> {
            match env(name) {
                None => Ok(None),
                Some(value) if value.is_empty() => Ok(None),
                Some(value) => value
                    .into_string()
                    .map(|value| Some((name.to_owned(), value)))
                    .map_err(|_| format!("{name} is not valid UTF-8")),
            }
        };

        // The flag if given, else its variable.
        let setting = |flag: Setting, name: &str| -> Result<Setting, String> {
            flag.map_or_else(|| var(name), |flag| Ok(Some(flag)))
        };

        let (addr_source, addr_text) =
            setting(addr, "ADDR")?.unwrap_or_else(|| ("ADDR".to_owned(), DEFAULT_ADDR.to_owned()));
        let addrs = parse_addr(&addr_text).map_err(|why| {
            format!("{addr_source} {addr_text:?} is not a usable HOST:PORT address: {why}")
        })?;
        // A number: the setting, else the default; whole and within bounds.
        let number = |flag: Setting, name: &str, bounds: Bounds| -> Result<u64, String> {
            match setting(flag, name)? {
                Some((source, text)) => bounds.parse(&source, &text),
                None => Ok(bounds.default),
            }
        };
        let flush_interval =
            Duration::from_millis(number(flush_ms, "LAST_USED_FLUSH_MS", FLUSH_MS)?);
        let limits = ConnectionLimits {
            header_read_timeout: Duration::from_millis(number(
                header_read_timeout_ms,
                "HEADER_READ_TIMEOUT_MS",
                HEADER_READ_TIMEOUT_MS,
            )?),
            // At most `MAX_CONNECTIONS.max`, which fits any `usize`.
            max_connections: usize::try_from(number(
                max_connections,
                "MAX_CONNECTIONS",
                MAX_CONNECTIONS,
            )?)
            .map_err(|_| "MAX_CONNECTIONS is too large for this machine".to_owned())?,
        };
        let (admin_token, generated_admin_token) = match var("ADMIN_TOKEN")? {
            Some((_, token)) => (parse_admin_token(&token)?, None),
            None => {
                let token = random_token()
                    .map_err(|err| format!("cannot generate an admin token: {err}"))?;
                (parse_admin_token(&token)?, Some(token))
            }
        };
        let pepper = match var("API_KEY_PEPPER")? {
            Some((_, hex)) => Some(Pepper::from_hex(hex.trim()).map_err(|_| {
                "API_KEY_PEPPER must be 64 hex characters (32 bytes), \
                 e.g. the output of `openssl rand -hex 32`"
                    .to_owned()
            })?),
            None => None,
        };

        let database = match setting(database_url, "DATABASE_URL")? {
            Some((source, url)) => Database::from_url(&source, url.trim())?,
            None => Database::Memory,
        };

        Ok(Command::Serve(Box::new(Self {
            addrs,
            addr_text,
            flush_interval,
            limits,
            admin_token,
            generated_admin_token,
            pepper,
            database,
        })))
    }
}

/// The command-line flags; `None` for each one not given.
struct Flags {
    addr: Setting,
    flush_ms: Setting,
    header_read_timeout_ms: Setting,
    max_connections: Setting,
    database_url: Setting,
}

impl Flags {
    /// `--flag value` or `--flag=value`; a repeated flag's last value wins. `Ok(None)` means
    /// help was asked for.
    fn parse(mut args: impl Iterator<Item = OsString>) -> Result<Option<Self>, String> {
        let mut flags = Self {
            addr: None,
            flush_ms: None,
            header_read_timeout_ms: None,
            max_connections: None,
            database_url: None,
        };
        while let Some(arg) = args.next() {
            let arg = arg
                .into_string()
                .map_err(|arg| format!("argument {arg:?} is not valid UTF-8"))?;
            let (flag, inline_value) = match arg.split_once('=') {
                Some((flag, value)) if flag.starts_with("--") => (flag, Some(value.to_owned())),
                _ => (arg.as_str(), None),
            };
            let slot = match flag {
                "-h" | "--help" => return Ok(None),
                "--addr" => &mut flags.addr,
                "--last-used-flush-ms" => &mut flags.flush_ms,
                "--header-read-timeout-ms" => &mut flags.header_read_timeout_ms,
                "--max-connections" => &mut flags.max_connections,
                "--database-url" => &mut flags.database_url,
                _ => return Err(format!("unknown argument {arg:?}")),
            };
            let value = match inline_value {
                Some(value) => value,
                None => args
                    .next()
                    .ok_or_else(|| format!("{flag} needs a value"))?
                    .into_string()
                    .map_err(|value| format!("value {value:?} of {flag} is not valid UTF-8"))?,
            };
            *slot = Some((flag.to_owned(), value));
        }
        Ok(Some(flags))
    }
}

/// A numeric setting: whole numbers from 1 (0 means nothing useful for any of them: "never
/// wait", "no time to send a request", "no connections") to `max`.
#[derive(Clone, Copy)]
struct Bounds {
    unit: &'static str,
    max: u64,
    default: u64,
}

/// The last-used flush interval, in milliseconds.
const FLUSH_MS: Bounds = Bounds {
    unit: "milliseconds",
    max: 3_600_000,
    default: 500,
};
/// How long a client may take to send a request head, in milliseconds.
const HEADER_READ_TIMEOUT_MS: Bounds = Bounds {
    unit: "milliseconds",
    max: 3_600_000,
    default: 10_000,
};
/// How many connections may be open at once.
const MAX_CONNECTIONS: Bounds = Bounds {
    unit: "connections",
    max: 1_000_000,
    default: 10_000,
};

impl Bounds {
    fn parse(self, source: &str, text: &str) -> Result<u64, String> {
        text.trim()
            .parse::<u64>()
            .ok()
            .filter(|n| (1..=self.max).contains(n))
            .ok_or_else(|| {
                format!(
                    "{source} must be a whole number of {} from 1 to {}, not {text:?}",
                    self.unit, self.max
                )
            })
    }
}

/// Resolves `HOST:PORT` (an IP address or a host name) to the addresses to try binding.
fn parse_addr(text: &str) -> Result<Vec<SocketAddr>, String> {
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(vec![addr]);
    }
    let Some((host, port)) = text.rsplit_once(':') else {
        return Err("expected HOST:PORT".to_owned());
    };
    if host.is_empty() || port.parse::<u16>().is_err() {
        return Err("expected HOST:PORT with a port from 0 to 65535".to_owned());
    }
    let addrs: Vec<SocketAddr> = text
        .to_socket_addrs()
        .map_err(|err| format!("cannot resolve it: {err}"))?
        .collect();
    if addrs.is_empty() {
        return Err("the host name resolves to no address".to_owned());
    }
    Ok(addrs)
}

/// 32 random bytes as 64 hex characters.
fn random_token() -> Result<String, getrandom::Error> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)?;
    Ok(bytes.iter().map(|byte| format!("{byte:02x}")).collect())
}

// ===== admin token =====

/// `ADMIN_TOKEN`: it travels in an `Authorization` header, so printable ASCII without spaces,
/// and it guards key creation, so not short enough to guess. Neither message repeats it.
fn parse_admin_token(token: &str) -> Result<AdminToken, String> {
    AdminToken::new(token).map_err(|err| match err {
        AdminTokenError::TooShort => format!(
            "ADMIN_TOKEN is too short: it must be at least {} characters, e.g. the output of \
             `openssl rand -hex 32` (or leave it unset to have one generated)",
            AdminToken::MIN_LEN
        ),
        _ => "ADMIN_TOKEN must be printable ASCII without spaces".to_owned(),
    })
}

// ===== the server =====

#[derive(Clone)]
struct AppState {
    manager: KeyManager,
    api_keys: ApiKeyLayer<StoreResolver>,
    admin_token: AdminToken,
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
    let manager = KeyManager::new(Arc::clone(&opened.store), pepper);
    let recorder = LastUsedRecorder::new(Arc::clone(&opened.store));
    let flusher = recorder.spawn_flusher(config.flush_interval);
    let api_keys = ApiKeyLayer::for_manager(&manager)
        .accept_bearer()
        .record_last_used(recorder)
        .build();
    let feed = opened.start_feed(&manager).await;
    let state = AppState {
        manager,
        api_keys,
        admin_token: config.admin_token,
    };
    let (health, app) = app(state);

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

// ===== connections =====

/// What each connection may take: time to start sending, and a share of the server.
#[derive(Clone, Copy)]
struct ConnectionLimits {
    /// How long a client may take to send a request head (HTTP/1.1), or the first bytes of
    /// its connection (any protocol).
    header_read_timeout: Duration,
    /// Connections open at once; more are closed as soon as they are accepted.
    max_connections: usize,
}

/// How often an idle HTTP/2 connection is pinged, and how long the answer may take: a peer
/// that is gone stops holding a connection slot.
const H2_KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(20);
const H2_KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(20);
/// How long to pause accepting after an error such as "too many open files", which would
/// otherwise repeat at once.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_secs(1);

/// Serves HTTP/1.1 and h2c connections until `stop` fires, then stops accepting and waits
/// for the open connections to finish their requests (the caller bounds that wait).
async fn serve_connections(
    listener: TcpListener,
    app: Router,
    limits: ConnectionLimits,
    stop: oneshot::Receiver<()>,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(H2_KEEP_ALIVE_INTERVAL)
        .keep_alive_timeout(H2_KEEP_ALIVE_TIMEOUT);
    let builder = Arc::new(builder);
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = GracefulShutdown::new();
    // Warn once each time the limit is reached, not once per refused connection.
    let mut full = false;
    tokio::pin!(stop);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(err) => {
                    tracing::warn!(error = %err, "cannot accept a connection");
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                    continue;
                }
            },
            _ = &mut stop => break,
        };
        // Refused, not queued: a queue would let a flood hold memory and time anyway.
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            if !full {
                tracing::warn!(
                    max_connections = limits.max_connections,
                    "connection limit reached: closing new connections until one ends"
                );
                full = true;
            }
            drop(stream);
            continue;
        };
        full = false;
        tokio::spawn(serve_connection(
            Arc::clone(&builder),
            stream,
            app.clone(),
            graceful.watcher(),
            limits.header_read_timeout,
            slot,
        ));
    }
    drop(listener);
    graceful.shutdown().await;
}

/// How many bytes a client must send within the header read timeout: the length of the
/// HTTP/2 preface, and less than any HTTP/1.1 request head with a `host` line.
const OPENING_BYTES: usize = 24;

/// Serves one connection, holding its slot until it ends. hyper's HTTP/1.1 header timeout
/// starts only once the protocol is known, so a client that sends nothing (or part of the
/// HTTP/2 preface) is cut off here.
async fn serve_connection(
    builder: Arc<auto::Builder<TokioExecutor>>,
    stream: TcpStream,
    app: Router,
    watcher: Watcher,
    opening_timeout: Duration,
    _slot: OwnedSemaphorePermit,
) {
    let opened = Arc::new(AtomicBool::new(false));
    let io = TokioIo::new(Opening {
        stream,
        received: 0,
        opened: Arc::clone(&opened),
    });
    let connection =
        watcher.watch(builder.serve_connection_with_upgrades(io, TowerToHyperService::new(app)));
    tokio::pin!(connection);
    let ended = tokio::select! {
        ended = &mut connection => ended,
        () = tokio::time::sleep(opening_timeout) => {
            if !opened.load(Ordering::Relaxed) {
                tracing::debug!("closing a connection that sent too little in time");
                return;
            }
            connection.await
        }
    };
    if let Err(err) = ended {
        // Clients resetting or timing out are routine, not the server's fault.
        tracing::debug!(error = %err, "connection ended with an error");
    }
}

/// A connection's socket, noting when the client has sent its first [`OPENING_BYTES`].
struct Opening {
    stream: TcpStream,
    received: usize,
    opened: Arc<AtomicBool>,
}

impl AsyncRead for Opening {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.stream).poll_read(cx, buf);
        if self.received < OPENING_BYTES {
            self.received += buf.filled().len() - before;
            if self.received >= OPENING_BYTES {
                self.opened.store(true, Ordering::Relaxed);
            }
        }
        polled
    }
}

impl AsyncWrite for Opening {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

// ===== the store =====

/// The store the configuration names, migrated, and what it needs to hear other processes.
struct OpenedStore {
    store: Arc<dyn KeyStore>,
    #[cfg(feature = "postgres")]
    postgres: Option<tower_api_key::PostgresStore>,
}

/// Opens the store and applies its migrations; a database that can't be reached or migrated
/// stops the server before it listens.
async fn open_store(database: &Database) -> Result<OpenedStore, String> {
    let kind = database.kind();
    let store: Arc<dyn KeyStore> = match database {
        Database::Memory => Arc::new(MemoryStore::new()),
        #[cfg(feature = "sqlite")]
        Database::Sqlite(url) => {
            let store = tower_api_key::SqliteStore::connect(url)
                .await
                .map_err(|err| format!("cannot open the SQLite database: {err}"))?;
            store
                .migrate()
                .await
                .map_err(|err| format!("cannot migrate the SQLite database: {err}"))?;
            Arc::new(store)
        }
        #[cfg(feature = "postgres")]
        Database::Postgres(url) => {
            let store = tower_api_key::PostgresStore::connect(url)
                .await
                .map_err(|err| format!("cannot connect to PostgreSQL: {err}"))?;
            store
                .migrate()
                .await
                .map_err(|err| format!("cannot migrate the PostgreSQL database: {err}"))?;
            tracing::info!(store = kind, "keys are kept in PostgreSQL");
            return Ok(OpenedStore {
                store: Arc::new(store.clone()),
                postgres: Some(store),
            });
        }
    };
    tracing::info!(store = kind, "key store ready");
    Ok(OpenedStore {
        store,
        #[cfg(feature = "postgres")]
        postgres: None,
    })
}

/// How long to wait for the change feed before serving anyway (the layer fails closed until
/// it is subscribed: every request is resolved from the store).
#[cfg(feature = "postgres")]
const FEED_STARTUP_WAIT: Duration = Duration::from_secs(5);

impl OpenedStore {
    /// With PostgreSQL, starts hearing other processes' changes on the manager's bus (which
    /// the layer listens to) and waits a moment for the subscription.
    #[cfg(feature = "postgres")]
    async fn start_feed(&self, manager: &KeyManager) -> Option<tower_api_key::feed::FeedTask> {
        let store = self.postgres.as_ref()?;
        let feed = tower_api_key::feed::spawn(
            tower_api_key::PgChangeFeed::new(store),
            manager.invalidation_bus(),
            tower_api_key::feed::FeedConfig::default(),
        );
        if !feed.wait_subscribed(FEED_STARTUP_WAIT).await {
            tracing::warn!(
                "not yet listening for other processes' key changes; every request is \
                 checked against the database until then"
            );
        }
        Some(feed)
    }

    #[cfg(not(feature = "postgres"))]
    async fn start_feed(&self, _manager: &KeyManager) -> Option<Feed> {
        None
    }
}

/// Without the `postgres` feature there is no change feed to stop.
#[cfg(not(feature = "postgres"))]
enum Feed {}

#[cfg(not(feature = "postgres"))]
impl Feed {
    async fn shutdown(self) {
        match self {}
    }
}

/// SIGINT (Ctrl-C) and SIGTERM, caught from the moment they are installed.
#[cfg(unix)]
struct ShutdownSignals {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
}

#[cfg(unix)]
impl ShutdownSignals {
    fn install() -> std::io::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Self {
            interrupt: signal(SignalKind::interrupt())?,
            terminate: signal(SignalKind::terminate())?,
        })
    }

    /// Waits for the next signal and says which it was.
    async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.interrupt.recv() => "SIGINT",
            _ = self.terminate.recv() => "SIGTERM",
        }
    }
}

/// Ctrl-C, where there are no Unix signals.
#[cfg(not(unix))]
struct ShutdownSignals;

#[cfg(not(unix))]
impl ShutdownSignals {
    fn install() -> std::io::Result<Self> {
        Ok(Self)
    }

    async fn recv(&mut self) -> &'static str {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
        "Ctrl-C"
    }
}

/// The whole application: open routes, API-key routes (HTTP and gRPC), admin routes.
/// Returns the health reporter too, to report NOT_SERVING during shutdown.
fn app(state: AppState) -> (HealthReporter, Router) {
    let (health, health_service) = tonic_health::server::health_reporter();

    // `route_layer`: only matched routes check keys, so an unknown path is a plain 404.
    let with_api_key = Router::new()
        // Only keys that are unrestricted or list `write`; others get 403.
        .route("/v1/write", post(write))
        .route_layer(RequireScopeLayer::<KeyIdentity>::new("write"))
        .route("/v1/ping", get(ping))
        .route("/v1/whoami", get(whoami))
        .route_service("/grpc.health.v1.Health/{*method}", health_service)
        .route_layer(state.api_keys.clone());

    // Every key lifecycle change is logged by the manager (account, prefix, action).
    let admin = AdminRouter::new(state.manager.clone(), state.admin_token.clone()).into_router();

    let app = Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .merge(with_api_key)
        .merge(admin)
        .fallback(not_found)
        .with_state(state);
    (health, app)
}

// ===== open routes =====

async fn healthz() -> &'static str {
    "ok"
}

async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(
            CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4"),
        )],
        state.api_keys.metrics().to_prometheus(),
    )
}

async fn not_found() -> impl IntoResponse {
    (
        StatusCode::NOT_FOUND,
        Json(serde_json::json!({ "error": "not found" })),
    )
}

// ===== API-key routes =====

async fn ping() -> &'static str {
    "pong"
}

async fn write() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "written": true }))
}

#[derive(Serialize)]
struct Whoami {
    account_id: String,
    key_id: String,
    prefix: String,
}

// `Extension` rather than the `Authenticated` extractor keeps the demo free of the crate's
// `axum` feature, so the README's plain `cargo run --example server` works.
async fn whoami(Extension(who): Extension<Authenticated<KeyIdentity>>) -> Json<Whoami> {
    Json(Whoami {
        account_id: who.account_id().to_string(),
        key_id: who.key_id().to_string(),
        prefix: who.prefix().to_string(),
    })
}
