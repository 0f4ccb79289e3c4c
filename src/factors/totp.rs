//! One-time passwords: HOTP (RFC 4226) and TOTP (RFC 6238) with HMAC-SHA1/256/512, the
//! `otpauth://` provisioning URI authenticator apps scan, and RFC 4648 base32 for its secret.
//!
//! Pure functions of (secret, time/counter); replay protection (the last accepted step) is the
//! caller's state, passed in and returned. Not here: storage, encryption.

use hmac::{Hmac, Mac};
use subtle::ConstantTimeEq;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    Sha1,
    Sha256,
    Sha512,
}

impl Algorithm {
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::Sha1 => "SHA1",
            Algorithm::Sha256 => "SHA256",
            Algorithm::Sha512 => "SHA512",
        }
    }
}

/// TOTP parameters. `Default` is what every authenticator app supports: SHA1, 6 digits, 30 s.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TotpParams {
    pub algorithm: Algorithm,
    pub digits: u32,
    pub period: u64,
}

impl Default for TotpParams {
    fn default() -> Self {
        TotpParams {
            algorithm: Algorithm::Sha1,
            digits: 6,
            period: 30,
        }
    }
}

/// Steps either side of now that are accepted (clock drift, typing time).
pub const WINDOW: i64 = 1;

fn hmac(alg: Algorithm, key: &[u8], msg: &[u8]) -> Vec<u8> {
    // HMAC accepts keys of any length, so new_from_slice cannot fail.
    match alg {
        Algorithm::Sha1 => Hmac::<sha1::Sha1>::new_from_slice(key)
            .map(|mut m| {
                m.update(msg);
                m.finalize().into_bytes().to_vec()
            })
            .unwrap_or_default(),
        Algorithm::Sha256 => Hmac::<sha2::Sha256>::new_from_slice(key)
            .map(|mut m| {
                m.update(msg);
                m.finalize().into_bytes().to_vec()
            })
            .unwrap_or_default(),
        Algorithm::Sha512 => Hmac::<sha2::Sha512>::new_from_slice(key)
            .map(|mut m| {
                m.update(msg);
                m.finalize().into_bytes().to_vec()
            })
            .unwrap_or_default(),
    }
}

/// RFC 4226 §5.3: HMAC over the big-endian counter, dynamic truncation, `digits` decimal digits
/// (6..=8 are meaningful; anything else is clamped into that range).
pub fn hotp(secret: &[u8], counter: u64, digits: u32, alg: Algorithm) -> String {
    let digits = digits.clamp(6, 8);
    let mac = hmac(alg, secret, &counter.to_be_bytes());
    let offset = mac.last().map(|b| (b & 0x0f) as usize).unwrap_or(0);
    let bin = match mac.get(offset..offset + 4) {
        Some(b) => u32::from_be_bytes([b[0] & 0x7f, b[1], b[2], b[3]]),
        None => 0,
    };
    let code = bin % 10u32.pow(digits);
    format!("{code:0width$}", width = digits as usize)
}

/// The time step of `unix_time` (seconds; T0 = 0).
pub fn time_step(unix_time: i64, period: u64) -> i64 {
    let period = period.max(1) as i64;
    unix_time.div_euclid(period)
}

/// RFC 6238 TOTP at `unix_time`.
pub fn totp(secret: &[u8], unix_time: i64, p: TotpParams) -> String {
    let step = time_step(unix_time, p.period);
    hotp(secret, step.max(0) as u64, p.digits, p.algorithm)
}

