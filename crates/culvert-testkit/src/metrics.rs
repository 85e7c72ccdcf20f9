//! Reading a value out of a Prometheus text exposition, as the admin endpoints and the
//! handles' `metrics()` render it, so tests can check what a process counted.

/// The value of the first sample line starting with `prefix` (a metric name, optionally
/// with labels) in a Prometheus text body, truncated to an integer.
pub fn metric(body: &str, prefix: &str) -> Option<u64> {
    body.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .map(|v| v as u64)
}
