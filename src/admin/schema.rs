//! How the OpenAPI document describes the admin API's values: the path and query parameters
//! the handlers read themselves, the strings the JSON writes for scopes, statuses, periods
//! and granularities, and the error answers each kind of route can give. Used by the
//! handlers' and the JSON types' attributes; the document itself is `openapi.rs`.

use std::collections::BTreeMap;

use utoipa::openapi::header::Header;
use utoipa::openapi::{ContentBuilder, Object, Ref, RefOr, Response, ResponseBuilder, Type};
use utoipa::{IntoParams, IntoResponses, ToSchema};

// ===== parameters =====

/// The account of an account's routes.
#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(
    dead_code,
    reason = "described only: the handlers read the path themselves"
)]
pub(crate) struct AccountPath {
    /// The account: 1 to 64 characters of `[A-Za-z0-9_-]` (400 otherwise).
    #[param(pattern = "^[A-Za-z0-9_-]{1,64}$")]
    account: String,
}

/// The account and key of a key's routes.
#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(
    dead_code,
    reason = "described only: the handlers read the path themselves"
)]
pub(crate) struct KeyPath {
    /// The account: 1 to 64 characters of `[A-Za-z0-9_-]` (400 otherwise).
    #[param(pattern = "^[A-Za-z0-9_-]{1,64}$")]
    account: String,
    /// The key's id (a malformed one is no key's: 404).
    #[param(format = "uuid")]
    id: String,
}

/// The query of the usage routes; each parameter at most once, and no other.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(
    dead_code,
    reason = "described only: the handlers read the query themselves"
)]
pub(crate) struct UsageQuery {
    /// Hourly (the default) or daily (UTC days) buckets.
    #[param(inline)]
    granularity: Option<UsageGranularity>,
    /// The first bucket: the one `from` falls in. Without `from` nor `to`, the last 48 hours
    /// or 30 days; with one of them, 48 hours or 30 days from or before it.
    #[param(format = DateTime)]
    from: Option<String>,
    /// The end of the range (exclusive): the buckets that start before it. At most 1000
    /// buckets between `from` and `to`.
    #[param(format = DateTime)]
    to: Option<String>,
}

/// The query of the events route; each parameter at most once, and no other.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(
    dead_code,
    reason = "described only: the handler reads the query itself"
)]
pub(crate) struct EventsQuery {
    /// How many entries at most (default 50).
    #[param(minimum = 1, maximum = 500)]
    limit: Option<u32>,
    /// Only entries older than this one: the `id` of the previous page's last entry.
    #[param(minimum = 1)]
    before: Option<u64>,
}

/// A scope: 1 to 64 of `a-z`, `0-9`, `:`, `.`, `_` and `-`, starting with a letter or digit.
/// A key holds at most 16 distinct scopes (a scope given twice counts once).
#[derive(ToSchema)]
#[schema(pattern = r"^[a-z0-9][a-z0-9:._-]{0,63}$")]
#[allow(
    dead_code,
    reason = "described only: scopes are read and written as strings"
)]
pub(crate) struct Scope(String);

// ===== enumerations, as written in the JSON =====

/// A key's status.
#[derive(ToSchema)]
#[schema(rename_all = "lowercase")]
#[allow(dead_code, reason = "described only: the records write it as a string")]
pub(crate) enum KeyStatus {
    Active,
    Inactive,
}

/// A quota's period: the UTC calendar day or month.
#[derive(ToSchema)]
#[schema(rename_all = "lowercase")]
#[allow(dead_code, reason = "described only: quotas write it as a string")]
pub(crate) enum QuotaPeriod {
    Day,
    Month,
}

/// The length of a usage bucket: an hour or a UTC day.
#[derive(ToSchema)]
#[schema(rename_all = "lowercase")]
#[allow(dead_code, reason = "described only: usage writes it as a string")]
pub(crate) enum UsageGranularity {
    Hour,
    Day,
}

// ===== error answers =====

/// The error answers of a read (GET).
#[derive(Debug)]
pub(crate) struct ReadErrors;

/// The error answers of a change without a body (revoke, reactivate, delete): a read's, and
/// what is refused of a change before its handler runs (cross-site, a body that isn't JSON).
#[derive(Debug)]
pub(crate) struct ChangeErrors;

/// The error answers of a change with a body (create, update, rotate): a change's, and a
/// body over the limit.
#[derive(Debug)]
pub(crate) struct BodyErrors;

impl IntoResponses for ReadErrors {
    fn responses() -> BTreeMap<String, RefOr<Response>> {
        errors(Kind::Read)
    }
}

impl IntoResponses for ChangeErrors {
    fn responses() -> BTreeMap<String, RefOr<Response>> {
        errors(Kind::Change)
    }
}

impl IntoResponses for BodyErrors {
    fn responses() -> BTreeMap<String, RefOr<Response>> {
        errors(Kind::ChangeWithBody)
    }
}

/// Which error answers a route can give.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Read,
    Change,
    ChangeWithBody,
}

/// The error answers of routes of `kind`, each `{"error": message}`. (409, which only create
/// gives, is on create's own attribute.)
fn errors(kind: Kind) -> BTreeMap<String, RefOr<Response>> {
    let forbidden = if kind == Kind::Read {
        "`not allowed for this caller`: the caller may manage the account but not do this"
    } else {
        "`cross-site request refused`: a change a browser sent from another site; or `not \
         allowed for this caller`: the caller may manage the account but not do this"
    };
    let mut answers = vec![
        (
            "400",
            "A bad account id, body, policy value or usage query, named",
            None,
        ),
        (
            "401",
            "The authorizer doesn't know the caller",
            Some(("WWW-Authenticate", "`Bearer`", Type::String)),
        ),
        ("403", forbidden, None),
        (
            "404",
            "An unknown or malformed key id, or an account the caller may not manage (the \
             same answer)",
            None,
        ),
        (
            "500",
            "`internal error`: a handler, the authorizer or the event hook panicked",
            None,
        ),
        (
            "503",
            "The store failed; retry later",
            Some(("Retry-After", "Seconds to wait", Type::Integer)),
        ),
    ];
    if kind != Kind::Read {
        answers.push((
            "415",
            "A body or a `Content-Type` that isn't `application/json`",
            None,
        ));
    }
    if kind == Kind::ChangeWithBody {
        answers.push((
            "413",
            "A body over the router's limit (16 KiB by default)",
            None,
        ));
    }
    answers
        .into_iter()
        .map(|(status, description, header)| {
            let content = ContentBuilder::new()
                .schema(Some(Ref::from_schema_name("Error")))
                .build();
            let mut response = ResponseBuilder::new()
                .description(description)
                .content("application/json", content);
            if let Some((name, about, kind)) = header {
                let mut header = Header::new(Object::with_type(kind));
                header.description = Some(about.to_owned());
                response = response.header(name, header);
            }
            (status.to_owned(), response.build().into())
        })
        .collect()
}
