//! The layer's response body: the inner service's body, or the bytes of a rejection.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use crate::stream::Guard;

pin_project! {
    /// The response body of [`ApiKeyService`](crate::ApiKeyService): the inner service's
    /// body when the request got through, the layer's own answer when it did not.
    ///
    /// Being generic over the inner body is what lets one layer serve axum, tonic and hyper.
    /// A response that may stay open ends early when its key stops letting it through (see
    /// [`stream`](crate::stream)).
    #[derive(Debug)]
    pub struct ResponseBody<B> {
        #[pin]
        kind: Kind<B>,
    }
}

pin_project! {
    #[project = KindProj]
    #[derive(Debug)]
    enum Kind<B> {
        Inner { #[pin] body: B },
        // Boxed: only responses that may stay open have one.
        Guarded { #[pin] body: B, guard: Box<Guard> },
        Rejection { data: Option<Bytes> },
    }
}

impl<B> ResponseBody<B> {
    /// Wraps the inner service's body.
    pub fn inner(body: B) -> Self {
        Self {
            kind: Kind::Inner { body },
        }
    }

    /// The inner service's body, ended early if its key stops letting it through.
    pub(crate) fn guarded(body: B, guard: Box<Guard>) -> Self {
        Self {
            kind: Kind::Guarded { body, guard },
        }
    }

    /// A body of the layer's own: `data` in one frame (none if empty).
    pub fn rejection(data: Bytes) -> Self {
        let data = (!data.is_empty()).then_some(data);
        Self {
            kind: Kind::Rejection { data },
        }
    }
}

#[cfg(feature = "axum")]
impl ResponseBody<axum_core::body::Body> {
    /// The inner axum body as it is, or the rejection's bytes as an axum body: no boxing,
    /// except for a response that may stay open, which keeps its guard.
    pub(crate) fn into_axum(self) -> axum_core::body::Body {
        match self.kind {
            Kind::Inner { body } => body,
            kind @ Kind::Guarded { .. } => axum_core::body::Body::new(Self { kind }),
            Kind::Rejection { data } => axum_core::body::Body::from(data.unwrap_or_default()),
        }
    }
}

impl<B> Body for ResponseBody<B>
where
    B: Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match self.project().kind.project() {
            KindProj::Inner { body } => body.poll_frame(cx),
            KindProj::Guarded { body, guard } => guard.poll_frame(body, cx),
            KindProj::Rejection { data } => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Inner { body } => body.is_end_stream(),
            Kind::Guarded { body, guard } => guard.is_ended() || body.is_end_stream(),
            Kind::Rejection { data } => data.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Inner { body } => body.size_hint(),
            Kind::Guarded { body, guard } => {
                if guard.is_ended() {
                    SizeHint::with_exact(0)
                } else {
                    body.size_hint()
                }
            }
            Kind::Rejection { data } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
        }
    }
}
