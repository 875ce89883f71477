//! The admin API's JSON: key records as answered, and the request bodies of create, update
//! and rotate, with their checks; the RFC 3339 times they (and the usage queries) use.

use std::fmt;
use std::marker::PhantomData;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::{FromRequest as _, Request};
use serde::de::value::MapAccessDeserializer;
use serde::de::{DeserializeOwned, Deserializer, MapAccess, Visitor};
use serde::{Deserialize, Serialize};
use time::format_description::well_known::Rfc3339;
use time::macros::format_description;
use time::{OffsetDateTime, PrimitiveDateTime};
use utoipa::ToSchema;

use super::error::ApiError;
use crate::manager::{CreatedKey, KeyInfo};
use crate::policy::{
    self, AllowedIps, KeyName, KeyOptions, Metadata, PolicyError, PolicyUpdate, Quota, QuotaPeriod,
    RateLimit, RotateOptions, Scopes,
};

// ===== answers =====

/// A key as the admin API shows it; `key` (the plaintext) only right after create and
/// rotate, the previous key's fields only while a rotation's grace period lasts. No `Debug`:
/// it may hold a plaintext key.
///
/// Its schema (`Key` in the OpenAPI document) is derived from these fields: a field that is
/// always written is required, and may be `null` if it is an `Option`.
#[derive(Serialize, ToSchema)]
#[schema(
    as = Key,
    description = "A key's record, times in RFC 3339 (UTC, microseconds). `key` (the plaintext) \
                   only in the answers of create and rotate; `previous_prefix` and \
                   `previous_expires_at` only while a rotation's grace period lasts."
)]
pub(crate) struct KeyView {
    #[schema(format = "uuid")]
    id: String,
    account_id: String,
    prefix: String,
    /// The plaintext key, only in the answers of create and rotate: shown once.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = String, required = false)]
    key: Option<String>,
    #[schema(value_type = super::schema::KeyStatus)]
    status: &'static str,
    #[schema(format = DateTime)]
    created_at: String,
    #[schema(required, format = DateTime)]
    last_used_at: Option<String>,
    /// Accepted requests in the last 24 hourly buckets; `null` if they couldn't be read.
    #[schema(required)]
    requests_24h: Option<u64>,
    #[schema(required)]
    name: Option<String>,
    /// `null`: unrestricted.
    #[schema(required, value_type = Option<Vec<super::schema::Scope>>)]
    scopes: Option<Vec<String>>,
    #[schema(required, format = DateTime)]
    expires_at: Option<String>,
    #[schema(required)]
    rate_limit: Option<RateLimitJson>,
    #[schema(required)]
    quota: Option<QuotaJson>,
    /// Accepted requests in the quota's current period; `null` without a quota or if they
    /// couldn't be read.
    #[schema(required)]
    quota_used: Option<u64>,
    /// Normalized CIDR blocks, sorted; `null`: any address.
    #[schema(required)]
    allowed_ips: Option<Vec<String>>,
    #[schema(required, value_type = Option<Object>)]
    metadata: Option<serde_json::Map<String, serde_json::Value>>,
    /// The old key's prefix, while a rotation's grace period lasts.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = String, required = false)]
    previous_prefix: Option<String>,
    /// When the old key stops working, while a rotation's grace period lasts.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = String, required = false, format = DateTime)]
    previous_expires_at: Option<String>,
}

impl KeyView {
    /// The record of `info`, with its accepted requests in the last 24 hourly buckets and in
    /// its quota's current period (`None`: they couldn't be read; `quota_used` is also `None`
    /// for a key without a quota, whatever is given).
    pub(crate) fn new(info: KeyInfo, requests_24h: Option<u64>, quota_used: Option<u64>) -> Self {
        Self {
            id: info.id.to_string(),
            account_id: info.account_id.to_string(),
            prefix: info.prefix.to_string(),
            key: None,
            status: info.status.as_str(),
            created_at: rfc3339(info.created_at),
            last_used_at: info.last_used_at.map(rfc3339),
            requests_24h,
            name: info.name.map(|name| name.as_str().to_owned()),
            scopes: info
                .scopes
                .map(|scopes| scopes.iter().map(str::to_owned).collect()),
            expires_at: info.expires_at.map(rfc3339),
            rate_limit: info.rate_limit.map(RateLimitJson::from),
            quota: info.quota.map(QuotaJson::from),
            quota_used: info.quota.and(quota_used),
            allowed_ips: info
                .allowed_ips
                .map(|allowed| allowed.iter().map(ToString::to_string).collect()),
            metadata: info.metadata.map(|metadata| metadata.as_object().clone()),
            previous_prefix: info.previous_prefix.map(|prefix| prefix.to_string()),
            previous_expires_at: info.previous_expires_at.map(rfc3339),
        }
    }

