//! The admin router's OpenAPI document: valid OpenAPI 3.1, naming exactly the routes the
//! router serves, and declaring the answers the router really gives (each answer's status is
//! declared for its operation and its body matches the declared schema).

use std::collections::BTreeSet;
use std::process::Command;
use std::sync::{Arc, Mutex};

use axum::Router;
use http::{Method, StatusCode};
use serde_json::{Value, json};
use tower_api_key::admin::{AdminRouter, AdminToken, AdminTokens, OPENAPI_PATH};
use tower_api_key::{KeyManager, MemoryStore};

use super::{Harness, Reply, TOKEN, text};
use crate::support::http::{client, get_with, serve};
use crate::support::panicking::PanicsOnBoom;
use crate::support::stores::TestStore;
use crate::support::{account, pepper};

/// Every route the router serves (but the Integration page's), as (method, path): what the
/// document must name, no more and no less. A route added to the router and not here fails
/// [`the_document_names_every_route_the_router_serves_and_no_other`].
const ROUTES: [(&str, &str); 12] = [
    ("get", "/admin/accounts/{account}/keys"),
    ("post", "/admin/accounts/{account}/keys"),
    ("get", "/admin/accounts/{account}/keys/{id}"),
    ("patch", "/admin/accounts/{account}/keys/{id}"),
    ("delete", "/admin/accounts/{account}/keys/{id}"),
    ("post", "/admin/accounts/{account}/keys/{id}/rotate"),
    ("post", "/admin/accounts/{account}/keys/{id}/revoke"),
    ("post", "/admin/accounts/{account}/keys/{id}/reactivate"),
    ("get", "/admin/accounts/{account}/keys/{id}/usage"),
    ("get", "/admin/accounts/{account}/usage"),
    ("get", "/admin/accounts/{account}/events"),
    ("get", "/admin/openapi.json"),
];

/// The methods probed on every documented path.
const METHODS: [Method; 5] = [
    Method::GET,
    Method::POST,
    Method::PATCH,
    Method::PUT,
    Method::DELETE,
];

const UUID: &str = "00000000-0000-4000-8000-000000000000";

/// The document as the router serves it, and the (path, method, status) answers checked
/// against it so far.
struct Document {
    json: Value,
    checked: Mutex<BTreeSet<(String, String, u16)>>,
}

impl Document {
    /// `GET /admin/openapi.json`, without credentials.
    async fn fetch(admin: &Harness) -> Self {
        let reply = admin.send(Method::GET, OPENAPI_PATH, &[], None).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        assert_eq!(reply.header("cache-control"), Some("no-store"));
        let document = Self {
            json: reply.json(),
            checked: Mutex::default(),
        };
        document.check(&Method::GET, OPENAPI_PATH, &reply);
        document
    }

    /// The documented (path, method) pairs.
    fn operations(&self) -> BTreeSet<(String, String)> {
        let paths = self.json["paths"].as_object().expect("paths");
        paths
            .iter()
            .flat_map(|(path, item)| {
                let methods = item.as_object().expect("path item").keys();
                methods.map(move |method| (path.clone(), method.clone()))
            })
            .collect()
    }

    /// Asserts that `reply`, the answer to `method` on a path of `template`, has a status
    /// the document declares for that operation and a body matching the declared schema
    /// (none if none is declared).
    fn check(&self, method: &Method, template: &str, reply: &Reply) {
        let method = method.as_str().to_ascii_lowercase();
        let status = reply.status.as_u16();
        let what = format!("{method} {template} answered {status}: {}", reply.text());
        let operation = &self.json["paths"][template][&method];
        assert!(
            operation.is_object(),
            "{what}: no such operation documented"
        );
        let declared = &operation["responses"][status.to_string()];
        assert!(declared.is_object(), "{what}: status not declared");
        match declared["content"]["application/json"].get("schema") {
            None => assert!(reply.body.is_empty(), "{what}: no body declared"),
            Some(schema) => {
                assert!(
                    reply
                        .header("content-type")
                        .is_some_and(|value| value.starts_with("application/json")),
                    "{what}: {:?}",
                    reply.headers
                );
                let errors = self.violations(schema, &reply.json());
                assert!(
                    errors.is_empty(),
                    "{what}: doesn't match {schema}: {errors:#?}"
                );
            }
        }
        self.checked
            .lock()
            .expect("lock")
            .insert((template.to_owned(), method, status));
    }

