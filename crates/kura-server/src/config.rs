//! The server's configuration: a TOML file (`kura server --config FILE`), overridden by
//! flags and environment variables, checked as a whole before the server touches anything.
//!
//! Every key is optional; [`ServerConfig::default`] holds the defaults docs/config.md lists.
//! Unknown keys and values of the wrong type are refused with the key's name and line.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Default listening address: loopback only.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8640";

/// Log line format.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One human-readable line per event.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            _ => Err(format!("{s:?} is not a log format (text or json)")),
        }
    }
}

/// Everything `kura server` can be told. Field names are the TOML keys.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Home directory (catalog, generated keys, default vault storage).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub home: Option<PathBuf>,
    /// Address and port to listen on.
    pub listen: String,
    /// PEM certificate chain for TLS.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for TLS.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_key: Option<PathBuf>,
    /// Serve plain HTTP on a non-loopback address (tokens then cross the network in clear).
    pub insecure_http: bool,
    /// `text` or `json`.
    pub log_format: LogFormat,
    /// Which events to log, in `RUST_LOG` syntax (`info`, `kura=debug,tower=warn`, ...).
    pub log_level: String,
    /// Run the scheduler (scheduled backups, retention, purges, GC). Off when another
    /// process ticks for this home (`kura scheduler run` or a timer).
    pub scheduler: bool,
    /// Seconds between scheduler ticks.
    pub tick_seconds: u64,
    /// Spread window, in seconds, for items that share a schedule.
    pub spread_seconds: u64,
    /// Jobs that run at once on this host (the rest wait, Queued).
    pub max_jobs: usize,
    /// Jobs that run at once in one vault (default: `max_jobs`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_jobs_per_vault: Option<usize>,
    /// Extra directories requests may read sources from (the defaults stay allowed).
    pub allow_source: Vec<PathBuf>,
    /// Extra directories requests may restore to and keep vaults in.
    pub allow_restore: Vec<PathBuf>,
    /// File holding the passphrase of passphrase-protected vaults.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub passphrase_file: Option<PathBuf>,
    /// Key file that unlocks key-file vaults created outside the home.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
    /// Passphrase files per vault name, for vaults with different passphrases.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub vault_passphrase_files: BTreeMap<String, PathBuf>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            home: None,
            listen: DEFAULT_LISTEN.to_string(),
            tls_cert: None,
            tls_key: None,
            insecure_http: false,
            log_format: LogFormat::Text,
            log_level: "info".to_string(),
            scheduler: true,
            tick_seconds: 30,
            spread_seconds: 600,
            max_jobs: kura_engine::QueueLimits::for_this_machine().jobs,
            max_jobs_per_vault: None,
            allow_source: Vec::new(),
            allow_restore: Vec::new(),
            passphrase_file: None,
            key_file: None,
            vault_passphrase_files: BTreeMap::new(),
        }
    }
}

/// A configuration that cannot be used, with the key at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("cannot read the configuration file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML or has unknown keys or wrong types.
    #[error("configuration file {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message: line, column and key.
        message: String,
    },
    /// A value is not acceptable.
    #[error("configuration key `{key}`: {reason}")]
    Invalid {
        /// The key at fault.
        key: &'static str,
        /// Why.
        reason: String,
    },
}

fn invalid(key: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        reason: reason.into(),
    }
}

impl ServerConfig {
    /// The job queue's limits.
    pub fn queue_limits(&self) -> kura_engine::QueueLimits {
        kura_engine::QueueLimits {
            jobs: self.max_jobs,
            per_vault: self.max_jobs_per_vault.unwrap_or(self.max_jobs),
        }
    }

