//! Replay against the consumer runtime, on the same events of one local hub: how fast a
//! consumer handles the lake from `all`, then how fast `fractal replay` delivers the same
//! events to it again (read, copied into the lake marked for it, handled), and the ratio.
//!
//! `cargo bench -p fractal-cli --bench replay [-- EVENTS KEYS]` (defaults: 100,000 events over
//! 1,000 keys, 200-byte payloads).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use fractal::proto::Header;
use fractal::{Consumer, ConsumerConfig, NewEvent, Publisher};
use fractal_testkit::NatsServer;
use tokio_util::sync::CancellationToken;

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
            value: "x".repeat(200),
        };
        let publisher = Publisher::new(&hub, "bench/loader");
        for chunk in (0..events).collect::<Vec<_>>().chunks(1_000) {
            publisher
                .publish_all(
                    chunk
                        .iter()
                        .map(|n| NewEvent::new("item.added", format!("k-{}", n % keys), &payload)),
                )
                .await
                .unwrap();
        }

        let (first, replayed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let consumer =
            Consumer::new(&hub, "ledger", ConsumerConfig::default()).on_any("item.added", {
                let (first, replayed) = (first.clone(), replayed.clone());
                move |event| {
                    let counter = if event.replay.is_some() {
                        &replayed
                    } else {
                        &first
                    };
                    counter.fetch_add(1, Ordering::Relaxed);
                    async { Ok(()) }
                }
            });
        let token = CancellationToken::new();
        let started = Instant::now();
        let run = tokio::spawn(consumer.run(token.clone()));
        while first.load(Ordering::Relaxed) < events {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let runtime_took = started.elapsed();

        let dir = tempfile::tempdir().unwrap();
        let topology = dir.path().join("fractal.toml");
        std::fs::write(
            &topology,
            format!("name = \"bench\"\n[hubs.bench]\nport = {}\n", server.port()),
        )
        .unwrap();
        let started = Instant::now();
        let replay = tokio::task::spawn_blocking({
            let topology = topology.clone();
            let state = dir.path().join("state");
            move || {
                Command::new(env!("CARGO_BIN_EXE_fractal"))
                    .args(["replay", "bench", "--to", "ledger", "--topology"])
                    .arg(&topology)
                    .arg("--state")
                    .arg(&state)
                    .output()
                    .unwrap()
            }
        });
        while replayed.load(Ordering::Relaxed) < events {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let replay_took = started.elapsed();
        let output = replay.await.unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        token.cancel();
        run.await.unwrap().unwrap();

        let rate = |took: Duration| events as f64 / took.as_secs_f64();
        println!("{events} events over {keys} keys, one local hub");
        println!(
            "consumer runtime, from `all`:  {:>7.2} s  {:>9.0} events/s",
            runtime_took.as_secs_f64(),
            rate(runtime_took)
        );
        println!(
            "fractal replay to it, handled: {:>7.2} s  {:>9.0} events/s",
            replay_took.as_secs_f64(),
            rate(replay_took)
        );
        println!(
            "replay / runtime throughput:   {:>7.2}",
            rate(replay_took) / rate(runtime_took)
        );
    });
}
