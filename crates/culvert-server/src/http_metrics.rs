//! Per-service metrics of the HTTP ingress: requests by status class, a request-duration
//! histogram and bytes each way, for `/metrics`.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use culvert_transport::metrics::family;
use hyper::body::{Body, Frame, SizeHint};
use hyper::StatusCode;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::{MetricType, TypedMetric};

/// Upper bounds of the duration buckets, in seconds; the last catches everything slower.
const BUCKETS: [f64; 12] = [
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    f64::INFINITY,
];

/// Services tracked at most; requests for more are counted under `other` (names come from
/// request paths, so the table must not grow with what callers make up).
const MAX_SERVICES: usize = 1024;

/// One service's counters.
#[derive(Debug, Default)]
pub(crate) struct ServiceHttp {
    /// By status class: 1xx … 5xx.
    classes: [AtomicU64; 5],
    /// Observations per bucket of [`BUCKETS`] (not cumulative; the count is their sum).
    buckets: [AtomicU64; BUCKETS.len()],
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
        let i = BUCKETS
            .iter()
            .position(|le| secs <= *le)
            .unwrap_or(BUCKETS.len() - 1);
        s.buckets[i].fetch_add(1, Ordering::Relaxed);
        s.sum_micros
            .fetch_add(took.as_micros() as u64, Ordering::Relaxed);
    }

    /// Writes the families of every service seen (at a scrape).
    pub(crate) fn encode(&self, enc: &mut DescriptorEncoder) -> std::fmt::Result {
        let m = self.services.lock().unwrap_or_else(|p| p.into_inner());
        if m.is_empty() {
            // No ingress, or nothing served yet: no families (an empty histogram family
            // has no `_count` to show).
            return Ok(());
        }
        let mut names: Vec<&String> = m.keys().collect();
        names.sort();
        let mut requests = Vec::new();
        let mut durations = Vec::new();
        let mut bytes = Vec::new();
        for n in names {
            let s = &m[n];
            for (i, c) in s.classes.iter().enumerate() {
                let labels = [("service", n.clone()), ("class", format!("{}xx", i + 1))];
                requests.push((labels, ConstCounter::new(c.load(Ordering::Relaxed))));
            }
            let buckets: Vec<(f64, u64)> = BUCKETS
                .iter()
                .zip(&s.buckets)
                .map(|(le, c)| (*le, c.load(Ordering::Relaxed)))
                .collect();
            let h = Durations {
                count: buckets.iter().map(|(_, c)| c).sum(),
                sum: s.sum_micros.load(Ordering::Relaxed) as f64 / 1e6,
                buckets,
            };
            durations.push(([("service", n.clone())], h));
            for (dir, c) in [("up", &s.bytes_up), ("down", &s.bytes_down)] {
                let labels = [("service", n.clone()), ("direction", dir.to_owned())];
                bytes.push((labels, ConstCounter::new(c.load(Ordering::Relaxed))));
            }
        }
        drop(m);
        family(
            enc,
            "culvert_http_requests",
            "HTTP ingress requests answered, by service and status class.",
            requests,
        )?;
        family(
            enc,
            "culvert_http_request_duration_seconds",
            "Time from a request's head to its answer's head, by service.",
            durations,
        )?;
        family(
            enc,
            "culvert_http_bytes",
            "HTTP ingress body bytes, by service: up is caller to service, down the answers.",
            bytes,
        )
    }
}

/// One service's duration histogram, as read at a scrape.
struct Durations {
    buckets: Vec<(f64, u64)>,
    sum: f64,
    count: u64,
}

impl EncodeMetric for Durations {
    fn encode(&self, mut encoder: MetricEncoder) -> std::fmt::Result {
        encoder.encode_histogram::<NoLabelSet>(self.sum, self.count, &self.buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

impl TypedMetric for Durations {
    const TYPE: MetricType = MetricType::Histogram;
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
        let m = Arc::new(IngressMetrics::default());
        m.observe("acme/erp", StatusCode::OK, Duration::from_millis(20));
        m.observe(
            "acme/erp",
            StatusCode::SERVICE_UNAVAILABLE,
            Duration::from_millis(1),
        );
        #[derive(Debug)]
        struct C(Arc<IngressMetrics>);
        impl prometheus_client::collector::Collector for C {
            fn encode(&self, mut enc: DescriptorEncoder) -> std::fmt::Result {
                self.0.encode(&mut enc)
            }
        }
        let m2 = m.clone();
        let out =
            culvert_transport::metrics::text_of(move |r| r.register_collector(Box::new(C(m2))));
        assert!(
            out.contains("culvert_http_requests_total{service=\"acme/erp\",class=\"2xx\"} 1"),
            "{out}"
        );
        assert!(out.contains("culvert_http_requests_total{service=\"acme/erp\",class=\"5xx\"} 1"));
        assert!(
            out.contains(
                "culvert_http_request_duration_seconds_bucket{le=\"0.025\",service=\"acme/erp\"} 2"
            ) || out.contains(
                "culvert_http_request_duration_seconds_bucket{service=\"acme/erp\",le=\"0.025\"} 2"
            ),
            "{out}"
        );
        assert!(out.contains("culvert_http_request_duration_seconds_count{service=\"acme/erp\"} 2"));
        for i in 0..MAX_SERVICES + 10 {
            m.service(&format!("t/s{i}"));
        }
        assert!(m.services.lock().unwrap().len() <= MAX_SERVICES + 1);
    }
}
