//! The bad-input matrix (ARCHITECTURE.md, *Hardening*) against the real demo server
//! (`examples/server/`), over raw HTTP/1.1 bytes and raw HTTP/2 gRPC calls, with its logs
//! captured at `RUST_LOG=trace` (every crate, the layer's rejection events included) and
//! searched for every secret used.
//!
//! Expected answers, and who gives them:
//!
//! | input | HTTP/1.1 | gRPC (h2c) |
//! | --- | --- | --- |
//! | no `x-api-key`; key only in the query string or a cookie | 401 missing (layer) | `grpc-status: 16` |
//! | no `x-api-key`; the key as `Authorization: Bearer <key>` (the demo turns on `accept_bearer()`) | 200 | — |
//! | empty or all-whitespace value | 401 invalid (the value is empty once its blanks are trimmed) | 16 |
//! | valid key with spaces/tabs around it | 200: blanks around a field value are not part of it (RFC 9110 §5.5); hyper strips them | 0: HTTP/2 carries them as sent, and the layer trims them |
//! | spaces or tab inside, NBSP around, non-UTF-8 (obs-text) bytes, prefix alone, body alone, key too long or short, upper/lower-cased, `Bearer <key>` | 401 invalid (layer, parse) | 16 |
//! | valid prefix with another key's body (checksum recomputed: well-formed) | 401 invalid (layer, after a store lookup) | 16 |
//! | duplicate `x-api-key` headers, or one comma-joined value | 401 invalid (layer) | 16 |
//! | a key of another account | 200 as *that* account, never the other | 200 |
//! | control characters (NUL, 0x01, ESC, DEL) or a bare CR in the value | 400 (hyper, before the layer) | — (an HTTP/2 client can't send them) |
//! | a bare LF that leaves a line without a colon; obsolete line folding | 400 (hyper) | — |
//! | 8 KiB and 64 KiB values | 401 invalid (layer refuses on length before hashing) | 16 for 8 KiB; 64 KiB is over the h2 server's 16 KiB header-list limit: h2 closes the connection (GOAWAY `ENHANCE_YOUR_CALM`, or 431 when barely over) before the layer |
//! | a 512 KiB value; more than 100 header lines | 431 (hyper), or the connection closed before the answer is read | — |
//!
//! After every case the server is up and a valid key still works; no answer is a 5xx.

use std::net::SocketAddr;
use std::time::Duration;

use crate::support::demo::{DemoServer, Launch, read_until_closed};
use crate::support::keys::forge;
use bytes::Bytes;
use http::{HeaderValue, Request, StatusCode};
use http_body_util::{BodyExt as _, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::Value;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

const IO_TIMEOUT: Duration = Duration::from_secs(20);
const INVALID: &str = r#"{"error":"invalid API key"}"#;
const MISSING: &str = r#"{"error":"missing API key"}"#;

// ===== raw HTTP/1.1 =====

/// What came back on a raw connection: the status (None if the connection closed first)
/// and the body after the head.
#[derive(Debug)]
struct Raw {
    status: Option<u16>,
    body: String,
}

/// Writes `head` (a whole request head, ending in CRLF CRLF) on a fresh connection and reads
/// until the server closes it. Writing and reading run together so that a server that answers
/// before reading everything (431) is still heard.
async fn raw_http(addr: SocketAddr, head: Vec<u8>) -> Raw {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (mut reader, mut writer) = stream.into_split();
    let write = tokio::spawn(async move {
        // The server may close early on purpose; a failed write is part of the answer.
        let _ = writer.write_all(&head).await;
        let _ = writer.flush().await;
        writer
    });
    let answer = read_until_closed(&mut reader, IO_TIMEOUT).await;
    let answer = answer.unwrap_or_else(|| panic!("no answer within {IO_TIMEOUT:?}"));
    drop(write.await);
    let text = String::from_utf8_lossy(&answer);
    let status = text
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok());
    let body = text
        .split_once("\r\n\r\n")
        .map_or(String::new(), |(_, body)| body.to_owned());
    Raw { status, body }
}

