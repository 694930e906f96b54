//! The bridge against NATS's own relay, side by side on this machine.
//!
//! `cargo bench -p fractal-bridge --bench relay [-- EVENTS [ROUNDS]]`
//!
//! 1. Throughput, ROUNDS times (3 by default): EVENTS external events (200-byte payload) wait
//!    on hub A; the bridge relays them to hub B with contract check and provenance, its route
//!    selecting them by a pattern, then by a list of types. Then the same events, published to
//!    a hub A in JetStream domain `hubA` with a leafnode listener, are sourced by a stream on
//!    hub B (domain `hubB`, a leaf of A) through `$JS.hubA.API`: the server's built-in relay.
//!    Each process's CPU time per event is printed beside its rate.
//! 2. Latency: with a bridge running, events are published to A at about half the bridge's
//!    median peak for five seconds, then at 5,000 and 1,000 a second; each one's latency is the time from
//!    its publish to its arrival on B (same clock). The same events' delivery to a plain
//!    consumer on hub A is timed too: no relay out of A can be faster.
//! 3. Memory: the bridge processes' peak RSS.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use async_nats::jetstream::stream;
use fractal::proto::Header;
use fractal::{Event, Hub, NewEvent, Publisher};
use fractal_testkit::{NatsServer, ServerOptions, free_port};
use futures::StreamExt as _;

fn payload(n: usize) -> Header {
    Header {
        name: format!("{n:08}"),
        value: "x".repeat(190),
    }
}

async fn count(hub: &Hub, stream: &str) -> u64 {
    match hub.jetstream().get_stream(stream).await {
        Ok(mut s) => s.info().await.map(|i| i.state.messages).unwrap_or(0),
        Err(_) => 0,
    }
}

