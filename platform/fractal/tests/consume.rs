//! The consumer runtime against a real hub: ordering, retries, faults, shutdown and crashes.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fractal::fault::FaultKind;
use fractal::proto::{Fault, Header};
use fractal::{Consumer, ConsumerConfig, Event, HandlerError, Hub, NewEvent};
use fractal_testkit::{NatsServer, eventually, simulate, stream_messages};
use prost::Message as _;
use rand::Rng as _;
use tokio_util::sync::CancellationToken;

fn numbered(event_type: &str, key: &str, n: usize) -> NewEvent {
    let payload = Header {
        name: key.into(),
        value: n.to_string(),
    };
    NewEvent::new(event_type, key, &payload)
}

fn number(event: &Event) -> usize {
    event
        .payload::<Header>()
        .expect("payload")
        .value
        .parse()
        .expect("a number")
}

fn fast_retries() -> ConsumerConfig {
    ConsumerConfig {
        retry_initial_ms: 10,
        retry_max_ms: 50,
        ..Default::default()
    }
}

async fn faults(hub: &Hub) -> Vec<Fault> {
    stream_messages(hub, hub.faults_stream())
        .await
        .iter()
        .map(|m| Fault::decode(m.payload.as_ref()).expect("a fault"))
        .collect()
}

fn spawn(consumer: Consumer) -> (CancellationToken, tokio::task::JoinHandle<()>) {
    let token = CancellationToken::new();
    let run = consumer.run(token.clone());
    let handle = tokio::spawn(async move { run.await.expect("consumer runs") });
    (token, handle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_key_is_handled_in_order_and_keys_run_concurrently() {
    const KEYS: usize = 50;
    const PER_KEY: usize = 200;
    let server = NatsServer::start();
    let hub = server.hub("alpha").await;
    // Interleave keys so that every batch mixes them.
    let events = (0..PER_KEY)
        .flat_map(|n| (0..KEYS).map(move |k| numbered("item.added", &format!("key-{k}"), n)));
    simulate(&hub, events).await;

    let seen: Arc<Mutex<HashMap<String, Vec<usize>>>> = Arc::default();
    let running = Arc::new(AtomicU32::new(0));
    let peak = Arc::new(AtomicU32::new(0));
    let consumer =
        Consumer::new(&hub, "orderly", ConsumerConfig::default()).on_any("item.added", {
            let (seen, running, peak) = (seen.clone(), running.clone(), peak.clone());
            move |event| {
                let (seen, running, peak) = (seen.clone(), running.clone(), peak.clone());
                async move {
                    let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                    peak.fetch_max(now, Ordering::SeqCst);
                    let delay = rand::rng().random_range(0..300);
                    tokio::time::sleep(Duration::from_micros(delay)).await;
                    seen.lock()
                        .unwrap()
                        .entry(event.key.clone())
                        .or_default()
                        .push(number(&event));
                    running.fetch_sub(1, Ordering::SeqCst);
                    Ok(())
                }
            }
        });
    let (token, handle) = spawn(consumer);
    eventually(Duration::from_secs(60), "every event handled", || async {
        let count: usize = seen.lock().unwrap().values().map(Vec::len).sum();
        (count >= KEYS * PER_KEY).then_some(())
    })
    .await;
    token.cancel();
    handle.await.expect("stopped");

    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), KEYS);
    for (key, numbers) in seen.iter() {
        assert_eq!(*numbers, (0..PER_KEY).collect::<Vec<_>>(), "order of {key}");
    }
    assert!(
        peak.load(Ordering::SeqCst) > 1,
        "keys were handled concurrently"
    );
}

