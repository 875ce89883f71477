//! The fuzz targets' properties (ARCHITECTURE.md, *Hardening*) as proptests, so that every
//! `cargo test` exercises them: arbitrary header bytes, repeated headers, arbitrary methods and
//! paths, through the layer in process (see `fuzz/` for the coverage-guided versions).
//!
//! Over a healthy store, whatever the request:
//! - nothing panics and nothing is a 5xx;
//! - the inner service is reached exactly when one `x-api-key` header holds a valid key,
//!   with nothing around it but spaces and tabs (trimmed in every protocol);
//! - every other request with the header is 401 `invalid API key` (gRPC: HTTP 200 with
//!   `grpc-status: 16`), and one without it is 401 `missing API key`;
//! - a value that isn't a well-formed key never reaches the store.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use crate::support::exclusive::exclusive;
use crate::support::stores::TestStore;
use crate::support::{account, pepper};
use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use tower::{Layer, ServiceExt, service_fn};
use tower_api_key::key::KEY_LEN;
use tower_api_key::{ApiKey, ApiKeyLayer, ApiKeyService, Authenticated, KeyIdentity, KeyManager};
use tower_api_key::{StoreResolver, body::ResponseBody};

const CASES: u32 = 1024;

type Inner = tower::util::ServiceFn<
    fn(Request<()>) -> std::future::Ready<Result<Response<Empty<Bytes>>, Infallible>>,
>;
type Stack = ApiKeyService<Inner, StoreResolver>;

/// The inner service: answers 200 and says who it saw, so a test knows it was reached.
fn inner(request: Request<()>) -> std::future::Ready<Result<Response<Empty<Bytes>>, Infallible>> {
    let who = request
        .extensions()
        .get::<Authenticated<KeyIdentity>>()
        .map_or_else(
            || "anonymous".to_owned(),
            |who| who.account_id().to_string(),
        );
    let mut response = Response::new(Empty::new());
    response
        .headers_mut()
        .insert("x-reached", HeaderValue::from_str(&who).expect("ascii"));
    std::future::ready(Ok(response))
}

struct Fixture {
    runtime: tokio::runtime::Runtime,
    store: Arc<TestStore>,
    required: Stack,
    optional: Stack,
    /// Valid keys of accounts "acme" and "other".
    acme: String,
    other: String,
}

impl Fixture {
    fn new() -> Self {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("runtime");
        let store = TestStore::new();
        let manager = KeyManager::new(store.clone(), pepper());
        let (acme, other) = runtime.block_on(async {
            let acme = manager.create(&account("acme")).await.expect("create");
            let other = manager.create(&account("other")).await.expect("create");
            (
                acme.key.expose_secret().to_owned(),
                other.key.expose_secret().to_owned(),
            )
        });
        let required = ApiKeyLayer::for_manager(&manager).build();
        let optional = ApiKeyLayer::for_manager(&manager).optional().build();
        Self {
            runtime,
            store,
            required: required.layer(service_fn(inner as fn(_) -> _)),
            optional: optional.layer(service_fn(inner as fn(_) -> _)),
            acme,
            other,
        }
    }

    fn lookups(&self) -> usize {
        self.store.lookups.load(Ordering::SeqCst)
    }

    /// Which account a header value's key belongs to: spaces and tabs around it don't count.
    fn owner(&self, value: &[u8]) -> Option<&'static str> {
        let value = without_blanks(value);
        if value == self.acme.as_bytes() {
            Some("acme")
        } else if value == self.other.as_bytes() {
            Some("other")
        } else {
            None
        }
    }

    fn call(&self, service: &Stack, request: Request<()>) -> Answer {
        self.runtime.block_on(async {
            let response = service.clone().oneshot(request).await.expect("infallible");
            Answer::read(response).await
        })
    }
}

/// What came back: status, whether (and as whom) the inner service was reached, the gRPC
/// status header, and the body.
#[derive(Debug)]
struct Answer {
    status: StatusCode,
    reached: Option<String>,
    grpc_status: Option<String>,
    body: Bytes,
}

