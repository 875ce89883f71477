//! Fuzzes the whole layer in process: arbitrary methods, paths and header lists (any bytes
//! that `http` accepts as a header value, names repeated at will), over a store holding one
//! valid key.
//!
//! The oracle is the layer's contract: the inner service is reached exactly when the request
//! carries one `x-api-key` header whose value is the valid key, give or take spaces and tabs
//! around it; every other request is answered by the layer with 401 (or, for a gRPC request,
//! HTTP 200 with `grpc-status: 16`). Nothing panics and nothing is a 5xx: the store is healthy.
#![no_main]

use std::convert::Infallible;
use std::sync::{Arc, LazyLock};

use arbitrary::Arbitrary;
use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Empty;
use libfuzzer_sys::fuzz_target;
use tower::{Layer, ServiceExt, service_fn};
use tower_api_key::{ApiKeyLayer, KeyManager, MemoryStore, Pepper};

/// The header names a request may carry; the fuzzer picks among them or spells its own.
#[derive(Arbitrary, Debug)]
enum Name {
    ApiKey,
    ApiKeyUpper,
    ContentType,
    Authorization,
    Other(Vec<u8>),
}

/// A header value: the valid key (possibly with junk around it) or arbitrary bytes.
#[derive(Arbitrary, Debug)]
enum Value {
    ValidKey,
    ValidKeyWith { before: Vec<u8>, after: Vec<u8> },
    Grpc(Vec<u8>),
    Bytes(Vec<u8>),
}

#[derive(Arbitrary, Debug)]
struct Input {
    method: Vec<u8>,
    path: Vec<u8>,
    headers: Vec<(Name, Value)>,
}

struct Fixture {
    runtime: tokio::runtime::Runtime,
    key: String,
    service: tower::util::BoxCloneSyncService<
        Request<()>,
        Response<tower_api_key::body::ResponseBody<Empty<Bytes>>>,
        Infallible,
    >,
}

static FIXTURE: LazyLock<Fixture> = LazyLock::new(|| {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    let (key, service) = runtime.block_on(async {
        let manager = KeyManager::new(Arc::new(MemoryStore::new()), Pepper::from_bytes([5; 32]));
        let created = manager
            .create(&"fuzz".parse().expect("account"))
            .await
            .expect("create");
        let inner = service_fn(|_: Request<()>| async {
            let mut response = Response::new(Empty::new());
            response
                .headers_mut()
                .insert("x-inner", HeaderValue::from_static("1"));
            Ok::<_, Infallible>(response)
        });
        let service = ApiKeyLayer::for_manager(&manager).build().layer(inner);
        // The manager's store lives on in the layer's resolver.
        (
            created.key.expose_secret().to_owned(),
            tower::util::BoxCloneSyncService::new(service),
        )
    });
    Fixture {
        runtime,
        key,
        service,
    }
});

fuzz_target!(|input: Input| {
    let fixture = &*FIXTURE;
    let method = Method::from_bytes(&input.method).unwrap_or(Method::GET);
    let mut builder = Request::builder().method(method);
    if let Ok(uri) = http::Uri::try_from(input.path.as_slice()) {
        builder = builder.uri(uri);
    }
    let Ok(mut request) = builder.body(()) else {
        return;
    };

    for (name, value) in input.headers {
        let name = match name {
            Name::ApiKey => HeaderName::from_static("x-api-key"),
            Name::ApiKeyUpper => match HeaderName::from_bytes(b"X-API-KEY") {
                Ok(name) => name,
                Err(_) => continue,
            },
            Name::ContentType => http::header::CONTENT_TYPE,
            Name::Authorization => http::header::AUTHORIZATION,
            Name::Other(bytes) => match HeaderName::from_bytes(&bytes) {
                Ok(name) => name,
                Err(_) => continue,
            },
        };
        let bytes = match value {
            Value::ValidKey => fixture.key.as_bytes().to_vec(),
            Value::ValidKeyWith { before, after } => {
                [&before[..], fixture.key.as_bytes(), &after[..]].concat()
            }
            Value::Grpc(suffix) => [&b"application/grpc"[..], &suffix[..]].concat(),
            Value::Bytes(bytes) => bytes,
        };
        // A value `http` refuses is one hyper's server refuses with 400 before any layer.
        if let Ok(value) = HeaderValue::from_bytes(&bytes) {
            request.headers_mut().append(name, value);
        }
    }

    let keys: Vec<Vec<u8>> = request
        .headers()
        .get_all("x-api-key")
        .iter()
        .map(|value| value.as_bytes().to_vec())
        .collect();
    // Spaces and tabs around the value are trimmed; a `HeaderValue` holds no other ASCII
    // whitespace, so `trim_ascii` trims exactly those.
    let let_in = matches!(&keys[..], [one] if one.trim_ascii() == fixture.key.as_bytes());
    let grpc = request
        .headers()
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|value| value.as_bytes().starts_with(b"application/grpc"));

    let response = fixture
        .runtime
        .block_on(fixture.service.clone().oneshot(request))
        .expect("infallible");

    let reached_inner = response.headers().contains_key("x-inner");
    assert_eq!(reached_inner, let_in, "keys: {keys:?}");
    if let_in {
        assert_eq!(response.status(), StatusCode::OK);
    } else if grpc {
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()["grpc-status"], "16");
    } else {
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    }
});
