//! The configuration: flags, then environment variables, into a [`Config`].

use std::ffi::OsString;
use std::net::{SocketAddr, ToSocketAddrs as _};
use std::time::Duration;

use tower_api_key::Pepper;
use tower_api_key::admin::{AdminToken, AdminTokenError};

use crate::serve::ConnectionLimits;

pub(crate) const USAGE: &str = "\
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

pub(crate) enum Command {
    // Boxed: a `Config` is large beside `Help`, and built once.
    Serve(Box<Config>),
    Help,
}

pub(crate) struct Config {
    /// Where to listen, resolved; `addr_text` is how the user wrote it.
    pub(crate) addrs: Vec<SocketAddr>,
    pub(crate) addr_text: String,
    pub(crate) flush_interval: Duration,
    pub(crate) limits: ConnectionLimits,
    pub(crate) admin_token: AdminToken,
    /// The generated admin token, to print once; `None` when it came from `ADMIN_TOKEN`.
    pub(crate) generated_admin_token: Option<String>,
    /// `None` when `API_KEY_PEPPER` is unset: a random pepper is used for this run.
    pub(crate) pepper: Option<Pepper>,
    pub(crate) database: Database,
}

/// Where keys are kept.
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

/// A setting as the user gave it: where it came from (a flag or a variable name) and its text.
type Setting = Option<(String, String)>;

impl Config {
    /// Reads the command line, then the environment for whatever the flags left unset.
    /// Every mistake is a message for the user, never a panic.
    pub(crate) fn load(
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
