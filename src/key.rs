//! Key anatomy: generating, parsing and digesting API keys.
//!
//! A key reads `PPPPPPPP.SSSS…SSSSCCCCCC`: an 8-character `[0-9a-z]` prefix, one `.`, a
//! 43-character base62 encoding of 32 bytes from the operating system's CSPRNG, and a
//! 6-character base62 CRC32 checksum of everything before it. Only
//! [`Pepper::digest`] of a key is ever stored or cached.
//!
//! In a request, spaces and tabs around the header value are not part of the key: the layer
//! trims them (over HTTP/1.1 and HTTP/2 alike) and then parses strictly.
//!
//! ```
//! use tower_api_key::key::{ApiKey, Pepper};
//!
//! let pepper = Pepper::from_hex(&"ab".repeat(32))?;
//! let key = ApiKey::generate()?;
//! // What a client sends in `X-API-KEY` parses back to the same key...
//! let parsed = ApiKey::parse(key.expose_secret().as_bytes())?;
//! assert_eq!(parsed.prefix(), key.prefix());
//! // ...and digests to the same value, which is all a store keeps.
//! assert!(pepper.digest(&parsed).ct_eq(&pepper.digest(&key)));
//! // Debug output never shows the secret.
//! assert!(!format!("{key:?}").contains(&key.expose_secret()[9..]));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::fmt;
use std::str::FromStr;

use subtle::ConstantTimeEq;

/// Length of a key's prefix, in characters.
pub const PREFIX_LEN: usize = 8;
/// Length of the base62 secret between the `.` and the checksum.
const SECRET_LEN: usize = 43;
/// Length of the base62 checksum at the end of the key.
const CHECKSUM_LEN: usize = 6;
/// Number of random bytes behind the secret (256 bits).
const SECRET_BYTES: usize = 32;
/// Offset of the `.` separating prefix and body.
const SEPARATOR_AT: usize = PREFIX_LEN;
/// Everything before the checksum: prefix, `.`, secret.
const CHECKED_LEN: usize = PREFIX_LEN + 1 + SECRET_LEN;
/// Total length of a key, in bytes (all ASCII).
pub const KEY_LEN: usize = CHECKED_LEN + CHECKSUM_LEN;

const PREFIX_ALPHABET: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
const BASE62_ALPHABET: &[u8; 62] =
    b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// The value of each base62 digit (0 for bytes that are not digits; parsing checks the
/// alphabet before it decodes).
const BASE62_VALUES: [u8; 256] = {
    let mut table = [0u8; 256];
    let mut i = 0;
    while i < 62 {
        table[BASE62_ALPHABET[i] as usize] = i as u8;
        i += 1;
    }
    table
};

/// Character classes for parsing, one table lookup per byte.
const CLASS_PREFIX: u8 = 1;
const CLASS_BASE62: u8 = 2;
const CLASSES: [u8; 256] = {
    let mut table = [0u8; 256];
    let mut i = 0;
    while i < 62 {
        table[BASE62_ALPHABET[i] as usize] |= CLASS_BASE62;
        i += 1;
    }
    let mut i = 0;
    while i < 36 {
        table[PREFIX_ALPHABET[i] as usize] |= CLASS_PREFIX;
        i += 1;
    }
    table
};

// ===== errors =====

/// Why a header value is not a well-formed API key.
///
/// The text never contains any part of the rejected value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ParseError {
    /// The value does not have the exact length of a key (this is checked first, so an
    /// oversized value is refused before anything else looks at it).
    Length,
    /// There is no `.` right after the 8-character prefix.
    Separator,
    /// The prefix has a character outside `[0-9a-z]`.
    Prefix,
    /// The body has a character outside base62 (`[0-9A-Za-z]`).
    Body,
    /// The checksum does not match: a typo or a made-up key.
    Checksum,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Length => "api key has the wrong length",
            Self::Separator => "api key has no separator after its prefix",
            Self::Prefix => "api key prefix has an invalid character",
            Self::Body => "api key body has an invalid character",
            Self::Checksum => "api key checksum does not match",
        })
    }
}

impl std::error::Error for ParseError {}

/// The operating system's random number generator failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RandomnessError(getrandom::Error);

impl fmt::Display for RandomnessError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "operating system randomness unavailable: {}", self.0)
    }
}

