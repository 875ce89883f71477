//! The layer over a trivial inner service, driven in process.

use std::convert::Infallible;
use std::future::Ready;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::Empty;
use tower::{Layer as _, Service, ServiceExt as _, service_fn};
use tower_api_key::{ApiKeyLayer, ApiKeyService, StoreResolver};

/// The inner service's type: a plain function, so a stack can be named and stored.
pub(crate) type Inner =
    tower::util::ServiceFn<fn(Request<()>) -> Ready<Result<Response<Empty<Bytes>>, Infallible>>>;

/// The layer over [`ok`].
pub(crate) type Stack = ApiKeyService<Inner, StoreResolver>;

/// The inner service: 200, empty.
pub(crate) fn ok(_: Request<()>) -> Ready<Result<Response<Empty<Bytes>>, Infallible>> {
    std::future::ready(Ok(Response::new(Empty::new())))
}

/// `layer` over [`ok`].
pub(crate) fn stack(layer: &ApiKeyLayer<StoreResolver>) -> Stack {
    layer.layer(service_fn(ok as fn(_) -> _))
}

/// The status of a `GET /` with `key` (any bytes a header value may hold) as `x-api-key`.
pub(crate) async fn status<S, B>(service: &S, key: impl AsRef<[u8]>) -> StatusCode
where
    S: Service<Request<()>, Response = Response<B>, Error = Infallible> + Clone,
{
    let mut request = Request::get("/").body(()).expect("request");
    request.headers_mut().insert(
        "x-api-key",
        HeaderValue::from_bytes(key.as_ref()).expect("a header value"),
    );
    service
        .clone()
        .oneshot(request)
        .await
        .expect("infallible")
        .status()
}
