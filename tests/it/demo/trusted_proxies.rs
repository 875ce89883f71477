//! `--trusted-proxies` (`TRUSTED_PROXIES`): behind a proxy the demo server trusts, a key's
//! allowed addresses are checked against the rightmost `X-Forwarded-For` entry that is not a
//! trusted proxy, so a client's own (forged) entries on the left are passed over; a bad entry
//! stops the server at start.

use tonic_health::pb::HealthCheckRequest;

use super::SERVING;
use super::address::{ADDRESS_NOT_ALLOWED, key_allowed_from, ping};
use crate::support::demo::{DemoServer, Launch, with_key};

/// gRPC `Health/Check` with the key and an `x-forwarded-for` entry in the metadata.
async fn grpc_health_forwarded_for(
    server: &DemoServer,
    key: &str,
    forwarded_for: &str,
) -> Result<i32, tonic::Status> {
    let mut request = with_key(HealthCheckRequest::default(), Some(key));
    request.metadata_mut().insert(
        "x-forwarded-for",
        forwarded_for.parse().expect("a metadata value"),
    );
    server
        .health_client()
        .await
        .check(request)
        .await
        .map(|response| response.into_inner().status)
}

/// What a key allowed only from 203.0.113.0/24 gets through a trusted proxy on loopback.
async fn assert_forwarded_for_is_honoured(server: &DemoServer) {
    let key = key_allowed_from(server, r#"["203.0.113.0/24"]"#).await;
    let refused = format!("403 {ADDRESS_NOT_ALLOWED}");

    assert_eq!(ping(server, &key, Some("203.0.113.9")).await, "200 pong");
    // Without the header the client is the proxy itself, which the key doesn't allow.
    assert_eq!(ping(server, &key, None).await, refused);
    // The rightmost entry that is not a trusted proxy is the client: a forged entry on the
    // left is passed over, whichever way it would go.
    assert_eq!(
        ping(server, &key, Some("203.0.113.66, 198.51.100.7")).await,
        refused
    );
    assert_eq!(
        ping(server, &key, Some("198.51.100.7, 203.0.113.9")).await,
        "200 pong"
    );
    // The proxy's own entry (trusted) is skipped, reading from the right.
    assert_eq!(
        ping(server, &key, Some("198.51.100.7, 203.0.113.9, 127.0.0.1")).await,
        "200 pong"
    );
    // gRPC reads the same header from its metadata.
    assert_eq!(
        grpc_health_forwarded_for(server, &key, "203.0.113.9")
            .await
            .expect("SERVING"),
        SERVING
    );
    let denied = grpc_health_forwarded_for(server, &key, "198.51.100.7")
        .await
        .unwrap_err();
    assert_eq!(denied.code(), tonic::Code::PermissionDenied, "{denied:?}");
}

#[tokio::test]
async fn with_loopback_trusted_forwarded_for_is_honoured_and_a_forged_left_entry_passed_over() {
    let server = Launch::new()
        .arg("--trusted-proxies")
        .arg("127.0.0.1")
        .start()
        .await;
    assert_forwarded_for_is_honoured(&server).await;
    server
        .log_containing("X-Forwarded-For is read from connections of these trusted proxies")
        .await;
}

#[tokio::test]
async fn trusted_proxies_are_read_from_the_environment_as_a_comma_separated_list() {
    let server = Launch::new()
        .env("TRUSTED_PROXIES", "10.0.0.0/8, 127.0.0.0/8,::1")
        .start()
        .await;
    assert_forwarded_for_is_honoured(&server).await;
}

#[tokio::test]
async fn a_bad_trusted_proxy_exits_2_naming_the_setting_and_the_entry() {
    let cases = [
        (
            Launch::new().arg("--trusted-proxies").arg("10.0.0.0/33"),
            "--trusted-proxies",
            "10.0.0.0/33",
        ),
        (
            Launch::new().arg("--trusted-proxies=10.0.0.1,proxy.internal"),
            "--trusted-proxies",
            "proxy.internal",
        ),
        (
            Launch::new().env("TRUSTED_PROXIES", "10.0.0.0/8,2001:db8::/129"),
            "TRUSTED_PROXIES",
            "2001:db8::/129",
        ),
        (
            Launch::new().env("TRUSTED_PROXIES", "10.0.0.0/8,,192.0.2.1"),
            "TRUSTED_PROXIES",
            "empty entry",
        ),
    ];
    for (launch, source, named) in cases {
        let described = format!("{launch:?}");
        let output = launch.run_to_exit().await;
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{described}: {stderr}");
        assert!(
            stderr.contains(source) && stderr.contains(named),
            "{described}: {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{described}: {stderr}");
        assert!(output.stdout.is_empty(), "{described}: it never listened");
    }

    let help = Launch::new().arg("--help").run_to_exit().await;
    let usage = String::from_utf8_lossy(&help.stdout);
    assert!(
        usage.contains("--trusted-proxies") && usage.contains("TRUSTED_PROXIES"),
        "{usage}"
    );
}
