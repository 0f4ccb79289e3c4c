//! The master key that encrypts factor secrets at rest (AES-256-GCM), where it comes from
//! (`DEPROVD_MASTER_KEY`, or a generated key file beside a SQLite database), and the start-up
//! check that the key opens what the database already holds.
//!
//! Not here: which rows are encrypted (`factors/store.rs` decides), key rotation (not built yet).

use std::io::Write;
use std::path::{Path, PathBuf};

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use base64::Engine;
use rand::RngCore;

/// Plaintext of the `key_check` row: decrypting it proves the key is the database's key.
const KEY_CHECK_PLAINTEXT: &[u8] = b"deprovd master key check v1";
const KEY_CHECK_AAD: &[u8] = b"deprovd/key_check";
const NONCE_LEN: usize = 12;

/// A 256-bit AES-GCM key. `Debug` never shows the key.
#[derive(Clone)]
pub struct MasterKey {
    key: [u8; 32],
    /// Where the key came from, for log lines and error messages.
    pub source: KeySource,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// `DEPROVD_MASTER_KEY` (or the config's equivalent).
    Configured,
    /// A key file beside the SQLite database (created now or earlier).
    File(PathBuf),
    /// An in-memory database: a fresh key that lives as long as the process.
    Ephemeral,
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MasterKey")
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CryptoError {
    #[error("ciphertext is not valid base64 or too short")]
    Malformed,
    #[error("ciphertext does not open with this key (wrong key, or it belongs to another row)")]
    WrongKey,
}

/// The associated data binding a ciphertext to its row, so a secret copied to another row or
/// tenant does not decrypt. The NUL keeps ("ab","c") and ("a","bc") apart.
pub fn row_aad(tenant: &str, factor_id: &str) -> Vec<u8> {
    let mut aad = Vec::with_capacity(tenant.len() + factor_id.len() + 1);
    aad.extend_from_slice(tenant.as_bytes());
    aad.push(0);
    aad.extend_from_slice(factor_id.as_bytes());
    aad
}

impl MasterKey {
    pub fn from_bytes(key: [u8; 32], source: KeySource) -> Self {
        MasterKey { key, source }
    }

    /// A fresh random key.
    pub fn generate(source: KeySource) -> Self {
        let mut key = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut key);
        MasterKey { key, source }
    }

    /// Parses 32 bytes written as base64 (standard or URL-safe, padded or not) or 64 hex digits.
    pub fn parse(text: &str, source: KeySource) -> Result<Self, String> {
        let t = text.trim();
        if t.is_empty() {
            return Err("the master key is empty".into());
        }
        let mut candidates: Vec<Vec<u8>> = Vec::new();
        if t.len() == 64 {
            if let Ok(b) = hex::decode(t) {
                candidates.push(b);
            }
        }
        for engine in [&STANDARD, &STANDARD_NO_PAD, &URL_SAFE, &URL_SAFE_NO_PAD] {
            if let Ok(b) = engine.decode(t) {
                candidates.push(b);
            }
        }
        for b in &candidates {
            if let Ok(key) = <[u8; 32]>::try_from(b.as_slice()) {
                return Ok(MasterKey { key, source });
            }
        }
        match candidates.first() {
            Some(b) => Err(format!(
                "the master key decodes to {} bytes; it must be exactly 32 (generate one with `openssl rand -base64 32`)",
                b.len()
            )),
            None => Err(
                "the master key is neither base64 nor hex (generate one with `openssl rand -base64 32`)"
                    .into(),
            ),
        }
    }

    /// The key as standard base64 (what the key file holds).
    pub fn to_base64(&self) -> String {
        STANDARD.encode(self.key)
    }

