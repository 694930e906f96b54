//! The rendered reference system runs: its manifests, taken as a cluster would take them, are
//! started as local processes (every hub node from its rendered `nats.conf`, the provisioning
//! Jobs, every Deployment's command, environment and config), with each Service name mapped to
//! loopback ports. The demo drives orders through it while a hub node is killed; spans go to an
//! OTLP receiver in this test.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use fractal_charts::{
    CONTRACTS_MOUNT, Value, id, mount_contracts, pod_spec, program, render, runs,
};
use fractal_testkit::{
    OtlpReceiver, Process, ReceivedSpan, eventually, free_port, http_get, nats_server_binary,
};

const ORDERS: usize = 30;
const NODES: usize = 3;
const HUBS: [&str; 4] = ["system", "restaurant", "ordering", "delivery"];

/// One hub node's ports on loopback.
#[derive(Debug, Clone, Copy)]
struct Node {
    client: u16,
    cluster: u16,
    monitor: u16,
}

/// A hub node's rendered `nats.conf`, with what is the cluster's mapped to this machine.
fn node_config(config: &str, hub: &str, nodes: &[Node], i: usize, dir: &Path) -> String {
    let node = nodes[i];
    let store = dir.join(format!("hub-{hub}-{i}"));
    let mut config = config
        .replace("$POD_NAME", &format!("hub-{hub}-{i}"))
        .replace("0.0.0.0:4222", &format!("127.0.0.1:{}", node.client))
        .replace("0.0.0.0:6222", &format!("127.0.0.1:{}", node.cluster))
        .replace("0.0.0.0:8222", &format!("127.0.0.1:{}", node.monitor))
        .replace(
            "/var/run/nats/nats.pid",
            &store.join("nats.pid").display().to_string(),
        )
        .replace(
            "store_dir: /data",
            &format!("store_dir: {:?}", store.join("data")),
        );
    for (j, other) in nodes.iter().enumerate() {
        config = config.replace(
            &format!("nats://hub-{hub}-{j}.hub-{hub}-headless.fractal.svc.cluster.local:6222"),
            &format!("nats://127.0.0.1:{}", other.cluster),
        );
    }
    std::fs::create_dir_all(&store).unwrap();
    config
}