impl std::error::Error for RandomnessError {}

pub(crate) fn random_bytes<const N: usize>() -> Result<[u8; N], RandomnessError> {
    let mut bytes = [0u8; N];
    getrandom::fill(&mut bytes).map_err(RandomnessError)?;
    Ok(bytes)
}

// ===== KeyPrefix =====

/// The public, readable part of a key: 8 characters of `[0-9a-z]`.
///
/// Prefixes are unique across all keys, so a store finds a key's record by its prefix. A
/// prefix is safe to log, show in listings and use as a metric label.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyPrefix([u8; PREFIX_LEN]);

impl KeyPrefix {
    /// The prefix as a string slice.
    pub fn as_str(&self) -> &str {
        // Only ever built from checked ASCII.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }

    fn random() -> Result<Self, RandomnessError> {
        let mut prefix = [0u8; PREFIX_LEN];
        let mut filled = 0;
        while filled < PREFIX_LEN {
            for byte in random_bytes::<16>()? {
                // Rejection sampling keeps every character equally likely: 252 = 7 * 36.
                if byte < 252 && filled < PREFIX_LEN {
                    prefix[filled] = PREFIX_ALPHABET[usize::from(byte % 36)];
                    filled += 1;
                }
            }
        }
        Ok(Self(prefix))
    }
}

impl FromStr for KeyPrefix {
    type Err = ParseError;

    /// Parses a stored or displayed prefix (exactly 8 characters of `[0-9a-z]`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bytes: [u8; PREFIX_LEN] = s.as_bytes().try_into().map_err(|_| ParseError::Length)?;
        if bytes
            .iter()
            .all(|&b| CLASSES[usize::from(b)] & CLASS_PREFIX != 0)
        {
            Ok(Self(bytes))
        } else {
            Err(ParseError::Prefix)
        }
    }
}

impl fmt::Display for KeyPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for KeyPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyPrefix({:?})", self.as_str())
    }
}

// ===== ApiKey =====

/// A whole API key, prefix and secret, held in a fixed-size buffer.
///
/// This is the plaintext: it exists only while a request carrying it is handled and in the
/// value returned once by [`KeyManager::create`](crate::manager::KeyManager::create) and
/// [`KeyManager::rotate`](crate::manager::KeyManager::rotate). `Debug` and `Display` show the
/// prefix only; [`expose_secret`](Self::expose_secret) is the one way to read the rest.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey([u8; KEY_LEN]);

impl ApiKey {
    /// Generates a new key from the operating system's CSPRNG.
    ///
    /// # Errors
    ///
    /// Fails only if the operating system cannot provide randomness.
    pub fn generate() -> Result<Self, RandomnessError> {
        let prefix = KeyPrefix::random()?;
        let secret = base62_fixed::<SECRET_BYTES, SECRET_LEN>(random_bytes::<SECRET_BYTES>()?);
        let mut key = [0u8; KEY_LEN];
        key[..PREFIX_LEN].copy_from_slice(&prefix.0);
        key[SEPARATOR_AT] = b'.';
        key[SEPARATOR_AT + 1..CHECKED_LEN].copy_from_slice(&secret);
        let check = checksum(&key[..CHECKED_LEN]);
        key[CHECKED_LEN..].copy_from_slice(&check);
        Ok(Self(key))
    }

    /// Parses a header value strictly: exact length, `.` at position 8, `[0-9a-z]` prefix,
    /// base62 body and a matching checksum.
    ///
    /// The length is checked first, so an oversized value costs nothing more. Parsing never
    /// panics and never allocates. Nothing is trimmed here: the layer trims spaces and tabs
    /// around the header value before it calls this, in every protocol.
    ///
    /// # Errors
    ///
    /// A [`ParseError`] naming the first rule the value breaks.
    pub fn parse(value: &[u8]) -> Result<Self, ParseError> {
        let key = Self::parse_shape(value)?;
        if !key.has_valid_checksum() {
            return Err(ParseError::Checksum);
        }
        Ok(key)
    }

