//! Policies: named JSON documents per vault. The catalog stores them; `kura-policy`
//! validates and interprets them.

use rusqlite::{OptionalExtension, params};
use serde::Serialize;

use crate::{Catalog, Error, Result, now};

/// A stored policy.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PolicyRow {
    /// Vault id.
    pub vault_id: String,
    /// Name.
    pub name: String,
    /// The policy document (JSON).
    pub doc: serde_json::Value,
    /// Created.
    pub created: String,
    /// Last changed.
    pub updated: String,
    /// Items using it.
    pub items: usize,
}

impl Catalog {
    /// Stores a new policy.
    pub fn insert_policy(&self, vault_id: &str, name: &str, doc: &serde_json::Value) -> Result<()> {
        let t = now();
        self.conn()
            .execute(
                "INSERT INTO policies (vault_id, name, doc, created, updated) VALUES (?1, ?2, ?3, ?4, ?4)",
                params![vault_id, name, doc.to_string(), t],
            )
            .map_err(|e| crate::constraint(e, "policy", name))?;
        Ok(())
    }

    /// Replaces a policy's document.
    pub fn update_policy(&self, vault_id: &str, name: &str, doc: &serde_json::Value) -> Result<()> {
        let n = self.conn().execute(
            "UPDATE policies SET doc = ?3, updated = ?4 WHERE vault_id = ?1 AND name = ?2",
            params![vault_id, name, doc.to_string(), now()],
        )?;
        if n == 0 {
            return Err(Error::NotFound {
                kind: "policy",
                name: name.into(),
                near: None,
            });
        }
        Ok(())
    }

    /// Deletes a policy; refused while items use it.
    pub fn delete_policy(&self, vault_id: &str, name: &str) -> Result<()> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let users: Vec<String> = tx
            .prepare("SELECT name FROM items WHERE vault_id = ?1 AND policy = ?2 ORDER BY name")?
            .query_map(params![vault_id, name], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        if !users.is_empty() {
            return Err(Error::Conflict(format!(
                "policy {name:?} is used by item(s) {}; give them another policy first",
                users.join(", ")
            )));
        }
        let n = tx.execute(
            "DELETE FROM policies WHERE vault_id = ?1 AND name = ?2",
            params![vault_id, name],
        )?;
        if n == 0 {
            return Err(Error::NotFound {
                kind: "policy",
                name: name.into(),
                near: None,
            });
        }
        tx.commit()?;
        Ok(())
    }

    fn policy_rows(&self, sql: &str, args: &[&str]) -> Result<Vec<PolicyRow>> {
        let conn = self.conn();
        let mut st = conn.prepare(sql)?;
        let rows = st
            .query_map(rusqlite::params_from_iter(args.iter()), |r| {
                let doc: String = r.get(2)?;
                Ok(PolicyRow {
                    vault_id: r.get(0)?,
                    name: r.get(1)?,
                    doc: serde_json::from_str(&doc).unwrap_or(serde_json::Value::Null),
                    created: r.get(3)?,
                    updated: r.get(4)?,
                    items: r.get::<_, i64>(5)? as usize,
                })
            })?
            .collect::<rusqlite::Result<_>>()?;
        Ok(rows)
    }

    const POLICY_SELECT: &str = "SELECT p.vault_id, p.name, p.doc, p.created, p.updated,
        (SELECT count(*) FROM items i WHERE i.vault_id = p.vault_id AND i.policy = p.name)
        FROM policies p";

    /// A policy by vault and name.
    pub fn policy(&self, vault_id: &str, name: &str) -> Result<PolicyRow> {
        self.policy_rows(
            &format!(
                "{} WHERE p.vault_id = ?1 AND p.name = ?2",
                Self::POLICY_SELECT
            ),
            &[vault_id, name],
        )?
        .pop()
        .ok_or_else(|| Error::NotFound {
            kind: "policy",
            name: name.into(),
            near: self.nearest(
                "SELECT name FROM policies WHERE vault_id = ?1",
                &[&vault_id],
                name,
            ),
        })
    }

    /// Whether a vault has a policy of that name.
    pub fn has_policy(&self, vault_id: &str, name: &str) -> Result<bool> {
        Ok(self
            .conn()
            .query_row(
                "SELECT 1 FROM policies WHERE vault_id = ?1 AND name = ?2",
                params![vault_id, name],
                |_| Ok(()),
            )
            .optional()?
            .is_some())
    }

    /// A vault's policies, by name.
    pub fn list_policies(&self, vault_id: &str) -> Result<Vec<PolicyRow>> {
        self.policy_rows(
            &format!(
                "{} WHERE p.vault_id = ?1 ORDER BY p.name",
                Self::POLICY_SELECT
            ),
            &[vault_id],
        )
    }
}
