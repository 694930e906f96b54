//! Publishing to hubs of one and three nodes, each with `sync` default and `always`.
//!
//! `cargo bench -p fractal --bench hubs [-- EVENTS SINGLES]`
//!
//! For each hub, prints the throughput of pipelined publishing (the platform publisher's
//! `publish_all`, EVENTS events of 200 bytes) and the acknowledgement latency of one publish at
//! a time (p50 and p99 over SINGLES publishes). Streams and views of the three-node hub have
//! three replicas, as a clustered hub's do.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use fractal::proto::Header;
use fractal::{Hub, NewEvent, Publisher};
use fractal_testkit::{NatsCluster, NatsServer, ServerOptions};

const PAYLOAD_BYTES: usize = 200;

fn event(n: usize) -> NewEvent {
    let payload = Header {
        name: format!("k{}", n % 64),
        value: "x".repeat(PAYLOAD_BYTES - 8),
    };
    NewEvent::new("bench.published", payload.name.clone(), &payload)
}

struct Figures {
    per_sec: f64,
    p50: Duration,
    p99: Duration,
}

async fn measure(hub: &Hub, events: usize, singles: usize) -> Figures {
    let publisher = Publisher::new(hub, "bench/hubs");
    // Warm up: the stream, the connection, the leader.
    publisher
        .publish_all((0..1_000).map(event))
        .await
        .expect("warm-up");
    let started = Instant::now();
    for chunk in (0..events).collect::<Vec<_>>().chunks(10_000) {
        publisher
            .publish_all(chunk.iter().map(|n| event(*n)))
            .await
            .expect("published");
    }
    let per_sec = events as f64 / started.elapsed().as_secs_f64();
    let mut latencies = Vec::with_capacity(singles);
    for n in 0..singles {
        let started = Instant::now();
        publisher.publish(event(n)).await.expect("published");
        latencies.push(started.elapsed());
    }
    latencies.sort();
    Figures {
        per_sec,
        p50: latencies[singles / 2],
        p99: latencies[singles * 99 / 100],
    }
}

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let events = args.first().copied().unwrap_or(50_000);
    let singles = args.get(1).copied().unwrap_or(2_000);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    println!(
        "Publishing {events} events of {PAYLOAD_BYTES} bytes (pipelined), then {singles} one at a time\n"
    );
    println!(
        "{:<8} {:<8} {:>12} {:>12} {:>12}",
        "nodes", "sync", "events/s", "ack p50", "ack p99"
    );
    for nodes in [1, 3] {
        for always in [false, true] {
            let figures = runtime.block_on(async {
                if nodes == 1 {
                    let server = NatsServer::start_with(ServerOptions {
                        sync_always: always,
                        ..Default::default()
                    });
                    let hub = server.hub("bench").await;
                    measure(&hub, events, singles).await
                } else {
                    let cluster = NatsCluster::start_with(nodes, always);
                    let hub = cluster.hub("bench").await;
                    measure(&hub, events, singles).await
                }
            });
            println!(
                "{:<8} {:<8} {:>12.0} {:>12.2?} {:>12.2?}",
                nodes,
                if always { "always" } else { "default" },
                figures.per_sec,
                figures.p50,
                figures.p99
            );
        }
    }
}
