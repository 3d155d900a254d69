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

/// How long a web UI session lasts (it ends earlier if its token expires, is revoked or
/// gets a new secret).
pub const SESSION_HOURS: i64 = 12;

/// A web UI session just opened: `id` goes into the HttpOnly cookie and is not kept.
#[derive(Debug, Clone)]
pub struct NewSession {
    /// The cookie's value.
    pub id: String,
    /// What is stored.
    pub row: kura_catalog::SessionRow,
}

impl Home {
    /// Opens a web UI session with a token's secret; `None` if the token is not accepted.
    pub fn open_session(&self, secret: &str) -> Result<Option<NewSession>> {
        let Some(token) = self.authenticate(secret)? else {
            return Ok(None);
        };
        let now = self.now();
        let mut expires = now + jiff::SignedDuration::from_hours(SESSION_HOURS);
        if let Some(t) = token.expires.as_deref().and_then(|t| t.parse().ok()) {
            expires = expires.min(t);
        }
        let id = new_secret();
        let csrf = new_secret();
        let row = self.catalog.insert_session(
            &token_hash(&id),
            &token_hash(secret),
            &csrf,
            now,
            expires,
        )?;
        Ok(Some(NewSession { id, row }))
    }

    /// The session of a cookie, if it is open.
    pub fn session(&self, id: &str) -> Result<Option<kura_catalog::SessionRow>> {
        Ok(self.catalog.session(&token_hash(id), self.now())?)
    }

    /// Ends the session of a cookie.
    pub fn close_session(&self, id: &str) -> Result<()> {
        Ok(self.catalog.delete_session(&token_hash(id))?)
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

    #[test]
    fn sessions_end_with_their_token() {
        let dir = tempfile::tempdir().unwrap();
        let home = Home::open(dir.path()).unwrap();
        let t = home.create_token("ui", None).unwrap();
        assert!(home.open_session("kura_wrong").unwrap().is_none());
        let s = home.open_session(&t.token).unwrap().unwrap();
        let row = home.session(&s.id).unwrap().unwrap();
        assert_eq!(
            (row.token_name.as_str(), row.csrf.len()),
            ("ui", s.row.csrf.len())
        );
        assert!(home.session("kura_other").unwrap().is_none());
        // A new secret for the token ends its sessions; so does a revoke.
        home.reset_token("ui", None, None).unwrap();
        assert!(home.session(&s.id).unwrap().is_none());
        let t2 = home.list_tokens().unwrap();
        assert_eq!(t2.len(), 1);
        let again = home.reset_token("ui", None, None).unwrap();
        let s2 = home.open_session(&again.token).unwrap().unwrap();
        assert!(home.session(&s2.id).unwrap().is_some());
        home.close_session(&s2.id).unwrap();
        assert!(home.session(&s2.id).unwrap().is_none());
        let s3 = home.open_session(&again.token).unwrap().unwrap();
        home.revoke_token("ui").unwrap();
        assert!(home.session(&s3.id).unwrap().is_none());
    }

    #[test]
    fn a_session_ends_at_its_expiry() {
        use std::sync::atomic::{AtomicI64, Ordering};
        struct Manual(AtomicI64);
        impl crate::Clock for Manual {
            fn now(&self) -> jiff::Timestamp {
                jiff::Timestamp::from_second(self.0.load(Ordering::SeqCst)).unwrap()
            }
        }
        let clock = std::sync::Arc::new(Manual(AtomicI64::new(1_800_000_000)));
        let dir = tempfile::tempdir().unwrap();
        let home = Home::open_with(dir.path(), clock.clone(), jiff::tz::TimeZone::UTC).unwrap();
        let t = home.create_token("ui", None).unwrap();
        let s = home.open_session(&t.token).unwrap().unwrap();
        clock
            .0
            .fetch_add(SESSION_HOURS * 3600 - 1, Ordering::SeqCst);
        assert!(home.session(&s.id).unwrap().is_some());
        clock.0.fetch_add(1, Ordering::SeqCst);
        assert!(
            home.session(&s.id).unwrap().is_none(),
            "ended at its expiry"
        );
        // A token that expires sooner ends the session with it.
        let short = home
            .create_token(
                "short",
                Some(home.now() + jiff::SignedDuration::from_hours(1)),
            )
            .unwrap();
        let s = home.open_session(&short.token).unwrap().unwrap();
        clock.0.fetch_add(3600, Ordering::SeqCst);
        assert!(home.session(&s.id).unwrap().is_none());
    }
}