    /// How `instance` violates `schema` (JSON Schema 2020-12, formats checked), whose
    /// references point into the document's components.
    fn violations(&self, schema: &Value, instance: &Value) -> Vec<String> {
        let mut root = schema.as_object().expect("a schema object").clone();
        root.insert("components".to_owned(), self.json["components"].clone());
        let validator = jsonschema::options()
            .with_draft(jsonschema::Draft::Draft202012)
            .should_validate_formats(true)
            .build(&Value::Object(root))
            .expect("a valid schema");
        validator
            .iter_errors(instance)
            .map(|error| format!("{error} at {}", error.instance_path()))
            .collect()
    }
}

/// `template` with `{account}` and `{id}` filled in.
fn concrete(template: &str, account: &str, id: &str) -> String {
    template.replace("{account}", account).replace("{id}", id)
}

#[tokio::test]
async fn the_document_is_valid_openapi_3_1() {
    let admin = Harness::start().await;
    let document = Document::fetch(&admin).await;
    assert_eq!(document.json["openapi"], "3.1.0");
    let python = Command::new("python3")
        .args(["-c", "import openapi_spec_validator"])
        .output();
    if !python.is_ok_and(|output| output.status.success()) {
        let why = "python3 with openapi-spec-validator is not installed";
        assert!(
            std::env::var_os("REQUIRE_OPENAPI_VALIDATOR").is_none(),
            "REQUIRE_OPENAPI_VALIDATOR is set but {why}"
        );
        eprintln!(
            "skipped: {why} (`pip install openapi-spec-validator`; set \
             REQUIRE_OPENAPI_VALIDATOR=1 to fail instead, as `bash .ci/run` does)"
        );
        return;
    }
    let file = std::env::temp_dir().join(format!("admin-openapi-{}.json", std::process::id()));
    std::fs::write(&file, document.json.to_string()).expect("write the document");
    let output = Command::new("python3")
        .args(["-m", "openapi_spec_validator"])
        .arg(&file)
        .output()
        .expect("run openapi_spec_validator");
    let _ = std::fs::remove_file(&file);
    assert!(
        output.status.success(),
        "openapi-spec-validator refused the document:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[tokio::test]
async fn the_document_names_every_route_the_router_serves_and_no_other() {
    let admin = Harness::start().await;
    let document = Document::fetch(&admin).await;
    let listed: BTreeSet<(String, String)> = ROUTES
        .iter()
        .map(|(method, path)| ((*path).to_owned(), (*method).to_owned()))
        .collect();
    assert_eq!(document.operations(), listed, "the document vs ROUTES");

    // What the router itself holds (axum lists its routes in its `Debug` output), the
    // Integration page's routes aside.
    let router: Router = AdminRouter::new(
        KeyManager::new(Arc::new(MemoryStore::new()), pepper()),
        AdminToken::new(TOKEN).expect("token"),
    )
    .into_router();
    let served: BTreeSet<(String, String)> = routes_of(&format!("{router:?}"))
        .into_iter()
        .filter(|(path, _)| !path.starts_with(tower_api_key::admin::DEFAULT_PAGE_PATH))
        .collect();
    assert_eq!(served, listed, "the router's routes vs ROUTES");

    // Every documented operation is routed (401 without credentials, or the document), every
    // other method on a documented path is 405.
    let paths: BTreeSet<String> = listed.iter().map(|(path, _)| path.clone()).collect();
    for template in &paths {
        let path = concrete(template, "acme", UUID);
        for method in METHODS {
            let reply = admin.send(method.clone(), &path, &[], None).await;
            let documented = listed.contains(&(template.clone(), method.as_str().to_lowercase()));
            let what = format!("{method} {path}: {} {}", reply.status, reply.text());
            if documented {
                assert!(
                    matches!(reply.status, StatusCode::UNAUTHORIZED | StatusCode::OK),
                    "{what}"
                );
                document.check(&method, template, &reply);
            } else {
                reply.assert_error(StatusCode::METHOD_NOT_ALLOWED, &what);
            }
        }
    }
}

/// The (path, method) pairs in a `Router`'s `Debug` output: each route id's path, and the
/// methods its `allow_header` names (HEAD, which axum answers for every GET, aside).
fn routes_of(debug: &str) -> BTreeSet<(String, String)> {
    // `RouteId(1): "/path"` and `RouteId(1): MethodRouter(… allow_header: Bytes(b"GET,HEAD") })`.
    // Only the router's own paths: its fallback router (no routes of its own, whatever its
    // `Debug` shows) numbers its routes separately.
    let own = debug.split("fallback_router").next().unwrap_or_default();
    let mut paths = Vec::new();
    let mut methods = Vec::new();
    for piece in own.split("RouteId(").skip(1) {
        let Some((id, rest)) = piece.split_once("): ") else {
            continue;
        };
        if let Some(path) = rest.strip_prefix('"') {
            let path = path.split('"').next().unwrap_or_default();
            paths.push((id.to_owned(), path.to_owned()));
        } else if let Some((_, allowed)) = rest.split_once("allow_header: Bytes(b\"") {
            let allowed = allowed.split('"').next().unwrap_or_default();
            methods.push((id.to_owned(), allowed.to_owned()));
        }
    }
    assert!(
        !paths.is_empty() && !methods.is_empty(),
        "axum's Debug output of a Router no longer lists its routes; update `routes_of`: {debug}"
    );
    let mut routes = BTreeSet::new();
    for (id, path) in paths {
        let (_, allowed) = methods
            .iter()
            .find(|(other, _)| *other == id)
            .unwrap_or_else(|| panic!("no methods for route {id} ({path})"));
        for method in allowed.split(',').filter(|method| *method != "HEAD") {
            routes.insert((path.clone(), method.to_ascii_lowercase()));
        }
    }
    routes
}

#[tokio::test]
async fn every_answer_has_a_declared_status_and_matches_its_schema() {
    let admin = Harness::start().await;
    let document = Document::fetch(&admin).await;
    let keys = "/admin/accounts/{account}/keys";
    let key = "/admin/accounts/{account}/keys/{id}";
    let check = |method: Method, template: &str, reply: Reply| {
        document.check(&method, template, &reply);
        reply
    };

    // The lifecycle, every field given.
    let full = r#"{"name":"CI","scopes":["read"],"expires_in_seconds":86400,
        "rate_limit":{"requests":5,"per_seconds":2},"quota":{"requests":1000,"period":"day"},
        "allowed_ips":["203.0.113.0/24"],"metadata":{"plan":"pro"}}"#;
    let path = concrete(keys, "acme", "");
    let created = admin.admin(Method::POST, &path, Some(full)).await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text());
    let created = check(Method::POST, keys, created).json();
    let id = text(&created, "id");
    let on_key = concrete(key, "acme", id);
    let plain = admin.admin(Method::POST, &path, None).await;
    let plain = check(Method::POST, keys, plain).json();
    // A use of the plain key (the other one only lets in its allowlist), for usage to count.
    let plain_id = text(&plain, "id");
    assert_eq!(admin.ping(text(&plain, "key")).await, StatusCode::OK);
    admin.wait_until_used("acme", plain_id).await;
    let plain_key = concrete(key, "acme", plain_id);
    check(
        Method::GET,
        keys,
        admin.admin(Method::GET, &path, None).await,
    );
    check(
        Method::GET,
        key,
        admin.admin(Method::GET, &on_key, None).await,
    );
    let cleared =
        r#"{"name":null,"scopes":null,"rate_limit":null,"expires_at":"2030-01-01T00:00:00Z"}"#;
    let updated = admin.admin(Method::PATCH, &on_key, Some(cleared)).await;
    assert_eq!(updated.status, StatusCode::OK, "{}", updated.text());
    check(Method::PATCH, key, updated);
    let rotate = format!("{key}/rotate");
    let rotated = admin
        .admin(
            Method::POST,
            &format!("{on_key}/rotate"),
            Some(r#"{"grace_seconds":600}"#),
        )
        .await;
    let rotated = check(Method::POST, &rotate, rotated).json();
    assert!(rotated["previous_prefix"].is_string(), "{rotated}");
    for action in ["revoke", "reactivate"] {
        let reply = admin
            .admin(Method::POST, &format!("{on_key}/{action}"), None)
            .await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        check(Method::POST, &format!("{key}/{action}"), reply);
    }
    let usage = format!("{key}/usage");
    for query in [
        "",
        "?granularity=day",
        "?from=2026-01-01T00:00:00Z&to=2026-01-02T00:00:00Z",
    ] {
        let reply = admin
            .admin(Method::GET, &format!("{plain_key}/usage{query}"), None)
            .await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        check(Method::GET, &usage, reply);
    }
    let account_usage = "/admin/accounts/{account}/usage";
    let reply = admin
        .admin(Method::GET, &concrete(account_usage, "acme", ""), None)
        .await;
    check(Method::GET, account_usage, reply);
    // The audit trail: its first page, then the one after an entry (refusals come below).
    let events = "/admin/accounts/{account}/events";
    let on_events = concrete(events, "acme", "");
    let reply = admin.admin(Method::GET, &on_events, None).await;
    let page = check(Method::GET, events, reply).json();
    let newest = page["events"][0]["id"].as_u64().expect("an entry");
    let reply = admin
        .admin(
            Method::GET,
            &format!("{on_events}?limit=2&before={newest}"),
            None,
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    check(Method::GET, events, reply);
    let deleted = admin.admin(Method::DELETE, &plain_key, None).await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT, "{}", deleted.text());
    check(Method::DELETE, key, deleted);

    // The errors.
    let expect = |reply: Reply, status: StatusCode, method: Method, template: &str| {
        assert_eq!(
            reply.status,
            status,
            "{method} {template}: {}",
            reply.text()
        );
        check(method, template, reply);
    };
    let bad_account = concrete(keys, "not!valid", "");
    let reply = admin.admin(Method::GET, &bad_account, None).await;
    expect(reply, StatusCode::BAD_REQUEST, Method::GET, keys);
    let reply = admin
        .admin(Method::POST, &path, Some(r#"{"nme":"x"}"#))
        .await;
    expect(reply, StatusCode::BAD_REQUEST, Method::POST, keys);
    let reply = admin
        .admin(
            Method::GET,
            &format!("{on_key}/usage?granularity=week"),
            None,
        )
        .await;
    expect(reply, StatusCode::BAD_REQUEST, Method::GET, &usage);
    let reply = admin
        .admin(Method::GET, &format!("{on_events}?limit=0"), None)
        .await;
    expect(reply, StatusCode::BAD_REQUEST, Method::GET, events);
    let reply = admin.send(Method::GET, &on_key, &[], None).await;
    expect(reply, StatusCode::UNAUTHORIZED, Method::GET, key);
    let bearer = format!("Bearer {TOKEN}");
    let foreign = [
        ("authorization", bearer.as_str()),
        ("origin", "https://elsewhere.example"),
    ];
    let reply = admin
        .send(Method::POST, &format!("{on_key}/revoke"), &foreign, None)
        .await;
    expect(
        reply,
        StatusCode::FORBIDDEN,
        Method::POST,
        &format!("{key}/revoke"),
    );
    let unknown = concrete(key, "acme", UUID);
    let reply = admin.admin(Method::GET, &unknown, None).await;
    expect(reply, StatusCode::NOT_FOUND, Method::GET, key);
    let reply = admin.admin(Method::DELETE, &unknown, None).await;
    expect(reply, StatusCode::NOT_FOUND, Method::DELETE, key);
    for _ in 0..2 {
        admin.create("acme", None).await;
    }
    let reply = admin.admin(Method::POST, &path, None).await;
    expect(reply, StatusCode::CONFLICT, Method::POST, keys);
    let large = format!(r#"{{"name":"{}"}}"#, "x".repeat(20_000));
    let reply = admin.admin(Method::PATCH, &on_key, Some(&large)).await;
    expect(reply, StatusCode::PAYLOAD_TOO_LARGE, Method::PATCH, key);
    let form = [
        ("authorization", bearer.as_str()),
        ("content-type", "application/x-www-form-urlencoded"),
    ];
    let reply = admin
        .send(
            Method::POST,
            &format!("{on_key}/revoke"),
            &form,
            Some(b"a=b"),
        )
        .await;
    expect(
        reply,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        Method::POST,
        &format!("{key}/revoke"),
    );

    // A tenant widening its key: 403 from the authorizer.
    let tenant = "tenant-token-of-acme-0123456789";
    let tenants = Harness::with_authorizer(
        AdminTokens::new().tenant(account("acme"), AdminToken::new(tenant).expect("token")),
    )
    .await;
    let as_tenant = format!("Bearer {tenant}");
    let headers = [
        ("authorization", as_tenant.as_str()),
        ("content-type", "application/json"),
    ];
    let reply = tenants
        .send(
            Method::POST,
            &path,
            &headers,
            Some(br#"{"metadata":{"plan":"pro"}}"#),
        )
        .await;
    expect(reply, StatusCode::FORBIDDEN, Method::POST, keys);
    // The refusal is on the trail: an entry without a key (`null`s) matches its schema too.
    let reply = tenants
        .send(
            Method::GET,
            &on_events,
            &[("authorization", as_tenant.as_str())],
            None,
        )
        .await;
    let page = check(Method::GET, events, reply).json();
    assert_eq!(page["events"][0]["outcome"], "refused", "{page}");
    assert!(page["events"][0]["key_id"].is_null(), "{page}");

    // A panic: 500.
    let panicking = Harness::with_authorizer(PanicsOnBoom).await;
    let reply = panicking
        .send(Method::GET, &concrete(keys, "boom", ""), &[], None)
        .await;
    expect(reply, StatusCode::INTERNAL_SERVER_ERROR, Method::GET, keys);

    // A store that is down: 503.
    let store = TestStore::new();
    let down = Harness::on_store(store.clone(), |manager| {
        AdminRouter::new(manager, AdminToken::new(TOKEN).expect("token"))
    })
    .await;
    store.set_down(true);
    let reply = down.admin(Method::GET, &path, None).await;
    expect(reply, StatusCode::SERVICE_UNAVAILABLE, Method::GET, keys);
    let reply = down.admin(Method::POST, &path, Some(full)).await;
    expect(reply, StatusCode::SERVICE_UNAVAILABLE, Method::POST, keys);

    // Every operation's success was seen, and every error status the document declares.
    let checked = document.checked.lock().expect("lock").clone();
    for (template, method) in document.operations() {
        assert!(
            checked.iter().any(|(path, verb, status)| *path == template
                && *verb == method
                && (200..300).contains(status)),
            "{method} {template}: no success answer checked"
        );
    }
    let declared: BTreeSet<u16> = document
        .operations()
        .iter()
        .flat_map(|(path, method)| {
            let responses = document.json["paths"][path][method]["responses"]
                .as_object()
                .expect("responses");
            responses
                .keys()
                .map(|status| status.parse().expect("a status"))
                .collect::<Vec<u16>>()
        })
        .collect();
    let seen: BTreeSet<u16> = checked.iter().map(|(_, _, status)| *status).collect();
    assert_eq!(seen, declared, "statuses seen vs declared");
}

#[tokio::test]
async fn the_served_document_is_the_routers_and_names_its_prefix_when_nested() {
    let manager = KeyManager::new(Arc::new(MemoryStore::new()), pepper());
    let admin = AdminRouter::new(manager.clone(), AdminToken::new(TOKEN).expect("token"));
    let expected = serde_json::to_value(admin.openapi()).expect("json");
    assert!(expected.get("servers").is_none(), "{expected}");
    let nested = Router::new().nest("/api", admin.into_router());
    let addr = serve(nested).await;
    let answer = get_with(&client(), addr, &format!("/api{OPENAPI_PATH}"), &[]).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.headers["cache-control"], "no-store");
    let mut served: Value = serde_json::from_str(&answer.body).expect("json");
    assert_eq!(served["servers"], json!([{"url": "/api"}]));
    served.as_object_mut().expect("object").remove("servers");
    assert_eq!(served, expected);

    // Left out: not served, nor in the document.
    let without =
        AdminRouter::new(manager, AdminToken::new(TOKEN).expect("token")).without_openapi();
    assert!(!without.openapi().paths.paths.contains_key(OPENAPI_PATH));
    let addr = serve(without.into_router()).await;
    let answer = get_with(&client(), addr, OPENAPI_PATH, &[]).await;
    assert_eq!(answer.status, StatusCode::NOT_FOUND);
}
