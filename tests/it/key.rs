//! Properties of key anatomy (prefix, secret body, checksum; ARCHITECTURE.md, *Keys*) over many
//! generated and arbitrary inputs.

use crate::support::pepper;
use proptest::prelude::*;
use tower_api_key::ApiKey;
use tower_api_key::key::KEY_LEN;

/// A fresh key per case: the CSPRNG is the source, proptest only picks how many.
fn generated_key() -> impl Strategy<Value = ApiKey> {
    any::<u8>().prop_map(|_| ApiKey::generate().expect("randomness"))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn every_generated_key_parses_and_verifies(key in generated_key()) {
        let parsed = ApiKey::parse(key.expose_secret().as_bytes()).expect("parses");
        prop_assert_eq!(&parsed, &key);
        prop_assert!(pepper().digest(&parsed).ct_eq(&pepper().digest(&key)));
    }

    #[test]
    fn every_one_character_mutation_is_rejected_by_parse_or_verify(
        key in generated_key(),
        position in 0..KEY_LEN,
        replacement in any::<u8>(),
    ) {
        let mut bytes = key.expose_secret().as_bytes().to_vec();
        prop_assume!(bytes[position] != replacement);
        bytes[position] = replacement;
        if let Ok(parsed) = ApiKey::parse(&bytes) {
            // A mutation that happens to keep the checksum valid still fails verification.
            prop_assert!(!pepper().digest(&parsed).ct_eq(&pepper().digest(&key)));
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic_the_parser(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        let _ = ApiKey::parse(&bytes);
    }

    #[test]
    fn arbitrary_strings_never_panic_the_parser(text in ".{0,120}") {
        let _ = text.parse::<ApiKey>();
    }

    #[test]
    fn right_length_garbage_is_rejected(bytes in proptest::collection::vec(any::<u8>(), KEY_LEN)) {
        // A random 58-byte value passes every check only with a vanishing probability
        // (about 2^-32 for the checksum alone, after the alphabet checks).
        prop_assert!(ApiKey::parse(&bytes).is_err());
    }

    #[test]
    fn a_dropped_or_added_character_is_rejected(key in generated_key(), position in 0..KEY_LEN) {
        let text = key.expose_secret();
        let shorter = format!("{}{}", &text[..position], &text[position + 1..]);
        let longer = format!("{}x{}", &text[..position], &text[position..]);
        prop_assert!(ApiKey::parse(shorter.as_bytes()).is_err());
        prop_assert!(ApiKey::parse(longer.as_bytes()).is_err());
    }
}
