//! The admin routes' handlers: identify the caller, read the path and the body, ask the
//! authorizer about the attempt, call the [`KeyManager`], answer.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::SystemTime;

use axum::Json;
use axum::body::Body;
use axum::extract::path::ErrorKind;
use axum::extract::rejection::PathRejection;
use axum::extract::{FromRequestParts as _, Path, Request, State};
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use http::request::Parts;

use super::authorize::{AdminAttempt, AdminAuthorizer, AdminCaller, AdminDenied, AdminOperation};
use super::error::{ApiError, ErrorBody};
use super::event::{AdminAction, AdminEvent};
use super::events::{self, EventList};
use super::json::{CreateBody, KeyList, KeyView, RotateBody, UpdateBody, json_body};
use super::schema::{
    AccountPath, BodyErrors, ChangeErrors, EventsQuery, KeyPath, ReadErrors, UsageQuery,
};
use super::usage::{UsageView, range_of};
use crate::audit::{Actor, AuditAction, AuditChanges};
use crate::manager::{KeyInfo, KeyManager, ManagerError};
use crate::store::{AccountId, KeyId, StoreError};
use crate::usage::{Granularity, UsageCounts, UsageRange};

/// The hook of [`AdminRouter::on_event`](super::AdminRouter::on_event).
pub(crate) type EventHook = Arc<dyn Fn(&AdminEvent) + Send + Sync>;

/// What every handler shares.
pub(crate) struct Admin {
    pub(crate) manager: KeyManager,
    pub(crate) authorizer: Arc<dyn AdminAuthorizer>,
    pub(crate) hook: Option<EventHook>,
}

impl fmt::Debug for Admin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Admin")
            .field("manager", &self.manager)
            .field("on_event", &self.hook.is_some())
            .finish_non_exhaustive()
    }
}

pub(crate) type Shared = State<Arc<Admin>>;

/// A request whose caller is known and whose path names a valid account.
struct Admitted {
    parts: Parts,
    caller: AdminCaller,
    /// The caller's name on the audit trail.
    actor: Actor,
    account: AccountId,
}

impl Admitted {
    /// The account `account` names (400 if invalid). A tenant names its own account or
    /// gets the missing key's 404 here, whatever the authorizer: before its body is read or
    /// another account's key is looked at.
    fn new(
        parts: Parts,
        caller: AdminCaller,
        actor: Actor,
        account: &str,
    ) -> Result<Self, ApiError> {
        let account = AccountId::new(account).map_err(|_| ApiError::bad_account())?;
        if let AdminCaller::Tenant(own) = &caller
            && *own != account
        {
            return Err(AdminDenied::NotThisAccount.into());
        }
        Ok(Self {
            parts,
            caller,
            actor,
            account,
        })
    }

    /// The manager, acting as the caller.
    fn manager(&self, admin: &Admin) -> KeyManager {
        admin.manager.acting_as(self.actor.clone())
    }
}

impl Admin {
    /// Authenticates the caller, then reads `{account}` (400 if invalid).
    async fn admit(&self, mut parts: Parts) -> Result<Admitted, ApiError> {
        let (caller, actor) = self.identify(&parts).await?;
        let account = match Path::<String>::from_request_parts(&mut parts, &()).await {
            Ok(Path(account)) => account,
            Err(_) => return Err(ApiError::bad_account()),
        };
        Admitted::new(parts, caller, actor, &account)
    }

    /// Who the caller is, and their name on the audit trail.
    async fn identify(&self, parts: &Parts) -> Result<(AdminCaller, Actor), ApiError> {
        let caller = self.authorizer.authenticate(parts).await?;
        let actor = self.authorizer.actor(&caller, parts);
        Ok((caller, actor))
    }

