//! A `Resolver` of your own: keys map to your own account type (`Customer`), looked up in
//! your own table, and handlers extract `Authenticated<Customer>`.
//!
//! ```text
//! cargo run --example custom_resolver --features axum
//! ```
//!
//! It issues one key per customer at startup and prints `curl` lines to try. Listens on
//! `127.0.0.1:3002`, or on `ADDR`.

use std::collections::HashMap;
use std::fmt;

use async_trait::async_trait;
use axum::Router;
use axum::routing::get;
use tower_api_key::resolver::ResolveError;
use tower_api_key::{
    Account, ApiKey, ApiKeyLayer, Authenticated, KeyDigest, KeyPrefix, Pepper, Resolver,
};

#[derive(Debug, Clone)]
struct Customer {
    name: String,
    plan: Plan,
    /// The prefix and digest of the key it was found by: lets the layer look it up again
    /// while a stream it opened stays open (`Resolver::key_of`).
    key: (KeyPrefix, KeyDigest),
}

#[derive(Debug, Clone, Copy)]
enum Plan {
    Free,
    Pro,
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Free => "free",
            Self::Pro => "pro",
        })
    }
}

/// The layer's questions about a customer (expiry, rate limit, uses) all have defaults: a
/// customer's key never expires and isn't rate limited. Its name goes in the request's span.
impl Account for Customer {
    fn label(&self) -> Option<&str> {
        Some(&self.name)
    }
}

/// Customers by the prefix of their key, with the key's digest: the plaintext is never
/// kept. A database table with a unique index on the prefix works the same way.
struct Customers {
    by_prefix: HashMap<KeyPrefix, (KeyDigest, Customer)>,
}

#[async_trait]
impl Resolver for Customers {
    type Account = Customer;

    async fn resolve(
        &self,
        key: &ApiKey,
        digest: &KeyDigest,
    ) -> Result<Option<Customer>, ResolveError> {
        // The prefix finds the row, the digest proves the key: all a lookup needs.
        self.resolve_again(&key.prefix(), digest).await
    }

    // These two let the layer end an open stream (SSE, a gRPC stream) when its customer's
    // key changes: after the change, it looks the key up again by prefix and digest.
    fn key_of(&self, customer: &Customer) -> Option<(KeyPrefix, KeyDigest)> {
        Some(customer.key)
    }

    async fn resolve_again(
        &self,
        prefix: &KeyPrefix,
        digest: &KeyDigest,
    ) -> Result<Option<Customer>, ResolveError> {
        // `Ok(None)` refuses the key (401). Return `Err` only when the table can't be read:
        // the layer then answers 503 and caches nothing.
        Ok(self
            .by_prefix
            .get(prefix)
            .filter(|(stored, _)| stored.ct_eq(digest))
            .map(|(_, customer)| customer.clone()))
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt::init();

    // The digests in the table are only as stable as the pepper: a real server loads it from
    // configuration, e.g. `Pepper::from_hex(&std::env::var("API_KEY_PEPPER")?)?`.
    let pepper = Pepper::random()?;
    let mut customers = Customers {
        by_prefix: HashMap::new(),
    };
    let mut issued = Vec::new();
    for (name, plan) in [("acme", Plan::Pro), ("globex", Plan::Free)] {
        let key = ApiKey::generate()?;
        let digest = pepper.digest(&key);
        let customer = Customer {
            name: name.to_owned(),
            plan,
            key: (key.prefix(), digest),
        };
        customers.by_prefix.insert(key.prefix(), (digest, customer));
        issued.push((name, key));
    }

    let app = Router::new()
        .route("/plan", get(plan))
        .layer(ApiKeyLayer::builder(customers, pepper).build());

    let addr = std::env::var("ADDR").unwrap_or_else(|_| "127.0.0.1:3002".to_owned());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    let addr = listener.local_addr()?;
    println!("listening on http://{addr}");
    for (name, key) in &issued {
        println!(
            "{name}: curl -H 'x-api-key: {}' http://{addr}/plan",
            key.expose_secret()
        );
    }
    axum::serve(listener, app).await?;
    Ok(())
}

async fn plan(customer: Authenticated<Customer>) -> String {
    format!("{} is on the {} plan\n", customer.name, customer.plan)
}