fn ct_eq(a: &str, b: &str) -> bool {
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

/// Checks `code` within ±`WINDOW` steps of `unix_time`, refusing any step at or before
/// `last_step` (a code is good once). Returns the matched step, which the caller stores as the
/// new `last_step`.
pub fn verify_totp(
    secret: &[u8],
    code: &str,
    unix_time: i64,
    p: TotpParams,
    last_step: Option<i64>,
) -> Option<i64> {
    let code = code.trim();
    if code.len() != p.digits as usize || !code.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let now = time_step(unix_time, p.period);
    let mut found = None;
    // Check every candidate (no early exit) so timing does not reveal which step matched.
    for step in (now - WINDOW)..=(now + WINDOW) {
        if step < 0 || last_step.is_some_and(|l| step <= l) {
            continue;
        }
        if ct_eq(&hotp(secret, step as u64, p.digits, p.algorithm), code) && found.is_none() {
            found = Some(step);
        }
    }
    found
}

/// HOTP look-ahead: checks counters `next..next+look_ahead`; returns the counter after the
/// matched one (the new `next`).
pub fn verify_hotp(
    secret: &[u8],
    code: &str,
    next: u64,
    look_ahead: u64,
    digits: u32,
    alg: Algorithm,
) -> Option<u64> {
    let code = code.trim();
    if code.len() != digits as usize || !code.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let mut found = None;
    for c in next..next.saturating_add(look_ahead) {
        if ct_eq(&hotp(secret, c, digits, alg), code) && found.is_none() {
            found = Some(c + 1);
        }
    }
    found
}

const B32: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";

/// RFC 4648 base32 without padding (what `otpauth://` URIs carry).
pub fn base32_encode(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len().div_ceil(5) * 8);
    let mut buf: u64 = 0;
    let mut bits = 0u32;
    for &b in data {
        buf = (buf << 8) | b as u64;
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(B32[((buf >> bits) & 31) as usize] as char);
        }
    }
    if bits > 0 {
        out.push(B32[((buf << (5 - bits)) & 31) as usize] as char);
    }
    out
}

/// Decodes base32 in any letter case, ignoring spaces, dashes and `=` padding.
pub fn base32_decode(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len() * 5 / 8);
    let mut buf: u64 = 0;
    let mut bits = 0u32;
    for c in text.bytes() {
        if matches!(c, b' ' | b'-' | b'=') {
            continue;
        }
        let v = B32.iter().position(|&x| x == c.to_ascii_uppercase())? as u64;
        buf = (buf << 5) | v;
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            out.push((buf >> bits) as u8);
        }
    }
    Some(out)
}

fn uri_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'@') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `otpauth://totp/deprovd:<account>?secret=…&issuer=deprovd&algorithm=SHA1&digits=6&period=30`
pub fn otpauth_uri(account: &str, secret: &[u8], p: TotpParams) -> String {
    format!(
        "otpauth://totp/deprovd:{}?secret={}&issuer=deprovd&algorithm={}&digits={}&period={}",
        uri_escape(account),
        base32_encode(secret),
        p.algorithm.as_str(),
        p.digits,
        p.period
    )
}