    /// As [`admit`](Self::admit), and reads `{id}` (404 if it is no key id).
    async fn admit_key(&self, mut parts: Parts) -> Result<(Admitted, KeyId), ApiError> {
        let (caller, actor) = self.identify(&parts).await?;
        // A segment that isn't UTF-8 once percent-decoded fails the whole extraction; the
        // rejection names the first such segment, and an id that isn't text is no key's id.
        let path = Path::<(String, String)>::from_request_parts(&mut parts, &()).await;
        let (account, id) = match path {
            Ok(Path(pair)) => pair,
            // No key has that id, whichever account it is asked of: the same 404 as an
            // account the caller may not manage.
            Err(PathRejection::FailedToDeserializePathParams(err)) if matches!(err.kind(), ErrorKind::InvalidUtf8InPathParam { key } if key == "id") =>
            {
                return Err(ApiError::key_not_found());
            }
            Err(_) => return Err(ApiError::bad_account()),
        };
        let admitted = Admitted::new(parts, caller, actor, &account)?;
        let id = id.parse::<KeyId>().map_err(|_| ApiError::key_not_found())?;
        Ok((admitted, id))
    }

    /// Asks the authorizer whether the admitted caller may do `operation`; a change it
    /// refuses as [`AdminDenied::NotAllowed`] goes on the audit trail, marked refused.
    async fn authorize(
        &self,
        admitted: &Admitted,
        operation: AdminOperation<'_>,
    ) -> Result<(), ApiError> {
        let attempt = AdminAttempt {
            request: &admitted.parts,
            caller: &admitted.caller,
            account: &admitted.account,
            operation,
        };
        match self.authorizer.authorize(&attempt).await {
            Err(AdminDenied::NotAllowed) => {
                if let Some(attempted) = Attempted::of(&operation) {
                    self.record_refused(admitted, attempted).await;
                }
                Err(AdminDenied::NotAllowed.into())
            }
            decided => Ok(decided?),
        }
    }

    /// Writes a refused change to the trail, to the end even if the caller goes away; a
    /// trail that can't be written leaves the refusal standing (logged).
    async fn record_refused(&self, admitted: &Admitted, attempted: Attempted) {
        let manager = admitted.manager(self);
        let account = admitted.account.clone();
        let recorded = to_the_end(async move {
            let key = match attempted.key {
                Some(AttemptedKey::Read(info)) => Some(info),
                // The key's prefix, if it is the account's: a refused attempt on a key that
                // doesn't exist names none.
                Some(AttemptedKey::Id(id)) => manager.get(&account, id).await.ok(),
                None => None,
            };
            manager
                .record_refused(&account, key.as_ref(), attempted.action, attempted.changes)
                .await
        });
        match recorded.await {
            Some(Ok(())) => {}
            Some(Err(err)) => tracing::warn!(error = %err, "could not record a refused attempt"),
            None => tracing::warn!("a refused attempt went unrecorded: shutting down"),
        }
    }

    /// Runs `change` and then tells the hook about it (the record `info` picks from its
    /// outcome), to the end even if the caller goes
    /// away (a client that disconnects, a timeout): a change made is a change reported. A
    /// panic of the hook is the caller's panic (and so a 500).
    async fn change<T, F>(
        self: &Arc<Self>,
        admitted: &Admitted,
        action: AdminAction,
        change: impl FnOnce(KeyManager) -> F,
        info: impl FnOnce(&T) -> Option<&KeyInfo> + Send + 'static,
    ) -> Result<T, ApiError>
    where
        F: Future<Output = Result<T, ManagerError>> + Send + 'static,
        T: Send + 'static,
    {
        let admin = Arc::clone(self);
        let change = change(admitted.manager(self));
        let reported = to_the_end(async move {
            let done = change.await?;
            if let Some(info) = info(&done) {
                admin.emit(action, info);
            }
            Ok::<T, ManagerError>(done)
        });
        match reported.await {
            Some(outcome) => outcome.map_err(ApiError::from),
            None => Err(ManagerError::Store(StoreError::unavailable("shutting down")).into()),
        }
    }

    /// Each of the account's keys' accepted requests in the last 24 hourly buckets, the
    /// current one included, in one read; `None` (logged) if they can't be read. A record is
    /// answered without its count rather than not at all: a revocation must not wait for the
    /// usage table.
    async fn requests_24h(&self, account: &AccountId) -> Option<RecentRequests> {
        let range = UsageRange::ending_at(Granularity::Hour, 24, SystemTime::now());
        self.manager
            .usage_by_key(account, &range)
            .await
            .inspect_err(|err| tracing::warn!(error = %err, "could not read requests_24h"))
            .ok()
            .map(RecentRequests)
    }