#[tokio::test]
async fn a_retryable_failure_is_retried_until_handled() {
    let server = NatsServer::start();
    let hub = server.hub("alpha").await;
    simulate(&hub, [numbered("flaky.thing", "k", 1)]).await;
    let attempts = Arc::new(AtomicU32::new(0));
    let consumer = Consumer::new(&hub, "flaky", fast_retries()).on_any("flaky.thing", {
        let attempts = attempts.clone();
        move |_event| {
            let attempts = attempts.clone();
            async move {
                if attempts.fetch_add(1, Ordering::SeqCst) < 2 {
                    Err(HandlerError::retryable("store unavailable"))
                } else {
                    Ok(())
                }
            }
        }
    });
    let (token, handle) = spawn(consumer);
    eventually(Duration::from_secs(10), "third attempt", || async {
        (attempts.load(Ordering::SeqCst) == 3).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    token.cancel();
    handle.await.expect("stopped");
    assert_eq!(attempts.load(Ordering::SeqCst), 3);
    assert!(faults(&hub).await.is_empty());
}

#[tokio::test]
async fn an_always_failing_handler_makes_exactly_one_fault() {
    let server = NatsServer::start();
    let hub = server.hub("alpha").await;
    let published = simulate(&hub, [numbered("doomed.thing", "k", 7)]).await;
    let attempts = Arc::new(AtomicU32::new(0));
    let config = ConsumerConfig {
        max_deliveries: 3,
        ..fast_retries()
    };
    let consumer = Consumer::new(&hub, "doomed", config).on_any("doomed.thing", {
        let attempts = attempts.clone();
        move |_event| {
            let attempts = attempts.clone();
            async move {
                attempts.fetch_add(1, Ordering::SeqCst);
                Err(HandlerError::retryable("always down"))
            }
        }
    });
    let (token, handle) = spawn(consumer);
    let fault = eventually(Duration::from_secs(10), "a fault", || async {
        faults(&hub).await.pop()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    token.cancel();
    handle.await.expect("stopped");

    assert_eq!(attempts.load(Ordering::SeqCst), 3);
    assert_eq!(faults(&hub).await.len(), 1, "exactly one fault");
    assert_eq!(fault.kind(), FaultKind::RetriesExhausted);
    assert_eq!(fault.deliveries, 3);
    assert_eq!(fault.service, "doomed");
    assert!(fault.reason.contains("always down"), "{}", fault.reason);
    let original = fault.original.expect("original kept");
    assert_eq!(original.subject, "events.internal.doomed.thing");
    assert_eq!(original.stream_sequence, published[0].sequence);
    let headers = fractal::fault::header_map(&original.headers).expect("headers NATS carried");
    let event = Event::decode(
        &original.subject,
        Some(&headers),
        original.body.clone().into(),
    )
    .expect("original intact");
    assert_eq!(event.id, published[0].id.to_string());
    assert_eq!(number(&event), 7);
    let subjects: Vec<_> = stream_messages(&hub, hub.faults_stream())
        .await
        .into_iter()
        .map(|m| m.subject.to_string())
        .collect();
    assert_eq!(subjects, ["faults.doomed.doomed.thing"]);
}

#[tokio::test]
async fn a_permanent_error_is_a_fault_at_once_and_the_key_keeps_flowing() {
    let server = NatsServer::start();
    let hub = server.hub("alpha").await;
    simulate(&hub, (0..5).map(|n| numbered("picky.thing", "k", n))).await;
    let handled: Arc<Mutex<Vec<usize>>> = Arc::default();
    let consumer = Consumer::new(&hub, "picky", fast_retries()).on_any("picky.thing", {
        let handled = handled.clone();
        move |event| {
            let handled = handled.clone();
            async move {
                let n = number(&event);
                handled.lock().unwrap().push(n);
                if n == 2 {
                    return Err(HandlerError::permanent("two is not allowed"));
                }
                Ok(())
            }
        }
    });
    let (token, handle) = spawn(consumer);
    eventually(Duration::from_secs(10), "all five", || async {
        (handled.lock().unwrap().len() == 5).then_some(())
    })
    .await;
    let faults = eventually(Duration::from_secs(10), "the fault", || async {
        let f = faults(&hub).await;
        (!f.is_empty()).then_some(f)
    })
    .await;
    token.cancel();
    handle.await.expect("stopped");
    assert_eq!(
        *handled.lock().unwrap(),
        [0, 1, 2, 3, 4],
        "tried once each, in order"
    );
    assert_eq!(faults.len(), 1);
    assert_eq!(faults[0].kind(), FaultKind::Permanent);
    assert_eq!(faults[0].deliveries, 1);
}

#[tokio::test]
async fn an_undecodable_message_is_a_fault() {
    let server = NatsServer::start();
    let hub = server.hub("alpha").await;
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-Msg-Id", "garbage-1");
    headers.insert("Fractal-Type", "odd.thing");
    hub.jetstream()
        .publish_with_headers(
            "events.internal.odd.thing",
            headers,
            "not protobuf \u{1}\u{2}".into(),
        )
        .await
        .expect("sent")
        .await
        .expect("stored");
    simulate(&hub, [numbered("odd.thing", "k", 1)]).await;
    let handled = Arc::new(AtomicU32::new(0));
    let consumer = Consumer::new(&hub, "strict", fast_retries()).on_any("odd.thing", {
        let handled = handled.clone();
        move |_event| {
            let handled = handled.clone();
            async move {
                handled.fetch_add(1, Ordering::SeqCst);
                Ok(())
            }
        }
    });
    let (token, handle) = spawn(consumer);
    let fault = eventually(Duration::from_secs(10), "a fault", || async {
        faults(&hub).await.pop()
    })
    .await;
    eventually(Duration::from_secs(10), "the good event", || async {
        (handled.load(Ordering::SeqCst) == 1).then_some(())
    })
    .await;
    token.cancel();
    handle.await.expect("stopped");
    assert_eq!(fault.kind(), FaultKind::Malformed);
    assert!(
        fault.reason.contains("not a well-formed event"),
        "{}",
        fault.reason
    );
    let original = fault.original.expect("original");
    assert_eq!(original.body, b"not protobuf \x01\x02");
}

/// Runs a consumer on a runtime of its own, so that dropping the runtime kills it abruptly:
/// no handler finishes, nothing is acknowledged or released, its connection is cut.
fn run_killable(url: String, seen: Arc<Mutex<Vec<String>>>) -> tokio::runtime::Runtime {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.spawn(async move {
        let hub = Hub::connect(&fractal::HubConfig::local("alpha", &url))
            .await
            .expect("connects");
        let config = ConsumerConfig {
            ack_wait_secs: 2,
            retry_max_ms: 100,
            ..Default::default()
        };
        Consumer::new(&hub, "survivor", config)
            .on_any("step.done", move |event| {
                let seen = seen.clone();
                async move {
                    tokio::time::sleep(Duration::from_micros(200)).await;
                    seen.lock().expect("lock").push(event.id.clone());
                    Ok(())
                }
            })
            .run(CancellationToken::new())
            .await
            .expect("consumer runs");
    });
    runtime
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_consumer_loses_nothing_after_restart() {
    const EVENTS: usize = 3000;
    let server = NatsServer::start();
    let hub = server.hub("alpha").await;
    let published = simulate(
        &hub,
        (0..EVENTS).map(|n| numbered("step.done", &format!("k{}", n % 40), n)),
    )
    .await;
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();

    let first = run_killable(server.url(), seen.clone());
    eventually(Duration::from_secs(30), "some progress", || async {
        (seen.lock().unwrap().len() > EVENTS / 3).then_some(())
    })
    .await;
    first.shutdown_background();
    let handled_before = seen.lock().unwrap().len();
    assert!(handled_before < EVENTS, "killed mid-stream");

    let second = run_killable(server.url(), seen.clone());
    let expected: HashSet<String> = published.iter().map(|p| p.id.to_string()).collect();
    eventually(Duration::from_secs(60), "every event handled", || async {
        let seen: HashSet<String> = seen.lock().unwrap().iter().cloned().collect();
        (seen == expected).then_some(())
    })
    .await;
    second.shutdown_background();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_acknowledges_only_what_was_handled() {
    const EVENTS: usize = 2000;
    let server = NatsServer::start();
    let hub = server.hub("alpha").await;
    simulate(
        &hub,
        (0..EVENTS).map(|n| numbered("job.queued", &format!("k{}", n % 25), n)),
    )
    .await;
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let consumer = || {
        let config = ConsumerConfig {
            ack_wait_secs: 2,
            retry_max_ms: 100,
            ..Default::default()
        };
        Consumer::new(&hub, "graceful", config).on_any("job.queued", {
            let seen = seen.clone();
            move |event| {
                let seen = seen.clone();
                async move {
                    tokio::time::sleep(Duration::from_micros(300)).await;
                    seen.lock().unwrap().push(event.id.clone());
                    Ok(())
                }
            }
        })
    };
    let (token, handle) = spawn(consumer());
    eventually(Duration::from_secs(30), "some progress", || async {
        (seen.lock().unwrap().len() > EVENTS / 4).then_some(())
    })
    .await;
    token.cancel();
    handle.await.expect("stopped");
    assert!(seen.lock().unwrap().len() < EVENTS, "stopped mid-stream");

    let (token, handle) = spawn(consumer());
    eventually(Duration::from_secs(60), "every event handled", || async {
        (seen.lock().unwrap().len() >= EVENTS).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    token.cancel();
    handle.await.expect("stopped");
    let seen = seen.lock().unwrap();
    let distinct: HashSet<_> = seen.iter().collect();
    assert_eq!(distinct.len(), EVENTS);
    assert_eq!(
        seen.len(),
        EVENTS,
        "nothing handled twice: nothing was acknowledged unhandled, nothing handled was left unacknowledged"
    );
}

#[tokio::test]
async fn the_admin_endpoint_reports_health_readiness_and_metrics() {
    async fn get(addr: std::net::SocketAddr, path: &str) -> String {
        fractal_testkit::http_get(addr, path)
            .await
            .expect("answered")
    }

    let mut server = NatsServer::start();
    let hub = server.hub("alpha").await;
    simulate(&hub, [numbered("metered.thing", "k", 1)]).await;
    let consumer = Consumer::new(&hub, "metered", fast_retries())
        .on_any("metered.thing", |_e| async { Ok(()) });
    let (token, handle) = spawn(consumer);
    let admin = fractal::admin::AdminConfig {
        listen: "127.0.0.1:0".into(),
    };
    let readiness = fractal::admin::Readiness::default().hub(&hub);
    let addr = fractal::admin::serve(&admin, readiness, token.clone())
        .await
        .expect("listens");

    assert!(get(addr, "/healthz").await.starts_with("HTTP/1.1 200"));
    assert!(get(addr, "/readyz").await.starts_with("HTTP/1.1 200"));
    let metrics = eventually(Duration::from_secs(10), "handled metric", || async {
        let m = get(addr, "/metrics").await;
        m.contains(
            r#"fractal_events_handled_total{service="metered",event_type="metered.thing"} 1"#,
        )
        .then_some(m)
    })
    .await;
    assert!(
        metrics.contains("fractal_handler_duration_seconds_bucket"),
        "{metrics}"
    );
    assert!(
        metrics.contains("fractal_events_published_total"),
        "{metrics}"
    );

    server.kill();
    let not_ready = eventually(Duration::from_secs(10), "not ready", || async {
        let r = get(addr, "/readyz").await;
        r.starts_with("HTTP/1.1 503").then_some(r)
    })
    .await;
    assert!(
        not_ready.contains("hub `alpha` is not connected"),
        "{not_ready}"
    );
    token.cancel();
    handle.await.expect("stopped");
}

#[tokio::test]
async fn a_new_consumer_started_since_a_time_gets_only_what_was_stored_from_then_on() {
    let server = NatsServer::start();
    let hub = server.hub("alpha").await;
    simulate(&hub, (0..5).map(|n| numbered("item.added", "early", n))).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let since = time::OffsetDateTime::now_utc();
    tokio::time::sleep(Duration::from_millis(50)).await;
    simulate(&hub, (0..5).map(|n| numbered("item.added", "late", n))).await;

    let start = format!(
        "since:{}",
        since
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap()
    );
    let config = ConsumerConfig {
        start: start.parse().expect("a start"),
        ..Default::default()
    };
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let consumer = Consumer::new(&hub, "backfilled", config).on_any("item.added", {
        let seen = seen.clone();
        move |event| {
            seen.lock().unwrap().push(event.key.clone());
            async { Ok(()) }
        }
    });
    let (token, handle) = spawn(consumer);
    eventually(Duration::from_secs(10), "the late events", || async {
        (seen.lock().unwrap().len() >= 5).then_some(())
    })
    .await;
    // Anything older would have come first.
    tokio::time::sleep(Duration::from_millis(200)).await;
    token.cancel();
    handle.await.expect("stopped");
    assert_eq!(*seen.lock().unwrap(), vec!["late"; 5]);

    let error = "since:yesterday"
        .parse::<fractal::consume::Start>()
        .unwrap_err();
    assert!(
        error.contains("`yesterday` is not an RFC 3339 time"),
        "{error}"
    );
    let error = "everything".parse::<fractal::consume::Start>().unwrap_err();
    assert!(error.contains("use `all`, `new`, `since:"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_latest_per_key_consumer_handles_the_newest_event_of_each_key_then_everything_new() {
    const KEYS: usize = 1_000;
    const PER_KEY: usize = 100;
    let server = NatsServer::start();
    let hub = server.hub("alpha").await;
    // 100,000 events, every key's 100 interleaved with the others', and some of another type.
    let events = (0..PER_KEY)
        .flat_map(|n| (0..KEYS).map(move |k| numbered("item.added", &format!("key-{k}"), n)));
    simulate(&hub, events).await;
    simulate(&hub, (0..10).map(|n| numbered("other.thing", "key-0", n))).await;

    let config = ConsumerConfig {
        start: "latest-per-key".parse().expect("a start"),
        ..Default::default()
    };
    let seen: Arc<Mutex<HashMap<String, Vec<usize>>>> = Arc::default();
    let consumer = Consumer::new(&hub, "late", config).on_any("item.added", {
        let seen = seen.clone();
        move |event| {
            seen.lock()
                .unwrap()
                .entry(event.key.clone())
                .or_default()
                .push(number(&event));
            async { Ok(()) }
        }
    });
    let (token, handle) = spawn(consumer);
    eventually(Duration::from_secs(60), "every key's newest", || async {
        (seen.lock().unwrap().len() >= KEYS).then_some(())
    })
    .await;
    // Then what comes after, all of it.
    simulate(
        &hub,
        (PER_KEY..PER_KEY + 3).map(|n| numbered("item.added", "key-7", n)),
    )
    .await;
    eventually(Duration::from_secs(20), "the new events", || async {
        (seen.lock().unwrap()["key-7"].len() >= 4).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    token.cancel();
    handle.await.expect("stopped");

    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), KEYS);
    for (key, numbers) in &seen {
        let expected: Vec<usize> = if key == "key-7" {
            (PER_KEY - 1..PER_KEY + 3).collect()
        } else {
            vec![PER_KEY - 1]
        };
        assert_eq!(*numbers, expected, "{key}");
    }
    assert!(faults(&hub).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_translation_carries_an_id_derived_from_the_original_so_a_redelivery_stores_it_once() {
    let server = NatsServer::start();
    let hub = server.hub("alpha").await;
    let publisher = fractal::Publisher::new(&hub, "alpha/gateway");
    const ADDED: fractal::Contract<Header, fractal::contract::Internal> =
        fractal::Contract::internal("item.added");
    const COUNTED: fractal::Contract<Header, fractal::contract::Internal> =
        fractal::Contract::internal("item.counted");
    let consumer = Consumer::new(&hub, "gateway", fast_retries()).translate(
        ADDED,
        &publisher,
        |_added, event| Ok(COUNTED.event(event.key.clone(), &Header::default())),
    );
    let (token, handle) = spawn(consumer);
    simulate(&hub, [numbered("item.added", "k-1", 1)]).await;
    let translated = fractal_testkit::wait_for_events(&hub, "item.counted", 1).await;
    let original = fractal_testkit::events_of_type(&hub, "item.added").await;
    assert_eq!(
        translated[0].id,
        original[0].derived_id("item.counted").to_string()
    );
    // Translated again (a redelivery, a replay), the hub keeps the first.
    let again = NewEvent::new("item.counted", "k-1", &Header::default())
        .with_id(original[0].derived_id("item.counted"));
    assert!(publisher.publish(again).await.unwrap().duplicate);
    token.cancel();
    handle.await.expect("stopped");
}
