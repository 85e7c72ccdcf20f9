//! The figures `culvert bench` measures, and how they are shown: a table (one row per
//! measurement; columns tunnel, direct and their ratio) or one JSON object.

use hdrhistogram::Histogram;
use serde::Serialize;

/// Throughput of one upload or download run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Throughput {
    /// Parallel streams.
    pub streams: usize,
    /// Bytes moved by the streams that finished.
    pub bytes: u64,
    /// Seconds from the first connect until the last stream finished.
    pub secs: f64,
    /// `bytes` per second, in MiB.
    pub mib_per_s: f64,
    /// Streams that failed (their bytes are not counted).
    pub failed: u64,
    /// The first failure's message.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_error: Option<String>,
}

/// Round-trip latency of one connection, summarised from an HDR histogram.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Latency {
    /// Bytes of each request and of its echo.
    pub message_bytes: usize,
    /// Round trips measured.
    pub count: u64,
    /// Seconds the run took.
    pub secs: f64,
    /// Mean round trip, microseconds.
    pub mean_us: f64,
    /// Median round trip, microseconds.
    pub p50_us: f64,
    /// 99th percentile, microseconds.
    pub p99_us: f64,
    /// 99.9th percentile, microseconds.
    pub p999_us: f64,
    /// Longest round trip, microseconds.
    pub max_us: f64,
    /// Round trips (or connects) that failed.
    pub failed: u64,
    /// The first failure's message.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_error: Option<String>,
}

impl Latency {
    /// The summary of `hist`, whose values are nanoseconds (all figures 0 when empty).
    pub fn from_histogram(
        hist: &Histogram<u64>,
        secs: f64,
        failed: u64,
        first_error: Option<String>,
    ) -> Latency {
        let us = |ns: u64| ns as f64 / 1000.0;
        let empty = hist.is_empty();
        let at = |q: f64| {
            if empty {
                0.0
            } else {
                us(hist.value_at_quantile(q))
            }
        };
        Latency {
            message_bytes: super::measure::LATENCY_MESSAGE,
            count: hist.len(),
            secs,
            mean_us: if empty { 0.0 } else { hist.mean() / 1000.0 },
            p50_us: at(0.5),
            p99_us: at(0.99),
            p999_us: at(0.999),
            max_us: if empty { 0.0 } else { us(hist.max()) },
            failed,
            first_error,
        }
    }
}

/// New connections per second (connect, one-byte echo, close).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Connections {
    /// Concurrent workers.
    pub clients: usize,
    /// Connections that completed.
    pub count: u64,
    /// Seconds the run took.
    pub secs: f64,
    /// `count` per second.
    pub per_s: f64,
    /// Connections that failed.
    pub failed: u64,
    /// The first failure's message.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_error: Option<String>,
}

/// UDP echo rate and loss.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Udp {
    /// Bytes of each datagram.
    pub payload_bytes: usize,
    /// Datagrams sent.
    pub sent: u64,
    /// Echoes received.
    pub received: u64,
    /// `sent - received`.
    pub lost: u64,
    /// `lost` in percent of `sent`.
    pub loss_pct: f64,
    /// Seconds of sending.
    pub secs: f64,
    /// Echoes received per second of sending.
    pub per_s: f64,
    /// Sends or receives that failed.
    pub failed: u64,
    /// The first failure's message.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_error: Option<String>,
}

impl Udp {
    /// A run that could not start.
    pub fn failed(failed: u64, first_error: Option<String>) -> Udp {
        Udp {
            payload_bytes: super::measure::UDP_PAYLOAD,
            failed,
            first_error,
            ..Udp::default()
        }
    }
}

/// Every figure of one side (through the tunnel, or direct).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Results {
    /// Upload on one stream.
    pub upload_1: Throughput,
    /// Upload on `--streams` streams.
    pub upload_n: Throughput,
    /// Download on one stream.
    pub download_1: Throughput,
    /// Download on `--streams` streams.
    pub download_n: Throughput,
    /// Round-trip latency.
    pub latency: Latency,
    /// Connection rate.
    pub connections: Connections,
    /// UDP echo (absent when no UDP address was known).
    pub udp: Option<Udp>,
}