impl Answer {
    async fn read(response: Response<ResponseBody<Empty<Bytes>>>) -> Self {
        let (parts, body) = response.into_parts();
        let text = |name: &str| {
            parts
                .headers
                .get(name)
                .map(|value| value.to_str().expect("ascii").to_owned())
        };
        Self {
            status: parts.status,
            reached: text("x-reached"),
            grpc_status: text("grpc-status"),
            body: body.collect().await.expect("body").to_bytes(),
        }
    }
}

/// `value` less the spaces and tabs around it, the only padding the layer ignores.
fn without_blanks(value: &[u8]) -> &[u8] {
    let blank = |byte: &u8| *byte == b' ' || *byte == b'\t';
    let start = value.iter().position(|byte| !blank(byte));
    let end = value.iter().rposition(|byte| !blank(byte));
    match (start, end) {
        (Some(start), Some(end)) => &value[start..=end],
        _ => &[],
    }
}

const INVALID: &[u8] = br#"{"error":"invalid API key"}"#;
const MISSING: &[u8] = br#"{"error":"missing API key"}"#;

/// Bytes `HeaderValue::from_bytes` accepts: visible ASCII, space, tab and obs-text (0x80-0xFF).
fn header_byte() -> impl Strategy<Value = u8> {
    prop_oneof![
        8 => 0x20u8..0x7f,
        2 => 0x80u8..=0xff,
        1 => Just(b'\t'),
    ]
}

fn header_bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(header_byte(), 0..max)
}

/// A header value an attacker might send: arbitrary bytes, or a valid key altered.
fn hostile_value(acme: String) -> impl Strategy<Value = Vec<u8>> {
    let key = acme.into_bytes();
    let [k1, k2, k3, k4, k5, k6] = std::array::from_fn(|_| key.clone());
    prop_oneof![
        header_bytes(200),
        // Right length, arbitrary header bytes.
        proptest::collection::vec(header_byte(), KEY_LEN),
        // One byte of the key replaced.
        (0..KEY_LEN, header_byte()).prop_map(move |(at, byte)| {
            let mut value = k1.clone();
            value[at] = byte;
            value
        }),
        // Bytes added before or after the key (whitespace, `Bearer `, junk).
        (header_bytes(12), header_bytes(12)).prop_map(move |(before, after)| [
            &before[..],
            &k2[..],
            &after[..]
        ]
        .concat()),
        // Only spaces and tabs around the key: let in, in every protocol.
        ("[ \t]{0,4}", "[ \t]{0,4}").prop_map(move |(before, after)| [
            before.as_bytes(),
            &k6[..],
            after.as_bytes()
        ]
        .concat()),
        // A slice of the key: the prefix alone, the body alone, a truncation.
        (0..KEY_LEN, 0..=KEY_LEN).prop_map(move |(a, b)| k3[a.min(b)..a.max(b)].to_vec()),
        // Case changed.
        any::<bool>().prop_map(move |upper| if upper {
            k4.to_ascii_uppercase()
        } else {
            k4.to_ascii_lowercase()
        }),
        // The key repeated in one value, comma-joined as a proxy might fold duplicates.
        Just([&k5[..], b", ", &k5[..]].concat()),
    ]
}

fn keyed(values: &[Vec<u8>]) -> Request<()> {
    let mut request = Request::get("/").body(()).expect("request");
    for value in values {
        request.headers_mut().append(
            "x-api-key",
            HeaderValue::from_bytes(value).expect("header-legal bytes"),
        );
    }
    request
}

fn check_refused(answer: &Answer) -> Result<(), TestCaseError> {
    prop_assert_eq!(answer.status, StatusCode::UNAUTHORIZED, "{:?}", answer);
    prop_assert_eq!(&answer.reached, &None);
    prop_assert_eq!(&answer.body[..], INVALID);
    Ok(())
}

// ===== one header, any bytes =====