    /// The record of a key just created or rotated, with its plaintext.
    pub(crate) fn with_key(
        created: CreatedKey,
        requests_24h: Option<u64>,
        quota_used: Option<u64>,
    ) -> Self {
        Self {
            key: Some(created.key.expose_secret().to_owned()),
            ..Self::new(created.info, requests_24h, quota_used)
        }
    }
}

/// `{"keys": [...]}`, oldest first.
#[derive(Serialize, ToSchema)]
pub(crate) struct KeyList {
    pub(crate) keys: Vec<KeyView>,
}

/// UTC, microseconds, `Z`: `2025-01-02T03:04:05.678901Z`. Never panics: a time outside
/// the years -9999 to 9999 (which the API refuses to take, but a store edited by hand may
/// hold) is written as the nearest of those bounds.
pub(crate) fn rfc3339(time: SystemTime) -> String {
    let format =
        format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6]Z");
    in_utc(time)
        .format(&format)
        .unwrap_or_else(|_| "invalid time".to_owned())
}

/// UTC to the second, `Z`: `2025-01-02T03:00:00Z`, for usage buckets (which start on the
/// hour). Never panics, as [`rfc3339`].
pub(crate) fn rfc3339_seconds(time: SystemTime) -> String {
    let format = format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]Z");
    in_utc(time)
        .format(&format)
        .unwrap_or_else(|_| "invalid time".to_owned())
}

/// `time` in UTC, clamped to what `time` can write.
fn in_utc(time: SystemTime) -> OffsetDateTime {
    match time.duration_since(UNIX_EPOCH) {
        Ok(after) => time::Duration::try_from(after)
            .ok()
            .and_then(|after| OffsetDateTime::UNIX_EPOCH.checked_add(after))
            .unwrap_or(PrimitiveDateTime::MAX.assume_utc()),
        Err(before) => time::Duration::try_from(before.duration())
            .ok()
            .and_then(|before| OffsetDateTime::UNIX_EPOCH.checked_sub(before))
            .unwrap_or(PrimitiveDateTime::MIN.assume_utc()),
    }
}

/// Why [`read_rfc3339`] refused a time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BadTime {
    /// Not RFC 3339.
    Format,
    /// Before 1970 or after 9999 once in UTC.
    OutOfRange,
}

/// An RFC 3339 time with any offset (`2030-01-01T00:00:00Z`, `…+02:00`), which must lie
/// between 1970 and 9999 once in UTC.
pub(crate) fn read_rfc3339(text: &str) -> Result<SystemTime, BadTime> {
    let parsed = OffsetDateTime::parse(text, &Rfc3339).map_err(|_| BadTime::Format)?;
    // The offset is applied in integers: converting to UTC first could leave the calendar.
    let nanos = parsed.unix_timestamp_nanos();
    let at = u64::try_from(nanos.div_euclid(1_000_000_000))
        .ok()
        .map(|seconds| {
            let subsec = u32::try_from(nanos.rem_euclid(1_000_000_000)).unwrap_or(0);
            Duration::new(seconds, subsec)
        })
        .and_then(|since| UNIX_EPOCH.checked_add(since))
        .ok_or(BadTime::OutOfRange)?;
    policy::check_time(at).map_err(|_| BadTime::OutOfRange)
}

/// [`read_rfc3339`] for the body's `field`, with the policy's own message when out of range.
fn parse_rfc3339(field: &str, text: &str) -> Result<SystemTime, ApiError> {
    match read_rfc3339(text) {
        Ok(at) => Ok(at),
        Err(BadTime::Format) => Err(ApiError::bad_request(format!(
            "{field} must be an RFC 3339 time such as 2030-01-01T00:00:00Z"
        ))),
        Err(BadTime::OutOfRange) => Err(PolicyError::TimeOutOfRange.into()),
    }
}

