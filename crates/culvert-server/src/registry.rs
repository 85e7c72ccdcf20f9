//! Public port assignment: per-protocol pools over the configured ranges, requested ports
//! honoured inside the range, and a memory of (token, service) → port so a reconnecting
//! agent gets its previous port back.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use crate::PortRange;

/// Transport protocol of a public port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// TCP listener.
    Tcp,
    /// UDP socket.
    Udp,
}

/// Remembered assignments kept at most (oldest forgotten first); bounds memory under churn.
const MAX_REMEMBERED: usize = 65_536;

#[derive(Debug)]
struct Pool {
    range: PortRange,
    used: HashSet<u16>,
    next: u16,
}

impl Pool {
    fn new(range: PortRange) -> Pool {
        Pool {
            range,
            used: HashSet::new(),
            next: range.start,
        }
    }
}

#[derive(Debug)]
struct Inner {
    tcp: Pool,
    udp: Pool,
    remembered: HashMap<(String, String, Protocol), u16>,
    remembered_order: std::collections::VecDeque<(String, String, Protocol)>,
}

/// Why no port could be assigned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum AssignError {
    #[error("port {0} is outside the server's range {1}")]
    OutOfRange(u16, PortRange),
    #[error("port {0} is not allowed for this token")]
    NotAllowed(u16),
    #[error("port {0} is already in use")]
    InUse(u16),
    #[error("no free port left in {0}")]
    Exhausted(PortRange),
}

/// The server's port registry.
#[derive(Debug)]
pub(crate) struct Registry {
    inner: Mutex<Inner>,
    /// Woken whenever a port returns to its pool, for the registrations waiting for one.
    released: tokio::sync::Notify,
}

