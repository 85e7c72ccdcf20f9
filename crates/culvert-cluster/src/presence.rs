//! Servers and presence: which servers are alive (their heartbeat, by the database's
//! clock) and which of them holds an agent for which service, so a server that gets a
//! caller for a service whose agent is elsewhere can relay it there.

use std::time::Duration;

use tokio_postgres::Row;

use crate::error::Failure;
use crate::{port_of, proto_of, ClusterDb, ClusterError, Presence, Proto, ServerRow};

/// `max_age` as the seconds the queries compare with.
fn secs(max_age: Duration) -> f64 {
    max_age.as_secs_f64()
}

/// A server from the first three columns of `row` (id, advertise, fingerprint).
fn server_of(row: &Row) -> ServerRow {
    ServerRow {
        id: row.get(0),
        advertise: row.get(1),
        fingerprint: row.get(2),
    }
}

impl ClusterDb {
    /// Records that this server is alive: its row upserted with `heartbeat_at = now()` by
    /// the database's clock. Only a changed address or fingerprint notifies listeners.
    pub async fn heartbeat(&self, me: &ServerRow) -> Result<(), ClusterError> {
        self.run("recording the heartbeat", |c| async move {
            c.execute(
                "INSERT INTO culvert_servers (id, advertise, fingerprint, heartbeat_at)
                 VALUES ($1, $2, $3, now())
                 ON CONFLICT (id) DO UPDATE SET advertise = EXCLUDED.advertise,
                     fingerprint = EXCLUDED.fingerprint, heartbeat_at = now()",
                &[&me.id, &me.advertise, &me.fingerprint],
            )
            .await?;
            Ok(())
        })
        .await
    }

    /// Deletes a server's row and, with it, its presence (a clean shutdown).
    pub async fn remove_server(&self, id: &str) -> Result<(), ClusterError> {
        self.run("removing the server", |c| async move {
            c.execute("DELETE FROM culvert_servers WHERE id = $1", &[&id])
                .await?;
            Ok(())
        })
        .await
    }

    /// Records that server `server_id` holds an agent serving `p` (upsert). The server's
    /// row must exist: send a [`ClusterDb::heartbeat`] first.
    pub async fn set_presence(&self, server_id: &str, p: &Presence) -> Result<(), ClusterError> {
        let port = i32::from(p.port);
        self.run("recording a service's presence", |c| async move {
            c.execute(
                "INSERT INTO culvert_presence (server_id, tenant, service, proto, port, token)
                 VALUES ($1, $2, $3, $4, $5, $6)
                 ON CONFLICT (server_id, tenant, service, proto)
                 DO UPDATE SET port = EXCLUDED.port, token = EXCLUDED.token",
                &[
                    &server_id,
                    &p.tenant,
                    &p.service,
                    &p.proto.as_str(),
                    &port,
                    &p.token,
                ],
            )
            .await?;
            Ok(())
        })
        .await
    }

    /// Forgets that server `server_id` holds an agent for the service (its agent left).
    pub async fn clear_presence(
        &self,
        server_id: &str,
        tenant: &str,
        service: &str,
        proto: Proto,
    ) -> Result<(), ClusterError> {
        self.run("clearing a service's presence", |c| async move {
            c.execute(
                "DELETE FROM culvert_presence
                 WHERE server_id = $1 AND tenant = $2 AND service = $3 AND proto = $4",
                &[&server_id, &tenant, &service, &proto.as_str()],
            )
            .await?;
            Ok(())
        })
        .await
    }

    /// Drops every presence row of a server (at start: rows of an earlier incarnation,
    /// whose agents are gone).
    pub async fn clear_server_presence(&self, server_id: &str) -> Result<(), ClusterError> {
        self.run("clearing the server's presence", |c| async move {
            c.execute(
                "DELETE FROM culvert_presence WHERE server_id = $1",
                &[&server_id],
            )
            .await?;
            Ok(())
        })
        .await
    }

    /// Servers whose heartbeat is younger than `max_age` by the database's clock, by id.
    pub async fn live_servers(&self, max_age: Duration) -> Result<Vec<ServerRow>, ClusterError> {
        let age = secs(max_age);
        self.run("listing live servers", |c| async move {
            let rows = c
                .query(
                    "SELECT id, advertise, fingerprint FROM culvert_servers
                     WHERE heartbeat_at > now() - $1::float8 * interval '1 second'
                     ORDER BY id",
                    &[&age],
                )
                .await?;
            Ok(rows.iter().map(server_of).collect())
        })
        .await
    }

    /// Presence rows of live servers only (heartbeat younger than `max_age`, database
    /// clock): (server, presence), by server and service.
    pub async fn live_presence(
        &self,
        max_age: Duration,
    ) -> Result<Vec<(ServerRow, Presence)>, ClusterError> {
        let age = secs(max_age);
        self.run("listing live presence", |c| async move {
            let rows = c
                .query(
                    "SELECT s.id, s.advertise, s.fingerprint,
                            p.tenant, p.service, p.proto, p.port, p.token
                     FROM culvert_presence p JOIN culvert_servers s ON s.id = p.server_id
                     WHERE s.heartbeat_at > now() - $1::float8 * interval '1 second'
                     ORDER BY s.id, p.tenant, p.service, p.proto",
                    &[&age],
                )
                .await?;
            rows.iter()
                .map(|r| {
                    let presence = Presence {
                        tenant: r.get(3),
                        service: r.get(4),
                        proto: proto_of(r.get(5))?,
                        port: port_of(r.get(6))?,
                        token: r.get(7),
                    };
                    Ok::<_, Failure>((server_of(r), presence))
                })
                .collect()
        })
        .await
    }
}
