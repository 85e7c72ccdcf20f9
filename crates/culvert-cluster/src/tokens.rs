//! Tokens and tenant limits: what a token file holds for a single server, shared by the
//! cluster. Entries are JSON this crate does not interpret (the server's `TokenEntry` and
//! `TenantLimits`), so the server's token format can grow without a schema change.

use tokio_postgres::error::SqlState;

use crate::error::Failure;
use crate::{ClusterDb, ClusterError};

/// JSON as stored back to a value; unparsable JSON means a hand edit went wrong.
fn json_of(name: &str, text: &str) -> Result<serde_json::Value, Failure> {
    serde_json::from_str(text).map_err(|e| {
        ClusterError::Schema(format!("the JSON stored for {name:?} does not parse: {e}")).into()
    })
}

impl ClusterDb {
    /// Every token: (name, entry as JSON), by name. The entry is opaque to this crate (the
    /// server's `TokenEntry`: hash and permissions, never the token).
    pub async fn tokens(&self) -> Result<Vec<(String, serde_json::Value)>, ClusterError> {
        self.run("listing tokens", |c| async move {
            let rows = c
                .query(
                    "SELECT name, entry::text FROM culvert_tokens ORDER BY name",
                    &[],
                )
                .await?;
            rows.iter()
                .map(|r| {
                    let name: String = r.get(0);
                    let entry = json_of(&name, r.get(1))?;
                    Ok((name, entry))
                })
                .collect()
        })
        .await
    }

    /// Adds a token; [`ClusterError::Duplicate`] when one of that name exists.
    pub async fn insert_token(
        &self,
        name: &str,
        entry: &serde_json::Value,
    ) -> Result<(), ClusterError> {
        let text = entry.to_string();
        self.run("adding a token", |c| async move {
            let n = c
                .execute(
                    "INSERT INTO culvert_tokens (name, entry) VALUES ($1, $2::text::jsonb)
                     ON CONFLICT (name) DO NOTHING",
                    &[&name, &text],
                )
                .await?;
            if n == 0 {
                return Err(ClusterError::Duplicate(name.to_owned()).into());
            }
            Ok(())
        })
        .await
    }

    /// Removes a token; `false` when there was none of that name. Servers listening drop
    /// it and close its sessions.
    pub async fn delete_token(&self, name: &str) -> Result<bool, ClusterError> {
        self.run("removing a token", |c| async move {
            let n = c
                .execute("DELETE FROM culvert_tokens WHERE name = $1", &[&name])
                .await?;
            Ok(n > 0)
        })
        .await
    }

    /// Tenant-level limits: (tenant, limits as JSON), by tenant. The limits are opaque to
    /// this crate (the server's `TenantLimits`).
    pub async fn tenants(&self) -> Result<Vec<(String, serde_json::Value)>, ClusterError> {
        self.run("listing tenants", |c| async move {
            let rows = c
                .query(
                    "SELECT name, limits::text FROM culvert_tenants ORDER BY name",
                    &[],
                )
                .await?;
            rows.iter()
                .map(|r| {
                    let name: String = r.get(0);
                    let limits = json_of(&name, r.get(1))?;
                    Ok((name, limits))
                })
                .collect()
        })
        .await
    }

    /// Sets a tenant's limits (created or replaced).
    pub async fn put_tenant(
        &self,
        name: &str,
        limits: &serde_json::Value,
    ) -> Result<(), ClusterError> {
        let text = limits.to_string();
        self.run("setting tenant limits", |c| async move {
            c.execute(
                "INSERT INTO culvert_tenants (name, limits) VALUES ($1, $2::text::jsonb)
                 ON CONFLICT (name) DO UPDATE SET limits = EXCLUDED.limits, updated_at = now()",
                &[&name, &text],
            )
            .await?;
            Ok(())
        })
        .await
    }

    /// Removes a tenant's limits; `false` when it had none.
    pub async fn delete_tenant(&self, name: &str) -> Result<bool, ClusterError> {
        self.run("removing tenant limits", |c| async move {
            let n = c
                .execute("DELETE FROM culvert_tenants WHERE name = $1", &[&name])
                .await?;
            Ok(n > 0)
        })
        .await
    }
}

/// Whether `e` is a unique-key violation (someone else took the key first).
pub(crate) fn is_unique_violation(e: &tokio_postgres::Error) -> bool {
    e.code() == Some(&SqlState::UNIQUE_VIOLATION)
}
