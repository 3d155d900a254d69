//! API tokens of the server: named, shown once, stored as hashes, with an optional expiry
//! and a record of their last use. Managed on the server's host (`kura token ...` over the
//! home) or through the API.

use kura_catalog::TokenRow;

use crate::{Error, ErrorKind, Home, Result};

/// The token every server has; `kura token reset admin` gives it a new secret.
pub const ADMIN_TOKEN: &str = "admin";

/// How stale a token's recorded last use may get before a request updates it (one write
/// per token per minute, not per request).
const TOUCH_EVERY: jiff::SignedDuration = jiff::SignedDuration::from_secs(60);

/// The stored form of a token's secret.
fn token_hash(secret: &str) -> String {
    hex::encode(blake3::hash(secret.as_bytes()).as_bytes())
}

/// A new secret: 256 random bits as hex, with a prefix that says what it is.
fn new_secret() -> String {
    let text = kura_store::keys::generate_key_file();
    format!("kura_{}", String::from_utf8_lossy(&text).trim())
}

fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(Error::new(
            ErrorKind::Invalid,
            format!("token name {name:?}: use 1 to 64 letters, digits, '-', '_' or '.'"),
        ))
    }
}

/// A new token: its name and its secret, which is shown this once.
#[derive(Debug, Clone, serde::Serialize)]
pub struct NewToken {
    /// Name.
    pub name: String,
    /// The secret to give to clients (`--token-file`); only its hash is kept.
    pub token: String,
    /// When it stops being accepted, if ever.
    pub expires: Option<String>,
}

impl Home {
    /// Parses an expiry: an RFC 3339 instant, or a date (the token then expires at the
    /// start of that day in the home's time zone). It must lie in the future.
    pub fn parse_token_expiry(&self, text: &str) -> Result<jiff::Timestamp> {
        let at = match text.parse::<jiff::Timestamp>() {
            Ok(t) => t,
            Err(_) => text
                .parse::<jiff::civil::Date>()
                .ok()
                .and_then(|d| d.to_zoned(self.zone().clone()).ok())
                .map(|z| z.timestamp())
                .ok_or_else(|| {
                    Error::new(
                        ErrorKind::Invalid,
                        format!(
                            "expires {text:?}: give a date (2027-01-31) or an instant (2027-01-31T12:00:00Z)"
                        ),
                    )
                })?,
        };
        if at <= self.now() {
            return Err(Error::new(
                ErrorKind::Invalid,
                format!("expires {text:?} is not in the future"),
            ));
        }
        Ok(at)
    }

    /// Makes a token. The secret is returned once; only its hash is stored.
    pub fn create_token(&self, name: &str, expires: Option<jiff::Timestamp>) -> Result<NewToken> {
        check_name(name)?;
        let token = new_secret();
        self.catalog
            .insert_token(name, &token_hash(&token), self.now(), expires)?;
        Ok(NewToken {
            name: name.to_string(),
            token,
            expires: expires.map(kura_catalog::stamp),
        })
    }

    /// Gives a token a new secret (the old one stops working at once), or makes it when it
    /// does not exist; `secret` sets the value (automation), else a random one is made.
    pub fn reset_token(
        &self,
        name: &str,
        secret: Option<&str>,
        expires: Option<jiff::Timestamp>,
    ) -> Result<NewToken> {
        check_name(name)?;
        let token = match secret {
            Some(s) if s.len() < 16 => {
                return Err(Error::new(
                    ErrorKind::Invalid,
                    format!(
                        "the secret of token {name:?} is too short: use at least 16 characters"
                    ),
                ));
            }
            Some(s) => s.to_string(),
            None => new_secret(),
        };
        let hash = token_hash(&token);
        match self.catalog.replace_token(name, &hash, self.now(), expires) {
            Err(kura_catalog::Error::NotFound { .. }) => {
                self.catalog
                    .insert_token(name, &hash, self.now(), expires)?
            }
            r => r?,
        }
        Ok(NewToken {
            name: name.to_string(),
            token,
            expires: expires.map(kura_catalog::stamp),
        })
    }

    /// Stores a token whose secret's hash is already known (hex BLAKE3), e.g. the admin
    /// token of a server from before named tokens; nothing happens if the name exists.
    pub fn adopt_token_hash(&self, name: &str, hash_hex: &str) -> Result<()> {
        check_name(name)?;
        if self.catalog.list_tokens()?.iter().any(|t| t.name == name) {
            return Ok(());
        }
        self.catalog
            .insert_token(name, hash_hex, self.now(), None)?;
        Ok(())
    }

