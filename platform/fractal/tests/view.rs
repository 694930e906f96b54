//! Views against a real hub: one-pass lists, prefix scans, indexes kept in step, live copies.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use fractal::proto::Header;
use fractal::view::{Index, Record, View, key};
use fractal_testkit::{NatsServer, eventually};

/// A delivery as the tests model it: `name` is the driver, `value` its status.
fn delivery(driver: &str, status: &str) -> Header {
    Header {
        name: driver.into(),
        value: status.into(),
    }
}

fn rank(status: &str) -> u8 {
    match status {
        "assigned" => 1,
        "picked_up" => 2,
        "delivered" => 3,
        _ => 0,
    }
}

fn at(secs: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000 + secs)
}

/// The handler's step: a delivery only moves forward, the furthest status wins.
async fn apply(view: &View<Header>, order: &str, value: Header, time: SystemTime) {
    view.update(order, |current| match current {
        Some(current) if rank(&current.value.value) >= rank(&value.value) => None,
        Some(current) => Some(current.with(value.clone(), time)),
        None => Some(Record::new(value.clone(), time)),
    })
    .await
    .expect("the update is stored");
}

async fn by_driver(hub: &fractal::Hub) -> Index<Header> {
    Index::open(hub, "deliveries_by_driver", |order, d: &Header| {
        key(&[&d.name, order])
    })
    .await
    .expect("the index opens")
    .only(|d| d.value != "delivered")
}

fn values(entries: Vec<(String, Record<Header>)>) -> Vec<(String, String)> {
    entries
        .into_iter()
        .map(|(k, r)| (k, r.value.value))
        .collect()
}

#[tokio::test]
async fn a_list_reads_each_live_entry_once_in_key_order() {
    let server = NatsServer::start();
    let hub = server.hub("alpha").await;
    let view = View::<Header>::open(&hub, "things").await.unwrap();
    assert!(view.list().await.unwrap().is_empty(), "an empty bucket");

    for i in (0..300).rev() {
        let value = delivery("d", &format!("v{i}"));
        view.update(&format!("k{i:03}"), |_| {
            Some(Record::new(value.clone(), at(i)))
        })
        .await
        .unwrap();
    }
    // Overwritten and deleted entries appear as they are now.
    view.update("k007", |c| {
        c.map(|r| r.with(delivery("d", "again"), at(999)))
    })
    .await
    .unwrap();
    view.delete("k008").await.unwrap();

    let listed = values(view.list().await.unwrap());
    assert_eq!(listed.len(), 299);
    assert!(listed.windows(2).all(|w| w[0].0 < w[1].0), "in key order");
    assert_eq!(listed[0], ("k000".into(), "v0".into()));
    assert_eq!(listed[7], ("k007".into(), "again".into()));
    assert!(!listed.iter().any(|(k, _)| k == "k008"));
}

#[tokio::test]
async fn a_scan_reads_only_whole_tokens_of_its_prefix() {
    let server = NatsServer::start();
    let hub = server.hub("alpha").await;
    let view = View::<Header>::open(&hub, "things").await.unwrap();
    for (k, v) in [
        ("d-1.o-1", "a"),
        ("d-1.o-2", "b"),
        ("d-10.o-3", "c"),
        ("d-2.o-4", "d"),
        ("d-1", "not under the prefix"),
    ] {
        let value = delivery("x", v);
        view.update(k, |_| Some(Record::new(value.clone(), at(0))))
            .await
            .unwrap();
    }
    assert_eq!(
        values(view.scan("d-1").await.unwrap()),
        [
            ("d-1.o-1".into(), "a".into()),
            ("d-1.o-2".into(), "b".into())
        ]
    );
    assert!(view.scan("d-3").await.unwrap().is_empty());
    let bad = view.scan("d-1.>").await.unwrap_err();
    assert!(bad.is_corrupt(), "a bad prefix is not worth retrying");
    assert!(bad.to_string().contains("`d-1.>` is not a key"), "{bad}");
}

