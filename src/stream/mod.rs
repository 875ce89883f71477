//! Open responses end when their key stops letting them through.
//!
//! A request is checked when it starts; a response can stay open much longer (a gRPC
//! server stream such as `Health/Watch`, server-sent events, a long download). So the layer
//! keeps watching every response that may stay open: one whose size is unknown or more than
//! 64 KiB (a small answer of known size is written at once and never watched). Every
//! accepted request still carries a small ticket (the layer's number, the key's prefix and
//! digest) to its response, which is then asked its `size_hint`: about 90 instructions per
//! request in the demo server, 3.6 % of the layer's cost (BENCHMARKS.md). The first time such a response's inner body has nothing to send, it
//! enters its layer's register of waiting responses, keyed by the key's digest, and checks
//! the key once; from then on, every invalidation that names the key (a revoke, rotation,
//! deletion or policy change, made here or heard through a change feed) and the key's expiry
//! (one timer for the whole register) wake it to check the key again, as a new request
//! would be checked, without counting a use:
//!
//! | the key now | the response |
//! | --- | --- |
//! | valid, with the scopes its route required, from its allowlist | goes on |
//! | revoked, rotated away (after any grace period), deleted | ends: gRPC trailers `grpc-status: 16` |
//! | expired | ends: `grpc-status: 16` |
//! | without a scope its route required (`RequireScopeLayer`) | ends: `grpc-status: 7` |
//! | its allowlist now excludes the client | ends: `grpc-status: 7` |
//! | given an allowlist after the response started (the client's address was kept only for a key that had one) | ends: `grpc-status: 7`, whatever the new allowlist holds |
//! | can't be checked (the store failing) | ends: `grpc-status: 14` |
//!
//! A gRPC response ends with trailers carrying the status and its message; an HTTP response
//! ends its body (an SSE client sees the stream close; a download with a `Content-Length`
//! is cut short, which the client sees as an error; a chunked one ends as if complete, so a
//! download should say its length). A response that is sending does not stop to check: it is
//! woken between frames, and a change ends it before its next frame. A body that has sent its
//! trailers is over and is not ended again.
//!
//! Changes reach open responses the way they reach the cache: from the layer's buses (the
//! manager's changes, a change feed's), and from [`ApiKeyLayer::invalidate`](crate::ApiKeyLayer::invalidate)
//! for a change made behind the manager's back. While a change feed is down, the cache asks
//! the store on every request, but open responses are checked again only when the feed is
//! back (its `Invalidation::All`): a revoke made elsewhere meanwhile ends them then.
//!
//! The layer keeps no plaintext key for this: it asks the resolver which key an account came
//! from ([`Resolver::key_of`](crate::Resolver::key_of)) and, after a change, to look that
//! key up again by its prefix and digest
//! ([`Resolver::resolve_again`](crate::Resolver::resolve_again)). The crate's
//! [`StoreResolver`](crate::StoreResolver) does both; a resolver of your own that doesn't
//! leaves its streams checked once, when they start.
//!
//! Turn it off with
//! [`ApiKeyLayerBuilder::end_streams_on_change`](crate::ApiKeyLayerBuilder::end_streams_on_change).

mod check;
mod guard;
mod layers;
mod watch;

pub(crate) use self::guard::{Guard, RequiredScope, RequiredScopes, ScopeName, Ticket, may_stream};
pub(crate) use self::layers::{Registered, register};
pub(crate) use self::watch::StreamWatch;
