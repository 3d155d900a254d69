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
