//! Port leases: a public port per (tenant, service, protocol), unique across the cluster
//! and sticky, so a service keeps its port when its agent reconnects, to this server or
//! another.
//!
//! The database settles races: `(proto, port)` is the primary key and
//! `(tenant, service, proto)` is unique. A lease reads the service's current lease, then
//! writes with a condition on what it read; when another server got there first (a key
//! violation, or the condition no longer holding) it reads again and retries, a bounded
//! number of times.

use rand::Rng;

use crate::error::Failure;
use crate::tokens::is_unique_violation;
use crate::{port_of, ClusterDb, ClusterError, Proto};

/// Attempts of one lease before giving up with [`ClusterError::Contended`].
const ATTEMPTS: u32 = 64;

/// After a lost race, the next attempt picks at random among this many lowest free ports
/// at most, so servers racing for the same lowest port spread out.
const SPREAD: i64 = 16;

/// `range ∩ allowed` (all of `range` when `allowed` is empty) as sorted, disjoint,
/// non-empty intervals.
fn intervals(range: (u16, u16), allowed: &[(u16, u16)]) -> Vec<(u16, u16)> {
    let (lo, hi) = range;
    let mut v: Vec<(u16, u16)> = if allowed.is_empty() {
        vec![(lo, hi)]
    } else {
        allowed
            .iter()
            .map(|&(s, e)| (s.max(lo), e.min(hi)))
            .collect()
    };
    v.retain(|&(s, e)| s <= e && e != 0);
    v.iter_mut().for_each(|iv| iv.0 = iv.0.max(1));
    v.sort_unstable();
    let mut merged: Vec<(u16, u16)> = Vec::with_capacity(v.len());
    for (s, e) in v {
        match merged.last_mut() {
            Some(last) if u32::from(s) <= u32::from(last.1) + 1 => last.1 = last.1.max(e),
            _ => merged.push((s, e)),
        }
    }
    merged
}

/// Whether `port` lies in one of `ivs`.
fn permitted(port: u16, ivs: &[(u16, u16)]) -> bool {
    ivs.iter().any(|&(s, e)| (s..=e).contains(&port))
}