    /// Key `id`'s `requests_24h`, from the same read.
    async fn key_requests_24h(&self, account: &AccountId, id: KeyId) -> Option<u64> {
        self.requests_24h(account).await.map(|recent| recent.of(id))
    }

    /// The accepted requests of each of `keys` that has a quota, in its quota's current
    /// period, in one read per account (none if no key has a quota), as of the last usage
    /// flush; `None` (logged) if they can't be read, like [`requests_24h`](Self::requests_24h).
    async fn quota_used(&self, keys: &[KeyInfo]) -> Option<HashMap<KeyId, u64>> {
        self.manager
            .quota_used(keys)
            .await
            .inspect_err(|err| tracing::warn!(error = %err, "could not read quota_used"))
            .ok()
    }

    /// The record of `info`, with its counts read.
    async fn view(&self, info: KeyInfo) -> KeyView {
        let requests = self.key_requests_24h(&info.account_id, info.id).await;
        let used = self.key_quota_used(&info).await;
        KeyView::new(info, requests, used)
    }

    /// `info`'s `quota_used`: `None` without a quota (no read then) or if unreadable.
    async fn key_quota_used(&self, info: &KeyInfo) -> Option<u64> {
        info.quota?;
        let used = self.quota_used(std::slice::from_ref(info)).await?;
        used.get(&info.id).copied()
    }

    /// Tells the hook, if any, about a change.
    fn emit(&self, action: AdminAction, info: &KeyInfo) {
        if let Some(hook) = &self.hook {
            hook(&AdminEvent {
                action,
                account: info.account_id.clone(),
                key_id: info.id,
                prefix: info.prefix,
            });
        }
    }
}

#[utoipa::path(get, path = "/admin/accounts/{account}/keys", tag = "keys", summary = "The account's keys, oldest first",
    params(AccountPath),
    responses((status = OK, description = "The keys", body = KeyList), ReadErrors))]
pub(crate) async fn list_keys(
    State(admin): Shared,
    request: Request,
) -> Result<Json<KeyList>, ApiError> {
    let (parts, _) = request.into_parts();
    let admitted = admin.admit(parts).await?;
    admin.authorize(&admitted, AdminOperation::List).await?;
    let keys = admin.manager.list(&admitted.account).await?;
    let recent = admin.requests_24h(&admitted.account).await;
    let quota_used = admin.quota_used(&keys).await;
    let view = |info: KeyInfo| {
        let accepted = recent.as_ref().map(|recent| recent.of(info.id));
        let used = quota_used
            .as_ref()
            .and_then(|used| used.get(&info.id).copied());
        KeyView::new(info, accepted, used)
    };
    Ok(Json(KeyList {
        keys: keys.into_iter().map(view).collect(),
    }))
}

#[utoipa::path(post, path = "/admin/accounts/{account}/keys", tag = "keys", summary = "Creates a key",
    params(AccountPath), request_body = Option<CreateBody>,
    responses(
        (status = CREATED, description = "The key, with `key` (the plaintext, shown once)", body = KeyView),
        (status = CONFLICT, description = "The account holds its limit of keys", body = ErrorBody),
        BodyErrors))]
pub(crate) async fn create_key(
    State(admin): Shared,
    request: Request,
) -> Result<Response, ApiError> {
    let (parts, body) = request.into_parts();
    let admitted = admin.admit(parts).await?;
    let body: CreateBody = read(&admitted, body).await?;
    let options = body.into_options()?;
    admin
        .authorize(&admitted, AdminOperation::Create(&options))
        .await?;
    let account = admitted.account.clone();
    let created = admin
        .change(
            &admitted,
            AdminAction::Created,
            |manager| async move { manager.create_with(&account, options).await },
            |created| Some(&created.info),
        )
        .await?;
    // A new key has no requests yet (and so none of its quota used).
    Ok((
        StatusCode::CREATED,
        Json(KeyView::with_key(created, Some(0), Some(0))),
    )
        .into_response())
}