/// A rate limit as answered and read: `{"requests": 5, "per_seconds": 2}`. Both members are
/// required and nothing else is allowed; they are read as any integer, so that a negative or
/// too large one gets the rate limit's own message (the schema gives the bounds).
#[derive(Debug, PartialEq, Eq, Serialize, ToSchema)]
#[schema(
    as = RateLimit,
    description = "A rate limit: `requests` per `per_seconds` seconds."
)]
pub(crate) struct RateLimitJson {
    #[schema(minimum = 1, maximum = 1_000_000)]
    requests: i64,
    #[schema(minimum = 1, maximum = 86_400)]
    per_seconds: i64,
}

impl<'de> Deserialize<'de> for RateLimitJson {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Members {
            requests: i64,
            per_seconds: i64,
        }
        let JsonObject(Members {
            requests,
            per_seconds,
        }) = JsonObject::deserialize(deserializer)?;
        Ok(Self {
            requests,
            per_seconds,
        })
    }
}

impl From<RateLimit> for RateLimitJson {
    fn from(limit: RateLimit) -> Self {
        Self {
            requests: limit.requests().into(),
            per_seconds: limit.per_seconds().into(),
        }
    }
}

impl RateLimitJson {
    fn into_limit(self) -> Result<RateLimit, ApiError> {
        let member =
            |value: i64| u32::try_from(value).map_err(|_| PolicyError::RateLimitOutOfRange);
        Ok(RateLimit::new(
            member(self.requests)?,
            member(self.per_seconds)?,
        )?)
    }
}

/// A quota as answered and read: `{"requests": 1000, "period": "day"}`. Both members are
/// required and nothing else is allowed; `requests` is read as any integer and `period` as any
/// string, so that a value out of range gets the quota's own message (the schema gives the
/// bounds).
#[derive(Debug, PartialEq, Eq, Serialize, ToSchema)]
#[schema(
    as = Quota,
    description = "A quota: at most `requests` accepted requests per UTC calendar `period`."
)]
pub(crate) struct QuotaJson {
    #[schema(minimum = 1, maximum = 1_000_000_000)]
    requests: i64,
    #[schema(value_type = super::schema::QuotaPeriod)]
    period: String,
}

impl<'de> Deserialize<'de> for QuotaJson {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Members {
            requests: i64,
            period: String,
        }
        let JsonObject(Members { requests, period }) = JsonObject::deserialize(deserializer)?;
        Ok(Self { requests, period })
    }
}

impl From<Quota> for QuotaJson {
    fn from(quota: Quota) -> Self {
        Self {
            requests: quota.requests().into(),
            period: quota.period().as_str().to_owned(),
        }
    }
}

impl QuotaJson {
    fn into_quota(self) -> Result<Quota, ApiError> {
        let requests = u32::try_from(self.requests).map_err(|_| PolicyError::QuotaOutOfRange)?;
        let period: QuotaPeriod = self.period.parse()?;
        Ok(Quota::new(requests, period)?)
    }
}

/// An allowlist as read: a list of addresses and CIDR blocks.
fn into_allowed_ips(entries: Vec<String>) -> Result<AllowedIps, ApiError> {
    Ok(AllowedIps::new(entries)?)
}

/// Metadata as read: any JSON value, of which only an object is metadata (anything else gets
/// the policy's own message rather than serde's). A member given twice, at any depth, is
/// refused, as everywhere in a body.
#[derive(Debug, PartialEq)]
pub(crate) struct MetadataJson(serde_json::Value);

impl<'de> Deserialize<'de> for MetadataJson {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        StrictValue::deserialize(deserializer).map(|StrictValue(value)| Self(value))
    }
}

impl MetadataJson {
    fn into_metadata(self) -> Result<Metadata, ApiError> {
        Ok(Metadata::from_value(self.0)?)
    }
}

/// Any JSON value, read like `serde_json::Value` except that an object with a member given
/// twice is refused instead of keeping the last.
struct StrictValue(serde_json::Value);

