//! Fuzzes `ApiKey::parse`, the first thing every header value meets.
//!
//! Two kinds of input, chosen by the first byte:
//!
//! - raw: the bytes as a client could send them. Almost all are refused; the property is that
//!   parsing never panics and that an accepted value is exactly a key's shape.
//! - checksummed: the fuzzer writes everything before the checksum and the target appends the
//!   matching CRC32 checksum, so the alphabet, separator and length rules are reached past the
//!   checksum gate, and accepted keys are checked for round-tripping and redaction.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tower_api_key::ApiKey;
use tower_api_key::key::{KEY_LEN, KeyPrefix, PREFIX_LEN};

const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
const CHECKSUM_LEN: usize = 6;

/// CRC32 of `checked`, as 6 big-endian base62 digits (the key format in ARCHITECTURE.md, *Keys*).
fn checksum(checked: &[u8]) -> [u8; CHECKSUM_LEN] {
    let mut value = crc32fast::hash(checked);
    let mut digits = [b'0'; CHECKSUM_LEN];
    for digit in digits.iter_mut().rev() {
        *digit = BASE62[(value % 62) as usize];
        value /= 62;
    }
    digits
}

fn check(value: &[u8]) {
    let Ok(key) = ApiKey::parse(value) else {
        return;
    };
    // Accepted means: exactly the documented shape, and the key reads back byte for byte.
    assert_eq!(value.len(), KEY_LEN);
    assert_eq!(value[PREFIX_LEN], b'.');
    assert!(
        value[..PREFIX_LEN]
            .iter()
            .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase())
    );
    assert!(
        value[PREFIX_LEN + 1..]
            .iter()
            .all(u8::is_ascii_alphanumeric)
    );
    assert_eq!(
        &value[KEY_LEN - CHECKSUM_LEN..],
        checksum(&value[..KEY_LEN - CHECKSUM_LEN])
    );
    assert_eq!(key.expose_secret().as_bytes(), value);
    assert_eq!(
        ApiKey::parse(key.expose_secret().as_bytes()),
        Ok(key.clone())
    );
    assert_eq!(key.prefix().as_str().as_bytes(), &value[..PREFIX_LEN]);
    assert_eq!(key.prefix().as_str().parse::<KeyPrefix>(), Ok(key.prefix()));
    // What may be logged never holds the secret.
    let body = &key.expose_secret()[PREFIX_LEN + 1..];
    for shown in [format!("{key}"), format!("{key:?}"), format!("{key:#?}")] {
        assert!(!shown.contains(body), "{shown}");
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        check(data);
        return;
    };
    if mode & 1 == 0 {
        check(rest);
    } else {
        let mut value = rest.to_vec();
        value.extend_from_slice(&checksum(rest));
        check(&value);
    }
    // A prefix alone, as a store or a listing would hand it over.
    if let Ok(Ok(prefix)) = std::str::from_utf8(rest).map(str::parse::<KeyPrefix>) {
        assert_eq!(prefix.as_str().as_bytes(), rest);
    }
});
