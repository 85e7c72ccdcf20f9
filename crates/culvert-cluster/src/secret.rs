//! The cluster's shared secret: the credential servers authenticate to each other with
//! when one relays a caller to another. Made at random by the first server that asks, so
//! no operator has to distribute it; the database is already trusted with the tokens.

use rand::RngCore;

use crate::{ClusterDb, ClusterError};

/// Name of the secret's row in `culvert_secrets`.
const CLUSTER_SECRET: &str = "cluster";

/// Prefix of the secret, so it is recognisable in a leak scan and never taken for a token.
const PREFIX: &str = "cvc_";

impl ClusterDb {
    /// The cluster's shared credential: `cvc_` and 32 random bytes in hex, created by the
    /// first caller and the same for every later one (also when several servers ask at
    /// once: `INSERT … ON CONFLICT DO NOTHING`, then read back).
    pub async fn cluster_secret(&self) -> Result<String, ClusterError> {
        let mut bytes = [0u8; 32];
        rand::rng().fill_bytes(&mut bytes);
        let fresh = format!("{PREFIX}{}", hex::encode(bytes));
        self.run("reading the cluster secret", |c| async move {
            c.execute(
                "INSERT INTO culvert_secrets (name, value) VALUES ($1, $2)
                 ON CONFLICT (name) DO NOTHING",
                &[&CLUSTER_SECRET, &fresh],
            )
            .await?;
            // A statement of its own: under READ COMMITTED it sees the row another server
            // committed while our insert waited for it.
            let row = c
                .query_one(
                    "SELECT value FROM culvert_secrets WHERE name = $1",
                    &[&CLUSTER_SECRET],
                )
                .await?;
            Ok(row.get(0))
        })
        .await
    }
}
