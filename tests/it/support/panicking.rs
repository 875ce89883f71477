//! An authorizer that falls over, for the tests of what a panic inside the admin router gives
//! (`tests/it/admin/panics.rs`) and logs (`tests/serial/logs.rs`).

use async_trait::async_trait;
use http::request::Parts;
use tower_api_key::admin::{AdminAttempt, AdminAuthorizer, AdminCaller, AdminDenied};

/// Lets everyone in, and panics when asked about the account `boom`.
pub(crate) struct PanicsOnBoom;

#[async_trait]
impl AdminAuthorizer for PanicsOnBoom {
    async fn authenticate(&self, _request: &Parts) -> Result<AdminCaller, AdminDenied> {
        Ok(AdminCaller::Operator)
    }

    async fn authorize(&self, attempt: &AdminAttempt<'_>) -> Result<(), AdminDenied> {
        assert_ne!(attempt.account.as_str(), "boom", "the authorizer fell over");
        Ok(())
    }
}