impl Results {
    /// Measurements that failed at least once: (what, failures, first error).
    pub fn failures(&self) -> Vec<(String, u64, Option<&str>)> {
        fn t<'a>(t: &'a Throughput, dir: &str) -> (String, u64, Option<&'a str>) {
            let s = if t.streams == 1 { "" } else { "s" };
            (
                format!("{dir}, {} stream{s}", t.streams),
                t.failed,
                t.first_error.as_deref(),
            )
        }
        let mut v = vec![
            t(&self.upload_1, "upload"),
            t(&self.upload_n, "upload"),
            t(&self.download_1, "download"),
            t(&self.download_n, "download"),
            (
                "round trips".to_owned(),
                self.latency.failed,
                self.latency.first_error.as_deref(),
            ),
            (
                "connections".to_owned(),
                self.connections.failed,
                self.connections.first_error.as_deref(),
            ),
        ];
        if let Some(u) = &self.udp {
            v.push(("UDP".to_owned(), u.failed, u.first_error.as_deref()));
        }
        v.retain(|(_, n, _)| *n > 0);
        v
    }

    /// Measurements that got no result at all (no byte, round trip, connection or echo).
    pub fn empty(&self) -> Vec<&'static str> {
        let mut v = Vec::new();
        for (name, zero) in [
            ("upload, 1 stream", self.upload_1.bytes == 0),
            ("upload, N streams", self.upload_n.bytes == 0),
            ("download, 1 stream", self.download_1.bytes == 0),
            ("download, N streams", self.download_n.bytes == 0),
            ("latency", self.latency.count == 0),
            ("connections", self.connections.count == 0),
            ("UDP", self.udp.as_ref().is_some_and(|u| u.received == 0)),
        ] {
            if zero {
                v.push(name);
            }
        }
        v
    }
}

/// One row of the table.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// Stable name for scripts, such as `upload_n` or `latency_p99`.
    pub key: &'static str,
    /// What was measured, for people.
    pub measurement: String,
    /// Unit of `tunnel` and `direct`.
    pub unit: &'static str,
    /// Through the tunnel.
    pub tunnel: Option<f64>,
    /// Without the tunnel (absent without a baseline).
    pub direct: Option<f64>,
    /// `tunnel / direct` (absent when either is missing or `direct` is 0).
    pub ratio: Option<f64>,
}

/// The rows of the table: `tunnel` against `direct`, if measured.
pub fn rows(tunnel: &Results, direct: Option<&Results>) -> Vec<Row> {
    type Pick = fn(&Results) -> Option<f64>;
    let streams = tunnel.upload_n.streams;
    let clients = tunnel.connections.clients;
    let plural = |n: usize| if n == 1 { "" } else { "s" };
    let mut spec: Vec<(&'static str, String, &'static str, Pick)> = vec![
        ("upload_1", "upload, 1 stream".into(), "MiB/s", |r| {
            Some(r.upload_1.mib_per_s)
        }),
        (
            "upload_n",
            format!("upload, {streams} stream{}", plural(streams)),
            "MiB/s",
            |r| Some(r.upload_n.mib_per_s),
        ),
        ("download_1", "download, 1 stream".into(), "MiB/s", |r| {
            Some(r.download_1.mib_per_s)
        }),
        (
            "download_n",
            format!("download, {streams} stream{}", plural(streams)),
            "MiB/s",
            |r| Some(r.download_n.mib_per_s),
        ),
        ("latency_p50", "round trip 64 B, p50".into(), "us", |r| {
            Some(r.latency.p50_us)
        }),
        ("latency_p99", "round trip 64 B, p99".into(), "us", |r| {
            Some(r.latency.p99_us)
        }),
        ("latency_p999", "round trip 64 B, p99.9".into(), "us", |r| {
            Some(r.latency.p999_us)
        }),
        (
            "connections",
            format!("new connections, {clients} client{}", plural(clients)),
            "conn/s",
            |r| Some(r.connections.per_s),
        ),
    ];
    if tunnel.udp.is_some() {
        spec.push((
            "udp",
            format!("UDP echo, {} B datagrams", super::measure::UDP_PAYLOAD),
            "dgram/s",
            |r| r.udp.as_ref().map(|u| u.per_s),
        ));
        spec.push(("udp_loss", "UDP loss".into(), "%", |r| {
            r.udp.as_ref().map(|u| u.loss_pct)
        }));
    }
    spec.into_iter()
        .map(|(key, measurement, unit, pick)| {
            let t = pick(tunnel);
            let d = direct.and_then(pick);
            Row {
                key,
                measurement,
                unit,
                tunnel: t,
                direct: d,
                ratio: match (t, d) {
                    (Some(t), Some(d)) if d > 0.0 => Some(t / d),
                    _ => None,
                },
            }
        })
        .collect()
}

