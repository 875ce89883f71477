//! [`ApiKeyService`]: the middleware itself. What it decides for each request is worked out
//! by the crate's private gatekeeper, and [`ResponseFuture`] carries the decision out; this
//! module only wires the two into tower.

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use tower_service::Service;

use crate::body::ResponseBody;
use crate::future::{Ready, ResponseFuture};
use crate::gatekeeper::Gatekeeper;
use crate::resolver::Resolver;

/// Authenticates every request by its API-key header before calling the inner service.
///
/// Built by [`ApiKeyLayer`](crate::ApiKeyLayer). An accepted request reaches the inner
/// service with [`Authenticated<R::Account>`](crate::Authenticated) in its extensions; a refused one
/// is answered by the layer (see [`Rejection`](crate::Rejection)) and never reaches it. The error type is the
/// inner service's: refusals are responses, not errors.
///
/// Spaces and tabs around the header value are trimmed before the key is parsed, whatever
/// the protocol (HTTP/1.1 servers already strip them; HTTP/2 delivers them as sent); nothing
/// else is: a blank inside the key, or any other byte around it, makes it invalid.
pub struct ApiKeyService<S, R: Resolver> {
    inner: S,
    gatekeeper: Arc<Gatekeeper<R>>,
}

impl<S, R: Resolver> ApiKeyService<S, R> {
    pub(crate) fn new(inner: S, gatekeeper: Arc<Gatekeeper<R>>) -> Self {
        Self { inner, gatekeeper }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: Clone, R: Resolver> Clone for ApiKeyService<S, R> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            gatekeeper: Arc::clone(&self.gatekeeper),
        }
    }
}

impl<S: fmt::Debug, R: Resolver> fmt::Debug for ApiKeyService<S, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiKeyService")
            .field("inner", &self.inner)
            .field("gatekeeper", &self.gatekeeper)
            .finish()
    }
}

impl<S, R, B, ResBody> Service<Request<B>> for ApiKeyService<S, R>
where
    S: Service<Request<B>, Response = Response<ResBody>> + Clone,
    ResBody: http_body::Body,
    R: Resolver,
{
    type Response = Response<ResponseBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S, B, R>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let decision = self
            .gatekeeper
            .decide(request.headers(), request.extensions());
        // Called now or later, the inner service is the one `poll_ready` prepared.
        ResponseFuture::start(
            decision,
            Ready::InService(&mut self.inner),
            request,
            &self.gatekeeper,
        )
    }
}
