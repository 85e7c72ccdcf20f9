//! Prometheus encoding shared by the server, the agent and the node: the families that
//! describe a process's multiplexed connections (streams, stream payload bytes, datagram
//! drops), which the server and the agent keep in a [`MuxLedger`] and sum into
//! [`MuxTotals`] at scrape time, and two helpers that write a family in one call.

use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::TypedMetric;
use prometheus_client::registry::Registry;

use crate::MuxStats;

/// Figures summed over a process's connections when a scrape asks for them.
#[derive(Debug, Default, Clone, Copy)]
pub struct MuxTotals {
    /// Streams holding state.
    pub open_streams: usize,
    /// Streams opened.
    pub streams_opened: u64,
    /// Stream payload bytes sent.
    pub bytes_sent: u64,
    /// Stream payload bytes received.
    pub bytes_received: u64,
    /// Datagrams dropped from our full queue towards the peer.
    pub datagrams_dropped_send: u64,
    /// Datagrams from the peer dropped before they were forwarded.
    pub datagrams_dropped_recv: u64,
    /// Streams let go of with bytes queued, reset after the linger without progress.
    pub streams_lingered_out: u64,
}

/// A process's connections for its counters: those open, and the sum of those that ended,
/// so a counter summed over connections never goes down when one ends (Prometheus reads a
/// drop as a restart and counts the remainder as new). Connections enter when they start
/// carrying streams and leave once, with their last figures, when they end.
#[derive(Debug, Default)]
pub struct MuxLedger {
    inner: std::sync::Mutex<Ledger>,
}

#[derive(Debug, Default)]
struct Ledger {
    open: Vec<crate::Mux>,
    ended: MuxTotals,
}

impl MuxLedger {
    fn lock(&self) -> std::sync::MutexGuard<'_, Ledger> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts `mux` from now on (until [`MuxLedger::close`]).
    pub fn open(&self, mux: &crate::Mux) {
        self.lock().open.push(mux.clone());
    }

    /// `mux` ended: its figures move to the ended connections' sum, once (a second call,
    /// or one for a connection never opened here, does nothing).
    pub fn close(&self, mux: &crate::Mux) {
        let mut l = self.lock();
        if let Some(i) = l.open.iter().position(|m| m.same(mux)) {
            let m = l.open.swap_remove(i);
            l.ended.add_ended(&m.stats());
        }
    }

    /// The sums over open and ended connections; `open_streams` counts the open ones'.
    pub fn totals(&self) -> MuxTotals {
        let l = self.lock();
        let mut t = l.ended;
        for m in &l.open {
            t.add(&m.stats());
        }
        t
    }
}

impl MuxTotals {
    /// Adds the counters of a connection that ended (not its streams: it holds none).
    fn add_ended(&mut self, st: &MuxStats) {
        let open = self.open_streams;
        self.add(st);
        self.open_streams = open;
    }

    /// Adds one connection's figures.
    pub fn add(&mut self, st: &MuxStats) {
        self.open_streams += st.open_streams;
        self.streams_opened += st.proto.streams_opened;
        self.bytes_sent += st.proto.stream_bytes_sent;
        self.bytes_received += st.proto.stream_bytes_received;
        self.datagrams_dropped_send += st.proto.datagrams_dropped_send;
        self.datagrams_dropped_recv += st.proto.datagrams_dropped_recv;
        self.streams_lingered_out += st.proto.lingered_out;
    }