    /// [`parse`](Self::parse) without the checksum: length, separator, alphabets. The layer
    /// checks the checksum only when the cache doesn't know the key's digest, since only keys
    /// with a valid checksum are ever cached (a digest hit means the same key).
    pub(crate) fn parse_shape(value: &[u8]) -> Result<Self, ParseError> {
        let bytes: [u8; KEY_LEN] = value.try_into().map_err(|_| ParseError::Length)?;
        if bytes[SEPARATOR_AT] != b'.' {
            return Err(ParseError::Separator);
        }
        // Branch-free range checks over whole slices, which the compiler vectorizes: a table
        // look-up per byte can't be.
        let prefix_ok = bytes[..PREFIX_LEN].iter().fold(true, |ok, &b| {
            ok & (b.is_ascii_digit() | b.is_ascii_lowercase())
        });
        if !prefix_ok {
            return Err(ParseError::Prefix);
        }
        let body_ok = bytes[SEPARATOR_AT + 1..]
            .iter()
            .fold(true, |ok, &b| ok & b.is_ascii_alphanumeric());
        if !body_ok {
            return Err(ParseError::Body);
        }
        Ok(Self(bytes))
    }

    /// Whether the last six characters are the checksum of the rest.
    pub(crate) fn has_valid_checksum(&self) -> bool {
        // Decoding the stated checksum costs six multiply-adds; encoding the computed one
        // would cost six long divisions. Fixed-width base62 is one-to-one, so both agree.
        let stated = self.0[CHECKED_LEN..].iter().fold(0u64, |acc, &b| {
            acc * 62 + u64::from(BASE62_VALUES[usize::from(b)])
        });
        stated == u64::from(crc32fast::hash(&self.0[..CHECKED_LEN]))
    }

    /// The key's prefix.
    pub fn prefix(&self) -> KeyPrefix {
        let mut prefix = [0u8; PREFIX_LEN];
        prefix.copy_from_slice(&self.0[..PREFIX_LEN]);
        KeyPrefix(prefix)
    }

    /// The whole key as the client sends it. Handle with care: this is the secret.
    pub fn expose_secret(&self) -> &str {
        std::str::from_utf8(&self.0).unwrap_or_default()
    }

    pub(crate) fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiKey")
            .field("prefix", &self.prefix().as_str())
            .finish_non_exhaustive()
    }
}

impl fmt::Display for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.<redacted>", self.prefix())
    }
}

impl FromStr for ApiKey {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s.as_bytes())
    }
}

/// Encodes `N` big-endian bytes as exactly `D` base62 digits (`D` must be large enough).
fn base62_fixed<const N: usize, const D: usize>(mut number: [u8; N]) -> [u8; D] {
    let mut digits = [BASE62_ALPHABET[0]; D];
    for digit in digits.iter_mut().rev() {
        let mut remainder = 0u32;
        for byte in number.iter_mut() {
            let acc = (remainder << 8) | u32::from(*byte);
            *byte = (acc / 62) as u8;
            remainder = acc % 62;
        }
        *digit = BASE62_ALPHABET[remainder as usize];
    }
    digits
}

fn checksum(checked: &[u8]) -> [u8; CHECKSUM_LEN] {
    base62_fixed::<4, CHECKSUM_LEN>(crc32fast::hash(checked).to_be_bytes())
}

// ===== KeyDigest =====

/// `blake3::keyed_hash(pepper, key)`: what stores keep and what caches are keyed by.
///
/// Equality (`==`, used by hash maps) and [`ct_eq`](Self::ct_eq) both run in constant time.
/// `Hash` feeds the map one `u64` of the digest: the digest is already uniformly distributed
/// and keyed by the secret pepper, so no one can aim collisions at a map.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct KeyDigest(blake3::Hash);

impl std::hash::Hash for KeyDigest {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        state.write_u64(self.hash_u64());
    }
}

impl KeyDigest {
    /// Wraps 32 digest bytes, as read back from a store.
    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(blake3::Hash::from_bytes(bytes))
    }

    /// The digest's bytes, for a store to write.
    pub fn as_bytes(&self) -> &[u8; 32] {
        self.0.as_bytes()
    }

    /// Eight uniformly distributed bits of the digest, for picking a hash bucket.
    pub(crate) fn hash_u64(&self) -> u64 {
        let bytes = self.as_bytes();
        u64::from_le_bytes([
            bytes[0], bytes[1], bytes[2], bytes[3], bytes[4], bytes[5], bytes[6], bytes[7],
        ])
    }

    /// Compares two digests in constant time (with `subtle`).
    pub fn ct_eq(&self, other: &Self) -> bool {
        self.as_bytes().ct_eq(other.as_bytes()).into()
    }
}

