//! Prometheus text for per-tunnel and per-session figures: one family per metric, one
//! sample per item that has a value.

use culvert_transport::prom::family;

/// One metric family: name, type, help, and the item's value (`None`: no sample).
pub(crate) type Family<T> = (
    &'static str,
    &'static str,
    &'static str,
    fn(&T) -> Option<f64>,
);

/// Renders `families` over `items`, labelling each sample with `labels(item)`.
pub(crate) fn render<T>(
    items: &[T],
    labels: impl Fn(&T) -> String,
    families: &[Family<T>],
) -> String {
    let mut out = String::new();
    for (name, kind, help, value) in families {
        let samples: Vec<(String, f64)> = items
            .iter()
            .filter_map(|t| value(t).map(|v| (labels(t), v)))
            .collect();
        family(&mut out, name, kind, help, &samples);
    }
    out
}
