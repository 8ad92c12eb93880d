//! The callback signing secret and the Standard Webhooks `v1` signature.

use base64::alphabet::STANDARD as STANDARD_ALPHABET;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use base64::engine::DecodePaddingMode;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The environment variable holding the callback signing secret.
pub const SECRET_ENV: &str = "SWITCHBOARD_CALLBACK_SECRET";

/// The prefix of a serialized symmetric Standard Webhooks secret.
pub const SECRET_PREFIX: &str = "whsec_";

/// Fewest key bytes (after base64 decoding) accepted: 24 bytes (192 bits), the Standard
/// Webhooks minimum. `switchboard keys callback-secret` makes 32.
pub const MIN_SECRET_BYTES: usize = 24;

/// Most key bytes accepted: 64 (512 bits), the Standard Webhooks maximum.
pub const MAX_SECRET_BYTES: usize = 64;

/// Bytes of randomness in a secret made by [`new_secret_text`].
pub const NEW_SECRET_BYTES: usize = 32;

/// Base64 with or without `=` padding (both are common in the wild).
const LENIENT_BASE64: GeneralPurpose = GeneralPurpose::new(
    &STANDARD_ALPHABET,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Why a `SWITCHBOARD_CALLBACK_SECRET` value was refused. The messages never include the value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    /// The value does not start with `whsec_`.
    #[error("{SECRET_ENV} must start with `whsec_` (run `switchboard keys callback-secret` for one)")]
    MissingPrefix,
    /// The part after `whsec_` is not base64.
    #[error(
        "{SECRET_ENV} is not `whsec_` followed by base64 (run `switchboard keys callback-secret` for one)"
    )]
    NotBase64,
    /// The decoded key is shorter than [`MIN_SECRET_BYTES`].
    #[error("{SECRET_ENV} is too short: {len} bytes after decoding, at least {MIN_SECRET_BYTES} needed")]
    TooShort {
        /// Decoded length.
        len: usize,
    },
    /// The decoded key is longer than [`MAX_SECRET_BYTES`].
    #[error("{SECRET_ENV} is too long: {len} bytes after decoding, at most {MAX_SECRET_BYTES} allowed")]
    TooLong {
        /// Decoded length.
        len: usize,
    },
}

/// The key that signs every status callback: `whsec_` followed by the base64 of 24–64 random
/// bytes (the Standard Webhooks serialization), read from [`SECRET_ENV`]. Receivers verify with
/// the same text. Its `Debug` form never shows the key.
#[derive(Clone)]
pub struct CallbackSecret {
    /// HMAC-SHA256 keyed once; each signature starts from a clone.
    mac: Hmac<Sha256>,
}

impl CallbackSecret {
    /// Parses `whsec_<base64>` (padding optional, surrounding whitespace ignored) into a key of
    /// [`MIN_SECRET_BYTES`]..=[`MAX_SECRET_BYTES`] bytes.
    pub fn parse(text: &str) -> Result<Self, SecretError> {
        let encoded = text.trim().strip_prefix(SECRET_PREFIX).ok_or(SecretError::MissingPrefix)?;
        // A base64 text longer than this cannot decode to an acceptable key: refuse it unread.
        if encoded.len() > MAX_SECRET_BYTES.div_ceil(3) * 4 {
            return Err(SecretError::TooLong { len: encoded.len() / 4 * 3 });
        }
        let key = LENIENT_BASE64.decode(encoded).map_err(|_| SecretError::NotBase64)?;
        if key.len() < MIN_SECRET_BYTES {
            return Err(SecretError::TooShort { len: key.len() });
        }
        if key.len() > MAX_SECRET_BYTES {
            return Err(SecretError::TooLong { len: key.len() });
        }
        let mac = Hmac::<Sha256>::new_from_slice(&key).map_err(|_| SecretError::NotBase64)?;
        Ok(Self { mac })
    }

    /// The secret from [`SECRET_ENV`]: `Ok(None)` when it is unset or blank.
    pub fn from_env() -> Result<Option<Self>, SecretError> {
        match std::env::var(SECRET_ENV) {
            Ok(text) if !text.trim().is_empty() => Self::parse(&text).map(Some),
            // Unset, blank, or not Unicode (then it cannot be `whsec_…` either).
            Ok(_) | Err(std::env::VarError::NotPresent) => Ok(None),
            Err(std::env::VarError::NotUnicode(_)) => Err(SecretError::MissingPrefix),
        }
    }
}

impl std::str::FromStr for CallbackSecret {
    type Err = SecretError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::parse(text)
    }
}

impl std::fmt::Debug for CallbackSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CallbackSecret(whsec_<redacted>)")
    }
}

