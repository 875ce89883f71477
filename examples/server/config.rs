//! The configuration: flags, then environment variables, into a [`Config`] (clap).

use std::ffi::OsStr;
use std::net::{SocketAddr, ToSocketAddrs as _};
use std::time::Duration;

use clap::builder::TypedValueParser;
use clap::error::ErrorKind;
use clap::parser::ValueSource;
use clap::{Arg, CommandFactory as _, FromArgMatches as _, Parser};
use tower_api_key::admin::{AdminToken, AdminTokenError, AdminTokens};
use tower_api_key::policy::Cidr;
use tower_api_key::{AccountId, Pepper};

use crate::serve::ConnectionLimits;

/// The variables read from the environment only, listed under the flags in `--help`.
const ENVIRONMENT: &str = "\
Environment:
  ADMIN_TOKEN     the operator's bearer token of the /admin routes (every account),
                  at least 16 characters (default: generated and printed)
  API_KEY_PEPPER  64 hex characters keying key digests (default: random for this run)
  RUST_LOG        log filter for stderr (default: info)";

/// Milliseconds settings (the last-used flush interval, the header read timeout) go up to an
/// hour.
const MAX_MS: u64 = 3_600_000;
const MAX_CONNECTIONS: u64 = 1_000_000;
const MAX_LEASE: u64 = 1_000;
/// The longest audit retention the server takes, in days.
const MAX_DAYS: u64 = 36_500;
const SECONDS_PER_DAY: u64 = 86_400;

/// The demo server: API keys in front of an HTTP API and a gRPC service, on one port.
///
/// A flag wins over its environment variable; an empty variable counts as unset.
#[derive(Parser)]
// A repeated flag's last value wins; `--last-used-flush-ms -5` is a bad number, not a flag.
#[command(
    name = "server",
    args_override_self = true,
    allow_negative_numbers = true,
    after_help = ENVIRONMENT
)]
struct Flags {
    /// Where to listen; port 0 picks any free port
    #[arg(long, env = "ADDR", value_name = "HOST:PORT")]
    #[arg(default_value = "127.0.0.1:3000", value_parser = Setting(listen_addr))]
    addr: ListenAddr,

    /// How often key uses (last_used_at and the hourly request counts) are written to the
    /// store, in milliseconds (1 to 3600000)
    #[arg(long, env = "LAST_USED_FLUSH_MS", value_name = "N")]
    #[arg(default_value_t = 500, value_parser = milliseconds())]
    last_used_flush_ms: u64,

    /// Where keys are kept (default: in memory): sqlite://FILE or postgres://USER:PASS@HOST/DB
    ///
    /// sqlite://FILE: one process, needs --features sqlite; postgres://USER:PASS@HOST/DB: many
    /// processes, needs --features postgres.
    #[arg(long, env = "DATABASE_URL", value_name = "URL", value_parser = Setting(database))]
    database_url: Option<Database>,

    /// Share each key's rate-limit budget and quota count with every server using this Redis
    /// (default: this server counts budgets alone, quotas against the store's usage):
    /// redis://[:PASSWORD@]HOST[:PORT][/DB]
    ///
    /// Needs --features redis.
    #[arg(long, env = "REDIS_URL", value_name = "URL", value_parser = Setting(redis_url))]
    redis_url: Option<String>,

    /// With --redis-url: spend up to N requests of a key's budget between round trips to Redis
    /// (1 to 1000; default: one round trip per request, exact)
    #[arg(long, env = "REDIS_LEASE", value_name = "N", value_parser = lease())]
    redis_lease: Option<u32>,

    /// With --redis-url: how long a rate-limit check may wait for Redis before the request is
    /// let through uncounted, in milliseconds (1 to 3600000)
    #[arg(long, env = "REDIS_TIMEOUT_MS", value_name = "N")]
    #[arg(default_value_t = 100, value_parser = milliseconds())]
    redis_timeout_ms: u64,

