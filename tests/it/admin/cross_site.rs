//! A browser can't be made to change keys from another site: state-changing routes refuse a
//! foreign `Origin`, a cross-site `Sec-Fetch-Site`, and a body that isn't JSON (which a page
//! could send without a CORS preflight). Clients that send none of those headers (curl, SDKs,
//! other servers) are unaffected.

use http::{Method, StatusCode};
use tower_api_key::admin::{AdminRouter, AdminToken};

use super::{Harness, TOKEN, text};

const CROSS_SITE: &str = "cross-site request refused";
const NOT_JSON: &str = "content-type must be application/json";

/// Every state-changing route of key `id` of acme, each with a body it accepts.
fn changes(id: &str) -> Vec<(Method, String, Option<&'static str>)> {
    let key = format!("/admin/accounts/acme/keys/{id}");
    vec![
        (
            Method::POST,
            "/admin/accounts/acme/keys".to_owned(),
            Some(r#"{"name":"from elsewhere"}"#),
        ),
        (Method::PATCH, key.clone(), Some(r#"{"scopes":null}"#)),
        (Method::POST, format!("{key}/rotate"), None),
        (Method::POST, format!("{key}/revoke"), None),
        (Method::POST, format!("{key}/reactivate"), None),
        (Method::DELETE, key, None),
    ]
}

/// Acme's one key, restricted to `read`, and the record as the operator sees it.
async fn one_key(admin: &Harness) -> (String, serde_json::Value) {
    let created = admin.create("acme", Some(r#"{"scopes":["read"]}"#)).await;
    let id = text(&created, "id").to_owned();
    let record = admin.list("acme").await.remove(0);
    (id, record)
}

async fn send_as_browser(
    admin: &Harness,
    method: &Method,
    path: &str,
    body: Option<&str>,
    browser: &[(&str, &str)],
) -> super::Reply {
    let bearer = format!("Bearer {TOKEN}");
    let mut headers = vec![("authorization", bearer.as_str())];
    if body.is_some() {
        headers.push(("content-type", "application/json"));
    }
    headers.extend_from_slice(browser);
    admin
        .send(method.clone(), path, &headers, body.map(str::as_bytes))
        .await
}

#[tokio::test]
async fn a_foreign_origin_is_403_on_every_change_and_nothing_changes() {
    let admin = Harness::start().await;
    let (id, before) = one_key(&admin).await;
    let foreign: [&[(&str, &str)]; 4] = [
        &[("origin", "https://evil.example")],
        &[("origin", "null")],
        &[
            ("origin", "https://evil.example"),
            ("sec-fetch-site", "same-origin"),
        ],
        // The right host on another port is another origin.
        &[("origin", "http://127.0.0.1:1")],
    ];
    for browser in foreign {
        for (method, path, body) in changes(&id) {
            let reply = send_as_browser(&admin, &method, &path, body, browser).await;
            reply.assert_error(
                StatusCode::FORBIDDEN,
                &format!("{method} {path} {browser:?}"),
            );
            assert_eq!(reply.json()["error"], CROSS_SITE);
        }
    }
    assert_eq!(admin.list("acme").await, vec![before]);
    assert!(
        admin
            .events()
            .iter()
            .all(|event| event.action.as_str() == "created")
    );
}

#[tokio::test]
async fn without_an_origin_a_cross_site_or_same_site_fetch_is_403() {
    let admin = Harness::start().await;
    let (id, before) = one_key(&admin).await;
    for site in ["cross-site", "same-site"] {
        for (method, path, body) in changes(&id) {
            let reply =
                send_as_browser(&admin, &method, &path, body, &[("sec-fetch-site", site)]).await;
            reply.assert_error(StatusCode::FORBIDDEN, &format!("{method} {path} {site}"));
            assert_eq!(reply.json()["error"], CROSS_SITE);
        }
    }
    assert_eq!(admin.list("acme").await, vec![before]);
}

#[tokio::test]
async fn the_requests_own_origin_and_same_origin_fetches_are_let_through() {
    let admin = Harness::start().await;
    let own = format!("http://{}", admin.addr());
    let (id, _) = one_key(&admin).await;
    let browsers: [Vec<(&str, &str)>; 3] = [
        vec![("origin", own.as_str()), ("sec-fetch-site", "same-origin")],
        vec![("sec-fetch-site", "same-origin")],
        vec![("sec-fetch-site", "none")],
    ];
    for browser in &browsers {
        let path = format!("/admin/accounts/acme/keys/{id}/revoke");
        let reply = send_as_browser(&admin, &Method::POST, &path, None, browser).await;
        assert_eq!(
            reply.status,
            StatusCode::OK,
            "{browser:?}: {}",
            reply.text()
        );
        let path = format!("/admin/accounts/acme/keys/{id}");
        let body = Some(r#"{"name":"renamed"}"#);
        let reply = send_as_browser(&admin, &Method::PATCH, &path, body, browser).await;
        assert_eq!(
            reply.status,
            StatusCode::OK,
            "{browser:?}: {}",
            reply.text()
        );
    }
    // Reads are not changes: a cross-site GET is answered (its body is unreadable to the
    // other site without CORS, which the router never grants).
    let reply = admin
        .send(
            Method::GET,
            "/admin/accounts/acme/keys",
            &[
                ("authorization", &format!("Bearer {TOKEN}")),
                ("origin", "https://evil.example"),
            ],
            None,
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert!(reply.header("access-control-allow-origin").is_none());
}

#[tokio::test]
async fn an_allowed_origin_on_a_sibling_subdomain_works() {
    let admin = Harness::with(|manager| {
        AdminRouter::new(manager, AdminToken::new(TOKEN).expect("token"))
            .allowed_origins(["https://console.example.com"])
    })
    .await;
    let allowed = [
        ("origin", "https://console.example.com"),
        ("sec-fetch-site", "same-site"),
    ];
    let reply = send_as_browser(
        &admin,
        &Method::POST,
        "/admin/accounts/acme/keys",
        Some("{}"),
        &allowed,
    )
    .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text());
    // Its scheme is part of the origin, and another subdomain is still another site.
    for origin in ["http://console.example.com", "https://www.example.com"] {
        let reply = send_as_browser(
            &admin,
            &Method::POST,
            "/admin/accounts/acme/keys",
            Some("{}"),
            &[("origin", origin), ("sec-fetch-site", "same-site")],
        )
        .await;
        reply.assert_error(StatusCode::FORBIDDEN, origin);
    }
    assert_eq!(admin.list("acme").await.len(), 1);
}

#[tokio::test]
async fn a_body_that_is_not_json_is_415_on_every_change_and_nothing_changes() {
    let admin = Harness::start().await;
    let (id, before) = one_key(&admin).await;
    let bearer = format!("Bearer {TOKEN}");
    let types: [Option<&str>; 5] = [
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
        Some("multipart/form-data; boundary=x"),
        Some("application/jsonp"),
        None,
    ];
    for content_type in types {
        for (method, path, body) in changes(&id) {
            let mut headers = vec![("authorization", bearer.as_str())];
            if let Some(content_type) = content_type {
                headers.push(("content-type", content_type));
            }
            let body = body.unwrap_or("{}");
            let reply = admin
                .send(method.clone(), &path, &headers, Some(body.as_bytes()))
                .await;
            let what = format!("{method} {path} {content_type:?}");
            reply.assert_error(StatusCode::UNSUPPORTED_MEDIA_TYPE, &what);
            assert_eq!(reply.json()["error"], NOT_JSON, "{what}");
        }
    }
    assert_eq!(admin.list("acme").await, vec![before]);
}

#[tokio::test]
async fn a_form_or_text_content_type_is_415_even_without_a_body() {
    let admin = Harness::start().await;
    let (id, before) = one_key(&admin).await;
    let bearer = format!("Bearer {TOKEN}");
    // What an HTML form on another site posts, from a browser too old to send `Origin`.
    for content_type in ["application/x-www-form-urlencoded", "text/plain"] {
        for (method, path, _) in changes(&id) {
            let headers = [
                ("authorization", bearer.as_str()),
                ("content-type", content_type),
            ];
            let reply = admin.send(method.clone(), &path, &headers, None).await;
            let what = format!("{method} {path} {content_type}");
            reply.assert_error(StatusCode::UNSUPPORTED_MEDIA_TYPE, &what);
        }
    }
    assert_eq!(admin.list("acme").await, vec![before]);
}

#[tokio::test]
async fn json_with_parameters_and_body_less_changes_are_accepted() {
    let admin = Harness::start().await;
    let bearer = format!("Bearer {TOKEN}");
    let reply = admin
        .send(
            Method::POST,
            "/admin/accounts/acme/keys",
            &[
                ("authorization", &bearer),
                ("content-type", "Application/JSON; charset=utf-8"),
            ],
            Some(br#"{"name":"sdk"}"#),
        )
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text());
    // No body, no content type: curl -X POST, as the README shows.
    let reply = admin
        .send(
            Method::POST,
            "/admin/accounts/acme/keys",
            &[("authorization", &bearer)],
            None,
        )
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text());
    let id = text(&reply.json(), "id").to_owned();
    let reply = admin
        .send(
            Method::POST,
            &format!("/admin/accounts/acme/keys/{id}/revoke"),
            &[("authorization", &bearer)],
            None,
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
}
