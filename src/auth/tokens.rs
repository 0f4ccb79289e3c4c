//! Opaque bearer tokens: their scopes, how they are minted, hashed and checked.
//!
//! A token is `dpv_<scope>_<43 chars of base64url>` carrying 32 bytes from the OS CSPRNG. The
//! prefix lets secret scanners (GitHub, gitleaks, trufflehog) recognise a leaked deprovd token;
//! it carries no authority: the scope that counts is the one stored with the token's hash.
//! Only the hex SHA-256 of the token is stored. This module does no I/O; the lookup lives in
//! `crate::store::tenants` and the request path in `crate::auth::Authenticator`.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use rand::rngs::OsRng;
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Every token we mint starts with this, so a quick prefix check rejects foreign garbage
/// before it costs a database query.
pub const TOKEN_PREFIX: &str = "dpv_";

/// Tokens longer than this are refused before hashing or lookup.
pub const MAX_TOKEN_LEN: usize = 4096;

/// What a token may do. The scope stored in the `tokens` table is authoritative.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scope {
    /// SCIM provisioning (`/scim/v2/`), used by the IdP.
    Scim,
    /// The admin API (`/admin/v1/`), read and write.
    Admin,
    /// The admin API read-only: reports and audit export.
    Auditor,
}

impl Scope {
    pub const ALL: [Scope; 3] = [Scope::Scim, Scope::Admin, Scope::Auditor];

    /// The name stored in `tokens.scope` and used on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Scim => "scim",
            Scope::Admin => "admin",
            Scope::Auditor => "auditor",
        }
    }

    /// Parses `scim`, `admin` or `auditor` (exactly; the database CHECK uses the same words).
    pub fn parse(s: &str) -> Option<Scope> {
        match s {
            "scim" => Some(Scope::Scim),
            "admin" => Some(Scope::Admin),
            "auditor" => Some(Scope::Auditor),
            _ => None,
        }
    }

    /// The token prefix for this scope, e.g. `dpv_scim_`.
    pub fn token_prefix(self) -> &'static str {
        match self {
            Scope::Scim => "dpv_scim_",
            Scope::Admin => "dpv_admin_",
            Scope::Auditor => "dpv_audit_",
        }
    }
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Scope {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Scope::parse(s)
            .ok_or_else(|| format!("unknown scope {s:?} (expected scim, admin or auditor)"))
    }
}

/// Mints a new token for `scope`: returns `(plaintext, hash)`. Show the plaintext once, store
/// only the hash.
pub fn generate_token(scope: Scope) -> (String, String) {
    let mut secret = [0u8; 32];
    OsRng.fill_bytes(&mut secret);
    let token = format!("{}{}", scope.token_prefix(), URL_SAFE_NO_PAD.encode(secret));
    let hash = hash_token(&token);
    (token, hash)
}

/// Hex SHA-256 of the whole token (prefix included), as stored in `tokens.token_hash`.
///
/// A plain fast hash is right here, unlike for passwords: the token carries 256 bits from a
/// CSPRNG, so nobody can enumerate candidates and a slow KDF would buy nothing except cost on
/// every request. What matters is that a database leak does not hand out usable tokens, and a
/// preimage of SHA-256 is out of reach.
pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Compares a stored hash with a computed one in constant time. The lookup already matched by
/// hash; this is defence in depth against anything that could leak through index timing or a
/// collation that compares loosely.
pub fn hashes_match(stored: &str, computed: &str) -> bool {
    let a = stored.as_bytes();
    let b = computed.as_bytes();
    // Lengths are public (always 64 hex chars); ct_eq on slices of unequal length is false.
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

/// Cheap shape check before any hashing or lookup: one of our prefixes followed by base64url.
/// Anything else cannot be a token we minted.
pub fn looks_like_opaque_token(token: &str) -> bool {
    if token.len() > MAX_TOKEN_LEN || !token.starts_with(TOKEN_PREFIX) {
        return false;
    }
    let Some(rest) = Scope::ALL
        .iter()
        .find_map(|s| token.strip_prefix(s.token_prefix()))
    else {
        return false;
    };
    !rest.is_empty()
        && rest
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn scope_round_trips_and_rejects_unknown() {
        for s in Scope::ALL {
            assert_eq!(Scope::parse(s.as_str()), Some(s));
            assert_eq!(s.as_str().parse::<Scope>(), Ok(s));
        }
        assert_eq!(Scope::parse("Admin"), None);
        assert_eq!(Scope::parse("audit"), None);
        assert_eq!(Scope::parse(""), None);
    }

    #[test]
    fn token_format_per_scope() {
        for (scope, prefix) in [
            (Scope::Scim, "dpv_scim_"),
            (Scope::Admin, "dpv_admin_"),
            (Scope::Auditor, "dpv_audit_"),
        ] {
            let (token, hash) = generate_token(scope);
            let rest = token.strip_prefix(prefix).expect("prefix");
            // 32 bytes base64url without padding = 43 characters
            assert_eq!(rest.len(), 43, "{token}");
            assert_eq!(URL_SAFE_NO_PAD.decode(rest).expect("b64").len(), 32);
            assert!(!token.contains('='));
            assert_eq!(hash.len(), 64);
            assert!(hash
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
            assert_eq!(hash, hash_token(&token));
            assert!(looks_like_opaque_token(&token));
        }
    }

    #[test]
    fn tokens_are_unique() {
        let mut seen = HashSet::new();
        for _ in 0..2000 {
            let (t, h) = generate_token(Scope::Scim);
            assert!(seen.insert(t));
            assert!(seen.insert(h));
        }
    }

    #[test]
    fn hash_is_sha256_of_whole_token() {
        // SHA-256("abc"), a published test vector
        assert_eq!(
            hash_token("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn constant_time_compare() {
        let (_, h) = generate_token(Scope::Admin);
        assert!(hashes_match(&h, &h.clone()));
        let mut other = h.clone().into_bytes();
        other[63] = if other[63] == b'0' { b'1' } else { b'0' };
        assert!(!hashes_match(&h, &String::from_utf8(other).unwrap()));
        assert!(!hashes_match(&h, &h[..63]));
        assert!(!hashes_match("", &h));
    }

    #[test]
    fn shape_check() {
        assert!(!looks_like_opaque_token("dpv_"));
        assert!(!looks_like_opaque_token("dpv_scim_"));
        assert!(!looks_like_opaque_token("dpv_root_abc"));
        assert!(!looks_like_opaque_token("dpv_scim_ab c"));
        assert!(!looks_like_opaque_token("dpv_scim_ab+c"));
        assert!(!looks_like_opaque_token("xyz_scim_abc"));
        let long = format!("dpv_scim_{}", "a".repeat(MAX_TOKEN_LEN));
        assert!(!looks_like_opaque_token(&long));
    }
}
