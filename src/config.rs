//! Typed configuration: defaults, then a TOML file (`--config`), then `DEPROVD_*` environment
//! variables, then command-line flags. Validated once at start so a typo fails loudly and early,
//! not on the first request.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

pub const DEFAULT_DATABASE_URL: &str = "sqlite://deprovd.db";
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Pretty,
    Json,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub database_url: String,
    pub listen: SocketAddr,
    /// Base of absolute URLs (`meta.location`, `Location`), e.g. `https://deprovd.example.com`.
    /// Unset: derived from the request's Host header.
    pub public_url: Option<String>,
    pub log: LogFormat,
    /// Base64 or hex 32-byte key that encrypts factor secrets at rest. Prefer the environment.
    pub master_key: Option<String>,
    /// Converge workers per process.
    pub job_workers: usize,
    /// A converge job that keeps failing is dead-lettered after this many attempts.
    pub job_max_attempts: i64,
    /// Retry backoff: full jitter, doubling from `base` up to `cap`.
    pub job_backoff_base: std::time::Duration,
    pub job_backoff_cap: std::time::Duration,
    /// Per-tenant policy files loaded at start (tenant name → path).
    pub policies: BTreeMap<String, PathBuf>,
    /// Trust `X-Forwarded-For` from these proxy addresses for the client IP (audit, rate limits).
    pub trusted_proxies: Vec<std::net::IpAddr>,
}

/// The TOML file's shape. Every key optional; unknown keys are an error (a typo must not be
/// silently ignored in a security service).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    database_url: Option<String>,
    listen: Option<String>,
    public_url: Option<String>,
    log: Option<String>,
    master_key: Option<String>,
    job_workers: Option<usize>,
    job_max_attempts: Option<i64>,
    job_backoff_base_ms: Option<u64>,
    job_backoff_cap_ms: Option<u64>,
    #[serde(default)]
    policies: BTreeMap<String, PathBuf>,
    #[serde(default)]
    trusted_proxies: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
#[error("configuration: {0}")]
pub struct ConfigError(pub String);

/// Where the values come from, highest precedence last.
#[derive(Debug, Default, Clone)]
pub struct Sources {
    pub file: Option<PathBuf>,
    pub database_url_flag: Option<String>,
}

impl Config {
    /// Loads from the file (if any), the process environment and the flags.
    pub fn load(sources: &Sources) -> Result<Config, ConfigError> {
        let env: BTreeMap<String, String> = std::env::vars()
            .filter(|(k, _)| k.starts_with("DEPROVD_"))
            .collect();
        Self::load_from(sources, &env)
    }

    /// Same as [`Config::load`] with an explicit environment (tests).
    pub fn load_from(
        sources: &Sources,
        env: &BTreeMap<String, String>,
    ) -> Result<Config, ConfigError> {
        let file = match &sources.file {
            Some(path) => read_file(path)?,
            None => FileConfig::default(),
        };
        let pick = |env_key: &str, file_val: Option<String>| -> Option<String> {
            env.get(env_key)
                .filter(|v| !v.is_empty())
                .cloned()
                .or(file_val)
        };

        let database_url = sources
            .database_url_flag
            .clone()
            .or_else(|| pick("DEPROVD_DATABASE_URL", file.database_url))
            .unwrap_or_else(|| DEFAULT_DATABASE_URL.to_string());
        validate_database_url(&database_url)?;

        let listen_text =
            pick("DEPROVD_LISTEN", file.listen).unwrap_or_else(|| DEFAULT_LISTEN.to_string());
        let listen: SocketAddr = listen_text
            .parse()
            .map_err(|_| ConfigError(format!("listen address {listen_text:?} is not IP:PORT (e.g. 127.0.0.1:8080 or 0.0.0.0:8080)")))?;

        let public_url = pick("DEPROVD_PUBLIC_URL", file.public_url)
            .map(|u| u.trim_end_matches('/').to_string());
        if let Some(u) = &public_url {
            let ok = (u.starts_with("http://") || u.starts_with("https://"))
                && !u.contains('?')
                && !u.contains('#')
                && u.len() > 8;
            if !ok {
                return Err(ConfigError(format!(
                    "public URL {u:?} must be an absolute http(s) URL without query or fragment, e.g. https://deprovd.example.com"
                )));
            }
        }

        let log = match pick("DEPROVD_LOG", file.log).as_deref() {
            None | Some("pretty") => LogFormat::Pretty,
            Some("json") => LogFormat::Json,
            Some(other) => {
                return Err(ConfigError(format!(
                    "log format {other:?} must be \"pretty\" or \"json\""
                )))
            }
        };

        let master_key = pick("DEPROVD_MASTER_KEY", file.master_key);

        let job_workers = match env.get("DEPROVD_JOB_WORKERS") {
            Some(v) => v
                .parse()
                .map_err(|_| ConfigError(format!("DEPROVD_JOB_WORKERS={v:?} is not a number")))?,
            None => file.job_workers.unwrap_or(4),
        };
        if job_workers == 0 || job_workers > 256 {
            return Err(ConfigError("job_workers must be between 1 and 256".into()));
        }

        let number = |key: &str,
                      file_val: Option<u64>,
                      default: u64,
                      min: u64,
                      max: u64|
         -> Result<u64, ConfigError> {
            let v = match env.get(key) {
                Some(v) => v
                    .parse()
                    .map_err(|_| ConfigError(format!("{key}={v:?} is not a whole number")))?,
                None => file_val.unwrap_or(default),
            };
            if v < min || v > max {
                return Err(ConfigError(format!(
                    "{key} must be between {min} and {max} (got {v})"
                )));
            }
            Ok(v)
        };
        let job_max_attempts = number(
            "DEPROVD_JOB_MAX_ATTEMPTS",
            file.job_max_attempts.map(|v| v.max(0) as u64),
            8,
            1,
            1000,
        )? as i64;
        let job_backoff_base = std::time::Duration::from_millis(number(
            "DEPROVD_JOB_BACKOFF_BASE_MS",
            file.job_backoff_base_ms,
            200,
            1,
            3_600_000,
        )?);
        let job_backoff_cap = std::time::Duration::from_millis(number(
            "DEPROVD_JOB_BACKOFF_CAP_MS",
            file.job_backoff_cap_ms,
            300_000,
            1,
            86_400_000,
        )?);

        let base = sources
            .file
            .as_deref()
            .and_then(Path::parent)
            .map(Path::to_path_buf)
            .unwrap_or_default();
        let policies = file
            .policies
            .into_iter()
            .map(|(tenant, path)| {
                let path = if path.is_absolute() {
                    path
                } else {
                    base.join(path)
                };
                (tenant, path)
            })
            .collect();

        let mut trusted_proxies = Vec::new();
        let proxies_text: Vec<String> = match env.get("DEPROVD_TRUSTED_PROXIES") {
            Some(v) => v
                .split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect(),
            None => file.trusted_proxies,
        };
        for p in proxies_text {
            trusted_proxies.push(
                p.parse().map_err(|_| {
                    ConfigError(format!("trusted proxy {p:?} is not an IP address"))
                })?,
            );
        }

        Ok(Config {
            database_url,
            listen,
            public_url,
            log,
            master_key,
            job_workers,
            job_max_attempts,
            job_backoff_base,
            job_backoff_cap,
            policies,
            trusted_proxies,
        })
    }
}

