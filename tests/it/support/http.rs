//! A loopback axum server (for the `axum` tests: the extractor needs the feature) and a tiny
//! HTTP/1 client.

use std::net::SocketAddr;

use http::header::CONTENT_TYPE;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt as _, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// Serves `app` on a fresh loopback port until the test ends.
#[cfg(feature = "axum")]
pub(crate) async fn serve(app: axum::Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    let addr = listener.local_addr().expect("local addr");
    tokio::spawn(async move {
        // With the connection's address, for keys with allowed addresses.
        let app = app.into_make_service_with_connect_info::<SocketAddr>();
        axum::serve(listener, app).await.expect("serve");
    });
    addr
}

/// An HTTP/1 client for loopback servers.
pub(crate) fn client() -> Client<HttpConnector, Empty<bytes::Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

/// The answer to a GET: status, headers, body text.
pub(crate) struct Answer {
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
    pub(crate) body: String,
}

impl Answer {
    /// The `content-type` header, if any.
    pub(crate) fn content_type(&self) -> Option<&str> {
        self.headers
            .get(CONTENT_TYPE)
            .map(|value| value.to_str().expect("ascii"))
    }
}

/// GET `path` with each of `keys` as an `x-api-key` header.
#[cfg(feature = "axum")]
pub(crate) async fn get(
    client: &Client<HttpConnector, Empty<bytes::Bytes>>,
    addr: SocketAddr,
    path: &str,
    keys: &[&str],
) -> Answer {
    let headers: Vec<_> = keys.iter().map(|key| ("x-api-key", *key)).collect();
    get_with(client, addr, path, &headers).await
}

/// GET `path` with the given `(name, value)` headers.
pub(crate) async fn get_with(
    client: &Client<HttpConnector, Empty<bytes::Bytes>>,
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> Answer {
    let mut request = Request::get(format!("http://{addr}{path}"));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = client
        .request(request.body(Empty::new()).expect("request"))
        .await
        .expect("response");
    let status = response.status();
    let headers = response.headers().clone();
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    Answer {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}
