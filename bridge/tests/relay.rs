//! The bridge program between real hubs: selection, contracts, provenance and loops.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::{Bridge, events, numbered, route, wait_for_count};
use fractal::fault::FaultKind;
use fractal::proto::{Fault, Header};
use fractal::{NewEvent, Scope};
use fractal_testkit::{NatsServer, ServerOptions, eventually, simulate, stream_messages};
use prost::Message as _;

#[tokio::test]
async fn selected_events_arrive_and_others_do_not() {
    let (a, b) = (NatsServer::start(), NatsServer::start());
    let (hub_a, hub_b) = (a.hub("a").await, b.hub("b").await);
    let routes = format!(
        "{}\n[[routes]]\nname = \"drivers\"\ntypes = [\"driver.assigned\"]\ncontract = \"fractal.platform.v1.Header\"\ntarget_type = \"delivery.driver.assigned\"\n",
        route("orders", &["order.*"])
    );
    let _bridge = Bridge::start("ab", ("a", &a), ("b", &b), &routes);

    let placed = simulate(
        &hub_a,
        [
            numbered("order.placed", "o1", 1),
            numbered("order.accepted", "o1", 2),
            numbered("menu.viewed", "r1", 3),
            // The same type, internal: never relayed.
            NewEvent::new(
                "order.placed",
                "o2",
                &Header {
                    name: "o2".into(),
                    value: "4".into(),
                },
            ),
            numbered("driver.assigned", "o1", 5),
        ],
    )
    .await;
    wait_for_count(&hub_b, 3, Duration::from_secs(20)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Routes run independently: order holds within a route, not across routes.
    let relayed = events(&hub_b).await;
    let of_type = |t: &str| {
        relayed
            .iter()
            .filter(|e| e.event_type == t)
            .collect::<Vec<_>>()
    };
    let orders: Vec<&str> = relayed
        .iter()
        .filter(|e| e.event_type.starts_with("order."))
        .map(|e| e.event_type.as_str())
        .collect();
    assert_eq!(orders, ["order.placed", "order.accepted"]);
    let order = of_type("order.placed")[0];
    assert_eq!(order.id, placed[0].id.to_string(), "the relay keeps the id");
    assert_eq!(order.origin, "a");
    assert_eq!(order.path, ["a", "b"]);
    let driver = of_type("delivery.driver.assigned");
    assert_eq!(driver.len(), 1);
    assert_eq!(driver[0].id, placed[4].id.to_string());
    assert_eq!(driver[0].payload::<Header>().unwrap().value, "5");
    let subjects: HashSet<String> = stream_messages(&hub_b, "EVENTS")
        .await
        .iter()
        .map(|m| m.subject.to_string())
        .collect();
    assert!(subjects.contains("events.external.delivery.driver.assigned"));
    assert!(!subjects.contains("events.external.driver.assigned"));
}

#[tokio::test]
async fn an_event_too_large_for_the_target_is_a_fault_and_the_route_keeps_flowing() {
    let a = NatsServer::start();
    let b = NatsServer::start_with(ServerOptions {
        extra: "max_payload: 4096".into(),
        ..Default::default()
    });
    let (hub_a, hub_b) = (a.hub("a").await, b.hub("b").await);
    let bridge = Bridge::start(
        "ab",
        ("a", &a),
        ("b", &b),
        &route("orders", &["order.placed"]),
    );
    let large = Header {
        name: "large".into(),
        value: "x".repeat(8192),
    };
    simulate(
        &hub_a,
        [
            numbered("order.placed", "o1", 1),
            NewEvent::external("order.placed", "o1", &large),
            numbered("order.placed", "o1", 2),
        ],
    )
    .await;
    wait_for_count(&hub_b, 2, Duration::from_secs(20)).await;
    let fault = eventually(Duration::from_secs(10), "a fault", || async {
        let faults = stream_messages(&hub_a, hub_a.faults_stream()).await;
        faults
            .first()
            .map(|m| Fault::decode(m.payload.as_ref()).unwrap())
    })
    .await;
    assert_eq!(fault.kind(), FaultKind::Permanent);
    assert!(
        fault.reason.contains("over the target's limit of 4096"),
        "{}",
        fault.reason
    );
    let rejected = bridge
        .metric(r#"fractal_bridge_rejected_total{bridge="ab",route="orders",reason="too_large"}"#)
        .await;
    assert_eq!(rejected, Some(1.0));
}

#[tokio::test]
async fn a_contract_violation_is_a_fault_and_the_route_keeps_flowing() {
    let (a, b) = (NatsServer::start(), NatsServer::start());
    let (hub_a, hub_b) = (a.hub("a").await, b.hub("b").await);
    let bridge = Bridge::start(
        "ab",
        ("a", &a),
        ("b", &b),
        &route("orders", &["order.placed"]),
    );

    let garbage = NewEvent::from_parts(
        Scope::External,
        "order.placed",
        "o1",
        "fractal.platform.v1.Header",
        bytes::Bytes::from_static(&[0x0f, 0x01, 0x02]),
    );
    let wrong_type = NewEvent::external(
        "order.placed",
        "o1",
        &fractal::proto::OriginalMessage::default(),
    );
    simulate(
        &hub_a,
        [
            numbered("order.placed", "o1", 1),
            garbage,
            wrong_type,
            numbered("order.placed", "o1", 2),
        ],
    )
    .await;
    wait_for_count(&hub_b, 2, Duration::from_secs(20)).await;
    let faults = eventually(Duration::from_secs(10), "two faults", || async {
        let faults: Vec<Fault> = stream_messages(&hub_a, hub_a.faults_stream())
            .await
            .iter()
            .map(|m| Fault::decode(m.payload.as_ref()).unwrap())
            .collect();
        (faults.len() == 2).then_some(faults)
    })
    .await;
    assert!(
        faults
            .iter()
            .all(|f| f.kind() == FaultKind::ContractViolation)
    );
    assert!(
        faults[0].reason.contains("does not decode"),
        "{}",
        faults[0].reason
    );
    assert!(
        faults[1]
            .reason
            .contains("fractal.platform.v1.OriginalMessage"),
        "{}",
        faults[1].reason
    );
    assert_eq!(faults[0].service, "bridge-ab");
    let original = faults[0].original.as_ref().unwrap();
    assert_eq!(
        original.body.len(),
        stream_messages(&hub_a, "EVENTS").await[1].payload.len()
    );
    let relayed: Vec<String> = events(&hub_b)
        .await
        .iter()
        .map(|e| e.payload::<Header>().unwrap().value)
        .collect();
    assert_eq!(relayed, ["1", "2"]);
    let rejected = eventually(Duration::from_secs(10), "rejected metric", || async {
        bridge
            .metric(
                r#"fractal_bridge_rejected_total{bridge="ab",route="orders",reason="contract"}"#,
            )
            .await
    })
    .await;
    assert_eq!(rejected, 2.0);
}

#[tokio::test]
async fn a_chain_delivers_once_along_its_path() {
    let (a, b, c) = (
        NatsServer::start(),
        NatsServer::start(),
        NatsServer::start(),
    );
    let (hub_a, hub_b, hub_c) = (a.hub("a").await, b.hub("b").await, c.hub("c").await);
    let orders = route("orders", &["order.placed"]);
    let _ab = Bridge::start("ab", ("a", &a), ("b", &b), &orders);
    let _bc = Bridge::start("bc", ("b", &b), ("c", &c), &orders);
    simulate(&hub_a, (0..10).map(|n| numbered("order.placed", "o", n))).await;
    wait_for_count(&hub_c, 10, Duration::from_secs(20)).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let at_c = events(&hub_c).await;
    assert_eq!(at_c.len(), 10);
    assert!(
        at_c.iter()
            .all(|e| e.path == ["a", "b", "c"] && e.origin == "a")
    );
    assert_eq!(events(&hub_b).await.len(), 10);
    assert_eq!(events(&hub_a).await.len(), 10);
}

#[tokio::test]
async fn bridges_both_ways_do_not_loop() {
    let (a, b) = (NatsServer::start(), NatsServer::start());
    let (hub_a, hub_b) = (a.hub("a").await, b.hub("b").await);
    let orders = route("orders", &["order.placed"]);
    let ab = Bridge::start("ab", ("a", &a), ("b", &b), &orders);
    let ba = Bridge::start("ba", ("b", &b), ("a", &a), &orders);
    simulate(
        &hub_a,
        (0..10).map(|n| numbered("order.placed", "from-a", n)),
    )
    .await;
    simulate(
        &hub_b,
        (0..5).map(|n| numbered("order.placed", "from-b", n)),
    )
    .await;
    wait_for_count(&hub_a, 15, Duration::from_secs(20)).await;
    wait_for_count(&hub_b, 15, Duration::from_secs(20)).await;
    // Both bridges have seen every event, including the ones they must not send back.
    eventually(Duration::from_secs(20), "loops skipped", || async {
        let back_to_a = ba
            .metric(r#"fractal_bridge_skipped_total{bridge="ba""#)
            .await?;
        let back_to_b = ab
            .metric(r#"fractal_bridge_skipped_total{bridge="ab""#)
            .await?;
        (back_to_a == 10.0 && back_to_b == 5.0).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(events(&hub_a).await.len(), 15);
    assert_eq!(events(&hub_b).await.len(), 15);
}

#[tokio::test]
async fn a_system_hub_relaying_back_does_not_loop() {
    let (a, s, b) = (
        NatsServer::start(),
        NatsServer::start(),
        NatsServer::start(),
    );
    let (hub_a, hub_s, hub_b) = (a.hub("a").await, s.hub("s").await, b.hub("b").await);
    let orders = route("orders", &["order.placed"]);
    let _bridges = [
        Bridge::start("as", ("a", &a), ("s", &s), &orders),
        Bridge::start("sa", ("s", &s), ("a", &a), &orders),
        Bridge::start("sb", ("s", &s), ("b", &b), &orders),
        Bridge::start("bs", ("b", &b), ("s", &s), &orders),
    ];
    simulate(&hub_a, (0..10).map(|n| numbered("order.placed", "o", n))).await;
    wait_for_count(&hub_b, 10, Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let at_b = events(&hub_b).await;
    assert_eq!(at_b.len(), 10);
    assert!(at_b.iter().all(|e| e.path == ["a", "s", "b"]));
    assert_eq!(events(&hub_s).await.len(), 10);
    assert_eq!(events(&hub_a).await.len(), 10);
}

#[tokio::test]
async fn the_relay_continues_the_producers_trace() {
    let (a, b) = (NatsServer::start(), NatsServer::start());
    let (hub_a, hub_b) = (a.hub("a").await, b.hub("b").await);
    // Spans are recorded (and their export to nowhere fails quietly), so the relay span is
    // real and becomes the parent of whatever consumes the relayed event.
    let unused = format!("http://127.0.0.1:{}", fractal_testkit::free_port());
    let _bridge = Bridge::start_with_env(
        "ab",
        ("a", &a),
        ("b", &b),
        &route("orders", &["order.placed"]),
        &[("OTEL_EXPORTER_OTLP_ENDPOINT", unused.as_str())],
    );
    let producer_span = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let mut headers = async_nats::HeaderMap::new();
    let event = numbered("order.placed", "o", 1);
    let id = event.id().to_string();
    // Publish as a traced producer would: the same event, with a traceparent header.
    simulate(&hub_a, [event]).await;
    let stored = &stream_messages(&hub_a, "EVENTS").await[0];
    for (name, values) in stored.headers.as_ref().unwrap().iter() {
        for v in values {
            headers.append(name.as_ref(), v.as_str());
        }
    }
    headers.insert("traceparent", producer_span);
    headers.insert("Nats-Msg-Id", format!("{id}-traced").as_str());
    let mut envelope = fractal::proto::Envelope::decode(stored.payload.clone()).unwrap();
    envelope.id = format!("{id}-traced");
    hub_a
        .jetstream()
        .publish_with_headers(
            "events.external.order.placed",
            headers,
            envelope.encode_to_vec().into(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    wait_for_count(&hub_b, 2, Duration::from_secs(20)).await;
    let relayed = &stream_messages(&hub_b, "EVENTS").await[1];
    let traceparent = relayed
        .headers
        .as_ref()
        .unwrap()
        .get("traceparent")
        .unwrap()
        .as_str();
    let parts: Vec<&str> = traceparent.split('-').collect();
    assert_eq!(parts[1], "4bf92f3577b34da6a3ce929d0e0e4736", "same trace");
    assert_ne!(parts[2], "00f067aa0ba902b7", "a relay span of its own");
}

#[tokio::test]
async fn check_reports_every_problem_without_connecting() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bridge.toml");
    let check = |config: &str| {
        std::fs::write(&path, config).unwrap();
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_fractal-bridge"))
            .arg("--config")
            .arg(&path)
            .arg("--check")
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(2), "{output:?}");
        String::from_utf8_lossy(&output.stderr).into_owned()
    };
    let routes = "[[routes]]\nname = \"orders\"\ntypes = [\"order.placed\"]\n";
    let stderr = check(&format!(
        "name = \"ab\"\ncolour = \"red\"\n[source]\nname = \"a\"\nurls = [\"nats//nowhere\"]\n[target]\nname = \"b\"\n{routes}contract = \"fractal.platform.v1.Envelope\"\n"
    ));
    assert!(stderr.contains("2 problems"), "{stderr}");
    assert!(stderr.contains("colour: unknown key"), "{stderr}");
    assert!(stderr.contains("source.urls[0]"), "{stderr}");

    // Once the file is sound, its contracts: each route's among them, with the closest names.
    let valid = "name = \"ab\"\n[source]\nname = \"a\"\n[target]\nname = \"b\"\n";
    let stderr = check(&format!(
        "{valid}{routes}contract = \"fractal.platform.v1.Envelop\"\n"
    ));
    assert!(
        stderr.contains("routes[0].contract: unknown contract `fractal.platform.v1.Envelop`"),
        "{stderr}"
    );
    assert!(
        stderr.contains("did you mean fractal.platform.v1.Envelope"),
        "{stderr}"
    );

    // Descriptors that cannot be loaded, each named with its file.
    let proto = dir.path().join("proto");
    std::fs::create_dir_all(&proto).unwrap();
    std::fs::write(
        proto.join("broken.proto"),
        "syntax = \"proto3\";\npackage x.v1;\nmessage A {\n  Missing b = 1;\n}\n",
    )
    .unwrap();
    std::fs::write(dir.path().join("garbage.pb"), b"\xff\xff\xff").unwrap();
    let lonely = prost_types::FileDescriptorSet {
        file: vec![prost_types::FileDescriptorProto {
            name: Some("a.proto".into()),
            package: Some("x.v1".into()),
            dependency: vec!["b.proto".into()],
            ..Default::default()
        }],
    };
    std::fs::write(
        dir.path().join("lonely.pb"),
        prost::Message::encode_to_vec(&lonely),
    )
    .unwrap();
    for (contracts, expected) in [
        (
            "missing.pb",
            "missing.pb: no such descriptor set file or folder",
        ),
        ("garbage.pb", "garbage.pb: not a descriptor set"),
        (
            "lonely.pb",
            "lonely.pb: the descriptors are incomplete or inconsistent",
        ),
        ("proto", "broken.proto:4:3: name 'Missing' is not defined"),
    ] {
        let stderr = check(&format!(
            "contracts = \"{contracts}\"\n{valid}{routes}contract = \"fractal.platform.v1.Envelope\"\n"
        ));
        assert!(stderr.contains("contracts: "), "{stderr}");
        assert!(stderr.contains(expected), "{expected} in {stderr}");
    }

    let example = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("bridge.example.toml");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_fractal-bridge"))
        .arg("--config")
        .arg(&example)
        .arg("--check")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[tokio::test]
async fn readiness_follows_the_hubs() {
    let (a, mut b) = (NatsServer::start(), NatsServer::start());
    let _hubs = (a.hub("a").await, b.hub("b").await);
    let bridge = Bridge::start(
        "ab",
        ("a", &a),
        ("b", &b),
        &route("orders", &["order.placed"]),
    );
    let ready = |expect: &'static str| {
        let bridge = &bridge;
        move || async move {
            let r = bridge.admin("/readyz").await?;
            r.contains(expect).then_some(r)
        }
    };
    eventually(Duration::from_secs(20), "ready", ready(" 200 ")).await;
    b.kill();
    let not_ready = eventually(Duration::from_secs(20), "not ready", ready(" 503 ")).await;
    assert!(
        not_ready.contains("hub `b` is not connected"),
        "{not_ready}"
    );
    b.restart();
    eventually(Duration::from_secs(30), "ready again", ready(" 200 ")).await;
    let ids: HashSet<u32> = HashSet::from([bridge.pid()]);
    assert_eq!(ids.len(), 1, "the bridge did not restart");
}
