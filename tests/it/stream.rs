//! Open responses in process: a body the test feeds frame by frame (so it can sit idle for as
//! long as the test likes), behind the layer and, for scopes, `RequireScopeLayer`. What ends
//! a response and what doesn't, for HTTP and gRPC; the loopback versions are in
//! `demo::streams`. Every wait is for a frame or the end, bounded by 30 s.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body::{Body, Frame};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt as _, Full};
use tokio::sync::mpsc;
use tower::{Layer as _, ServiceExt as _, service_fn};
use tower_api_key::invalidation::Invalidation;
use tower_api_key::policy::{AllowedIps, PolicyUpdate, Scopes};
use tower_api_key::{
    ApiKeyLayer, KeyId, KeyIdentity, KeyManager, KeyOptions, MemoryStore, RequireScopeLayer,
    StoreResolver,
};

use crate::support::{account, pepper};

const BOUND: Duration = Duration::from_secs(30);

/// A response body as the client reads it.
type Streamed = UnsyncBoxBody<Bytes, Infallible>;

/// A body whose frames the test sends through a channel; it waits (idle) in between, and
/// ends when the sender is dropped. Its size is unknown, like any stream's.
struct Fed(mpsc::UnboundedReceiver<Frame<Bytes>>);

impl Body for Fed {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|frame| frame.map(Ok))
    }
}

/// A body that never waits: a frame every time it is polled, forever.
struct Endless;

impl Body for Endless {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(b"x")))))
    }
}

/// A manager, a layer over it (streams watched unless `watch` is false) and a key of
/// account `acme` created with `options`.
struct Setup {
    manager: KeyManager,
    layer: ApiKeyLayer<StoreResolver>,
    key: String,
    id: KeyId,
}

impl Setup {
    async fn new(watch: bool, options: KeyOptions) -> Self {
        let manager = KeyManager::new(Arc::new(MemoryStore::new()), pepper());
        let layer = ApiKeyLayer::for_manager(&manager)
            .end_streams_on_change(watch)
            .build();
        let created = manager
            .create_with(&account("acme"), options)
            .await
            .expect("create");
        Self {
            key: created.key.expose_secret().to_owned(),
            id: created.info.id,
            manager,
            layer,
        }
    }

    /// The key's body through the layer (and `scope`, if any), the inner service answering
    /// with `response`.
    async fn open<B>(
        &self,
        scope: Option<&'static str>,
        grpc: bool,
        response: Response<B>,
    ) -> Streamed
    where
        B: Body<Data = Bytes, Error = Infallible> + Send + Unpin + 'static,
    {
        open(&self.layer, scope, &self.key, grpc, response).await
    }

    async fn revoke(&self) {
        self.manager
            .revoke(&account("acme"), self.id)
            .await
            .expect("revoke");
    }

    async fn update(&self, update: PolicyUpdate) {
        self.manager
            .update(&account("acme"), self.id, update)
            .await
            .expect("update");
    }
}

/// The response the inner service gives: a fed body, gRPC or not.
fn fed_response(grpc: bool) -> (mpsc::UnboundedSender<Frame<Bytes>>, Response<Fed>) {
    let (sender, receiver) = mpsc::unbounded_channel();
    let mut response = Response::new(Fed(receiver));
    if grpc {
        response
            .headers_mut()
            .insert("content-type", HeaderValue::from_static("application/grpc"));
    }
    (sender, response)
}

fn request(key: &str, grpc: bool) -> Request<()> {
    let mut request = Request::post("/stream").body(()).expect("request");
    request
        .headers_mut()
        .insert("x-api-key", key.parse().expect("header"));
    if grpc {
        request
            .headers_mut()
            .insert("content-type", HeaderValue::from_static("application/grpc"));
    }
    request
}

/// Sends `key` through `layer` (and `scope`, if any) to an inner service answering with
/// `response`; returns the body the client would read.
async fn open<B>(
    layer: &ApiKeyLayer<tower_api_key::StoreResolver>,
    scope: Option<&'static str>,
    key: &str,
    grpc: bool,
    response: Response<B>,
) -> Streamed
where
    B: Body<Data = Bytes, Error = Infallible> + Send + Unpin + 'static,
{
    let response = Arc::new(Mutex::new(Some(response)));
    let inner = service_fn(move |_: Request<()>| {
        let response = response.lock().unwrap().take().expect("one request");
        async move { Ok::<_, Infallible>(response) }
    });
    let answer = match scope {
        None => layer
            .layer(inner)
            .oneshot(request(key, grpc))
            .await
            .expect("infallible")
            .map(|body| body.boxed_unsync()),
        Some(scope) => layer
            .layer(RequireScopeLayer::<KeyIdentity>::new(scope).layer(inner))
            .oneshot(request(key, grpc))
            .await
            .expect("infallible")
            .map(|body| body.boxed_unsync()),
    };
    assert_eq!(answer.status(), http::StatusCode::OK);
    answer.into_body()
}