    /// Removes a token: requests with it are refused from now on.
    pub fn revoke_token(&self, name: &str) -> Result<()> {
        Ok(self.catalog.delete_token(name)?)
    }

    /// All tokens (names, dates; never secrets).
    pub fn list_tokens(&self) -> Result<Vec<TokenRow>> {
        Ok(self.catalog.list_tokens()?)
    }

    /// Whether any token exists.
    pub fn has_tokens(&self) -> Result<bool> {
        Ok(!self.catalog.list_tokens()?.is_empty())
    }

    /// The token a request presents, if it is known and not expired; its last use is
    /// recorded (to the minute).
    pub fn authenticate(&self, secret: &str) -> Result<Option<TokenRow>> {
        let Some(mut row) = self.catalog.token_by_hash(&token_hash(secret))? else {
            return Ok(None);
        };
        let now = self.now();
        let stamp_of =
            |s: &Option<String>| s.as_deref().and_then(|t| t.parse::<jiff::Timestamp>().ok());
        if stamp_of(&row.expires).is_some_and(|e| e <= now) {
            return Ok(None);
        }
        if stamp_of(&row.last_used).is_none_or(|t| now.duration_since(t) >= TOUCH_EVERY) {
            self.catalog.touch_token(&row.name, now)?;
            row.last_used = Some(kura_catalog::stamp(now));
        }
        Ok(Some(row))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_named_hashed_expire_and_revoke() {
        let dir = tempfile::tempdir().unwrap();
        let home = Home::open(dir.path()).unwrap();
        let t = home.create_token("ci", None).unwrap();
        assert!(t.token.starts_with("kura_") && t.token.len() > 60);
        assert_eq!(home.authenticate(&t.token).unwrap().unwrap().name, "ci");
        assert!(home.authenticate("kura_wrong").unwrap().is_none());
        let listed = home.list_tokens().unwrap();
        assert_eq!(listed.len(), 1);
        assert!(listed[0].last_used.is_some(), "the use was recorded");
        // The catalog never holds the secret.
        let db = std::fs::read(dir.path().join("catalog.db")).unwrap_or_default();
        assert!(!db.windows(t.token.len()).any(|w| w == t.token.as_bytes()));
        assert!(home.create_token("ci", None).is_err(), "names are unique");
        assert!(home.create_token("no spaces", None).is_err());

        let again = home.reset_token("ci", None, None).unwrap();
        assert!(
            home.authenticate(&t.token).unwrap().is_none(),
            "the old secret is dead"
        );
        assert!(home.authenticate(&again.token).unwrap().is_some());

        let soon = home.now() + jiff::SignedDuration::from_secs(1);
        let short = home.create_token("short", Some(soon)).unwrap();
        assert!(home.authenticate(&short.token).unwrap().is_some());
        assert!(
            home.parse_token_expiry("2001-01-01").is_err(),
            "past expiry refused"
        );
        assert!(home.parse_token_expiry("tomorrow").is_err());

        home.revoke_token("ci").unwrap();
        assert!(home.authenticate(&again.token).unwrap().is_none());
        assert!(home.revoke_token("ci").is_err());
    }

    #[test]
    fn an_expired_token_is_refused() {
        struct Fixed(jiff::Timestamp);
        impl crate::Clock for Fixed {
            fn now(&self) -> jiff::Timestamp {
                self.0
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let t0: jiff::Timestamp = "2026-03-10T09:00:00Z".parse().unwrap();
        let home = Home::open_with(
            dir.path(),
            std::sync::Arc::new(Fixed(t0)),
            jiff::tz::TimeZone::UTC,
        )
        .unwrap();
        let exp = home.parse_token_expiry("2026-03-11").unwrap();
        let tok = home.create_token("temp", Some(exp)).unwrap();
        assert!(home.authenticate(&tok.token).unwrap().is_some());
        let later = Home::open_with(
            dir.path(),
            std::sync::Arc::new(Fixed("2026-03-11T00:00:00Z".parse().unwrap())),
            jiff::tz::TimeZone::UTC,
        )
        .unwrap();
        assert!(later.authenticate(&tok.token).unwrap().is_none());
    }
}
