//! The bridge under crashes and outages: nothing lost, nothing duplicated, memory bounded.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::{Bridge, assert_per_key_order, events, numbered, route, wait_for_count};
use fractal::Hub;
use fractal_testkit::{NatsServer, eventually, simulate};
use rand::Rng as _;

/// Publishes `total` events over `keys` keys into `hub` in chunks, so that they flow while the
/// test breaks things.
fn publish_in_background(hub: &Hub, total: usize, keys: usize) -> tokio::task::JoinHandle<()> {
    let hub = hub.clone();
    tokio::spawn(async move {
        for start in (0..total).step_by(500) {
            let events: Vec<_> = (start..(start + 500).min(total))
                .map(|n| numbered("order.placed", &format!("key-{}", n % keys), n))
                .collect();
            simulate(&hub, events).await;
            tokio::time::sleep(Duration::from_millis(40)).await;
        }
    })
}

/// Waits until the route has nothing left to relay, so that whatever was still to be
/// redelivered has had its chance to show up as a duplicate.
async fn caught_up(bridge: &Bridge) {
    eventually(Duration::from_secs(30), "the route caught up", || async {
        let pending = bridge
            .metric(r#"fractal_bridge_source_pending_messages{bridge="ab""#)
            .await?;
        (pending == 0.0).then_some(())
    })
    .await;
}

fn assert_exactly_once(events: &[fractal::Event], total: usize) {
    let ids: HashSet<&str> = events.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(events.len(), total, "stored events");
    assert_eq!(ids.len(), total, "distinct ids");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_bridge_repeatedly_loses_and_duplicates_nothing() {
    const TOTAL: usize = 20_000;
    let (a, b) = (NatsServer::start(), NatsServer::start());
    let (hub_a, hub_b) = (a.hub("a").await, b.hub("b").await);
    let mut bridge = Bridge::start(
        "ab",
        ("a", &a),
        ("b", &b),
        &route("orders", &["order.placed"]),
    );
    let publishing = publish_in_background(&hub_a, TOTAL, 100);

    let started = |bridge: &Bridge, times: usize| {
        let log = bridge.log();
        async move { (log.matches("Bridge started.").count() >= times).then_some(()) }
    };
    let mut kills = 0;
    while kills < 6 {
        // Each kill lands in a running relay, at a random point of it.
        eventually(Duration::from_secs(20), "the bridge started", || {
            started(&bridge, kills + 1)
        })
        .await;
        let pause = rand::rng().random_range(150..600);
        tokio::time::sleep(Duration::from_millis(pause)).await;
        bridge.kill();
        kills += 1;
        bridge.restart();
    }
    publishing.await.unwrap();
    wait_for_count(&hub_b, TOTAL as u64, Duration::from_secs(120)).await;
    caught_up(&bridge).await;
    let relayed = events(&hub_b).await;
    assert_exactly_once(&relayed, TOTAL);
    assert_per_key_order(&relayed);
    eventually(Duration::from_secs(20), "restarted after each kill", || {
        started(&bridge, 7)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_outage_loses_and_duplicates_nothing_with_bounded_memory() {
    const TOTAL: usize = 10_000;
    let (a, mut b) = (NatsServer::start(), NatsServer::start());
    let (hub_a, hub_b) = (a.hub("a").await, b.hub("b").await);
    let bridge = Bridge::start(
        "ab",
        ("a", &a),
        ("b", &b),
        &route("orders", &["order.placed"]),
    );
    let publishing = publish_in_background(&hub_a, TOTAL, 50);

    wait_for_count(&hub_b, 1_000, Duration::from_secs(30)).await;
    b.kill();
    tokio::time::sleep(Duration::from_secs(3)).await;
    b.restart();
    publishing.await.unwrap();
    let hub_b = Hub::connect(&b.hub_config("b")).await.unwrap();
    wait_for_count(&hub_b, TOTAL as u64, Duration::from_secs(120)).await;
    caught_up(&bridge).await;
    assert_exactly_once(&events(&hub_b).await, TOTAL);
    let peak = bridge.peak_rss_kib();
    println!("bridge peak RSS across the outage: {} KiB", peak);
    assert!(
        peak < 128 * 1024,
        "peak RSS {peak} KiB: in-flight relays are not bounded"
    );
    drop(hub_b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replays_are_dropped_within_the_targets_duplicate_window_only() {
    let (a, b) = (NatsServer::start(), NatsServer::start());
    let hub_a = a.hub("a").await;
    let mut target = b.hub_config("b");
    target.events.duplicate_window_secs = 3;
    let hub_b = Hub::connect(&target).await.unwrap();
    hub_b.provision().await.unwrap();
    let orders = route("orders", &["order.placed"]);
    // Every client of hub b says what its owner provisioned.
    let mut bridge = Bridge::start_with_env(
        "ab",
        ("a", &a),
        ("b", &b),
        &orders,
        &[("BRIDGE_TARGET__EVENTS__DUPLICATE_WINDOW_SECS", "3")],
    );
    simulate(&hub_a, (0..100).map(|n| numbered("order.placed", "k", n))).await;
    wait_for_count(&hub_b, 100, Duration::from_secs(20)).await;

    // Replay everything at once, as a bridge that crashed before acknowledging would: within
    // the window, the target drops every copy.
    let forget = || async {
        hub_a
            .jetstream()
            .get_stream("EVENTS")
            .await
            .unwrap()
            .delete_consumer("bridge-ab-orders")
            .await
            .unwrap();
    };
    assert!(bridge.terminate().success(), "graceful shutdown");
    forget().await;
    bridge.restart();
    eventually(
        Duration::from_secs(20),
        "100 duplicates dropped",
        || async {
            let duplicates = bridge
                .metric(r#"fractal_bridge_duplicates_total{bridge="ab""#)
                .await?;
            (duplicates == 100.0).then_some(())
        },
    )
    .await;
    assert_eq!(events(&hub_b).await.len(), 100);

    // Past the window the target no longer knows the ids: a replay stores them again.
    assert!(bridge.terminate().success());
    tokio::time::sleep(Duration::from_secs(4)).await;
    forget().await;
    bridge.restart();
    wait_for_count(&hub_b, 200, Duration::from_secs(20)).await;
}
