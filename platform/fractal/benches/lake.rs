//! Reading the lake: how long a new consumer takes to catch up from the whole lake (`all`)
//! against one that starts from the newest event of each key (`latest-per-key`), on the same
//! events of one local hub.
//!
//! `cargo bench -p fractal --bench lake [-- EVENTS KEYS]` (defaults: 100,000 events over
//! 1,000 keys, 200-byte payloads). Prints the time to the last event handled and each
//! consumer's events handled.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use fractal::proto::Header;
use fractal::{Consumer, ConsumerConfig, Hub, NewEvent, Publisher};
use fractal_testkit::NatsServer;
use tokio_util::sync::CancellationToken;

/// Runs a consumer named `name` starting at `start` until it has handled `expected` events;
/// returns how long that took.
async fn catch_up(hub: &Hub, name: &str, start: &str, expected: usize) -> Duration {
    let handled = Arc::new(AtomicUsize::new(0));
    let config = ConsumerConfig {
        start: start.parse().unwrap(),
        ..Default::default()
    };
    let consumer = Consumer::new(hub, name, config).on_any("item.added", {
        let handled = handled.clone();
        move |_| {
            handled.fetch_add(1, Ordering::Relaxed);
            async { Ok(()) }
        }
    });
    let token = CancellationToken::new();
    let started = Instant::now();
    let run = tokio::spawn(consumer.run(token.clone()));
    while handled.load(Ordering::Relaxed) < expected {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let took = started.elapsed();
    token.cancel();
    run.await.unwrap().unwrap();
    assert_eq!(handled.load(Ordering::Relaxed), expected, "{name}");
    took
}

fn main() {
    let mut args = std::env::args().skip(1).filter(|a| !a.starts_with("--"));
    let events: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(100_000);
    let keys: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(1_000);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let server = NatsServer::start();
        let hub = server.hub("bench").await;
        let payload = Header {
            name: "bench".into(),
            value: "x".repeat(192),
        };
        let publisher = Publisher::new(&hub, "bench/lake");
        let started = Instant::now();
        publisher
            .publish_all(
                (0..events)
                    .map(|i| NewEvent::new("item.added", format!("key-{}", i % keys), &payload)),
            )
            .await
            .unwrap();
        println!(
            "{events} events over {keys} keys stored in {:.2} s",
            started.elapsed().as_secs_f64()
        );
        let all = catch_up(&hub, "from-all", "all", events).await;
        let latest = catch_up(&hub, "from-latest", "latest-per-key", keys).await;
        println!();
        println!("| start | events handled | time to catch up | events/s read |");
        println!("| --- | --- | --- | --- |");
        println!(
            "| all | {events} | {:.2} s | {:.0} |",
            all.as_secs_f64(),
            events as f64 / all.as_secs_f64()
        );
        println!(
            "| latest-per-key | {keys} | {:.2} s | {:.0} |",
            latest.as_secs_f64(),
            events as f64 / latest.as_secs_f64()
        );
    });
}
