//! The audit trail's route: its query (`limit`, `before`, read strictly) and answer
//! (`{"events": [...]}`, newest first).

use serde::Serialize;
use utoipa::ToSchema;

use super::error::ApiError;
use super::json::rfc3339;
use super::query::params;
use crate::audit::{self, AuditEvent, AuditId, AuditQuery};

/// How many entries a page holds unless the query says: 50.
pub(crate) const DEFAULT_LIMIT: usize = 50;

/// Reads the events route's query string: `limit` 1 to [`audit::MAX_PAGE`] (default
/// [`DEFAULT_LIMIT`]), `before` an entry's `id` (the last of the previous page). Anything
/// else, or either given twice, is a 400 naming it.
pub(crate) fn query_of(query: Option<&str>) -> Result<AuditQuery, ApiError> {
    let [limit, before] = params(query, ["limit", "before"])?;
    let limit = match limit {
        None => DEFAULT_LIMIT,
        Some(text) => text
            .parse::<usize>()
            .ok()
            .filter(|limit| (1..=audit::MAX_PAGE).contains(limit))
            .ok_or_else(|| {
                ApiError::bad_request(format!(
                    "limit must be a whole number from 1 to {}",
                    audit::MAX_PAGE
                ))
            })?,
    };
    let before = before
        .map(|text| {
            text.parse::<u64>()
                .ok()
                .filter(|id| *id > 0)
                .map(AuditId::new)
                .ok_or_else(|| {
                    ApiError::bad_request("before must be an event's id, a positive whole number")
                })
        })
        .transpose()?;
    Ok(AuditQuery {
        before,
        ..AuditQuery::latest(limit)
    })
}

/// `{"events": [...]}`, newest first.
#[derive(Serialize, ToSchema)]
#[schema(as = AuditEvents)]
pub(crate) struct EventList {
    /// The page's entries, newest first; fewer than `limit` on the last page.
    events: Vec<EventView>,
}

impl EventList {
    pub(crate) fn new(events: &[AuditEvent]) -> Self {
        Self {
            events: events.iter().map(EventView::new).collect(),
        }
    }
}

/// One entry as the API shows it.
#[derive(Serialize, ToSchema)]
#[schema(
    as = AuditEvent,
    description = "A change to a key, or an attempt at one that was refused. Never holds a \
                   secret or a digest."
)]
struct EventView {
    /// The entry's number: later entries have larger ones. Page with `before`.
    #[schema(minimum = 1)]
    id: u64,
    /// When the change was made (RFC 3339, UTC, microseconds).
    #[schema(format = DateTime)]
    at: String,
    #[schema(value_type = crate::audit::AuditAction)]
    action: &'static str,
    /// The key; `null` for a refused create (no key was made) or a refused change of a key
    /// the account doesn't hold.
    #[schema(required, format = "uuid")]
    key_id: Option<String>,
    /// The key's prefix after the change (a rotation's new one, a deleted key's last one);
    /// `null` where `key_id` is.
    #[schema(required)]
    prefix: Option<String>,
    /// Who: the name the authorizer gives the caller (`operator`, `tenant:ACCOUNT`).
    actor: String,
    #[schema(value_type = crate::audit::AuditOutcome)]
    outcome: &'static str,
    /// The policy fields a create or update set (a cleared one `null`), as in a key's record;
    /// a rotation's `grace_seconds`; `{}` for revoke, reactivate and delete.
    #[schema(value_type = Object)]
    changes: serde_json::Map<String, serde_json::Value>,
}

impl EventView {
    fn new(event: &AuditEvent) -> Self {
        let entry = &event.entry;
        Self {
            id: event.id.get(),
            at: rfc3339(entry.at),
            action: entry.action.as_str(),
            key_id: entry.key_id.map(|id| id.to_string()),
            prefix: entry.prefix.map(|prefix| prefix.to_string()),
            actor: entry.actor.as_str().to_owned(),
            outcome: entry.outcome.as_str(),
            changes: entry.changes.as_object().clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_query_names_a_page() {
        let query = query_of(None).expect("default");
        assert_eq!((query.limit, query.before), (DEFAULT_LIMIT, None));
        let query = query_of(Some("before=17&limit=500")).expect("valid");
        assert_eq!((query.limit, query.before), (500, Some(AuditId::new(17))));
        for bad in [
            "limit=0",
            "limit=501",
            "limit=-1",
            "limit=x",
            "before=0",
            "before=abc",
            "before=",
            "limit=1&limit=2",
            "after=3",
        ] {
            assert!(query_of(Some(bad)).is_err(), "{bad}");
        }
    }
}
