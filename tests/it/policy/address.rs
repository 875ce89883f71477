//! Address allowlists at the layer (mirrors `src/client_addr.rs` and the address check of
//! `src/gatekeeper.rs`): a key used from outside its allowlist is 403 `address not allowed`,
//! changes take effect at once, `X-Forwarded-For` counts only through trusted proxies, a
//! stack that provides no address fails closed, and refusals count as refused in usage.
//! HTTP over a loopback axum server that provides `ConnectInfo`.

use std::convert::Infallible;
use std::time::SystemTime;

use http::{Request, Response, StatusCode};
use tower::{Layer as _, ServiceExt as _};
use tower_api_key::policy::{AllowedIps, Cidr};
use tower_api_key::usage::{Granularity, UsageRange, UsageRecorder};
use tower_api_key::{ApiKeyLayer, ClientAddr, CreatedKey, KeyManager, KeyOptions, PolicyUpdate};

use crate::policy::app::App;
use crate::support::stores::TestStore;
use crate::support::{account, pepper};

fn allowed(blocks: &[&str]) -> AllowedIps {
    AllowedIps::new(blocks).expect("valid blocks")
}

/// A key of the app's account usable from `blocks` only.
async fn key_allowed(app: &App, blocks: &[&str]) -> CreatedKey {
    app.manager
        .create_with(&app.account, KeyOptions::new().allowed_ips(allowed(blocks)))
        .await
        .expect("create")
}

/// Sets (`Some`) or clears (`None`) `key`'s allowlist.
async fn set_allowed(app: &App, key: &CreatedKey, blocks: Option<&[&str]>) {
    app.manager
        .update(
            &app.account,
            key.info.id,
            PolicyUpdate::new().allowed_ips(blocks.map(allowed)),
        )
        .await
        .expect("update");
}

fn assert_address_refused(answer: &crate::support::http::Answer) {
    assert_eq!(answer.status, StatusCode::FORBIDDEN, "{}", answer.body);
    assert_eq!(answer.body, r#"{"error":"address not allowed"}"#);
    assert_eq!(answer.content_type(), Some("application/json"));
    assert!(!answer.headers.contains_key("www-authenticate"));
}

#[tokio::test]
async fn a_key_is_served_only_from_its_allowed_addresses() {
    let app = App::start().await;
    let loopback = key_allowed(&app, &["127.0.0.0/8", "2001:db8::/32"]).await;
    let one = key_allowed(&app, &["127.0.0.1"]).await;
    let elsewhere = key_allowed(&app, &["203.0.113.0/24"]).await;

    for key in [&loopback, &one] {
        let answer = app.get("/v1/ping", key.key.expose_secret()).await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
        assert_eq!(answer.body, "pong");
    }
    // From the store (a miss), then from the cache (a hit): the same answer.
    for _ in 0..2 {
        assert_address_refused(&app.get("/v1/ping", elsewhere.key.expose_secret()).await);
    }
    let snapshot = app.layer.metrics();
    assert_eq!(snapshot.address_not_allowed, 2);
    assert_eq!(snapshot.accepted, 2);
}

#[tokio::test]
async fn changing_or_clearing_the_allowlist_takes_effect_at_once() {
    let app = App::start().await;
    let created = key_allowed(&app, &["203.0.113.0/24"]).await;
    let key = created.key.expose_secret();
    assert_address_refused(&app.get("/v1/ping", key).await);

    // Adding loopback lets the cached key through at once.
    set_allowed(&app, &created, Some(&["203.0.113.0/24", "127.0.0.1"])).await;
    assert_eq!(app.get("/v1/ping", key).await.status, StatusCode::OK);

    // Narrowing it again refuses at once.
    set_allowed(&app, &created, Some(&["203.0.113.7"])).await;
    assert_address_refused(&app.get("/v1/ping", key).await);

    // Clearing it allows every address.
    set_allowed(&app, &created, None).await;
    assert_eq!(app.get("/v1/ping", key).await.status, StatusCode::OK);
}

#[tokio::test]
async fn forwarded_for_is_ignored_without_trusted_proxies() {
    let app = App::start().await;
    let created = key_allowed(&app, &["203.0.113.0/24"]).await;
    let key = created.key.expose_secret();
    // A client claiming an allowed address is still the loopback connection it is.
    let answer = app
        .get_with(
            "/v1/ping",
            &[("x-api-key", key), ("x-forwarded-for", "203.0.113.9")],
        )
        .await;
    assert_address_refused(&answer);
}

#[tokio::test]
async fn through_a_trusted_proxy_the_rightmost_untrusted_entry_is_the_client() {
    // The loopback connection is the proxy.
    let proxies: Vec<Cidr> = vec!["127.0.0.0/8".parse().expect("block")];
    let app = App::start_with(move |builder| builder.trusted_proxies(proxies)).await;
    let created = key_allowed(&app, &["203.0.113.0/24"]).await;
    let key = created.key.expose_secret();
    let app = &app;
    let from = |forwarded: &'static str| async move {
        app.get_with(
            "/v1/ping",
            &[("x-api-key", key), ("x-forwarded-for", forwarded)],
        )
        .await
    };

    assert_eq!(from("203.0.113.9").await.status, StatusCode::OK);
    // Another trusted hop on the right is passed over.
    assert_eq!(from("203.0.113.9, 127.0.0.2").await.status, StatusCode::OK);
    // A forged entry on the left can't help a client outside the allowlist...
    assert_address_refused(&from("203.0.113.9, 198.51.100.1").await);
    // ...nor hurt one inside it.
    assert_eq!(
        from("198.51.100.1, 203.0.113.9").await.status,
        StatusCode::OK
    );
    // Through the proxy without a header: the proxy's own address, not allowed here.
    assert_address_refused(&app.get("/v1/ping", key).await);
    // An entry that is not an address: no address, refused.
    assert_address_refused(&from("unknown").await);

    // A key without an allowlist doesn't read the header at all.
    let open = app.manager.create(&app.account).await.expect("create");
    let answer = app
        .get_with(
            "/v1/ping",
            &[
                ("x-api-key", open.key.expose_secret()),
                ("x-forwarded-for", "garbage"),
            ],
        )
        .await;
    assert_eq!(answer.status, StatusCode::OK);
}