impl<'de> Deserialize<'de> for StrictValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::{Error as _, SeqAccess};
        use serde_json::{Map, Number, Value};

        struct Strict;

        impl<'de> Visitor<'de> for Strict {
            type Value = Value;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }

            fn visit_bool<E>(self, value: bool) -> Result<Value, E> {
                Ok(Value::Bool(value))
            }

            fn visit_i64<E>(self, value: i64) -> Result<Value, E> {
                Ok(Value::Number(value.into()))
            }

            fn visit_u64<E>(self, value: u64) -> Result<Value, E> {
                Ok(Value::Number(value.into()))
            }

            fn visit_f64<E: serde::de::Error>(self, value: f64) -> Result<Value, E> {
                Number::from_f64(value)
                    .map(Value::Number)
                    .ok_or_else(|| E::custom("a number JSON can't hold"))
            }

            fn visit_str<E>(self, value: &str) -> Result<Value, E> {
                Ok(Value::String(value.to_owned()))
            }

            fn visit_string<E>(self, value: String) -> Result<Value, E> {
                Ok(Value::String(value))
            }

            fn visit_unit<E>(self) -> Result<Value, E> {
                Ok(Value::Null)
            }

            fn visit_none<E>(self) -> Result<Value, E> {
                Ok(Value::Null)
            }

            fn visit_some<D: Deserializer<'de>>(self, inner: D) -> Result<Value, D::Error> {
                inner.deserialize_any(self)
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
                let mut items = Vec::new();
                while let Some(StrictValue(item)) = seq.next_element()? {
                    items.push(item);
                }
                Ok(Value::Array(items))
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
                let mut object = Map::new();
                while let Some(member) = map.next_key::<String>()? {
                    if object.contains_key(&member) {
                        return Err(A::Error::custom(format_args!(
                            "duplicate member {:?} in metadata",
                            truncate(&member, 80)
                        )));
                    }
                    let StrictValue(value) = map.next_value()?;
                    object.insert(member, value);
                }
                Ok(Value::Object(object))
            }
        }

        deserializer.deserialize_any(Strict).map(StrictValue)
    }
}

/// At most `chars` characters of `text`, for an error message.
fn truncate(text: &str, chars: usize) -> &str {
    text.char_indices()
        .nth(chars)
        .map_or(text, |(end, _)| &text[..end])
}

// ===== request bodies =====

/// The body of `POST …/keys`; every field optional, `null` the same as absent.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = CreateKey)]
pub(crate) struct CreateBody {
    #[schema(min_length = 1, max_length = 64)]
    name: Option<String>,
    /// Not with `expires_at`.
    #[schema(minimum = 1, maximum = 315_360_000)]
    expires_in_seconds: Option<i64>,
    /// In the future; not with `expires_in_seconds`.
    #[schema(format = DateTime)]
    expires_at: Option<String>,
    /// At most 16 distinct.
    #[schema(value_type = Option<Vec<super::schema::Scope>>)]
    scopes: Option<Vec<String>>,
    rate_limit: Option<RateLimitJson>,
    quota: Option<QuotaJson>,
    /// IPv4 or IPv6 addresses or CIDR blocks.
    #[schema(min_items = 1, max_items = 32)]
    allowed_ips: Option<Vec<String>>,
    /// At most 4 KiB once compact.
    #[schema(value_type = Option<Object>)]
    metadata: Option<MetadataJson>,
}

impl CreateBody {
    pub(crate) fn into_options(self) -> Result<KeyOptions, ApiError> {
        let mut options = KeyOptions::new();
        if let Some(name) = self.name {
            options = options.name(KeyName::new(&name)?);
        }
        if let Some(scopes) = self.scopes {
            options = options.scopes(Scopes::new(scopes)?);
        }
        if let Some(limit) = self.rate_limit {
            options = options.rate_limit(limit.into_limit()?);
        }
        if let Some(quota) = self.quota {
            options = options.quota(quota.into_quota()?);
        }
        if let Some(entries) = self.allowed_ips {
            options = options.allowed_ips(into_allowed_ips(entries)?);
        }
        if let Some(metadata) = self.metadata {
            options = options.metadata(metadata.into_metadata()?);
        }
        match (self.expires_in_seconds, self.expires_at) {
            (Some(_), Some(_)) => {
                return Err(ApiError::bad_request(
                    "give expires_in_seconds or expires_at, not both",
                ));
            }
            (Some(seconds), None) => {
                let seconds = u64::try_from(seconds).map_err(|_| PolicyError::ExpiryOutOfRange)?;
                options = options.expires_in(Duration::from_secs(seconds))?;
            }
            (None, Some(at)) => {
                // Whether it is in the future is the manager's check, at creation time.
                options = options.expires_at(parse_rfc3339("expires_at", &at)?);
            }
            (None, None) => {}
        }
        Ok(options)
    }
}

