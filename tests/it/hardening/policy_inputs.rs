//! The policy's inputs as proptests: names, scopes, expiries and grace periods from arbitrary
//! data are accepted exactly when the rules say so, and never panic.
//!
//! - a name: 1 to 64 characters, none a control character;
//! - a scope: `^[a-z0-9][a-z0-9:._-]{0,63}$`, at most 16 distinct per key;
//! - an expiry given as a duration: 1 s to 315,360,000 s; a grace period: at most 7 days.

use std::time::Duration;

use proptest::prelude::*;
use tower_api_key::policy::{MAX_EXPIRES_IN, MAX_GRACE, PolicyError};
use tower_api_key::{KeyName, KeyOptions, RotateOptions, Scopes};

/// The scope rule, written the slow and obvious way.
fn is_scope(scope: &str) -> bool {
    let mut chars = scope.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    first_ok
        && scope.chars().count() <= 64
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || ":._-".contains(c))
}

fn scope_like() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z0-9][a-z0-9:._-]{0,70}",
        "[A-Za-z0-9:._ -]{0,8}",
        any::<String>(),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn names_are_accepted_exactly_by_the_rule(name in prop_oneof![any::<String>(), "\\PC{0,70}"]) {
        let expected = (1..=64).contains(&name.chars().count()) && !name.chars().any(char::is_control);
        match KeyName::new(&name) {
            Ok(accepted) => {
                prop_assert!(expected, "{name:?} accepted");
                prop_assert_eq!(accepted.as_str(), name.as_str());
            }
            Err(err) => {
                prop_assert!(!expected, "{name:?} refused");
                prop_assert_eq!(err, PolicyError::InvalidName);
            }
        }
    }

    #[test]
    fn scope_sets_are_accepted_exactly_by_the_rules(scopes in prop::collection::vec(scope_like(), 0..20)) {
        let all_valid = scopes.iter().all(|scope| is_scope(scope));
        let mut distinct = scopes.clone();
        distinct.sort();
        distinct.dedup();
        match Scopes::new(&scopes) {
            Ok(set) => {
                prop_assert!(all_valid && distinct.len() <= 16, "{scopes:?} accepted");
                prop_assert_eq!(set.iter().collect::<Vec<_>>(), distinct.iter().map(String::as_str).collect::<Vec<_>>());
                for scope in &scopes {
                    prop_assert!(set.contains(scope));
                }
            }
            Err(PolicyError::InvalidScope(quoted)) => {
                prop_assert!(!all_valid, "{scopes:?} refused");
                prop_assert!(quoted.chars().count() <= 80);
            }
            Err(PolicyError::TooManyScopes) => {
                prop_assert!(distinct.len() > 16, "{scopes:?} refused as too many");
            }
            Err(other) => prop_assert!(false, "unexpected {other:?}"),
        }
    }

    #[test]
    fn expiries_and_grace_periods_are_bounded(millis in any::<u64>()) {
        let duration = Duration::from_millis(millis);
        let expiry_ok = duration >= Duration::from_secs(1) && duration <= MAX_EXPIRES_IN;
        prop_assert_eq!(KeyOptions::new().expires_in(duration).is_ok(), expiry_ok);
        prop_assert_eq!(RotateOptions::new().grace(duration).is_ok(), duration <= MAX_GRACE);
    }
}
