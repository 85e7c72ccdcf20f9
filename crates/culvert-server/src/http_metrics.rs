//! Per-service metrics of the HTTP ingress: requests by status class, a request-duration
//! histogram and bytes each way, for `/metrics`.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::body::{Body, Frame, SizeHint};
use hyper::StatusCode;

/// Upper bounds of the duration buckets, in seconds.
const BUCKETS: [f64; 11] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Services tracked at most; requests for more are counted under `other` (names come from
/// request paths, so the table must not grow with what callers make up).
const MAX_SERVICES: usize = 1024;

/// One service's counters.
#[derive(Debug, Default)]
pub(crate) struct ServiceHttp {
    /// By status class: 1xx … 5xx.
    classes: [AtomicU64; 5],
    /// Cumulative counts per bucket of [`BUCKETS`], then the count of all.
    buckets: [AtomicU64; BUCKETS.len() + 1],
    sum_micros: AtomicU64,
    bytes_up: AtomicU64,
    bytes_down: AtomicU64,
}

/// The ingress's metrics, by `TENANT/SERVICE`.
#[derive(Debug, Default)]
pub struct IngressMetrics {
    services: Mutex<HashMap<String, Arc<ServiceHttp>>>,
}

impl IngressMetrics {
    /// The counters of `name` (created on first use, up to [`MAX_SERVICES`]).
    pub(crate) fn service(&self, name: &str) -> Arc<ServiceHttp> {
        let mut m = self.services.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = m.get(name) {
            return s.clone();
        }
        let key = if m.len() < MAX_SERVICES {
            name
        } else {
            "other"
        };
        m.entry(key.to_owned()).or_default().clone()
    }

    /// Records one answered request.
    pub(crate) fn observe(&self, name: &str, status: StatusCode, took: Duration) {
        let s = self.service(name);
        let class = usize::from(status.as_u16() / 100).clamp(1, 5) - 1;
        s.classes[class].fetch_add(1, Ordering::Relaxed);
        let secs = took.as_secs_f64();
        for (i, b) in BUCKETS.iter().enumerate() {
            if secs <= *b {
                s.buckets[i].fetch_add(1, Ordering::Relaxed);
            }
        }
        s.buckets[BUCKETS.len()].fetch_add(1, Ordering::Relaxed);
        s.sum_micros
            .fetch_add(took.as_micros() as u64, Ordering::Relaxed);
    }

    /// Appends the Prometheus text of every service seen.
    pub(crate) fn render(&self, out: &mut String) {
        use std::fmt::Write;
        let m = self.services.lock().unwrap_or_else(|p| p.into_inner());
        let mut names: Vec<&String> = m.keys().collect();
        names.sort();
        out.push_str("# HELP culvert_http_requests_total HTTP ingress requests answered, by service and status class.\n# TYPE culvert_http_requests_total counter\n");
        for n in &names {
            for (i, c) in m[*n].classes.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "culvert_http_requests_total{{service=\"{n}\",class=\"{}xx\"}} {}",
                    i + 1,
                    c.load(Ordering::Relaxed)
                );
            }
        }
        out.push_str("# HELP culvert_http_request_duration_seconds Time from a request's head to its answer's head, by service.\n# TYPE culvert_http_request_duration_seconds histogram\n");
        for n in &names {
            let s = &m[*n];
            for (i, b) in BUCKETS.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "culvert_http_request_duration_seconds_bucket{{service=\"{n}\",le=\"{b}\"}} {}",
                    s.buckets[i].load(Ordering::Relaxed)
                );
            }
            let all = s.buckets[BUCKETS.len()].load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "culvert_http_request_duration_seconds_bucket{{service=\"{n}\",le=\"+Inf\"}} {all}"
            );
            let _ = writeln!(
                out,
                "culvert_http_request_duration_seconds_sum{{service=\"{n}\"}} {}",
                s.sum_micros.load(Ordering::Relaxed) as f64 / 1e6
            );
            let _ = writeln!(
                out,
                "culvert_http_request_duration_seconds_count{{service=\"{n}\"}} {all}"
            );
        }
        out.push_str("# HELP culvert_http_bytes_total HTTP ingress body bytes, by service: up is caller to service, down the answers.\n# TYPE culvert_http_bytes_total counter\n");
        for n in &names {
            let s = &m[*n];
            let _ = writeln!(
                out,
                "culvert_http_bytes_total{{service=\"{n}\",direction=\"up\"}} {}",
                s.bytes_up.load(Ordering::Relaxed)
            );
            let _ = writeln!(
                out,
                "culvert_http_bytes_total{{service=\"{n}\",direction=\"down\"}} {}",
                s.bytes_down.load(Ordering::Relaxed)
            );
        }
    }
}

/// A body passed through unchanged, its data bytes added to a service's counter.
pub(crate) struct Counted<B> {
    inner: B,
    service: Arc<ServiceHttp>,
    up: bool,
}

impl<B> Counted<B> {
    /// Counts a request body (caller to service).
    pub(crate) fn up(inner: B, service: Arc<ServiceHttp>) -> Counted<B> {
        Counted {
            inner,
            service,
            up: true,
        }
    }

    /// Counts a response body (service to caller).
    pub(crate) fn down(inner: B, service: Arc<ServiceHttp>) -> Counted<B> {
        Counted {
            inner,
            service,
            up: false,
        }
    }
}

impl<B: Body<Data = bytes::Bytes> + Unpin> Body for Counted<B> {
    type Data = bytes::Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        let r = Pin::new(&mut this.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(f))) = &r {
            if let Some(d) = f.data_ref() {
                let c = if this.up {
                    &this.service.bytes_up
                } else {
                    &this.service.bytes_down
                };
                c.fetch_add(d.len() as u64, Ordering::Relaxed);
            }
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_classes_histogram_and_bounds_the_table() {
        let m = IngressMetrics::default();
        m.observe("acme/erp", StatusCode::OK, Duration::from_millis(20));
        m.observe(
            "acme/erp",
            StatusCode::SERVICE_UNAVAILABLE,
            Duration::from_millis(1),
        );
        let mut out = String::new();
        m.render(&mut out);
        assert!(
            out.contains("culvert_http_requests_total{service=\"acme/erp\",class=\"2xx\"} 1"),
            "{out}"
        );
        assert!(out.contains("culvert_http_requests_total{service=\"acme/erp\",class=\"5xx\"} 1"));
        assert!(out.contains(
            "culvert_http_request_duration_seconds_bucket{service=\"acme/erp\",le=\"0.025\"} 2"
        ));
        assert!(out.contains(
            "culvert_http_request_duration_seconds_bucket{service=\"acme/erp\",le=\"0.005\"} 1"
        ));
        assert!(out.contains("culvert_http_request_duration_seconds_count{service=\"acme/erp\"} 2"));
        for i in 0..MAX_SERVICES + 10 {
            m.service(&format!("t/s{i}"));
        }
        assert!(m.services.lock().unwrap().len() <= MAX_SERVICES + 1);
    }
}