#[test]
fn any_single_value_but_a_valid_key_is_401_and_malformed_ones_never_reach_the_store() {
    let f = Fixture::new();
    let _exclusive = f.runtime.block_on(exclusive());
    let mut runner = TestRunner::new(Config::with_cases(CASES));
    runner
        .run(&hostile_value(f.acme.clone()), |value| {
            let lookups = f.lookups();
            for service in [&f.required, &f.optional] {
                let answer = f.call(service, keyed(std::slice::from_ref(&value)));
                match f.owner(&value) {
                    Some(owner) => {
                        prop_assert_eq!(answer.status, StatusCode::OK);
                        prop_assert_eq!(answer.reached.as_deref(), Some(owner));
                    }
                    None => check_refused(&answer)?,
                }
            }
            if ApiKey::parse(without_blanks(&value)).is_err() {
                prop_assert_eq!(f.lookups(), lookups, "a malformed value reached the store");
            }
            Ok(())
        })
        .unwrap();
}

// ===== blanks around the key =====

#[test]
fn spaces_and_tabs_around_a_key_are_trimmed_and_nothing_else_is() {
    let f = Fixture::new();
    let _exclusive = f.runtime.block_on(exclusive());
    let key = f.acme.as_bytes();
    let around = |before: &[u8], after: &[u8]| [before, key, after].concat();
    let grpc = |value: &[u8]| {
        let mut request = keyed(&[value.to_vec()]);
        request.headers_mut().insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
        request
    };
    for padded in [
        around(b" ", b""),
        around(b"", b" "),
        around(b"\t", b"\t"),
        around(b" \t  ", b"\t \t "),
    ] {
        for service in [&f.required, &f.optional] {
            let answer = f.call(service, keyed(std::slice::from_ref(&padded)));
            assert_eq!(answer.reached.as_deref(), Some("acme"), "{padded:?}");
        }
        let answer = f.call(&f.required, grpc(&padded));
        assert_eq!(answer.reached.as_deref(), Some("acme"), "gRPC {padded:?}");
    }
    // NBSP is not a blank of HTTP; a blank inside the key is part of it. (Control characters
    // such as 0x0B can't be in a `HeaderValue`: hyper refuses them with 400.)
    let lookups = f.lookups();
    for refused in [
        around("\u{a0}".as_bytes(), b""),
        around(b"", "\u{a0}".as_bytes()),
        [&key[..20], b" ", &key[20..]].concat(),
        [&key[..20], b"\t", &key[21..]].concat(),
        around(b" ", b" x"),
    ] {
        for service in [&f.required, &f.optional] {
            check_refused(&f.call(service, keyed(std::slice::from_ref(&refused)))).unwrap();
        }
        let answer = f.call(&f.required, grpc(&refused));
        assert_eq!(answer.reached, None, "gRPC {refused:?}");
        assert_eq!(
            answer.grpc_status.as_deref(),
            Some("16"),
            "gRPC {refused:?}"
        );
    }
    assert_eq!(
        f.lookups(),
        lookups,
        "malformed values never reach the store"
    );
}

// ===== repeated headers =====

#[test]
fn repeated_key_headers_are_401_whatever_they_hold() {
    let f = Fixture::new();
    let _exclusive = f.runtime.block_on(exclusive());
    let (acme, other) = (f.acme.clone(), f.other.clone());
    let value = prop_oneof![
        Just(acme.clone().into_bytes()),
        Just(other.into_bytes()),
        hostile_value(acme),
    ];
    let mut runner = TestRunner::new(Config::with_cases(CASES));
    runner
        .run(&proptest::collection::vec(value, 2..6), |values| {
            for service in [&f.required, &f.optional] {
                check_refused(&f.call(service, keyed(&values)))?;
            }
            Ok(())
        })
        .unwrap();
}

// ===== any method, any path =====

/// `tchar` of RFC 9110, for extension methods.
const TCHARS: &[u8] =
    b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

fn method() -> impl Strategy<Value = Method> {
    prop_oneof![
        prop::sample::select(vec![
            Method::GET,
            Method::POST,
            Method::PUT,
            Method::DELETE,
            Method::HEAD,
            Method::OPTIONS,
            Method::PATCH,
            Method::TRACE,
            Method::CONNECT,
        ]),
        proptest::collection::vec(prop::sample::select(TCHARS.to_vec()), 1..20)
            .prop_map(|name| Method::from_bytes(&name).expect("a token")),
    ]
}