    /// How long a client may take to send a request head, in milliseconds (1 to 3600000)
    #[arg(long, env = "HEADER_READ_TIMEOUT_MS", value_name = "N")]
    #[arg(default_value_t = 10_000, value_parser = milliseconds())]
    header_read_timeout_ms: u64,

    /// Connections open at once; more are closed at once (1 to 1000000)
    #[arg(long, env = "MAX_CONNECTIONS", value_name = "N")]
    #[arg(default_value_t = 10_000, value_parser = connections())]
    max_connections: u64,

    /// A bearer token for one account's own users (repeatable; the variable is a comma-separated
    /// list, e.g. acme=tok1,globex=tok2): that account's /admin routes only, narrowing keys but
    /// never widening them. Tokens are at least 16 characters.
    #[arg(
        long = "tenant-token",
        env = "TENANT_TOKENS",
        value_name = "ACCOUNT=TOKEN"
    )]
    #[arg(value_delimiter = ',', value_parser = Setting(tenant_token))]
    tenant_tokens: Vec<TenantToken>,

    /// Reverse proxies whose X-Forwarded-For is read, as addresses or CIDR blocks (repeatable,
    /// or comma-separated, e.g. 10.0.0.0/8,192.0.2.1; default: none)
    ///
    /// A request whose connection comes from one of them is checked against a key's allowed
    /// addresses as coming from the rightmost X-Forwarded-For entry that is not one of them.
    /// Without any, X-Forwarded-For is ignored: any client can write it. A bare address is one
    /// host (/32 or /128).
    #[arg(long = "trusted-proxies", env = "TRUSTED_PROXIES", value_name = "CIDR")]
    #[arg(value_delimiter = ',', value_parser = Setting(trusted_proxy))]
    trusted_proxies: Vec<Cidr>,

    /// How many days the audit trail (GET /admin/accounts/{account}/events) keeps each entry
    /// (1 to 36500)
    #[arg(long, env = "AUDIT_RETENTION_DAYS", value_name = "N")]
    #[arg(default_value_t = 400, value_parser = days())]
    audit_retention_days: u64,
}

/// What the server runs with.
pub(crate) struct Config {
    /// Where to listen, resolved; `addr_text` is how the user wrote it.
    pub(crate) addrs: Vec<SocketAddr>,
    pub(crate) addr_text: String,
    pub(crate) flush_interval: Duration,
    pub(crate) limits: ConnectionLimits,
    /// The operator's token and the tenants'.
    pub(crate) admin_tokens: AdminTokens,
    /// The generated admin token, to print once; `None` when it came from `ADMIN_TOKEN`.
    pub(crate) generated_admin_token: Option<String>,
    /// `None` when `API_KEY_PEPPER` is unset: a random pepper is used for this run.
    pub(crate) pepper: Option<Pepper>,
    pub(crate) database: Database,
    /// Where rate-limit budgets are kept.
    pub(crate) budgets: Budgets,
    /// The proxies whose `X-Forwarded-For` is read; none by default.
    pub(crate) trusted_proxies: Vec<Cidr>,
    /// How long audit entries are kept.
    pub(crate) audit_retention: Duration,
}

impl Config {
    /// Reads the command line, then the environment for whatever the flags left unset. `Err`
    /// is clap's answer to print: the help (exit 0), or a mistake in the configuration
    /// (exit 2), never a panic.
    pub(crate) fn load() -> Result<Self, clap::Error> {
        let mut command = Flags::command().mut_args(from_environment);
        let matches = command.try_get_matches_from_mut(std::env::args_os())?;
        let flags = Flags::from_arg_matches(&matches).map_err(|err| err.format(&mut command))?;
        Self::from_flags(flags)
            .map_err(|message| command.error(ErrorKind::ValueValidation, message))
    }