/// The next frame within the bound: `Some(data or trailers)`, or `None` at the end.
async fn next(
    body: &mut (impl Body<Data = Bytes, Error = Infallible> + Unpin),
) -> Option<Frame<Bytes>> {
    tokio::time::timeout(BOUND, body.frame())
        .await
        .expect("a frame or the end within 30 s")
        .map(|frame| frame.expect("infallible"))
}

/// Sends one data frame and reads it back: the response is open and flowing.
async fn assert_flows(
    sender: &mpsc::UnboundedSender<Frame<Bytes>>,
    body: &mut (impl Body<Data = Bytes, Error = Infallible> + Unpin),
) {
    sender
        .send(Frame::data(Bytes::from_static(b"tick")))
        .expect("the body is read");
    let frame = next(body).await.expect("a frame, not the end");
    assert_eq!(frame.into_data().expect("data"), "tick");
}

fn grpc_status(trailers: &HeaderMap) -> (&str, &str) {
    (
        trailers["grpc-status"].to_str().unwrap(),
        trailers["grpc-message"].to_str().unwrap(),
    )
}

/// The trailers that end a gRPC body, within the bound, as `(grpc-status, grpc-message)`.
async fn ending_status(
    body: &mut (impl Body<Data = Bytes, Error = Infallible> + Unpin),
) -> (String, String) {
    let trailers = next(body)
        .await
        .expect("trailers, not the end")
        .into_trailers()
        .expect("trailers, not data");
    let (status, message) = grpc_status(&trailers);
    (status.to_owned(), message.to_owned())
}

#[tokio::test]
async fn an_idle_http_stream_ends_when_its_key_is_revoked() {
    let setup = Setup::new(true, KeyOptions::new()).await;
    let (sender, response) = fed_response(false);
    let mut body = setup.open(None, false, response).await;
    assert_flows(&sender, &mut body).await;

    setup.revoke().await;
    // Nothing more is sent: only the revoke can end it.
    assert!(next(&mut body).await.is_none(), "the body ended");
    assert_eq!(setup.layer.metrics().streams_ended, 1);
}

#[tokio::test]
async fn an_idle_grpc_stream_ends_with_unauthenticated_trailers() {
    let setup = Setup::new(true, KeyOptions::new()).await;
    let (sender, response) = fed_response(true);
    let mut body = setup.open(None, true, response).await;
    assert_flows(&sender, &mut body).await;

    setup
        .manager
        .delete(&account("acme"), setup.id)
        .await
        .expect("delete");
    let ended = ending_status(&mut body).await;
    assert_eq!(ended, ("16".to_owned(), "invalid API key".to_owned()));
    assert!(next(&mut body).await.is_none(), "then the end");
}

#[tokio::test]
async fn a_narrower_scope_set_ends_a_stream_only_without_the_routes_scope() {
    let options = KeyOptions::new().scopes(Scopes::new(["read", "write"]).unwrap());
    let setup = Setup::new(true, options).await;
    let (sender, response) = fed_response(true);
    let mut body = setup.open(Some("read"), true, response).await;
    assert_flows(&sender, &mut body).await;

    // Still holds `read`: goes on.
    setup
        .update(PolicyUpdate::new().scopes(Some(Scopes::new(["read"]).unwrap())))
        .await;
    assert_flows(&sender, &mut body).await;

    // Without `read`, a new call would get 403 / PERMISSION_DENIED: so does this one.
    setup
        .update(PolicyUpdate::new().scopes(Some(Scopes::new(["write"]).unwrap())))
        .await;
    let ended = ending_status(&mut body).await;
    assert_eq!(ended, ("7".to_owned(), "insufficient scope".to_owned()));
}

#[tokio::test]
async fn invalidating_everything_ends_nothing_that_is_still_valid() {
    // What a change feed does when it subscribes again: every cache forgets everything.
    let setup = Setup::new(true, KeyOptions::new()).await;
    let (sender, response) = fed_response(false);
    let mut body = setup.open(None, false, response).await;
    assert_flows(&sender, &mut body).await;
    for _ in 0..3 {
        setup.manager.invalidation_bus().publish(Invalidation::All);
        assert_flows(&sender, &mut body).await;
    }
    assert_eq!(setup.layer.metrics().streams_ended, 0);
}