    /// AES-256-GCM with a random 96-bit nonce; returns base64(nonce ‖ ciphertext ‖ tag).
    pub fn encrypt(&self, plaintext: &[u8], aad: &[u8]) -> String {
        let cipher = Aes256Gcm::new(aes_gcm::Key::<Aes256Gcm>::from_slice(&self.key));
        let mut nonce = [0u8; NONCE_LEN];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        // Encryption only fails for plaintexts beyond 64 GiB; secrets are bytes long.
        let ct = cipher
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: plaintext,
                    aad,
                },
            )
            .unwrap_or_default();
        let mut out = Vec::with_capacity(NONCE_LEN + ct.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ct);
        STANDARD.encode(out)
    }

    pub fn decrypt(&self, encoded: &str, aad: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let raw = STANDARD
            .decode(encoded.trim())
            .map_err(|_| CryptoError::Malformed)?;
        // nonce + 16-byte tag at least
        if raw.len() < NONCE_LEN + 16 {
            return Err(CryptoError::Malformed);
        }
        let (nonce, ct) = raw.split_at(NONCE_LEN);
        let cipher = Aes256Gcm::new(aes_gcm::Key::<Aes256Gcm>::from_slice(&self.key));
        cipher
            .decrypt(Nonce::from_slice(nonce), Payload { msg: ct, aad })
            .map_err(|_| CryptoError::WrongKey)
    }

    /// The `key_check` row's ciphertext under this key.
    pub fn key_check_ciphertext(&self) -> String {
        self.encrypt(KEY_CHECK_PLAINTEXT, KEY_CHECK_AAD)
    }

    /// Whether a `key_check` ciphertext was made with this key.
    pub fn opens_key_check(&self, ciphertext: &str) -> bool {
        matches!(self.decrypt(ciphertext, KEY_CHECK_AAD), Ok(p) if p == KEY_CHECK_PLAINTEXT)
    }
}

/// Where a SQLite URL's database file is: None for PostgreSQL, Some(None) for an in-memory
/// SQLite database, Some(Some(path)) for a file.
fn sqlite_path(database_url: &str) -> Option<Option<PathBuf>> {
    let rest = database_url
        .strip_prefix("sqlite://")
        .or_else(|| database_url.strip_prefix("sqlite:"))?;
    let (path, query) = match rest.split_once('?') {
        Some((p, q)) => (p, q),
        None => (rest, ""),
    };
    if path.is_empty() || path == ":memory:" || query.split('&').any(|kv| kv == "mode=memory") {
        return Some(None);
    }
    Some(Some(PathBuf::from(path)))
}

/// `deprovd.db` → `deprovd.master.key`. Never `*.db*`: whoever copies or ships the database
/// files (`deprovd.db`, `-wal`, `-shm`) with a glob must not carry the key along with them.
pub fn key_file_for(db_path: &Path) -> PathBuf {
    let stem = db_path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned());
    let stem = match stem {
        Some(s) if !s.is_empty() => s,
        _ => "deprovd".to_string(),
    };
    db_path.with_file_name(format!("{stem}.master.key"))
}

/// The master key for this process:
/// - `configured` (from `DEPROVD_MASTER_KEY`) when given: 32 bytes, base64 or hex, else an error;
/// - otherwise, on SQLite, the key file beside the database, created with mode 0600 on first
///   start (with a loud warning: production sets `DEPROVD_MASTER_KEY` from a secret store);
/// - otherwise, on PostgreSQL, an error: replicas must share one key, so it must be configured.
pub fn load_or_create(database_url: &str, configured: Option<&str>) -> Result<MasterKey, String> {
    if let Some(text) = configured.filter(|t| !t.trim().is_empty()) {
        return MasterKey::parse(text, KeySource::Configured)
            .map_err(|e| format!("DEPROVD_MASTER_KEY: {e}"));
    }
    match sqlite_path(database_url) {
        None => Err(
            "DEPROVD_MASTER_KEY is not set. With PostgreSQL the master key that encrypts factor \
             secrets must come from configuration (every replica needs the same key): generate \
             one with `openssl rand -base64 32`, keep it in your secret store, and set \
             DEPROVD_MASTER_KEY to it."
                .to_string(),
        ),
        Some(None) => {
            tracing::warn!(
                "DEPROVD_MASTER_KEY is not set and the database is in memory: using a throw-away \
                 master key for this process"
            );
            Ok(MasterKey::generate(KeySource::Ephemeral))
        }
        Some(Some(db_path)) => load_or_create_file(&key_file_for(&db_path)),
    }
}