fn read_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError(format!("cannot read {}: {e}", path.display())))?;
    toml::from_str(&text).map_err(|e| ConfigError(format!("{}: {e}", path.display())))
}

fn validate_database_url(url: &str) -> Result<(), ConfigError> {
    if url.starts_with("sqlite:")
        || url.starts_with("postgres://")
        || url.starts_with("postgresql://")
    {
        Ok(())
    } else {
        Err(ConfigError(format!(
            "database URL must start with sqlite:, postgres:// or postgresql:// (got {:?})",
            url.split(':').next().unwrap_or("")
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_match_the_design() {
        let c = Config::load_from(&Sources::default(), &env(&[])).unwrap();
        assert_eq!(c.database_url, "sqlite://deprovd.db");
        assert_eq!(c.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(c.log, LogFormat::Pretty);
        assert!(c.public_url.is_none());
    }

    #[test]
    fn precedence_is_file_then_env_then_flag() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("deprovd.toml");
        std::fs::write(&path, "database_url = \"sqlite://file.db\"\nlisten = \"0.0.0.0:9000\"\n[policies]\ndefault = \"p.toml\"\n").unwrap();
        let src = Sources {
            file: Some(path.clone()),
            database_url_flag: None,
        };
        let c = Config::load_from(&src, &env(&[])).unwrap();
        assert_eq!(c.database_url, "sqlite://file.db");
        assert_eq!(c.listen.port(), 9000);
        assert_eq!(c.policies["default"], dir.path().join("p.toml"));
        let c =
            Config::load_from(&src, &env(&[("DEPROVD_DATABASE_URL", "postgres://x/y")])).unwrap();
        assert_eq!(c.database_url, "postgres://x/y");
        let src = Sources {
            file: Some(path),
            database_url_flag: Some("sqlite://flag.db".into()),
        };
        let c =
            Config::load_from(&src, &env(&[("DEPROVD_DATABASE_URL", "postgres://x/y")])).unwrap();
        assert_eq!(c.database_url, "sqlite://flag.db");
    }

    #[test]
    fn bad_values_are_refused_with_a_clear_message() {
        let e = Config::load_from(
            &Sources::default(),
            &env(&[("DEPROVD_LISTEN", "localhost")]),
        )
        .unwrap_err();
        assert!(e.0.contains("IP:PORT"), "{e}");
        let e =
            Config::load_from(&Sources::default(), &env(&[("DEPROVD_LOG", "yaml")])).unwrap_err();
        assert!(e.0.contains("pretty"), "{e}");
        let e = Config::load_from(
            &Sources::default(),
            &env(&[("DEPROVD_DATABASE_URL", "mysql://x")]),
        )
        .unwrap_err();
        assert!(e.0.contains("sqlite:"), "{e}");
        let e = Config::load_from(
            &Sources::default(),
            &env(&[("DEPROVD_PUBLIC_URL", "example.com")]),
        )
        .unwrap_err();
        assert!(e.0.contains("absolute"), "{e}");
    }

    #[test]
    fn unknown_file_keys_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "databse_url = \"x\"\n").unwrap();
        let e = Config::load_from(
            &Sources {
                file: Some(path),
                database_url_flag: None,
            },
            &env(&[]),
        )
        .unwrap_err();
        assert!(e.0.contains("databse_url"), "{e}");
    }
}
