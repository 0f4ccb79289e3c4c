//! How a webhook request is signed, and how a receiver checks it.
//!
//! Every delivery carries three headers:
//!
//! - `X-Deprovd-Event-Id`: the event's id (a UUID). The same event may arrive more than once
//!   (a retry after a lost answer); receivers deduplicate on this id.
//! - `X-Deprovd-Timestamp`: when this attempt was sent, in Unix seconds. Retries send a fresh
//!   timestamp with the same body.
//! - `X-Deprovd-Signature`: `v1=<hex>` where `<hex>` is the lowercase hex of
//!   `HMAC-SHA256(secret, "<timestamp>.<body>")`: the timestamp header's decimal text, one `.`,
//!   then the raw request body bytes exactly as received. The secret is the subscription's secret
//!   string as UTF-8 bytes.
//!
//! A receiver recomputes the HMAC over the raw body, compares it in constant time, and refuses
//! a timestamp more than a few minutes away from its clock (that stops replays of a captured
//! request). The header may carry several comma-separated `v1=` values (kept for a future secret
//! rotation); any one matching is enough.
//!
//! Not here: sending (see `worker.rs`), storing secrets (see `store.rs`).

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The header carrying the event id.
pub const HEADER_EVENT_ID: &str = "X-Deprovd-Event-Id";
/// The header carrying the Unix timestamp (seconds) of this attempt.
pub const HEADER_TIMESTAMP: &str = "X-Deprovd-Timestamp";
/// The header carrying `v1=<hex HMAC-SHA256>`.
pub const HEADER_SIGNATURE: &str = "X-Deprovd-Signature";

type HmacSha256 = Hmac<Sha256>;

fn mac(secret: &[u8], timestamp: i64, body: &[u8]) -> HmacSha256 {
    // HMAC accepts keys of any length; this cannot fail.
    let mut mac = match HmacSha256::new_from_slice(secret) {
        Ok(m) => m,
        Err(_) => unreachable!("HMAC takes keys of any length"),
    };
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

/// The `X-Deprovd-Signature` value for `body` sent at `timestamp`: `v1=<lowercase hex>`.
pub fn sign(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    format!(
        "v1={}",
        hex::encode(mac(secret, timestamp, body).finalize().into_bytes())
    )
}

/// Whether `header` (an `X-Deprovd-Signature` value) signs `body` at `timestamp` with `secret`.
/// Constant time in the MAC comparison. It does not judge the timestamp's age: receivers refuse
/// old timestamps themselves (see [`verify_signature_at`]).
pub fn verify_signature(secret: &[u8], header: &str, timestamp: i64, body: &[u8]) -> bool {
    let mut ok = false;
    for part in header.split(',') {
        let Some(hexsig) = part.trim().strip_prefix("v1=") else {
            continue;
        };
        let Ok(given) = hex::decode(hexsig) else {
            continue;
        };
        // `verify_slice` compares in constant time.
        if mac(secret, timestamp, body).verify_slice(&given).is_ok() {
            ok = true;
        }
    }
    ok
}

/// [`verify_signature`] plus the replay check a receiver should make: `timestamp` must be within
/// `tolerance_secs` of `now` (both Unix seconds).
pub fn verify_signature_at(
    secret: &[u8],
    header: &str,
    timestamp: i64,
    body: &[u8],
    now: i64,
    tolerance_secs: i64,
) -> bool {
    now.checked_sub(timestamp)
        .is_some_and(|d| d.checked_abs().is_some_and(|d| d <= tolerance_secs))
        && verify_signature(secret, header, timestamp, body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_answer() {
        // HMAC-SHA256(key="secret", "1700000000.{}"), computed independently with
        // `printf '1700000000.{}' | openssl dgst -sha256 -hmac secret`.
        assert_eq!(
            sign(b"secret", 1_700_000_000, b"{}"),
            "v1=b8569b78799ff9e3cbff0fc2d63a33a2b57f3282abd07c37ae5e8e7d79a5f163"
        );
    }

    #[test]
    fn round_trip_and_tamper() {
        let body = br#"{"id":"e1","type":"factor_revoked"}"#;
        let sig = sign(b"k1", 42, body);
        assert!(sig.starts_with("v1=") && sig.len() == 3 + 64);
        assert!(verify_signature(b"k1", &sig, 42, body));
        assert!(!verify_signature(b"k2", &sig, 42, body), "other secret");
        assert!(!verify_signature(b"k1", &sig, 43, body), "other timestamp");
        assert!(!verify_signature(b"k1", &sig, 42, b"{}"), "other body");
        assert!(!verify_signature(b"k1", "", 42, body));
        assert!(!verify_signature(b"k1", "v1=zz", 42, body));
        assert!(!verify_signature(
            b"k1",
            &sig.replace("v1=", "v0="),
            42,
            body
        ));
        // several values: any one matching is enough
        let multi = format!("v1=00, {sig}");
        assert!(verify_signature(b"k1", &multi, 42, body));
    }

    #[test]
    fn timestamp_and_body_are_separated() {
        // "1" + ".23" must not collide with "12" + ".3": the dot is fixed after the timestamp.
        assert_ne!(sign(b"k", 1, b"23"), sign(b"k", 12, b"3"));
    }

    #[test]
    fn replay_window() {
        let sig = sign(b"k", 1000, b"x");
        assert!(verify_signature_at(b"k", &sig, 1000, b"x", 1200, 300));
        assert!(verify_signature_at(b"k", &sig, 1000, b"x", 800, 300));
        assert!(!verify_signature_at(b"k", &sig, 1000, b"x", 1301, 300));
        assert!(!verify_signature_at(b"k", &sig, 1000, b"x", i64::MIN, 300));
    }
}