/// The `webhook-signature` header value: `v1,` and the base64 of HMAC-SHA256 over
/// `{webhook_id}.{timestamp_secs}.{body}` (Standard Webhooks, symmetric). `webhook_id` must not
/// contain `.` (Switchboard's ids never do); `body` is signed byte for byte as sent.
pub fn sign(secret: &CallbackSecret, webhook_id: &str, timestamp_secs: i64, body: &[u8]) -> String {
    let mut mac = secret.mac.clone();
    mac.update(webhook_id.as_bytes());
    mac.update(b".");
    mac.update(timestamp_secs.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
}

/// A fresh secret as text: `whsec_` and the base64 of [`NEW_SECRET_BYTES`] bytes from the
/// operating system's random source.
pub fn new_secret_text() -> Result<String, getrandom::Error> {
    let mut bytes = [0u8; NEW_SECRET_BYTES];
    getrandom::fill(&mut bytes)?;
    Ok(format!("{SECRET_PREFIX}{}", STANDARD.encode(bytes)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The vector of the official JavaScript library's "sign function works" test
    /// (standard-webhooks/standard-webhooks, libraries/javascript/src/webhook.test.ts).
    const SPEC_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const SPEC_ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const SPEC_TIMESTAMP: i64 = 1_614_265_330;
    const SPEC_BODY: &str = r#"{"test": 2432232314}"#;
    const SPEC_SIGNATURE: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    fn secret(text: &str) -> CallbackSecret {
        CallbackSecret::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    #[test]
    fn signs_the_official_vector() {
        let signature = sign(&secret(SPEC_SECRET), SPEC_ID, SPEC_TIMESTAMP, SPEC_BODY.as_bytes());
        assert_eq!(signature, SPEC_SIGNATURE);
    }

    #[test]
    fn every_signed_part_matters() {
        let key = secret(SPEC_SECRET);
        let base = sign(&key, SPEC_ID, SPEC_TIMESTAMP, SPEC_BODY.as_bytes());
        let other_key = secret("whsec_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA");
        let variants = [
            sign(&other_key, SPEC_ID, SPEC_TIMESTAMP, SPEC_BODY.as_bytes()),
            sign(&key, "msg_other", SPEC_TIMESTAMP, SPEC_BODY.as_bytes()),
            sign(&key, SPEC_ID, SPEC_TIMESTAMP + 1, SPEC_BODY.as_bytes()),
            sign(&key, SPEC_ID, SPEC_TIMESTAMP, br#"{"test": 2432232315}"#),
        ];
        for variant in variants {
            assert_ne!(variant, base);
            assert!(variant.starts_with("v1,") && variant.len() == 3 + 44, "{variant}");
        }
    }

    fn check(text: &str, expected: Result<(), SecretError>) {
        let got = CallbackSecret::parse(text).map(|_| ());
        assert_eq!(got, expected, "{text:?}");
        if let Err(error) = got {
            let payload = text.trim().trim_start_matches(SECRET_PREFIX);
            assert!(payload.is_empty() || !error.to_string().contains(payload), "{error} echoes the secret");
        }
    }

    #[test]
    fn parses_secrets() {
        use SecretError::*;
        check(SPEC_SECRET, Ok(()));
        check(&format!("  {SPEC_SECRET}\n"), Ok(()));
        // 32 bytes, padded and unpadded.
        check("whsec_c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LTMyYiE=", Ok(()));
        check("whsec_c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LTMyYiE", Ok(()));
        check(&format!("whsec_{}", STANDARD.encode([7u8; 64])), Ok(()));
        check(&format!("whsec_{}", STANDARD.encode([7u8; 65])), Err(TooLong { len: 65 }));
        check(&format!("whsec_{}", "A".repeat(10_000)), Err(TooLong { len: 7500 }));
        check(&format!("whsec_{}", STANDARD.encode([7u8; 23])), Err(TooShort { len: 23 }));
        check("whsec_", Err(TooShort { len: 0 }));
        check("whsec_dGVzdC1rZXktYnl0ZXM=", Err(TooShort { len: 14 }));
        check("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", Err(MissingPrefix));
        check("WHSEC_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", Err(MissingPrefix));
        check("", Err(MissingPrefix));
        check("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLa!w", Err(NotBase64));
        check("whsec_MfKQ9r8GKYqrTwjUPD8I LPZIo2LaLaSw", Err(NotBase64));
        check("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSwA", Err(NotBase64));
        // URL-safe alphabet is not the spec's.
        check("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2La-_Sw", Err(NotBase64));
        check("whsec_\u{e9}\u{e9}\u{e9}", Err(NotBase64));
    }

    #[test]
    fn debug_redacts() {
        let shown = format!("{:?}", secret(SPEC_SECRET));
        assert!(!shown.contains("MfKQ9r8G"), "{shown}");
        assert!(shown.contains("redacted"), "{shown}");
    }

    #[test]
    fn new_secrets_parse_and_differ() {
        let (a, b) = (new_secret_text().unwrap_or_default(), new_secret_text().unwrap_or_default());
        assert!(a.starts_with("whsec_") && a.len() == 6 + 44, "{a}");
        assert_ne!(a, b);
        assert!(CallbackSecret::parse(&a).is_ok(), "{a}");
    }
}