/// `otpauth://hotp/deprovd:<account>?secret=…&issuer=deprovd&algorithm=SHA1&digits=6&counter=N`
pub fn otpauth_hotp_uri(account: &str, secret: &[u8], counter: u64) -> String {
    format!(
        "otpauth://hotp/deprovd:{}?secret={}&issuer=deprovd&algorithm=SHA1&digits=6&counter={}",
        uri_escape(account),
        base32_encode(secret),
        counter
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEED20: &[u8] = b"12345678901234567890";
    const SEED32: &[u8] = b"12345678901234567890123456789012";
    const SEED64: &[u8] = b"1234567890123456789012345678901234567890123456789012345678901234";

    #[test]
    fn rfc4226_appendix_d() {
        let expected = [
            "755224", "287082", "359152", "969429", "338314", "254676", "287922", "162583",
            "399871", "520489",
        ];
        for (i, want) in expected.iter().enumerate() {
            assert_eq!(
                hotp(SEED20, i as u64, 6, Algorithm::Sha1),
                *want,
                "counter {i}"
            );
        }
    }

    #[test]
    fn rfc6238_appendix_b() {
        let rows: [(i64, &str, &str, &str); 6] = [
            (59, "94287082", "46119246", "90693936"),
            (1111111109, "07081804", "68084774", "25091201"),
            (1111111111, "14050471", "67062674", "99943326"),
            (1234567890, "89005924", "91819424", "93441116"),
            (2000000000, "69279037", "90698825", "38618901"),
            (20000000000, "65353130", "77737706", "47863826"),
        ];
        for (t, sha1, sha256, sha512) in rows {
            let p = |algorithm| TotpParams {
                algorithm,
                digits: 8,
                period: 30,
            };
            assert_eq!(totp(SEED20, t, p(Algorithm::Sha1)), sha1, "SHA1 at {t}");
            assert_eq!(
                totp(SEED32, t, p(Algorithm::Sha256)),
                sha256,
                "SHA256 at {t}"
            );
            assert_eq!(
                totp(SEED64, t, p(Algorithm::Sha512)),
                sha512,
                "SHA512 at {t}"
            );
        }
    }

    #[test]
    fn six_digits_are_the_low_digits() {
        let p = TotpParams::default();
        assert_eq!(totp(SEED20, 59, p), "287082");
    }

    #[test]
    fn window_and_replay() {
        let p = TotpParams::default();
        let t = 1_700_000_000;
        let step = time_step(t, 30);
        let now_code = totp(SEED20, t, p);
        assert_eq!(verify_totp(SEED20, &now_code, t, p, None), Some(step));
        // replay of the same step refused
        assert_eq!(verify_totp(SEED20, &now_code, t, p, Some(step)), None);
        // previous and next step accepted, two steps away not
        let prev = totp(SEED20, t - 30, p);
        let next = totp(SEED20, t + 30, p);
        let far = totp(SEED20, t + 60, p);
        assert_eq!(verify_totp(SEED20, &prev, t, p, None), Some(step - 1));
        assert_eq!(verify_totp(SEED20, &next, t, p, None), Some(step + 1));
        assert_ne!(far, now_code);
        assert_eq!(verify_totp(SEED20, &far, t, p, None), None);
        // an older code after a newer one was used is refused
        assert_eq!(verify_totp(SEED20, &prev, t, p, Some(step)), None);
        // malformed input
        assert_eq!(verify_totp(SEED20, "12345", t, p, None), None);
        assert_eq!(verify_totp(SEED20, "abcdef", t, p, None), None);
        assert_eq!(verify_totp(SEED20, "", t, p, None), None);
    }

    #[test]
    fn hotp_look_ahead() {
        assert_eq!(
            verify_hotp(SEED20, "969429", 0, 10, 6, Algorithm::Sha1),
            Some(4)
        );
        assert_eq!(
            verify_hotp(SEED20, "969429", 4, 10, 6, Algorithm::Sha1),
            None
        );
        assert_eq!(
            verify_hotp(SEED20, "520489", 0, 5, 6, Algorithm::Sha1),
            None
        );
    }

    #[test]
    fn base32_rfc4648_vectors() {
        let cases = [
            ("", ""),
            ("f", "MY"),
            ("fo", "MZXQ"),
            ("foo", "MZXW6"),
            ("foob", "MZXW6YQ"),
            ("fooba", "MZXW6YTB"),
            ("foobar", "MZXW6YTBOI"),
        ];
        for (plain, enc) in cases {
            assert_eq!(base32_encode(plain.as_bytes()), enc);
            assert_eq!(base32_decode(enc).unwrap(), plain.as_bytes());
        }
        assert_eq!(base32_decode("mzxw 6ytb-oi======").unwrap(), b"foobar");
        assert_eq!(base32_decode("MZ1"), None);
        assert_eq!(base32_encode(SEED20), "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ");
    }

    #[test]
    fn uri_shape() {
        let uri = otpauth_uri("alice@example.com", SEED20, TotpParams::default());
        assert_eq!(
            uri,
            "otpauth://totp/deprovd:alice@example.com?secret=GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ\
             &issuer=deprovd&algorithm=SHA1&digits=6&period=30"
        );
        assert!(otpauth_uri("a b&c", SEED20, TotpParams::default()).contains("deprovd:a%20b%26c?"));
    }

    proptest::proptest! {
        #[test]
        fn base32_round_trips(data in proptest::collection::vec(proptest::num::u8::ANY, 0..64)) {
            proptest::prop_assert_eq!(base32_decode(&base32_encode(&data)).unwrap(), data);
        }
    }
}
