//! Hubs of three nodes losing the node that leads their event stream while events flow: a
//! publisher counts what the hub acknowledged, a service applies each event, a bridge relays
//! them to another three-node hub whose leader is killed too. Nothing acknowledged is lost,
//! nothing is stored, applied or relayed twice, and the killed nodes catch up.

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::{Bridge, numbered, route};
use fractal::proto::Header;
use fractal::view::{Record, View};
use fractal::{Consumer, ConsumerConfig, Event, Hub, NewEvent, Publisher};
use fractal_testkit::{NatsCluster, eventually, stream_messages};
use tokio_util::sync::CancellationToken;

const EVENTS: usize = 20_000;
const BATCH: usize = 100;

/// When to kill each hub's event-stream leader, in events acknowledged so far; each killed
/// node is started again 4,000 events later (or at the end).
struct Kills {
    source: usize,
    target: usize,
}

/// Kills the node leading `EVENTS` in `cluster`; returns it.
fn kill_leader(cluster: &mut NatsCluster, which: &str) -> usize {
    let leader = cluster
        .leader_of("EVENTS")
        .unwrap_or_else(|| panic!("the {which} hub's event stream has a leader"));
    println!("killing node {leader} of the {which} hub, the event stream's leader");
    cluster.kill(leader);
    leader
}

fn restart(cluster: &mut NatsCluster, node: &mut Option<(usize, usize)>) -> Option<usize> {
    let (i, _) = node.take()?;
    tokio::task::block_in_place(|| cluster.restart(i));
    Some(i)
}

/// Every distinct event id in `hub`'s event stream, and how many messages it holds.
async fn stored(hub: &Hub) -> (HashSet<String>, usize) {
    let messages = stream_messages(hub, hub.events_stream()).await;
    let count = messages.len();
    let ids = messages
        .into_iter()
        .map(|m| {
            Event::decode(&m.subject, m.headers.as_ref(), m.payload)
                .expect("well-formed")
                .id
                .to_string()
        })
        .collect();
    (ids, count)
}

/// One run at a time: each is six servers, a bridge and a service.
static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn run(kills: Kills) {
    let _turn = TURN.lock().await;
    let (mut a, mut b) = (NatsCluster::start(3), NatsCluster::start(3));
    let (hub_a, hub_b) = (a.hub("a").await, b.hub("b").await);

    // The service: applies each event once, idempotently: a view entry per event id, created
    // only where absent (a redelivered event finds its entry and changes nothing).
    let applied = View::<Header>::open(&hub_a, "applied")
        .await
        .expect("the view");
    let handled = Arc::new(AtomicUsize::new(0));
    let consumer =
        Consumer::new(&hub_a, "applier", ConsumerConfig::default()).on_any("item.added", {
            let (applied, handled) = (applied.clone(), handled.clone());
            move |event: Event| {
                let (applied, handled) = (applied.clone(), handled.clone());
                async move {
                    let payload: Header = event.payload()?;
                    applied
                        .create(&event.id.to_string(), &Record::new(payload, event.time))
                        .await?;
                    handled.fetch_add(1, Ordering::Relaxed);
                    Ok(())
                }
            }
        });
    let shutdown = CancellationToken::new();
    let service = tokio::spawn(consumer.run(shutdown.clone()));
    let _bridge = Bridge::start("ab", ("a", &a), ("b", &b), &route("all", &["item.added"]));

    // The publisher: batches, each sent again until acknowledged (ids make that safe).
    let publisher = Publisher::new(&hub_a, "test/publisher");
    let mut acknowledged: HashSet<String> = HashSet::new();
    let (mut killed_a, mut killed_b) = (None, None);
    for start in (0..EVENTS).step_by(BATCH) {
        let batch: Vec<NewEvent> = (start..start + BATCH)
            .map(|n| numbered("item.added", &format!("k{}", n % 64), n))
            .collect();
        loop {
            match publisher.publish_all(batch.clone()).await {
                Ok(published) => {
                    acknowledged.extend(published.iter().map(|p| p.id.to_string()));
                    break;
                }
                Err(e) => {
                    println!("batch at {start} not acknowledged ({e}); sending it again");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
        let done = start + BATCH;
        if done == kills.source {
            killed_a = Some((kill_leader(&mut a, "source"), done));
        }
        if done == kills.target {
            killed_b = Some((kill_leader(&mut b, "target"), done));
        }
        if killed_a.is_some_and(|(_, at)| done == at + 4_000) {
            restart(&mut a, &mut killed_a);
        }
        if killed_b.is_some_and(|(_, at)| done == at + 4_000) {
            restart(&mut b, &mut killed_b);
        }
    }
    let restarted_a = restart(&mut a, &mut killed_a);
    let restarted_b = restart(&mut b, &mut killed_b);
    assert_eq!(acknowledged.len(), EVENTS);

    // The source holds every acknowledged event, once.
    let (ids, count) = stored(&hub_a).await;
    assert_eq!(count, EVENTS, "messages in the source's stream");
    assert!(acknowledged.iter().all(|id| ids.contains(id)));

    // The service applied each one: one entry per event, none written twice.
    eventually(Duration::from_secs(180), "every event applied", || async {
        let mut kv = hub_a.jetstream().get_stream("KV_view_applied").await.ok()?;
        let entries = kv.info().await.ok()?.state.messages as usize;
        (entries >= EVENTS).then_some(())
    })
    .await;
    let mut kv = hub_a
        .jetstream()
        .get_stream("KV_view_applied")
        .await
        .expect("the view's stream");
    let entries = kv.info().await.expect("its state").state.messages as usize;
    assert_eq!(entries, EVENTS);
    assert!(handled.load(Ordering::Relaxed) >= EVENTS);

    // The target has each relayed event exactly once.
    common::wait_for_count(&hub_b, EVENTS as u64, Duration::from_secs(180)).await;
    let (relayed, count) = stored(&hub_b).await;
    assert_eq!(count, EVENTS, "messages in the target's stream");
    assert_eq!(relayed, ids);

    // The restarted nodes caught up.
    for (cluster, node) in [(&a, restarted_a), (&b, restarted_b)] {
        if let Some(i) = node {
            eventually(
                Duration::from_secs(60),
                "the restarted node caught up",
                || async {
                    (cluster.messages_on(i, "EVENTS") == Some(EVENTS as u64)).then_some(())
                },
            )
            .await;
        }
    }
    shutdown.cancel();
    let _ = service.await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_source_leader_dies_early_and_the_target_leader_midway() {
    run(Kills {
        source: 3_000,
        target: 10_000,
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_target_leader_dies_early_and_the_source_leader_midway() {
    run(Kills {
        source: 12_000,
        target: 2_000,
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_leaders_die_near_the_end() {
    run(Kills {
        source: 18_000,
        target: 17_000,
    })
    .await;
}