impl fmt::Debug for KeyDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("KeyDigest(..)")
    }
}

// ===== Pepper =====

/// The 32-byte server secret that keys every digest.
///
/// Supply it from configuration (for example 64 hex characters in an environment variable)
/// and keep it out of the key store: a leaked table of digests is useless without it.
#[derive(Clone)]
pub struct Pepper([u8; 32]);

/// A pepper given as hex is not 64 hex characters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct PepperError;

impl fmt::Display for PepperError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("pepper must be 64 hex characters (32 bytes)")
    }
}

impl std::error::Error for PepperError {}

impl Pepper {
    /// A pepper from 32 raw bytes.
    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// A pepper from 64 hex characters (either case).
    ///
    /// # Errors
    ///
    /// [`PepperError`] if the text is not exactly 64 hex characters.
    pub fn from_hex(hex: &str) -> Result<Self, PepperError> {
        // 32 bytes of hex, like a blake3 hash: blake3 already parses them.
        blake3::Hash::from_hex(hex)
            .map(|hash| Self(*hash.as_bytes()))
            .map_err(|_| PepperError)
    }

    /// A fresh random pepper. Keys digested with it can't be verified after a restart unless
    /// it is saved, so use this for tests and throw-away servers.
    ///
    /// # Errors
    ///
    /// Fails only if the operating system cannot provide randomness.
    pub fn random() -> Result<Self, RandomnessError> {
        random_bytes::<32>().map(Self)
    }

    /// The keyed digest of a key.
    pub fn digest(&self, key: &ApiKey) -> KeyDigest {
        KeyDigest(blake3::keyed_hash(&self.0, key.as_bytes()))
    }
}

impl fmt::Debug for Pepper {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Pepper(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> ApiKey {
        ApiKey::generate().expect("randomness")
    }

    #[test]
    fn generated_key_has_the_documented_shape() {
        let key = key();
        let text = key.expose_secret();
        assert_eq!(text.len(), KEY_LEN);
        assert_eq!(text.len(), 58);
        assert_eq!(&text[8..9], ".");
        assert!(
            text[..8]
                .bytes()
                .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase())
        );
        assert!(text[9..].bytes().all(|b| b.is_ascii_alphanumeric()));
    }

    #[test]
    fn secret_encodes_at_least_256_bits() {
        // 43 base62 digits hold log2(62) * 43 = 256.03 bits; 42 would not be enough.
        assert!(62f64.log2() * SECRET_LEN as f64 >= 256.0);
        assert!(62f64.log2() * (SECRET_LEN - 1) as f64 <= 256.0);
    }

    #[test]
    fn base62_encoding_is_fixed_width_and_exact() {
        assert_eq!(&base62_fixed::<4, 6>([0, 0, 0, 0]), b"000000");
        assert_eq!(&base62_fixed::<4, 6>([0, 0, 0, 61]), b"00000z");
        assert_eq!(&base62_fixed::<4, 6>([0, 0, 0, 62]), b"000010");
        // u32::MAX = 4_294_967_295 = 4 * 62^5 + ... ; round-trip through a decoder.
        let digits = base62_fixed::<4, 6>(u32::MAX.to_be_bytes());
        let decoded = digits.iter().fold(0u64, |acc, d| {
            acc * 62 + BASE62_ALPHABET.iter().position(|c| c == d).expect("digit") as u64
        });
        assert_eq!(decoded, u64::from(u32::MAX));
    }

    #[test]
    fn checksum_is_crc32_of_everything_before_it() {
        let key = key();
        let text = key.expose_secret().as_bytes();
        assert_eq!(checksum(&text[..CHECKED_LEN]), text[CHECKED_LEN..]);
    }

    #[test]
    fn generated_keys_differ() {
        let a = key();
        let b = key();
        assert_ne!(a, b);
        assert_ne!(a.expose_secret()[9..], b.expose_secret()[9..]);
    }

    #[test]
    fn parse_accepts_a_generated_key() {
        let key = key();
        assert_eq!(ApiKey::parse(key.expose_secret().as_bytes()), Ok(key));
    }

