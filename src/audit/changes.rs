//! [`AuditChanges`]: the policy fields a change set, as a JSON object of names and values.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value, json};

use crate::policy::{
    AllowedIps, KeyName, KeyOptions, Metadata, PolicyUpdate, Quota, RateLimit, RotateOptions,
    Scopes, civil_from_days,
};

/// What an audited change set: a JSON object whose members are the policy fields named, in
/// the admin API's own form (`"name": "CI"`, `"scopes": ["read"]`, `"expires_at":
/// "2027-01-01T00:00:00.000000Z"`, `"rate_limit": {"requests": 10, "per_seconds": 1}`,
/// `"quota": {"requests": 1000, "period": "day"}`, `"allowed_ips": ["203.0.113.0/24"]`,
/// `"metadata": {…}`). An update's cleared field is `null`; a create lists the fields it set;
/// a refused create may also name `expires_in_seconds`; a rotation names its
/// `grace_seconds`. Revoke, reactivate and delete set nothing: `{}`. A refused attempt records
/// the metadata it asked for by size only ([`refused`](Self::refused)).
///
/// It never holds a key, a secret or a digest: only policy.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct AuditChanges(Map<String, Value>);

impl AuditChanges {
    /// No fields: revoke, reactivate, delete.
    pub fn none() -> Self {
        Self::default()
    }

    /// The fields a create asks for (an expiry may be relative: `expires_in_seconds`).
    pub fn of_options(options: &KeyOptions) -> Self {
        let mut changes = Fields::default();
        changes.name(options.name.as_ref());
        changes.scopes(options.scopes.as_ref());
        changes.time("expires_at", options.expires_at);
        if let Some(after) = options.expires_in {
            changes.put("expires_in_seconds", json!(after.as_secs()));
        }
        changes.rate_limit(options.rate_limit.as_ref());
        changes.quota(options.quota.as_ref());
        changes.allowed_ips(options.allowed_ips.as_ref());
        changes.metadata(options.metadata.as_ref());
        Self(changes.0)
    }

    /// The fields an update names: each set one with its new value, each cleared one `null`.
    pub fn of_update(update: &PolicyUpdate) -> Self {
        let mut changes = Fields::default();
        if let Some(name) = &update.name {
            changes.nullable("name", name.as_ref(), |fields, name| {
                fields.name(Some(name))
            });
        }
        if let Some(scopes) = &update.scopes {
            changes.nullable("scopes", scopes.as_ref(), |fields, scopes| {
                fields.scopes(Some(scopes));
            });
        }
        if let Some(at) = update.expires_at {
            changes.nullable("expires_at", at.as_ref(), |fields, at| {
                fields.time("expires_at", Some(*at));
            });
        }
        if let Some(limit) = &update.rate_limit {
            changes.nullable("rate_limit", limit.as_ref(), |fields, limit| {
                fields.rate_limit(Some(limit));
            });
        }
        if let Some(quota) = &update.quota {
            changes.nullable("quota", quota.as_ref(), |fields, quota| {
                fields.quota(Some(quota));
            });
        }
        if let Some(allowed) = &update.allowed_ips {
            changes.nullable("allowed_ips", allowed.as_ref(), |fields, allowed| {
                fields.allowed_ips(Some(allowed));
            });
        }
        if let Some(metadata) = &update.metadata {
            changes.nullable("metadata", metadata.as_ref(), |fields, metadata| {
                fields.metadata(Some(metadata));
            });
        }
        Self(changes.0)
    }

    /// A rotation's grace period: `{"grace_seconds": n}`.
    pub fn of_rotation(options: &RotateOptions) -> Self {
        let mut changes = Fields::default();
        changes.put("grace_seconds", json!(options.grace.as_secs()));
        Self(changes.0)
    }

    /// The same changes as a refused attempt records them: a `metadata` object asked for is
    /// replaced by its size (`"metadata": "4000 bytes, not recorded"`), since it never became
    /// the key's, and a caller refused again and again must not fill the trail with it.
    #[must_use]
    pub fn refused(mut self) -> Self {
        if let Some(Value::Object(metadata)) = self.0.get("metadata") {
            let bytes = Value::Object(metadata.clone()).to_string().len();
            let summary = format!("{bytes} bytes, not recorded");
            self.0.insert("metadata".to_owned(), Value::String(summary));
        }
        self
    }

    /// The changes written as compact JSON, as stores keep them.
    pub fn to_json(&self) -> String {
        Value::Object(self.0.clone()).to_string()
    }

    /// Changes read back from [`to_json`](Self::to_json)'s text.
    ///
    /// # Errors
    ///
    /// [`serde_json::Error`] if `json` is not a JSON object.
    pub fn from_json(json: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(json).map(Self)
    }

    /// The members, by name.
    pub fn as_object(&self) -> &Map<String, Value> {
        &self.0
    }

