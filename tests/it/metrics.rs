//! With the `metrics` feature, the layer's counters also reach the `metrics` facade.

use std::convert::Infallible;

use crate::support::stores::TestStore;
use crate::support::{account, pepper};
use http::{Request, Response};
use http_body_util::Empty;
use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use tower::{Layer, ServiceExt, service_fn};
use tower_api_key::{ApiKeyLayer, KeyManager};

#[tokio::test]
async fn outcomes_and_cache_use_reach_the_metrics_facade() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let manager = KeyManager::new(TestStore::new(), pepper());
    let created = manager.create(&account("acme")).await.expect("create");
    // Handles are registered when the layer is built: build it under the recorder.
    let layer =
        metrics::with_local_recorder(&recorder, || ApiKeyLayer::for_manager(&manager).build());
    let service = layer.layer(service_fn(|_: Request<()>| async {
        Ok::<_, Infallible>(Response::new(Empty::<bytes::Bytes>::new()))
    }));
    for key in [
        created.key.expose_secret(),
        created.key.expose_secret(),
        "bad",
    ] {
        let request = Request::get("/")
            .header("x-api-key", key)
            .body(())
            .expect("request");
        service.clone().oneshot(request).await.expect("infallible");
    }

    let counters: Vec<(String, Vec<String>, u64)> = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .filter_map(|(key, _, _, value)| match value {
            DebugValue::Counter(n) => Some((
                key.key().name().to_owned(),
                key.key()
                    .labels()
                    .map(|l| format!("{}={}", l.key(), l.value()))
                    .collect(),
                n,
            )),
            _ => None,
        })
        .collect();
    let value = |name: &str, label: &str| {
        counters
            .iter()
            .find(|(n, labels, _)| n == name && labels.iter().any(|l| l == label))
            .map_or(0, |(_, _, v)| *v)
    };
    assert_eq!(value("api_key_requests_total", "outcome=accepted"), 2);
    assert_eq!(value("api_key_requests_total", "outcome=invalid"), 1);
    assert_eq!(value("api_key_cache_lookups_total", "result=miss"), 1);
    assert_eq!(value("api_key_cache_lookups_total", "result=hit"), 1);
    // The facade sees exactly what the built-in snapshot sees.
    let snapshot = layer.metrics();
    assert_eq!((snapshot.accepted, snapshot.invalid), (2, 1));
}