/// `GET path` with `headers` given as raw bytes, each line without its CRLF.
fn head(path: &str, headers: &[Vec<u8>]) -> Vec<u8> {
    let mut head =
        format!("GET {path} HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\n").into_bytes();
    for line in headers {
        head.extend_from_slice(line);
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(b"\r\n");
    head
}

fn line(name: &str, value: &[u8]) -> Vec<u8> {
    [name.as_bytes(), b": ", value].concat()
}

/// What a raw HTTP/1.1 case must get.
#[derive(Debug, Clone, Copy)]
enum Expect {
    /// 200 from `/v1/whoami` as this account.
    Account(&'static str),
    /// 401 with this JSON body, from the layer.
    Refused(&'static str),
    /// This status from hyper, before the layer.
    Hyper(u16),
    /// 431 from hyper, or the connection closed before the answer could be read (a server
    /// that refuses an oversized head closes without reading the rest, and the reset may
    /// overtake its answer).
    TooLarge,
}

async fn check_http(addr: SocketAddr, case: &str, path: &str, headers: &[Vec<u8>], expect: Expect) {
    let answer = raw_http(addr, head(path, headers)).await;
    match expect {
        Expect::Account(account) => {
            assert_eq!(answer.status, Some(200), "{case}: {answer:?}");
            let who: Value = serde_json::from_str(&answer.body)
                .unwrap_or_else(|err| panic!("{case}: not JSON ({err}): {answer:?}"));
            assert_eq!(who["account_id"], account, "{case}");
        }
        Expect::Refused(body) => {
            assert_eq!(answer.status, Some(401), "{case}: {answer:?}");
            assert_eq!(answer.body, body, "{case}");
        }
        Expect::Hyper(status) => assert_eq!(answer.status, Some(status), "{case}: {answer:?}"),
        Expect::TooLarge => assert!(
            matches!(answer.status, None | Some(431)),
            "{case}: {answer:?}"
        ),
    }
}

// ===== raw HTTP/2 gRPC =====

/// An answer over HTTP/2: the status, the `grpc-status` (from the headers of a Trailers-Only
/// answer, or the trailers) and the body.
#[derive(Debug)]
struct H2Answer {
    status: StatusCode,
    grpc_status: Option<String>,
    body: Bytes,
}

/// Sends `request` over a fresh h2c connection and reads the whole answer, or the error if
/// the stream was refused.
async fn h2_exchange(
    addr: SocketAddr,
    request: Request<Full<Bytes>>,
) -> Result<H2Answer, hyper::Error> {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .expect("h2 handshake");
    tokio::spawn(connection);
    let exchange = async {
        let response = sender.send_request(request).await?;
        let status = response.status();
        let in_headers = response.headers().get("grpc-status").cloned();
        let collected = response.into_body().collect().await?;
        let in_trailers = collected
            .trailers()
            .and_then(|trailers| trailers.get("grpc-status").cloned());
        let grpc_status = in_headers
            .or(in_trailers)
            .map(|value| value.to_str().expect("ascii").to_owned());
        Ok(H2Answer {
            status,
            grpc_status,
            body: collected.to_bytes(),
        })
    };
    tokio::time::timeout(IO_TIMEOUT, exchange)
        .await
        .expect("an HTTP/2 answer in time")
}

fn with_keys(mut request: Request<Full<Bytes>>, keys: &[&[u8]]) -> Request<Full<Bytes>> {
    for key in keys {
        request.headers_mut().append(
            "x-api-key",
            HeaderValue::from_bytes(key).expect("header-legal bytes"),
        );
    }
    request
}

/// One unary `grpc.health.v1.Health/Check` over a fresh h2c connection with `keys` as
/// `x-api-key` values. Returns the HTTP status and the `grpc-status`, or the error if the
/// stream was refused.
async fn grpc_check(
    addr: SocketAddr,
    path: &str,
    keys: &[&[u8]],
) -> Result<(StatusCode, Option<String>), hyper::Error> {
    let request = Request::post(format!("http://{addr}{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        // One empty HealthCheckRequest: uncompressed, length 0.
        .body(Full::new(Bytes::from_static(&[0, 0, 0, 0, 0])))
        .expect("request");
    let answer = h2_exchange(addr, with_keys(request, keys)).await?;
    Ok((answer.status, answer.grpc_status))
}

/// `GET path` over a fresh h2c connection (plain HTTP/2, not gRPC) with `keys`.
async fn h2_get(addr: SocketAddr, path: &str, keys: &[&[u8]]) -> H2Answer {
    let request = Request::get(format!("http://{addr}{path}"))
        .body(Full::new(Bytes::new()))
        .expect("request");
    h2_exchange(addr, with_keys(request, keys))
        .await
        .unwrap_or_else(|err| panic!("GET {path} over h2: {err}"))
}

async fn check_grpc(addr: SocketAddr, case: &str, path: &str, keys: &[&[u8]], expect: &str) {
    let (status, grpc_status) = grpc_check(addr, path, keys)
        .await
        .unwrap_or_else(|err| panic!("{case}: {err}"));
    assert_eq!(status, StatusCode::OK, "{case}");
    assert_eq!(grpc_status.as_deref(), Some(expect), "{case}");
}

// ===== the matrix =====

struct Keys {
    acme: String,
    acme_id: String,
    other: String,
    /// acme's prefix with other's secret, checksum recomputed.
    forged: String,
    /// Revoked, and rotated-away keys of acme's other slots.
    revoked: String,
    rotated_away: String,
}

async fn keys(server: &DemoServer) -> Keys {
    let text = |value: &Value, field: &str| value[field].as_str().expect(field).to_owned();
    let acme = server.create_key("acme").await;
    let other = server.create_key("other").await;
    let revoked = server.create_key("acme").await;
    let revoke = server
        .key_action("acme", &text(&revoked, "id"), "revoke")
        .await;
    assert_eq!(revoke.status, StatusCode::OK);
    let rotated = server.create_key("acme").await;
    let rotate = server
        .key_action("acme", &text(&rotated, "id"), "rotate")
        .await;
    assert_eq!(rotate.status, StatusCode::OK);
    let (acme_key, other_key) = (text(&acme, "key"), text(&other, "key"));
    Keys {
        forged: forge(&acme_key, &other_key),
        acme: acme_key,
        acme_id: text(&acme, "id"),
        other: other_key,
        revoked: text(&revoked, "key"),
        rotated_away: text(&rotated, "key"),
    }
}

async fn start() -> DemoServer {
    Launch::new().env("RUST_LOG", "trace").start().await
}

/// The server is still up and still lets a valid key in.
async fn assert_still_serving(server: &mut DemoServer, key: &str) {
    assert!(server.is_running(), "the server died");
    assert_eq!(server.get("/healthz").await.text(), "ok");
    let reply = server.get_with_key("/v1/whoami", key).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
}

/// Searches the whole log for every secret: the part of each key after its prefix.
async fn assert_log_holds_no_secret(server: &DemoServer, secrets: &[&str]) {
    // A last logged action makes the log complete up to here.
    let marker = server.create_key("marker").await;
    let id = marker["id"].as_str().expect("id");
    server
        .admin(
            http::Method::DELETE,
            &format!("/admin/accounts/marker/keys/{id}"),
        )
        .await;
    let log = server.log_containing("api key deleted").await;
    assert!(
        log.contains("api key rejected"),
        "the layer's debug events are in the log:\n{log}"
    );
    for secret in secrets {
        let body = &secret[9..];
        assert!(
            !log.contains(body) && !log.contains(&body[..20]),
            "the log leaks a secret:\n{log}"
        );
    }
    assert!(!log.contains("panicked"), "{log}");
}

#[tokio::test]
async fn every_bad_input_over_http_gets_its_documented_answer() {
    let mut server = start().await;
    let keys = keys(&server).await;
    let addr = server.addr;
    let acme = keys.acme.as_bytes();
    let key = |value: &[u8]| vec![line("x-api-key", value)];
    let with = |before: &[u8], after: &[u8]| [before, acme, after].concat();
    let mut non_utf8 = acme.to_vec();
    non_utf8[20] = 0xC3;
    let mut header_flood: Vec<Vec<u8>> = (0..120)
        .map(|i| format!("x-pad-{i}: 1").into_bytes())
        .collect();
    header_flood.push(line("x-api-key", acme));

    use Expect::*;
    let cases: Vec<(&str, &str, Vec<Vec<u8>>, Expect)> = vec![
        ("the valid key", "/v1/whoami", key(acme), Account("acme")),
        ("no header", "/v1/whoami", vec![], Refused(MISSING)),
        ("empty value", "/v1/whoami", key(b""), Refused(INVALID)),
        (
            "whitespace only",
            "/v1/whoami",
            key(b" \t  \t"),
            Refused(INVALID),
        ),
        (
            "whitespace around the key (not part of the value)",
            "/v1/whoami",
            key(&with(b" \t ", b"\t  ")),
            Account("acme"),
        ),
        (
            "a space inside the key",
            "/v1/whoami",
            key(&[&acme[..20], b" ", &acme[20..]].concat()),
            Refused(INVALID),
        ),
        (
            "a tab inside the key",
            "/v1/whoami",
            key(&[&acme[..20], b"\t", &acme[21..]].concat()),
            Refused(INVALID),
        ),
        (
            "duplicate headers, both the valid key",
            "/v1/whoami",
            vec![line("x-api-key", acme), line("X-API-KEY", acme)],
            Refused(INVALID),
        ),
        (
            "duplicate headers, valid then garbage",
            "/v1/whoami",
            vec![line("x-api-key", acme), line("x-api-key", b"garbage")],
            Refused(INVALID),
        ),
        (
            "duplicates folded into one comma-joined value",
            "/v1/whoami",
            key(&with(b"", &[b", ", acme].concat())),
            Refused(INVALID),
        ),
        (
            "non-UTF-8 bytes",
            "/v1/whoami",
            key(b"\xff\xfe\x80garbage\xc3\x28"),
            Refused(INVALID),
        ),
        (
            "the key with one byte made non-UTF-8",
            "/v1/whoami",
            key(&non_utf8),
            Refused(INVALID),
        ),
        (
            "NUL in the value",
            "/v1/whoami",
            key(&with(b"\0", b"")),
            Hyper(400),
        ),
        (
            "0x01 in the value",
            "/v1/whoami",
            key(&with(b"", b"\x01")),
            Hyper(400),
        ),
        (
            "ESC in the value",
            "/v1/whoami",
            key(&with(b"\x1b[31m", b"")),
            Hyper(400),
        ),
        (
            "DEL in the value",
            "/v1/whoami",
            key(&with(b"", b"\x7f")),
            Hyper(400),
        ),
        (
            "a bare CR in the value",
            "/v1/whoami",
            key(&with(b"", b"\rx")),
            Hyper(400),
        ),
        (
            "a bare LF leaving a line without a colon",
            "/v1/whoami",
            key(&with(b"", b"\nnot a header")),
            Hyper(400),
        ),
        (
            "obsolete line folding",
            "/v1/whoami",
            key(&[&acme[..20], b"\r\n ", &acme[20..]].concat()),
            Hyper(400),
        ),
        (
            "a space before the colon",
            "/v1/whoami",
            vec![[&b"x-api-key :"[..], acme].concat()],
            Hyper(400),
        ),
        (
            "8 KiB value",
            "/v1/whoami",
            key(&vec![b'a'; 8 << 10]),
            Refused(INVALID),
        ),
        (
            "64 KiB value",
            "/v1/whoami",
            key(&vec![b'k'; 64 << 10]),
            Refused(INVALID),
        ),
        (
            "the key followed by 64 KiB",
            "/v1/whoami",
            key(&with(b"", &vec![b'A'; 64 << 10])),
            Refused(INVALID),
        ),
        (
            "512 KiB value",
            "/v1/whoami",
            key(&vec![b'a'; 512 << 10]),
            TooLarge,
        ),
        ("121 header lines", "/v1/whoami", header_flood, TooLarge),
        (
            "the prefix alone",
            "/v1/whoami",
            key(&acme[..8]),
            Refused(INVALID),
        ),
        (
            "the prefix and dot",
            "/v1/whoami",
            key(&acme[..9]),
            Refused(INVALID),
        ),
        (
            "the body alone",
            "/v1/whoami",
            key(&acme[9..]),
            Refused(INVALID),
        ),
        (
            "the key less its last character",
            "/v1/whoami",
            key(&acme[..57]),
            Refused(INVALID),
        ),
        (
            "the key plus one character",
            "/v1/whoami",
            key(&with(b"", b"0")),
            Refused(INVALID),
        ),
        (
            "a valid prefix with another key's body (checksum recomputed)",
            "/v1/whoami",
            key(keys.forged.as_bytes()),
            Refused(INVALID),
        ),
        (
            "a valid prefix with another key's body (checksum kept)",
            "/v1/whoami",
            key(&[&acme[..9], &keys.other.as_bytes()[9..]].concat()),
            Refused(INVALID),
        ),
        (
            "a key of another account",
            "/v1/whoami",
            key(keys.other.as_bytes()),
            Account("other"),
        ),
        (
            "a revoked key",
            "/v1/whoami",
            key(keys.revoked.as_bytes()),
            Refused(INVALID),
        ),
        (
            "a rotated-away key",
            "/v1/whoami",
            key(keys.rotated_away.as_bytes()),
            Refused(INVALID),
        ),
        (
            "upper-cased",
            "/v1/whoami",
            key(&acme.to_ascii_uppercase()),
            Refused(INVALID),
        ),
        (
            "lower-cased",
            "/v1/whoami",
            key(&acme.to_ascii_lowercase()),
            Refused(INVALID),
        ),
        (
            "header name in upper case",
            "/v1/whoami",
            vec![line("X-API-KEY", acme)],
            Account("acme"),
        ),
        (
            "header name in mixed case",
            "/v1/whoami",
            vec![line("X-Api-Key", acme)],
            Account("acme"),
        ),
        (
            "x-api-key: Bearer <key>",
            "/v1/whoami",
            key(&with(b"Bearer ", b"")),
            Refused(INVALID),
        ),
        (
            // The demo turns on `accept_bearer()`.
            "Authorization: Bearer <key> only",
            "/v1/whoami",
            vec![line("authorization", &with(b"Bearer ", b""))],
            Account("acme"),
        ),
        (
            "the key in a look-alike header",
            "/v1/whoami",
            vec![
                line("x-api-key2", acme),
                line("api-key", acme),
                line("x_api_key", acme),
            ],
            Refused(MISSING),
        ),
        (
            "the key in a cookie",
            "/v1/whoami",
            vec![line("cookie", &with(b"x-api-key=", b""))],
            Refused(MISSING),
        ),
    ];
    let query_paths: Vec<String> = ["api_key", "x-api-key", "X-API-KEY", "key"]
        .iter()
        .map(|name| format!("/v1/whoami?{name}={}", keys.acme))
        .collect();

    for (case, path, headers, expect) in &cases {
        check_http(addr, case, path, headers, *expect).await;
    }
    for path in &query_paths {
        check_http(
            addr,
            "the key only in the query string",
            path,
            &[],
            Expect::Refused(MISSING),
        )
        .await;
    }
    // The key of another account is that account: acme's id is never reported for it.
    let other = server.get_with_key("/v1/whoami", &keys.other).await.json();
    assert_ne!(other["key_id"], keys.acme_id.as_str());

    assert_still_serving(&mut server, &keys.acme).await;
    let metrics = server.get("/metrics").await;
    assert!(
        metrics
            .text()
            .contains(r#"api_key_requests_total{outcome="unavailable"} 0"#),
        "{}",
        metrics.text()
    );
    assert_log_holds_no_secret(
        &server,
        &[
            &keys.acme,
            &keys.other,
            &keys.forged,
            &keys.revoked,
            &keys.rotated_away,
        ],
    )
    .await;
}

#[tokio::test]
async fn every_bad_input_over_grpc_gets_unauthenticated() {
    let mut server = start().await;
    let keys = keys(&server).await;
    let addr = server.addr;
    let acme = keys.acme.as_bytes();
    let check = "/grpc.health.v1.Health/Check";
    let with = |before: &[u8], after: &[u8]| [before, acme, after].concat();
    let upper = acme.to_ascii_uppercase();
    let bearer = with(b"Bearer ", b"");
    let spaced = with(b"  \t", b" ");
    let long = vec![b'a'; 8 << 10];
    let mut non_utf8 = acme.to_vec();
    non_utf8[30] = 0xFF;
    let forged_with_kept_checksum = [&acme[..9], &keys.other.as_bytes()[9..]].concat();

    let cases: Vec<(&str, Vec<&[u8]>, &str)> = vec![
        ("the valid key", vec![acme], "0"),
        ("a key of another account", vec![keys.other.as_bytes()], "0"),
        ("no key", vec![], "16"),
        ("empty value", vec![b""], "16"),
        ("whitespace only", vec![b"  \t "], "16"),
        // HTTP/2 carries the value exactly as sent; the layer trims the blanks.
        ("whitespace around the key", vec![&spaced], "0"),
        ("duplicate key headers", vec![acme, acme], "16"),
        (
            "duplicate: valid then garbage",
            vec![acme, b"garbage"],
            "16",
        ),
        ("non-UTF-8 bytes", vec![b"\xff\xfe\x80\x81"], "16"),
        ("the key with a non-UTF-8 byte", vec![&non_utf8], "16"),
        ("8 KiB value", vec![&long], "16"),
        ("the prefix alone", vec![&acme[..8]], "16"),
        ("the body alone", vec![&acme[9..]], "16"),
        (
            "forged: valid prefix, other body",
            vec![keys.forged.as_bytes()],
            "16",
        ),
        (
            "valid prefix, other body, checksum kept",
            vec![&forged_with_kept_checksum],
            "16",
        ),
        ("a revoked key", vec![keys.revoked.as_bytes()], "16"),
        (
            "a rotated-away key",
            vec![keys.rotated_away.as_bytes()],
            "16",
        ),
        ("upper-cased", vec![&upper], "16"),
        ("Bearer <key>", vec![&bearer], "16"),
    ];
    for (case, values, expect) in &cases {
        check_grpc(addr, case, check, values, expect).await;
    }
    let in_query = format!("{check}?api_key={}", keys.acme);
    check_grpc(
        addr,
        "the key only in the query string",
        &in_query,
        &[],
        "16",
    )
    .await;

    // 64 KiB is over the h2 server's header-list limit: h2 closes the connection (GOAWAY
    // ENHANCE_YOUR_CALM; 431 when only a little over) before any service sees the request.
    // Either way no one is let in and nothing is a 5xx.
    let huge = vec![b'a'; 64 << 10];
    match grpc_check(addr, check, &[&huge]).await {
        Ok((status, grpc_status)) => assert!(
            status == StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
                || (status == StatusCode::OK && grpc_status.as_deref() == Some("16")),
            "{status} {grpc_status:?}"
        ),
        Err(err) => assert!(!err.is_timeout(), "{err}"),
    }

    assert_still_serving(&mut server, &keys.acme).await;
    check_grpc(addr, "the valid key, after all that", check, &[acme], "0").await;
    assert_log_holds_no_secret(
        &server,
        &[
            &keys.acme,
            &keys.other,
            &keys.forged,
            &keys.revoked,
            &keys.rotated_away,
        ],
    )
    .await;
}

/// One contract for blanks in every protocol: HTTP/1.1 strips spaces and tabs around a value
/// (hyper), HTTP/2 passes them through, and the layer trims them; nothing else is trimmed.
#[tokio::test]
async fn blanks_around_a_key_are_trimmed_over_http1_http2_and_grpc_and_nothing_else_is() {
    let server = Launch::new().start().await;
    let created = server.create_key("acme").await;
    let key = created["key"].as_str().expect("key").to_owned();
    let (addr, acme) = (server.addr, key.as_bytes());
    let check = "/grpc.health.v1.Health/Check";
    let with = |before: &[u8], after: &[u8]| [before, acme, after].concat();

    for padded in [with(b" ", b""), with(b"", b"\t"), with(b" \t ", b"\t  ")] {
        let case = format!("padded {padded:?}");
        let header = vec![line("x-api-key", &padded)];
        check_http(addr, &case, "/v1/whoami", &header, Expect::Account("acme")).await;
        let h2 = h2_get(addr, "/v1/whoami", &[&padded]).await;
        assert_eq!(h2.status, StatusCode::OK, "{case} over h2: {h2:?}");
        let who: Value = serde_json::from_slice(&h2.body).expect("JSON");
        assert_eq!(who["account_id"], "acme", "{case} over h2");
        check_grpc(addr, &case, check, &[&padded], "0").await;
    }
    // tonic's own client, the key padded in the metadata.
    let status = server.grpc_health(Some(&format!(" \t{key}  "))).await;
    assert_eq!(status.expect("let in"), 1, "SERVING");

    let nbsp = "\u{a0}".as_bytes();
    for refused in [
        with(nbsp, b""),
        with(b"", nbsp),
        [&acme[..20], b" ", &acme[20..]].concat(),
        [&acme[..20], b"\t", &acme[20..]].concat(),
    ] {
        let case = format!("refused {refused:?}");
        let header = vec![line("x-api-key", &refused)];
        check_http(addr, &case, "/v1/whoami", &header, Expect::Refused(INVALID)).await;
        let h2 = h2_get(addr, "/v1/whoami", &[&refused]).await;
        assert_eq!(h2.status, StatusCode::UNAUTHORIZED, "{case} over h2");
        assert_eq!(&h2.body[..], INVALID.as_bytes(), "{case} over h2");
        check_grpc(addr, &case, check, &[&refused], "16").await;
    }
    // A vertical tab is a control character: hyper refuses it before the layer, and an
    // HTTP/2 client can't send it (`HeaderValue` refuses it).
    let vt = vec![line("x-api-key", &with(b"\x0b", b"\x0b"))];
    check_http(addr, "0x0B around", "/v1/whoami", &vt, Expect::Hyper(400)).await;
}

#[tokio::test]
async fn a_key_never_carries_over_to_the_next_request_on_the_same_connection() {
    let mut server = start().await;
    let keys = keys(&server).await;
    // Pipelined on one HTTP/1.1 connection: keyed, keyless, bad key, keyed again.
    let keyed = format!(
        "GET /v1/whoami HTTP/1.1\r\nhost: 127.0.0.1\r\nx-api-key: {}\r\n\r\n",
        keys.acme
    );
    let keyless = "GET /v1/whoami HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n".to_owned();
    let bad = "GET /v1/whoami HTTP/1.1\r\nhost: 127.0.0.1\r\nx-api-key: nope\r\n\r\n".to_owned();
    let last = format!(
        "GET /v1/whoami HTTP/1.1\r\nhost: 127.0.0.1\r\nx-api-key: {}\r\nconnection: close\r\n\r\n",
        keys.other
    );
    let pipelined = [keyed, keyless, bad, last].concat().into_bytes();
    let stream = TcpStream::connect(server.addr).await.expect("connect");
    let (mut reader, mut writer) = stream.into_split();
    writer.write_all(&pipelined).await.expect("write");
    let mut answers = Vec::new();
    tokio::time::timeout(IO_TIMEOUT, reader.read_to_end(&mut answers))
        .await
        .expect("answers in time")
        .expect("read");
    let answers = String::from_utf8_lossy(&answers);
    let statuses: Vec<&str> = answers
        .match_indices("HTTP/1.1 ")
        .map(|(at, _)| &answers[at + 9..at + 12])
        .collect();
    assert_eq!(statuses, ["200", "401", "401", "200"], "{answers}");
    assert!(answers.contains(MISSING) && answers.contains(INVALID));
    assert!(answers.contains(r#""account_id":"other""#), "{answers}");

    // On one HTTP/2 connection, streams are as separate as requests.
    let stream = TcpStream::connect(server.addr).await.expect("connect");
    let (sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .expect("h2 handshake");
    tokio::spawn(connection);
    for (key, expect) in [
        (Some(keys.acme.as_str()), "0"),
        (None, "16"),
        (Some(keys.acme.as_str()), "0"),
        (Some("nope"), "16"),
    ] {
        let mut request = Request::post(format!(
            "http://{}/grpc.health.v1.Health/Check",
            server.addr
        ))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Full::new(Bytes::from_static(&[0, 0, 0, 0, 0])))
        .expect("request");
        if let Some(key) = key {
            request
                .headers_mut()
                .insert("x-api-key", HeaderValue::from_str(key).expect("ascii"));
        }
        let response = sender.clone().send_request(request).await.expect("answer");
        let in_headers = response.headers().get("grpc-status").cloned();
        let collected = response.into_body().collect().await.expect("body");
        let status = in_headers
            .or_else(|| {
                collected
                    .trailers()
                    .and_then(|t| t.get("grpc-status").cloned())
            })
            .expect("a grpc-status");
        assert_eq!(status, expect, "{key:?}");
    }
    assert_still_serving(&mut server, &keys.acme).await;
}
