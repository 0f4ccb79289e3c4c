//! OAuth 2.0 JWT bearer tokens (RFC 7523 / RFC 9068 style) from a tenant's own IdP, accepted in
//! place of a SCIM token.
//!
//! The flow: read the token's header and payload WITHOUT trusting them, only to learn `alg`,
//! `kid` and `iss`; the caller picks the tenant(s) configured for that issuer; we fetch and
//! cache that tenant's JWKS and verify the signature with the key named by `kid`, then `exp`,
//! `nbf`, `iss` and `aud`.
//!
//! The algorithm is decided by the key, never by the token: each JWK maps to exactly one
//! algorithm of our allow-list (RSA → RS256, EC P-256 → ES256, OKP Ed25519 → EdDSA) and the
//! token's `alg` must equal it. `none`, every HS* (the "HMAC keyed with the public key"
//! confusion attack) and anything else are refused before a key is even looked up.
//!
//! What it is not: an OIDC client (no discovery, no userinfo), nor where tenants are chosen or
//! scopes granted (`crate::auth::Authenticator`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::jwk::{
    AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, KeyOperations, PublicKeyUse,
};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use crate::store::tenants::TenantJwt;

/// Most bytes of a JWKS document we read.
const MAX_JWKS_BYTES: usize = 256 * 1024;
/// Most keys of one JWKS we keep.
const MAX_KEYS: usize = 64;
/// Most JWKS URLs cached at once (bounded by configured tenants in practice).
const MAX_SLOTS: usize = 1024;

/// Tunables. `Default` is what production uses.
#[derive(Debug, Clone)]
pub struct JwtSettings {
    /// How long a fetched key set is used before it is fetched again.
    pub jwks_ttl: Duration,
    /// Shortest time between two fetches of one JWKS triggered by an unknown `kid`, so tokens
    /// with random kids cannot make us hammer the IdP.
    pub min_refetch_interval: Duration,
    /// Shortest time between two fetch attempts when we hold no usable key set (cold start or
    /// after failures).
    pub failed_fetch_backoff: Duration,
    /// How long past its TTL an old key set is still used while the IdP cannot be reached.
    pub stale_grace: Duration,
    /// Timeout of one JWKS fetch, connection to last byte.
    pub fetch_timeout: Duration,
    /// Clock skew allowed on `exp` and `nbf`, in seconds.
    pub leeway_secs: u64,
}

impl Default for JwtSettings {
    fn default() -> Self {
        JwtSettings {
            jwks_ttl: Duration::from_secs(600),
            min_refetch_interval: Duration::from_secs(30),
            failed_fetch_backoff: Duration::from_secs(5),
            stale_grace: Duration::from_secs(3600),
            fetch_timeout: Duration::from_secs(5),
            leeway_secs: 60,
        }
    }
}

/// Why a JWT was not accepted. Details are safe to show the caller: they never contain the
/// token or key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    #[error("malformed JWT: {0}")]
    Malformed(&'static str),
    #[error("JWT refused: {0}")]
    Refused(String),
    /// The issuer's keys could not be fetched and none are cached: we cannot decide.
    #[error("signing keys of the issuer are unavailable")]
    KeysUnavailable,
}

/// What the unverified header and payload say. Used only to choose tenant and key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peek {
    pub alg: Algorithm,
    pub kid: Option<String>,
    pub iss: String,
}

/// The verified claims we use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedClaims {
    pub sub: Option<String>,
    pub client_id: Option<String>,
}

fn is_b64url(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Three dot-separated base64url parts (the signature may be empty, as with `alg: none`, so
/// such tokens get a precise refusal rather than "unknown token").
pub fn looks_like_jwt(token: &str) -> bool {
    let mut parts = token.split('.');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(h), Some(p), Some(s), None) => {
            !h.is_empty() && !p.is_empty() && is_b64url(h) && is_b64url(p) && is_b64url(s)
        }
        _ => false,
    }
}

fn decode_json_part(part: &str) -> Result<serde_json::Map<String, serde_json::Value>, JwtError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| JwtError::Malformed("bad base64url"))?;
    match serde_json::from_slice(&bytes) {
        Ok(serde_json::Value::Object(m)) => Ok(m),
        _ => Err(JwtError::Malformed("part is not a JSON object")),
    }
}

