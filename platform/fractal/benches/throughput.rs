//! Throughput of the platform against raw async-nats on one local hub.
//!
//! `cargo bench -p fractal --bench throughput [-- MESSAGES ROUNDS]`
//!
//! Prints, side by side, JetStream publishing with `Nats-Msg-Id` (raw async-nats vs the
//! platform publisher, same message size, same pipelining window) and consuming (raw pull
//! consumer with fetch and ack vs the consumer runtime with a no-op handler). Each round uses
//! fresh subjects; the table shows every round and the median ratio.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use async_nats::jetstream::consumer::{AckPolicy, pull};
use async_nats::jetstream::message::PublishMessage;
use bytes::Bytes;
use fractal::proto::Header;
use fractal::{Consumer, ConsumerConfig, Hub, NewEvent, Publisher};
use fractal_testkit::NatsServer;
use futures::StreamExt as _;
use prost::Message as _;
use tokio_util::sync::CancellationToken;

const WINDOW: usize = 1024;
const PAYLOAD_BYTES: usize = 200;

fn payload() -> Header {
    Header {
        name: "bench".into(),
        value: "x".repeat(PAYLOAD_BYTES - 8),
    }
}

async fn raw_publish(hub: &Hub, subject: &str, n: usize, body: Bytes) -> Duration {
    let js = hub.jetstream();
    let started = Instant::now();
    let mut pending = VecDeque::with_capacity(WINDOW);
    let event_type = subject.rsplit_once("internal.").map_or(subject, |(_, t)| t);
    for i in 0..n {
        if pending.len() == WINDOW {
            let ack: async_nats::jetstream::context::PublishAckFuture =
                pending.pop_front().unwrap();
            ack.await.unwrap();
        }
        // The same headers the platform sends, so that both sides put the same bytes on the wire.
        let id = ulid::Ulid::new().to_string();
        let key = format!("key-{}", i % 64);
        let publish = PublishMessage::build()
            .message_id(id)
            .header("Fractal-Type", event_type)
            .header("Fractal-Key", key.as_str())
            .header("Fractal-Origin", "bench")
            .header("Fractal-Path", "bench")
            .payload(body.clone());
        pending.push_back(js.send_publish(subject.to_owned(), publish).await.unwrap());
    }
    for ack in pending {
        ack.await.unwrap();
    }
    started.elapsed()
}

async fn platform_publish(publisher: &Publisher, event_type: &str, n: usize) -> Duration {
    let payload = payload();
    let started = Instant::now();
    publisher
        .publish_all((0..n).map(|i| NewEvent::new(event_type, format!("key-{}", i % 64), &payload)))
        .await
        .unwrap();
    started.elapsed()
}

async fn raw_consume(hub: &Hub, name: &str, subject: &str, n: usize) -> Duration {
    let stream = hub
        .jetstream()
        .get_stream(hub.events_stream())
        .await
        .unwrap();
    let started = Instant::now();
    let consumer = stream
        .create_consumer(pull::Config {
            durable_name: Some(name.into()),
            filter_subject: subject.into(),
            ack_policy: AckPolicy::Explicit,
            max_ack_pending: 1024,
            ..Default::default()
        })
        .await
        .unwrap();
    let mut messages = consumer
        .stream()
        .max_messages_per_batch(256)
        .messages()
        .await
        .unwrap();
    let mut seen = 0;
    while seen < n {
        let message = messages.next().await.unwrap().unwrap();
        message.ack().await.unwrap();
        seen += 1;
    }
    hub.client().flush().await.unwrap();
    started.elapsed()
}

async fn platform_consume(hub: &Hub, name: &str, event_type: &str, n: usize) -> Duration {
    let count = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(tokio::sync::Notify::new());
    let token = CancellationToken::new();
    let started = Instant::now();
    let consumer = Consumer::new(hub, name, ConsumerConfig::default()).on_any(event_type, {
        let (count, done) = (count.clone(), done.clone());
        move |_event| {
            if count.fetch_add(1, Ordering::Relaxed) + 1 == n {
                done.notify_one();
            }
            async { Ok(()) }
        }
    });
    let run = tokio::spawn(consumer.run(token.clone()));
    done.notified().await;
    let elapsed = started.elapsed();
    token.cancel();
    run.await.unwrap().unwrap();
    elapsed
}

fn rate(n: usize, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let n: usize = args.first().and_then(|a| a.parse().ok()).unwrap_or(100_000);
    let rounds: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(3);

    let server = NatsServer::start();
    let hub = server.hub("bench").await;
    let publisher = Publisher::new(&hub, "bench/publisher");
    // The raw side publishes bodies as large as the platform's envelopes.
    let (_, envelope) = {
        let event = NewEvent::new("bench.size", "key-00", &payload());
        let size = event.subject();
        (size, fractal_envelope_len(event))
    };
    let raw_body = Bytes::from(vec![b'x'; envelope]);
    println!(
        "{n} messages per run, {rounds} rounds, payload {PAYLOAD_BYTES} B, envelope {envelope} B, nats-server at {}",
        server.url()
    );
    println!(
        "{:<8} {:>14} {:>14} {:>7} {:>14} {:>14} {:>7}",
        "round", "raw pub/s", "platform pub/s", "ratio", "raw cons/s", "runtime cons/s", "ratio"
    );
    let (mut pub_ratios, mut con_ratios) = (Vec::new(), Vec::new());
    for round in 1..=rounds {
        let raw_subject = format!("events.internal.bench.raw{round}");
        let platform_type = format!("bench.platform{round}");
        let raw_pub = rate(
            n,
            raw_publish(&hub, &raw_subject, n, raw_body.clone()).await,
        );
        let platform_pub = rate(n, platform_publish(&publisher, &platform_type, n).await);
        let raw_con = rate(
            n,
            raw_consume(&hub, &format!("raw{round}"), &raw_subject, n).await,
        );
        let runtime_con = rate(
            n,
            platform_consume(&hub, &format!("runtime{round}"), &platform_type, n).await,
        );
        pub_ratios.push(platform_pub / raw_pub);
        con_ratios.push(runtime_con / raw_con);
        println!(
            "{round:<8} {raw_pub:>14.0} {platform_pub:>14.0} {:>7.2} {raw_con:>14.0} {runtime_con:>14.0} {:>7.2}",
            platform_pub / raw_pub,
            runtime_con / raw_con
        );
    }
    println!(
        "median   publisher/raw = {:.2} (target >= 0.90), runtime/raw = {:.2} (target >= 0.80)",
        median(pub_ratios),
        median(con_ratios)
    );
}

fn fractal_envelope_len(event: NewEvent) -> usize {
    // The encoded envelope is what goes on the wire as the body.
    let id = event.id().to_string();
    let envelope = fractal::proto::Envelope {
        id,
        r#type: "bench.platform1".into(),
        time: Some(std::time::SystemTime::now().into()),
        partition_key: "key-00".into(),
        source: "bench/publisher".into(),
        tags: Default::default(),
        payload_type: "fractal.platform.v1.Header".into(),
        payload: payload().encode_to_vec().into(),
    };
    envelope.encoded_len()
}