    /// Adds what only the environment holds: the admin token and the pepper.
    fn from_flags(flags: Flags) -> Result<Self, String> {
        let (admin_token, generated_admin_token) = match var("ADMIN_TOKEN")? {
            Some(token) => (parse_admin_token(&token)?, None),
            None => {
                let token = random_token()
                    .map_err(|err| format!("cannot generate an admin token: {err}"))?;
                (parse_admin_token(&token)?, Some(token))
            }
        };
        let pepper = match var("API_KEY_PEPPER")? {
            Some(hex) => Some(Pepper::from_hex(hex.trim()).map_err(|_| {
                "API_KEY_PEPPER must be 64 hex characters (32 bytes), \
                 e.g. the output of `openssl rand -hex 32`"
                    .to_owned()
            })?),
            None => None,
        };
        let mut admin_tokens = AdminTokens::new().operator(admin_token);
        for tenant in flags.tenant_tokens {
            if admin_tokens.knows(&tenant.token) {
                return Err(format!(
                    "the token of tenant {} is given to another tenant or is ADMIN_TOKEN: \
                     each caller needs a token of its own",
                    tenant.account
                ));
            }
            admin_tokens = admin_tokens.tenant(tenant.account, tenant.token);
        }
        Ok(Self {
            addrs: flags.addr.addrs,
            addr_text: flags.addr.text,
            flush_interval: Duration::from_millis(flags.last_used_flush_ms),
            limits: ConnectionLimits {
                header_read_timeout: Duration::from_millis(flags.header_read_timeout_ms),
                // At most `MAX_CONNECTIONS`, which fits any `usize`.
                max_connections: usize::try_from(flags.max_connections)
                    .map_err(|_| "MAX_CONNECTIONS is too large for this machine".to_owned())?,
            },
            admin_tokens,
            generated_admin_token,
            pepper,
            database: flags.database_url.unwrap_or(Database::Memory),
            trusted_proxies: flags.trusted_proxies,
            audit_retention: Duration::from_secs(flags.audit_retention_days * SECONDS_PER_DAY),
            budgets: match flags.redis_url {
                None if flags.redis_lease.is_some() => {
                    return Err("--redis-lease needs --redis-url".to_owned());
                }
                None => Budgets::Local,
                #[cfg(feature = "redis")]
                Some(url) => Budgets::Redis {
                    url,
                    lease: flags.redis_lease,
                    timeout: Duration::from_millis(flags.redis_timeout_ms),
                },
                #[cfg(not(feature = "redis"))]
                Some(_) => unreachable!("without the feature, `redis_url` refuses every URL"),
            },
        })
    }
}

/// How a flag reads its variable: an empty variable counts as unset, as with most servers'
/// configuration (clap would read it as an empty value), and `--help` never shows a variable's
/// value (`DATABASE_URL` may hold a password).
fn from_environment(arg: Arg) -> Arg {
    let empty = arg
        .get_env()
        .and_then(std::env::var_os)
        .is_some_and(|value| value.is_empty());
    let arg = arg.hide_env_values(true);
    if empty { arg.env(None) } else { arg }
}

/// A variable read from the environment only; empty counts as unset.
fn var(name: &str) -> Result<Option<String>, String> {
    match std::env::var_os(name) {
        None => Ok(None),
        Some(value) if value.is_empty() => Ok(None),
        Some(value) => value
            .into_string()
            .map(Some)
            .map_err(|_| format!("{name} is not valid UTF-8")),
    }
}

/// A value parser whose messages name where the bad value came from: the flag
/// (`--last-used-flush-ms`) or its variable (`LAST_USED_FLUSH_MS`). `F` gets that name and the
/// text.
#[derive(Clone)]
struct Setting<F>(F);