fn load_or_create_file(path: &Path) -> Result<MasterKey, String> {
    if path.exists() {
        return read_key_file(path);
    }
    let key = MasterKey::generate(KeySource::File(path.to_path_buf()));
    // Write a private temp file, then hard-link it into place: the link fails if another
    // process created the key first, and nobody ever reads a half-written key file.
    let tmp = path.with_file_name(format!(
        ".{}.{}.tmp",
        path.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        std::process::id()
    ));
    let written = (|| -> std::io::Result<()> {
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let mut f = opts.open(&tmp)?;
        f.write_all(format!("{}\n", key.to_base64()).as_bytes())?;
        f.sync_all()?;
        Ok(())
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(format!(
            "cannot write the master key file {}: {e}",
            path.display()
        ));
    }
    let linked = std::fs::hard_link(&tmp, path);
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => {
            tracing::warn!(
                key_file = %path.display(),
                "DEPROVD_MASTER_KEY is not set: generated a master key and stored it in {} \
                 (mode 0600). Anyone who reads this file can decrypt factor secrets, and losing \
                 it loses them. PRODUCTION MUST SET DEPROVD_MASTER_KEY FROM A SECRET STORE.",
                path.display()
            );
            Ok(key)
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => read_key_file(path),
        Err(e) => Err(format!(
            "cannot create the master key file {}: {e}",
            path.display()
        )),
    }
}

fn read_key_file(path: &Path) -> Result<MasterKey, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read the master key file {}: {e}", path.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(meta) = std::fs::metadata(path) {
            if meta.permissions().mode() & 0o077 != 0 {
                tracing::warn!(
                    key_file = %path.display(),
                    "the master key file is readable by other users; run chmod 600 on it"
                );
            }
        }
    }
    let key = MasterKey::parse(&text, KeySource::File(path.to_path_buf()))
        .map_err(|e| format!("master key file {}: {e}", path.display()))?;
    tracing::warn!(
        key_file = %path.display(),
        "using the generated master key file {}; production must set DEPROVD_MASTER_KEY from a secret store",
        path.display()
    );
    Ok(key)
}

fn how_to_fix(key: &MasterKey) -> String {
    let from = match &key.source {
        KeySource::Configured => "DEPROVD_MASTER_KEY".to_string(),
        KeySource::File(p) => format!("the key file {}", p.display()),
        KeySource::Ephemeral => "a throw-away key (in-memory database)".to_string(),
    };
    format!(
        "The master key (from {from}) does not open the factor secrets already in this database. \
         Set DEPROVD_MASTER_KEY to the key this database was created with (if none was \
         configured then, it was generated into `<database name>.master.key` beside the SQLite \
         file). If that key is lost, the encrypted TOTP/HOTP secrets cannot be recovered: delete \
         the `key_check` row and the affected factors' rows (or revoke them) and have those users \
         enroll again; deprovd will not start over the top of data it cannot read."
    )
}