/// A hand-built tower stack: the test decides whether the request carries a `ClientAddr`.
#[tokio::test]
async fn a_stack_without_an_address_fails_closed_and_client_addr_provides_one() {
    let manager = KeyManager::new(TestStore::new(), pepper());
    let acme = account("acme");
    let restricted = manager
        .create_with(
            &acme,
            KeyOptions::new().allowed_ips(allowed(&["192.0.2.0/24"])),
        )
        .await
        .expect("create");
    let open = manager.create(&acme).await.expect("create");
    let layer = ApiKeyLayer::for_manager(&manager).build();
    let service = layer.layer(tower::service_fn(|_: Request<String>| async {
        Ok::<_, Infallible>(Response::new(String::from("served")))
    }));
    let call = |key: &str, address: Option<&str>| {
        let mut request = Request::builder()
            .uri("/v1/ping")
            .header("x-api-key", key)
            .body(String::new())
            .expect("request");
        if let Some(address) = address {
            let address = address.parse().expect("address");
            request.extensions_mut().insert(ClientAddr(address));
        }
        service.clone().oneshot(request)
    };

    let status = |response: Response<_>| response.status();
    let restricted = restricted.key.expose_secret();
    assert_eq!(
        status(call(restricted, None).await.expect("answer")),
        StatusCode::FORBIDDEN,
        "no address: fail closed"
    );
    assert_eq!(
        status(call(restricted, Some("192.0.2.10")).await.expect("answer")),
        StatusCode::OK
    );
    // An IPv4 client on a dual-stack socket.
    assert_eq!(
        status(
            call(restricted, Some("::ffff:192.0.2.10"))
                .await
                .expect("answer")
        ),
        StatusCode::OK
    );
    assert_eq!(
        status(call(restricted, Some("192.0.3.10")).await.expect("answer")),
        StatusCode::FORBIDDEN
    );
    // Keys without an allowlist don't need an address.
    assert_eq!(
        status(call(open.key.expose_secret(), None).await.expect("answer")),
        StatusCode::OK
    );
}

#[tokio::test]
async fn a_refusal_for_the_address_counts_as_refused_and_is_not_a_use() {
    let store = TestStore::new();
    let recorder = UsageRecorder::new(store.clone());
    let app = App::start_on(store, |builder| builder.record_usage(recorder.clone())).await;
    let created = key_allowed(&app, &["203.0.113.0/24"]).await;
    for _ in 0..3 {
        assert_address_refused(&app.get("/v1/ping", created.key.expose_secret()).await);
    }
    recorder.flush().await.expect("flush");
    let range = UsageRange::last(Granularity::Hour, SystemTime::now());
    let total = app
        .manager
        .usage(&app.account, Some(created.info.id), &range)
        .await
        .expect("usage")
        .total();
    assert_eq!(
        (total.accepted, total.rate_limited, total.refused),
        (0, 0, 3)
    );
    let info = app
        .manager
        .get(&app.account, created.info.id)
        .await
        .expect("get");
    assert_eq!(info.last_used_at, None, "a refused request is not a use");
}