impl Registry {
    pub(crate) fn new(tcp: PortRange, udp: PortRange) -> Registry {
        Registry {
            inner: Mutex::new(Inner {
                tcp: Pool::new(tcp),
                udp: Pool::new(udp),
                remembered: HashMap::new(),
                remembered_order: Default::default(),
            }),
            released: tokio::sync::Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes a port for `service` of `token`: the requested one (must be free, in range and
    /// allowed), else the one it had before if free, else the next free one. `skip` lists
    /// ports that failed to bind.
    pub(crate) fn assign(
        &self,
        proto: Protocol,
        token: &str,
        service: &str,
        requested: u16,
        allowed: &[PortRange],
        skip: &HashSet<u16>,
    ) -> Result<u16, AssignError> {
        let mut inner = self.lock();
        let key = (token.to_owned(), service.to_owned(), proto);
        let remembered = inner.remembered.get(&key).copied();
        let pool = match proto {
            Protocol::Tcp => &mut inner.tcp,
            Protocol::Udp => &mut inner.udp,
        };
        let ok = |p: u16| allowed.is_empty() || allowed.iter().any(|r| r.contains(p));
        let port = if requested != 0 {
            if !pool.range.contains(requested) {
                return Err(AssignError::OutOfRange(requested, pool.range));
            }
            if !ok(requested) {
                return Err(AssignError::NotAllowed(requested));
            }
            if pool.used.contains(&requested) || skip.contains(&requested) {
                return Err(AssignError::InUse(requested));
            }
            requested
        } else if let Some(p) = remembered.filter(|p| {
            pool.range.contains(*p) && ok(*p) && !pool.used.contains(p) && !skip.contains(p)
        }) {
            p
        } else {
            let span = u32::from(pool.range.end - pool.range.start) + 1;
            let mut found = None;
            for i in 0..span {
                let off = (u32::from(pool.next - pool.range.start) + i) % span;
                let p = pool.range.start + off as u16;
                // Round-robin from the last assignment: a just-freed port comes last, so a
                // returning agent usually finds its own port still free.
                if !pool.used.contains(&p) && !skip.contains(&p) && ok(p) {
                    found = Some(p);
                    break;
                }
            }
            let p = found.ok_or(AssignError::Exhausted(pool.range))?;
            pool.next = if p == pool.range.end {
                pool.range.start
            } else {
                p + 1
            };
            p
        };
        pool.used.insert(port);
        if inner.remembered.insert(key.clone(), port).is_none() {
            inner.remembered_order.push_back(key);
            if inner.remembered_order.len() > MAX_REMEMBERED {
                if let Some(old) = inner.remembered_order.pop_front() {
                    inner.remembered.remove(&old);
                }
            }
        }
        Ok(port)
    }

    /// Returns a port to its pool (the memory of who had it stays).
    pub(crate) fn release(&self, proto: Protocol, port: u16) {
        let mut inner = self.lock();
        match proto {
            Protocol::Tcp => inner.tcp.used.remove(&port),
            Protocol::Udp => inner.udp.used.remove(&port),
        };
        drop(inner);
        self.released.notify_waiters();
    }

    /// Waits until the port last assigned to (`token`, `service`) is free again (woken by
    /// [`Registry::release`], never polling), or `deadline` passes. True if it is free.
    pub(crate) async fn remembered_released(
        &self,
        proto: Protocol,
        token: &str,
        service: &str,
        deadline: tokio::time::Instant,
    ) -> bool {
        loop {
            // Registered before the check, so a release between the two is not missed.
            let released = self.released.notified();
            tokio::pin!(released);
            released.as_mut().enable();
            if !self.remembered_in_use(proto, token, service) {
                return true;
            }
            if tokio::time::timeout_at(deadline, released).await.is_err() {
                return false;
            }
        }
    }

    /// Whether the port last assigned to (`token`, `service`) is still held (by a session
    /// that is ending): a returning agent waits briefly for it rather than take another.
    pub(crate) fn remembered_in_use(&self, proto: Protocol, token: &str, service: &str) -> bool {
        let inner = self.lock();
        let key = (token.to_owned(), service.to_owned(), proto);
        let pool = match proto {
            Protocol::Tcp => &inner.tcp,
            Protocol::Udp => &inner.udp,
        };
        inner
            .remembered
            .get(&key)
            .is_some_and(|p| pool.used.contains(p))
    }

    /// Ports in use and pool sizes, per protocol: (tcp used, tcp size, udp used, udp size).
    pub(crate) fn usage(&self) -> (usize, usize, usize, usize) {
        let inner = self.lock();
        let size = |r: PortRange| usize::from(r.end - r.start) + 1;
        (
            inner.tcp.used.len(),
            size(inner.tcp.range),
            inner.udp.used.len(),
            size(inner.udp.range),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assigns_remembers_and_honours_requests() {
        let r = Registry::new(
            PortRange {
                start: 100,
                end: 102,
            },
            PortRange {
                start: 100,
                end: 100,
            },
        );
        let none = HashSet::new();
        let a = r.assign(Protocol::Tcp, "t", "a", 0, &[], &none).unwrap();
        let b = r.assign(Protocol::Tcp, "t", "b", 0, &[], &none).unwrap();
        assert_ne!(a, b);
        assert_eq!(
            r.assign(Protocol::Tcp, "t", "c", a, &[], &none),
            Err(AssignError::InUse(a))
        );
        assert!(matches!(
            r.assign(Protocol::Tcp, "t", "c", 99, &[], &none),
            Err(AssignError::OutOfRange(..))
        ));
        // UDP pool is separate.
        assert_eq!(r.assign(Protocol::Udp, "t", "a", 0, &[], &none), Ok(100));
        r.release(Protocol::Tcp, a);
        let c = r.assign(Protocol::Tcp, "t", "c", 0, &[], &none).unwrap();
        assert_ne!(c, a, "a free port nobody remembers comes first");
        assert!(matches!(r.assign(Protocol::Tcp, "t", "d", 0, &[], &none), Ok(p) if p == a));
        r.release(Protocol::Tcp, b);
        assert_eq!(
            r.assign(Protocol::Tcp, "t", "b", 0, &[], &none),
            Ok(b),
            "b gets its port back"
        );
        assert!(matches!(
            r.assign(Protocol::Tcp, "t", "e", 0, &[], &none),
            Err(AssignError::Exhausted(_))
        ));
        let allowed = [PortRange {
            start: 101,
            end: 101,
        }];
        assert_eq!(
            r.assign(Protocol::Tcp, "t", "f", 102, &allowed, &none),
            Err(AssignError::NotAllowed(102))
        );
    }
}

/// A public port held by a service; returned to the registry when the service (and with it
/// its socket) is gone, so a port is never handed out while still bound.
#[derive(Debug)]
pub(crate) struct PortLease {
    registry: std::sync::Arc<Registry>,
    proto: Protocol,
    port: u16,
}

impl PortLease {
    pub(crate) fn new(registry: std::sync::Arc<Registry>, proto: Protocol, port: u16) -> PortLease {
        PortLease {
            registry,
            proto,
            port,
        }
    }
}

impl Drop for PortLease {
    fn drop(&mut self) {
        self.registry.release(self.proto, self.port);
    }
}
