//! Keys made in the tests: fresh unknown ones, and forged ones that are well-formed but wrong.

use tower_api_key::ApiKey;

/// A fresh well-formed key no store knows (from the CSPRNG, as `create` makes them).
pub(crate) fn unknown() -> String {
    ApiKey::generate()
        .expect("randomness")
        .expose_secret()
        .to_owned()
}

const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// CRC32 of `checked` as 6 big-endian base62 digits: the key format's checksum
/// (ARCHITECTURE.md, *Keys*).
fn checksum(checked: &str) -> String {
    let mut value = crc32fast::hash(checked.as_bytes());
    let mut digits = [b'0'; 6];
    for digit in digits.iter_mut().rev() {
        *digit = BASE62[(value % 62) as usize];
        value /= 62;
    }
    String::from_utf8(digits.to_vec()).expect("ascii")
}

/// The prefix of key `prefix_of` (or a bare 8-character prefix) joined to the secret body of
/// key `body_of`, with the checksum recomputed: well-formed, so it passes parsing and reaches
/// the store, where the digest comparison must refuse it.
pub(crate) fn forge(prefix_of: &str, body_of: &str) -> String {
    let checked = format!("{}.{}", &prefix_of[..8], &body_of[9..52]);
    let forged = format!("{checked}{}", checksum(&checked));
    assert!(
        forged.parse::<ApiKey>().is_ok(),
        "forged keys are well-formed"
    );
    forged
}