/// Our allow-list. The mapping is by exact name; everything else is refused here.
fn allowed_alg(name: &str) -> Result<Algorithm, JwtError> {
    match name {
        "RS256" => Ok(Algorithm::RS256),
        "ES256" => Ok(Algorithm::ES256),
        "EdDSA" => Ok(Algorithm::EdDSA),
        n if n.eq_ignore_ascii_case("none") => Err(JwtError::Refused(
            "unsigned tokens (alg none) are not accepted".into(),
        )),
        n if n.starts_with("HS") => Err(JwtError::Refused(
            "HMAC-signed tokens are not accepted".into(),
        )),
        _ => Err(JwtError::Refused(
            "algorithm not accepted (RS256, ES256, EdDSA only)".into(),
        )),
    }
}

/// Reads `alg`, `kid` and `iss` without verifying anything. Refuses disallowed algorithms and
/// critical header extensions (we implement none, so RFC 7515 §4.1.11 says reject).
pub fn peek(token: &str) -> Result<Peek, JwtError> {
    if !looks_like_jwt(token) {
        return Err(JwtError::Malformed("expected three base64url parts"));
    }
    let mut parts = token.split('.');
    let (Some(h), Some(p)) = (parts.next(), parts.next()) else {
        return Err(JwtError::Malformed("expected three base64url parts"));
    };
    let header = decode_json_part(h)?;
    let alg = match header.get("alg") {
        Some(serde_json::Value::String(a)) => allowed_alg(a)?,
        _ => return Err(JwtError::Malformed("header has no alg")),
    };
    if header.contains_key("crit") {
        return Err(JwtError::Refused(
            "critical header extensions are not supported".into(),
        ));
    }
    let kid = match header.get("kid") {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::String(k)) if k.len() <= 256 => Some(k.clone()),
        Some(_) => return Err(JwtError::Malformed("bad kid")),
    };
    if p.is_empty() {
        return Err(JwtError::Malformed("empty payload"));
    }
    let payload = decode_json_part(p)?;
    let iss = match payload.get("iss") {
        Some(serde_json::Value::String(i)) if !i.is_empty() => i.clone(),
        _ => return Err(JwtError::Refused("token has no iss".into())),
    };
    Ok(Peek { alg, kid, iss })
}

/// A usable verification key: the one algorithm it may verify, decided by its type.
#[derive(Clone)]
struct VerifyKey {
    kid: Option<String>,
    alg: Algorithm,
    key: DecodingKey,
}

struct KeySet {
    fetched_at: Instant,
    keys: Vec<VerifyKey>,
}

impl KeySet {
    /// The key for this token, or why none fits.
    fn select(&self, kid: Option<&str>, alg: Algorithm) -> Result<Option<VerifyKey>, JwtError> {
        match kid {
            Some(kid) => match self.keys.iter().find(|k| k.kid.as_deref() == Some(kid)) {
                None => Ok(None),
                Some(k) if k.alg == alg => Ok(Some(k.clone())),
                Some(_) => Err(JwtError::Refused(
                    "token algorithm does not match its key".into(),
                )),
            },
            None => {
                let mut of_alg = self.keys.iter().filter(|k| k.alg == alg);
                match (of_alg.next(), of_alg.next()) {
                    (Some(k), None) => Ok(Some(k.clone())),
                    (None, _) => Err(JwtError::Refused(
                        "no key of the token's algorithm in the key set".into(),
                    )),
                    (Some(_), Some(_)) => Err(JwtError::Refused(
                        "token has no kid and the key set has several keys".into(),
                    )),
                }
            }
        }
    }
}

