//! Rebuilding a view from the lake against a real hub, while events keep arriving.

use std::collections::HashMap;
use std::time::Duration;

use fractal::proto::Header;
use fractal::view::rebuild::{self, RebuildError};
use fractal::view::{Index, Record, View, key};
use fractal::{Consumer, ConsumerConfig, Event, HandlerError, Hub, NewEvent, Publisher};
use fractal_testkit::{NatsServer, eventually, simulate};
use tokio_util::sync::CancellationToken;

const KEYS: usize = 40;

fn counted(key: usize, n: usize) -> NewEvent {
    let payload = Header {
        name: format!("k{key}"),
        value: n.to_string(),
    };
    NewEvent::new("thing.counted", format!("k{key}"), &payload)
}

/// The count of each key's events the view holds.
async fn counts(view: &View<Header>) -> HashMap<String, usize> {
    view.list()
        .await
        .expect("the view lists")
        .into_iter()
        .map(|(k, r)| (k, r.value.value.parse().expect("a count")))
        .collect()
}

/// Counts each key's events: an update that is not idempotent, so that an event applied twice
/// or missed shows in the count. Every other event also publishes one (which a rebuild must
/// not publish again).
async fn count(view: View<Header>, publisher: Publisher, event: Event) -> Result<(), HandlerError> {
    let stored = view
        .update(&event.key, |current| {
            let n = current.map_or(0, |r| r.value.value.parse::<usize>().unwrap_or(0));
            let value = Header {
                name: event.key.clone(),
                value: (n + 1).to_string(),
            };
            Some(Record::new(value, event.time))
        })
        .await?;
    if stored.is_some_and(|r| r.value.value == "1") {
        let first = Header {
            name: event.key.clone(),
            value: "first".into(),
        };
        let id = event.derived_id("first");
        publisher
            .publish(NewEvent::new("thing.first", event.key.clone(), &first).with_id(id))
            .await?;
    }
    Ok(())
}

/// Starts the counting service on `hub`; returns its view and the token that stops it.
async fn start(hub: &Hub) -> (View<Header>, CancellationToken) {
    let by_parity = Index::open(hub, "counts_by_parity", |k: &str, _: &Header| {
        let parity = k.trim_start_matches('k').parse::<usize>().unwrap_or(0) % 2;
        key(&[&parity.to_string(), k])
    })
    .await
    .expect("the index opens");
    let view = View::<Header>::open(hub, "counts")
        .await
        .expect("the view opens")
        .indexed_by(by_parity);
    let publisher = Publisher::new(hub, "test/counter");
    let consumer =
        Consumer::new(hub, "counter", ConsumerConfig::default()).on_any("thing.counted", {
            let view = view.clone();
            move |event| count(view.clone(), publisher.clone(), event)
        });
    let stop = CancellationToken::new();
    let run = consumer.run(stop.clone());
    tokio::spawn(async move { run.await.expect("the consumer runs") });
    (view, stop)
}

async fn firsts(hub: &Hub) -> usize {
    fractal_testkit::events_of_type(hub, "thing.first")
        .await
        .len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuild_while_events_arrive_applies_each_event_exactly_once() {
    let server = NatsServer::start();
    let hub = server.hub("alpha").await;
    let operator = server.hub("alpha").await;
    simulate(&hub, (0..2_000).map(|n| counted(n % KEYS, n))).await;
    let (view, stop) = start(&hub).await;
    eventually(Duration::from_secs(30), "the first events counted", || {
        let view = view.clone();
        async move { (counts(&view).await.values().sum::<usize>() == 2_000).then_some(()) }
    })
    .await;

    // More events arrive all through the rebuild.
    let arriving = tokio::spawn({
        let hub = hub.clone();
        async move {
            let publisher = Publisher::new(&hub, "test/simulator");
            for n in 2_000..5_000 {
                publisher.publish(counted(n % KEYS, n)).await.unwrap();
                if n % 50 == 0 {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        }
    });
    let mut reports = 0;
    let rebuilt = rebuild::rebuild(&operator, "counter", "counts", |_| reports += 1)
        .await
        .expect("the view is rebuilt");
    assert!(reports > 0, "progress was reported");
    assert_eq!(rebuilt.progress.state, rebuild::State::Switched);
    assert!(rebuilt.progress.done >= 2_000, "{:?}", rebuilt.progress);
    let views: Vec<&str> = rebuilt.verified.iter().map(|v| v.view.as_str()).collect();
    assert_eq!(views, ["counts", "counts_by_parity"]);
    arriving.await.unwrap();

    // Every key counts each of its events once: none applied twice, none missed at the switch.
    let expected: HashMap<String, usize> =
        (0..KEYS).map(|k| (format!("k{k}"), 5_000 / KEYS)).collect();
    eventually(Duration::from_secs(30), "every event counted once", || {
        let view = view.clone();
        let expected = expected.clone();
        async move { (counts(&view).await == expected).then_some(()) }
    })
    .await;
    let bound = rebuild::bound(&operator, "counts").await.unwrap().unwrap();
    assert_eq!(bound.bucket, "view_counts__b");
    let index = View::<Header>::open(&hub, "counts_by_parity")
        .await
        .unwrap();
    assert_eq!(index.scan("0").await.unwrap().len(), KEYS / 2);
    assert_eq!(firsts(&hub).await, KEYS, "the rebuild published nothing");

    // Rebuilt again with nothing arriving, the view equals itself built from scratch.
    let again = rebuild::rebuild(&operator, "counter", "counts", |_| {})
        .await
        .expect("the view is rebuilt again");
    let counts_verified = &again.verified[0];
    assert_eq!(counts_verified.same, KEYS, "{counts_verified:?}");
    assert!(
        counts_verified.differ.is_empty()
            && counts_verified.only_old.is_empty()
            && counts_verified.only_new.is_empty(),
        "{counts_verified:?}"
    );
    let bound = rebuild::bound(&operator, "counts").await.unwrap().unwrap();
    assert_eq!(bound.bucket, "view_counts");
    assert_eq!(counts(&view).await, expected);
    assert_eq!(firsts(&hub).await, KEYS);
    stop.cancel();
}

#[tokio::test]
async fn a_rebuild_names_what_it_cannot_do() {
    let server = NatsServer::start();
    let hub = server.hub("alpha").await;
    let operator = server.hub("alpha").await;
    let refused = rebuild::rebuild(&operator, "counter", "counts", |_| {})
        .await
        .unwrap_err();
    assert!(
        matches!(refused, RebuildError::NotRunning { .. }),
        "{refused}"
    );
    assert!(
        refused
            .to_string()
            .contains("service `counter` is not running"),
        "{refused}"
    );

    let (_view, stop) = start(&hub).await;
    let refused = eventually(Duration::from_secs(10), "the service answering", || async {
        match rebuild::rebuild(&operator, "counter", "countz", |_| {}).await {
            Err(RebuildError::NotRunning { .. }) => None,
            answer => Some(answer.unwrap_err().to_string()),
        }
    })
    .await;
    assert!(
        refused.contains("has no view `countz` (its views: counts, counts_by_parity)"),
        "{refused}"
    );
    let refused = rebuild::rebuild(&operator, "counter", "counts_by_parity", |_| {})
        .await
        .unwrap_err()
        .to_string();
    assert!(
        refused.contains("is an index of view `counts`"),
        "{refused}"
    );
    stop.cancel();
}