#[utoipa::path(get, path = "/admin/accounts/{account}/keys/{id}", tag = "keys", summary = "A key",
    params(KeyPath), responses((status = OK, description = "The key", body = KeyView), ReadErrors))]
pub(crate) async fn get_key(
    State(admin): Shared,
    request: Request,
) -> Result<Json<KeyView>, ApiError> {
    let (parts, _) = request.into_parts();
    let (admitted, id) = admin.admit_key(parts).await?;
    admin.authorize(&admitted, AdminOperation::Get(id)).await?;
    read_key(&admin, &admitted.account, id).await
}

/// Key `id`'s record, with its count of requests.
async fn read_key(
    admin: &Admin,
    account: &AccountId,
    id: KeyId,
) -> Result<Json<KeyView>, ApiError> {
    let info = admin.manager.get(account, id).await?;
    Ok(Json(admin.view(info).await))
}

#[utoipa::path(patch, path = "/admin/accounts/{account}/keys/{id}", tag = "keys",
    summary = "Changes a key's policy: `null` clears a field, an absent one is kept",
    params(KeyPath), request_body = Option<UpdateBody>,
    responses((status = OK, description = "The key", body = KeyView), BodyErrors))]
pub(crate) async fn update_key(
    State(admin): Shared,
    request: Request,
) -> Result<Json<KeyView>, ApiError> {
    let (parts, body) = request.into_parts();
    let (admitted, id) = admin.admit_key(parts).await?;
    let body: UpdateBody = read(&admitted, body).await?;
    let update = body.into_update()?;
    let account = &admitted.account;
    if update.is_empty() {
        // Nothing to change: a read, with nothing to log or report.
        admin.authorize(&admitted, AdminOperation::Get(id)).await?;
        return read_key(&admin, account, id).await;
    }
    // The authorizer judges the change against the key as it is.
    let key = admin.manager.get(account, id).await?;
    let operation = AdminOperation::Update {
        key: &key,
        update: &update,
    };
    admin.authorize(&admitted, operation).await?;
    let account = account.clone();
    let updated = admin
        .change(
            &admitted,
            AdminAction::Updated,
            |manager| async move { manager.update(&account, id, update).await },
            |updated| Some(updated),
        )
        .await?;
    Ok(Json(admin.view(updated).await))
}

#[utoipa::path(post, path = "/admin/accounts/{account}/keys/{id}/rotate", tag = "keys",
    summary = "Gives a key a new secret, the old one working for a grace period",
    params(KeyPath), request_body = Option<RotateBody>,
    responses((status = OK, description = "The key, with `key` (the new plaintext, shown once)", body = KeyView), BodyErrors))]
pub(crate) async fn rotate_key(
    State(admin): Shared,
    request: Request,
) -> Result<Json<KeyView>, ApiError> {
    let (parts, body) = request.into_parts();
    let (admitted, id) = admin.admit_key(parts).await?;
    let body: RotateBody = read(&admitted, body).await?;
    let options = body.into_options()?;
    let operation = AdminOperation::Rotate {
        id,
        options: &options,
    };
    admin.authorize(&admitted, operation).await?;
    let account = admitted.account.clone();
    let rotated = admin
        .change(
            &admitted,
            AdminAction::Rotated,
            |manager| async move { manager.rotate_with(&account, id, options).await },
            |rotated| Some(&rotated.info),
        )
        .await?;
    // Rotating keeps the id, and so the counts.
    let requests = admin.key_requests_24h(&admitted.account, id).await;
    let used = admin.key_quota_used(&rotated.info).await;
    Ok(Json(KeyView::with_key(rotated, requests, used)))
}

#[utoipa::path(post, path = "/admin/accounts/{account}/keys/{id}/revoke", tag = "keys", summary = "Revokes a key",
    params(KeyPath), responses((status = OK, description = "The key", body = KeyView), ChangeErrors))]
pub(crate) async fn revoke_key(admin: Shared, request: Request) -> Result<Json<KeyView>, ApiError> {
    set_status(admin, request, AdminAction::Revoked).await
}