#[tokio::test]
async fn a_layer_built_not_to_end_streams_leaves_them_open() {
    let setup = Setup::new(false, KeyOptions::new()).await;
    let (sender, response) = fed_response(false);
    let mut body = setup.open(None, false, response).await;
    setup.revoke().await;
    assert_flows(&sender, &mut body).await;
}

#[tokio::test]
async fn a_body_that_never_waits_is_watched_too() {
    let setup = Setup::new(true, KeyOptions::new()).await;
    let mut body = setup.open(None, false, Response::new(Endless)).await;
    for _ in 0..100 {
        assert!(next(&mut body).await.is_some());
    }
    setup.revoke().await;
    // Ended before the next frame: the revoke woke it between frames, and no frame goes out
    // while the key is being checked again.
    assert!(next(&mut body).await.is_none());
}

#[tokio::test]
async fn a_small_answer_of_known_size_is_never_cut() {
    let setup = Setup::new(true, KeyOptions::new()).await;
    let answer = Response::new(Full::new(Bytes::from_static(b"pong")));
    let mut body = setup.open(None, false, answer).await;
    // Revoked after the answer was made: what was answered is delivered whole.
    setup.revoke().await;
    let frame = next(&mut body).await.expect("the data");
    assert_eq!(frame.into_data().unwrap(), "pong");
    assert!(next(&mut body).await.is_none());
    assert_eq!(setup.layer.metrics().streams_ended, 0);
}

/// Polls the body once while nothing is sent, so that its guard enters the register.
async fn idle(body: &mut Streamed) {
    std::future::poll_fn(|cx| {
        assert!(Pin::new(&mut *body).poll_frame(cx).is_pending(), "idle");
        Poll::Ready(())
    })
    .await;
}

#[tokio::test]
async fn a_grpc_body_that_sent_its_own_trailers_gets_no_second() {
    let setup = Setup::new(true, KeyOptions::new()).await;
    let (sender, response) = fed_response(true);
    let mut body = setup.open(None, true, response).await;
    assert_flows(&sender, &mut body).await;
    let mut ok = HeaderMap::new();
    ok.insert("grpc-status", HeaderValue::from_static("0"));
    sender.send(Frame::trailers(ok)).expect("the body is read");
    let trailers = next(&mut body).await.expect("trailers");
    assert_eq!(
        trailers.into_trailers().expect("trailers")["grpc-status"],
        "0"
    );

    // The body is over (trailers come last), though its sender lives on: a revoke now must
    // not add trailers that would override the call's own status.
    setup.revoke().await;
    assert!(
        next(&mut body).await.is_none(),
        "nothing after the trailers"
    );
}

#[tokio::test]
async fn invalidating_through_the_layer_reaches_open_streams() {
    // A change made to the store behind the manager's back (another manager, another bus).
    let store = Arc::new(MemoryStore::new());
    let manager = KeyManager::new(store.clone(), pepper());
    let layer = ApiKeyLayer::for_manager(&manager).build();
    let created = manager.create(&account("acme")).await.expect("create");
    let (sender, response) = fed_response(false);
    let mut body = open(&layer, None, created.key.expose_secret(), false, response).await;
    assert_flows(&sender, &mut body).await;
    idle(&mut body).await;

    let other = KeyManager::new(store, pepper());
    other
        .revoke(&account("acme"), created.info.id)
        .await
        .expect("revoke");
    layer.invalidate(&Invalidation::Key(pepper().digest(&created.key)));
    assert!(next(&mut body).await.is_none(), "the body ended");
}

#[tokio::test]
async fn a_key_given_an_allowlist_after_its_stream_started_ends_it() {
    // The client's address is kept only for a key that had an allowlist when the stream
    // started (keeping it for every request would cost every answer): an allowlist added
    // later can't be checked against this stream, which ends, as a request from an address
    // the layer can't tell would be refused. Documented in `stream`.
    let setup = Setup::new(true, KeyOptions::new()).await;
    let (sender, response) = fed_response(true);
    let mut body = setup.open(None, true, response).await;
    assert_flows(&sender, &mut body).await;
    idle(&mut body).await;
    let allowed = AllowedIps::new(["127.0.0.0/8"]).expect("blocks");
    setup
        .update(PolicyUpdate::new().allowed_ips(Some(allowed)))
        .await;
    let ended = ending_status(&mut body).await;
    assert_eq!(ended, ("7".to_owned(), "address not allowed".to_owned()));
}
