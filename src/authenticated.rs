//! [`Authenticated`]: the account the layer puts into an accepted request's extensions.

use std::fmt;
use std::ops::Deref;
use std::sync::Arc;

/// The account a request authenticated as, found in the request's extensions.
///
/// The account is shared (an `Arc`) with the cache entry, so cloning this is one atomic
/// increment whatever the account type. With the `axum` feature it is also an extractor;
/// without, read it from the extensions:
///
/// ```
/// use tower_api_key::Authenticated;
/// use tower_api_key::resolver::KeyIdentity;
///
/// fn who(request: &http::Request<()>) -> Option<&Authenticated<KeyIdentity>> {
///     request.extensions().get::<Authenticated<KeyIdentity>>()
/// }
/// # assert!(who(&http::Request::new(())).is_none());
/// ```
pub struct Authenticated<A>(Arc<A>);

impl<A> Authenticated<A> {
    /// Wraps an account, for tests and for custom middleware that authenticates itself.
    pub fn new(account: A) -> Self {
        Self(Arc::new(account))
    }

    pub(crate) fn from_arc(account: Arc<A>) -> Self {
        Self(account)
    }

    /// The account.
    pub fn account(&self) -> &A {
        &self.0
    }

    /// The shared account.
    pub fn into_arc(self) -> Arc<A> {
        self.0
    }
}

impl<A> Clone for Authenticated<A> {
    fn clone(&self) -> Self {
        Self(Arc::clone(&self.0))
    }
}

impl<A> Deref for Authenticated<A> {
    type Target = A;

    fn deref(&self) -> &A {
        &self.0
    }
}

impl<A: fmt::Debug> fmt::Debug for Authenticated<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Authenticated").field(&*self.0).finish()
    }
}
