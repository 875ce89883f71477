//! Who gets in (the operator token, a custom authorizer), what every answer carries, the
//! error statuses, the body limit, and the audit hook.

use async_trait::async_trait;
use http::request::Parts;
use http::{Method, StatusCode};
use tower_api_key::admin::{
    AdminAction, AdminAuthorizer, AdminCaller, AdminDenied, AdminToken, AdminTokenError,
};

use super::{Harness, TOKEN, text};

const UUID: &str = "00000000-0000-4000-8000-000000000000";

/// Every admin route, as (method, path) for account `acme` and key `id`.
fn routes(id: &str) -> Vec<(Method, String)> {
    let keys = "/admin/accounts/acme/keys".to_owned();
    let key = format!("{keys}/{id}");
    vec![
        (Method::GET, keys.clone()),
        (Method::POST, keys),
        (Method::GET, key.clone()),
        (Method::PATCH, key.clone()),
        (Method::DELETE, key.clone()),
        (Method::POST, format!("{key}/rotate")),
        (Method::POST, format!("{key}/revoke")),
        (Method::POST, format!("{key}/reactivate")),
    ]
}

#[tokio::test]
async fn without_or_with_a_wrong_token_every_route_is_401_json_and_nothing_changes() {
    let admin = Harness::start().await;
    let created = admin.create("acme", None).await;
    let id = text(&created, "id");
    let wrong = format!("Bearer {TOKEN}x");
    let basic = format!("Basic {TOKEN}");
    let key = format!("Bearer {}", text(&created, "key"));
    for headers in [
        &[][..],
        &[("authorization", wrong.as_str())][..],
        &[("authorization", basic.as_str())][..],
        &[("authorization", "Bearer ")][..],
        &[("authorization", key.as_str())][..],
        &[("x-api-key", TOKEN)][..],
    ] {
        for (method, path) in routes(id) {
            let mut headers = headers.to_vec();
            headers.push(("content-type", "application/json"));
            let reply = admin
                .send(method.clone(), &path, &headers, Some(b"{}"))
                .await;
            let what = format!("{method} {path} with {headers:?}");
            reply.assert_error(StatusCode::UNAUTHORIZED, &what);
            assert_eq!(reply.header("www-authenticate"), Some("Bearer"), "{what}");
            assert_eq!(reply.header("cache-control"), Some("no-store"), "{what}");
        }
    }
    // 401 comes before the path is looked at.
    let reply = admin
        .send(Method::GET, "/admin/accounts/a.b/keys", &[], None)
        .await;
    reply.assert_error(StatusCode::UNAUTHORIZED, "bad account, no token");
    // Nothing changed; the scheme is case-insensitive.
    assert_eq!(
        admin.list("acme").await,
        [{
            let mut record = created.clone();
            record.as_object_mut().expect("object").remove("key");
            record
        }]
    );
    let lower = format!("bearer {TOKEN}");
    let reply = admin
        .send(
            Method::GET,
            "/admin/accounts/acme/keys",
            &[("authorization", &lower)],
            None,
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(admin.events().len(), 1, "only the create");
}

#[test]
fn admin_tokens_are_at_least_16_printable_characters() {
    assert_eq!(
        AdminToken::new("fifteen-chars-x").unwrap_err(),
        AdminTokenError::TooShort
    );
    assert_eq!(
        AdminToken::new("sixteen chars xx").unwrap_err(),
        AdminTokenError::NotPrintable
    );
    let token = AdminToken::new("sixteen-chars-xx").expect("long enough");
    assert!(!format!("{token:?}").contains("sixteen"));
    assert!(
        !AdminToken::new("too short, é")
            .unwrap_err()
            .to_string()
            .contains("é")
    );
}

/// Each tenant manages its own account: `x-tenant` names it.
struct SameTenant;

#[async_trait]
impl AdminAuthorizer for SameTenant {
    async fn authenticate(&self, request: &Parts) -> Result<AdminCaller, AdminDenied> {
        let tenant = request
            .headers
            .get("x-tenant")
            .and_then(|v| v.to_str().ok());
        match tenant.map(str::parse) {
            Some(Ok(account)) => Ok(AdminCaller::Tenant(account)),
            _ => Err(AdminDenied::unauthenticated("no tenant")),
        }
    }
}

#[tokio::test]
async fn a_custom_authorizer_answers_another_account_like_a_missing_key() {
    let admin = Harness::with_authorizer(SameTenant).await;
    let acme = [("x-tenant", "acme")];
    let created = admin
        .send(Method::POST, "/admin/accounts/acme/keys", &acme, None)
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text());
    let id = text(&created.json(), "id").to_owned();

    let missing = admin
        .send(
            Method::GET,
            &format!("/admin/accounts/acme/keys/{UUID}"),
            &acme,
            None,
        )
        .await;
    missing.assert_error(StatusCode::NOT_FOUND, "missing key");
    for (method, path) in routes(&id) {
        let reply = admin
            .send(method.clone(), &path, &[("x-tenant", "other")], None)
            .await;
        reply.assert_error(StatusCode::NOT_FOUND, &format!("{method} {path}"));
        assert_eq!(
            reply.body, missing.body,
            "{method} {path}: no existence leak"
        );
    }
    let reply = admin
        .send(Method::GET, "/admin/accounts/acme/keys", &[], None)
        .await;
    reply.assert_error(StatusCode::UNAUTHORIZED, "no tenant");
    assert_eq!(reply.json()["error"], "no tenant");
    // The key is untouched, and its own tenant sees it.
    let listed = admin
        .send(Method::GET, "/admin/accounts/acme/keys", &acme, None)
        .await
        .json();
    assert_eq!(listed["keys"][0]["status"], "active");
    assert_eq!(admin.events().len(), 1);
}

