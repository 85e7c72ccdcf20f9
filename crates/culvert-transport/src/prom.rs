//! Prometheus text exposition helpers shared by the server's and the agent's `/metrics`.

use std::fmt::Write;

/// Appends one metric family: its HELP and TYPE lines, then `samples` (`labels`, value).
pub fn family(out: &mut String, name: &str, kind: &str, help: &str, samples: &[(String, f64)]) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
    for (labels, v) in samples {
        if labels.is_empty() {
            let _ = writeln!(out, "{name} {v}");
        } else {
            let _ = writeln!(out, "{name}{{{labels}}} {v}");
        }
    }
}

/// Escapes a label value.
pub fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Appends `culvert_datagrams_dropped_total{direction}`, summed over live connections:
/// the multiplexer's datagram queues drop the oldest when full, and an operator needs to
/// know which side fell behind. `send`: our queue towards the peer overflowed (the link
/// or the peer is slow); `recv`: datagrams from the peer were not forwarded in time.
pub fn datagrams_dropped(out: &mut String, send: u64, recv: u64) {
    family(
        out,
        "culvert_datagrams_dropped_total",
        "counter",
        "Datagrams dropped from full multiplexer queues on live connections, by queue.",
        &[
            ("direction=\"send\"".into(), send as f64),
            ("direction=\"recv\"".into(), recv as f64),
        ],
    );
}
