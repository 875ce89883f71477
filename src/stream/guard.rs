//! [`Guard`]: one open response's watch over its key, from its first wait on the inner body
//! to its end.

use std::any::Any;
use std::borrow::Cow;
use std::fmt;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::SystemTime;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::Response;
use http_body::{Body, Frame};

use super::check::{Authority, Check, Standing};
use super::layers::{self, LayerNumber};
use super::watch::Registration;
use crate::key::{KeyDigest, KeyPrefix};
use crate::rejection::{self, Rejection};

/// A response whose size is known and at most this is written at once: it is not watched.
pub(crate) const SMALL_BODY: u64 = 64 * 1024;

/// Whether a response with this body may stay open: its size is unknown, or more than
/// [`SMALL_BODY`]. One `size_hint` call: all a unary answer pays.
#[inline]
pub(crate) fn may_stream<B: Body>(body: &B) -> bool {
    body.size_hint()
        .exact()
        .is_none_or(|size| size > SMALL_BODY)
}

/// A scope the response was let in with by [`RequireScopeLayer`](crate::RequireScopeLayer),
/// checked again on the account a change leaves.
#[derive(Clone)]
pub(crate) struct RequiredScope {
    scope: ScopeName,
    /// Whether an account (of the type the scope layer was built for) holds a scope.
    holds: fn(&(dyn Any + Send + Sync), &str) -> bool,
}

impl RequiredScope {
    pub(crate) fn new(scope: ScopeName, holds: fn(&(dyn Any + Send + Sync), &str) -> bool) -> Self {
        Self { scope, holds }
    }

    fn held_by(&self, account: &(dyn Any + Send + Sync)) -> bool {
        (self.holds)(account, &self.scope)
    }
}

/// A scope's name as [`RequireScope`](crate::require_scope::RequireScope) keeps it: copied
/// into every request's future without allocating (a name given as a `&'static str` is
/// copied, one given as a `String` is shared).
#[derive(Clone, Debug)]
pub(crate) enum ScopeName {
    Static(&'static str),
    Shared(Arc<str>),
}

impl From<Cow<'static, str>> for ScopeName {
    fn from(scope: Cow<'static, str>) -> Self {
        match scope {
            Cow::Borrowed(scope) => Self::Static(scope),
            Cow::Owned(scope) => Self::Shared(scope.into()),
        }
    }
}

impl std::ops::Deref for ScopeName {
    type Target = str;

    fn deref(&self) -> &str {
        match self {
            Self::Static(scope) => scope,
            Self::Shared(scope) => scope,
        }
    }
}

/// The scopes a response was let in with: a response extension that
/// [`RequireScopeLayer`](crate::RequireScopeLayer) adds to responses that may stay open, and
/// the layer takes off again.
#[derive(Clone, Default)]
pub(crate) struct RequiredScopes(pub(crate) Vec<RequiredScope>);

/// What an accepted request leaves its response: the number of the layer that let it in,
/// the key's prefix and digest, and for a key with an allowlist the client's address. Plain
/// data on purpose: every accepted request's future carries one until its response arrives,
/// and a response that never stays open should pay no reference count for it.
#[derive(Clone, Copy)]
pub(crate) struct Ticket {
    pub(crate) layer: LayerNumber,
    pub(crate) prefix: KeyPrefix,
    pub(crate) digest: KeyDigest,
    pub(crate) address: Option<IpAddr>,
}

impl Ticket {
    /// A guard for `response` if it may stay open (taking off the scopes it was let in with);
    /// `None` for a small answer of known size.
    #[inline(always)]
    pub(crate) fn guard<B: Body>(self, response: &mut Response<B>) -> Option<Box<Guard>> {
        may_stream(response.body()).then(|| self.into_guard(response))
    }

    #[cold]
    #[inline(never)]
    fn into_guard<B>(self, response: &mut Response<B>) -> Box<Guard> {
        let scopes = response
            .extensions_mut()
            .remove::<RequiredScopes>()
            .unwrap_or_default()
            .0;
        let grpc = rejection::is_grpc(response.headers());
        Box::new(Guard {
            layer: self.layer,
            prefix: self.prefix,
            digest: self.digest,
            address: self.address,
            scopes,
            grpc,
            frames: 0,
            state: State::Unwatched,
        })
    }
}

/// One open response's watch: the first time its inner body has nothing to send, it enters
/// the layer's [`StreamWatch`] and checks its key once (a change may have come since it was
/// let in); every invalidation of its key, and its key's expiry, wake it to check again. A
/// key that would now be refused ends the response: gRPC with trailers carrying the
/// refusal's status and message, HTTP by ending the body.
pub(crate) struct Guard {
    /// Its layer's number, looked up when the response first waits (a unary answer never
    /// does, and never looks it up).
    layer: LayerNumber,
    prefix: KeyPrefix,
    digest: KeyDigest,
    address: Option<IpAddr>,
    scopes: Vec<RequiredScope>,
    grpc: bool,
    /// Frames sent before it entered the register.
    frames: u8,
    state: State,
}

impl fmt::Debug for Guard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            State::Unwatched => "unwatched",
            State::Watching { .. } => "watching",
            State::Unwatchable => "unwatchable",
            State::Ending(_) | State::Ended => "ended",
        };
        f.debug_struct("Guard")
            .field("prefix", &self.prefix)
            .field("grpc", &self.grpc)
            .field("scopes", &self.scopes.len())
            .field("state", &state)
            .finish()
    }
}

enum State {
    /// Its inner body never had to wait: not in the register.
    Unwatched,
    Watching {
        authority: Arc<dyn Authority>,
        registration: Registration,
        check: Option<BoxFuture<'static, Standing>>,
    },
    /// Its layer was gone when it first waited (every service of the layer dropped, say by
    /// a router swapped at run time): no invalidation can reach it any more, so it is left
    /// alone. A response watched before keeps its layer alive.
    Unwatchable,
    /// Refused: the trailers of a gRPC response are still to send.
    Ending(Rejection),
    Ended,
}