/// Start-up check: the `key_check` row must open with `key`, and so must a sample of existing
/// encrypted factor secrets. On a database with neither, records a `key_check` under `key`.
pub async fn verify_master_key(db: &crate::store::Db, key: &MasterKey) -> Result<(), String> {
    use super::store as fs;
    let check = fs::key_check(db)
        .await
        .map_err(|e| format!("reading key_check: {e}"))?;
    match check {
        Some(ct) => {
            if !key.opens_key_check(&ct) {
                return Err(how_to_fix(key));
            }
        }
        None => {
            // Older rows without a key_check (or a key_check deleted by hand): the secrets
            // themselves must open before we vouch for the key.
            if let Some((tenant, id, ct)) = fs::sample_secret(db)
                .await
                .map_err(|e| format!("reading factors: {e}"))?
            {
                if key.decrypt(&ct, &row_aad(&tenant, &id)).is_err() {
                    return Err(how_to_fix(key));
                }
            }
            fs::insert_key_check(db, &key.key_check_ciphertext())
                .await
                .map_err(|e| format!("writing key_check: {e}"))?;
            // Another replica may have raced us with a different key: re-read.
            let now = fs::key_check(db)
                .await
                .map_err(|e| format!("reading key_check: {e}"))?;
            if !now.is_some_and(|ct| key.opens_key_check(&ct)) {
                return Err(how_to_fix(key));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> MasterKey {
        MasterKey::generate(KeySource::Ephemeral)
    }

    #[test]
    fn round_trip_and_aad_binding() {
        let k = key();
        let ct = k.encrypt(b"secret", &row_aad("t1", "f1"));
        assert_eq!(k.decrypt(&ct, &row_aad("t1", "f1")).unwrap(), b"secret");
        assert_eq!(
            k.decrypt(&ct, &row_aad("t1", "f2")),
            Err(CryptoError::WrongKey)
        );
        assert_eq!(
            k.decrypt(&ct, &row_aad("t2", "f1")),
            Err(CryptoError::WrongKey)
        );
        // the separator keeps the two parts apart
        let ct2 = k.encrypt(b"x", &row_aad("ab", "c"));
        assert!(k.decrypt(&ct2, &row_aad("a", "bc")).is_err());
        // fresh nonce each time
        assert_ne!(ct, k.encrypt(b"secret", &row_aad("t1", "f1")));
    }

    #[test]
    fn wrong_key_and_tampering_refused() {
        let k = key();
        let ct = k.encrypt(b"secret", b"aad");
        assert_eq!(key().decrypt(&ct, b"aad"), Err(CryptoError::WrongKey));
        let mut raw = STANDARD.decode(&ct).unwrap();
        let last = raw.len() - 1;
        raw[last] ^= 1;
        assert_eq!(
            k.decrypt(&STANDARD.encode(&raw), b"aad"),
            Err(CryptoError::WrongKey)
        );
        assert_eq!(
            k.decrypt("not base64!", b"aad"),
            Err(CryptoError::Malformed)
        );
        assert_eq!(
            k.decrypt(&STANDARD.encode([0u8; 10]), b"aad"),
            Err(CryptoError::Malformed)
        );
    }

    #[test]
    fn key_check() {
        let k = key();
        let ct = k.key_check_ciphertext();
        assert!(k.opens_key_check(&ct));
        assert!(!key().opens_key_check(&ct));
    }

    #[test]
    fn parse_key_formats() {
        let bytes: [u8; 32] = core::array::from_fn(|i| (i * 7 + 250) as u8);
        for text in [
            STANDARD.encode(bytes),
            STANDARD_NO_PAD.encode(bytes),
            URL_SAFE.encode(bytes),
            URL_SAFE_NO_PAD.encode(bytes),
            hex::encode(bytes),
            format!("  {}\n", hex::encode_upper(bytes)),
        ] {
            let k = MasterKey::parse(&text, KeySource::Configured).unwrap();
            assert_eq!(k.key, bytes, "{text}");
        }
        assert!(
            MasterKey::parse(&STANDARD.encode([1u8; 31]), KeySource::Configured)
                .unwrap_err()
                .contains("31 bytes")
        );
        assert!(MasterKey::parse(&hex::encode([1u8; 33]), KeySource::Configured).is_err());
        assert!(MasterKey::parse("", KeySource::Configured).is_err());
        assert!(MasterKey::parse("%%%", KeySource::Configured).is_err());
        assert!(!format!("{:?}", key()).contains("key:"));
    }

    #[test]
    fn sqlite_paths() {
        assert_eq!(sqlite_path("postgres://x/y"), None);
        assert_eq!(sqlite_path("sqlite::memory:"), Some(None));
        assert_eq!(
            sqlite_path("sqlite://x.db?mode=memory&cache=shared"),
            Some(None)
        );
        assert_eq!(
            sqlite_path("sqlite://deprovd.db"),
            Some(Some(PathBuf::from("deprovd.db")))
        );
        assert_eq!(
            sqlite_path("sqlite:///var/lib/d/x.db?mode=rwc"),
            Some(Some(PathBuf::from("/var/lib/d/x.db")))
        );
        assert_eq!(
            key_file_for(Path::new("/a/deprovd.db")),
            PathBuf::from("/a/deprovd.master.key")
        );
        assert_eq!(
            key_file_for(Path::new("data")),
            PathBuf::from("data.master.key")
        );
    }

    #[test]
    fn configured_key_wins_and_postgres_needs_one() {
        let text = STANDARD.encode([9u8; 32]);
        let k = load_or_create("postgres://localhost/test", Some(&text)).unwrap();
        assert_eq!(k.source, KeySource::Configured);
        let err = load_or_create("postgres://localhost/test", None).unwrap_err();
        assert!(
            err.contains("DEPROVD_MASTER_KEY") && err.contains("openssl rand"),
            "{err}"
        );
        assert!(load_or_create("postgres://x", Some("short")).is_err());
        assert_eq!(
            load_or_create("sqlite::memory:", None).unwrap().source,
            KeySource::Ephemeral
        );
    }

    #[test]
    fn key_file_created_private_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("deprovd.db");
        let url = format!("sqlite://{}?mode=rwc", db.display());
        let k1 = load_or_create(&url, None).unwrap();
        let file = dir.path().join("deprovd.master.key");
        assert_eq!(k1.source, KeySource::File(file.clone()));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&file).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let k2 = load_or_create(&url, None).unwrap();
        assert_eq!(k1.key, k2.key);
        // no stray temp files, nothing named like the database
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, vec!["deprovd.master.key".to_string()]);
        // a corrupt key file is an error, not a silent new key
        std::fs::write(&file, "garbage").unwrap();
        assert!(load_or_create(&url, None).is_err());
    }
}
