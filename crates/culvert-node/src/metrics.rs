//! Prometheus metrics for per-tunnel and per-session figures: a table of families, each a
//! function of an item's status, and a collector that reads the items' status at each
//! scrape and writes one sample per item that has a value.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;

/// A sample's value: counts stay integers in the text.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Value {
    /// A count.
    Int(u64),
    /// A measurement (seconds).
    Float(f64),
}

/// One metric family: name (a counter's without `_total`, which the encoder appends),
/// type, help, and the item's value (`None`: no sample).
pub(crate) type Family<T> = (
    &'static str,
    MetricType,
    &'static str,
    fn(&T) -> Option<Value>,
);

/// Reads the items' status at each scrape and writes `families` over them, labelling
/// each sample with `labels(item)`.
pub(crate) struct StatusCollector<T: 'static> {
    /// The items' status now.
    pub(crate) status: Box<dyn Fn() -> Vec<T> + Send + Sync>,
    /// An item's labels.
    pub(crate) labels: fn(&T) -> Vec<(&'static str, String)>,
    /// What is written of each item.
    pub(crate) families: &'static [Family<T>],
}

impl<T: 'static> std::fmt::Debug for StatusCollector<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StatusCollector")
            .field("families", &self.families.len())
            .finish_non_exhaustive()
    }
}

impl<T: 'static> Collector for StatusCollector<T> {
    fn encode(&self, mut enc: DescriptorEncoder) -> std::fmt::Result {
        let items = (self.status)();
        for (name, kind, help, value) in self.families {
            let mut family = enc.encode_descriptor(name, help, None, *kind)?;
            for item in &items {
                let Some(v) = value(item) else { continue };
                let labels = (self.labels)(item);
                let sample = family.encode_family(&labels)?;
                match (kind, v) {
                    (MetricType::Counter, Value::Int(n)) => ConstCounter::new(n).encode(sample),
                    (MetricType::Counter, Value::Float(x)) => ConstCounter::new(x).encode(sample),
                    (_, Value::Int(n)) => ConstGauge::new(n).encode(sample),
                    (_, Value::Float(x)) => ConstGauge::new(x).encode(sample),
                }?;
            }
        }
        Ok(())
    }
}