    #[test]
    fn parse_rejects_wrong_length_first() {
        let key = key();
        let text = key.expose_secret();
        assert_eq!(ApiKey::parse(b""), Err(ParseError::Length));
        assert_eq!(
            ApiKey::parse(&text.as_bytes()[1..]),
            Err(ParseError::Length)
        );
        let long = format!("{text}x");
        assert_eq!(ApiKey::parse(long.as_bytes()), Err(ParseError::Length));
        assert_eq!(ApiKey::parse(&[b'.'; 1 << 20]), Err(ParseError::Length));
    }

    #[test]
    fn parse_rejects_a_missing_separator() {
        let mut bytes = *key().as_bytes();
        bytes[8] = b'a';
        assert_eq!(ApiKey::parse(&bytes), Err(ParseError::Separator));
    }

    #[test]
    fn parse_rejects_upper_case_prefix() {
        let mut bytes = *key().as_bytes();
        bytes[0] = b'A';
        assert_eq!(ApiKey::parse(&bytes), Err(ParseError::Prefix));
    }

    #[test]
    fn parse_rejects_non_base62_body() {
        for bad in [b'-', b'_', b'.', b' ', 0xff, 0] {
            let mut bytes = *key().as_bytes();
            bytes[20] = bad;
            assert_eq!(ApiKey::parse(&bytes), Err(ParseError::Body));
        }
    }

    #[test]
    fn parse_rejects_a_wrong_checksum() {
        let mut bytes = *key().as_bytes();
        bytes[20] = if bytes[20] == b'a' { b'b' } else { b'a' };
        assert_eq!(ApiKey::parse(&bytes), Err(ParseError::Checksum));
    }

    #[test]
    fn debug_and_display_show_only_the_prefix() {
        let key = key();
        let body = &key.expose_secret()[9..];
        for shown in [format!("{key:?}"), format!("{key}"), format!("{key:#?}")] {
            assert!(shown.contains(key.prefix().as_str()), "{shown}");
            assert!(!shown.contains(body), "{shown}");
            assert!(!shown.contains(&body[..12]), "{shown}");
        }
    }

    #[test]
    fn parse_errors_never_echo_the_value() {
        let mut bytes = *key().as_bytes();
        bytes[20] ^= 1;
        let err = ApiKey::parse(&bytes).expect_err("tampered");
        let body = std::str::from_utf8(&bytes[9..]).expect("ascii");
        assert!(!err.to_string().contains(&body[..10]));
    }

    #[test]
    fn pepper_from_hex_accepts_64_hex_characters_only() {
        assert!(Pepper::from_hex(&"0f".repeat(32)).is_ok());
        assert!(Pepper::from_hex(&"0F".repeat(32)).is_ok());
        assert_eq!(Pepper::from_hex(&"0f".repeat(31)).err(), Some(PepperError));
        assert_eq!(Pepper::from_hex(&"zz".repeat(32)).err(), Some(PepperError));
        assert_eq!(Pepper::from_hex("é").err(), Some(PepperError));
        assert_eq!(
            Pepper::from_hex(&"0f".repeat(32)).map(|p| p.0),
            Ok([0x0f; 32])
        );
    }

    #[test]
    fn digest_is_blake3_keyed_hash_of_the_whole_key() {
        let pepper = Pepper::from_bytes([7; 32]);
        let key = key();
        let expected = blake3::keyed_hash(&[7; 32], key.expose_secret().as_bytes());
        assert_eq!(pepper.digest(&key).as_bytes(), expected.as_bytes());
    }

    #[test]
    fn digest_depends_on_the_pepper() {
        let key = key();
        let a = Pepper::from_bytes([1; 32]).digest(&key);
        let b = Pepper::from_bytes([2; 32]).digest(&key);
        assert!(!a.ct_eq(&b));
        assert_ne!(a, b);
    }

    #[test]
    fn pepper_debug_is_redacted() {
        let pepper = Pepper::from_bytes([0xab; 32]);
        assert!(!format!("{pepper:?}").contains("ab"));
    }

    #[test]
    fn prefix_round_trips_through_text() {
        let prefix = key().prefix();
        assert_eq!(prefix.as_str().parse::<KeyPrefix>(), Ok(prefix));
        assert_eq!("ABCDEFGH".parse::<KeyPrefix>(), Err(ParseError::Prefix));
        assert_eq!("abc".parse::<KeyPrefix>(), Err(ParseError::Length));
    }
}