async fn wait_for(hub: &Hub, stream: &str, n: u64) -> Instant {
    loop {
        if count(hub, stream).await >= n {
            return Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn fill(hub: &Hub, event_type: &str, n: usize) {
    let publisher = Publisher::new(hub, "bench/producer");
    for start in (0..n).step_by(10_000) {
        let end = (start + 10_000).min(n);
        publisher
            .publish_all(
                (start..end)
                    .map(|i| NewEvent::external(event_type, format!("k{}", i % 100), &payload(i))),
            )
            .await
            .unwrap();
    }
}

/// CPU time process `pid` has used so far (user and system), in seconds.
fn cpu_secs(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the command name, which is in parentheses: utime is the 12th, stime the 13th.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    ticks / clock_ticks_per_sec()
}

fn clock_ticks_per_sec() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// CPU seconds used by each of `pids` since `since` (as returned by an earlier call).
struct CpuMeter {
    pids: Vec<u32>,
    start: Vec<f64>,
}

impl CpuMeter {
    fn start(pids: Vec<u32>) -> Self {
        let start = pids.iter().map(|&pid| cpu_secs(pid)).collect();
        CpuMeter { pids, start }
    }

    /// Microseconds of CPU per event for each process since the start.
    fn per_event_us(&self, events: usize) -> Vec<f64> {
        self.pids
            .iter()
            .zip(&self.start)
            .map(|(&pid, &start)| (cpu_secs(pid) - start) * 1e6 / events as f64)
            .collect()
    }
}

struct BridgeProcess {
    child: Child,
    _dir: tempfile::TempDir,
}

impl BridgeProcess {
    fn start(a: &NatsServer, b: &NatsServer, types: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bridge.toml");
        let types: Vec<String> = types.iter().map(|t| format!("{t:?}")).collect();
        std::fs::write(
            &path,
            format!(
                "name = \"bench\"\n[source]\nname = \"a\"\nurls = [\"{}\"]\n[target]\nname = \"b\"\nurls = [\"{}\"]\n[admin]\nlisten = \"127.0.0.1:{}\"\n[log]\nlevel = \"warn\"\n[[routes]]\nname = \"events\"\ntypes = [{}]\ncontract = \"fractal.platform.v1.Header\"\n",
                a.url(),
                b.url(),
                free_port(),
                types.join(", ")
            ),
        )
        .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_fractal-bridge"))
            .arg("--config")
            .arg(&path)
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        BridgeProcess { child, _dir: dir }
    }

    fn peak_rss_mib(&self) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let kib: f64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap();
        kib / 1024.0
    }
}

impl Drop for BridgeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The rate of a bridge whose one route selects `types`, the CPU per event of hub A, hub B and
/// the bridge, and what is still running.
async fn bridge_rate(
    n: usize,
    types: &[&str],
) -> (f64, Vec<f64>, NatsServer, NatsServer, BridgeProcess) {
    let (a, b) = (NatsServer::start(), NatsServer::start());
    let (hub_a, hub_b) = (a.hub("a").await, b.hub("b").await);
    fill(&hub_a, "bench.relayed", n).await;
    let started = Instant::now();
    let bridge = BridgeProcess::start(&a, &b, types);
    let cpu = CpuMeter::start(vec![a.pid().unwrap(), b.pid().unwrap(), bridge.child.id()]);
    let done = wait_for(&hub_b, "EVENTS", n as u64).await;
    let rate = n as f64 / (done - started).as_secs_f64();
    (rate, cpu.per_event_us(n), a, b, bridge)
}

/// The rate and the CPU per event of hub A and hub B.
async fn sourcing_rate(n: usize) -> (f64, Vec<f64>) {
    let leaf_port = free_port();
    let a = NatsServer::start_with(ServerOptions {
        domain: Some("hubA".into()),
        extra: format!("leafnodes {{ listen: 127.0.0.1:{leaf_port} }}"),
        ..Default::default()
    });
    let b = NatsServer::start_with(ServerOptions {
        domain: Some("hubB".into()),
        extra: format!(
            "leafnodes {{ remotes: [ {{ url: \"nats-leaf://127.0.0.1:{leaf_port}\" }} ] }}"
        ),
        ..Default::default()
    });
    let (hub_a, hub_b) = (a.hub("a").await, b.hub("b").await);
    fill(&hub_a, "bench.sourced", n).await;
    // Wait for the leafnode link.
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        let remote = async_nats::jetstream::ContextBuilder::new()
            .domain("hubA")
            .timeout(Duration::from_millis(500))
            .build(hub_b.client().clone());
        if remote.get_stream("EVENTS").await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let started = Instant::now();
    let cpu = CpuMeter::start(vec![a.pid().unwrap(), b.pid().unwrap()]);
    hub_b
        .jetstream()
        .create_stream(stream::Config {
            name: "SOURCED".into(),
            sources: Some(vec![stream::Source {
                name: "EVENTS".into(),
                external: Some(stream::External {
                    api_prefix: "$JS.hubA.API".into(),
                    delivery_prefix: None,
                }),
                ..Default::default()
            }]),
            ..Default::default()
        })
        .await
        .unwrap();
    let done = wait_for(&hub_b, "SOURCED", n as u64).await;
    (
        n as f64 / (done - started).as_secs_f64(),
        cpu.per_event_us(n),
    )
}

/// Milliseconds from each event's time to its arrival, as they come from `arrivals`, until
/// `total` arrived or none came for ten seconds.
fn latencies(
    mut arrivals: impl futures::Stream<Item = async_nats::Message> + Send + Unpin + 'static,
    total: usize,
) -> tokio::task::JoinHandle<Vec<f64>> {
    tokio::spawn(async move {
        let mut latencies = Vec::with_capacity(total);
        while latencies.len() < total {
            let Ok(Some(message)) =
                tokio::time::timeout(Duration::from_secs(10), arrivals.next()).await
            else {
                break;
            };
            let arrived = SystemTime::now();
            let event =
                Event::decode(&message.subject, message.headers.as_ref(), message.payload).unwrap();
            latencies.push(
                arrived
                    .duration_since(event.time)
                    .unwrap_or_default()
                    .as_secs_f64()
                    * 1000.0,
            );
        }
        latencies.sort_by(f64::total_cmp);
        latencies
    })
}

/// p50 and p99 of sorted `latencies`.
fn percentiles(latencies: &[f64]) -> (f64, f64) {
    let at = |q: f64| latencies[((latencies.len() as f64 - 1.0) * q) as usize];
    (at(0.5), at(0.99))
}

/// Publishes to A at `rate` for `seconds`. Returns the latencies of the relay (publish on A to
/// arrival on B) and, for the same events, of hub A's own delivery to a JetStream consumer
/// (publish on A to delivery from A's stream), which every relay out of A waits for.
async fn latency(a: &NatsServer, b: &NatsServer, rate: f64, seconds: u64) -> (Vec<f64>, Vec<f64>) {
    use async_nats::jetstream::consumer;
    let hub_a = Hub::connect(&a.hub_config("a")).await.unwrap();
    let hub_b = Hub::connect(&b.hub_config("b")).await.unwrap();
    let total = (rate * seconds as f64) as usize;
    let relayed = hub_b
        .client()
        .subscribe("events.external.bench.latency")
        .await
        .unwrap();
    let relayed = latencies(relayed, total);
    let delivered = hub_a
        .jetstream()
        .get_stream("EVENTS")
        .await
        .unwrap()
        .create_consumer(consumer::pull::Config {
            filter_subject: "events.external.bench.latency".into(),
            deliver_policy: consumer::DeliverPolicy::New,
            ack_policy: consumer::AckPolicy::None,
            ..Default::default()
        })
        .await
        .unwrap()
        .stream()
        .max_messages_per_batch(512)
        .messages()
        .await
        .unwrap()
        .filter_map(|m| async move { m.ok().map(|m| m.message) });
    let delivered = latencies(Box::pin(delivered), total);
    let publisher = Publisher::new(&hub_a, "bench/producer");
    // Publish every millisecond the events due by then.
    let started = Instant::now();
    let mut sent = 0usize;
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    while sent < total {
        tick.tick().await;
        let due = ((started.elapsed().as_secs_f64() * rate) as usize).min(total);
        if due > sent {
            let batch: Vec<_> = (sent..due)
                .map(|i| NewEvent::external("bench.latency", format!("k{}", i % 100), &payload(i)))
                .collect();
            sent = due;
            let publisher = publisher.clone();
            tokio::spawn(async move { publisher.publish_all(batch).await.unwrap() });
        }
    }
    (relayed.await.unwrap(), delivered.await.unwrap())
}

#[tokio::main]
async fn main() {
    let mut numbers = std::env::args().skip(1).filter_map(|a| a.parse().ok());
    let n: usize = numbers.next().unwrap_or(200_000);
    let rounds: usize = numbers.next().unwrap_or(3);
    println!(
        "{n} events, 200-byte payloads ({} B envelopes), one nats-server per hub on this machine",
        {
            use prost::Message as _;
            fractal::proto::Envelope {
                id: "01JB0000000000000000000000".into(),
                r#type: "bench.relayed".into(),
                time: Some(SystemTime::now().into()),
                partition_key: "k00".into(),
                source: "bench/producer".into(),
                tags: Default::default(),
                payload_type: "fractal.platform.v1.Header".into(),
                payload: prost::Message::encode_to_vec(&payload(0)).into(),
            }
            .encoded_len()
        }
    );
    // Each round relays with a route selecting by one pattern (one filter on the source hub)
    // and with a route listing two types (two filters), in turns, then by sourcing. The
    // machine's speed drifts from one minute to the next, so the rounds interleave and the
    // medians compare.
    let cpu = |cpu: &[f64]| {
        let processes = ["hub A", "hub B", "bridge"];
        let each: Vec<String> = processes
            .iter()
            .zip(cpu)
            .map(|(process, us)| format!("{process} {us:>4.1}"))
            .collect();
        format!("{}, total {:.1}", each.join(", "), cpu.iter().sum::<f64>())
    };
    println!("events/s, and CPU µs per event of each process (the bridge's start-up included):");
    let (mut patterns, mut lists, mut natives, mut peak_rss) =
        (Vec::new(), Vec::new(), Vec::new(), 0.0f64);
    for round in 1..=rounds {
        let mut routes = [
            ("bridge, route `bench.*`", &["bench.*"][..], &mut patterns),
            (
                "bridge, route listing two types",
                &["bench.relayed", "bench.latency"][..],
                &mut lists,
            ),
        ];
        // Each shape goes first in every other round.
        if round % 2 == 0 {
            routes.reverse();
        }
        for (name, types, rates) in routes {
            let (rate, used, a, b, bridge) = bridge_rate(n, types).await;
            peak_rss = peak_rss.max(bridge.peak_rss_mib());
            drop(bridge);
            drop((a, b));
            println!("round {round}  {name:<34} {rate:>7.0}   {}", cpu(&used));
            rates.push(rate);
        }
        let (rate, used) = sourcing_rate(n).await;
        println!(
            "round {round}  {:<34} {rate:>7.0}   {}",
            "nats stream sourcing over a leafnode",
            cpu(&used)
        );
        natives.push(rate);
    }
    let median = |rates: &mut Vec<f64>| {
        rates.sort_by(f64::total_cmp);
        rates[rates.len() / 2]
    };
    let (pattern, list, native) = (
        median(&mut patterns),
        median(&mut lists),
        median(&mut natives),
    );
    println!(
        "medians: bridge {pattern:.0} (pattern), {list:.0} (list), sourcing {native:.0} events/s; ratio bridge/native {:.2} (pattern), {:.2} (list) (goal >= 1.0)",
        pattern / native,
        list / native
    );

    // Latency, with a bridge relaying A to B: at about half the bridge's median peak (the
    // goal's load), then at lighter loads.
    let (a, b) = (NatsServer::start(), NatsServer::start());
    let _hubs = (a.hub("a").await, b.hub("b").await);
    let bridge = BridgeProcess::start(&a, &b, &["bench.*"]);
    tokio::time::sleep(Duration::from_secs(1)).await;
    for rate in [(pattern / 2.0).round(), 5000.0, 1000.0] {
        let (relayed, delivered) = latency(&a, &b, rate, 5).await;
        let (p50, p99) = percentiles(&relayed);
        let (floor50, floor99) = percentiles(&delivered);
        println!(
            "relay latency at {rate:.0} events/s ({} events): p50 {p50:.2} ms, p99 {p99:.2} ms (goal p99 <= 5 ms); hub A's own delivery to a consumer: p50 {floor50:.2} ms, p99 {floor99:.2} ms",
            relayed.len()
        );
    }
    peak_rss = peak_rss.max(bridge.peak_rss_mib());
    println!("bridge peak RSS: {peak_rss:.1} MiB (goal <= 50 MB)");
}
