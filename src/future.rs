//! [`ResponseFuture`]: the state machine of one request through
//! [`ApiKeyService`](crate::ApiKeyService).
//!
//! ```text
//! cache hit ───────────────────────────────► Called ──► inner response
//! cache miss ──► Resolving ──(found)────────► Called
//!                    └──────(refused/failed)─► Rejected ──► the layer's answer
//! bad key, address, over the rate limit or quota ─► Rejected
//! limit or quota kept elsewhere ──► Throttling ──(allowed)──► Called
//!                                       └───(limited)──► Rejected
//! ```
//!
//! A found key may also go through `Throttling` when its rate limit or quota is kept
//! elsewhere (one wait for each).
//!
//! Every state is entered from a gatekeeper decision through one function, `State::start`:
//! the service's `call` starts the future from its decision, and a finished lookup or
//! verdict starts the next state from the decision it leads to.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Instant;

use bytes::Bytes;
use futures_util::FutureExt;
use http::{Request, Response};
use pin_project_lite::pin_project;
use tower_service::Service;

use crate::authenticated::Authenticated;
use crate::body::ResponseBody;
use crate::cache::PendingResolution;
use crate::gatekeeper::{Decision, Gatekeeper, Origin, Wait};
use crate::rate_limit::{self, Budget};
use crate::resolver::Resolver;
use crate::stream::Ticket;

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
            // The key's rate-limit budget, for the response's header fields.
            budget: Option<Budget>,
            // What the response needs to end when its key stops letting it through.
            ticket: Option<Ticket>,
        },
        Rejected {
            response: Option<Response<Bytes>>,
        },
        Resolving {
            lookup: PendingResolution<R::Account>,
            // Boxed: a request is a few hundred bytes, and every future of this type (the
            // hits' too) would be that much bigger to move around.
            waiting: Option<Box<(S, Request<B>)>>,
            gatekeeper: Arc<Gatekeeper<R>>,
        },
        Throttling {
            // Boxed too: a state only keys with a remote limit reach shouldn't make every
            // future bigger.
            throttled: Option<Box<Throttled<S, B, R::Account>>>,
            gatekeeper: Arc<Gatekeeper<R>>,
        },
    }
}

/// A request waiting for the rate limiter's or the quota's verdict on its account.
struct Throttled<S, B, A> {
    verdict: Wait,
    account: Arc<A>,
    origin: Origin,
    inner: S,
    request: Request<B>,
}

/// The inner service that `poll_ready` prepared: still in the service (a decision made in
/// `call`), or held by the future (a decision made after waiting).
pub(crate) enum Ready<'a, S> {
    InService(&'a mut S),
    Held(S),
}

impl<S: Clone> Ready<'_, S> {
    #[inline]
    fn call<B>(self, request: Request<B>) -> S::Future
    where
        S: Service<Request<B>>,
    {
        match self {
            Self::InService(inner) => inner.call(request),
            Self::Held(mut inner) => inner.call(request),
        }
    }

    /// The ready service, to call later. Taken out of the service, a clone left in its
    /// place: the clone may not be ready, and calling it instead would break its
    /// backpressure.
    fn hold(self) -> S {
        match self {
            Self::InService(inner) => {
                let clone = inner.clone();
                std::mem::replace(inner, clone)
            }
            Self::Held(inner) => inner,
        }
    }
}

impl<S, B, R> ResponseFuture<S, B, R>
where
    S: Service<Request<B>> + Clone,
    R: Resolver,
{
    /// The future that carries out `decision` with the `ready` inner service.
    #[inline]
    pub(crate) fn start(
        decision: Decision<R::Account>,
        ready: Ready<'_, S>,
        request: Request<B>,
        gatekeeper: &Arc<Gatekeeper<R>>,
    ) -> Self {
        Self {
            state: State::start(decision, ready, request, gatekeeper),
        }
    }
}