    /// Encodes `culvert_streams_open`, `culvert_streams_opened_total`,
    /// `culvert_tunnel_stream_bytes_total{direction}` (described by `bytes_help`) and
    /// `culvert_datagrams_dropped_total{direction}`. The multiplexer's datagram queues drop
    /// the oldest when full, and an operator needs to know which side fell behind: `send`,
    /// our queue towards the peer overflowed (the link or the peer is slow); `recv`,
    /// datagrams from the peer were not forwarded in time. And
    /// `culvert_streams_lingered_out_total`: answers whose reader on the far side stopped
    /// reading, cut off after the linger (otherwise invisible but for the memory they held).
    pub fn encode(&self, enc: &mut DescriptorEncoder, bytes_help: &str) -> std::fmt::Result {
        single(
            enc,
            "culvert_streams_open",
            "Multiplexed streams holding state.",
            ConstGauge::new(self.open_streams as u64),
        )?;
        // Counter names go without `_total`: the encoder appends it.
        single(
            enc,
            "culvert_streams_opened",
            "Streams opened, over this process's connections (ended ones included).",
            ConstCounter::new(self.streams_opened),
        )?;
        family(
            enc,
            "culvert_tunnel_stream_bytes",
            bytes_help,
            [
                ([("direction", "sent")], ConstCounter::new(self.bytes_sent)),
                (
                    [("direction", "received")],
                    ConstCounter::new(self.bytes_received),
                ),
            ],
        )?;
        family(
            enc,
            "culvert_datagrams_dropped",
            "Datagrams dropped from full multiplexer queues, by queue.",
            [
                (
                    [("direction", "send")],
                    ConstCounter::new(self.datagrams_dropped_send),
                ),
                (
                    [("direction", "recv")],
                    ConstCounter::new(self.datagrams_dropped_recv),
                ),
            ],
        )?;
        single(
            enc,
            "culvert_streams_lingered_out",
            "Streams let go of with bytes still queued that were reset after the linger (60 s by default, --linger) without any going out: the reader on the far side stopped reading.",
            ConstCounter::new(self.streams_lingered_out),
        )
    }
}

/// Encodes `culvert_udp_delivery_dropped_total{reason}`: datagrams that came through the
/// tunnel and were dropped in this process before reaching where they were going, which
/// the sender cannot see (UDP has no acknowledgement). `not_open` and `socket_full` come
/// from `drops` (the UDP targets this process dials); `more` adds the role's own reasons.
pub fn encode_udp_delivery_drops(
    enc: &mut DescriptorEncoder,
    drops: &crate::udp_target::TargetDrops,
    more: &[(&'static str, u64)],
) -> std::fmt::Result {
    use std::sync::atomic::Ordering::Relaxed;
    let own = [
        ("not_open", drops.not_open.load(Relaxed)),
        ("socket_full", drops.socket_full.load(Relaxed)),
    ];
    family(
        enc,
        "culvert_udp_delivery_dropped",
        "UDP datagrams from the tunnel dropped here before delivery, by reason: not_open (for a flow to a target this process dials that was not set up in time), socket_full (the target's socket buffer was full), local_queue_full (agent only: a local flow's reply queue was full).",
        own.iter()
            .chain(more)
            .map(|&(reason, n)| ([("reason", reason)], ConstCounter::new(n))),
    )
}

/// Writes a family of one unlabelled sample. A counter's `name` goes without `_total`:
/// the encoder appends it.
pub fn single<M: EncodeMetric + TypedMetric>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    metric: M,
) -> std::fmt::Result {
    metric.encode(enc.encode_descriptor(name, help, None, M::TYPE)?)
}

/// Writes a family of labelled samples (HELP and TYPE even when there are none, so the
/// family is known before it has values). A counter's `name` goes without `_total`.
pub fn family<L: EncodeLabelSet, M: EncodeMetric + TypedMetric>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    samples: impl IntoIterator<Item = (L, M)>,
) -> std::fmt::Result {
    let mut m = enc.encode_descriptor(name, help, None, M::TYPE)?;
    for (labels, metric) in samples {
        metric.encode(m.encode_family(&labels)?)?;
    }
    Ok(())
}

/// Prometheus text (format 0.0.4) of everything registered in `registry`.
pub fn text(registry: &Registry) -> String {
    let mut out = String::new();
    // Writing into a String fails only if a collector fails, and ours do not.
    if let Err(e) = prometheus_client::encoding::prometheus_text::encode(&mut out, registry) {
        tracing::warn!(error = %e, "encoding metrics failed");
    }
    out
}

/// Prometheus text of what `register` adds to a fresh registry: one component's metrics
/// alone (a process serves one registry with all of its components').
pub fn text_of(register: impl FnOnce(&mut Registry)) -> String {
    let mut registry = Registry::default();
    register(&mut registry);
    text(&registry)
}