impl<T, F> TypedValueParser for Setting<F>
where
    F: Fn(&str, &str) -> Result<T, String> + Clone + Send + Sync + 'static,
    T: Clone + Send + Sync + 'static,
{
    type Value = T;

    fn parse_ref(
        &self,
        command: &clap::Command,
        arg: Option<&Arg>,
        value: &OsStr,
    ) -> Result<T, clap::Error> {
        self.parse_ref_(command, arg, value, ValueSource::CommandLine)
    }

    fn parse_ref_(
        &self,
        command: &clap::Command,
        arg: Option<&Arg>,
        value: &OsStr,
        source: ValueSource,
    ) -> Result<T, clap::Error> {
        let flag = arg.and_then(Arg::get_long).map(|long| format!("--{long}"));
        let variable = arg
            .and_then(Arg::get_env)
            .map(|name| name.to_string_lossy().into_owned());
        let name = match source {
            ValueSource::CommandLine => flag.or(variable),
            _ => variable.or(flag),
        }
        .unwrap_or_else(|| "a setting".to_owned());
        let parsed = match (value.to_str(), source) {
            (Some(text), _) => (self.0)(&name, text),
            (None, ValueSource::CommandLine) => {
                Err(format!("value {value:?} of {name} is not valid UTF-8"))
            }
            (None, _) => Err(format!("{name} is not valid UTF-8")),
        };
        parsed.map_err(|message| command.clone().error(ErrorKind::ValueValidation, message))
    }
}

/// Where to listen: the addresses `HOST:PORT` resolves to, and the text as written.
#[derive(Clone)]
struct ListenAddr {
    addrs: Vec<SocketAddr>,
    text: String,
}

fn listen_addr(source: &str, text: &str) -> Result<ListenAddr, String> {
    let addrs = resolve(text)
        .map_err(|why| format!("{source} {text:?} is not a usable HOST:PORT address: {why}"))?;
    Ok(ListenAddr {
        addrs,
        text: text.to_owned(),
    })
}

/// Resolves `HOST:PORT` (an IP address or a host name) to the addresses to try binding.
fn resolve(text: &str) -> Result<Vec<SocketAddr>, String> {
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

/// One trusted proxy: an address (one host, `/32` or `/128`) or a CIDR block.
fn trusted_proxy(source: &str, text: &str) -> Result<Cidr, String> {
    let entry = text.trim();
    if entry.is_empty() {
        return Err(format!(
            "{source} has an empty entry: expected IP addresses or CIDR blocks separated by \
             commas, e.g. 10.0.0.0/8,192.0.2.1"
        ));
    }
    entry.parse::<Cidr>().map_err(|_| {
        // At most 80 characters of it: a mistaken value may be long.
        let shown: String = entry.chars().take(80).collect();
        format!(
            "{source}: {shown:?} is not an IP address or CIDR block (e.g. 10.0.0.0/8, \
             192.0.2.1 or 2001:db8::/32)"
        )
    })
}

/// Where keys are kept, from `--database-url` or `DATABASE_URL`.
fn database(source: &str, url: &str) -> Result<Database, String> {
    Database::from_url(source, url.trim())
}

/// A `redis://` URL, from `--redis-url` or `REDIS_URL`. The URL is never repeated in a
/// message: it may hold a password.
fn redis_url(source: &str, url: &str) -> Result<String, String> {
    let url = url.trim();
    let scheme = url.split_once("://").map_or("", |(scheme, _)| scheme);
    match scheme.to_ascii_lowercase().as_str() {
        "redis" if cfg!(feature = "redis") => Ok(url.to_owned()),
        "redis" => Err(built_without(source, "Redis", "redis")),
        "rediss" => Err(format!(
            "{source}: TLS to Redis (rediss://) is not supported by this server"
        )),
        _ => Err(format!("{source} must be a redis://… URL")),
    }
}

/// A lease of 1 to 1,000 requests.
fn lease() -> Setting<impl Fn(&str, &str) -> Result<u32, String> + Clone + Send + Sync + 'static> {
    Setting(|source: &str, text: &str| {
        // At most `MAX_LEASE`, which fits a `u32`.
        whole(source, text, "requests", MAX_LEASE).map(|n| n as u32)
    })
}

