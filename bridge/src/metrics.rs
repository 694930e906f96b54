//! Per-route metrics, served with the platform's at `/metrics`.

use std::sync::LazyLock;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    bridge: String,
    route: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RejectLabels {
    bridge: String,
    route: String,
    reason: String,
}

struct Families {
    relayed: Family<RouteLabels, Counter>,
    rejected: Family<RejectLabels, Counter>,
    duplicates: Family<RouteLabels, Counter>,
    skipped: Family<RouteLabels, Counter>,
    pending: Family<RouteLabels, Gauge>,
    last_relay: Family<RouteLabels, Gauge>,
    stalled: Family<RouteLabels, Gauge>,
    oldest_waiting: Family<RouteLabels, Gauge>,
}

static FAMILIES: LazyLock<Families> = LazyLock::new(|| {
    let families = Families {
        relayed: Family::default(),
        rejected: Family::default(),
        duplicates: Family::default(),
        skipped: Family::default(),
        pending: Family::default(),
        last_relay: Family::default(),
        stalled: Family::default(),
        oldest_waiting: Family::default(),
    };
    use fractal::metrics::register;
    register(
        "fractal_bridge_relayed",
        "Events relayed and acknowledged by the target hub.",
        families.relayed.clone(),
    );
    register(
        "fractal_bridge_rejected",
        "Events not relayed because they broke their contract (reason `contract`), were malformed (`malformed`) or would be over the target's max_payload (`too_large`); each is a fault on the source hub.",
        families.rejected.clone(),
    );
    register(
        "fractal_bridge_duplicates",
        "Relays the target hub recognised as duplicates (already relayed before a restart).",
        families.duplicates.clone(),
    );
    register(
        "fractal_bridge_skipped",
        "Events not relayed because they had already passed through the target hub.",
        families.skipped.clone(),
    );
    register(
        "fractal_bridge_source_pending_messages",
        "Selected events on the source hub not yet delivered to the route (its lag).",
        families.pending.clone(),
    );
    register(
        "fractal_bridge_last_relay_timestamp_seconds",
        "Unix time of the route's last relay (its start until the first one).",
        families.last_relay.clone(),
    );
    register(
        "fractal_bridge_stalled",
        "1 when the route has events waiting and has relayed nothing for stall_after_secs.",
        families.stalled.clone(),
    );
    register(
        "fractal_bridge_oldest_waiting_seconds",
        "Age of the oldest selected event on the source hub not yet relayed (0 when none waits).",
        families.oldest_waiting.clone(),
    );
    families
});

/// The metrics of one route.
#[derive(Debug, Clone)]
pub(crate) struct RouteMetrics {
    labels: RouteLabels,
    pub(crate) relayed: Counter,
    pub(crate) duplicates: Counter,
    pub(crate) skipped: Counter,
    pub(crate) pending: Gauge,
    pub(crate) last_relay: Gauge,
    pub(crate) stalled: Gauge,
    pub(crate) oldest_waiting: Gauge,
}

impl RouteMetrics {
    pub(crate) fn new(bridge: &str, route: &str) -> Self {
        let labels = RouteLabels {
            bridge: bridge.to_owned(),
            route: route.to_owned(),
        };
        let f = &*FAMILIES;
        RouteMetrics {
            relayed: f.relayed.get_or_create(&labels).clone(),
            duplicates: f.duplicates.get_or_create(&labels).clone(),
            skipped: f.skipped.get_or_create(&labels).clone(),
            pending: f.pending.get_or_create(&labels).clone(),
            last_relay: f.last_relay.get_or_create(&labels).clone(),
            stalled: f.stalled.get_or_create(&labels).clone(),
            oldest_waiting: f.oldest_waiting.get_or_create(&labels).clone(),
            labels,
        }
    }

    pub(crate) fn rejected(&self, reason: &str) {
        FAMILIES
            .rejected
            .get_or_create(&RejectLabels {
                bridge: self.labels.bridge.clone(),
                route: self.labels.route.clone(),
                reason: reason.to_owned(),
            })
            .inc();
    }
}
