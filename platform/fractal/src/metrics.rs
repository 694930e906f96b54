//! The process's Prometheus metrics. Every metric lives in one registry, served at `/metrics`
//! by the [admin endpoint](crate::admin). Names follow `fractal_<what>_<unit>[_total]`.

use std::sync::{LazyLock, Mutex};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Metric, Registry};

static REGISTRY: LazyLock<Mutex<Registry>> = LazyLock::new(|| Mutex::new(Registry::default()));

/// Adds a metric to the process's registry. `name` excludes the `_total` suffix of counters,
/// which the encoder adds.
pub fn register(name: &str, help: &str, metric: impl Metric) {
    let mut registry = REGISTRY.lock().unwrap_or_else(|e| e.into_inner());
    registry.register(name, help, metric);
}

/// The registry in Prometheus text format.
pub fn encode() -> String {
    // Make sure the platform's own metrics are registered even before first use.
    LazyLock::force(&PLATFORM);
    let registry = REGISTRY.lock().unwrap_or_else(|e| e.into_inner());
    let mut text = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut text, &registry);
    text
}

/// Labels of per-type event metrics.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct TypeLabels {
    pub(crate) service: String,
    pub(crate) event_type: String,
}

/// Labels of fault metrics.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct FaultLabels {
    pub(crate) service: String,
    pub(crate) event_type: String,
    pub(crate) kind: String,
}

/// Labels of consumer metrics.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ConsumerLabels {
    pub(crate) stream: String,
    pub(crate) consumer: String,
}

fn latency_histogram() -> Histogram {
    // 100 µs to about 26 s.
    Histogram::new(exponential_buckets(0.0001, 2.0, 19))
}

/// The platform's own metrics.
#[derive(Debug)]
pub(crate) struct Platform {
    pub(crate) published: Family<TypeLabels, Counter>,
    pub(crate) handled: Family<TypeLabels, Counter>,
    pub(crate) failed: Family<TypeLabels, Counter>,
    pub(crate) faulted: Family<FaultLabels, Counter>,
    pub(crate) handler_seconds: Family<TypeLabels, Histogram, fn() -> Histogram>,
    pub(crate) pending: Family<ConsumerLabels, Gauge>,
}

pub(crate) static PLATFORM: LazyLock<Platform> = LazyLock::new(|| {
    let platform = Platform {
        published: Family::default(),
        handled: Family::default(),
        failed: Family::default(),
        faulted: Family::default(),
        handler_seconds: Family::new_with_constructor(latency_histogram),
        pending: Family::default(),
    };
    register(
        "fractal_events_published",
        "Events published and acknowledged by the hub.",
        platform.published.clone(),
    );
    register(
        "fractal_events_handled",
        "Events a handler processed successfully.",
        platform.handled.clone(),
    );
    register(
        "fractal_events_failed",
        "Handler attempts that failed and will be retried.",
        platform.failed.clone(),
    );
    register(
        "fractal_events_faulted",
        "Events moved to the fault stream, by kind.",
        platform.faulted.clone(),
    );
    register(
        "fractal_handler_duration_seconds",
        "Time a handler took per attempt.",
        platform.handler_seconds.clone(),
    );
    register(
        "fractal_consumer_pending_messages",
        "Messages in the stream not yet delivered to the consumer (its lag).",
        platform.pending.clone(),
    );
    platform
});
