//! Where the key may come from and what the inner service sees: the challenge of every 401,
//! the opt-in `Authorization: Bearer` source, the opt-in stripping of the key's headers, and
//! the request span's fields.

use http::HeaderName;

use super::app::{App, assert_401};

#[tokio::test]
async fn every_401_names_the_scheme_and_the_configured_header() {
    let app =
        App::start_with(|builder| builder.header_name(HeaderName::from_static("x-custom-key")))
            .await;
    let unknown = crate::support::keys::unknown();
    for headers in [
        &[][..],
        &[("x-custom-key", "nonsense")][..],
        &[("x-custom-key", unknown.as_str())][..],
    ] {
        let answer = app.get_with("/v1/ping", headers).await;
        assert_eq!(answer.status, 401);
        assert_eq!(
            answer.headers["www-authenticate"],
            r#"ApiKey header="x-custom-key""#
        );
    }
}

#[tokio::test]
async fn bearer_is_read_only_when_turned_on_and_only_without_a_conflicting_header() {
    let off = App::start().await;
    let key = off.manager.create(&off.account).await.expect("create");
    let bearer = format!("Bearer {}", key.key.expose_secret());
    assert_401(
        &off.get_with("/v1/ping", &[("authorization", &bearer)])
            .await,
        "missing API key",
    );

    let app = App::start_with(|builder| builder.accept_bearer()).await;
    let created = app.manager.create(&app.account).await.expect("create");
    let other = app.manager.create(&app.account).await.expect("create");
    let key = created.key.expose_secret();
    let bearer = format!("Bearer {key}");
    assert_eq!(
        app.get_with("/v1/ping", &[("authorization", &bearer)])
            .await
            .status,
        200
    );
    let lower = format!("bearer {key}");
    assert_eq!(
        app.get_with("/v1/ping", &[("authorization", &lower)])
            .await
            .status,
        200
    );
    // Both sources with the same key: fine. With different keys: refused.
    let same = [("x-api-key", key), ("authorization", &bearer)];
    assert_eq!(app.get_with("/v1/ping", &same).await.status, 200);
    let different = [
        ("x-api-key", other.key.expose_secret()),
        ("authorization", &bearer),
    ];
    assert_401(
        &app.get_with("/v1/ping", &different).await,
        "invalid API key",
    );
    // Another scheme is no key at all.
    assert_401(
        &app.get_with("/v1/ping", &[("authorization", "Basic YWxhZGRpbjpvcGVu")])
            .await,
        "missing API key",
    );
    assert_401(
        &app.get_with("/v1/ping", &[("authorization", "Bearer nonsense")])
            .await,
        "invalid API key",
    );
}

#[tokio::test]
async fn the_key_headers_reach_the_inner_service_unless_stripped() {
    let kept = App::start_with(|builder| builder.accept_bearer()).await;
    let key = kept.manager.create(&kept.account).await.expect("create");
    let answer = kept.get("/v1/headers", key.key.expose_secret()).await;
    assert_eq!(answer.body, "x-api-key");

    let app = App::start_with(|builder| builder.accept_bearer().strip_key_header()).await;
    let created = app.manager.create(&app.account).await.expect("create");
    let key = created.key.expose_secret();
    assert_eq!(app.get("/v1/headers", key).await.body, "");
    let bearer = format!("Bearer {key}");
    let answer = app
        .get_with("/v1/headers", &[("authorization", &bearer)])
        .await;
    assert_eq!((answer.status.as_u16(), answer.body.as_str()), (200, ""));
    // An Authorization header that is not the key's stays.
    let basic = [
        ("x-api-key", key),
        ("authorization", "Basic YWxhZGRpbjpvcGVu"),
    ];
    assert_eq!(
        app.get_with("/v1/headers", &basic).await.body,
        "authorization"
    );
}

mod span {
    //! The request's span gets the key's prefix and the account, never the secret.

    use std::sync::{Arc, Mutex};

    use tower::{Layer as _, ServiceExt as _};
    use tracing::Instrument as _;
    use tracing::field::{Field, Visit};
    use tracing::span::{Attributes, Id, Record};
    use tracing_subscriber::layer::{Context, SubscriberExt as _};

    use crate::support::service::ok;
    use crate::support::stores::TestStore;
    use crate::support::{account, pepper};
    use tower_api_key::{ApiKeyLayer, KeyManager};

    /// Every `(field, value)` recorded on any span.
    #[derive(Clone, Default)]
    struct Recorded(Arc<Mutex<Vec<(String, String)>>>);

    impl Visit for Recorded {
        fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
            let mut fields = self.0.lock().expect("lock");
            fields.push((field.name().to_owned(), format!("{value:?}")));
        }
        fn record_str(&mut self, field: &Field, value: &str) {
            let mut fields = self.0.lock().expect("lock");
            fields.push((field.name().to_owned(), value.to_owned()));
        }
    }

    impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Recorded {
        fn on_new_span(&self, _: &Attributes<'_>, _: &Id, _: Context<'_, S>) {}
        fn on_record(&self, _: &Id, values: &Record<'_>, _: Context<'_, S>) {
            values.record(&mut self.clone());
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn the_request_span_records_prefix_and_account_only() {
        let recorded = Recorded::default();
        let subscriber = tracing_subscriber::registry().with(recorded.clone());
        let _default = tracing::subscriber::set_default(subscriber);

        let manager = KeyManager::new(TestStore::new(), pepper());
        let created = manager.create(&account("acme")).await.expect("create");
        let service = ApiKeyLayer::for_manager(&manager)
            .build()
            .layer(tower::service_fn(ok));
        let span = tracing::info_span!(
            "request",
            api_key.prefix = tracing::field::Empty,
            api_key.account = tracing::field::Empty,
        );
        let request = http::Request::get("/")
            .header("x-api-key", created.key.expose_secret())
            .body(())
            .expect("request");
        let response = service
            .oneshot(request)
            .instrument(span)
            .await
            .expect("infallible");
        assert_eq!(response.status(), 200);

        let fields = recorded.0.lock().expect("lock").clone();
        let prefix = created.info.prefix.to_string();
        assert!(
            fields.contains(&("api_key.prefix".into(), prefix)),
            "{fields:?}"
        );
        assert!(
            fields.contains(&("api_key.account".into(), "acme".into())),
            "{fields:?}"
        );
        let secret = created.key.expose_secret();
        assert!(
            fields
                .iter()
                .all(|(_, value)| !value.contains(&secret[9..]))
        );
    }
}
