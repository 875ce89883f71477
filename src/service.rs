//! [`ApiKeyService`]: the middleware itself. What it decides for each request is worked out
//! by the crate's private gatekeeper; this module only wires that decision into tower.

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use tower_service::Service;

use crate::authenticated::Authenticated;
use crate::body::ResponseBody;
use crate::future::ResponseFuture;
use crate::gatekeeper::{Decision, Gatekeeper};
use crate::resolver::Resolver;

/// Authenticates every request by its API-key header before calling the inner service.
///
/// Built by [`ApiKeyLayer`](crate::ApiKeyLayer). An accepted request reaches the inner
/// service with [`Authenticated<R::Account>`](Authenticated) in its extensions; a refused one
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
    R: Resolver,
{
    type Response = Response<ResponseBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S, B, R>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        match self.gatekeeper.decide(request.headers()) {
            Decision::Accept(account, budget) => {
                self.gatekeeper.sources.strip(request.headers_mut());
                request
                    .extensions_mut()
                    .insert(Authenticated::from_arc(account));
                // Called now, before `call` returns: the service `poll_ready` prepared is
                // the one called, with no clone needed.
                ResponseFuture::called(self.inner.call(request), budget)
            }
            Decision::Anonymous => {
                self.gatekeeper.sources.strip(request.headers_mut());
                ResponseFuture::called(self.inner.call(request), None)
            }
            // The inner service stays ready for the next request: it was not called.
            Decision::Reject(rejection) => {
                ResponseFuture::rejected(self.gatekeeper.reject(rejection, &request))
            }
            Decision::Limited(budget) => {
                ResponseFuture::rejected(self.gatekeeper.over_limit(&budget, &request))
            }
            waiting @ (Decision::Lookup(_) | Decision::Throttle(..)) => {
                self.gatekeeper.sources.strip(request.headers_mut());
                ResponseFuture::waiting(
                    waiting,
                    take_ready(&mut self.inner),
                    request,
                    Arc::clone(&self.gatekeeper),
                )
            }
        }
    }
}

/// Takes the inner service that `poll_ready` prepared and leaves a clone in its place, for a
/// call made later (after the lookup): the clone may not be ready, and calling it instead
/// would break its backpressure.
fn take_ready<S: Clone>(inner: &mut S) -> S {
    let clone = inner.clone();
    std::mem::replace(inner, clone)
}