#[tokio::test]
async fn an_index_follows_its_view_through_redelivery_and_reordering() {
    let server = NatsServer::start();
    let hub = server.hub("alpha").await;
    let index = by_driver(&hub).await;
    let view = View::<Header>::open(&hub, "deliveries")
        .await
        .unwrap()
        .indexed_by(index.clone());

    // 40 orders over 4 drivers; every event of every order three times, in a shuffled order,
    // from concurrent tasks.
    let mut events = Vec::new();
    for order in 0..40u64 {
        let driver = format!("d-{}", order % 4);
        let last = order % 3; // some orders stop at assigned, picked up or delivered
        for (step, status) in ["assigned", "picked_up", "delivered"].iter().enumerate() {
            if step as u64 <= last {
                for _ in 0..3 {
                    events.push((
                        format!("o-{order:02}"),
                        delivery(&driver, status),
                        at(order * 10 + step as u64),
                    ));
                }
            }
        }
    }
    // A fixed shuffle: deterministic, and late steps often come first.
    let n = events.len();
    for i in 0..n {
        events.swap(i, (i * 7919 + 13) % n);
    }
    let mut tasks = tokio::task::JoinSet::new();
    for chunk in events.chunks(n / 8 + 1) {
        let (view, chunk) = (view.clone(), chunk.to_vec());
        tasks.spawn(async move {
            for (order, value, time) in chunk {
                apply(&view, &order, value, time).await;
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }

    // The index holds exactly the undelivered deliveries, under their drivers, as the view
    // says they are.
    let mut expected: BTreeMap<String, String> = BTreeMap::new();
    for (order, record) in view.list().await.unwrap() {
        if record.value.value != "delivered" {
            expected.insert(key(&[&record.value.name, &order]), record.value.value);
        }
    }
    assert_eq!(expected.len(), 27, "orders that stop before delivery");
    let indexed: BTreeMap<String, String> = values(index.view().list().await.unwrap())
        .into_iter()
        .collect();
    assert_eq!(indexed, expected);
    let of_d1 = values(index.view().scan("d-1").await.unwrap());
    assert!(!of_d1.is_empty());
    assert!(of_d1.iter().all(|(k, _)| k.starts_with("d-1.")));

    // A step cut short between the view and its index is completed by the redelivery.
    let bare = View::<Header>::open(&hub, "deliveries").await.unwrap();
    apply(&bare, "o-99", delivery("d-9", "assigned"), at(1000)).await;
    assert!(index.view().scan("d-9").await.unwrap().is_empty());
    apply(&view, "o-99", delivery("d-9", "assigned"), at(1000)).await;
    assert_eq!(
        values(index.view().scan("d-9").await.unwrap()),
        [("d-9.o-99".into(), "assigned".into())]
    );

    // Deleting from the view deletes from the index.
    view.delete("o-99").await.unwrap();
    assert!(index.view().scan("d-9").await.unwrap().is_empty());
}

#[tokio::test]
async fn a_live_copy_holds_every_acknowledged_write_after_sync() {
    let server = NatsServer::start();
    let hub = server.hub("alpha").await;
    let view = View::<Header>::open(&hub, "queue").await.unwrap();
    for i in 0..50 {
        let value = delivery("d", &format!("v{i}"));
        view.update(&format!("q.{i:02}"), |_| {
            Some(Record::new(value.clone(), at(i)))
        })
        .await
        .unwrap();
    }
    let live = view.live().await.unwrap();
    assert_eq!(live.len(), 50, "loaded when it returns");

    // Another process's handle on the same view writes; after sync the copy has it all.
    let other_hub = server.hub("alpha").await;
    let other = View::<Header>::open(&other_hub, "queue").await.unwrap();
    for round in 0..20u64 {
        let k = format!("q.{:02}", round * 2);
        other.delete(&k).await.unwrap();
        let value = delivery("d", &format!("r{round}"));
        let fresh = format!("q.x{round:02}");
        other
            .update(&fresh, |_| {
                Some(Record::new(value.clone(), at(100 + round)))
            })
            .await
            .unwrap();
        live.sync().await.unwrap();
        assert!(live.get(&k).is_none(), "round {round}: the delete is seen");
        assert_eq!(
            live.get(&fresh).map(|r| r.value.value),
            Some(format!("r{round}")),
            "round {round}: the write is seen"
        );
    }
    assert_eq!(live.len(), 50);
    assert_eq!(live.scan("q").len(), 50);
    assert_eq!(
        live.scan("q").first().map(|(k, _)| k.as_str()),
        Some("q.01")
    );

    // Without sync the copy still catches up on its own, soon.
    other.delete("q.01").await.unwrap();
    eventually(Duration::from_secs(5), "the copy to follow", || async {
        live.get("q.01").is_none().then_some(())
    })
    .await;

    // The copy never runs ahead of the bucket and its revision only grows.
    let before = live.revision();
    live.sync().await.unwrap();
    assert!(live.revision() >= before);
}

#[tokio::test]
async fn a_live_copy_survives_a_hub_restart() {
    let mut server = NatsServer::start();
    let hub = server.hub("alpha").await;
    let view = View::<Header>::open(&hub, "queue").await.unwrap();
    let live = view.live().await.unwrap();
    view.update("a", |_| Some(Record::new(delivery("d", "1"), at(1))))
        .await
        .unwrap();
    server.restart();
    eventually(
        Duration::from_secs(20),
        "a write after the restart",
        || async {
            let value = delivery("d", "2");
            view.update("b", |_| Some(Record::new(value.clone(), at(2))))
                .await
                .ok()
        },
    )
    .await;
    eventually(
        Duration::from_secs(20),
        "the copy to follow again",
        || async {
            (live.sync().await.is_ok() && live.get("a").is_some() && live.get("b").is_some())
                .then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn a_live_copy_of_an_index_reads_this_processes_own_writes() {
    let server = NatsServer::start();
    let hub = server.hub("alpha").await;
    let index = by_driver(&hub).await;
    let live = index.view().live().await.unwrap();
    let view = View::<Header>::open(&hub, "deliveries")
        .await
        .unwrap()
        .indexed_by(index.clone());
    for (i, status) in ["assigned", "picked_up", "delivered"].iter().enumerate() {
        for order in 0..20u64 {
            let o = format!("o-{order}");
            apply(
                &view,
                &o,
                delivery("d-1", status),
                at(order * 10 + i as u64),
            )
            .await;
            live.wait_for(index.written()).await.unwrap();
            let listed = live.get(&key(&["d-1", &o])).map(|r| r.value.value);
            let expected = (*status != "delivered").then(|| status.to_string());
            assert_eq!(listed, expected, "{o} {status}");
        }
    }
    assert!(live.scan("d-1").is_empty());
}

/// Writers racing on the same entries never make an index show an older state again: what a
/// live copy of the index shows of each delivery only moves forward (assigned, picked up, gone).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_writers_never_bring_an_older_state_back_into_an_index() {
    let server = NatsServer::start();
    let hub = server.hub("alpha").await;
    let index = by_driver(&hub).await;
    let live = index.view().live().await.unwrap();
    let view = View::<Header>::open(&hub, "deliveries")
        .await
        .unwrap()
        .indexed_by(index.clone());
    let orders: Vec<String> = (0..30).map(|i| format!("o-{i:02}")).collect();
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = tokio::spawn({
        let (live, done, orders) = (live.clone(), done.clone(), orders.clone());
        async move {
            let mut seen: BTreeMap<String, u8> = BTreeMap::new();
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                for order in &orders {
                    let before = seen.get(order).copied().unwrap_or(0);
                    // Absent: not there yet (0), or gone once delivered (3).
                    let gone = if before == 0 { 0 } else { 3 };
                    let now = live
                        .get(&key(&["d-1", order]))
                        .map_or(gone, |r| rank(&r.value.value));
                    seen.insert(order.clone(), now);
                    assert!(now >= before, "{order} went back from {before} to {now}");
                }
                tokio::task::yield_now().await;
            }
        }
    });
    let mut writers = tokio::task::JoinSet::new();
    for writer in 0..8usize {
        let (view, orders) = (view.clone(), orders.clone());
        writers.spawn(async move {
            for (n, order) in orders.iter().enumerate() {
                let mut steps = [
                    "assigned",
                    "picked_up",
                    "delivered",
                    "assigned",
                    "picked_up",
                ];
                steps.rotate_left((n + writer) % 5);
                for (i, status) in steps.iter().enumerate() {
                    apply(
                        &view,
                        order,
                        delivery("d-1", status),
                        at(rank(status) as u64 + i as u64),
                    )
                    .await;
                }
            }
        });
    }
    while let Some(done) = writers.join_next().await {
        done.unwrap();
    }
    live.sync().await.unwrap();
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    watcher.await.unwrap();
    assert!(live.scan("d-1").is_empty(), "every delivery ends delivered");
}

/// A long poll on a live copy wakes for changes under its prefix only.
#[tokio::test]
async fn a_prefix_watch_wakes_for_its_own_entries_only() {
    let server = NatsServer::start();
    let hub = server.hub("alpha").await;
    let view = View::<Header>::open(&hub, "assigned").await.unwrap();
    let live = view.live().await.unwrap();
    let mut watch = live.watch_prefix("d-2");
    let value = delivery("d", "assigned");
    view.update("d-1.o-1", |_| Some(Record::new(value.clone(), at(1))))
        .await
        .unwrap();
    view.update("d-20.o-2", |_| Some(Record::new(value.clone(), at(1))))
        .await
        .unwrap();
    live.sync().await.unwrap();
    assert!(
        !watch.changed(Duration::from_millis(200)).await,
        "other drivers' entries do not wake it"
    );
    view.update("d-2.o-3", |_| Some(Record::new(value.clone(), at(1))))
        .await
        .unwrap();
    assert!(watch.changed(Duration::from_secs(10)).await);
    assert_eq!(live.scan("d-2").len(), 1);
}

/// A pass over a view that others write meanwhile returns each key once, as it last saw it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scan_during_writes_returns_each_key_once() {
    let server = NatsServer::start();
    let hub = server.hub("alpha").await;
    let view = View::<Header>::open(&hub, "busy").await.unwrap();
    for i in 0..200 {
        let value = delivery("d", "0");
        view.update(&format!("r-1.o-{i:03}"), |_| {
            Some(Record::new(value.clone(), at(0)))
        })
        .await
        .unwrap();
    }
    let writer = tokio::spawn({
        let view = view.clone();
        async move {
            for round in 1..=5u64 {
                for i in 0..200 {
                    let key = format!("r-1.o-{i:03}");
                    if i % 7 == 0 {
                        view.delete(&key).await.unwrap();
                    }
                    let value = delivery("d", &round.to_string());
                    view.update(&key, |_| Some(Record::new(value.clone(), at(round))))
                        .await
                        .unwrap();
                }
            }
        }
    });
    while !writer.is_finished() {
        let scanned = view.scan("r-1").await.unwrap();
        let keys: std::collections::BTreeSet<&String> = scanned.iter().map(|(k, _)| k).collect();
        assert_eq!(keys.len(), scanned.len(), "a key twice");
        assert!(scanned.windows(2).all(|w| w[0].0 < w[1].0), "in key order");
    }
    writer.await.unwrap();
    assert_eq!(view.scan("r-1").await.unwrap().len(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_copy_follows_its_bucket_after_the_node_that_fed_it_dies() {
    let mut cluster = fractal_testkit::NatsCluster::start(3);
    let hub = fractal::Hub::connect(&cluster.hub_config("alpha"))
        .await
        .unwrap();
    let view = View::<Header>::open(&hub, "queue").await.unwrap();
    let live = view.live().await.unwrap();
    view.update("a", |_| Some(Record::new(delivery("d", "1"), at(1))))
        .await
        .unwrap();
    live.sync().await.unwrap();
    // The watch's consumer lives on the bucket's leader: kill it, for good.
    let leader = cluster.leader_of("KV_view_queue").expect("a leader");
    cluster.kill(leader);
    for (i, key) in ["b", "c", "d"].into_iter().enumerate() {
        let value = delivery("d", &i.to_string());
        view.update(key, |_| Some(Record::new(value.clone(), at(2 + i as u64))))
            .await
            .expect("a write rides out the election");
    }
    eventually(
        Duration::from_secs(30),
        "the copy to follow again",
        || async {
            ["a", "b", "c", "d"]
                .iter()
                .all(|k| live.get(k).is_some())
                .then_some(())
        },
    )
    .await;
    live.sync().await.expect("in step with the bucket");
}