/// Where the measurements went.
#[derive(Debug, Clone, Serialize)]
pub struct Endpoints {
    /// The tunnel's public TCP address.
    pub tunnel_tcp: String,
    /// The tunnel's public UDP address (absent: no UDP row).
    pub tunnel_udp: Option<String>,
    /// The baseline's TCP address (absent: no baseline).
    pub direct_tcp: Option<String>,
    /// The baseline's UDP address.
    pub direct_udp: Option<String>,
}

/// Everything one `culvert bench` run found; `--json` prints it whole.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// `loopback` or `target`.
    pub mode: &'static str,
    /// Where the measurements went.
    pub endpoints: Endpoints,
    /// Seconds each measurement ran.
    pub duration_secs: f64,
    /// `--streams`.
    pub streams: usize,
    /// `--clients`.
    pub clients: usize,
    /// `--timeout`, seconds.
    pub timeout_secs: f64,
    /// Why there is no UDP row, if there is none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub udp_skipped: Option<String>,
    /// The table's rows.
    pub rows: Vec<Row>,
    /// Every figure through the tunnel.
    pub tunnel: Results,
    /// Every figure of the baseline.
    pub direct: Option<Results>,
}

/// `v` with as many decimals as its size deserves.
fn num(v: Option<f64>) -> String {
    match v {
        None => "-".to_owned(),
        Some(v) if v.abs() >= 100.0 => format!("{v:.0}"),
        Some(v) if v.abs() >= 10.0 => format!("{v:.1}"),
        Some(v) => format!("{v:.2}"),
    }
}

impl Report {
    /// The report as a text table, with the failures (if any) below it.
    pub fn table(&self) -> String {
        let head = ["measurement", "unit", "tunnel", "direct", "ratio"];
        let cells: Vec<[String; 5]> = self
            .rows
            .iter()
            .map(|r| {
                [
                    r.measurement.clone(),
                    r.unit.to_owned(),
                    num(r.tunnel),
                    num(r.direct),
                    r.ratio
                        .map_or_else(|| "-".to_owned(), |x| format!("{x:.2}")),
                ]
            })
            .collect();
        let mut width = head.map(str::len);
        for c in &cells {
            for (w, s) in width.iter_mut().zip(c) {
                *w = (*w).max(s.chars().count());
            }
        }
        let line = |c: [&str; 5]| {
            format!(
                "{:<w0$}  {:<w1$}  {:>w2$}  {:>w3$}  {:>w4$}\n",
                c[0],
                c[1],
                c[2],
                c[3],
                c[4],
                w0 = width[0],
                w1 = width[1],
                w2 = width[2],
                w3 = width[3],
                w4 = width[4],
            )
        };
        let mut out = line(head);
        for c in &cells {
            out += &line([&c[0], &c[1], &c[2], &c[3], &c[4]]);
        }
        if let Some(why) = &self.udp_skipped {
            out += &format!("UDP: skipped ({why})\n");
        }
        for (side, results) in [
            ("tunnel", Some(&self.tunnel)),
            ("direct", self.direct.as_ref()),
        ] {
            for (what, n, first) in results.map(Results::failures).unwrap_or_default() {
                out += &format!(
                    "failures, {side} {what}: {n} (first: {})\n",
                    first.unwrap_or("?")
                );
            }
        }
        out
    }

    /// The report as one JSON object.
    pub fn json(&self) -> String {
        serde_json::to_string_pretty(self).expect("the report serialises")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= b.abs() * 0.01
    }

    #[test]
    fn percentiles_from_the_histogram() {
        let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).unwrap();
        // 1 µs .. 1000 µs, one sample each.
        for us in 1..=1000u64 {
            h.record(us * 1000).unwrap();
        }
        let l = Latency::from_histogram(&h, 2.0, 3, Some("boom".into()));
        assert_eq!(l.count, 1000);
        assert!(close(l.p50_us, 500.0), "{l:?}");
        assert!(close(l.p99_us, 990.0), "{l:?}");
        assert!(close(l.p999_us, 999.0), "{l:?}");
        assert!(close(l.max_us, 1000.0), "{l:?}");
        assert!(close(l.mean_us, 500.5), "{l:?}");
        assert_eq!((l.failed, l.first_error.as_deref()), (3, Some("boom")));