#[tokio::test]
async fn every_answer_carries_no_store() {
    let admin = Harness::start().await;
    let created = admin
        .admin(Method::POST, "/admin/accounts/acme/keys", None)
        .await;
    let id = text(&created.json(), "id").to_owned();
    let mut replies = vec![("create", created)];
    for (method, path) in routes(&id) {
        let reply = admin.admin(method.clone(), &path, None).await;
        replies.push(("route", reply));
    }
    replies.push((
        "400",
        admin
            .admin(Method::POST, "/admin/accounts/a.b/keys", None)
            .await,
    ));
    replies.push((
        "404",
        admin.on_key(Method::GET, "acme", UUID, "", None).await,
    ));
    for (what, reply) in replies {
        assert_eq!(
            reply.header("cache-control"),
            Some("no-store"),
            "{what}: {}",
            reply.status
        );
    }
}

#[tokio::test]
async fn bad_account_is_400_unknown_or_malformed_key_id_is_404_other_method_405() {
    let admin = Harness::start().await;
    let theirs = admin.create("other", None).await;
    let long = "a".repeat(65);
    for account in ["a.b", "a%20b", "%C3%A9", "%FF", "a%2Fb", long.as_str(), "~"] {
        let reply = admin
            .admin(
                Method::POST,
                &format!("/admin/accounts/{account}/keys"),
                None,
            )
            .await;
        reply.assert_error(StatusCode::BAD_REQUEST, account);
        let reply = admin
            .admin(
                Method::PATCH,
                &format!("/admin/accounts/{account}/keys/{UUID}"),
                Some("{}"),
            )
            .await;
        reply.assert_error(StatusCode::BAD_REQUEST, account);
    }
    for id in [UUID, "not-a-uuid", "%FF%FE", text(&theirs, "id")] {
        for (method, path) in routes(id).into_iter().filter(|(_, path)| path.contains(id)) {
            let reply = admin.admin(method.clone(), &path, Some("{}")).await;
            reply.assert_error(StatusCode::NOT_FOUND, &format!("{method} {path}"));
        }
    }
    let reply = admin
        .admin(Method::PUT, "/admin/accounts/acme/keys", None)
        .await;
    reply.assert_error(StatusCode::METHOD_NOT_ALLOWED, "PUT");
    // Nothing happened to the other account's key.
    let listed = admin.list("other").await;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["prefix"], theirs["prefix"]);
    assert_eq!(admin.ping(text(&theirs, "key")).await, StatusCode::OK);
}

#[tokio::test]
async fn the_fourth_key_is_409() {
    let admin = Harness::start().await;
    for _ in 0..3 {
        admin.create("acme", None).await;
    }
    let reply = admin
        .admin(Method::POST, "/admin/accounts/acme/keys", None)
        .await;
    reply.assert_error(StatusCode::CONFLICT, "fourth");
    assert_eq!(admin.list("acme").await.len(), 3);
}

#[tokio::test]
async fn an_oversized_body_is_413_json_and_changes_nothing() {
    let admin = Harness::start().await;
    let created = admin.create("acme", None).await;
    let id = text(&created, "id");
    let huge = format!(r#"{{"name": "{}"}}"#, "x".repeat(64 * 1024));
    for (method, path) in [
        (Method::POST, "/admin/accounts/acme/keys".to_owned()),
        (Method::PATCH, format!("/admin/accounts/acme/keys/{id}")),
        (
            Method::POST,
            format!("/admin/accounts/acme/keys/{id}/rotate"),
        ),
    ] {
        let reply = admin.admin(method.clone(), &path, Some(&huge)).await;
        reply.assert_error(StatusCode::PAYLOAD_TOO_LARGE, &format!("{method} {path}"));
    }
    let listed = admin.list("acme").await;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["prefix"], created["prefix"]);
    assert!(listed[0]["name"].is_null());
}

