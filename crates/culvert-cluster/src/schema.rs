//! The registry's tables, created and upgraded by versioned migrations.
//!
//! Every server runs [`migrate`] when it connects. Several may start at once, so the
//! migrations run in one transaction that first takes a transaction-level advisory lock:
//! the second server waits for the first to commit, then finds the versions recorded in
//! `culvert_schema_migrations` and has nothing left to do. A database whose schema is newer
//! than this build is refused rather than used half-understood.

use tokio_postgres::Client;

use crate::error::Failure;
use crate::ClusterError;

/// Key of the advisory lock that serialises migrations ("culvert1" in ASCII).
const MIGRATION_LOCK: i64 = 0x6375_6c76_6572_7431;

/// The migrations, by version: each runs once, in order, in the migrating transaction.
pub(crate) const MIGRATIONS: &[(i32, &str)] = &[(1, V1)];

/// The newest schema version this build knows.
pub const SCHEMA_VERSION: i32 = 1;

/// Version 1: tokens, tenants, leases, servers, presence, secrets, and the triggers that
/// tell listeners about changes (`culvert_tokens`, `culvert_presence`).
///
/// Notices are sent by row-level AFTER triggers, so an upsert that only updates (a server's
/// heartbeat) sends none; PostgreSQL folds identical notices of one transaction into one.
const V1: &str = r#"
CREATE TABLE culvert_tokens (
    name       text PRIMARY KEY,
    entry      jsonb NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE culvert_tenants (
    name       text PRIMARY KEY,
    limits     jsonb NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE culvert_leases (
    proto     text NOT NULL CHECK (proto IN ('tcp', 'udp')),
    port      integer NOT NULL CHECK (port BETWEEN 1 AND 65535),
    tenant    text NOT NULL,
    service   text NOT NULL,
    leased_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (proto, port),
    UNIQUE (tenant, service, proto)
);

CREATE TABLE culvert_servers (
    id           text PRIMARY KEY,
    advertise    text NOT NULL,
    fingerprint  text,
    heartbeat_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE culvert_presence (
    server_id text NOT NULL REFERENCES culvert_servers (id) ON DELETE CASCADE,
    tenant    text NOT NULL,
    service   text NOT NULL,
    proto     text NOT NULL CHECK (proto IN ('tcp', 'udp')),
    port      integer NOT NULL CHECK (port BETWEEN 0 AND 65535),
    token     text NOT NULL,
    PRIMARY KEY (server_id, tenant, service, proto)
);

CREATE TABLE culvert_secrets (
    name  text PRIMARY KEY,
    value text NOT NULL
);

CREATE FUNCTION culvert_notify_tokens() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('culvert_tokens', '');
    RETURN NULL;
END
$$;

CREATE FUNCTION culvert_notify_presence() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('culvert_presence', '');
    RETURN NULL;
END
$$;

CREATE TRIGGER culvert_tokens_notify AFTER INSERT OR UPDATE OR DELETE ON culvert_tokens
    FOR EACH ROW EXECUTE FUNCTION culvert_notify_tokens();
CREATE TRIGGER culvert_tokens_truncate AFTER TRUNCATE ON culvert_tokens
    FOR EACH STATEMENT EXECUTE FUNCTION culvert_notify_tokens();
CREATE TRIGGER culvert_tenants_notify AFTER INSERT OR UPDATE OR DELETE ON culvert_tenants
    FOR EACH ROW EXECUTE FUNCTION culvert_notify_tokens();
CREATE TRIGGER culvert_tenants_truncate AFTER TRUNCATE ON culvert_tenants
    FOR EACH STATEMENT EXECUTE FUNCTION culvert_notify_tokens();

CREATE TRIGGER culvert_presence_notify AFTER INSERT OR DELETE ON culvert_presence
    FOR EACH ROW EXECUTE FUNCTION culvert_notify_presence();
CREATE TRIGGER culvert_presence_change AFTER UPDATE ON culvert_presence
    FOR EACH ROW WHEN (OLD.* IS DISTINCT FROM NEW.*)
    EXECUTE FUNCTION culvert_notify_presence();
CREATE TRIGGER culvert_servers_notify AFTER INSERT OR DELETE ON culvert_servers
    FOR EACH ROW EXECUTE FUNCTION culvert_notify_presence();
-- A heartbeat is an update of heartbeat_at alone: no notice (it would come every few
-- seconds from every server). A changed address or certificate is worth one.
CREATE TRIGGER culvert_servers_change AFTER UPDATE ON culvert_servers
    FOR EACH ROW WHEN (OLD.advertise IS DISTINCT FROM NEW.advertise
                       OR OLD.fingerprint IS DISTINCT FROM NEW.fingerprint)
    EXECUTE FUNCTION culvert_notify_presence();
"#;

/// Brings the schema up to date on `client` (a connection of its own: the transaction
/// needs `&mut`). Returns the versions it applied.
pub(crate) async fn migrate(client: &mut Client) -> Result<Vec<i32>, Failure> {
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS culvert_schema_migrations (
             version    integer PRIMARY KEY,
             applied_at timestamptz NOT NULL DEFAULT now()
         )",
    )
    .await?;
    let row = tx
        .query_one(
            "SELECT coalesce(max(version), 0) FROM culvert_schema_migrations",
            &[],
        )
        .await?;
    let current: i32 = row.get(0);
    if current > SCHEMA_VERSION {
        return Err(ClusterError::Schema(format!(
            "the database's schema is version {current}, newer than this build understands \
             (up to {SCHEMA_VERSION}); upgrade culvert on this server"
        ))
        .into());
    }
    let mut applied = Vec::new();
    for &(version, sql) in MIGRATIONS.iter().filter(|(v, _)| *v > current) {
        tx.batch_execute(sql).await.map_err(|e| {
            ClusterError::Schema(format!(
                "migration to version {version} failed: {}",
                crate::error::describe(&e)
            ))
        })?;
        tx.execute(
            "INSERT INTO culvert_schema_migrations (version) VALUES ($1)",
            &[&version],
        )
        .await?;
        applied.push(version);
    }
    tx.commit().await?;
    Ok(applied)
}