/// Maps a JWK to the single algorithm it may verify, or `None` if we do not use it.
fn usable_key(jwk: &Jwk) -> Option<VerifyKey> {
    if let Some(u) = &jwk.common.public_key_use {
        if *u != PublicKeyUse::Signature {
            return None;
        }
    }
    if let Some(ops) = &jwk.common.key_operations {
        if !ops.contains(&KeyOperations::Verify) {
            return None;
        }
    }
    let (alg, declared) = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => (Algorithm::RS256, KeyAlgorithm::RS256),
        AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P256 => {
            (Algorithm::ES256, KeyAlgorithm::ES256)
        }
        AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => {
            (Algorithm::EdDSA, KeyAlgorithm::EdDSA)
        }
        // oct (symmetric) keys, other curves: never.
        _ => return None,
    };
    if let Some(a) = jwk.common.key_algorithm {
        if a != declared {
            return None;
        }
    }
    let key = DecodingKey::from_jwk(jwk).ok()?;
    Some(VerifyKey {
        kid: jwk.common.key_id.clone(),
        alg,
        key,
    })
}

/// Parses a JWKS document, keeping the keys we can use and skipping the rest (an IdP may
/// publish encryption keys or algorithms we do not accept next to its signing keys).
fn parse_jwks(body: &[u8]) -> Result<Vec<VerifyKey>, String> {
    #[derive(Deserialize)]
    struct Raw {
        keys: Vec<serde_json::Value>,
    }
    let raw: Raw = serde_json::from_slice(body).map_err(|e| format!("JWKS is not valid: {e}"))?;
    Ok(raw
        .keys
        .into_iter()
        .take(MAX_KEYS)
        .filter_map(|v| serde_json::from_value::<Jwk>(v).ok())
        .filter_map(|j| usable_key(&j))
        .collect())
}

/// One JWKS URL's cached keys and its fetch bookkeeping.
struct Slot {
    keys: RwLock<Option<Arc<KeySet>>>,
    /// Held while fetching, so concurrent requests wait for one fetch instead of each starting
    /// one; holds the time of the last attempt.
    fetch: tokio::sync::Mutex<Option<Instant>>,
}

impl Slot {
    fn snapshot(&self) -> Option<Arc<KeySet>> {
        self.keys.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// Verifies JWTs against tenants' JWKS, caching key sets per JWKS URL.
pub struct JwtVerifier {
    http: reqwest::Client,
    settings: JwtSettings,
    slots: Mutex<HashMap<String, Arc<Slot>>>,
}

#[derive(Deserialize)]
struct ClaimsOut {
    #[serde(default)]
    sub: Option<String>,
    #[serde(default)]
    client_id: Option<String>,
}

impl JwtVerifier {
    pub fn new(http: reqwest::Client, settings: JwtSettings) -> Self {
        JwtVerifier {
            http,
            settings,
            slots: Mutex::new(HashMap::new()),
        }
    }

    fn slot(&self, url: &str) -> Arc<Slot> {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = slots.get(url) {
            return s.clone();
        }
        if slots.len() >= MAX_SLOTS {
            slots.clear();
        }
        let s = Arc::new(Slot {
            keys: RwLock::new(None),
            fetch: tokio::sync::Mutex::new(None),
        });
        slots.insert(url.to_string(), s.clone());
        s
    }

    /// Verifies `token` (already `peek`ed) for one tenant's settings.
    pub async fn verify(
        &self,
        token: &str,
        peek: &Peek,
        tenant: &TenantJwt,
    ) -> Result<VerifiedClaims, JwtError> {
        if peek.iss != tenant.issuer {
            return Err(JwtError::Refused("issuer mismatch".into()));
        }
        let key = self
            .key_for(&tenant.jwks_url, peek.kid.as_deref(), peek.alg)
            .await?;
        // The algorithm list holds only the key's algorithm; jsonwebtoken also checks that the
        // key family matches and that the header's alg is in the list.
        let mut v = Validation::new(key.alg);
        v.leeway = self.settings.leeway_secs;
        v.validate_exp = true;
        v.validate_nbf = true;
        v.validate_aud = true;
        v.set_issuer(&[&tenant.issuer]);
        v.set_audience(&[&tenant.audience]);
        v.set_required_spec_claims(&["exp", "iss", "aud"]);
        let data = jsonwebtoken::decode::<ClaimsOut>(token, &key.key, &v).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind as K;
            let why = match e.kind() {
                K::InvalidSignature => "bad signature",
                K::ExpiredSignature => "token expired",
                K::ImmatureSignature => "token not yet valid (nbf)",
                K::InvalidAudience => "wrong audience",
                K::InvalidIssuer => "wrong issuer",
                K::MissingRequiredClaim(_) => "missing required claim (exp, iss, aud)",
                K::InvalidAlgorithm => "algorithm does not match the key",
                _ => "invalid token",
            };
            JwtError::Refused(why.to_string())
        })?;
        Ok(VerifiedClaims {
            sub: data.claims.sub,
            client_id: data.claims.client_id,
        })
    }