#[utoipa::path(post, path = "/admin/accounts/{account}/keys/{id}/reactivate", tag = "keys", summary = "Reactivates a revoked key",
    params(KeyPath), responses((status = OK, description = "The key", body = KeyView), ChangeErrors))]
pub(crate) async fn reactivate_key(
    admin: Shared,
    request: Request,
) -> Result<Json<KeyView>, ApiError> {
    set_status(admin, request, AdminAction::Reactivated).await
}

/// Revoke or reactivate, as `action` says.
async fn set_status(
    State(admin): Shared,
    request: Request,
    action: AdminAction,
) -> Result<Json<KeyView>, ApiError> {
    let (parts, _) = request.into_parts();
    let (admitted, id) = admin.admit_key(parts).await?;
    let revoke = action == AdminAction::Revoked;
    let operation = if revoke {
        AdminOperation::Revoke(id)
    } else {
        AdminOperation::Reactivate(id)
    };
    admin.authorize(&admitted, operation).await?;
    let account = admitted.account.clone();
    let info = admin
        .change(
            &admitted,
            action,
            |manager| async move {
                if revoke {
                    manager.revoke(&account, id).await
                } else {
                    manager.reactivate(&account, id).await
                }
            },
            |info| Some(info),
        )
        .await?;
    Ok(Json(admin.view(info).await))
}

#[utoipa::path(delete, path = "/admin/accounts/{account}/keys/{id}", tag = "keys", summary = "Deletes a key",
    params(KeyPath), responses((status = NO_CONTENT, description = "Deleted"), ChangeErrors))]
