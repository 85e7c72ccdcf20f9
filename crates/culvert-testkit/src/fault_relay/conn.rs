//! One relayed connection: held while black-holed, dialed, pumped both ways, and ended by
//! its peers, an IO error or a cut.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};

use super::pump::Pump;
use super::{Command, Cut, Direction, Faults, Shared};

/// Bound of dialing the upstream.
const DIAL_TIMEOUT: Duration = Duration::from_secs(10);

/// Bound of forwarding what was read before a FIN cut.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// How long after a FIN cut the relay keeps reading (and discarding) what the peers still
/// send, so that closing does not turn into an RST because of unread bytes.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

/// Removes the connection from the registry when its task ends, however it ends.
struct Registered {
    shared: Arc<Shared>,
    index: u64,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.shared.unregister(self.index);
    }
}

/// Serves connection `index` until it closes. Never panics on IO errors: a failed
/// connection resets both sides.
pub(super) async fn serve(
    shared: Arc<Shared>,
    index: u64,
    client: TcpStream,
    mut cmds: mpsc::Receiver<Command>,
    faults: watch::Sender<Faults>,
) {
    let reg = Registered {
        shared: shared.clone(),
        index,
    };
    let mut global = shared.faults.subscribe();
    let mut own = faults.subscribe();
    let held_then_dial = async {
        loop {
            let f = Faults::merge(&global.borrow_and_update(), &own.borrow_and_update());
            if !f.black_hole {
                break;
            }
            tracing::debug!(relay = %shared.addr, index, "held while black-holed");
            tokio::select! {
                r = global.changed() => r.ok()?,
                r = own.changed() => r.ok()?,
            }
        }
        match tokio::time::timeout(DIAL_TIMEOUT, TcpStream::connect(shared.upstream)).await {
            Ok(Ok(s)) => Some(s),
            Ok(Err(e)) => {
                tracing::debug!(relay = %shared.addr, index, error = %e, "upstream dial failed");
                None
            }
            Err(_) => {
                tracing::debug!(relay = %shared.addr, index, "upstream dial timed out");
                None
            }
        }
    };
    let upstream = tokio::select! {
        biased;
        cmd = cmds.recv() => return silent(&reg, client, cmd, &mut cmds).await,
        up = held_then_dial => up,
    };
    let Some(upstream) = upstream else {
        reset(client);
        return;
    };
    relay(&reg, client, upstream, cmds, faults).await;
}

/// What ended the pumping.
enum Ended {
    Peers(io::Result<((), ())>),
    Command(Option<Command>),
}

async fn relay(
    reg: &Registered,
    mut client: TcpStream,
    mut upstream: TcpStream,
    mut cmds: mpsc::Receiver<Command>,
    faults: watch::Sender<Faults>,
) {
    let (shared, index) = (&reg.shared, reg.index);
    // Each write goes out as it is made: rechunked pieces stay separate segments.
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    let mut up = Pump::new(Direction::Up, index, shared.clone(), &faults);
    let mut down = Pump::new(Direction::Down, index, shared.clone(), &faults);
    let ended = {
        let (mut cr, mut cw) = client.split();
        let (mut ur, mut uw) = upstream.split();
        tokio::select! {
            biased;
            cmd = cmds.recv() => Ended::Command(cmd),
            res = async {
                tokio::try_join!(up.run(&mut cr, &mut uw), down.run(&mut ur, &mut cw))
            } => Ended::Peers(res),
        }
    };
    let cmd = match ended {
        Ended::Peers(Ok(_)) => {
            tracing::debug!(relay = %shared.addr, index, "closed by both peers");
            return;
        }
        Ended::Peers(Err(e)) => {
            // Mirror a reset (or any failure) on one side as a reset on the other.
            tracing::debug!(relay = %shared.addr, index, error = %e, "connection failed; resetting both sides");
            reset(client);
            reset(upstream);
            return;
        }
        Ended::Command(None) => return,
        Ended::Command(Some(cmd)) => cmd,
    };
    match cmd.cut {
        Cut::Rst => {
            reset(client);
            reset(upstream);
            shared.unregister(index);
            tracing::debug!(relay = %shared.addr, index, "cut with RST");
        }
        Cut::HalfOpen => {
            reset(upstream);
            tracing::debug!(relay = %shared.addr, index, "half-open: upstream reset, client kept");
            drop(cmd);
            silent(reg, client, None, &mut cmds).await;
        }
        Cut::Fin => {
            shared.unregister(index);
            drop(cmd);
            {
                let (_, mut cw) = client.split();
                let (_, mut uw) = upstream.split();
                let flush = async { tokio::join!(up.flush(&mut uw), down.flush(&mut cw)) };
                match tokio::time::timeout(FLUSH_TIMEOUT, flush).await {
                    Ok((Ok(()), Ok(()))) => {}
                    Ok((a, b)) => {
                        let e = a.err().or(b.err());
                        tracing::debug!(relay = %shared.addr, index, error = ?e, "FIN cut: flush failed");
                    }
                    Err(_) => {
                        tracing::debug!(relay = %shared.addr, index, "FIN cut: flush timed out")
                    }
                }
            }
            tracing::debug!(relay = %shared.addr, index, "cut with FIN");
            let both = async { tokio::join!(drain(&mut client), drain(&mut upstream)) };
            let _ = tokio::time::timeout(DRAIN_TIMEOUT, both).await;
        }
    }
}

/// A connection with only its client side left (held when cut, or half-open): nothing is
/// read or written until a cut ends it.
async fn silent(
    reg: &Registered,
    mut client: TcpStream,
    mut next: Option<Command>,
    cmds: &mut mpsc::Receiver<Command>,
) {
    let (shared, index) = (&reg.shared, reg.index);
    loop {
        let cmd = match next.take() {
            Some(cmd) => cmd,
            None => match cmds.recv().await {
                Some(cmd) => cmd,
                None => return,
            },
        };
        match cmd.cut {
            // Already silent, no upstream to reset.
            Cut::HalfOpen => {}
            Cut::Rst => {
                reset(client);
                shared.unregister(index);
                tracing::debug!(relay = %shared.addr, index, "client side cut with RST");
                return;
            }
            Cut::Fin => {
                shared.unregister(index);
                drop(cmd);
                if let Err(e) = client.shutdown().await {
                    tracing::debug!(relay = %shared.addr, index, error = %e, "FIN cut: shutdown failed");
                }
                tracing::debug!(relay = %shared.addr, index, "client side cut with FIN");
                let _ = tokio::time::timeout(DRAIN_TIMEOUT, drain(&mut client)).await;
                return;
            }
        }
    }
}

/// Closes `s` with an RST.
fn reset(s: TcpStream) {
    if let Err(e) = s.set_zero_linger() {
        tracing::debug!(error = %e, "SO_LINGER 0 failed; closing with FIN");
    }
    drop(s);
}

/// Reads and discards until EOF or an error.
async fn drain(s: &mut TcpStream) {
    let mut buf = vec![0u8; 16 * 1024];
    while let Ok(n) = s.read(&mut buf).await {
        if n == 0 {
            return;
        }
    }
}