        // A tail: 990 fast round trips and 10 slow ones show at p99.9, not at p50 or p99.
        let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).unwrap();
        h.record_n(20_000, 990).unwrap();
        h.record_n(5_000_000, 10).unwrap();
        let l = Latency::from_histogram(&h, 1.0, 0, None);
        assert!(close(l.p50_us, 20.0) && close(l.p99_us, 20.0), "{l:?}");
        assert!(close(l.p999_us, 5000.0), "{l:?}");

        let l = Latency::from_histogram(&Histogram::<u64>::new(3).unwrap(), 1.0, 0, None);
        assert_eq!(
            (l.count, l.p50_us, l.p999_us, l.mean_us),
            (0, 0.0, 0.0, 0.0)
        );
    }

    fn results(mib: f64, p50: f64, udp: bool) -> Results {
        let t = |streams| Throughput {
            streams,
            bytes: 1,
            secs: 1.0,
            mib_per_s: mib,
            ..Throughput::default()
        };
        Results {
            upload_1: t(1),
            upload_n: t(8),
            download_1: t(1),
            download_n: t(8),
            latency: Latency {
                count: 10,
                p50_us: p50,
                p99_us: p50 * 2.0,
                p999_us: p50 * 3.0,
                ..Latency::default()
            },
            connections: Connections {
                clients: 8,
                count: 10,
                per_s: 1000.0,
                ..Connections::default()
            },
            udp: udp.then(|| Udp {
                received: 5,
                per_s: 5000.0,
                ..Udp::default()
            }),
        }
    }

    #[test]
    fn rows_and_table() {
        let tunnel = results(100.0, 50.0, true);
        let mut direct = results(400.0, 25.0, true);
        direct.connections.failed = 2;
        direct.connections.first_error = Some("refused".into());
        let rows = rows(&tunnel, Some(&direct));
        let keys: Vec<_> = rows.iter().map(|r| r.key).collect();
        assert_eq!(
            keys,
            [
                "upload_1",
                "upload_n",
                "download_1",
                "download_n",
                "latency_p50",
                "latency_p99",
                "latency_p999",
                "connections",
                "udp",
                "udp_loss"
            ]
        );
        assert_eq!(rows[0].ratio, Some(0.25));
        assert_eq!(rows[4].ratio, Some(2.0));
        assert_eq!(rows[1].measurement, "upload, 8 streams");
        // Loss 0 on both sides: no ratio.
        assert_eq!(rows[9].ratio, None);
        let report = Report {
            mode: "loopback",
            endpoints: Endpoints {
                tunnel_tcp: "127.0.0.1:1".into(),
                tunnel_udp: None,
                direct_tcp: None,
                direct_udp: None,
            },
            duration_secs: 1.0,
            streams: 8,
            clients: 8,
            timeout_secs: 10.0,
            udp_skipped: None,
            rows,
            tunnel,
            direct: Some(direct),
        };
        let table = report.table();
        let mut lines = table.lines();
        let head = lines.next().unwrap();
        assert!(
            head.starts_with("measurement") && head.ends_with("ratio"),
            "{table}"
        );
        let first = lines.next().unwrap();
        assert!(
            first.starts_with("upload, 1 stream") && first.ends_with("0.25"),
            "{table}"
        );
        assert!(
            table.contains("failures, direct connections: 2 (first: refused)"),
            "{table}"
        );
        let v: serde_json::Value = serde_json::from_str(&report.json()).unwrap();
        assert_eq!(v["rows"].as_array().unwrap().len(), 10);
        assert_eq!(v["direct"]["upload_1"]["mib_per_s"], 400.0);

        // No baseline, no UDP: dashes, and the UDP rows are gone.
        let rows = super::rows(&results(1.0, 1.0, false), None);
        assert_eq!(rows.len(), 8);
        assert!(rows.iter().all(|r| r.direct.is_none() && r.ratio.is_none()));
        assert_eq!(num(None), "-");
        assert_eq!(num(Some(1234.56)), "1235");
        assert_eq!(num(Some(12.345)), "12.3");
        assert_eq!(num(Some(0.123)), "0.12");
    }

    #[test]
    fn empty_measurements_are_named() {
        let mut r = results(1.0, 1.0, true);
        assert!(r.empty().is_empty());
        r.download_n.bytes = 0;
        r.udp.as_mut().unwrap().received = 0;
        assert_eq!(r.empty(), ["download, N streams", "UDP"]);
    }
}