#[tokio::test]
async fn each_change_reports_one_event_with_account_id_and_prefix() {
    let admin = Harness::start().await;
    let created = admin.create("acme", None).await;
    let id = text(&created, "id");
    admin.patch("acme", id, r#"{"name": "n"}"#).await;
    admin
        .on_key(Method::POST, "acme", id, "/revoke", None)
        .await;
    admin
        .on_key(Method::POST, "acme", id, "/reactivate", None)
        .await;
    let rotated = admin
        .on_key(Method::POST, "acme", id, "/rotate", None)
        .await
        .json();
    admin.on_key(Method::DELETE, "acme", id, "", None).await;
    // Refused or read-only requests report nothing.
    admin.on_key(Method::DELETE, "acme", id, "", None).await;
    admin.list("acme").await;

    let events = admin.events();
    let actions: Vec<AdminAction> = events.iter().map(|event| event.action).collect();
    assert_eq!(
        actions,
        [
            AdminAction::Created,
            AdminAction::Updated,
            AdminAction::Revoked,
            AdminAction::Reactivated,
            AdminAction::Rotated,
            AdminAction::Deleted,
        ]
    );
    for (event, prefix) in events.iter().zip([
        &created["prefix"],
        &created["prefix"],
        &created["prefix"],
        &created["prefix"],
        &rotated["prefix"],
        &rotated["prefix"],
    ]) {
        assert_eq!(event.account.as_str(), "acme");
        assert_eq!(event.key_id.to_string(), id);
        assert_eq!(event.prefix.to_string(), prefix.as_str().expect("prefix"));
    }
}

/// A store that, while `hold` is set, commits a change and then waits for the test before it
/// answers.
#[derive(Default)]
struct AnswersLate {
    records: tower_api_key::MemoryStore,
    hold: std::sync::atomic::AtomicBool,
    committed: tokio::sync::Notify,
    answer: tokio::sync::Notify,
}

impl crate::support::hooks::StoreHooks for AnswersLate {
    fn records(&self) -> &tower_api_key::MemoryStore {
        &self.records
    }

    async fn after_write(&self) -> Result<(), tower_api_key::StoreError> {
        if self.hold.load(std::sync::atomic::Ordering::SeqCst) {
            self.committed.notify_one();
            self.answer.notified().await;
        }
        Ok(())
    }
}

crate::support::hooks::hooked_key_store!(AnswersLate);

#[tokio::test]
async fn a_change_whose_caller_went_away_is_still_reported() {
    use std::sync::atomic::Ordering;
    use std::sync::{Arc, Mutex};
    use tower::ServiceExt as _;

    let store = Arc::new(AnswersLate::default());
    let manager = tower_api_key::KeyManager::new(store.clone(), crate::support::pepper());
    let events = Arc::new(Mutex::new(Vec::new()));
    let trail = Arc::clone(&events);
    let app: axum::Router = tower_api_key::admin::AdminRouter::new(
        manager.clone(),
        AdminToken::new(TOKEN).expect("token"),
    )
    .on_event(move |event| trail.lock().expect("lock").push(event.action))
    .into_router();
    let created = manager
        .create(&crate::support::account("acme"))
        .await
        .expect("create");

    store.hold.store(true, Ordering::SeqCst);
    let request = http::Request::post(format!(
        "/admin/accounts/acme/keys/{}/revoke",
        created.info.id
    ))
    .header("authorization", format!("Bearer {TOKEN}"))
    .body(axum::body::Body::empty())
    .expect("request");
    let caller = tokio::spawn(app.oneshot(request));
    tokio::time::timeout(
        std::time::Duration::from_secs(30),
        store.committed.notified(),
    )
    .await
    .expect("the revoke reaches the store");
    // The client goes away while the store has committed but not answered.
    caller.abort();
    assert!(caller.await.is_err_and(|err| err.is_cancelled()));
    store.answer.notify_one();

    let reported = tokio::time::timeout(std::time::Duration::from_secs(30), async {
        loop {
            if !events.lock().expect("lock").is_empty() {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(reported.is_ok(), "the revoke was never reported");
    assert_eq!(*events.lock().expect("lock"), [AdminAction::Revoked]);
}