/// A whole number of milliseconds, up to an hour.
fn milliseconds()
-> Setting<impl Fn(&str, &str) -> Result<u64, String> + Clone + Send + Sync + 'static> {
    Setting(|source: &str, text: &str| whole(source, text, "milliseconds", MAX_MS))
}

/// A whole number of days, up to a hundred years.
fn days() -> Setting<impl Fn(&str, &str) -> Result<u64, String> + Clone + Send + Sync + 'static> {
    Setting(|source: &str, text: &str| whole(source, text, "days", MAX_DAYS))
}

/// A whole number of connections, up to a million.
fn connections()
-> Setting<impl Fn(&str, &str) -> Result<u64, String> + Clone + Send + Sync + 'static> {
    Setting(|source: &str, text: &str| whole(source, text, "connections", MAX_CONNECTIONS))
}

/// A whole number from 1 (0 means nothing useful for any of the numeric settings: "never
/// wait", "no time to send a request", "no connections") to `max`.
fn whole(source: &str, text: &str, unit: &str, max: u64) -> Result<u64, String> {
    text.trim()
        .parse::<u64>()
        .ok()
        .filter(|n| (1..=max).contains(n))
        .ok_or_else(|| {
            format!("{source} must be a whole number of {unit} from 1 to {max}, not {text:?}")
        })
}

/// Where keys are kept.
#[derive(Clone)]
pub(crate) enum Database {
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
                return Err(built_without(source, "PostgreSQL", "postgres"));
            }
            "sqlite" => {
                #[cfg(feature = "sqlite")]
                return Ok(Self::Sqlite(url.to_owned()));
                #[cfg(not(feature = "sqlite"))]
                return Err(built_without(source, "SQLite", "sqlite"));
            }
            _ => Err(format!(
                "{source} must be a postgres://… or sqlite://… URL (or unset for the \
                 in-memory store)"
            )),
        }
    }

    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Self::Memory => "memory",
            #[cfg(feature = "sqlite")]
            Self::Sqlite(_) => "sqlite",
            #[cfg(feature = "postgres")]
            Self::Postgres(_) => "postgres",
        }
    }
}

/// Where rate-limit budgets are kept.
#[derive(Clone)]
pub(crate) enum Budgets {
    /// In this process.
    Local,
    /// In Redis, shared with every server using it; with a lease, spent locally that many
    /// requests at a time; a check waits at most `timeout` for Redis.
    #[cfg(feature = "redis")]
    Redis {
        url: String,
        lease: Option<u32>,
        timeout: Duration,
    },
}

/// A URL of a kind this build can't open: it names the feature to build with.
fn built_without(source: &str, kind: &str, feature: &str) -> String {
    format!(
        "{source} is a {kind} URL, but this server was built without the `{feature}` feature; \
         run with --features {feature}"
    )
}

/// 32 random bytes as 64 hex characters.
fn random_token() -> Result<String, getrandom::Error> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)?;
    Ok(bytes.iter().map(|byte| format!("{byte:02x}")).collect())
}

// ===== admin and tenant tokens =====

/// One `--tenant-token ACCOUNT=TOKEN`.
#[derive(Clone)]
struct TenantToken {
    account: AccountId,
    token: AdminToken,
}

/// `ACCOUNT=TOKEN`; neither message repeats the token.
fn tenant_token(source: &str, text: &str) -> Result<TenantToken, String> {
    let (account, token) = text
        .trim()
        .split_once('=')
        .ok_or_else(|| format!("{source} must be ACCOUNT=TOKEN"))?;
    let account = account.parse::<AccountId>().map_err(|_| {
        format!("{source}: the account must be 1 to 64 characters of [A-Za-z0-9_-]")
    })?;
    let token = AdminToken::new(token).map_err(|err| match err {
        AdminTokenError::TooShort => format!(
            "{source}: the token of {account} is too short: it must be at least {} characters",
            AdminToken::MIN_LEN
        ),
        _ => format!("{source}: the token of {account} must be printable ASCII without spaces"),
    })?;
    Ok(TenantToken { account, token })
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