/// The body of `PATCH …/keys/{id}`: an absent field is kept, `null` clears it (so each field's
/// schema allows `null`).
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = UpdateKey)]
pub(crate) struct UpdateBody {
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>, min_length = 1, max_length = 64)]
    name: Option<Option<String>>,
    /// May be in the past: that expires the key at once.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>, format = DateTime)]
    expires_at: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    /// At most 16 distinct.
    #[schema(value_type = Option<Vec<super::schema::Scope>>)]
    scopes: Option<Option<Vec<String>>>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<RateLimitJson>)]
    rate_limit: Option<Option<RateLimitJson>>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<QuotaJson>)]
    quota: Option<Option<QuotaJson>>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<Vec<String>>, min_items = 1, max_items = 32)]
    allowed_ips: Option<Option<Vec<String>>>,
    /// Replaces the key's metadata as a whole (no merge).
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<Object>)]
    metadata: Option<Option<MetadataJson>>,
}

impl UpdateBody {
    pub(crate) fn into_update(self) -> Result<PolicyUpdate, ApiError> {
        let mut update = PolicyUpdate::new();
        if let Some(name) = self.name {
            update = update.name(name.as_deref().map(KeyName::new).transpose()?);
        }
        if let Some(scopes) = self.scopes {
            update = update.scopes(scopes.map(Scopes::new).transpose()?);
        }
        if let Some(at) = self.expires_at {
            // May be in the past: that expires the key at once.
            let at = at
                .as_deref()
                .map(|text| parse_rfc3339("expires_at", text))
                .transpose()?;
            update = update.expires_at(at);
        }
        if let Some(limit) = self.rate_limit {
            update = update.rate_limit(limit.map(RateLimitJson::into_limit).transpose()?);
        }
        if let Some(quota) = self.quota {
            update = update.quota(quota.map(QuotaJson::into_quota).transpose()?);
        }
        if let Some(entries) = self.allowed_ips {
            update = update.allowed_ips(entries.map(into_allowed_ips).transpose()?);
        }
        if let Some(metadata) = self.metadata {
            // Replaced as a whole: no merge with what the key holds.
            update = update.metadata(metadata.map(MetadataJson::into_metadata).transpose()?);
        }
        Ok(update)
    }
}

/// A field that is present, `null` or not: `Some(None)` for `null`. With `#[serde(default)]`
/// an absent field stays `None`.
fn present<'de, D, T>(deserializer: D) -> Result<Option<Option<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(deserializer).map(Some)
}

/// The body of `POST …/keys/{id}/rotate`.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = RotateKey)]
pub(crate) struct RotateBody {
    /// How long the old key keeps working (default 0).
    #[schema(minimum = 0, maximum = 604_800)]
    grace_seconds: Option<u64>,
}

impl RotateBody {
    pub(crate) fn into_options(self) -> Result<RotateOptions, ApiError> {
        let grace = Duration::from_secs(self.grace_seconds.unwrap_or(0));
        Ok(RotateOptions::new().grace(grace)?)
    }
}

/// Reads an optional JSON body: none, empty or only whitespace gives `T::default()`. Too
/// large is 413; anything unreadable, not an object, or not matching `T` (an unknown member,
/// a member given twice) is 400, each as JSON. The content type was checked before the
/// handler ran (see `cross_site`).
pub(crate) async fn json_body<T>(request: Request) -> Result<T, ApiError>
where
    T: DeserializeOwned + Default,
{
    let bytes = Bytes::from_request(request, &())
        .await
        .map_err(|rejection| {
            let status = rejection.status();
            if status == http::StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(status, "request body is too large")
            } else {
                ApiError::bad_request("cannot read the request body")
            }
        })?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    let JsonObject(body) = serde_json::from_slice(&bytes).map_err(invalid_json)?;
    Ok(body)
}