    async fn key_for(
        &self,
        url: &str,
        kid: Option<&str>,
        alg: Algorithm,
    ) -> Result<VerifyKey, JwtError> {
        let s = &self.settings;
        let slot = self.slot(url);
        let fresh = |set: &KeySet, now: Instant| now.duration_since(set.fetched_at) < s.jwks_ttl;

        // Hot path: a fresh set that has the key.
        if let Some(set) = slot.snapshot() {
            if fresh(&set, Instant::now()) {
                if let Some(k) = set.select(kid, alg)? {
                    return Ok(k);
                }
            }
        }

        // Need a fetch (cold, stale, or unknown kid). One at a time per URL.
        let mut last_attempt = slot.fetch.lock().await;
        let now = Instant::now();
        let current = slot.snapshot();
        if let Some(set) = &current {
            // Someone may have fetched while we waited.
            if fresh(set, now) {
                if let Some(k) = set.select(kid, alg)? {
                    return Ok(k);
                }
            }
        }
        let have_fresh = current.as_ref().is_some_and(|set| fresh(set, now));
        let min_gap = if have_fresh {
            s.min_refetch_interval
        } else {
            s.failed_fetch_backoff
        };
        let may_fetch = match *last_attempt {
            None => true,
            Some(t) => now.duration_since(t) >= min_gap,
        };
        let mut set = current;
        if may_fetch {
            *last_attempt = Some(now);
            match self.fetch(url).await {
                Ok(keys) => {
                    let new = Arc::new(KeySet {
                        fetched_at: Instant::now(),
                        keys,
                    });
                    *slot.keys.write().unwrap_or_else(|p| p.into_inner()) = Some(new.clone());
                    set = Some(new);
                }
                Err(e) => tracing::warn!(jwks_url = %url, error = %e, "JWKS fetch failed"),
            }
        }
        drop(last_attempt);

        let now = Instant::now();
        match set {
            Some(set) if now.duration_since(set.fetched_at) < s.jwks_ttl + s.stale_grace => set
                .select(kid, alg)?
                .ok_or_else(|| JwtError::Refused("unknown key id".into())),
            _ => Err(JwtError::KeysUnavailable),
        }
    }

    async fn fetch(&self, url: &str) -> Result<Vec<VerifyKey>, String> {
        let mut resp = self
            .http
            .get(url)
            .header(reqwest::header::ACCEPT, "application/json")
            .timeout(self.settings.fetch_timeout)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if !resp.status().is_success() {
            return Err(format!("HTTP {}", resp.status()));
        }
        if resp
            .content_length()
            .is_some_and(|n| n > MAX_JWKS_BYTES as u64)
        {
            return Err("JWKS too large".into());
        }
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| e.to_string())? {
            if body.len() + chunk.len() > MAX_JWKS_BYTES {
                return Err("JWKS too large".into());
            }
            body.extend_from_slice(&chunk);
        }
        parse_jwks(&body)
    }
}