/// Origin-form request targets: segments of path characters, percent-escapes (valid or
/// not), dot segments, and a query that may itself carry an `api_key`.
fn path() -> impl Strategy<Value = String> {
    let segment = prop_oneof![
        "[A-Za-z0-9._~!$&'()*+,;=:@-]{0,12}",
        "(%[0-9A-Fa-f]{2}){1,4}",
        Just("..".to_owned()),
        Just("%zz".to_owned()),
    ];
    (
        proptest::collection::vec(segment, 0..6),
        proptest::option::of("[A-Za-z0-9=&_%.-]{0,40}"),
    )
        .prop_map(|(segments, query)| {
            let mut path = format!("/{}", segments.join("/"));
            if let Some(query) = query {
                path.push('?');
                path.push_str(&query);
            }
            path
        })
}

fn request(method: &Method, path: &str, key: Option<&[u8]>) -> Request<()> {
    let mut request = Request::builder()
        .method(method.clone())
        .uri(path)
        .body(())
        .expect("a valid request target");
    if let Some(key) = key {
        request.headers_mut().insert(
            "x-api-key",
            HeaderValue::from_bytes(key).expect("header-legal"),
        );
    }
    request
}

#[test]
fn any_method_and_path_is_let_in_with_a_valid_key_and_refused_without_one() {
    let f = Fixture::new();
    let _exclusive = f.runtime.block_on(exclusive());
    let mut runner = TestRunner::new(Config::with_cases(CASES));
    let garbage = b"not-an-api-key".to_vec();
    runner
        .run(&(method(), path()), |(method, path)| {
            let with_key = f.call(
                &f.required,
                request(&method, &path, Some(f.acme.as_bytes())),
            );
            prop_assert_eq!(with_key.status, StatusCode::OK);
            prop_assert_eq!(with_key.reached.as_deref(), Some("acme"));

            check_refused(&f.call(&f.required, request(&method, &path, Some(&garbage))))?;

            let without = f.call(&f.required, request(&method, &path, None));
            prop_assert_eq!(without.status, StatusCode::UNAUTHORIZED);
            prop_assert_eq!(&without.body[..], MISSING);

            // The key in the query string is not a key: still "missing".
            let in_query = format!(
                "{path}{}api_key={}",
                if path.contains('?') { "&" } else { "?" },
                f.acme
            );
            let queried = f.call(&f.required, request(&method, &in_query, None));
            prop_assert_eq!(queried.status, StatusCode::UNAUTHORIZED);
            prop_assert_eq!(&queried.body[..], MISSING);

            let anonymous = f.call(&f.optional, request(&method, &path, None));
            prop_assert_eq!(anonymous.reached.as_deref(), Some("anonymous"));
            Ok(())
        })
        .unwrap();
}

// ===== gRPC =====

#[test]
fn grpc_calls_with_any_bad_key_get_grpc_status_16_and_never_reach_the_service() {
    let f = Fixture::new();
    let _exclusive = f.runtime.block_on(exclusive());
    let mut runner = TestRunner::new(Config::with_cases(CASES));
    let strategy = (
        proptest::collection::vec(hostile_value(f.acme.clone()), 0..3),
        "(\\+proto|\\+json|;charset=utf-8)?",
    );
    runner
        .run(&strategy, |(values, suffix)| {
            let mut request = keyed(&values);
            request.headers_mut().insert(
                http::header::CONTENT_TYPE,
                HeaderValue::from_str(&format!("application/grpc{suffix}")).expect("ascii"),
            );
            let let_in = values.len() == 1 && f.owner(&values[0]).is_some();
            let answer = f.call(&f.required, request);
            prop_assert_eq!(answer.status, StatusCode::OK);
            if let_in {
                prop_assert!(answer.reached.is_some());
                prop_assert_eq!(answer.grpc_status, None);
            } else {
                prop_assert_eq!(answer.reached, None);
                prop_assert_eq!(answer.grpc_status.as_deref(), Some("16"));
                prop_assert!(answer.body.is_empty());
            }
            Ok(())
        })
        .unwrap();
}