/// A JSON object read straight into `T` by `T`'s own derive, which refuses a member given
/// twice (and, with `deny_unknown_fields`, an unknown one). Only an object: serde's derive
/// would also read a struct from an array.
struct JsonObject<T>(T);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for JsonObject<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Object<T>(PhantomData<T>);

        impl<'de, T: Deserialize<'de>> Visitor<'de> for Object<T> {
            type Value = T;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }

            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
                T::deserialize(MapAccessDeserializer::new(map))
            }
        }

        deserializer
            .deserialize_map(Object(PhantomData))
            .map(JsonObject)
    }
}

/// 400 naming what serde refused, cut to a sane length.
fn invalid_json(err: serde_json::Error) -> ApiError {
    let mut message = format!("invalid JSON body: {err}");
    if message.len() > 300 {
        let cut = (0..=300)
            .rev()
            .find(|&i| message.is_char_boundary(i))
            .unwrap_or(0);
        message.truncate(cut);
        message.push('…');
    }
    ApiError::bad_request(message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_written_in_utc_with_microseconds_and_read_with_any_offset() {
        let at = SystemTime::UNIX_EPOCH + Duration::from_micros(1_893_456_000_123_456);
        assert_eq!(rfc3339(at), "2030-01-01T00:00:00.123456Z");
        let parsed = parse_rfc3339("t", "2030-01-01T02:00:00.123456+02:00").expect("valid");
        assert_eq!(parsed, at);
        assert!(parse_rfc3339("t", "2030-01-01 00:00:00").is_err());
        assert!(parse_rfc3339("t", "tomorrow").is_err());
    }

    #[test]
    fn times_are_taken_between_1970_and_9999_in_utc_and_written_without_panicking() {
        assert!(parse_rfc3339("t", "9999-12-31T23:59:59Z").is_ok());
        assert!(parse_rfc3339("t", "9999-12-31T23:59:59-23:59").is_err());
        assert!(parse_rfc3339("t", "1970-01-01T00:00:00Z").is_ok());
        assert!(parse_rfc3339("t", "1970-01-01T00:59:59+01:00").is_err());
        let year_10000 = UNIX_EPOCH + Duration::from_secs(253_402_300_800);
        assert_eq!(rfc3339(year_10000), "9999-12-31T23:59:59.999999Z");
        let far = UNIX_EPOCH + Duration::from_secs(u64::MAX / 4);
        assert_eq!(rfc3339(far), "9999-12-31T23:59:59.999999Z");
        let before = UNIX_EPOCH - Duration::from_secs(1);
        assert_eq!(rfc3339(before), "1969-12-31T23:59:59.000000Z");
    }

    #[test]
    fn a_body_is_one_object_whose_members_appear_once() {
        let read = |text: &str| serde_json::from_str::<JsonObject<UpdateBody>>(text).map(|o| o.0);
        assert!(read(r#"{"name":"a"}"#).is_ok());
        let twice = read(r#"{"scopes":["read"],"scopes":null}"#).unwrap_err();
        assert!(
            twice.to_string().contains("duplicate field `scopes`"),
            "{twice}"
        );
        assert!(read(r#"["a"]"#).is_err());
        assert!(read(r#"{"rate_limit":[5,2]}"#).is_err());
        assert!(read(r#"{"rate_limit":{"requests":5,"per_seconds":2,"requests":6}}"#).is_err());
    }

    #[test]
    fn quota_allowlist_and_metadata_are_read_strictly() {
        let read = |text: &str| serde_json::from_str::<JsonObject<UpdateBody>>(text).map(|o| o.0);
        let body =
            read(r#"{"quota":{"requests":5,"period":"day"},"allowed_ips":null}"#).expect("valid");
        let update = body.into_update().expect("valid");
        assert_eq!(
            update.quota,
            Some(Some(Quota::new(5, QuotaPeriod::Day).expect("valid")))
        );
        assert_eq!(update.allowed_ips, Some(None));
        assert_eq!(update.metadata, None);
        for bad in [
            r#"{"quota":{"requests":5}}"#,
            r#"{"quota":{"requests":5,"period":"day","per":"day"}}"#,
            r#"{"quota":{"requests":5,"period":"day","requests":6}}"#,
            r#"{"quota":[5,"day"]}"#,
            r#"{"allowed_ips":"10.0.0.1"}"#,
            r#"{"metadata":{"a":1,"a":2}}"#,
            r#"{"metadata":{"a":{"b":1,"b":1}}}"#,
        ] {
            assert!(read(bad).is_err(), "{bad}");
        }
        // Read, then refused by the policy with its own message.
        for (bad, error) in [
            (
                r#"{"quota":{"requests":0,"period":"day"}}"#,
                PolicyError::QuotaOutOfRange,
            ),
            (
                r#"{"quota":{"requests":5,"period":"week"}}"#,
                PolicyError::QuotaOutOfRange,
            ),
            (
                r#"{"quota":{"requests":-5,"period":"day"}}"#,
                PolicyError::QuotaOutOfRange,
            ),
            (r#"{"allowed_ips":[]}"#, PolicyError::NoAddresses),
            (r#"{"metadata":[1]}"#, PolicyError::InvalidMetadata),
            (r#"{"metadata":"{}"}"#, PolicyError::InvalidMetadata),
        ] {
            let refused = read(bad).expect("read").into_update().expect_err(bad);
            assert_eq!(
                format!("{refused:?}"),
                format!("{:?}", ApiError::from(error)),
                "{bad}"
            );
        }
        let body = read(r#"{"metadata":{"b":[1,2.5,null,true,{"c":"d"}],"a":-1}}"#).expect("valid");
        let metadata = body.into_update().expect("valid").metadata;
        assert_eq!(
            metadata.flatten().map(|m| m.as_json().to_owned()),
            Some(r#"{"a":-1,"b":[1,2.5,null,true,{"c":"d"}]}"#.to_owned())
        );
    }

    #[test]
    fn records_show_the_quota_allowlist_and_metadata() {
        let record = crate::store::KeyRecord {
            quota: Some(Quota::new(1000, QuotaPeriod::Month).expect("valid")),
            allowed_ips: Some(AllowedIps::new(["203.0.113.9/24", "198.51.100.7"]).expect("valid")),
            metadata: Some(Metadata::from_json(r#"{"plan":"pro"}"#).expect("valid")),
            ..crate::store::KeyRecord::new(
                crate::store::KeyId::random(),
                "acme".parse().expect("account"),
                "abcd1234".parse().expect("prefix"),
                crate::key::Pepper::from_bytes([7; 32])
                    .digest(&crate::key::ApiKey::generate().expect("randomness")),
                SystemTime::UNIX_EPOCH,
            )
        };
        let info = KeyInfo::from_record(record, SystemTime::UNIX_EPOCH);
        let shown =
            serde_json::to_value(KeyView::new(info.clone(), Some(3), Some(12))).expect("json");
        assert_eq!(
            shown["quota"],
            serde_json::json!({"requests": 1000, "period": "month"})
        );
        assert_eq!(shown["quota_used"], 12);
        assert_eq!(
            shown["allowed_ips"],
            serde_json::json!(["198.51.100.7/32", "203.0.113.0/24"])
        );
        assert_eq!(shown["metadata"], serde_json::json!({"plan": "pro"}));
        let plain = KeyInfo {
            quota: None,
            allowed_ips: None,
            metadata: None,
            ..info
        };
        let shown = serde_json::to_value(KeyView::new(plain, Some(3), Some(12))).expect("json");
        for field in ["quota", "quota_used", "allowed_ips", "metadata"] {
            assert!(shown[field].is_null(), "{field}: {shown}");
        }
    }

    #[test]
    fn update_fields_tell_null_from_absent() {
        let body: UpdateBody = serde_json::from_str(r#"{"name": null}"#).expect("valid");
        assert_eq!(body.name, Some(None));
        assert_eq!(body.scopes, None);
        let body: UpdateBody = serde_json::from_str(r#"{"scopes": ["read"]}"#).expect("valid");
        assert_eq!(body.scopes, Some(Some(vec!["read".to_owned()])));
        assert!(serde_json::from_str::<UpdateBody>(r#"{"nme": "x"}"#).is_err());
        let body: UpdateBody = serde_json::from_str(r#"{"rate_limit": null}"#).expect("valid");
        assert_eq!(body.rate_limit, Some(None));
        let body: UpdateBody =
            serde_json::from_str(r#"{"rate_limit": {"requests": 5, "per_seconds": 2}}"#)
                .expect("valid");
        assert_eq!(
            body.rate_limit,
            Some(Some(RateLimitJson {
                requests: 5,
                per_seconds: 2
            }))
        );
    }
}
