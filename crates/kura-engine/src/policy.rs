//! Policies of a vault: stored in the catalog, validated and interpreted by `kura-policy`.

use jiff::civil::Date;
use kura_catalog::PolicyRow;
use kura_policy::{DEFAULT_POLICY, Policy, Simulation};

use crate::{Error, ErrorKind, Home, Result};

/// Where `policy simulate` takes its policy from.
#[derive(Debug, Clone)]
pub enum PolicySource {
    /// A stored policy: vault name and policy name.
    Stored {
        /// Vault name.
        vault: String,
        /// Policy name.
        name: String,
    },
    /// A policy document (JSON bytes), e.g. from `--file`.
    Document(Vec<u8>),
}

/// Splits `VAULT/NAME`.
pub fn split_policy_path(path: &str) -> Result<(String, String)> {
    match path.split_once('/') {
        Some((v, n)) if !v.is_empty() && !n.is_empty() && !n.contains('/') => {
            Ok((v.into(), n.into()))
        }
        _ => Err(Error::new(
            ErrorKind::Invalid,
            format!("{path:?} is not VAULT/POLICY"),
        )),
    }
}

fn parse(json: &[u8]) -> Result<Policy> {
    Ok(Policy::parse(json)?)
}

fn doc_json(p: &Policy) -> serde_json::Value {
    serde_json::to_value(&p.doc).expect("policy documents serialize")
}

/// Object key of a policy in its vault. Policies are plain JSON (they hold no data and no
/// secret), so the vault describes its schedules too and `vault attach` brings them back.
fn policy_key(name: &str) -> String {
    format!("policies/{name}.json")
}

/// The policies stored in a vault; unreadable ones are reported in `warnings`.
pub(crate) fn vault_policies(
    backend: &dyn kura_backend::Backend,
    warnings: &mut Vec<String>,
) -> Vec<(String, serde_json::Value)> {
    let mut out = Vec::new();
    for key in backend.list("policies/").unwrap_or_default() {
        let parsed = backend
            .get(&key)
            .map_err(|e| e.to_string())
            .and_then(|b| Policy::parse(&b).map_err(|e| e.to_string()));
        match parsed {
            Ok(p) => out.push((p.name.clone(), doc_json(&p))),
            Err(e) => warnings.push(format!("policy {key} skipped: {e}")),
        }
    }
    out
}

impl Home {
    /// Writes (or with `None`, removes) a policy in the vault's storage.
    fn store_policy(
        &self,
        vault_id: &str,
        name: &str,
        doc: Option<&serde_json::Value>,
    ) -> Result<()> {
        let v = self.catalog.vault_by_id(vault_id)?;
        let backend = self.backend_of(&v)?;
        let key = policy_key(name);
        match doc {
            Some(d) => backend.put(&key, serde_json::to_vec_pretty(d).expect("json"))?,
            None => backend.delete(&key)?,
        }
        backend.sync()?;
        Ok(())
    }

    /// Makes sure a vault has `DefaultPolicy`.
    pub(crate) fn ensure_default_policy(&self, vault_id: &str) -> Result<()> {
        if !self.catalog.has_policy(vault_id, DEFAULT_POLICY)? {
            self.catalog.insert_policy(
                vault_id,
                DEFAULT_POLICY,
                &doc_json(&Policy::default_policy()),
            )?;
        }
        Ok(())
    }

    /// A stored policy, validated.
    pub(crate) fn load_policy(&self, vault_id: &str, name: &str) -> Result<Policy> {
        let row = self.catalog.policy(vault_id, name)?;
        parse(row.doc.to_string().as_bytes())
    }

    /// Adds a policy to a vault.
    pub fn create_policy(&self, vault: &str, json: &[u8]) -> Result<PolicyRow> {
        let v = self.catalog.vault(vault)?;
        let p = parse(json)?;
        let doc = doc_json(&p);
        self.catalog.insert_policy(&v.id, &p.name, &doc)?;
        if let Err(e) = self.store_policy(&v.id, &p.name, Some(&doc)) {
            // Refused: leave the catalog as it was.
            let _ = self.catalog.delete_policy(&v.id, &p.name);
            return Err(e);
        }
        Ok(self.catalog.policy(&v.id, &p.name)?)
    }

