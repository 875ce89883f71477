//! [`ResponseFuture`]: the state machine of one request through
//! [`ApiKeyService`](crate::ApiKeyService).
//!
//! ```text
//! cache hit ───────────────────────────────► Called ──► inner response
//! cache miss ──► Resolving ──(found)────────► Called
//!                    └──────(refused/failed)─► Rejected ──► the layer's answer
//! bad key ─────────────────────────────────► Rejected
//! ```

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use futures_util::FutureExt;
use http::{Request, Response};
use pin_project_lite::pin_project;
use tower_service::Service;

use crate::authenticated::Authenticated;
use crate::body::ResponseBody;
use crate::cache::PendingLookup;
use crate::gatekeeper::Gatekeeper;
use crate::resolver::Resolver;

pin_project! {
    /// Response future of [`ApiKeyService`](crate::ApiKeyService).
    ///
    /// On a cache hit it is the inner service's future and nothing else; only a cache miss
    /// holds the request and the ready inner service until the lookup answers.
    pub struct ResponseFuture<S, B, R>
    where
        S: Service<Request<B>>,
        R: Resolver,
    {
        #[pin]
        state: State<S, B, R>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, B, R>
    where
        S: Service<Request<B>>,
        R: Resolver,
    {
        Called {
            #[pin]
            future: S::Future,
        },
        Rejected {
            response: Option<Response<Bytes>>,
        },
        Resolving {
            lookup: PendingLookup<R::Account>,
            // Boxed: a request is a few hundred bytes, and every future of this type (the
            // hits' too) would be that much bigger to move around.
            waiting: Option<Box<(S, Request<B>)>>,
            gatekeeper: Arc<Gatekeeper<R>>,
        },
    }
}

impl<S, B, R> ResponseFuture<S, B, R>
where
    S: Service<Request<B>>,
    R: Resolver,
{
    pub(crate) fn called(future: S::Future) -> Self {
        Self {
            state: State::Called { future },
        }
    }

    pub(crate) fn rejected(response: Response<Bytes>) -> Self {
        Self {
            state: State::Rejected {
                response: Some(response),
            },
        }
    }

    pub(crate) fn resolving(
        lookup: PendingLookup<R::Account>,
        ready_inner: S,
        request: Request<B>,
        gatekeeper: Arc<Gatekeeper<R>>,
    ) -> Self {
        Self {
            state: State::Resolving {
                lookup,
                waiting: Some(Box::new((ready_inner, request))),
                gatekeeper,
            },
        }
    }
}

impl<S, B, R, ResBody> Future for ResponseFuture<S, B, R>
where
    S: Service<Request<B>, Response = Response<ResBody>>,
    R: Resolver,
{
    type Output = Result<Response<ResponseBody<ResBody>>, S::Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            let next = match self.as_mut().project().state.project() {
                StateProj::Called { future } => {
                    let response = ready!(future.poll(cx))?;
                    return Poll::Ready(Ok(response.map(ResponseBody::inner)));
                }
                StateProj::Rejected { response } => {
                    let response = response
                        .take()
                        .expect("ResponseFuture polled after completion");
                    return Poll::Ready(Ok(response.map(ResponseBody::rejection)));
                }
                StateProj::Resolving {
                    lookup,
                    waiting,
                    gatekeeper,
                } => {
                    let outcome = ready!(lookup.poll_unpin(cx));
                    let (mut inner, mut request) = *waiting
                        .take()
                        .expect("ResponseFuture polled after completion");
                    match gatekeeper.conclude(outcome) {
                        Ok(account) => {
                            request
                                .extensions_mut()
                                .insert(Authenticated::from_arc(account));
                            State::Called {
                                future: inner.call(request),
                            }
                        }
                        Err(rejection) => State::Rejected {
                            response: Some(gatekeeper.reject(rejection, &request)),
                        },
                    }
                }
            };
            self.as_mut().project().state.set(next);
        }
    }
}

impl<S, B, R> std::fmt::Debug for ResponseFuture<S, B, R>
where
    S: Service<Request<B>>,
    R: Resolver,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = match &self.state {
            State::Called { .. } => "Called",
            State::Rejected { .. } => "Rejected",
            State::Resolving { .. } => "Resolving",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .finish()
    }
}
