//! [`AxumApiKeyLayer`] (feature `axum`): [`ApiKeyLayer`] for axum routers, answering with
//! axum's own [`Body`] so that axum doesn't box the response body a second time.
//!
//! A plain [`ApiKeyLayer`] works in any tower stack because its response body is generic
//! ([`ResponseBody<B>`](crate::body::ResponseBody)); axum then wraps that body into its
//! `Body`, one allocation per response. Around axum services, whose bodies already are
//! `Body`, this variant hands the inner body through untouched and builds its own answers
//! as `Body`: same decisions, same answers, one allocation fewer.
//!
//! ```
//! use std::sync::Arc;
//! use axum::{Router, routing::get};
//! use tower_api_key::{ApiKeyLayer, KeyManager, MemoryStore, Pepper};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let manager = KeyManager::new(Arc::new(MemoryStore::new()), Pepper::random()?);
//! let app: Router = Router::new()
//!     .route("/v1/ping", get(|| async { "pong" }))
//!     .route_layer(ApiKeyLayer::for_manager(&manager).build().for_axum());
//! # let _ = app;
//! # Ok(())
//! # }
//! ```

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use axum_core::body::Body;
use http::{Request, Response};
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use crate::future::ResponseFuture;
use crate::layer::ApiKeyLayer;
use crate::resolver::Resolver;
use crate::service::ApiKeyService;

/// [`ApiKeyLayer`] answering with axum's [`Body`]; made by [`ApiKeyLayer::for_axum`].
pub struct AxumApiKeyLayer<R: Resolver> {
    layer: ApiKeyLayer<R>,
}

impl<R: Resolver> ApiKeyLayer<R> {
    /// This layer for axum routers: the inner service's axum `Body` passes through and the
    /// layer's own answers are built as `Body`, which saves axum boxing every response body
    /// again. Shares the cache and counters with `self`.
    pub fn for_axum(self) -> AxumApiKeyLayer<R> {
        AxumApiKeyLayer { layer: self }
    }
}

impl<R: Resolver> AxumApiKeyLayer<R> {
    /// The layer this one wraps (for its metrics and cache).
    pub fn get_ref(&self) -> &ApiKeyLayer<R> {
        &self.layer
    }
}

impl<R: Resolver> Clone for AxumApiKeyLayer<R> {
    fn clone(&self) -> Self {
        Self {
            layer: self.layer.clone(),
        }
    }
}

impl<R: Resolver> fmt::Debug for AxumApiKeyLayer<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("AxumApiKeyLayer").field(&self.layer).finish()
    }
}

impl<S, R: Resolver> Layer<S> for AxumApiKeyLayer<R> {
    type Service = AxumApiKeyService<S, R>;

    fn layer(&self, inner: S) -> Self::Service {
        AxumApiKeyService {
            service: self.layer.layer(inner),
        }
    }
}

/// The middleware of [`AxumApiKeyLayer`]: [`ApiKeyService`] with axum's body.
pub struct AxumApiKeyService<S, R: Resolver> {
    service: ApiKeyService<S, R>,
}

impl<S: Clone, R: Resolver> Clone for AxumApiKeyService<S, R> {
    fn clone(&self) -> Self {
        Self {
            service: self.service.clone(),
        }
    }
}

impl<S: fmt::Debug, R: Resolver> fmt::Debug for AxumApiKeyService<S, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("AxumApiKeyService")
            .field(&self.service)
            .finish()
    }
}

impl<S, R, B> Service<Request<B>> for AxumApiKeyService<S, R>
where
    S: Service<Request<B>, Response = Response<Body>> + Clone,
    R: Resolver,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = AxumResponseFuture<S, B, R>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.service.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        AxumResponseFuture {
            future: self.service.call(request),
        }
    }
}

pin_project! {
    /// Response future of [`AxumApiKeyService`].
    pub struct AxumResponseFuture<S, B, R>
    where
        S: Service<Request<B>>,
        R: Resolver,
    {
        #[pin]
        future: ResponseFuture<S, B, R>,
    }
}

impl<S, B, R> Future for AxumResponseFuture<S, B, R>
where
    S: Service<Request<B>, Response = Response<Body>> + Clone,
    R: Resolver,
{
    type Output = Result<Response<Body>, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let response = ready!(self.project().future.poll(cx))?;
        Poll::Ready(Ok(response.map(|body| body.into_axum())))
    }
}

impl<S, B, R> fmt::Debug for AxumResponseFuture<S, B, R>
where
    S: Service<Request<B>>,
    R: Resolver,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AxumResponseFuture").finish_non_exhaustive()
    }
}