/// A container's environment as the kubelet would give it: literal values, the downward API's
/// fields, and `$(VAR)` references expanded.
fn environment(container: &Value, pod: &str) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = Vec::new();
    for variable in container["env"].as_array().into_iter().flatten() {
        let name = variable["name"].as_str().unwrap().to_owned();
        let value = match variable["value"].as_str() {
            Some(value) => value.to_owned(),
            None => match variable["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
                Some("metadata.name") => pod.to_owned(),
                Some("metadata.namespace") => "fractal".to_owned(),
                Some("spec.nodeName") => "this-machine".to_owned(),
                other => panic!("{name}: an unknown field {other:?}"),
            },
        };
        let expanded = env.iter().fold(value, |value, (known, set)| {
            value.replace(&format!("$({known})"), set)
        });
        env.push((name, expanded));
    }
    env
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rendered_system_delivers_every_order_in_one_trace_each_while_a_hub_node_dies() {
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");
    std::fs::create_dir(&logs).unwrap();
    // Every port is chosen before any process binds it: never the same one twice.
    let taken = Mutex::new(BTreeSet::new());
    let port = || loop {
        let port = free_port();
        if taken.lock().unwrap().insert(port) {
            return port;
        }
    };

    // Spans go to this receiver, where the charts' values send them to a collector.
    let (receiver, otlp) = OtlpReceiver::start().await;

    // Credentials as an operator makes them: seeds in a folder (the Secret), each hub's
    // authorization block in the values.
    let state = dir.path().join("deploy");
    let mut authorizations = serde_json::Map::new();
    for hub in HUBS {
        let output = std::process::Command::new(program("fractal"))
            .args(["hub", "authorization", hub, "--state"])
            .arg(&state)
            .current_dir(fractal_charts::root())
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        authorizations.insert(
            hub.to_owned(),
            serde_json::json!({"hub": {"authorization": String::from_utf8(output.stdout).unwrap()}}),
        );
    }
    let values = serde_json::json!({
        "auth": true,
        "hubDefaults": {"nodes": NODES, "streamReplicas": NODES},
        "telemetry": {"otlp": {"endpoint": "http://otel-collector:4317"}, "samplerRatio": 1.0},
        "subsystems": authorizations,
    });
    let file = dir.path().join("values.yaml");
    std::fs::write(&file, serde_json::to_string(&values).unwrap()).unwrap();
    let (_, documents) = render("food-delivery", "fractal", &[&file], &[]).unwrap();
    let config_maps: HashMap<String, &Value> = documents
        .iter()
        .filter(|m| m["kind"] == "ConfigMap")
        .map(|m| {
            (
                m["metadata"]["name"].as_str().unwrap().to_owned(),
                &m["data"],
            )
        })
        .collect();

    // Every hub node, from its rendered configuration.
    let mut hubs: BTreeMap<&str, (Vec<Node>, Vec<Process>)> = BTreeMap::new();
    for hub in HUBS {
        let nodes: Vec<Node> = (0..NODES)
            .map(|_| Node {
                client: port(),
                cluster: port(),
                monitor: port(),
            })
            .collect();
        let config = config_maps[&format!("hub-{hub}-config")]["nats.conf"]
            .as_str()
            .unwrap();
        let mut processes = Vec::new();
        for i in 0..NODES {
            let path = dir.path().join(format!("hub-{hub}-{i}.conf"));
            std::fs::write(&path, node_config(config, hub, &nodes, i, dir.path())).unwrap();
            processes.push(Process::spawn(
                &format!("hub-{hub}-{i}"),
                nats_server_binary(),
                &["-c", path.to_str().unwrap()],
                &[],
                &logs,
            ));
        }
        hubs.insert(hub, (nodes, processes));
    }
    for (hub, (nodes, _)) in &hubs {
        for node in nodes {
            eventually(
                Duration::from_secs(60),
                &format!("hub {hub} healthy"),
                || async {
                    http_get(("127.0.0.1", node.monitor), "/healthz?js-enabled-only=true")
                        .await
                        .filter(|r| r.starts_with("HTTP/1.1 200"))
                },
            )
            .await;
        }
    }
    // What a Service name stands for here: every node of the hub.
    let map_urls = |value: &str| {
        let mut value = value.to_owned();
        for (hub, (nodes, _)) in &hubs {
            let urls: Vec<String> = nodes
                .iter()
                .map(|n| format!("\"nats://127.0.0.1:{}\"", n.client))
                .collect();
            value = value.replace(&format!("\"nats://hub-{hub}:4222\""), &urls.join(","));
            value = value.replace(
                &format!("nats://hub-{hub}:4222"),
                &format!("nats://127.0.0.1:{}", nodes[0].client),
            );
        }
        value
            .replace(
                "/etc/fractal/credentials/",
                &format!("{}/credentials/", state.display()),
            )
            .replace(CONTRACTS_MOUNT, &format!("{}/", dir.path().display()))
    };
    assert!(mount_contracts(&documents, dir.path()) > 0);

    // The provisioning Jobs, as their hooks run them.
    for job in documents.iter().filter(|m| m["kind"] == "Job") {
        let container = &pod_spec(job).unwrap()["containers"][0];
        let args: Vec<String> = container["args"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| map_urls(a.as_str().unwrap()))
            .collect();
        let output = std::process::Command::new(program("fractal"))
            .args(&args)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{}: {}",
            id(job),
            String::from_utf8_lossy(&output.stderr)
        );
    }

    // Every Deployment: its command, its environment, its config; listen addresses moved to
    // free ports, which the demo is told about.
    let mut processes = Vec::new();
    let mut grpc: HashMap<String, u16> = HashMap::new();
    for deployment in documents.iter().filter(|m| m["kind"] == "Deployment") {
        let name = deployment["metadata"]["name"].as_str().unwrap().to_owned();
        let runs = runs(&documents, deployment);
        let (binary, container) = (runs.program.clone(), runs.container);
        let config = dir.path().join(format!("{name}.toml"));
        std::fs::write(&config, &runs.config).unwrap();
        let mut env = Vec::new();
        for (variable, value) in environment(container, &format!("{name}-0")) {
            let value = if variable.ends_with("_LISTEN") {
                let port = port();
                if variable.ends_with("GRPC__LISTEN") {
                    grpc.insert(name.clone(), port);
                }
                format!("127.0.0.1:{port}")
            } else if variable == "OTEL_EXPORTER_OTLP_ENDPOINT" {
                otlp.clone()
            } else {
                map_urls(&value)
            };
            env.push((variable, value));
        }
        env.push(("OTEL_BSP_SCHEDULE_DELAY".to_owned(), "200".to_owned()));
        let config = config.display().to_string();
        processes.push(Process::spawn(
            &name,
            &program(&binary),
            &["--config", &config],
            &env,
            &logs,
        ));
    }

    // The demo of `helm test`, its system description pointed at the ports above.
    let mut system: fractal_cli::running::RunningSystem = serde_json::from_str(
        config_maps["food-delivery-demo"]["system.json"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    for (name, service) in system.services.iter_mut() {
        let port = grpc[&name.replace('/', "-")];
        service.grpc = Some(format!("http://127.0.0.1:{port}"));
    }
    let described = dir.path().join("system.json");
    std::fs::write(&described, serde_json::to_string(&system).unwrap()).unwrap();
    let demo = std::thread::spawn({
        let described = described.clone();
        move || {
            std::process::Command::new(program("food-demo"))
                .arg("--system")
                .arg(&described)
                .args(["--orders", &ORDERS.to_string(), "--timeout-secs", "120"])
                .output()
                .unwrap()
        }
    });
    // A hub node dies while orders flow: the one every client of the ordering hub lists first.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    if demo.is_finished() {
        let output = demo.join().unwrap();
        panic!(
            "the demo ended before the node was killed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    drop(hubs.get_mut("ordering").unwrap().1.remove(0));
    let output = tokio::task::spawn_blocking(move || demo.join().unwrap())
        .await
        .unwrap();
    let said = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    if !output.status.success() {
        for process in &processes {
            eprintln!(
                "{}",
                process
                    .log()
                    .lines()
                    .rev()
                    .take(20)
                    .collect::<Vec<_>>()
                    .join("\n")
            );
        }
    }
    assert!(output.status.success(), "the demo: {said}");

    // One trace per order, across the subsystems' hubs, each span saying which pod it ran in.
    let traces = eventually(Duration::from_secs(60), "every order's trace", || {
        let spans = receiver.spans();
        async move {
            let checkouts: Vec<&ReceivedSpan> = spans
                .iter()
                .filter(|s| s.name == "checkout" && s.attributes.contains_key("order_id"))
                .collect();
            let orders: BTreeSet<&String> = checkouts
                .iter()
                .map(|s| &s.attributes["order_id"])
                .collect();
            if orders.len() < ORDERS {
                return None;
            }
            let mut traces = Vec::new();
            for checkout in checkouts {
                let pods: BTreeSet<String> = spans
                    .iter()
                    .filter(|s| s.trace_id == checkout.trace_id)
                    .map(|s| s.resource.get("k8s.pod.name").cloned().unwrap_or_default())
                    .collect();
                let whole = [
                    "ordering-checkout-0",
                    "bridge-ordering-to-system-0",
                    "restaurant-kitchen-0",
                    "delivery-drivers-0",
                    "bridge-delivery-to-system-0",
                ]
                .iter()
                .all(|pod| pods.contains(*pod));
                if !whole {
                    return None;
                }
                traces.push(pods);
            }
            Some(traces)
        }
    })
    .await;
    assert!(traces.len() >= ORDERS);
    let spans = receiver.spans();
    let placed = |s: &&ReceivedSpan| {
        s.resource
            .get("k8s.pod.name")
            .is_some_and(|p| !p.is_empty())
            && s.resource.get("k8s.namespace.name").map(String::as_str) == Some("fractal")
    };
    assert!(spans.iter().all(|s| placed(&s)), "a span without its pod");
    drop(processes);
}