    /// Whether no field was named.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for AuditChanges {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Only policy, never a secret: the fields' names are what a reader of a log needs.
        f.debug_set().entries(self.0.keys()).finish()
    }
}

/// Builds the object member by member.
#[derive(Default)]
struct Fields(Map<String, Value>);

impl Fields {
    fn put(&mut self, name: &str, value: Value) {
        self.0.insert(name.to_owned(), value);
    }

    /// `value`'s member as `set` writes it, or `null` for a field cleared.
    fn nullable<T>(&mut self, name: &str, value: Option<&T>, set: impl FnOnce(&mut Self, &T)) {
        match value {
            Some(value) => set(self, value),
            None => self.put(name, Value::Null),
        }
    }

    fn name(&mut self, name: Option<&KeyName>) {
        if let Some(name) = name {
            self.put("name", json!(name.as_str()));
        }
    }

    fn scopes(&mut self, scopes: Option<&Scopes>) {
        if let Some(scopes) = scopes {
            self.put("scopes", json!(scopes.iter().collect::<Vec<_>>()));
        }
    }

    fn time(&mut self, name: &str, at: Option<SystemTime>) {
        if let Some(at) = at {
            self.put(name, json!(rfc3339(at)));
        }
    }

    fn rate_limit(&mut self, limit: Option<&RateLimit>) {
        if let Some(limit) = limit {
            let value = json!({"requests": limit.requests(), "per_seconds": limit.per_seconds()});
            self.put("rate_limit", value);
        }
    }

    fn quota(&mut self, quota: Option<&Quota>) {
        if let Some(quota) = quota {
            let value = json!({"requests": quota.requests(), "period": quota.period().as_str()});
            self.put("quota", value);
        }
    }

    fn allowed_ips(&mut self, allowed: Option<&AllowedIps>) {
        if let Some(allowed) = allowed {
            let blocks: Vec<String> = allowed.iter().map(ToString::to_string).collect();
            self.put("allowed_ips", json!(blocks));
        }
    }

    fn metadata(&mut self, metadata: Option<&Metadata>) {
        if let Some(metadata) = metadata {
            self.put("metadata", Value::Object(metadata.as_object().clone()));
        }
    }
}

/// `at` in UTC to the microsecond, `2027-01-02T03:04:05.678901Z`, as the admin API writes
/// times. Policy times lie between 1970 and 9999 (checked before a change is made); one
/// before 1970 is written as 1970's first instant.
fn rfc3339(at: SystemTime) -> String {
    let since = at.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
    let secs = since.as_secs();
    let (year, month, day) = civil_from_days(secs / 86_400);
    let in_day = secs % 86_400;
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:06}Z",
        in_day / 3600,
        in_day / 60 % 60,
        in_day % 60,
        since.subsec_micros()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::QuotaPeriod;

    #[test]
    fn times_are_written_like_the_admin_api() {
        let at = UNIX_EPOCH + Duration::from_micros(1_798_761_845_678_901);
        assert_eq!(rfc3339(at), "2027-01-01T00:04:05.678901Z");
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000000Z");
        let last = UNIX_EPOCH + Duration::from_secs(253_402_300_799);
        assert_eq!(rfc3339(last), "9999-12-31T23:59:59.000000Z");
    }

    #[test]
    fn an_update_names_set_and_cleared_fields_only() {
        let update = PolicyUpdate::new()
            .name(Some("ci".parse().expect("name")))
            .scopes(None)
            .quota(Some(Quota::new(10, QuotaPeriod::Day).expect("quota")));
        let changes = AuditChanges::of_update(&update);
        assert_eq!(
            changes.to_json(),
            r#"{"name":"ci","quota":{"period":"day","requests":10},"scopes":null}"#
        );
        assert_eq!(
            AuditChanges::from_json(&changes.to_json()).expect("json"),
            changes
        );
        assert_eq!(format!("{changes:?}"), r#"{"name", "quota", "scopes"}"#);
    }

    #[test]
    fn a_refusal_keeps_metadata_by_size_only() {
        let metadata = crate::policy::Metadata::from_json(r#"{"plan":"gold"}"#).expect("json");
        let options = KeyOptions::new()
            .metadata(metadata)
            .name("x".parse().expect("name"));
        let refused = AuditChanges::of_options(&options).refused();
        assert_eq!(
            refused.to_json(),
            r#"{"metadata":"15 bytes, not recorded","name":"x"}"#
        );
        assert_eq!(AuditChanges::none().refused(), AuditChanges::none());
    }

    #[test]
    fn options_name_a_relative_expiry() {
        let options = KeyOptions::new()
            .expires_in(Duration::from_secs(60))
            .expect("expiry");
        assert_eq!(
            AuditChanges::of_options(&options).to_json(),
            r#"{"expires_in_seconds":60}"#
        );
        assert!(AuditChanges::from_json("[1]").is_err());
    }
}
