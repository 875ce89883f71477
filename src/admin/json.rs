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

use super::error::ApiError;
use crate::manager::{CreatedKey, KeyInfo};
use crate::policy::{
    self, KeyName, KeyOptions, PolicyError, PolicyUpdate, RateLimit, RotateOptions, Scopes,
};

// ===== answers =====

/// A key as the admin API shows it; `key` (the plaintext) only right after create and
/// rotate, the previous key's fields only while a rotation's grace period lasts. No `Debug`:
/// it may hold a plaintext key.
#[derive(Serialize)]
pub(crate) struct KeyView {
    id: String,
    account_id: String,
    prefix: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    key: Option<String>,
    status: &'static str,
    created_at: String,
    last_used_at: Option<String>,
    requests_24h: Option<u64>,
    name: Option<String>,
    scopes: Option<Vec<String>>,
    expires_at: Option<String>,
    rate_limit: Option<RateLimitJson>,
    #[serde(skip_serializing_if = "Option::is_none")]
    previous_prefix: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    previous_expires_at: Option<String>,
}

impl KeyView {
    /// The record of `info`, with its accepted requests in the last 24 hourly buckets
    /// (`None`: they couldn't be read).
    pub(crate) fn new(info: KeyInfo, requests_24h: Option<u64>) -> Self {
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
            previous_prefix: info.previous_prefix.map(|prefix| prefix.to_string()),
            previous_expires_at: info.previous_expires_at.map(rfc3339),
        }
    }

    /// The record of a key just created or rotated, with its plaintext.
    pub(crate) fn with_key(created: CreatedKey, requests_24h: Option<u64>) -> Self {
        Self {
            key: Some(created.key.expose_secret().to_owned()),
            ..Self::new(created.info, requests_24h)
        }
    }
}

/// `{"keys": [...]}`, oldest first.
#[derive(Serialize)]
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
/// too large one gets the rate limit's own message.
#[derive(Debug, PartialEq, Eq, Serialize)]
pub(crate) struct RateLimitJson {
    requests: i64,
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

// ===== request bodies =====

/// The body of `POST …/keys`; every field optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateBody {
    name: Option<String>,
    expires_in_seconds: Option<i64>,
    expires_at: Option<String>,
    scopes: Option<Vec<String>>,
    rate_limit: Option<RateLimitJson>,
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

/// The body of `PATCH …/keys/{id}`: an absent field is kept, `null` clears it.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct UpdateBody {
    #[serde(default, deserialize_with = "present")]
    name: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    expires_at: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    scopes: Option<Option<Vec<String>>>,
    #[serde(default, deserialize_with = "present")]
    rate_limit: Option<Option<RateLimitJson>>,
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
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RotateBody {
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
