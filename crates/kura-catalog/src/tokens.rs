//! Named API tokens. Only a hash of each secret is stored; tokens are 256-bit random, so a
//! fast unsalted hash is enough to make the table useless to whoever reads it.

use rusqlite::{OptionalExtension, params};
use serde::Serialize;

use crate::{Catalog, Error, Result, constraint, stamp};

/// A token as listed: never its secret or hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TokenRow {
    /// Name.
    pub name: String,
    /// When it was made (or last reset).
    pub created: String,
    /// When it stops being accepted, if ever.
    pub expires: Option<String>,
    /// When it was last accepted (to the minute).
    pub last_used: Option<String>,
    /// Role (reserved: every token is an administrator today).
    pub role: Option<String>,
}

impl Catalog {
    /// Stores a new token under `name` (refused if the name is taken).
    pub fn insert_token(
        &self,
        name: &str,
        hash: &str,
        created: jiff::Timestamp,
        expires: Option<jiff::Timestamp>,
    ) -> Result<()> {
        self.conn()
            .execute(
                "INSERT INTO api_tokens (name, hash, created, expires) VALUES (?1, ?2, ?3, ?4)",
                params![name, hash, stamp(created), expires.map(stamp)],
            )
            .map_err(|e| constraint(e, "token", name))?;
        Ok(())
    }

    /// Gives an existing token a new secret (and expiry); its last use is forgotten.
    pub fn replace_token(
        &self,
        name: &str,
        hash: &str,
        created: jiff::Timestamp,
        expires: Option<jiff::Timestamp>,
    ) -> Result<()> {
        let n = self.conn().execute(
            "UPDATE api_tokens SET hash = ?2, created = ?3, expires = ?4, last_used = NULL
             WHERE name = ?1",
            params![name, hash, stamp(created), expires.map(stamp)],
        )?;
        if n == 0 {
            return Err(Error::NotFound {
                kind: "token",
                name: name.to_string(),
                near: self.nearest("SELECT name FROM api_tokens", &[], name),
            });
        }
        Ok(())
    }

    /// Removes a token.
    pub fn delete_token(&self, name: &str) -> Result<()> {
        let n = self
            .conn()
            .execute("DELETE FROM api_tokens WHERE name = ?1", [name])?;
        if n == 0 {
            return Err(Error::NotFound {
                kind: "token",
                name: name.to_string(),
                near: self.nearest("SELECT name FROM api_tokens", &[], name),
            });
        }
        Ok(())
    }

    /// All tokens, by name.
    pub fn list_tokens(&self) -> Result<Vec<TokenRow>> {
        let conn = self.conn();
        let mut st = conn.prepare(
            "SELECT name, created, expires, last_used, role FROM api_tokens ORDER BY name",
        )?;
        let rows = st
            .query_map([], |r| {
                Ok(TokenRow {
                    name: r.get(0)?,
                    created: r.get(1)?,
                    expires: r.get(2)?,
                    last_used: r.get(3)?,
                    role: r.get(4)?,
                })
            })?
            .collect::<rusqlite::Result<_>>()?;
        Ok(rows)
    }

    /// The token whose secret hashes to `hash`, if any (expired ones included).
    pub fn token_by_hash(&self, hash: &str) -> Result<Option<TokenRow>> {
        Ok(self
            .conn()
            .query_row(
                "SELECT name, created, expires, last_used, role FROM api_tokens WHERE hash = ?1",
                [hash],
                |r| {
                    Ok(TokenRow {
                        name: r.get(0)?,
                        created: r.get(1)?,
                        expires: r.get(2)?,
                        last_used: r.get(3)?,
                        role: r.get(4)?,
                    })
                },
            )
            .optional()?)
    }

    /// Records a token's use.
    pub fn touch_token(&self, name: &str, at: jiff::Timestamp) -> Result<()> {
        self.conn().execute(
            "UPDATE api_tokens SET last_used = ?2 WHERE name = ?1",
            params![name, stamp(at)],
        )?;
        Ok(())
    }
}

/// A web UI session as stored: never the cookie's secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SessionRow {
    /// The token it was opened with.
    pub token_name: String,
    /// The value state-changing requests must echo in their `X-CSRF-Token` header.
    pub csrf: String,
    /// When it was opened.
    pub created: String,
    /// When it ends.
    pub expires: String,
}

impl Catalog {
    /// Stores a session for the token whose secret hashes to `token_hash`; sessions that
    /// ended before `now` are removed on the way.
    pub fn insert_session(
        &self,
        hash: &str,
        token_hash: &str,
        csrf: &str,
        now: jiff::Timestamp,
        expires: jiff::Timestamp,
    ) -> Result<SessionRow> {
        let conn = self.conn();
        conn.execute(
            "DELETE FROM sessions WHERE expires <= ?1",
            params![stamp(now)],
        )?;
        let name: Option<String> = conn
            .query_row(
                "SELECT name FROM api_tokens WHERE hash = ?1",
                params![token_hash],
                |r| r.get(0),
            )
            .optional()?;
        let Some(token_name) = name else {
            return Err(Error::NotFound {
                kind: "token",
                name: "(the token given)".into(),
                near: None,
            });
        };
        let row = SessionRow {
            token_name,
            csrf: csrf.to_string(),
            created: stamp(now),
            expires: stamp(expires),
        };
        conn.execute(
            "INSERT INTO sessions (hash, token_name, token_hash, csrf, created, expires)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                hash,
                row.token_name,
                token_hash,
                row.csrf,
                row.created,
                row.expires
            ],
        )?;
        Ok(row)
    }

    /// The session whose cookie hashes to `hash`, if it has not ended at `now` and its
    /// token still exists with the secret it was opened with.
    pub fn session(&self, hash: &str, now: jiff::Timestamp) -> Result<Option<SessionRow>> {
        Ok(self
            .conn()
            .query_row(
                "SELECT s.token_name, s.csrf, s.created, s.expires FROM sessions s
                 JOIN api_tokens t ON t.name = s.token_name AND t.hash = s.token_hash
                 WHERE s.hash = ?1 AND s.expires > ?2
                   AND (t.expires IS NULL OR t.expires > ?2)",
                params![hash, stamp(now)],
                |r| {
                    Ok(SessionRow {
                        token_name: r.get(0)?,
                        csrf: r.get(1)?,
                        created: r.get(2)?,
                        expires: r.get(3)?,
                    })
                },
            )
            .optional()?)
    }

    /// Ends a session (nothing if there is none).
    pub fn delete_session(&self, hash: &str) -> Result<()> {
        self.conn()
            .execute("DELETE FROM sessions WHERE hash = ?1", params![hash])?;
        Ok(())
    }
}