pub(crate) async fn delete_key(
    State(admin): Shared,
    request: Request,
) -> Result<StatusCode, ApiError> {
    let (parts, _) = request.into_parts();
    let (admitted, id) = admin.admit_key(parts).await?;
    admin
        .authorize(&admitted, AdminOperation::Delete(id))
        .await?;
    let account = admitted.account.clone();
    let reported = admin.hook.is_some();
    admin
        .change(
            &admitted,
            AdminAction::Deleted,
            |manager| async move {
                // Read first, for the event's prefix (the delete itself returns nothing).
                let before = if reported {
                    Some(manager.get(&account, id).await?)
                } else {
                    None
                };
                manager.delete(&account, id).await?;
                Ok(before)
            },
            Option::as_ref,
        )
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET …/keys/{id}/usage`: one key's requests per bucket.
#[utoipa::path(get, path = "/admin/accounts/{account}/keys/{id}/usage", tag = "usage", summary = "A key's requests per bucket",
    params(KeyPath, UsageQuery), responses((status = OK, description = "The key's usage", body = UsageView), ReadErrors))]
pub(crate) async fn key_usage(
    State(admin): Shared,
    request: Request,
) -> Result<Json<UsageView>, ApiError> {
    let (parts, _) = request.into_parts();
    let (admitted, id) = admin.admit_key(parts).await?;
    let range = range_of(admitted.parts.uri.query(), SystemTime::now())?;
    admin
        .authorize(&admitted, AdminOperation::Usage(Some(id)))
        .await?;
    let series = admin
        .manager
        .usage(&admitted.account, Some(id), &range)
        .await?;
    Ok(Json(UsageView::new(Some(id), &series)))
}

/// `GET /admin/accounts/{account}/usage`: the account's requests per bucket, every key's
/// (deleted ones included) added up.
#[utoipa::path(get, path = "/admin/accounts/{account}/usage", tag = "usage",
    summary = "The account's requests per bucket, every key's (deleted ones included)",
    params(AccountPath, UsageQuery), responses((status = OK, description = "The account's usage", body = UsageView), ReadErrors))]
pub(crate) async fn account_usage(
    State(admin): Shared,
    request: Request,
) -> Result<Json<UsageView>, ApiError> {
    let (parts, _) = request.into_parts();
    let admitted = admin.admit(parts).await?;
    let range = range_of(admitted.parts.uri.query(), SystemTime::now())?;
    admin
        .authorize(&admitted, AdminOperation::Usage(None))
        .await?;
    let series = admin.manager.usage(&admitted.account, None, &range).await?;
    Ok(Json(UsageView::new(None, &series)))
}

/// `GET /admin/accounts/{account}/events`: the account's audit trail, newest first.
#[utoipa::path(get, path = "/admin/accounts/{account}/events", tag = "audit",
    summary = "The account's audit trail, newest first: every change and every refused change",
    params(AccountPath, EventsQuery), responses((status = OK, description = "A page of the trail", body = EventList), ReadErrors))]
pub(crate) async fn account_events(
    State(admin): Shared,
    request: Request,
) -> Result<Json<EventList>, ApiError> {
    let (parts, _) = request.into_parts();
    let admitted = admin.admit(parts).await?;
    let query = events::query_of(admitted.parts.uri.query())?;
    admin.authorize(&admitted, AdminOperation::Events).await?;
    let events = admin.manager.audit_trail(&admitted.account, query).await?;
    Ok(Json(EventList::new(&events)))
}

/// A change the authorizer refused, as the audit trail records it.
struct Attempted {
    action: AuditAction,
    changes: AuditChanges,
    key: Option<AttemptedKey>,
}

/// The key a refused change named.
enum AttemptedKey {
    /// Read just before (an update).
    Read(KeyInfo),
    /// Named by the path only.
    Id(KeyId),
}

impl Attempted {
    /// What `operation` attempted; `None` for a read, which changes nothing.
    fn of(operation: &AdminOperation<'_>) -> Option<Self> {
        let (action, changes, key) = match *operation {
            AdminOperation::Create(options) => {
                (AuditAction::Create, AuditChanges::of_options(options), None)
            }
            AdminOperation::Update { key, update } => (
                AuditAction::Update,
                AuditChanges::of_update(update),
                Some(AttemptedKey::Read(key.clone())),
            ),
            AdminOperation::Rotate { id, options } => (
                AuditAction::Rotate,
                AuditChanges::of_rotation(options),
                Some(AttemptedKey::Id(id)),
            ),
            AdminOperation::Revoke(id) => (
                AuditAction::Revoke,
                AuditChanges::none(),
                Some(AttemptedKey::Id(id)),
            ),
            AdminOperation::Reactivate(id) => (
                AuditAction::Reactivate,
                AuditChanges::none(),
                Some(AttemptedKey::Id(id)),
            ),
            AdminOperation::Delete(id) => (
                AuditAction::Delete,
                AuditChanges::none(),
                Some(AttemptedKey::Id(id)),
            ),
            AdminOperation::List
            | AdminOperation::Get(_)
            | AdminOperation::Usage(_)
            | AdminOperation::Events => return None,
        };
        Some(Self {
            action,
            changes,
            key,
        })
    }
}

/// Runs `work` in a task of its own, to its end even if the caller goes away (a client that
/// disconnects, a timeout), and returns its output; `None` if the runtime shutting down
/// cancelled it. A panic in it is the caller's panic (and so a 500).
async fn to_the_end<T: Send + 'static>(
    work: impl Future<Output = T> + Send + 'static,
) -> Option<T> {
    match tokio::spawn(work).await {
        Ok(output) => Some(output),
        Err(err) if err.is_panic() => std::panic::resume_unwind(err.into_panic()),
        Err(_) => None,
    }
}

/// The keys' counts behind `requests_24h`.
struct RecentRequests(HashMap<KeyId, UsageCounts>);

impl RecentRequests {
    /// Key `id`'s accepted requests (0 without any).
    fn of(&self, id: KeyId) -> u64 {
        self.0.get(&id).map_or(0, |counts| counts.accepted)
    }
}

/// The admitted request's body as `T`, within the router's body limit.
async fn read<T>(admitted: &Admitted, body: Body) -> Result<T, ApiError>
where
    T: serde::de::DeserializeOwned + Default,
{
    json_body(Request::from_parts(admitted.parts.clone(), body)).await
}

/// Any other method on an admin path.
pub(crate) async fn method_not_allowed() -> ApiError {
    ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
}