impl Guard {
    /// Polls the inner body, unless the key no longer lets the response through.
    pub(crate) fn poll_frame<B>(
        &mut self,
        mut body: Pin<&mut B>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>>
    where
        B: Body<Data = Bytes>,
    {
        if let Some(end) = self.poll_end(cx) {
            return Poll::Ready(end.map(Ok));
        }
        if self.checking() {
            // Nothing goes out while the key is checked again: woken by the answer.
            return Poll::Pending;
        }
        match body.as_mut().poll_frame(cx) {
            Poll::Pending => {}
            Poll::Ready(None) => {
                self.state = State::Ended;
                return Poll::Ready(None);
            }
            Poll::Ready(Some(Ok(frame))) if frame.is_trailers() => {
                // Trailers are a body's last frame: nothing is left to end (and a second
                // trailers frame would override the body's own status).
                self.state = State::Ended;
                return Poll::Ready(Some(Ok(frame)));
            }
            ready => {
                // A body that never waits (a download to a fast client) is watched too, once
                // it has sent more frames than a unary answer has.
                if matches!(self.state, State::Unwatched) {
                    self.frames += 1;
                    if self.frames >= WATCH_AFTER_FRAMES {
                        self.watch();
                    }
                }
                return ready;
            }
        }
        if matches!(self.state, State::Unwatched) {
            self.watch();
        }
        match self.poll_end(cx) {
            Some(end) => Poll::Ready(end.map(Ok)),
            None => Poll::Pending,
        }
    }

    /// Whether a check of the key is waiting for the resolver.
    fn checking(&self) -> bool {
        matches!(self.state, State::Watching { check: Some(_), .. })
    }

    /// Whether the response has ended, whatever the inner body says.
    pub(crate) fn is_ended(&self) -> bool {
        matches!(self.state, State::Ended)
    }

    /// Enters the register and starts the first check.
    #[cold]
    fn watch(&mut self) {
        let Some((authority, watch)) = layers::find(self.layer).and_then(|authority| {
            let watch = Arc::clone(authority.watch()?);
            Some((authority, watch))
        }) else {
            // The layer is gone: nothing can reach this response any more.
            tracing::debug!(prefix = %self.prefix, "open response not watched: its layer is gone");
            self.state = State::Unwatchable;
            return;
        };
        // Registered before the check: a change after the check's look-up wakes it again.
        let registration = watch.register(self.digest);
        self.state = State::Watching {
            authority,
            registration,
            check: None,
        };
        self.start_check();
    }

    /// The frame that ends the response (`Some(None)`: the end itself), if it must end;
    /// otherwise registers `cx` to be woken by a change.
    fn poll_end(&mut self, cx: &mut Context<'_>) -> Option<Option<Frame<Bytes>>> {
        loop {
            match &mut self.state {
                State::Unwatched | State::Unwatchable => return None,
                State::Ended => return Some(None),
                State::Ending(rejection) => {
                    let trailers = rejection.grpc_trailers();
                    self.state = State::Ended;
                    return Some(Some(Frame::trailers(trailers)));
                }
                State::Watching {
                    registration,
                    check,
                    ..
                } => {
                    // The waker first: a change after `take_changed` wakes this task.
                    registration.waiting().set_waker(cx.waker());
                    if registration.waiting().take_changed() {
                        self.start_check();
                        continue;
                    }
                    let Some(pending) = check else {
                        return None;
                    };
                    let Poll::Ready(standing) = pending.as_mut().poll(cx) else {
                        return None;
                    };
                    *check = None;
                    self.settle(standing);
                }
            }
        }
    }

    /// Asks the layer where the key stands now.
    fn start_check(&mut self) {
        let State::Watching {
            authority, check, ..
        } = &mut self.state
        else {
            return;
        };
        match authority.check(self.prefix, self.digest, self.address) {
            Check::Pending(future) => *check = Some(future),
            Check::Ready(standing) => {
                *check = None;
                self.settle(standing);
            }
        }
    }

    /// Acts on an answer: goes on (with an alarm at the key's expiry), or makes the response
    /// end (`Ending` for a gRPC response's trailers, `Ended` for an HTTP one).
    fn settle(&mut self, standing: Standing) {
        let refusal = match standing {
            Standing::Valid {
                account,
                expires_at,
            } => {
                if self.scopes.iter().all(|scope| scope.held_by(&*account)) {
                    if let State::Watching { registration, .. } = &mut self.state {
                        match expires_at {
                            Some(at) => registration.wake_at(at),
                            None => registration.clear_alarm(),
                        }
                    }
                    return;
                }
                Rejection::InsufficientScope
            }
            Standing::Refused(rejection) => rejection,
            Standing::Retry => {
                if let State::Watching { registration, .. } = &mut self.state {
                    registration.wake_at(SystemTime::now() + RETRY_AFTER);
                }
                return;
            }
        };
        if let State::Watching { authority, .. } = &self.state {
            authority.ended();
        }
        tracing::debug!(
            prefix = %self.prefix,
            outcome = %refusal,
            "open response ended: its API key no longer lets it through"
        );
        // Leaving `Watching` drops the registration and its alarm.
        self.state = if self.grpc {
            State::Ending(refusal)
        } else {
            State::Ended
        };
    }
}

/// A response that has sent this many frames without waiting enters the register anyway.
const WATCH_AFTER_FRAMES: u8 = 16;

/// How soon a check that got no answer is asked again.
const RETRY_AFTER: std::time::Duration = std::time::Duration::from_millis(100);