#[cfg(test)]
pub(crate) mod testkit {
    //! Test keys (src/auth/testdata, generated with `openssl genpkey`) and a tiny JWKS server.

    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};

    use jsonwebtoken::{Algorithm, EncodingKey, Header};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    pub const RSA1: &[u8] = include_bytes!("testdata/rsa1.pem");
    pub const RSA2: &[u8] = include_bytes!("testdata/rsa2.pem");
    pub const RSA1_PUB: &[u8] = include_bytes!("testdata/rsa1.pub.pem");
    pub const EC1: &[u8] = include_bytes!("testdata/ec1.pem");
    pub const ED1: &[u8] = include_bytes!("testdata/ed1.pem");
    const KEYS: &str = include_str!("testdata/jwks_keys.json");

    /// The public JWK named `rsa1`, `rsa2`, `ec1` or `ed1` (kids rsa-1, rsa-2, ec-1, ed-1).
    pub fn jwk(name: &str) -> serde_json::Value {
        let all: serde_json::Value = serde_json::from_str(KEYS).unwrap();
        all[name].clone()
    }

    pub fn jwks(names: &[&str]) -> String {
        serde_json::json!({ "keys": names.iter().map(|n| jwk(n)).collect::<Vec<_>>() }).to_string()
    }

    pub fn sign(alg: Algorithm, kid: Option<&str>, claims: &serde_json::Value) -> String {
        let key = match alg {
            Algorithm::RS256 => EncodingKey::from_rsa_pem(RSA1).unwrap(),
            Algorithm::ES256 => EncodingKey::from_ec_pem(EC1).unwrap(),
            Algorithm::EdDSA => EncodingKey::from_ed_pem(ED1).unwrap(),
            _ => panic!("not a test key algorithm"),
        };
        sign_with(alg, kid, claims, &key)
    }

    pub fn sign_with(
        alg: Algorithm,
        kid: Option<&str>,
        claims: &serde_json::Value,
        key: &EncodingKey,
    ) -> String {
        let mut h = Header::new(alg);
        h.kid = kid.map(str::to_string);
        jsonwebtoken::encode(&h, claims, key).unwrap()
    }

    pub fn now() -> i64 {
        chrono::Utc::now().timestamp()
    }

    /// A JWKS endpoint on 127.0.0.1:0 serving whatever `body` holds; counts requests.
    pub struct JwksServer {
        pub url: String,
        pub body: Arc<Mutex<String>>,
        pub hits: Arc<AtomicUsize>,
        task: tokio::task::JoinHandle<()>,
    }

    impl JwksServer {
        pub async fn start(initial: String) -> JwksServer {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let body = Arc::new(Mutex::new(initial));
            let hits = Arc::new(AtomicUsize::new(0));
            let (b, h) = (body.clone(), hits.clone());
            let task = tokio::spawn(async move {
                loop {
                    let Ok((mut sock, _)) = listener.accept().await else {
                        return;
                    };
                    let (b, h) = (b.clone(), h.clone());
                    tokio::spawn(async move {
                        let mut buf = Vec::new();
                        let mut chunk = [0u8; 1024];
                        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                            match sock.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            }
                        }
                        h.fetch_add(1, Ordering::SeqCst);
                        let body = b.lock().unwrap().clone();
                        let resp = format!(
                            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\
                             Content-Length: {}\r\nConnection: close\r\n\r\n{}",
                            body.len(),
                            body
                        );
                        let _ = sock.write_all(resp.as_bytes()).await;
                        let _ = sock.shutdown().await;
                    });
                }
            });
            JwksServer {
                url: format!("http://{addr}/jwks.json"),
                body,
                hits,
                task,
            }
        }

        pub fn set(&self, body: String) {
            *self.body.lock().unwrap() = body;
        }

        pub fn hits(&self) -> usize {
            self.hits.load(Ordering::SeqCst)
        }
    }

    impl Drop for JwksServer {
        fn drop(&mut self) {
            self.task.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testkit::*;
    use super::*;
    use jsonwebtoken::EncodingKey;
    use serde_json::json;

    const ISS: &str = "https://idp.example.test/";
    const AUD: &str = "deprovd-scim";

    fn tenant(url: &str) -> TenantJwt {
        TenantJwt {
            issuer: ISS.into(),
            audience: AUD.into(),
            jwks_url: url.into(),
        }
    }

    fn claims() -> serde_json::Value {
        json!({ "iss": ISS, "aud": AUD, "sub": "okta-app", "exp": now() + 300, "iat": now() })
    }

    fn verifier() -> JwtVerifier {
        JwtVerifier::new(reqwest::Client::new(), JwtSettings::default())
    }

    async fn check(
        v: &JwtVerifier,
        token: &str,
        t: &TenantJwt,
    ) -> Result<VerifiedClaims, JwtError> {
        let p = peek(token)?;
        v.verify(token, &p, t).await
    }

    fn b64(v: &serde_json::Value) -> String {
        URL_SAFE_NO_PAD.encode(v.to_string())
    }

    #[test]
    fn shape_and_peek() {
        assert!(looks_like_jwt("a.b.c"));
        assert!(looks_like_jwt("a.b."));
        assert!(!looks_like_jwt("a.b"));
        assert!(!looks_like_jwt("a.b.c.d"));
        assert!(!looks_like_jwt(".b.c"));
        assert!(!looks_like_jwt("a.b=.c"));
        assert!(!looks_like_jwt("dpv_scim_abc"));
        let t = sign(Algorithm::RS256, Some("rsa-1"), &claims());
        assert_eq!(
            peek(&t).unwrap(),
            Peek {
                alg: Algorithm::RS256,
                kid: Some("rsa-1".into()),
                iss: ISS.into()
            }
        );
        // garbage that is shaped like a JWT never panics
        for bad in ["a.b.c", "e30.e30.", "bnVsbA.bnVsbA.x", "e30.W10.x"] {
            assert!(peek(bad).is_err(), "{bad}");
        }
        let crit = format!(
            "{}.{}.sig",
            b64(&json!({"alg":"RS256","crit":["x"]})),
            b64(&claims())
        );
        assert!(matches!(peek(&crit), Err(JwtError::Refused(_))));
        let no_iss = format!(
            "{}.{}.sig",
            b64(&json!({"alg":"RS256"})),
            b64(&json!({"sub":"x"}))
        );
        assert!(matches!(peek(&no_iss), Err(JwtError::Refused(_))));
    }

    #[test]
    fn jwks_parsing_keeps_only_signing_keys_of_allowed_types() {
        let mut enc = jwk("rsa2");
        enc["use"] = json!("enc");
        let mut wrong_alg = jwk("rsa1");
        wrong_alg["alg"] = json!("PS256");
        wrong_alg["kid"] = json!("ps");
        let doc = json!({ "keys": [
            jwk("rsa1"), jwk("ec1"), jwk("ed1"), enc, wrong_alg,
            { "kty": "oct", "kid": "sym", "k": "c2VjcmV0" },
            { "kty": "EC", "kid": "p384", "crv": "P-384", "x": "AA", "y": "AA" },
            { "kty": "weird" }, 42
        ]});
        let keys = parse_jwks(doc.to_string().as_bytes()).unwrap();
        let got: Vec<_> = keys
            .iter()
            .map(|k| (k.kid.clone().unwrap(), k.alg))
            .collect();
        assert_eq!(
            got,
            vec![
                ("rsa-1".to_string(), Algorithm::RS256),
                ("ec-1".to_string(), Algorithm::ES256),
                ("ed-1".to_string(), Algorithm::EdDSA),
            ]
        );
        assert!(parse_jwks(b"not json").is_err());
    }

    #[tokio::test]
    async fn valid_tokens_of_each_algorithm_are_accepted() {
        let srv = JwksServer::start(jwks(&["rsa1", "ec1", "ed1"])).await;
        let v = verifier();
        let t = tenant(&srv.url);
        for (alg, kid) in [
            (Algorithm::RS256, "rsa-1"),
            (Algorithm::ES256, "ec-1"),
            (Algorithm::EdDSA, "ed-1"),
        ] {
            let tok = sign(alg, Some(kid), &claims());
            let c = check(&v, &tok, &t)
                .await
                .unwrap_or_else(|e| panic!("{alg:?}: {e}"));
            assert_eq!(c.sub.as_deref(), Some("okta-app"));
        }
        // one fetch served all three (cached)
        assert_eq!(srv.hits(), 1);
        // aud as an array containing ours is fine
        let mut c = claims();
        c["aud"] = json!(["other", AUD]);
        assert!(check(&v, &sign(Algorithm::RS256, Some("rsa-1"), &c), &t)
            .await
            .is_ok());
    }

    #[tokio::test]
    async fn bad_claims_are_refused() {
        let srv = JwksServer::start(jwks(&["rsa1"])).await;
        let v = verifier();
        let t = tenant(&srv.url);
        let cases: Vec<(&str, serde_json::Value)> = vec![
            (
                "expired",
                json!({"iss": ISS, "aud": AUD, "sub": "s", "exp": now() - 120}),
            ),
            ("no exp", json!({"iss": ISS, "aud": AUD, "sub": "s"})),
            (
                "nbf future",
                json!({"iss": ISS, "aud": AUD, "sub": "s", "exp": now() + 600, "nbf": now() + 300}),
            ),
            (
                "wrong aud",
                json!({"iss": ISS, "aud": "someone-else", "sub": "s", "exp": now() + 60}),
            ),
            ("no aud", json!({"iss": ISS, "sub": "s", "exp": now() + 60})),
        ];
        for (what, c) in cases {
            let tok = sign(Algorithm::RS256, Some("rsa-1"), &c);
            assert!(
                matches!(check(&v, &tok, &t).await, Err(JwtError::Refused(_))),
                "{what} accepted"
            );
        }
        // within leeway: expired 30 s ago is still fine
        let c = json!({"iss": ISS, "aud": AUD, "sub": "s", "exp": now() - 30});
        assert!(check(&v, &sign(Algorithm::RS256, Some("rsa-1"), &c), &t)
            .await
            .is_ok());

        // wrong issuer: the tenant configured for ISS does not accept another issuer's token
        let mut c = claims();
        c["iss"] = json!("https://evil.example.test/");
        let tok = sign(Algorithm::RS256, Some("rsa-1"), &c);
        assert!(matches!(
            check(&v, &tok, &t).await,
            Err(JwtError::Refused(_))
        ));
        // ...even if the caller passes a tenant whose issuer differs from the peeked one
        let p = Peek {
            alg: Algorithm::RS256,
            kid: Some("rsa-1".into()),
            iss: ISS.into(),
        };
        assert!(v.verify(&tok, &p, &t).await.is_err());

        // tampered payload
        let tok = sign(Algorithm::RS256, Some("rsa-1"), &claims());
        let mut parts: Vec<&str> = tok.split('.').collect();
        let mut c = claims();
        c["sub"] = json!("admin");
        let forged = b64(&c);
        parts[1] = &forged;
        assert!(matches!(
            check(&v, &parts.join("."), &t).await,
            Err(JwtError::Refused(_))
        ));
    }

    #[tokio::test]
    async fn alg_none_and_hmac_confusion_are_refused() {
        let srv = JwksServer::start(jwks(&["rsa1"])).await;
        let v = verifier();
        let t = tenant(&srv.url);

        for alg in ["none", "None", "NONE"] {
            let tok = format!(
                "{}.{}.",
                b64(&json!({"alg": alg, "kid": "rsa-1"})),
                b64(&claims())
            );
            assert!(
                matches!(check(&v, &tok, &t).await, Err(JwtError::Refused(_))),
                "{alg}"
            );
        }
        // HS256 keyed with the RSA public key (PEM bytes, and the raw JWK modulus): the
        // classic confusion attack.
        let n = URL_SAFE_NO_PAD
            .decode(jwk("rsa1")["n"].as_str().unwrap())
            .unwrap();
        for secret in [RSA1_PUB.to_vec(), n, jwk("rsa1").to_string().into_bytes()] {
            for alg in [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512] {
                let tok = sign_with(
                    alg,
                    Some("rsa-1"),
                    &claims(),
                    &EncodingKey::from_secret(&secret),
                );
                assert!(matches!(
                    check(&v, &tok, &t).await,
                    Err(JwtError::Refused(_))
                ));
            }
        }
        // the token's alg must match the key's type: an ES256 token naming the RSA key
        let tok = sign(Algorithm::ES256, Some("rsa-1"), &claims());
        assert!(matches!(
            check(&v, &tok, &t).await,
            Err(JwtError::Refused(_))
        ));
        // an allowed alg we do not accept (RS384) and PS256
        for alg in [Algorithm::RS384, Algorithm::PS256] {
            let tok = sign_with(
                alg,
                Some("rsa-1"),
                &claims(),
                &EncodingKey::from_rsa_pem(RSA1).unwrap(),
            );
            assert!(matches!(
                check(&v, &tok, &t).await,
                Err(JwtError::Refused(_))
            ));
        }
        // no fetch was needed to refuse any of those except the ES256 one
        assert_eq!(srv.hits(), 1);
    }

    #[tokio::test]
    async fn unknown_kid_refetches_rotated_jwks_rate_limited() {
        let srv = JwksServer::start(jwks(&["rsa1"])).await;
        let settings = JwtSettings {
            min_refetch_interval: Duration::from_millis(300),
            ..JwtSettings::default()
        };
        let v = JwtVerifier::new(reqwest::Client::new(), settings);
        let t = tenant(&srv.url);
        assert!(
            check(&v, &sign(Algorithm::RS256, Some("rsa-1"), &claims()), &t)
                .await
                .is_ok()
        );
        assert_eq!(srv.hits(), 1);

        // the IdP rotates to rsa2; tokens signed up front so the burst below is quick
        let rsa2 = EncodingKey::from_rsa_pem(RSA2).unwrap();
        let tok2 = sign_with(Algorithm::RS256, Some("rsa-2"), &claims(), &rsa2);
        let randoms: Vec<String> = (0..20)
            .map(|i| sign(Algorithm::RS256, Some(&format!("random-{i}")), &claims()))
            .collect();
        srv.set(jwks(&["rsa2"]));

        // random kids: at most one refetch per interval, not one per token
        for tok in &randoms {
            assert!(matches!(
                check(&v, tok, &t).await,
                Err(JwtError::Refused(_))
            ));
        }
        assert!(srv.hits() <= 2, "hits {}", srv.hits());
        let after_burst = srv.hits();

        tokio::time::sleep(Duration::from_millis(350)).await;
        let c = check(&v, &tok2, &t)
            .await
            .expect("rotated key accepted after refetch");
        assert_eq!(c.sub.as_deref(), Some("okta-app"));
        assert!(srv.hits() <= after_burst + 1);
        assert!(srv.hits() >= 2, "the rotation was fetched");
        // old key is gone from the new set
        let old = sign(Algorithm::RS256, Some("rsa-1"), &claims());
        assert!(check(&v, &old, &t).await.is_err());
    }

    #[tokio::test]
    async fn default_interval_blocks_immediate_refetch() {
        let srv = JwksServer::start(jwks(&["rsa1"])).await;
        let v = verifier();
        let t = tenant(&srv.url);
        assert!(
            check(&v, &sign(Algorithm::RS256, Some("rsa-1"), &claims()), &t)
                .await
                .is_ok()
        );
        srv.set(jwks(&["rsa2"]));
        let rsa2 = EncodingKey::from_rsa_pem(RSA2).unwrap();
        let tok2 = sign_with(Algorithm::RS256, Some("rsa-2"), &claims(), &rsa2);
        for _ in 0..10 {
            assert!(check(&v, &tok2, &t).await.is_err());
        }
        // fetched once at start; the unknown kid 30 s rule stops any refetch this soon
        assert_eq!(srv.hits(), 1);
    }

    #[tokio::test]
    async fn unreachable_jwks_is_unavailable_not_invalid() {
        // a port nobody listens on
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/jwks", l.local_addr().unwrap());
        drop(l);
        let v = verifier();
        let tok = sign(Algorithm::RS256, Some("rsa-1"), &claims());
        assert_eq!(
            check(&v, &tok, &tenant(&url)).await,
            Err(JwtError::KeysUnavailable)
        );
    }

    #[tokio::test]
    async fn token_without_kid_uses_the_only_key_of_its_alg() {
        let srv = JwksServer::start(jwks(&["rsa1", "ec1"])).await;
        let v = verifier();
        let t = tenant(&srv.url);
        assert!(check(&v, &sign(Algorithm::RS256, None, &claims()), &t)
            .await
            .is_ok());
        srv.set(jwks(&["rsa1", "rsa2"]));
        let v = verifier();
        assert!(check(&v, &sign(Algorithm::RS256, None, &claims()), &t)
            .await
            .is_err());
    }
}