impl<S, B, R> State<S, B, R>
where
    S: Service<Request<B>> + Clone,
    R: Resolver,
{
    /// The one place a decision becomes a state.
    #[inline]
    fn start(
        decision: Decision<R::Account>,
        ready: Ready<'_, S>,
        mut request: Request<B>,
        gatekeeper: &Arc<Gatekeeper<R>>,
    ) -> Self {
        // Whatever lets the request go on (now or after waiting) hides the key from the
        // inner service first; a refusal is answered from the headers as they came.
        if !matches!(
            decision,
            Decision::Reject(_) | Decision::OverLimit(_) | Decision::OverQuota(..)
        ) {
            gatekeeper.sources.strip(request.headers_mut());
        }
        match decision {
            Decision::Accept(account, budget) => {
                let ticket = gatekeeper.ticket(&account, (request.headers(), request.extensions()));
                request
                    .extensions_mut()
                    .insert(Authenticated::from_arc(account));
                State::Called {
                    future: ready.call(request),
                    budget,
                    ticket,
                }
            }
            Decision::Anonymous => State::Called {
                future: ready.call(request),
                budget: None,
                ticket: None,
            },
            // The inner service stays ready for the next request: it was not called.
            Decision::Reject(rejection) => State::Rejected {
                response: Some(gatekeeper.reject(rejection, &request)),
            },
            Decision::OverLimit(budget) => State::Rejected {
                response: Some(gatekeeper.over_limit(&budget, &request)),
            },
            Decision::OverQuota(retry_after, budget) => State::Rejected {
                response: Some(gatekeeper.over_quota(retry_after, budget.as_ref(), &request)),
            },
            Decision::Resolve(lookup) => State::Resolving {
                lookup,
                waiting: Some(Box::new((ready.hold(), request))),
                gatekeeper: Arc::clone(gatekeeper),
            },
            Decision::Throttle(account, verdict, origin) => State::Throttling {
                throttled: Some(Box::new(Throttled {
                    verdict,
                    account,
                    origin,
                    inner: ready.hold(),
                    request,
                })),
                gatekeeper: Arc::clone(gatekeeper),
            },
        }
    }
}

impl<S, B, R, ResBody> Future for ResponseFuture<S, B, R>
where
    S: Service<Request<B>, Response = Response<ResBody>> + Clone,
    ResBody: http_body::Body,
    R: Resolver,
{
    type Output = Result<Response<ResponseBody<ResBody>>, S::Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            let next = match self.as_mut().project().state.project() {
                StateProj::Called {
                    future,
                    budget,
                    ticket,
                } => {
                    let mut response = ready!(future.poll(cx))?;
                    if let Some(budget) = budget {
                        rate_limit::insert_budget(response.headers_mut(), budget);
                    }
                    let guard = ticket.take().and_then(|ticket| ticket.guard(&mut response));
                    return Poll::Ready(Ok(match guard {
                        None => response.map(ResponseBody::inner),
                        Some(guard) => response.map(|body| ResponseBody::guarded(body, guard)),
                    }));
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
                    let (inner, request) = *waiting
                        .take()
                        .expect("ResponseFuture polled after completion");
                    let decision =
                        gatekeeper.conclude(outcome, (request.headers(), request.extensions()));
                    State::start(decision, Ready::Held(inner), request, gatekeeper)
                }
                StateProj::Throttling {
                    throttled,
                    gatekeeper,
                } => {
                    let waiting = throttled
                        .as_mut()
                        .expect("ResponseFuture polled after completion");
                    // Polled to its end before the box is taken apart.
                    let waited = ready!(waiting.verdict.poll(cx));
                    let Throttled {
                        account,
                        origin,
                        inner,
                        request,
                        ..
                    } = *throttled.take().expect("checked above");
                    let decision = gatekeeper.resume(waited, account, origin, Instant::now());
                    State::start(decision, Ready::Held(inner), request, gatekeeper)
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
            State::Throttling { .. } => "Throttling",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .finish()
    }
}
