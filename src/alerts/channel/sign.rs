//! Standard Webhooks signatures (<https://www.standardwebhooks.com/>): the
//! receiver checks `webhook-signature` = `v1,` + base64(HMAC-SHA256(key,
//! "{webhook-id}.{webhook-timestamp}.{body}")), where the key is the
//! base64-decoded part of the `whsec_` secret.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The prefix of a Standard Webhooks secret.
pub const SECRET_PREFIX: &str = "whsec_";

/// Fewest key bytes a webhook secret may decode to (the spec recommends 24
/// to 64; 16 bytes is 128 bits, the floor for an HMAC key).
pub const MIN_SECRET_BYTES: usize = 16;

/// Most key bytes a webhook secret may decode to (the spec's upper end).
pub const MAX_SECRET_BYTES: usize = 64;

/// Decodes `whsec_<base64>` into the HMAC key, or says what is wrong.
pub fn decode_secret(secret: &str) -> Result<Vec<u8>, String> {
    let Some(b64) = secret.strip_prefix(SECRET_PREFIX) else {
        return Err(format!("must start with {SECRET_PREFIX:?}"));
    };
    let key = STANDARD
        .decode(b64)
        .map_err(|_| format!("the part after {SECRET_PREFIX:?} is not valid base64"))?;
    if key.len() < MIN_SECRET_BYTES {
        return Err(format!(
            "decodes to {} bytes; at least {MIN_SECRET_BYTES} are required",
            key.len()
        ));
    }
    if key.len() > MAX_SECRET_BYTES {
        return Err(format!(
            "decodes to {} bytes; at most {MAX_SECRET_BYTES} are allowed",
            key.len()
        ));
    }
    Ok(key)
}

/// The `webhook-signature` value for one delivery.
pub fn sign(key: &[u8], id: &str, timestamp_s: i64, body: &[u8]) -> String {
    // HMAC accepts keys of any length: `new_from_slice` cannot fail for it.
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(key) else {
        return String::new();
    };
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp_s.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The specification's published vector (also in every library of the
    /// standard-webhooks repository and in Svix's manual-verification docs).
    #[test]
    fn matches_the_standard_webhooks_test_vector() {
        let key = decode_secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        assert_eq!(
            sign(
                &key,
                "msg_p5jXN8AQM9LWM0D4loKWxJek",
                1_614_265_330,
                br#"{"test": 2432232314}"#
            ),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn any_change_changes_the_signature() {
        let key = decode_secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let base = sign(&key, "msg_1", 1, b"{}");
        assert_ne!(base, sign(&key, "msg_2", 1, b"{}"));
        assert_ne!(base, sign(&key, "msg_1", 2, b"{}"));
        assert_ne!(base, sign(&key, "msg_1", 1, b"{ }"));
        assert_ne!(base, sign(&key[1..], "msg_1", 1, b"{}"));
    }

    #[test]
    fn bad_secrets_are_refused() {
        assert!(decode_secret("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").is_err());
        assert!(decode_secret("whsec_not base64!").is_err());
        // "short" is 5 bytes.
        assert!(decode_secret("whsec_c2hvcnQ=")
            .unwrap_err()
            .contains("at least 16"));
        let long = STANDARD.encode([7u8; 65]);
        assert!(decode_secret(&format!("whsec_{long}")).is_err());
        let ok = STANDARD.encode([7u8; 16]);
        assert_eq!(
            decode_secret(&format!("whsec_{ok}")).unwrap(),
            vec![7u8; 16]
        );
    }
}