    /// Reads a configuration file. Relative paths in it are taken relative to the file's
    /// directory, so a file means the same wherever the server is started from.
    pub fn from_file(path: &Path) -> Result<ServerConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let mut cfg = Self::from_toml(&text).map_err(|message| ConfigError::Parse {
            path: path.to_path_buf(),
            message,
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        cfg.anchor(base);
        Ok(cfg)
    }

    /// Parses TOML text; the error names the key and its line.
    pub fn from_toml(text: &str) -> Result<ServerConfig, String> {
        toml::from_str(text).map_err(|e| e.to_string().trim_end().to_string())
    }

    fn anchor(&mut self, base: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        for p in [
            &mut self.home,
            &mut self.tls_cert,
            &mut self.tls_key,
            &mut self.passphrase_file,
            &mut self.key_file,
        ]
        .into_iter()
        .flatten()
        {
            fix(p);
        }
        self.allow_source.iter_mut().for_each(fix);
        self.allow_restore.iter_mut().for_each(fix);
        self.vault_passphrase_files.values_mut().for_each(fix);
    }

    /// The listening address, checked.
    pub fn listen_addr(&self) -> Result<SocketAddr, ConfigError> {
        self.listen.parse().map_err(|_| {
            invalid(
                "listen",
                format!(
                    "{:?} is not an address and port (e.g. {DEFAULT_LISTEN} or [::]:8640)",
                    self.listen
                ),
            )
        })
    }

    /// Checks the values against each other: the address parses, TLS has both its files
    /// and they exist, plain HTTP stays on loopback unless `insecure_http`, the log filter
    /// parses, the tick is not zero.
    pub fn check(&self) -> Result<(), ConfigError> {
        let addr = self.listen_addr()?;
        match (&self.tls_cert, &self.tls_key) {
            (Some(_), None) => {
                return Err(invalid("tls_key", "tls_cert is set but tls_key is not"));
            }
            (None, Some(_)) => {
                return Err(invalid("tls_cert", "tls_key is set but tls_cert is not"));
            }
            (Some(c), Some(k)) => {
                for (key, p) in [("tls_cert", c), ("tls_key", k)] {
                    if !p.is_file() {
                        return Err(invalid(
                            key,
                            format!("{} is not a readable file", p.display()),
                        ));
                    }
                }
            }
            (None, None) => {
                if !addr.ip().is_loopback() && !self.insecure_http {
                    return Err(invalid(
                        "listen",
                        format!(
                            "{addr} is not a loopback address and no TLS is configured: set tls_cert and tls_key (--tls-cert, --tls-key), or insecure_http = true (--insecure-http) to send tokens in clear"
                        ),
                    ));
                }
            }
        }
        if self.tick_seconds == 0 {
            return Err(invalid("tick_seconds", "must be at least 1"));
        }
        for (key, v) in [
            ("max_jobs", Some(self.max_jobs)),
            ("max_jobs_per_vault", self.max_jobs_per_vault),
        ] {
            let Some(v) = v else { continue };
            if !(1..=1024).contains(&v) {
                return Err(invalid(key, format!("{v} is out of range; allowed 1-1024")));
            }
        }
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log_level) {
            return Err(invalid("log_level", format!("{:?}: {e}", self.log_level)));
        }
        for (key, list) in [
            ("allow_source", &self.allow_source),
            ("allow_restore", &self.allow_restore),
        ] {
            if let Some(p) = list.iter().find(|p| p.is_relative()) {
                return Err(invalid(key, format!("{} is relative", p.display())));
            }
        }
        for name in self.vault_passphrase_files.keys() {
            if name.is_empty() {
                return Err(invalid("vault_passphrase_files", "a vault name is empty"));
            }
        }
        Ok(())
    }

    /// The effective configuration as TOML, for `--print-config`. It holds paths, never a
    /// secret's value.
    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("a configuration always serializes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_file_is_the_defaults() {
        assert_eq!(
            ServerConfig::from_toml("").unwrap(),
            ServerConfig::default()
        );
        ServerConfig::default().check().unwrap();
    }

    #[test]
    fn unknown_keys_and_bad_types_name_the_key() {
        let e = ServerConfig::from_toml("listen = \"127.0.0.1:1\"\nlisten_port = 5\n").unwrap_err();
        assert!(e.contains("listen_port"), "{e}");
        let e = ServerConfig::from_toml("insecure_http = \"yes\"\n").unwrap_err();
        assert!(e.contains("insecure_http"), "{e}");
        let e = ServerConfig::from_toml("log_format = \"xml\"\n").unwrap_err();
        assert!(e.contains("log_format"), "{e}");
    }

    #[test]
    fn plain_http_stays_on_loopback_unless_told() {
        let mut c = ServerConfig {
            listen: "0.0.0.0:8640".into(),
            ..Default::default()
        };
        let e = c.check().unwrap_err().to_string();
        assert!(e.contains("`listen`") && e.contains("insecure_http"), "{e}");
        c.insecure_http = true;
        c.check().unwrap();
        c.listen = "[::1]:8640".into();
        c.insecure_http = false;
        c.check().unwrap();
        c.listen = "localhost".into();
        assert!(c.check().unwrap_err().to_string().contains("`listen`"));
    }

    #[test]
    fn tls_needs_both_files() {
        let c = ServerConfig {
            tls_cert: Some("/nonexistent/cert.pem".into()),
            ..Default::default()
        };
        assert!(c.check().unwrap_err().to_string().contains("`tls_key`"));
        let c = ServerConfig {
            tls_cert: Some("/nonexistent/cert.pem".into()),
            tls_key: Some("/nonexistent/key.pem".into()),
            ..Default::default()
        };
        assert!(c.check().unwrap_err().to_string().contains("`tls_cert`"));
    }

    #[test]
    fn a_bad_log_filter_is_refused() {
        let c = ServerConfig {
            log_level: "kura=loud".into(),
            ..Default::default()
        };
        assert!(c.check().unwrap_err().to_string().contains("`log_level`"));
    }

    #[test]
    fn relative_paths_follow_the_file_and_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("kura.toml");
        std::fs::write(
            &f,
            "home = \"h\"\nallow_source = [\"/srv/images\", \"more\"]\n[vault_passphrase_files]\noffsite = \"pass\"\n",
        )
        .unwrap();
        let c = ServerConfig::from_file(&f).unwrap();
        assert_eq!(c.home.as_deref(), Some(dir.path().join("h").as_path()));
        assert_eq!(c.allow_source[1], dir.path().join("more"));
        assert_eq!(c.vault_passphrase_files["offsite"], dir.path().join("pass"));
        let again = ServerConfig::from_toml(&c.to_toml()).unwrap();
        assert_eq!(again, c);
    }
}