impl ClusterDb {
    /// A port lease for (tenant, service, proto), unique per (proto, port) across the
    /// cluster and sticky per (tenant, service, proto):
    ///
    /// - the existing lease is returned when `requested` is 0 or equals it (and it is still
    ///   inside `range` and `allowed`);
    /// - `requested` != 0 takes that port if free (moving this service's lease to it),
    ///   [`ClusterError::PortTaken`] if another service holds it,
    ///   [`ClusterError::PortNotAllowed`] if outside `range`/`allowed`;
    /// - otherwise the lowest free port in `range` ∩ `allowed` (`allowed` empty: the whole
    ///   range), [`ClusterError::Exhausted`] if none (an existing lease that no longer fits
    ///   moves there).
    ///
    /// Concurrent callers on several servers never get the same port for two services.
    /// `range` and `allowed` are inclusive (first, last) pairs.
    pub async fn lease(
        &self,
        proto: Proto,
        tenant: &str,
        service: &str,
        requested: u16,
        range: (u16, u16),
        allowed: &[(u16, u16)],
    ) -> Result<u16, ClusterError> {
        let ivs = intervals(range, allowed);
        if requested != 0 && !permitted(requested, &ivs) {
            return Err(ClusterError::PortNotAllowed {
                proto,
                port: requested,
            });
        }
        let exhausted = move || ClusterError::Exhausted {
            proto,
            start: range.0,
            end: range.1,
        };
        let starts: Vec<i32> = ivs.iter().map(|iv| i32::from(iv.0)).collect();
        let ends: Vec<i32> = ivs.iter().map(|iv| i32::from(iv.1)).collect();
        let p = proto.as_str();
        let what = format!("leasing a {proto} port for {tenant}/{service}");
        let (ivs, starts, ends, what_c) = (&ivs, &starts, &ends, what.clone());
        let _local = self.inner.lease_lock.lock().await;
        self.run(&what, |c| async move {
            for attempt in 0..ATTEMPTS {
                let current: Option<i32> = c
                    .query_opt(
                        "SELECT port FROM culvert_leases
                         WHERE proto = $1 AND tenant = $2 AND service = $3",
                        &[&p, &tenant, &service],
                    )
                    .await?
                    .map(|r| r.get(0));
                let current_port = current.map(port_of).transpose()?;
                if let Some(port) = current_port {
                    if (requested == 0 || requested == port) && permitted(port, ivs) {
                        return Ok(port);
                    }
                }
                let port = if requested != 0 {
                    i32::from(requested)
                } else {
                    if ivs.is_empty() {
                        return Err(exhausted().into());
                    }
                    // The lowest free port; after a lost race, one of the lowest few.
                    let spread = (i64::from(attempt) + 1).min(SPREAD);
                    let skip = if attempt == 0 {
                        0
                    } else {
                        rand::rng().random_range(0..spread)
                    };
                    let free = c
                        .query(
                            "SELECT p FROM unnest($2::int4[], $3::int4[]) AS r(s, e),
                                 generate_series(r.s, r.e) AS p
                             WHERE NOT EXISTS (
                                 SELECT 1 FROM culvert_leases l WHERE l.proto = $1 AND l.port = p)
                             ORDER BY p LIMIT $4",
                            &[&p, &starts, &ends, &(skip + 1)],
                        )
                        .await?;
                    match free.get(skip as usize).or(free.last()) {
                        Some(r) => r.get(0),
                        None => return Err(exhausted().into()),
                    }
                };
                // Insert, or move this service's lease, but only from the port we read: if
                // another server changed it meanwhile, read again.
                let written = c
                    .query_opt(
                        "INSERT INTO culvert_leases (proto, port, tenant, service)
                         VALUES ($1, $2, $3, $4)
                         ON CONFLICT (tenant, service, proto) DO UPDATE
                             SET port = EXCLUDED.port, leased_at = now()
                             WHERE culvert_leases.port = $5
                         RETURNING port",
                        &[&p, &port, &tenant, &service, &current.unwrap_or(-1)],
                    )
                    .await;
                match written {
                    Ok(Some(r)) => return port_of(r.get(0)),
                    Ok(None) => {}
                    Err(e) if is_unique_violation(&e) => {
                        if requested != 0 {
                            let holder = c
                                .query_opt(
                                    "SELECT tenant, service FROM culvert_leases
                                     WHERE proto = $1 AND port = $2",
                                    &[&p, &port],
                                )
                                .await?;
                            if let Some(h) = holder {
                                let (t, s): (String, String) = (h.get(0), h.get(1));
                                if t != tenant || s != service {
                                    return Err(ClusterError::PortTaken {
                                        proto,
                                        port: requested,
                                        holder: format!("{t}/{s}"),
                                    }
                                    .into());
                                }
                            }
                        }
                    }
                    Err(e) => return Err(Failure::Pg(e)),
                }
                tracing::debug!(attempt, tenant, service, %proto, "cluster registry: lease raced another server, retrying");
            }
            Err(ClusterError::Contended {
                what: what_c,
                attempts: ATTEMPTS,
            }
            .into())
        })
        .await
    }

    /// Forgets a lease (a service removed for good), freeing its port; `false` when there
    /// was none. Not for a normal disconnect: leases are sticky.
    pub async fn release_lease(
        &self,
        proto: Proto,
        tenant: &str,
        service: &str,
    ) -> Result<bool, ClusterError> {
        self.run("releasing a lease", |c| async move {
            let n = c
                .execute(
                    "DELETE FROM culvert_leases WHERE proto = $1 AND tenant = $2 AND service = $3",
                    &[&proto.as_str(), &tenant, &service],
                )
                .await?;
            Ok(n > 0)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals_clip_merge_and_default_to_the_range() {
        assert_eq!(intervals((100, 200), &[]), vec![(100, 200)]);
        assert_eq!(
            intervals((100, 200), &[(150, 300), (50, 120), (121, 130)]),
            vec![(100, 130), (150, 200)]
        );
        assert_eq!(intervals((100, 200), &[(300, 400)]), vec![]);
        assert_eq!(intervals((0, 10), &[]), vec![(1, 10)]);
        assert!(permitted(150, &[(100, 130), (150, 200)]));
        assert!(!permitted(140, &[(100, 130), (150, 200)]));
    }
}