    /// Gives the item's scheduled recovery points the tags and expiry `policy` gives them
    /// (after a policy update or a move to another policy); returns how many changed.
    pub(crate) fn reapply_retention(
        &self,
        item: &kura_catalog::ItemRow,
        p: &Policy,
    ) -> Result<usize> {
        let mut changed = 0;
        for rp in self.catalog.list_rps(&item.id)? {
            if rp.origin != "scheduled" {
                continue;
            }
            let t: jiff::Timestamp = rp.time.parse().map_err(|e| {
                Error::new(
                    ErrorKind::Corrupt,
                    format!("recovery point {} has an unreadable time: {e}", rp.id),
                )
            })?;
            let kept = p.retain(&t.to_zoned(p.tz.clone()), rp.tier != "snapshot");
            let tags: Vec<String> = kept.tags.iter().map(|s| s.to_string()).collect();
            let expires = kept.expires().timestamp().to_string();
            if tags != rp.tags || rp.expires.as_deref() != Some(expires.as_str()) {
                self.catalog
                    .set_rp_retention(&rp.id, &tags, Some(&expires))?;
                changed += 1;
            }
        }
        Ok(changed)
    }

    /// A vault's policies.
    pub fn list_policies(&self, vault: &str) -> Result<Vec<PolicyRow>> {
        let v = self.catalog.vault(vault)?;
        Ok(self.catalog.list_policies(&v.id)?)
    }

    /// One policy.
    pub fn policy(&self, vault: &str, name: &str) -> Result<PolicyRow> {
        let v = self.catalog.vault(vault)?;
        Ok(self.catalog.policy(&v.id, name)?)
    }

    /// Replaces a policy and re-applies its retention to the scheduled recovery points of
    /// every item using it. Returns the policy and how many recovery points changed.
    pub fn update_policy(
        &self,
        vault: &str,
        name: &str,
        json: &[u8],
    ) -> Result<(PolicyRow, usize)> {
        let v = self.catalog.vault(vault)?;
        self.catalog.policy(&v.id, name)?;
        let p = parse(json)?;
        if p.name != name {
            return Err(Error::new(
                ErrorKind::Invalid,
                format!(
                    "name: the document is named {:?} but updates {name:?}; policies cannot be renamed",
                    p.name
                ),
            ));
        }
        self.store_policy(&v.id, name, Some(&doc_json(&p)))?;
        self.catalog.update_policy(&v.id, name, &doc_json(&p))?;
        let mut changed = 0;
        for item in self.catalog.list_items(Some(&v.id))? {
            if item.policy.as_deref() == Some(name) {
                changed += self.reapply_retention(&item, &p)?;
            }
        }
        Ok((self.catalog.policy(&v.id, name)?, changed))
    }

    /// Deletes a policy; refused for `DefaultPolicy` and while items use it.
    pub fn delete_policy(&self, vault: &str, name: &str) -> Result<()> {
        let v = self.catalog.vault(vault)?;
        if name == DEFAULT_POLICY {
            return Err(Error::new(
                ErrorKind::Conflict,
                format!("{DEFAULT_POLICY} cannot be deleted; every vault has one"),
            ));
        }
        self.catalog.delete_policy(&v.id, name)?;
        self.store_policy(&v.id, name, None)
    }

    /// Previews a policy over `days` days from `from`.
    pub fn simulate_policy(
        &self,
        source: &PolicySource,
        from: Date,
        days: u32,
    ) -> Result<Simulation> {
        if !(1..=36_600).contains(&days) {
            return Err(Error::new(
                ErrorKind::Invalid,
                format!("--days {days} is out of range; allowed 1-36600"),
            ));
        }
        let p = match source {
            PolicySource::Stored { vault, name } => {
                let v = self.catalog.vault(vault)?;
                self.load_policy(&v.id, name)?
            }
            PolicySource::Document(json) => parse(json)?,
        };
        kura_policy::simulate(&p, from, days).map_err(|e| {
            Error::new(
                ErrorKind::Invalid,
                format!("cannot simulate from {from}: {e}"),
            )
        })
    }
}
