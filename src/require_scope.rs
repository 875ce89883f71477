//! [`RequireScopeLayer`]: lets a request through only if its authenticated account holds a
//! scope, for routes and services that need more than a valid key.
//!
//! It reads the [`Authenticated<A>`] that [`ApiKeyLayer`](crate::ApiKeyLayer) put into the
//! request's extensions, so it goes *inside* that layer (closer to the handler). The answers:
//!
//! | request | HTTP | gRPC |
//! | --- | --- | --- |
//! | account holds the scope | the inner service's | the inner service's |
//! | account lacks it | 403 `{"error":"insufficient scope"}` | `grpc-status: 7` |
//! | no authenticated account (optional mode, no key) | 401 `{"error":"missing API key"}` | `grpc-status: 16` |
//!
//! Scopes restrict only the routes behind this layer: a route without it accepts every valid
//! key, whatever the key's scopes (a key restricted to `read` still gets `GET /v1/ping`
//! below). A key with an empty scope set passes no route behind this layer at all; a key
//! without scopes (unrestricted) passes every one.
//!
//! ```
//! use std::sync::Arc;
//! use axum::{Router, routing::{get, post}};
//! use tower_api_key::{ApiKeyLayer, KeyIdentity, KeyManager, MemoryStore, Pepper, RequireScopeLayer};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let manager = KeyManager::new(Arc::new(MemoryStore::new()), Pepper::random()?);
//! let app: Router = Router::new()
//!     .route("/v1/write", post(|| async { "written" }))
//!     // Only keys that are unrestricted or list `write`; others get 403.
//!     .route_layer(RequireScopeLayer::<KeyIdentity>::new("write"))
//!     .route("/v1/read", get(|| async { "read" }))
//!     .layer(ApiKeyLayer::for_manager(&manager).build());
//! # let _ = app;
//! # Ok(())
//! # }
//! ```

use std::any::Any;
use std::borrow::Cow;
use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Instant;

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use crate::account::Account;
use crate::authenticated::Authenticated;
use crate::body::ResponseBody;
use crate::policy::Scoped;
use crate::rejection::Rejection;
use crate::stream::{self, RequiredScope, RequiredScopes, ScopeName};
use crate::usage::UseOutcome;

/// Requires the authenticated account (of type `A`) to hold one scope; see the
/// [module docs](self).
pub struct RequireScopeLayer<A> {
    scope: Cow<'static, str>,
    _account: PhantomData<fn() -> A>,
}

impl<A: Scoped + Account + Send + Sync + 'static> RequireScopeLayer<A> {
    /// Requires `scope`.
    pub fn new(scope: impl Into<Cow<'static, str>>) -> Self {
        Self {
            scope: scope.into(),
            _account: PhantomData,
        }
    }

    /// The scope required.
    pub fn scope(&self) -> &str {
        &self.scope
    }
}

impl<A> Clone for RequireScopeLayer<A> {
    fn clone(&self) -> Self {
        Self {
            scope: self.scope.clone(),
            _account: PhantomData,
        }
    }
}

impl<A> fmt::Debug for RequireScopeLayer<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RequireScopeLayer")
            .field("scope", &self.scope)
            .finish()
    }
}

impl<S, A> Layer<S> for RequireScopeLayer<A> {
    type Service = RequireScope<S, A>;

    fn layer(&self, inner: S) -> Self::Service {
        RequireScope {
            inner,
            scope: ScopeName::from(self.scope.clone()),
            _account: PhantomData,
        }
    }
}

/// The middleware of [`RequireScopeLayer`].
pub struct RequireScope<S, A> {
    inner: S,
    scope: ScopeName,
    _account: PhantomData<fn() -> A>,
}

impl<S: Clone, A> Clone for RequireScope<S, A> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            scope: self.scope.clone(),
            _account: PhantomData,
        }
    }
}

impl<S: fmt::Debug, A> fmt::Debug for RequireScope<S, A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RequireScope")
            .field("inner", &self.inner)
            .field("scope", &&*self.scope)
            .finish()
    }
}

impl<S, A, B, ResBody> Service<Request<B>> for RequireScope<S, A>
where
    S: Service<Request<B>, Response = Response<ResBody>>,
    ResBody: Body,
    A: Scoped + Account + Send + Sync + 'static,
{
    type Response = Response<ResponseBody<ResBody>>;
    type Error = S::Error;
    type Future = ScopeFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let refusal = match request.extensions().get::<Authenticated<A>>() {
            Some(account) if account.has_scope(&self.scope) => None,
            Some(account) => {
                // Let in by the key layer, refused here: counted as refused instead.
                account.record_use(Instant::now(), UseOutcome::RefusedForScope);
                tracing::debug!(scope = %&*self.scope, "api key rejected: insufficient scope");
                Some(Rejection::InsufficientScope)
            }
            None => Some(Rejection::MissingKey),
        };
        match refusal {
            None => ScopeFuture {
                state: State::Called {
                    future: self.inner.call(request),
                    scope: Some(RequiredScope::new(self.scope.clone(), holds::<A>)),
                },
            },
            Some(rejection) => ScopeFuture {
                state: State::Refused {
                    response: Some(rejection.response_for(request.headers())),
                },
            },
        }
    }
}

pin_project! {
    /// Response future of [`RequireScope`]: the inner service's future, or the refusal.
    pub struct ScopeFuture<F> {
        #[pin]
        state: State<F>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F> {
        Called {
            #[pin]
            future: F,
            // Left on a response that may stay open, for the key layer's later checks.
            scope: Option<RequiredScope>,
        },
        Refused {
            response: Option<Response<Bytes>>,
        },
    }
}

impl<F, ResBody, E> Future for ScopeFuture<F>
where
    F: Future<Output = Result<Response<ResBody>, E>>,
    ResBody: Body,
{
    type Output = Result<Response<ResponseBody<ResBody>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Called { future, scope } => {
                let mut response = ready!(future.poll(cx))?;
                if let Some(scope) = scope.take() {
                    if stream::may_stream(response.body()) {
                        leave_scope(&mut response, scope);
                    }
                }
                Poll::Ready(Ok(response.map(ResponseBody::inner)))
            }
            StateProj::Refused { response } => {
                let response = response
                    .take()
                    .expect("ScopeFuture polled after completion");
                Poll::Ready(Ok(response.map(ResponseBody::rejection)))
            }
        }
    }
}

/// Whether `account` (an `A`) holds `scope`.
fn holds<A: Scoped + 'static>(account: &(dyn Any + Send + Sync), scope: &str) -> bool {
    account
        .downcast_ref::<A>()
        .is_some_and(|account| account.has_scope(scope))
}

/// Leaves the scope on a response that may stay open: the key layer checks it again
/// whenever the key changes (see [`stream`](crate::stream)).
#[cold]
fn leave_scope<B>(response: &mut Response<B>, scope: RequiredScope) {
    let extensions = response.extensions_mut();
    match extensions.get_mut::<RequiredScopes>() {
        Some(scopes) => scopes.0.push(scope),
        None => {
            extensions.insert(RequiredScopes(vec![scope]));
        }
    }
}

impl<F> fmt::Debug for ScopeFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            State::Called { .. } => "Called",
            State::Refused { .. } => "Refused",
        };
        f.debug_tuple("ScopeFuture").field(&state).finish()
    }
}
