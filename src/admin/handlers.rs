//! The admin routes' handlers: admit the request (authenticate, read the path, authorize),
//! read its body, call the [`KeyManager`], answer.

use std::fmt;
use std::sync::Arc;

use axum::Json;
use axum::extract::path::ErrorKind;
use axum::extract::rejection::PathRejection;
use axum::extract::{FromRequestParts as _, Path, Request, State};
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use http::request::Parts;

use super::authorize::AdminAuthorizer;
use super::error::ApiError;
use super::event::{AdminAction, AdminEvent};
use super::json::{CreateBody, KeyList, KeyView, RotateBody, UpdateBody, optional_body};
use crate::manager::{KeyInfo, KeyManager};
use crate::store::{AccountId, KeyId};

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

impl Admin {
    /// Authenticates, reads `{account}` (400 if invalid) and authorizes the account.
    async fn admit(&self, parts: &mut Parts) -> Result<AccountId, ApiError> {
        self.authorizer.authenticate(parts).await?;
        let account = match Path::<String>::from_request_parts(parts, &()).await {
            Ok(Path(account)) => account,
            Err(_) => return Err(ApiError::bad_account()),
        };
        self.authorized(parts, &account).await
    }

    /// The account `raw` names (400 if invalid), once the caller may manage it.
    async fn authorized(&self, parts: &Parts, raw: &str) -> Result<AccountId, ApiError> {
        let account = AccountId::new(raw).map_err(|_| ApiError::bad_account())?;
        self.authorizer.authorize(parts, &account).await?;
        Ok(account)
    }

    /// As [`admit`](Self::admit), and reads `{id}` (404 if it is no key id).
    async fn admit_key(&self, parts: &mut Parts) -> Result<(AccountId, KeyId), ApiError> {
        self.authorizer.authenticate(parts).await?;
        // A segment that isn't UTF-8 once percent-decoded fails the whole extraction; the
        // rejection names the first such segment, and an id that isn't text is no key's id.
        let path = Path::<(String, String)>::from_request_parts(parts, &()).await;
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
        let account = self.authorized(parts, &account).await?;
        let id = id.parse::<KeyId>().map_err(|_| ApiError::key_not_found())?;
        Ok((account, id))
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

pub(crate) async fn list_keys(
    State(admin): Shared,
    request: Request,
) -> Result<Json<KeyList>, ApiError> {
    let (mut parts, _) = request.into_parts();
    let account = admin.admit(&mut parts).await?;
    let keys = admin.manager.list(&account).await?;
    Ok(Json(KeyList {
        keys: keys.into_iter().map(KeyView::from).collect(),
    }))
}

pub(crate) async fn create_key(
    State(admin): Shared,
    request: Request,
) -> Result<Response, ApiError> {
    let (mut parts, body) = request.into_parts();
    let account = admin.admit(&mut parts).await?;
    let body: CreateBody = optional_body(Request::from_parts(parts, body)).await?;
    let options = body.into_options()?;
    let created = admin.manager.create_with(&account, options).await?;
    admin.emit(AdminAction::Created, &created.info);
    Ok((StatusCode::CREATED, Json(KeyView::from(created))).into_response())
}

pub(crate) async fn get_key(
    State(admin): Shared,
    request: Request,
) -> Result<Json<KeyView>, ApiError> {
    let (mut parts, _) = request.into_parts();
    let (account, id) = admin.admit_key(&mut parts).await?;
    Ok(Json(admin.manager.get(&account, id).await?.into()))
}

pub(crate) async fn update_key(
    State(admin): Shared,
    request: Request,
) -> Result<Json<KeyView>, ApiError> {
    let (mut parts, body) = request.into_parts();
    let (account, id) = admin.admit_key(&mut parts).await?;
    let body: UpdateBody = optional_body(Request::from_parts(parts, body)).await?;
    let update = body.into_update()?;
    if update.is_empty() {
        // Nothing to change, nothing to log or report.
        return Ok(Json(admin.manager.get(&account, id).await?.into()));
    }
    let updated = admin.manager.update(&account, id, update).await?;
    admin.emit(AdminAction::Updated, &updated);
    Ok(Json(updated.into()))
}

pub(crate) async fn rotate_key(
    State(admin): Shared,
    request: Request,
) -> Result<Json<KeyView>, ApiError> {
    let (mut parts, body) = request.into_parts();
    let (account, id) = admin.admit_key(&mut parts).await?;
    let body: RotateBody = optional_body(Request::from_parts(parts, body)).await?;
    let options = body.into_options()?;
    let rotated = admin.manager.rotate_with(&account, id, options).await?;
    admin.emit(AdminAction::Rotated, &rotated.info);
    Ok(Json(rotated.into()))
}

pub(crate) async fn revoke_key(admin: Shared, request: Request) -> Result<Json<KeyView>, ApiError> {
    set_status(admin, request, AdminAction::Revoked).await
}

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
    let (mut parts, _) = request.into_parts();
    let (account, id) = admin.admit_key(&mut parts).await?;
    let info = if action == AdminAction::Revoked {
        admin.manager.revoke(&account, id).await?
    } else {
        admin.manager.reactivate(&account, id).await?
    };
    admin.emit(action, &info);
    Ok(Json(info.into()))
}

pub(crate) async fn delete_key(
    State(admin): Shared,
    request: Request,
) -> Result<StatusCode, ApiError> {
    let (mut parts, _) = request.into_parts();
    let (account, id) = admin.admit_key(&mut parts).await?;
    // Read first, for the event's prefix (the delete itself returns nothing).
    let before = match &admin.hook {
        Some(_) => Some(admin.manager.get(&account, id).await?),
        None => None,
    };
    admin.manager.delete(&account, id).await?;
    if let Some(before) = before {
        admin.emit(AdminAction::Deleted, &before);
    }
    Ok(StatusCode::NO_CONTENT)
}

/// Any other method on an admin path.
pub(crate) async fn method_not_allowed() -> ApiError {
    ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
}
